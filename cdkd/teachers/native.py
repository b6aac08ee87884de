"""`kind: cdkd`: cdkd's own classifier checkpoints (arch + kwargs + state dict + input shape + meta)."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..data import STATS
from ..errors import CdkdError, TeacherError, first_line
from ..models import create_model
from .base import KINDS, ClassifierOutputs, DenseOutputs, InputNorm, Loaded, norm_from, torch_load

CHECKPOINT_FORMAT = "cdkd-classifier/1"


def save_classifier(path: str, model: nn.Module, arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                    meta: dict[str, Any] | None = None, norm: InputNorm | None = None) -> None:
    """Write a cdkd classifier checkpoint atomically (teachers, trained students); `norm`: its input normalisation."""
    from ..checkpoint import atomic_save
    atomic_save({"format": CHECKPOINT_FORMAT, "arch": arch, "kwargs": kwargs, "input_shape": list(input_shape),
                 "state_dict": model.state_dict(), "meta": meta or {},
                 **({"norm": norm.to_dict()} if norm else {})}, path)


def load_cdkd(path: str) -> tuple[nn.Module, tuple[int, ...], dict[str, Any], InputNorm | None]:
    """(model, input shape, meta, input normalisation or None) of a cdkd classifier checkpoint."""
    ckpt = torch_load(path)
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
    meta, norm = ckpt.get("meta", {}), ckpt.get("norm")
    if norm is None and meta.get("dataset") in STATS:  # checkpoints from before `norm`: the data set's own
        norm = dict(zip(("mean", "std"), STATS[meta["dataset"]]))
    return model, tuple(ckpt["input_shape"]), meta, InputNorm(tuple(norm["mean"]), tuple(norm["std"])) if norm else None


@KINDS.register
def cdkd(spec: Any) -> Loaded:
    model, shape, meta, norm = load_cdkd(spec.path)
    adapter = DenseOutputs(model) if getattr(model, "dense", False) else ClassifierOutputs(model)
    return Loaded(adapter, shape, True, norm_from(spec, norm, shape[0]), meta)
