"""Frozen teachers behind one interface: logits, pooled features, stage maps, BN-input statistics.

Three sources: cdkd's own checkpoints (arch + kwargs + state dict), timm models with a local checkpoint,
and TorchScript files. Teachers are always in eval mode with no parameter gradients; nothing is kept
between calls (the BN hooks only collect while `forward(..., bn_stats=True)` runs).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import CdkdError, TeacherError, first_line
from .losses import attention_map, bn_stat_term
from .models import create_model

CHECKPOINT_FORMAT = "cdkd-classifier/1"


@dataclass
class TeacherOutput:
    logits: torch.Tensor                      # (B, C)
    pooled: torch.Tensor | None = None        # (B, D) penultimate feature, None if the teacher cannot give it
    stages: list[torch.Tensor] = field(default_factory=list)  # per-stage feature maps (B, C_j, H_j, W_j)
    bn_terms: list[torch.Tensor] = field(default_factory=list)  # r_l per BN layer, in module order


class TimmAdapter(nn.Module):
    """Gives a timm model cdkd's `forward_features` / `forward_head` interface."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.feature_info = list(getattr(model, "feature_info", []))

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if hasattr(self.model, "forward_intermediates"):
            final, stages = self.model.forward_intermediates(x)
        else:
            final, stages = self.model.forward_features(x), []
        return list(stages), self.model.forward_head(final, pre_logits=True)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(pooled)


class Teacher(nn.Module):
    def __init__(self, model: nn.Module, name: str, source: str, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        for p in model.parameters():  # (ScriptModules have no requires_grad_)
            p.requires_grad_(False)
        self.name = name
        self.source = source
        self.input_shape = input_shape
        self.has_features = hasattr(model, "forward_features")
        self._bn_terms: list[torch.Tensor] | None = None
        self._global_batch = False
        if not isinstance(model, torch.jit.ScriptModule):
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.register_forward_pre_hook(self._bn_hook)
        self.num_bn = sum(isinstance(m, _BatchNorm) for m in model.modules()) if self.has_features else 0
        self.state_hash = state_hash(model)

    def _bn_hook(self, module: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        if self._bn_terms is not None:
            self._bn_terms.append(bn_stat_term(inputs[0], module.running_mean, module.running_var,
                                               self._global_batch))

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen: BN always uses running statistics

    def forward(self, x: torch.Tensor, bn_stats: bool = False, global_batch: bool = False) -> TeacherOutput:
        """Logits, pooled features, stage maps; with `bn_stats` the BN-prior terms r_l of this batch (over the
        batch of all DDP ranks with `global_batch`)."""
        self._bn_terms = [] if bn_stats else None
        self._global_batch = global_batch
        try:
            if not self.has_features:
                return TeacherOutput(self.model(x))
            stages, pooled = self.model.forward_features(x)
            return TeacherOutput(self.model.forward_head(pooled), pooled, stages, self._bn_terms or [])
        finally:
            self._bn_terms = None

    @torch.no_grad()
    def attention_maps(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        return [attention_map(a) for a in stages]


def state_hash(model: nn.Module) -> str:
    """sha1 of a model's parameters and buffers (names, shapes and bytes): which weights a file was built for."""
    h = hashlib.sha1()
    for name, v in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_classifier(path: str, model: nn.Module, arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                    meta: dict[str, Any] | None = None) -> None:
    """Write a cdkd classifier checkpoint atomically (teachers, trained students)."""
    from .checkpoint import atomic_save
    atomic_save({"format": CHECKPOINT_FORMAT, "arch": arch, "kwargs": kwargs, "input_shape": list(input_shape),
                 "state_dict": model.state_dict(), "meta": meta or {}}, path)


def _load_cdkd(path: str) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TeacherError(f"{path}: not a cdkd classifier checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("arch", "kwargs", "state_dict", "input_shape") if k not in ckpt]
    if missing:
        raise TeacherError(f"{path}: cdkd classifier checkpoint without {', '.join(missing)}")
    try:
        model = create_model(ckpt["arch"], **ckpt["kwargs"])
    except (CdkdError, TypeError) as e:
        raise TeacherError(f"{path}: cannot build {ckpt['arch']!r} with {ckpt['kwargs']} ({first_line(e)})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise TeacherError(f"{path}: weights do not match architecture {ckpt['arch']!r}: {first_line(e)}")
    return model, tuple(ckpt["input_shape"]), ckpt.get("meta", {})


def _load_timm(path: str, arch: str, kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...] | None]:
    import timm
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise TeacherError(f"timm model {arch!r}: {e}")
    state = _torch_load(path)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise TeacherError(f"{path}: weights do not match timm model {arch!r}: {first_line(e)}")
    shape = tuple(model.pretrained_cfg.get("input_size", ())) or None
    return TimmAdapter(model), shape


def _torch_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise TeacherError(f"teacher checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty or corrupt file, truncated write, pickle of foreign objects
        raise TeacherError(f"{path}: cannot read checkpoint ({first_line(e)})") from None


def load_teacher(spec: Any) -> Teacher:
    """Build a frozen Teacher from a `TeacherSpec` (kind 'cdkd', 'timm' or 'torchscript')."""
    name = spec.name or os.path.basename(spec.path)
    if spec.kind == "cdkd":
        model, shape, _ = _load_cdkd(spec.path)
    elif spec.kind == "timm":
        model, shape = _load_timm(spec.path, spec.arch, dict(spec.kwargs))
    elif spec.kind == "torchscript":
        if not os.path.isfile(spec.path):
            raise TeacherError(f"teacher checkpoint not found: {spec.path}")
        try:
            model, shape = torch.jit.load(spec.path, map_location="cpu"), None
        except Exception as e:
            raise TeacherError(f"{spec.path}: cannot load TorchScript ({first_line(e)})") from None
    else:
        raise TeacherError(f"teacher {name!r}: unknown kind {spec.kind!r} (cdkd, timm, torchscript)")
    if spec.input_shape:
        shape = tuple(spec.input_shape)
    return Teacher(model, name, spec.path, shape)


def validate_teachers(teachers: list[Teacher], input_shape: tuple[int, ...] | None = None) -> tuple[int, tuple[int, ...]]:
    """Check that all teachers take the same input shape and predict the same number of classes.

    Returns (num_classes, input_shape). Raises TeacherError naming the first teacher that disagrees.
    """
    if not teachers:
        raise TeacherError("no teachers given")
    ref = teachers[0]
    shape = input_shape or ref.input_shape
    if shape is None:
        raise TeacherError(f"teacher {ref.name!r} does not declare its input shape; set teachers[].input_shape")
    for t in teachers:
        if t.input_shape is not None and tuple(t.input_shape) != tuple(shape):
            raise TeacherError(f"teacher {t.name!r} expects input {tuple(t.input_shape)} but {ref.name!r} "
                               f"expects {tuple(shape)}")
    classes = []
    with torch.no_grad():
        for t in teachers:
            try:
                out = t(torch.zeros(2, *shape))
            except Exception as e:
                raise TeacherError(f"teacher {t.name!r} fails on input {tuple(shape)}: {first_line(e)}") from None
            classes.append(out.logits.shape[-1])
            if classes[-1] != classes[0]:
                raise TeacherError(f"teacher {t.name!r} predicts {classes[-1]} classes but {ref.name!r} predicts "
                                   f"{classes[0]}")
    return classes[0], tuple(shape)
