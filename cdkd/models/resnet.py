"""CIFAR-style ResNet-18/34 (3x3 stem, no max-pool), widths scaled by `width` (64 = standard)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .base import Classifier, prefixed, stage_info


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """Stem + 4 stages; returns the output of each stage (u_1..u_4 in the spec)."""

    def __init__(self, depths: tuple[int, ...], width: int, in_chans: int) -> None:
        super().__init__()
        self.widths = [width, 2 * width, 4 * width, 8 * width]
        self.feature_info = stage_info(self.widths, (1, 2, 4, 8), [f"stages.{i}" for i in range(4)])
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, (depth, c_out) in enumerate(zip(depths, self.widths)):
            blocks = [BasicBlock(c_in, c_out, 1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class ResNet(Classifier):
    def __init__(self, depths: tuple[int, ...], num_classes: int = 10, width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = ResNetTrunk(depths, width, in_chans)
        self.feature_dim = self.trunk.widths[-1]
        self.feature_info = prefixed(self.trunk.feature_info, "trunk")
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages = self.trunk(x)
        return stages, F.adaptive_avg_pool2d(stages[-1], 1).flatten(1)


@MODELS.register
def resnet18(num_classes: int = 10, width: int = 64, in_chans: int = 3) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width, in_chans)


@MODELS.register
def resnet34(num_classes: int = 10, width: int = 64, in_chans: int = 3) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes, width, in_chans)
