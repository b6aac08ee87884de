"""Dense-prediction models: LR-ASPP on MobileNetV3 (torchvision's parts), as teachers and multi-header students.

Why these: on a 2-core AMX Xeon, one fp32 training step (B=8, 120x160) takes 0.18 s for LR-ASPP/MobileNetV3-Large
(3.2M), 0.39 s for DeepLabV3/MobileNetV3-Large (11.0M), 0.083 s for LR-ASPP/MobileNetV3-Small (1.08M) and 0.055 s
at width 0.5 (0.33M); bf16 autocast is no faster for any of them (depthwise convolutions). So the teacher is
LR-ASPP/MobileNetV3-Large and the student a MobileNetV3-Small trunk at width 0.75 under K LR-ASPP headers.

Dense models answer `outputs(x) -> (stages, None, logits (B, C, H, W))` (no pooled feature: the feature L1 is
off for them) and `forward(x) -> logits`; the multi-header student stacks its headers: (K, B, C, H, W).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.lraspp import LRASPPHead

from ..registry import MODELS
from .base import stage_info


class MobileNetTrunk(nn.Module):
    """MobileNetV3 features (dilated: output stride 16) returning the stride-8 ('low') and last ('high') maps,
    the two levels LR-ASPP reads (torchvision's `_lraspp_mobilenetv3` picks the same blocks)."""

    def __init__(self, size: str = "large", width_mult: float = 1.0, in_chans: int = 3) -> None:
        super().__init__()
        build = mobilenet_v3_large if size == "large" else mobilenet_v3_small
        features = build(weights=None, width_mult=width_mult, dilated=True).features
        if in_chans != 3:
            conv = features[0][0]
            features[0][0] = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                       bias=False)
        cn = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        low, high = cn[-4], cn[-1]
        self.low_channels, self.high_channels = features[low].out_channels, features[high].out_channels
        self.body = IntermediateLayerGetter(features, {str(low): "low", str(high): "high"})
        self.feature_info = stage_info([self.low_channels, self.high_channels], [8, 16],
                                       [f"body.{low}", f"body.{high}"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return [out["low"], out["high"]]


def _upsampled(head: nn.Module, stages: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
    logits = head({"low": stages[0], "high": stages[1]})
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class LRASPPNet(nn.Module):
    """A single-head LR-ASPP segmenter (a teacher)."""
    dense = True

    def __init__(self, num_classes: int, size: str = "large", width_mult: float = 1.0, in_chans: int = 3,
                 inter_channels: int = 128) -> None:
        super().__init__()
        self.trunk = MobileNetTrunk(size, width_mult, in_chans)
        self.head = LRASPPHead(self.trunk.low_channels, self.trunk.high_channels, num_classes, inter_channels)
        self.num_classes = num_classes
        self.feature_info = self.trunk.feature_info

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], None, torch.Tensor]:
        stages = self.trunk(x)
        return stages, None, _upsampled(self.head, stages, x.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[2]


class MultiHeaderSegStudent(nn.Module):
    """Shared trunk, K LR-ASPP headers (header k imitates teacher k); logits (K, B, C, H, W).

    Each header reads two trunk levels (stride 8 and 16), LR-ASPP's own multi-level fusion; the trunk is shared.
    The engine's student interface: `forward(x, features=True) -> (stages, None, logits)`.
    """
    dense = True
    feature_dim = None

    def __init__(self, num_classes: int, num_headers: int = 1, size: str = "small", width_mult: float = 0.75,
                 in_chans: int = 3, inter_channels: int = 64) -> None:
        super().__init__()
        self.trunk = MobileNetTrunk(size, width_mult, in_chans)
        self.headers = nn.ModuleList(LRASPPHead(self.trunk.low_channels, self.trunk.high_channels, num_classes,
                                                inter_channels) for _ in range(num_headers))
        self.num_classes, self.num_headers = num_classes, num_headers
        self.feature_info = self.trunk.feature_info

    def forward(self, x: torch.Tensor, features: bool = False):
        stages = self.trunk(x)
        s = torch.stack([_upsampled(h, stages, x.shape[-2:]) for h in self.headers])
        return (stages, None, s) if features else s

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], None]:
        return self.trunk(x), None

    def project_features_to(self, dims: list[int | None]) -> None:
        raise NotImplementedError("dense students have no pooled feature (loss.w_feat must be 0)")

    def deployed_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@MODELS.register
def lraspp_mbv3_large(num_classes: int = 11, in_chans: int = 3) -> LRASPPNet:
    """torchvision's `lraspp_mobilenet_v3_large` (3.2M at 11 classes), built without weights."""
    return LRASPPNet(num_classes, "large", 1.0, in_chans)


@MODELS.register
def lraspp_mbv3_small(num_classes: int = 11, in_chans: int = 3, width_mult: float = 1.0) -> LRASPPNet:
    """LR-ASPP on MobileNetV3-Small (1.08M at width 1): a smaller teacher (students: `mh_lraspp_mbv3_small`)."""
    return LRASPPNet(num_classes, "small", width_mult, in_chans)


@MODELS.register
def mh_lraspp_mbv3_small(num_classes: int = 11, num_headers: int = 1, in_chans: int = 3, width_mult: float = 0.75,
                         inter_channels: int = 64) -> MultiHeaderSegStudent:
    """The segmentation student: MobileNetV3-Small x0.75 trunk, K LR-ASPP headers of 64 channels."""
    return MultiHeaderSegStudent(num_classes, num_headers, "small", width_mult, in_chans, inter_channels)
