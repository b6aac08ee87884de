"""A user's own classifier class, as `kind: python` teachers name it (`factory: "bench.own_models:SmallCNN"`)."""
from __future__ import annotations

import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global average pool, one Linear: a plain user model with no cdkd interface."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for w in (width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
