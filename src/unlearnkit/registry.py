"""Registries of methods, metrics and attacks: name -> object, with metadata and did-you-mean errors.

Inspired by lm-evaluation-harness's task registry: entries are registered by decorator, carry their
metadata (direction, version, description) and are looked up by name with helpful errors.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A name -> object mapping for one kind of component (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@METRICS.register("truth_ratio", higher_is_better=None, version=1)``."""

        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = obj
            self.meta[name] = dict(meta)
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> Any:  # type: ignore[override]
        """Return the entry called ``name``; unknown names raise a ConfigError with suggestions."""
        _load_builtins()
        if name in self:
            return self[name]
        close = difflib.get_close_matches(name, list(self), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown {self.kind} '{name}'{hint} (available: {', '.join(sorted(self))})"
        )

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self)


METHODS = Registry("method")
METRICS = Registry("metric")
ATTACKS = Registry("attack")

_loaded = False


def _load_builtins() -> None:
    """Import the built-in method/metric modules once so that their decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from . import methods, metrics

    for pkg in (methods, metrics):
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
