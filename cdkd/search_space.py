"""Sweep search spaces: read and validate a YAML search space before any trial starts (no Ray here).

A space maps dotted config keys to a distribution or a constant:

    loss.w_adv: {loguniform: [0.1, 10]}
    loss.student_loss: {choice: [l1, kl]}
    train.ema_momentum: {uniform: [0.9, 0.999]}
    train.ema: true                    # a constant: applied to every trial

Every key must exist in the config, every range must be non-empty, and the ends of each range (each choice)
must make a valid config, so a typo or an impossible value stops the sweep with one line naming it.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

import yaml

from .config import Config, ConfigError, _field_types, _merge, _nest, make_config

KINDS = ("uniform", "loguniform", "randint", "choice")


@dataclass(frozen=True)
class Param:
    key: str                 # dotted config key, e.g. "loss.w_adv"
    kind: str                # uniform | loguniform | randint | choice | constant
    args: tuple              # (low, high), the choices, or (value,)


def default_space(method: str) -> dict[str, Any]:
    """The method's active loss weights (log-uniform over 1/10x..10x of the preset, w_header kept as the
    reference scale), and the EMA momentum in [0.9, 0.999] where the method has an EMA generator."""
    cfg = make_config({"method": method})
    space: dict[str, Any] = {}
    for f in dataclasses.fields(cfg.loss):
        value = getattr(cfg.loss, f.name)
        if f.name.startswith("w_") and f.name != "w_header" and isinstance(value, float) and value > 0:
            space[f"loss.{f.name}"] = {"loguniform": [round(value / 10, 6), round(value * 10, 6)]}
    if cfg.train.ema:
        space["train.ema_momentum"] = {"uniform": [0.9, 0.999]}
    return space


def read_space(path: str | None, method: str) -> dict[str, Any]:
    """The raw YAML space at `path`, or the default space of `method` when no path is given."""
    if not path:
        return default_space(method)
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"search space file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise ConfigError(f"search space key {key!r} must be a dotted config key like loss.w_adv")
    if key == "method":
        return
    sections = {f.name: t for f, t in zip(dataclasses.fields(Config), _field_types(Config).values())
                if dataclasses.is_dataclass(t)}
    section, _, name = key.partition(".")
    if section not in sections:
        close = difflib.get_close_matches(section, list(sections), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {', '.join(sections)}"
        raise ConfigError(f"search space: unknown key {key!r}{hint}")
    fields = _field_types(sections[section])
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
        raise ConfigError(f"search space: unknown key {key!r}{hint}")
    if fields[name] not in (int, float, bool, str):
        raise ConfigError(f"search space: {key} is not a scalar setting and cannot be swept")


def _parse_one(key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        return Param(key, "constant", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"search space {key}: expected one of {', '.join(KINDS)} (e.g. {{loguniform: [0.1, 10]}}), "
                          f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search space {key}: choice needs a non-empty list, got {args!r}")
        return Param(key, kind, tuple(args))
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise ConfigError(f"search space {key}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"search space {key}: empty range [{low}, {high}] (low must be < high)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search space {key}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"search space {key}: randint needs integer bounds, got {args!r}")
    return Param(key, kind, (low, high))


def apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base config mapping with dotted `values` set (a new mapping)."""
    out = base
    for key, value in values.items():
        out = _merge(out, _nest(key.split("."), value))
    return out


def parse_space(raw: Any, base: dict[str, Any]) -> list[Param]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("search space: expected a non-empty mapping of config keys to distributions")
    params = []
    for key, spec in raw.items():
        _check_key(key)
        params.append(_parse_one(key, spec))
    swept = [p for p in params if p.kind != "constant"]
    if not swept:
        raise ConfigError("search space: nothing to search (every entry is a constant)")
    constants = {p.key: p.args[0] for p in params if p.kind == "constant"}
    for p in swept:  # every end of every range (every choice) must make a valid config on its own
        for value in p.args:
            if p.kind in ("uniform", "loguniform") and isinstance(value, int):
                value = float(value)
            try:
                make_config(apply(base, {**constants, p.key: value}))
            except ConfigError as e:
                raise ConfigError(f"search space {p.key}={value!r}: {e}") from None
    if any(p.key == "train.ema_momentum" for p in swept) and not any(p.key == "train.ema" for p in swept) \
            and not make_config(apply(base, constants)).train.ema:
        raise ConfigError("search space: train.ema_momentum has no effect with train.ema=false (this method has no "
                          "EMA generator); add 'train.ema: true' to the space")
    return params

