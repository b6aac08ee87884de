"""Model zoo: classifiers (teachers, single-head students), multi-header students, generators.

Every classifier has `forward_features(x) -> (stages, pooled)` and `forward_head(pooled) -> logits`;
multi-header students return per-header tensors stacked on a leading header axis K.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..registry import MODELS
from . import generators, lenet, mfs_backbone, resnet, segmentation, students, wide_resnet  # noqa: F401 (registers)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name (`create_model('lenet5', num_classes=10)`)."""
    return MODELS.build(name, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["create_model", "list_models", "num_params"]
