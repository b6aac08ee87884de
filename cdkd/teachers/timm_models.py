"""`kind: timm`: `timm.create_model(arch, checkpoint_path=...)`; timm reads EMA keys and `module.` prefixes,
with `weights_only` loading. Input size and mean/std come from the model's `pretrained_cfg` unless the spec says."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .base import KINDS, teacher_name, InputNorm, Loaded, check_file, guarded, norm_from


class TimmOutputs(nn.Module):
    """A timm model's own feature API as teacher outputs: `forward_intermediates` gives the stage maps and the
    final map in one pass; `forward_head(pre_logits=True)` the pooled feature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        if hasattr(self.model, "forward_intermediates"):
            final, stages = self.model.forward_intermediates(x)
        else:
            final, stages = self.model.forward_features(x), []
        pooled = self.model.forward_head(final, pre_logits=True)
        return list(stages), pooled, self.model.get_classifier()(pooled)


@KINDS.register
def timm(spec: Any) -> Loaded:
    import timm as timm_lib
    name = teacher_name(spec)
    check_file(spec.path)
    model = guarded(name, f"timm model {spec.arch!r}",
                    lambda: timm_lib.create_model(spec.arch, pretrained=False, checkpoint_path=spec.path,
                                                  **spec.kwargs))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    shape = tuple(cfg["input_size"]) if cfg.get("input_size") else None
    chans = getattr(model, "in_chans", None) or spec.kwargs.get("in_chans", 3)
    if shape is not None and shape[0] != chans:
        shape = (chans, *shape[1:])
    default = InputNorm(tuple(cfg["mean"]), tuple(cfg["std"])) if cfg.get("mean") and cfg.get("std") else None
    return Loaded(TimmOutputs(model), shape, False, norm_from(spec, default, chans))
