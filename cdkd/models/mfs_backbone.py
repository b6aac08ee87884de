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
def mfs_timm(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3, backbone: str = "resnet10t",
             feature_dim: int | None = None, out_indices: Sequence[int] = (1, 2, 3), header_width: float = 1.0,
             top_chs: int | None = None, double: bool = True, **timm_kwargs: Any) -> MultiHeaderStudent:
    """MFS student on a timm backbone for 64-224 px inputs; `timm_kwargs` go to `timm.create_model` (never
    pretrained). Default: ResNet-10-T stem..layer3 shared (64, 128, 256 ch at strides 4, 8, 16), each header
    three double SepConv encoders 64->128, 256->256, 512->512 (the last, stride 2, in place of layer4), 512-d
    feature, like the ResNet-18 teachers'.

    Parameters with K=3 headers (10 / 100 classes); the budget is 1/4 of three ResNet-18s, 8.39M:
      backbone="resnet10t" (default)       3.32M / 3.46M  (trunk 1.25M, 0.69M per header)
      backbone="resnet18"                  4.86M / 4.99M  (trunk 2.78M)
      backbone="regnetx_004"               1.41M / 1.51M
      mobilenetv3_small_100 (mfs_timm_small) 0.43M / 0.59M
      resnet10t, out_indices=(1,2,3,4), double=False: 7.58M; resnet18 with layer4 shared is over (13.8M).

    One training step (forward + backward, batch 32, channels_last) on "Intel(R) Xeon(R) Processor" (lscpu:
    family 6 model 167 under KVM, 2 cores, AVX-512, AMX-BF16). The machine was shared with other jobs, so
    the first two columns are single-thread CPU time (`process_time`, min of 2 after 2 warm-up steps, models
    interleaved, the comparable figures); the last is wall time with 2 threads, median of 3 after 1 warm-up,
    taken one model after the other as other jobs started (load 0.5 at the start): indicative only. 64 / 128 px:
                            fp32            bf16 autocast    2 threads fp32, wall
      resnet10t (default)   232 / 749 ms    137 / 392 ms     123 / 431 ms
      resnet18              307 / 934 ms    161 / 430 ms     154 / 634 ms
      regnetx_004           173 / 414 ms    101 / 264 ms     -
      mobilenetv3_small_100 151 / 253 ms    129 / 310 ms     249 / 915 ms
      efficientnet_b0       351 / 1239 ms   -                -
      resnet10t (1,2,3,4) single encoders 327 / 880 ms fp32.
    The default is the fastest ResNet trunk within the budget: the ResNet-18 variant takes 1.25-1.3x its step
    time (fp32) for 1.46x the parameters, and a ResNet trunk keeps the teachers' stage geometry (channels,
    strides) for attention transfer. The depthwise backbones (MobileNetV3, EfficientNet) are small but gain
    little or nothing from bf16 and scaled worst to 2 threads in the one 2-thread run; RegNetX-400MF is the
    fast choice for a budget of ~1.5M (`backbone="regnetx_004"`).
    """
    return build_mfs_timm(backbone, num_classes, num_headers, in_chans, feature_dim, out_indices, header_width,
                          top_chs, double, **timm_kwargs)


@MODELS.register
def mfs_timm_small(num_classes: int = 10, num_headers: int = 3, in_chans: int = 3,
                   backbone: str = "mobilenetv3_small_100", feature_dim: int | None = None,
                   out_indices: Sequence[int] = (1, 2, 3), header_width: float = 1.0, top_chs: int | None = None,
                   double: bool = True, **timm_kwargs: Any) -> MultiHeaderStudent:
    """The small configuration of `mfs_timm`: MobileNetV3-Small up to blocks.3 (16, 24, 48 ch at strides 4, 8,
    16; timm's pruning feature getter, so the untapped blocks are not built), headers 16->24, 48->48 and
    96->576 (stride 2) with double SepConv encoders, 576-d feature.

    0.43M parameters with K=3 headers and 10 classes, 0.59M with 100 (trunk 0.19M): 1/19 of three ResNet-18s,
    for a budget of 1/8 or less. Step times: see `mfs_timm` (151 / 253 ms single-thread fp32 at 64 / 128 px,
    batch 32; depthwise-heavy, so it gains little from bf16 autocast, and `SepConv`'s depthwise layers run
    in fp32 there anyway).
    """
    return build_mfs_timm(backbone, num_classes, num_headers, in_chans, feature_dim, out_indices, header_width,
                          top_chs, double, **timm_kwargs)
