"""One generic name -> factory registry (timm's `register_model`, but duplicates raise)."""
from __future__ import annotations

import difflib
from typing import Any, Callable


class Registry:
    """Maps names to factory functions; `build` gives a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = fn
        return fn

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under `name` (to inspect its signature); unknown names raise ConfigError."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
            from .errors import ConfigError
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


MODELS = Registry("model")
