"""Wide ResNet (Zagoruyko & Komodakis) for 32x32 inputs: WRN-16-1/16-2/40-2 (the CDFKD-MFS CIFAR zoo)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .base import Classifier, prefixed, stage_info


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv, 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideTrunk(nn.Module):
    """Stem conv + 3 stages of pre-activation blocks; returns each stage's output (u_1..u_3, spec 2.2c)."""

    def __init__(self, depth: int, widen: int, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.widths = [16 * widen, 32 * widen, 64 * widen]
        self.feature_info = stage_info(self.widths, (1, 2, 4), [f"stages.{i}" for i in range(3)])
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, c_in = [], 16
        for i, c_out in enumerate(self.widths):
            stages.append(nn.Sequential(*[WideBlock(c_in if j == 0 else c_out, c_out, (1 if i == 0 else 2) if j == 0 else 1)
                                          for j in range(n)]))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class WideResNet(Classifier):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.trunk = WideTrunk(depth, widen, in_chans)
        self.num_classes = num_classes
        self.feature_dim = self.trunk.widths[-1]
        self.feature_info = prefixed(self.trunk.feature_info, "trunk")
        self.bn = nn.BatchNorm2d(self.feature_dim)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages = self.trunk(x)
        return stages, F.adaptive_avg_pool2d(F.relu(self.bn(stages[-1])), 1).flatten(1)


@MODELS.register
def wrn_16_1(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_chans)


@MODELS.register
def wrn_16_2(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_chans)


@MODELS.register
def wrn_40_2(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_chans)
