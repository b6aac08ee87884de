"""The classifier interface every zoo model shares (timm's method names, cdkd's return values).

- `forward_features(x) -> (stages, pooled)`: the per-stage feature maps (for attention transfer and the BN
  prior's hooks) and the pooled penultimate feature (for the feature L1);
- `forward_head(pooled) -> logits`;
- `feature_info`: one dict per stage map, `{num_chs, reduction, module}`, as timm's `feature_info` lists them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def stage_info(widths: list[int] | tuple[int, ...], reductions: list[int] | tuple[int, ...],
               modules: list[str]) -> list[dict]:
    """timm-style feature_info: channels, total stride and module name of each stage output."""
    return [{"num_chs": c, "reduction": r, "module": m} for c, r, m in zip(widths, reductions, modules)]


def prefixed(info: list[dict], prefix: str) -> list[dict]:
    """A trunk's feature_info seen from the model that holds it as `prefix`."""
    return [{**f, "module": f"{prefix}.{f['module']}"} for f in info]


class Classifier(nn.Module):
    """Base of single-head classifiers: forward = forward_head(forward_features(x)[1]).

    Subclasses set `num_classes`, `feature_dim` (pooled width), `feature_info` and `classifier` (the head).
    (No class-level annotations: TorchScript would read them as attribute declarations.)
    """

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[1])
