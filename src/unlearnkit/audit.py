"""The robustness audit (issue 6): attack an unlearned model, measure how much of the forgotten
knowledge comes back, and compare with the same attack on a model that never saw it.

For each registered attack (``unlearnkit.attacks``; the contract is in ``attacks/base.py``) the
audit attacks the unlearned model and, when given, the retain model (the honest floor: what the
attack "recovers" from a model that never knew). It scores the forget metrics on the held-out
part of the forget set and reports, per metric, the recovery ratio
``(m_attacked - m_unlearned) / (m_target - m_unlearned)`` (``metrics.recovery``):

- ``forget_prob``: TOFU answer probability (mean exp(-mean answer NLL));
- ``forget_rouge``: ROUGE-L recall of greedy answers (TOFU, open-unlearning's definition);
- ``forget_truth_ratio``: TOFU truth ratio tr = P(perturbed)/P(paraphrased) (per-token geometric means),
  aggregated as mean max(0, 1 - tr): TOFU's *retain* aggregation, which grows with knowledge. (TOFU's
  forget aggregation min(tr, 1/tr) peaks when the model is indifferent, so over-forgetting and
  recovery would move it alike.) Needs the records' ``paraphrased_answer`` and ``perturbed_answer``;
  None otherwise.

Read-out attacks (probes, relation graph) report their own measurement; their ``m_target`` is the
read-out of the target model and ``m_unlearned`` the attack's baseline (``Attack.baseline``).
A metric that unlearning moved by less than ``min_gap`` gets no ratio (None): there is nothing to
recover, and dividing by a tiny gap would turn noise into a large "recovery".
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .attacks.base import Attack, AttackData, Attacked
from .config import ModelConfig
from .data.format import PromptTemplate
from .data.records import Example, load_examples
from .errors import ConfigError, DataError
from .metrics.recovery import recovery_ratio
from .registry import ATTACKS

METRICS = ("forget_prob", "forget_rouge", "forget_truth_ratio")
SCHEMA = "unlearnkit-audit/2"


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
    budget: float = 1.0  # every attack's compute multiplier, unless attack_args sets its own
    metrics: list[str] = field(default_factory=lambda: list(METRICS))  # forget metrics to score
    split: float = 0.5  # share of the forget records an attacker may train on (the rest measures recovery)
    min_gap: float = 0.05  # no ratio for a metric unlearning moved by less than this (noise on [0, 1] metrics)
    fail_above: float | None = None  # exit non-zero when a recovery ratio exceeds this
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512
    max_new_tokens: int = 200  # greedy answer length for ROUGE-L (TOFU: 200)
    batch_size: int = 32
    seed: int = 0
    progress: bool = True  # a progress bar over the attacks
    out: str = ""  # audit.json
    html: str = ""  # the HTML page (default: audit.json's name with .html)

    def attack_names(self) -> list[str]:
        names = ATTACKS.names() if self.attacks in (["all"], "all") else list(self.attacks)
        for n in names:
            ATTACKS.get(n)  # unknown -> ConfigError with a suggestion
        return names

    def validate(self) -> None:
        if not self.forget or not self.reference:
            raise ConfigError("audit needs --forget FILE and --reference TARGET_DIR (the model before unlearning)")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"metrics={self.metrics}: choose among {', '.join(METRICS)}")
        if not self.min_gap >= 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("min_gap must be >= 0, max_new_tokens and batch_size >= 1")
        if self.out and Path(self.out).is_dir():
            raise ConfigError(f"out={self.out!r} is a directory; give a file name such as {self.out}/audit.json")
        unknown = set(self.attack_args) - set(self.attack_names())
        if unknown:
            raise ConfigError(f"attack_args names attacks that are not run: {sorted(unknown)}; add them to --attacks")


def forget_probability(model: Any, tokenizer: Any, examples: list[Example], template: PromptTemplate,
                       max_length: int) -> float:
    """TOFU forget probability: mean over records of exp(-mean answer-token NLL)."""
    from .data.pair import build_paired
    from .train import forget_prob

    return forget_prob(model, build_paired(None, examples, [], tokenizer, template=template, max_length=max_length))


def forget_metrics(model: Any, tokenizer: Any, examples: list[Example], cfg: AuditConfig) -> dict[str, float | None]:
    """The audit's forget metrics (``cfg.metrics``) of ``model`` on ``examples``, as ``eval`` computes them."""
    from .evaluation import qa_metrics
    from .metrics.probes import ProbeSettings, probe_split

    settings = ProbeSettings(batch_size=cfg.batch_size, max_length=cfg.max_length, max_new_tokens=cfg.max_new_tokens,
                             generate="forget_rouge" in cfg.metrics, token_stats=False, progress=False)
    values: dict[str, Any] = {}
    # forget=False: the truth ratio's "true_better" aggregation, mean max(0, 1 - tr), which grows with
    # knowledge. TOFU's forget aggregation min(tr, 1/tr) peaks at indifference, so an over-forgotten model
    # (tr > 1) and a recovered one would move it the same way: useless for a recovery ratio.
    qa_metrics("forget", probe_split(model, tokenizer, examples, template=cfg.template, settings=settings), values, {},
               forget=False)
    return {m: values.get(m) for m in cfg.metrics}


def _ratios(attacked: dict, zero: dict, target: dict, min_gap: float) -> dict[str, float | None]:
    return {m: recovery_ratio(attacked=v, unlearned=zero.get(m), target=target.get(m), eps=min_gap).value
            for m, v in attacked.items()}


def _worst(ratios: dict[str, float | None]) -> float | None:
    return max((r for r in ratios.values() if r is not None), default=None)


def _measure(attack: Attack, out: Attacked, tok: Any, data: AttackData, cfg: AuditConfig) -> dict[str, Any]:
    if attack.readout:
        if not out.scores:
            raise DataError(f"read-out attack {type(attack).__name__} returned no scores")
        return dict(out.scores)
    return forget_metrics(out.model, tok, out.examples or data.forget_eval, cfg)


def build_attacks(cfg: AuditConfig) -> dict[str, Attack]:
    """The configured attacks, built (and their settings checked) before any model is loaded."""
    import dataclasses

    attacks = {}
    for name in cfg.attack_names():
        cls, args = ATTACKS.get(name), {"budget": cfg.budget, **cfg.attack_args.get(name, {})}
        known = {f.name for f in dataclasses.fields(cls)}
        if set(args) - known:
            raise ConfigError(f"attack_args.{name}: unknown setting(s) {sorted(set(args) - known)}; "
                              f"{name} has {', '.join(sorted(known))}")
        attacks[name] = cls(**args)
        attacks[name].check_budget()
    return attacks


def _attack_one(name: str, attack: Attack, cfg: AuditConfig, models: dict[str, Any], tok: Any, data: AttackData,
                base: dict[str, dict]) -> dict[str, Any]:
    """Run one attack on the unlearned (and retain) model; the ratios of each metric."""
    row: dict[str, Any] = {"kind": attack.kind, "settings": asdict(attack),
                           "cost": ATTACKS.meta[name].get("cost")}
    target = base["target"]
    if attack.readout:  # where a read-out of the target model lands: the 100 % mark
        target = _measure(attack, attack.run(models["target"], tok, data), tok, data, cfg)
        row["target"] = {"metrics": target}
    for who in ("unlearned", "retain"):
        if who not in models:
            continue
        t = time.perf_counter()
        out = attack.run(models[who], tok, data)
        attack_s = time.perf_counter() - t
        values = _measure(attack, out, tok, data, cfg)
        zero = attack.baseline(models[who], tok, data) if attack.readout else base[who]
        ratios = _ratios(values, zero, target, cfg.min_gap)
        row[who] = {"metrics": values, "baseline": zero, "recovery": ratios, "recovery_ratio": _worst(ratios),
                    "attack_seconds": attack_s, "seconds": time.perf_counter() - t, "info": out.info}
    return row


def _load_models(cfg: AuditConfig) -> tuple[dict[str, Any], Any]:
    from .api import _load

    model, tok = _load(cfg.model)
    models = {"unlearned": model}
    for who, path in (("target", cfg.reference), ("retain", cfg.retain_model)):
        if path:
            models[who], _ = _load(ModelConfig(path=path, trust_remote_code=cfg.model.trust_remote_code,
                                               allow_pickle=cfg.model.allow_pickle))
    return models, tok


def _records(cfg: AuditConfig) -> tuple[list[Example], list[Example], list[Example]]:
    from .attacks.relearn import split_forget

    forget = load_examples(cfg.forget)
    if not forget:
        raise DataError(f"the forget file '{cfg.forget}' has no records; the audit measures recovery on them")
    train, held_out = split_forget(forget, cfg.split, seed=cfg.seed)
    return train, held_out, load_examples(cfg.retain) if cfg.retain else []


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    """Run the attacks; return (and write to ``cfg.out`` / the HTML page) the audit document."""
    from .report import write_audit_html, write_json_atomic

    cfg.validate()
    built = build_attacks(cfg)
    train, held_out, retain = _records(cfg)
    models, tok = _load_models(cfg)
    data = AttackData(train, held_out, retain, cfg.template, cfg.max_length, cfg.seed, target=models["target"])
    base = {who: forget_metrics(m, tok, held_out, cfg) for who, m in models.items()}
    attacks, skipped = {}, {}
    bar = tqdm(built.items(), desc="audit", unit="attack", disable=None if cfg.progress else True)
    for name, attack in bar:
        bar.set_postfix_str(name)
        try:
            attacks[name] = _attack_one(name, attack, cfg, models, tok, data, base)
        except DataError as exc:  # e.g. records without paraphrased_question: skip it under "all", say why
            if cfg.attacks not in (["all"], "all"):
                raise
            skipped[name] = str(exc)
    worst = _worst({n: r["unlearned"]["recovery_ratio"] for n, r in attacks.items()})
    doc = {"schema": SCHEMA, "metrics": {m: _METRIC_TEXT[m] for m in cfg.metrics},
           "recovery_ratio": "(m_attacked - m_unlearned) / (m_target - m_unlearned), per metric; "
                             "the row's recovery_ratio is the largest of them",
           "models": {who: {"metrics": v} for who, v in base.items()}, "attacks": attacks, "skipped": skipped,
           "max_recovery_ratio": worst, "split": {"attack_train": len(train), "eval": len(held_out)},
           "config": asdict(cfg),
           "passed": None if cfg.fail_above is None else (worst is None or worst <= cfg.fail_above)}
    if cfg.out:
        write_json_atomic(cfg.out, doc)
    if cfg.out or cfg.html:
        write_audit_html(doc, cfg.html or Path(cfg.out).with_suffix(".html"))
    return doc


_METRIC_TEXT = {
    "forget_prob": "TOFU answer probability on the held-out forget records",
    "forget_rouge": "ROUGE-L recall of greedy answers on the held-out forget records",
    "forget_truth_ratio": "TOFU truth ratio aggregated as mean max(0, 1 - tr) (grows with knowledge; not eval's "
                          "min(tr, 1/tr)) on the held-out forget records",
}
