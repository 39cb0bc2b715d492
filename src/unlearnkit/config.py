"""Dataclass configs - the single source of truth for the CLI, YAML files and the Python API.

``from_dict`` builds a config from nested dicts (YAML) and rejects unknown keys with a
suggestion; ``apply_overrides`` applies ``section.key=value`` strings with type coercion
(``train.lr=2e-5``, ``method.beta=0.2``, ``model.lora.r=8``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data.format import PromptTemplate
from .data.records import Keys
from .errors import ConfigError
from .metrics.probes import ProbeSettings
from .muse import MuseSettings
from .models import LoraSettings
from .train import TrainConfig

C = TypeVar("C")


@dataclass
class ModelConfig:
    path: str = ""  # a local from_pretrained directory
    trust_remote_code: bool = False
    allow_pickle: bool = False  # refuse pytorch_model.bin unless set
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class DataConfig:
    forget: str | None = None  # unlearn: records to forget
    retain: str | None = None  # unlearn: records to keep (cycled alongside the forget set)
    train: str | None = None  # finetune: records to learn
    keys: Keys = field(default_factory=Keys)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512  # TOFU truncation


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=5))
    # WiSE-FT (Wortsman et al. 2022): save alpha x finetuned + (1 - alpha) x starting weights; 1 = off
    wise_alpha: float = 1.0
    out: str = ""


@dataclass
class UnlearnConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: str = "npo"
    method_args: dict[str, Any] = field(default_factory=dict)  # the method's hyperparameters
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = ""


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    suite: str = "tofu"
    data_dir: str = ""  # a folder in the TOFU file layout
    forget_split: str = "forget10"
    reference: str | None = None  # results.json of the retain model (forget quality, privleak)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    keys: Keys = field(default_factory=Keys)
    out: str | None = None  # where to write results.json
    muse: MuseSettings = field(default_factory=MuseSettings)  # suite=muse: knowmem / verbmem / privleak
    # General utility through lm-evaluation-harness (optional extra `pip install -e .[lmeval]`):
    lm_eval_tasks: list[str] = field(default_factory=list)  # e.g. [arc_easy]; empty = off
    lm_eval_include: str | None = None  # a folder of local task YAMLs (no hub download)
    lm_eval_limit: int | None = None  # examples per task (None = all)


# ----------------------------------------------------------------------------- building from dicts
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, options: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, options, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint} (valid: {', '.join(options)})")


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from a nested dict, recursing into dataclass fields."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or cls.__name__}' must be a mapping, got {data!r}")
    hints, names = _hints(cls), [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(key, names, where)
        kwargs[key] = _coerce(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp``, or raise a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{name}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads '2e-5' (no dot) as a string
            try:
                value = float(value) if math.isfinite(float(value)) else value
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{name}' must be a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"'{name}' must be an integer, got {value!r}")
        return tp(value)
    if tp is str:
        return value if isinstance(value, str) else str(value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a mapping, got {value!r}")
    if origin is list:
        if value is None:
            return []
        if isinstance(value, str):  # a CLI value such as `a,b`
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{name}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
    return value  # dict / Any / tuples: pass through


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(cls: type[C], path: str | Path) -> C:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"'{p}' is not valid YAML: {exc}") from exc
    return from_dict(cls, data)


def save_yaml(cfg: Any, path: str | Path, *, command: str | None = None) -> None:
    head = f"# {command}\n" if command else ""
    Path(path).write_text(head + yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


# ----------------------------------------------------------------------------- overrides
def parse_value(text: str) -> Any:
    """YAML scalar parsing of a CLI value: numbers, true/false, null, lists; else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Apply ``a.b.c=value`` overrides in place. ``method.x=...`` goes to ``method_args``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.lr=2e-5)")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if parts[0] == "method" and len(parts) == 2 and hasattr(cfg, "method_args"):
            cfg.method_args[parts[1]] = parse_value(raw)  # validated when the method is built
            continue
        _set_path(cfg, parts, raw)
    return cfg


def _set_path(cfg: Any, parts: list[str], raw: str) -> None:
    obj, where = cfg, ""
    for key in parts[:-1]:
        names = [f.name for f in dataclasses.fields(obj)]
        if key not in names:
            raise _unknown(key, names, where)
        obj, where = getattr(obj, key), f"{where}{key}."
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"'{where[:-1]}' is a value, not a section; use {where[:-1]}=...")
    names = [f.name for f in dataclasses.fields(obj)]
    last = parts[-1]
    if last not in names:
        raise _unknown(last, names, where)
    tp = _hints(type(obj))[last]
    value = raw if tp is str else parse_value(raw)
    setattr(obj, last, _coerce(tp, value, where + last))


def build_method(name: str, args: dict[str, Any]) -> Any:
    """Instantiate a registered method from its name and hyperparameters (unknown keys -> error)."""
    from .registry import METHODS

    cls = METHODS.get(name)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in args:
        if key not in names:
            raise _unknown(key, names, "method.")
    hints = _hints(cls)
    return cls(**{k: _coerce(hints[k], v, f"method.{k}") for k, v in args.items()})
