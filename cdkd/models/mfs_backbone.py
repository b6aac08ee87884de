"""CDFKD-MFS students for 64-224 px inputs: a timm `features_only` backbone as the shared trunk.

The trunk taps levels u_0..u_{n-1} of the backbone (`out_indices`); every header owns a chain of `SepConv`
encoders (students.py's `MFSHeader`), a_0 = E_0(u_0), a_j = E_j(concat(u_j, a_{j-1})), and pools a_{n-1}.

- Widths: E_j outputs the channels of level j+1 (scaled by `header_width`), so E_j (j >= 1) reads twice the
  level's channels, as in `mfs_resnet18`. The last encoder E_{n-1} outputs `top_chs` channels (default: the
  backbone's final level width, 512 for a ResNet-18) at the backbone's final reduction: with the default
  `out_indices=(1, 2, 3)` the trunk stops after layer3 and each header's last encoder stands in for the
  untapped layer4 (stride 2), which is what keeps the student within a quarter of a ResNet-18 ensemble.
  Tapping the final level too, E_{n-1} has stride 1.
- Strides and sizes: E_j's stride is the ratio of the reductions of levels j+1 and j (2 for every timm
  backbone here), so its output has ceil(H/2) x ceil(W/2) pixels. Backbones whose downsampling ceils odd
  sizes the same way (ResNets' stride-2 3x3 convs and max-pool, MobileNet/EfficientNet convs) give exactly
  level j+1's size for any H x W, square or not. Backbones that floor (patchify stems and 2x2 stride-2
  downsamplers, e.g. ConvNeXt at 108 px: level 27 -> 13, encoder 27 -> 14) would not line up; there
  `MFSHeader` average-pools the encoder output to the next level's size (`students.fit_to`, an
  `F.adaptive_avg_pool2d`) before the concatenation. Sizes are concrete at trace time, so an export with a
  dynamic batch dimension carries only the branch that its example input took.
"""
from __future__ import annotations

from typing import Any, Sequence

import timm
from timm.models import FeatureDictNet, FeatureListNet
import torch
import torch.nn as nn

from ..registry import MODELS
from .base import stage_info
from .students import MFSHeader, MultiHeaderStudent, SepConv, _proj


class TimmTrunk(nn.Module):
    """A timm `features_only` model that returns its tapped levels as a list, with cdkd's `feature_info`."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        info = body.feature_info
        self.widths = list(info.channels())
        self.reductions = list(info.reduction())
        modules = dict(self.named_modules())
        names = []
        for m in info.module_name():  # FeatureListNet flattens "blocks.1" into "blocks_1"; FeatureGetterNet wraps
            candidates = [f"body.{m}", f"body.{m.replace('.', '_')}", f"body.model.{m}"]
            names.append(next((n for n in candidates if n in modules), candidates[0]))
        self.feature_info = stage_info(self.widths, self.reductions, names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def _round(c: float) -> int:
    return max(8, int(round(c / 8)) * 8)


def build_mfs_timm(backbone: str, num_classes: int, num_headers: int, in_chans: int, feature_dim: int | None,
                   out_indices: Sequence[int], header_width: float, top_chs: int | None, double: bool,
                   **timm_kwargs: Any) -> MultiHeaderStudent:
    """The student for any timm backbone that supports `features_only` (see the module docstring)."""
    kwargs = dict(pretrained=False, features_only=True, in_chans=in_chans, **timm_kwargs)
    with torch.device("meta"):  # the whole backbone's levels, to know its final width and reduction
        whole = timm.create_model(backbone, **kwargs)
    full = whole.feature_info
    if not isinstance(whole, (FeatureListNet, FeatureDictNet)) and "feature_cls" not in kwargs:
        # e.g. MobileNetV3Features/EfficientNetFeatures keep every block, so untapped levels would be parameters
        # without gradients (DDP's unused-parameter error, inflated counts): take timm's pruning feature getter
        kwargs["feature_cls"] = "getter"
    trunk = TimmTrunk(timm.create_model(backbone, out_indices=tuple(out_indices), **kwargs))
    c, r = trunk.widths, trunk.reductions
    top = top_chs or _round(full.channels()[-1] * header_width)
    outs = [_round(c[j + 1] * header_width) for j in range(len(c) - 1)] + [top]
    strides = [r[j + 1] // r[j] for j in range(len(r) - 1)] + [max(1, full.reduction()[-1] // r[-1])]

    def header() -> MFSHeader:
        ins = [c[0]] + [c[j] + outs[j - 1] for j in range(1, len(c))]
        encs = [SepConv(i, o, stride=s, double=double) for i, o, s in zip(ins, outs, strides)]
        return MFSHeader(encs, top, _proj(top, feature_dim), num_classes)

    return MultiHeaderStudent(trunk, [header() for _ in range(num_headers)], num_classes)


@MODELS.register
def mfs_timm(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3, backbone: str = "resnet18",
             feature_dim: int | None = None, out_indices: Sequence[int] = (1, 2, 3), header_width: float = 1.0,
             top_chs: int | None = None, double: bool = True, **timm_kwargs: Any) -> MultiHeaderStudent:
    """MFS student on a timm backbone (default: ResNet-18 stem..layer3 shared, each header's last encoder in
    place of layer4), for 64-224 px inputs; `timm_kwargs` go to `timm.create_model` (never pretrained).

    TIMINGS
    """
    return build_mfs_timm(backbone, num_classes, num_headers, in_chans, feature_dim, out_indices, header_width,
                          top_chs, double, **timm_kwargs)


@MODELS.register
def mfs_timm_small(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3,
                   backbone: str = "mobilenetv3_small_100", feature_dim: int | None = None,
                   out_indices: Sequence[int] = (1, 2, 3), header_width: float = 1.0, top_chs: int | None = None,
                   double: bool = True, **timm_kwargs: Any) -> MultiHeaderStudent:
    """The small configuration of `mfs_timm`.

    SMALL
    """
    return build_mfs_timm(backbone, num_classes, num_headers, in_chans, feature_dim, out_indices, header_width,
                          top_chs, double, **timm_kwargs)
