"""`kind: python`: a user's own `nn.Module`, built by `factory: "package.module:callable"` with kwargs, then
loaded with a local checkpoint. A class with cdkd's `forward_features`/`forward_head` gives stage maps too."""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import TeacherError, first_line
from .base import KINDS, teacher_name, ClassifierOutputs, LastLinearOutputs, Loaded, guarded, load_weights, norm_from, torch_load


def resolve_factory(factory: str, name: str) -> Any:
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise TeacherError(f"teacher {name!r}: factory {factory!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module raises on import
        raise TeacherError(f"teacher {name!r}: cannot import {module_name!r} ({first_line(e)}); is it on "
                           "PYTHONPATH?") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise TeacherError(f"teacher {name!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise TeacherError(f"teacher {name!r}: {factory!r} is not callable")
    return fn


@KINDS.register
def python(spec: Any) -> Loaded:
    name = teacher_name(spec)
    fn = resolve_factory(spec.factory, name)
    obj = torch_load(spec.path, spec.run_pickled_code)
    model = guarded(name, spec.factory, lambda: fn(**spec.kwargs))
    model = load_weights(model, obj, spec.path, spec.factory)
    shape = getattr(model, "input_shape", None)
    wrap = ClassifierOutputs if hasattr(model, "forward_features") and hasattr(model, "forward_head") \
        else LastLinearOutputs
    return Loaded(wrap(model), tuple(shape) if shape else None, bool(shape), norm_from(spec, None, None))
