"""`kind: torchvision`: `torchvision.models.get_model(arch, weights=None, **kwargs)` with a local checkpoint
(a state dict; a whole pickled model only with `run_pickled_code`). Segmentation models (`lraspp_*`,
`deeplabv3_*`, `fcn_*`) are built with `weights_backbone=None` too (nothing is downloaded) and answer
`model(x)['out']`."""
from __future__ import annotations

from typing import Any

from .base import (KINDS, LastLinearOutputs, Loaded, OutDictOutputs, guarded, load_weights, norm_from, teacher_name,
                   torch_load)


@KINDS.register
def torchvision(spec: Any) -> Loaded:
    from torchvision import models
    name = teacher_name(spec)
    obj = torch_load(spec.path, spec.run_pickled_code)
    dense = spec.arch in models.list_models(module=models.segmentation)
    kwargs = {"weights_backbone": None, **spec.kwargs} if dense else spec.kwargs
    model = guarded(name, f"torchvision model {spec.arch!r}",
                    lambda: models.get_model(spec.arch, weights=None, **kwargs))
    model = load_weights(model, obj, spec.path, f"torchvision model {spec.arch!r}")
    return Loaded(OutDictOutputs(model) if dense else LastLinearOutputs(model), None, False,
                  norm_from(spec, None, None))
