"""`kind: torchscript`: a TorchScript file (torch 2.14 deprecates `jit.load`; prefer `kind: export`). Logits only."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TeacherError, first_line
from .base import KINDS, Loaded, LogitsOutputs, check_file, norm_from
from .exported import DROPPED


@KINDS.register
def torchscript(spec: Any) -> Loaded:
    check_file(spec.path)
    try:
        model = torch.jit.load(spec.path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise TeacherError(f"{spec.path}: cannot load TorchScript ({first_line(e)})") from None
    return Loaded(LogitsOutputs(model), None, False, norm_from(spec, None, None), dropped=DROPPED)
