"""Registries of methods, metrics and attacks: name -> object, with metadata and did-you-mean errors.

Inspired by lm-evaluation-harness's task registry: entries are registered by decorator, carry their
metadata (direction, version, description) and are looked up by name with helpful errors.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A name -> object mapping for one kind of component (``kind`` is used in error messages)."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.package = package  # the built-in modules, imported on first lookup
        self.meta: dict[str, dict[str, Any]] = {}
        self._loaded = package is None

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
        self._load_builtins()
        if name in self:
            return self[name]
        close = difflib.get_close_matches(name, list(self), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown {self.kind} '{name}'{hint} (available: {', '.join(sorted(self))})"
        )

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self)

    def _load_builtins(self) -> None:
        """Import every module of this registry's package once, so that their decorators run."""
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")


METHODS = Registry("method", "unlearnkit.methods")
METRICS = Registry("metric", "unlearnkit.metrics")
ATTACKS = Registry("attack", "unlearnkit.attacks")
