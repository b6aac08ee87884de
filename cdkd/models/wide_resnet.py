"""Wide ResNet (Zagoruyko & Komodakis) for 32x32 inputs: WRN-16-2 and WRN-40-2."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS


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


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.widths = [16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        self.feature_dim = self.widths[-1]
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, c_in = [], 16
        for i, c_out in enumerate(self.widths):
            stages.append(nn.Sequential(*[WideBlock(c_in if j == 0 else c_out, c_out, (1 if i == 0 else 2) if j == 0 else 1)
                                          for j in range(n)]))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(c_in)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        out, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)
        return out, pooled

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[1])


@MODELS.register
def wrn_16_2(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_chans)


@MODELS.register
def wrn_40_2(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_chans)
