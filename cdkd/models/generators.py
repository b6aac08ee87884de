"""Generators that synthesise teacher inputs from noise (spec 1.1), optionally class-conditional.

A conditional generator (num_classes > 0) multiplies z by a learnt label embedding: h = z * Emb(y).
Generators always run in train mode: their BatchNorm uses batch statistics, so a batch is generated whole.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import MODELS


class _Conditioning(nn.Module):
    def __init__(self, nz: int, num_classes: int) -> None:
        super().__init__()
        self.nz = nz
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, nz) if num_classes else None

    def condition(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            return z
        if y is None:
            raise ValueError("a conditional generator needs labels y")
        return z * self.embed(y)


class Generator32(_Conditioning):
    """DAFL/DFAD 'GeneratorA': fc -> 2x(upsample, conv, BN(eps=0.8), LeakyReLU) -> conv -> tanh -> BN(affine=False)."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 32, nc: int = 3, num_classes: int = 0) -> None:
        super().__init__(nz, num_classes)
        self.init_size = img_size // 4
        self.fc = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1), nn.BatchNorm2d(2 * ngf, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.BatchNorm2d(ngf, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, 1, 1), nn.Tanh(),
            nn.BatchNorm2d(nc, affine=False),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.condition(z, y))
        return self.body(h.view(h.shape[0], -1, self.init_size, self.init_size))  # (B, nc, S, S)


class GeneratorLarge(_Conditioning):
    """DCGAN-style generator for 128/224 px: fc -> 4 x (ConvTranspose stride 2, BN, LeakyReLU) -> conv -> tanh."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 128, nc: int = 3, num_classes: int = 0,
                 final_bn: bool = True) -> None:
        super().__init__(nz, num_classes)
        self.init_size = img_size // 16
        self.fc = nn.Linear(nz, 8 * ngf * self.init_size ** 2)
        chans = [8 * ngf, 4 * ngf, 2 * ngf, ngf, ngf]
        layers: list[nn.Module] = [nn.BatchNorm2d(chans[0])]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(ngf, nc, 3, 1, 1), nn.Tanh()]
        if final_bn:
            layers.append(nn.BatchNorm2d(nc, affine=False))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.condition(z, y))
        return self.body(h.view(h.shape[0], -1, self.init_size, self.init_size))


@MODELS.register
def generator32(nz: int = 256, ngf: int = 64, img_size: int = 32, nc: int = 3, num_classes: int = 0) -> Generator32:
    return Generator32(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def cond_generator32(nz: int = 256, ngf: int = 64, img_size: int = 32, nc: int = 3, num_classes: int = 10) -> Generator32:
    return Generator32(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def generator_large(nz: int = 256, ngf: int = 64, img_size: int = 128, nc: int = 3, num_classes: int = 0) -> GeneratorLarge:
    return GeneratorLarge(nz, ngf, img_size, nc, num_classes)
