"""Element-wise checks of the list- and dict-valued config keys, and a size limit for loaded YAML.

`check_elements(cfg)` is called at the end of `config.validate`; `check_document` right after a YAML file is
parsed (anchors and aliases can make a small file expand into a huge or very deep structure).
"""
from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

MAX_DEPTH = 50          # a run config is at most ~4 levels deep
MAX_VALUES = 100_000    # values after expanding aliases


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_elements(cfg: Any) -> None:
    """Every element of the list/dict config values, naming the key and the element's index or key."""
    ms = cfg.optim.milestones
    for i, m in enumerate(ms):
        if not _number(m) or not 0.0 < m < 1.0:
            raise ConfigError(f"config optim.milestones[{i}]={m!r}: must be a number in (0, 1) (a fraction of "
                              "train.iterations)")
        if i and m <= ms[i - 1]:
            raise ConfigError(f"config optim.milestones must increase: [{i - 1}]={ms[i - 1]!r} then [{i}]={m!r}")
    for i, t in enumerate(cfg.teachers):
        if not isinstance(t.input_shape, list):
            raise ConfigError(f"config teachers[{i}].input_shape: expected a list of positive ints, got "
                              f"{t.input_shape!r}")
        for j, n in enumerate(t.input_shape):
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ConfigError(f"config teachers[{i}].input_shape[{j}]={n!r}: must be a positive int "
                                  "(e.g. [3, 32, 32])")
        _str_keys(t.kwargs, f"teachers[{i}].kwargs")
    _str_keys(cfg.model.student_kwargs, "model.student_kwargs")
    for key in ("worker_resources", "teacher_resources"):
        value = getattr(cfg.distributed, key)
        _str_keys(value, f"distributed.{key}")
        for name, amount in value.items():
            if not _number(amount) or amount < 0:
                raise ConfigError(f"config distributed.{key}[{name!r}]={amount!r}: must be a non-negative number "
                                  "(an amount of a Ray resource)")


def _str_keys(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"config {where}: expected a mapping, got {value!r}")
    for k in value:
        if not isinstance(k, str) or not k:
            raise ConfigError(f"config {where}: key {k!r} must be a non-empty string")


def check_document(data: Any, path: str) -> None:
    """Refuse documents deeper than MAX_DEPTH or with more than MAX_VALUES values once aliases expand."""
    count, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{path}: invalid config (more than {MAX_VALUES:,} values once YAML aliases expand; "
                              "an alias bomb?)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}: invalid config (nested deeper than {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for kv in node.items() for v in kv]
        elif isinstance(node, (list, tuple)):
            stack += [(v, depth + 1) for v in node]
