"""Multi-header students: a shared trunk plus K headers, header k imitating teacher k.

`mfs_*` are the CDFKD-MFS students (spec 2.2a/c): every header taps all trunk levels through a
chain of SepConv encoders, a_j = E_j(concat(u_j, a_{j-1})). `mh_*`/`smh_*` are the simpler students
(spec 2.2d/e): the headers only branch off the last trunk level.
Outputs are stacked on a leading header axis: logits (K, B, C), pooled features (K, B, D).

`feature_dim`: each header ends in a projection (Linear + ReLU) to this width before its classifier (None
keeps the header's own width). When the teachers' pooled features are wider or narrower, the engine gives the
student a training-only projection for the feature L1 instead (`StudentBase.project_features_to`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .base import prefixed
from .lenet import LeNetTrunk
from .resnet import ResNetTrunk
from .wide_resnet import WideTrunk


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise k x k convolution that runs in fp32 on the CPU, even under bf16 autocast.

    oneDNN has no fast bf16 depthwise backward on the CPU: measured on an AMX Xeon (B=64), the backward of a
    3x3 depthwise conv takes 41 ms in bf16 vs 2.0 ms in fp32 channels_last (256 ch, 16 px, stride 2) and 37 vs
    0.7 ms (1024 ch, 4 px), which made these layers 2/3 of an `mfs_resnet18` training step. The layer has few
    FLOPs, so fp32 costs nothing; on GPUs autocast decides as usual. Same parameters as `nn.Conv2d`.
    """

    def __init__(self, channels: int, k: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__(channels, channels, k, stride, padding, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class SepConv(nn.Module):
    """Depthwise k x k (stride s) -> pointwise -> BN -> ReLU, optionally twice (the MTAN-style encoder)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 2, padding: int = 1, double: bool = True):
        super().__init__()
        layers: list[nn.Module] = [DepthwiseConv2d(c_in, k, stride, padding)]
        if double:
            layers += [nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                       DepthwiseConv2d(c_in, 3, 1, 1)]
        layers += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def fit_to(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`a` average-pooled to `ref`'s spatial size where the two differ (typically by one row or column).

    `F.adaptive_avg_pool2d` shrinks by averaging overlapping windows and, in the rare case `a` is the smaller,
    repeats rows/columns. The test is on concrete sizes, so an export with a dynamic batch only keeps one branch.
    """
    if a.shape[-2:] == ref.shape[-2:]:
        return a
    return F.adaptive_avg_pool2d(a, ref.shape[-2:])


class MFSHeader(nn.Module):
    """Multi-level feature sharing: encoder j reads trunk level j concatenated with encoder j-1's output.

    Levels left over after the encoders (e.g. LeNet's 1x1 top level) are concatenated before pooling.
    Where encoder j-1's output does not land exactly on level j's spatial size (a trunk whose downsampling
    floors odd sizes while the stride-2 encoder ceils them, see `mfs_backbone`), it is fitted to that size
    first (`fit_to`); for the CIFAR-size students the sizes always match and this is a no-op.
    """

    def __init__(self, encoders: list[nn.Module], feat_in: int, feat_dim: int | None, num_classes: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.proj = nn.Sequential(nn.Linear(feat_in, feat_dim), nn.ReLU(inplace=True)) if feat_dim else nn.Identity()
        self.classifier = nn.Linear(feat_dim or feat_in, num_classes)

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        a = self.encoders[0](stages[0])
        for j, enc in enumerate(self.encoders[1:], start=1):
            a = enc(torch.cat([stages[j], fit_to(a, stages[j])], 1))
        rest = stages[len(self.encoders):]
        if rest:
            a = torch.cat([*rest, fit_to(a, rest[0])], 1)
        return self.proj(F.adaptive_avg_pool2d(a, 1).flatten(1))


class BranchHeader(nn.Module):
    """Simple header: a private copy of the top of the network applied to the last trunk level."""

    def __init__(self, branch: nn.Module, feat_in: int, feat_dim: int | None, num_classes: int) -> None:
        super().__init__()
        self.branch = branch
        self.proj = nn.Sequential(nn.Linear(feat_in, feat_dim), nn.ReLU(inplace=True)) if feat_dim else nn.Identity()
        self.classifier = nn.Linear(feat_dim or feat_in, num_classes)

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(self.branch(stages[-1]), 1).flatten(1))


class StudentBase(nn.Module):
    """What the engine calls on any student: forward_features (stages, pooled (K, B, D)) and forward_head.

    `feature_info` describes the shared stage maps (timm's format), as on every classifier.
    """

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits (K, B, C); with `features`, (stages, pooled (K, B, D), logits) from one call (as DDP needs).

        With a feature projection (`project_features_to`), the returned pooled features are the projected ones.
        """
        stages, feats = self.forward_features(x)
        s = self.forward_head(feats)
        if not features:
            return s
        proj = getattr(self, "feature_proj", None)  # (a submodule only once project_features_to ran)
        if proj is not None:  # one map per teacher; a single-head student's one feature feeds all of them
            heads = feats if len(feats) == len(proj) else feats.expand(len(proj), *feats.shape[1:])
            feats = [p(f) for p, f in zip(proj, heads)]
        return stages, feats, s

    def project_features_to(self, dims: list[int | None]) -> None:
        """Give header k a linear map of its pooled feature to width dims[k], the width of *its own* teacher, so
        the feature L1 of spec 2.3 runs when widths differ, also in a mixed ensemble (FitNets' regressor; None:
        that teacher gives no feature). Training-only: logits never pass through it; `deployed_params` leaves
        it out."""
        self.feature_proj = nn.ModuleList(nn.Linear(self.feature_dim, d) if d else nn.Identity() for d in dims)

    def deployed_params(self) -> int:
        """Parameters of the model that predicts (the training-only feature projection excluded)."""
        proj = getattr(self, "feature_proj", None)
        extra = sum(p.numel() for p in proj.parameters()) if proj is not None else 0
        return sum(p.numel() for p in self.parameters()) - extra


class MultiHeaderStudent(StudentBase):
    def __init__(self, trunk: nn.Module, headers: list[nn.Module], num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.headers = nn.ModuleList(headers)
        self.num_classes = num_classes
        self.num_headers = len(headers)
        self.feature_dim = headers[0].classifier.in_features
        self.feature_info = prefixed(trunk.feature_info, "trunk")

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages = self.trunk(x)
        return stages, torch.stack([h.features(stages) for h in self.headers])  # (K, B, D)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([h.classifier(f) for h, f in zip(self.headers, feats)])  # (K, B, C)


class SingleHeadStudent(StudentBase):
    """Presents any zoo classifier as a 1-header student, so one engine serves both kinds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.num_headers = 1
        self.feature_dim = model.feature_dim
        self.feature_info = model.feature_info

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages, pooled = self.model.forward_features(x)
        return stages, pooled.unsqueeze(0)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats[0]).unsqueeze(0)


def as_student(model: nn.Module) -> nn.Module:
    return model if hasattr(model, "num_headers") else SingleHeadStudent(model)


@MODELS.register
def mfs_resnet18(num_classes: int = 10, num_headers: int = 3, width: int = 64, in_chans: int = 3,
                 feature_dim: int | None = None) -> MultiHeaderStudent:
    """Spec 2.2a (`mhresnet8x18`): ResNet-18 trunk, 4 SepConv encoders per header, 512-d feature."""
    trunk = ResNetTrunk((2, 2, 2, 2), width, in_chans)
    w = trunk.widths

    def header() -> MFSHeader:
        encs = [SepConv(w[0], w[1]), SepConv(2 * w[1], w[2]), SepConv(2 * w[2], w[3]), SepConv(2 * w[3], w[3])]
        return MFSHeader(encs, w[3], _proj(w[3], feature_dim), num_classes)

    return MultiHeaderStudent(trunk, [header() for _ in range(num_headers)], num_classes)


def _proj(width: int, feature_dim: int | None) -> int | None:
    """The header projection's width: the requested feature width, or none where the header already has it."""
    return feature_dim if feature_dim and feature_dim != width else None


def _wrn_mfs(widen: int, num_classes: int, num_headers: int, in_chans: int, feature_dim: int | None,
             double: bool) -> MultiHeaderStudent:
    """Spec 2.2c (`mhwrn4x16*`): WRN-16 trunk (no final BN-ReLU); 3 encoders per header to 16, 8, 4 px."""
    trunk = WideTrunk(16, widen, in_chans)
    c = trunk.widths

    def header() -> MFSHeader:
        encs = [SepConv(c[0], c[1], double=double), SepConv(2 * c[1], c[2], double=double),
                SepConv(2 * c[2], c[2], double=double)]
        return MFSHeader(encs, c[2], _proj(c[2], feature_dim), num_classes)

    return MultiHeaderStudent(trunk, [header() for _ in range(num_headers)], num_classes)


@MODELS.register
def mfs_wrn_16_1(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3, feature_dim: int | None = None,
                 double: bool = False) -> MultiHeaderStudent:
    """WRN-16-1 trunk + 3 headers. Single SepConv encoders by default (`double=True` is the spec's MTAN
    encoder): 3 x WRN-16-2 -> this student must stay within 1/8 of the ensemble's 2.09M parameters, and the
    double encoders plus a 64->128 feature projection per header would take it to 0.32M (1/6.5)."""
    return _wrn_mfs(1, num_classes, num_headers, in_chans, feature_dim, double)


@MODELS.register
def mfs_wrn_16_2(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3, feature_dim: int | None = None,
                 double: bool = True) -> MultiHeaderStudent:
    return _wrn_mfs(2, num_classes, num_headers, in_chans, feature_dim, double)


@MODELS.register
def mfs_lenet5_half(num_classes: int = 10, num_headers: int = 3, in_chans: int = 1,
                    feature_dim: int | None = None) -> MultiHeaderStudent:
    """LeNet-5-half trunk (3@14x14, 8@5x5, 60@1x1); each header: 14x14 -> 5x5 -> 1x1 encoders, then a
    projection to `feature_dim` (24 unless the teachers' width is asked for)."""
    trunk = LeNetTrunk(in_chans, (3, 8, 60))

    def header() -> MFSHeader:
        encs = [SepConv(3, 8, k=5, stride=2, padding=0, double=False),
                SepConv(16, 24, k=5, stride=1, padding=0, double=False)]
        return MFSHeader(encs, 60 + 24, feature_dim or 24, num_classes)

    return MultiHeaderStudent(trunk, [header() for _ in range(num_headers)], num_classes)


@MODELS.register
def smh_resnet18(num_classes: int = 10, num_headers: int = 3, width: int = 64, in_chans: int = 3,
                 feature_dim: int | None = None) -> MultiHeaderStudent:
    """Spec 2.2d: shared trunk up to layer4's last block; each header owns a copy of that block."""
    trunk = ResNetTrunk((2, 2, 2, 2), width, in_chans)
    last = trunk.stages[3][-1]
    trunk.stages[3] = trunk.stages[3][:-1]
    headers = [BranchHeader(copy.deepcopy(last), trunk.widths[3], _proj(trunk.widths[3], feature_dim), num_classes)
               for _ in range(num_headers)]
    return MultiHeaderStudent(trunk, headers, num_classes)


@MODELS.register
def mh_lenet5_half(num_classes: int = 10, num_headers: int = 3, in_chans: int = 1,
                   feature_dim: int | None = None) -> MultiHeaderStudent:
    """Spec 2.2e: shared LeNet-5-half convs; each header owns the two fully connected layers."""
    trunk = LeNetTrunk(in_chans, (3, 8, 60))
    headers = [BranchHeader(nn.Identity(), 60, feature_dim or 42, num_classes) for _ in range(num_headers)]
    return MultiHeaderStudent(trunk, headers, num_classes)
