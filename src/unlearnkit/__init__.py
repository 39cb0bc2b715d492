"""unlearnkit: machine unlearning for causal language models - unlearn, evaluate, audit, report.

Python API (the CLI is a thin layer over it)::

    import unlearnkit as uk
    cfg = uk.UnlearnConfig(method="npo", out="unlearned/")
    cfg.model.path, cfg.data.forget, cfg.data.retain = "target/", "forget10.json", "retain90.json"
    uk.unlearn(cfg)

Heavy modules (torch, transformers) are imported on first use, so ``unlearnkit --help`` is fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "unlearn": "api", "finetune": "api", "evaluate": "api",
    "UnlearnConfig": "config", "FinetuneConfig": "config", "EvalConfig": "config",
    "ModelConfig": "config", "DataConfig": "config", "TrainConfig": "train",
    "METHODS": "registry", "METRICS": "registry", "ATTACKS": "registry",
    "run_demo": "demo", "DemoConfig": "demo", "UnlearnkitError": "errors",
    "AuditConfig": "audit", "run_audit": "audit",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unlearnkit' has no attribute '{name}'")
