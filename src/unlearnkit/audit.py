"""The robustness audit (issue 6, first slice): attack an unlearned model, measure how much of the
forgotten knowledge comes back, and compare with the same attack on a model that never saw it.

For each registered attack (``unlearnkit.attacks``) the audit runs the attack on the unlearned
model (and, when given, on the retain model: the honest floor), measures the forget-set answer
probability on ``forget_eval`` and reports the recovery ratio
``(m_attacked - m_unlearned) / (m_target - m_unlearned)`` (``metrics.recovery``).

This slice measures one forget metric, the TOFU answer probability (mean exp(-mean NLL) of the
answers); ROUGE-L and truth ratio, the HTML page and the remaining attacks are still to come.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .attacks.base import AttackData
from .config import ModelConfig
from .data.format import PromptTemplate
from .data.records import Example, load_examples
from .errors import ConfigError
from .metrics.recovery import recovery_ratio
from .registry import ATTACKS


@dataclass
class AuditConfig:
    """``unlearnkit audit``: attack ``model`` (unlearned) and score recovery against ``reference`` (target)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the unlearned model
    reference: str = ""  # the target model (before unlearning): where recovery would lead
    retain_model: str = ""  # optional: a model that never saw the forget set (the honest floor)
    forget: str = ""  # forget records
    retain: str = ""  # optional other records (benign finetuning and probes use them)
    attacks: list[str] = field(default_factory=lambda: ["all"])  # names, or "all"
    attack_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # {attack: {setting: value}}
    split: float = 0.5  # share of the forget records an attacker may train on (the rest measures recovery)
    fail_above: float | None = None  # exit non-zero when a recovery ratio exceeds this
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512
    seed: int = 0
    out: str = ""  # audit.json

    def attack_names(self) -> list[str]:
        names = ATTACKS.names() if self.attacks in (["all"], "all") else list(self.attacks)
        for n in names:
            ATTACKS.get(n)  # unknown -> ConfigError with a suggestion
        return names


def forget_probability(model: Any, tokenizer: Any, examples: list[Example], template: PromptTemplate,
                       max_length: int) -> float:
    """TOFU forget probability: mean over records of exp(-mean answer-token NLL)."""
    from .data.pair import build_paired
    from .train import forget_prob

    return forget_prob(model, build_paired(None, examples, [], tokenizer, template=template, max_length=max_length))


def _attack_one(name: str, cfg: AuditConfig, models: dict[str, Any], tok: Any, data: AttackData,
                base: dict[str, float]) -> dict[str, Any]:
    attack = ATTACKS.get(name)(**cfg.attack_args.get(name, {}))
    row: dict[str, Any] = {"settings": asdict(attack), "cost": ATTACKS.meta[name].get("cost")}
    for who in ("unlearned", "retain"):
        if who not in models:
            continue
        t = time.perf_counter()
        attacked = attack.run(models[who], tok, data)
        prob = forget_probability(attacked, tok, data.forget_eval, data.template, data.max_length)
        row[who] = {"forget_prob": prob, "seconds": time.perf_counter() - t,
                    "recovery_ratio": recovery_ratio(attacked=prob, unlearned=base[who], target=base["target"]).value}
    return row


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    """Run the attacks; return (and write to ``cfg.out``) the audit document."""
    from .api import _load
    from .attacks.relearn import split_forget
    from .models import load_model
    from .report import write_json_atomic

    if not cfg.forget or not cfg.reference:
        raise ConfigError("audit needs --forget FILE and --reference TARGET_DIR (the model before unlearning)")
    names = cfg.attack_names()
    forget = load_examples(cfg.forget)
    train, held_out = split_forget(forget, cfg.split, seed=cfg.seed)
    retain = load_examples(cfg.retain) if cfg.retain else []
    model, tok = _load(cfg.model)
    models = {"unlearned": model, "target": load_model(cfg.reference)}
    if cfg.retain_model:
        models["retain"] = load_model(cfg.retain_model)
    data = AttackData(train, held_out, retain, cfg.template, cfg.max_length, cfg.seed)
    base = {k: forget_probability(m, tok, held_out, cfg.template, cfg.max_length) for k, m in models.items()}
    attacks = {name: _attack_one(name, cfg, models, tok, data, base) for name in names}
    worst = max((r["unlearned"]["recovery_ratio"] for r in attacks.values()
                 if r["unlearned"]["recovery_ratio"] is not None), default=None)
    doc = {"schema": "unlearnkit-audit/1", "metric": "forget_prob (TOFU answer probability on the held-out forget part)",
           "models": {k: {"forget_prob": v} for k, v in base.items()}, "attacks": attacks,
           "max_recovery_ratio": worst, "split": {"attack_train": len(train), "eval": len(held_out)},
           "config": asdict(cfg),
           "passed": None if cfg.fail_above is None else (worst is None or worst <= cfg.fail_above)}
    if cfg.out:
        write_json_atomic(cfg.out, doc)
    return doc
