"""`kind: torchvision`: `torchvision.models.get_model(arch, weights=None, **kwargs)` with a local checkpoint
(a state dict; a whole pickled model only with `run_pickled_code`)."""
from __future__ import annotations

from typing import Any

from .base import KINDS, teacher_name, LastLinearOutputs, Loaded, guarded, load_weights, norm_from, torch_load


@KINDS.register
def torchvision(spec: Any) -> Loaded:
    from torchvision import models
    name = teacher_name(spec)
    obj = torch_load(spec.path, spec.run_pickled_code)
    model = guarded(name, f"torchvision model {spec.arch!r}",
                    lambda: models.get_model(spec.arch, weights=None, **spec.kwargs))
    model = load_weights(model, obj, spec.path, f"torchvision model {spec.arch!r}")
    return Loaded(LastLinearOutputs(model), None, False, norm_from(spec, None, None))
