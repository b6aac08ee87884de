"""`kind: export`: a `torch.export` program (`.pt2`), the format torch recommends over TorchScript.

The program is a black box here: logits only (no pooled feature, and its BatchNorm is no module to hook),
so the feature loss and the BN prior drop out for it. Its input shape comes from the program's signature.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TeacherError, first_line
from .base import KINDS, Loaded, LogitsOutputs, check_file, norm_from

DROPPED = ("feature loss", "BN-statistics prior", "attention transfer")


@KINDS.register
def export(spec: Any) -> Loaded:
    check_file(spec.path)
    try:
        program = torch.export.load(spec.path)
    except Exception as e:  # noqa: BLE001
        raise TeacherError(f"{spec.path}: cannot load a torch.export program ({first_line(e)})") from None
    shape = None
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name not in program.graph_signature
              .inputs_to_parameters and n.name not in program.graph_signature.inputs_to_buffers]
    if inputs and "val" in inputs[0].meta and len(inputs[0].meta["val"].shape) == 4:
        dims = inputs[0].meta["val"].shape[1:]
        if all(isinstance(d, int) for d in dims):
            shape = tuple(int(d) for d in dims)
    return Loaded(LogitsOutputs(program.module()), shape, shape is not None, norm_from(spec, None, None),
                  dropped=DROPPED)
