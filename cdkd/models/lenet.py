"""LeNet-5 (with BatchNorm, so the BN-statistics prior applies) and LeNet-5-half, for 32x32 inputs."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import MODELS
from .base import Classifier, prefixed, stage_info


def conv_bn_relu(c_in: int, c_out: int, k: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class LeNetTrunk(nn.Module):
    """Three conv stages: 32x32 -> c1@14x14 -> c2@5x5 -> c3@1x1."""

    def __init__(self, in_chans: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.widths = widths
        self.feature_info = stage_info(widths, (2, 6, 32), ["stage1", "stage2", "stage3"])  # 14, 5, 1 px of 32
        self.stage1 = conv_bn_relu(in_chans, c1, 5, pool=True)
        self.stage2 = conv_bn_relu(c1, c2, 5, pool=True)
        self.stage3 = conv_bn_relu(c2, c3, 5, pool=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        u1 = self.stage1(x)
        u2 = self.stage2(u1)
        u3 = self.stage3(u2)
        return [u1, u2, u3]


class LeNet5(Classifier):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: tuple[int, int, int] = (6, 16, 120),
                 hidden: int = 84) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = hidden
        self.trunk = LeNetTrunk(in_chans, widths)
        self.fc = nn.Sequential(nn.Linear(widths[2], hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)
        self.feature_info = prefixed(self.trunk.feature_info, "trunk")

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages = self.trunk(x)
        return stages, self.fc(stages[-1].flatten(1))


@MODELS.register
def lenet5(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_chans, (6, 16, 120), 84)


@MODELS.register
def lenet5_half(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_chans, (3, 8, 60), 42)
