"""Generators that synthesise teacher inputs from noise (spec 1.1), optionally class-conditional.

A conditional generator (num_classes > 0) multiplies z by a learnt label embedding: h = z * Emb(y).
Generators always run in train mode: their BatchNorm uses batch statistics, so a batch is generated whole.
Sizes: `img_size` is an int (square) or (H, W); any size works: the generator grows a map of
ceil(H / f) x ceil(W / f) (f = 4 or 16, its total upsampling) and crops the output to H x W (a no-op when f
divides the size). Both end in an affine-free BN: outputs live in one normalised space, which each teacher maps
to its own normalisation (`cdkd.teachers`).
"""
from __future__ import annotations

import math

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


def _grid(img_size: int | tuple[int, int], factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W), (h0, w0)): the output size and the initial map that `factor` x upsampling grows from."""
    hw = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    return hw, (math.ceil(hw[0] / factor), math.ceil(hw[1] / factor))


def _crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == hw else x[..., :hw[0], :hw[1]]


class Generator32(_Conditioning):
    """DAFL/DFAD 'GeneratorA': fc -> 2x(upsample, conv, BN(eps=0.8), LeakyReLU) -> conv -> tanh -> BN(affine=False)."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 32, nc: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__(nz, num_classes)
        self.out_size, self.init_size = _grid(img_size, 4)
        self.fc = nn.Linear(nz, 2 * ngf * self.init_size[0] * self.init_size[1])
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
        return _crop(self.body(h.view(h.shape[0], -1, *self.init_size)), self.out_size)  # (B, nc, H, W)


class GeneratorLarge(_Conditioning):
    """CDFKD-MFS's G-large for 128/224 px: fc -> 4 x (ConvTranspose stride 2, BN, LeakyReLU) -> conv -> tanh
    -> BN(affine=False). The final BN is GeneratorLargeBN's (224 px); the 128 px G-large has none, kept here
    for every size so that all generators share one normalised output space."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 128, nc: int = 3,
                 num_classes: int = 0, final_bn: bool = True) -> None:
        super().__init__(nz, num_classes)
        self.out_size, self.init_size = _grid(img_size, 16)
        self.fc = nn.Linear(nz, 8 * ngf * self.init_size[0] * self.init_size[1])
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
        return _crop(self.body(h.view(h.shape[0], -1, *self.init_size)), self.out_size)


class GeneratorZSKT(_Conditioning):
    """ZSKT/ABM's generator, the base of MAD (spec 1.1 G-ZSKT): fc -> BN -> upsample x1.6 -> conv, BN, LeakyReLU
    -> upsample x2 -> conv, BN, LeakyReLU -> conv -> BN(affine=False); no tanh, default BN eps.

    At 32 px the map grows 10 -> 16 -> 32 as in ZSKT. Other sizes start from ceil(H / 3.2) and the first upsample
    goes to ceil(H / 2) (at 32 px the same nearest-neighbour rows as x1.6), so the output covers H and is cropped.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, img_size: int | tuple[int, int] = 32, nc: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__(nz, num_classes)
        self.out_size, _ = _grid(img_size, 1)
        self.init_size = tuple(math.ceil(n / 3.2) for n in self.out_size)
        self.fc = nn.Linear(nz, 2 * ngf * self.init_size[0] * self.init_size[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(size=tuple(math.ceil(n / 2) for n in self.out_size)),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, 1, 1),
            nn.BatchNorm2d(nc, affine=False),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.condition(z, y))
        return _crop(self.body(h.view(h.shape[0], -1, *self.init_size)), self.out_size)


LARGE_FROM = 65  # px: DAFL's generator up to 64 px (its fc grows with the square of the size), G-large above


def pick_generator(name: str, input_shape: tuple[int, ...], conditional: bool) -> str:
    """`auto`: DAFL's generator up to 64 px, CDFKD-MFS's G-large above; conditional when the method sets
    preset labels. Any other name is kept as configured."""
    if name != "auto":
        return name
    base = "generator_large" if max(input_shape[-2:]) >= LARGE_FROM else "generator32"
    return f"cond_{base}" if conditional else base


@MODELS.register
def generator32(nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 32, nc: int = 3,
                num_classes: int = 0) -> Generator32:
    return Generator32(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def cond_generator32(nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 32, nc: int = 3,
                     num_classes: int = 10) -> Generator32:
    return Generator32(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def generator_large(nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 128, nc: int = 3,
                    num_classes: int = 0) -> GeneratorLarge:
    return GeneratorLarge(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def cond_generator_large(nz: int = 256, ngf: int = 64, img_size: int | tuple[int, int] = 128, nc: int = 3,
                         num_classes: int = 10) -> GeneratorLarge:
    return GeneratorLarge(nz, ngf, img_size, nc, num_classes)


@MODELS.register
def generator_zskt(nz: int = 100, ngf: int = 64, img_size: int | tuple[int, int] = 32, nc: int = 3,
                   num_classes: int = 0) -> GeneratorZSKT:
    return GeneratorZSKT(nz, ngf, img_size, nc, num_classes)
