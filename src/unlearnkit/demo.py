"""``unlearnkit demo``: the whole product on the embedded default, on a CPU, in a few minutes.

1. generate the synthetic fictitious-people benchmark (TOFU file layout);
2. build a tiny Llama-style model and a BPE tokenizer trained on that text;
3. finetune the *target* on everything and the *retain* model on everything but the forget people;
4. evaluate both (the retain model is the reference for forget quality and privleak);
5. unlearn the forget people from the target (NPO + retain NLL), stopping early once the
   forget-set answer probability reaches the retain model's level;
6. evaluate the unlearned model, write results.json + report.html, print a summary.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import api
from .config import build_method, DataConfig, EvalConfig, FinetuneConfig, ModelConfig, UnlearnConfig
from .data.records import load_examples
from .data.synthetic import corpus_text, write_tofu_layout
from .errors import ConfigError
from .evaluation import METRIC_INFO, apply_reference, evaluate_model, load_tofu_splits
from .metrics.probes import ProbeSettings
from .models import LoraSettings, TinyModelSpec, add_card_metrics, build_tiny_model, load_model, load_tokenizer
from .train import TrainConfig


@dataclass
class DemoConfig:
    """Defaults measured on 2 CPU cores (see README): the full demo and the ``--fast`` preset."""

    out: str = "runs/demo"
    n_people: int = 40
    facts_per_person: int = 10
    forget_split: str = "forget10"
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-3, epochs=30, batch_size=16, warmup_ratio=0.05))
    method: str = "npo"
    # Measured on the fast preset (forget / retain prob after unlearning, target 0.97 / 0.97):
    # NPO lr 1e-4 retain_weight 1 -> 0.04 / 0.50 (collapse); weight 5 -> 0.05 / 0.85;
    # weight 10 -> 0.04 / 0.94. grad_diff lr 5e-5, 80 steps -> 0.42 / 0.84 (under-forgets).
    method_args: dict[str, Any] = field(default_factory=lambda: {"beta": 0.1, "retain_loss": "nll", "retain_weight": 10.0})
    unlearn: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-4, max_steps=150, batch_size=16, scheduler="constant", eval_every=2))
    # Stop once forget prob <= the retain model's forget prob + margin. Measured on the full demo
    # (NPO, lr 1e-4, retain weight 10): margin +0.05 -> FQ 0.007, Min-k AUC 0.84 (still detectable);
    # margin 0 -> FQ 0.097, AUC 0.36, retain prob 0.991; no stop (150 steps) -> FQ 0.58 but AUC 0.01:
    # over-forgetting makes the forget set suspiciously unlikely, which an MIA also detects.
    stop_margin: float = 0.0
    max_new_tokens: int = 40
    # The robustness audit of the unlearned model (`unlearnkit audit`; [] = skip): every attack, the
    # suffix search shortened to 10 steps (~25 s per model on 2 cores; its default is 30).
    audit: list[str] = field(default_factory=lambda: ["all"])
    audit_args: dict[str, dict[str, Any]] = field(default_factory=lambda: {"suffix": {"steps": 10}})
    seed: int = 0

    @staticmethod
    def fast() -> "DemoConfig":
        """A preset for tests: fewer people and a smaller model, same pipeline (< 90 s)."""
        return DemoConfig(
            n_people=20,
            model=TinyModelSpec(hidden_size=96, intermediate_size=192, num_hidden_layers=3),
            finetune=TrainConfig(lr=4e-3, epochs=28, batch_size=16, warmup_ratio=0.05),
            max_new_tokens=24, audit=["relearn", "quantize", "paraphrase", "probe"], audit_args={},
        )


def finetune_dir(base: Path, data: Path, out: Path, tc: TrainConfig, progress: bool,
                 lora: LoraSettings | None = None, wise_alpha: float = 1.0) -> float:
    """Finetune the model in ``base`` on the records in ``data`` into ``out`` (LoRA merged when
    ``lora.r > 0``; WiSE-FT interpolation when ``wise_alpha < 1``); the seconds it took. Shared by
    ``demo`` and ``demo-real``."""
    t = time.perf_counter()
    cfg = FinetuneConfig(model=ModelConfig(path=str(base), lora=lora or LoraSettings()), data=DataConfig(train=str(data)),
                         train=TrainConfig(**{**asdict(tc), "progress": progress}), wise_alpha=wise_alpha, out=str(out))
    api.finetune(cfg)
    return time.perf_counter() - t


def _eval(path: Path, cfg: EvalConfig, splits: dict, reference: dict | None) -> dict[str, Any]:
    return evaluate_model(load_model(path), load_tokenizer(path), cfg, reference=reference, splits=splits)


def run_demo(cfg: DemoConfig | None = None, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the demo end to end; return the results document (also written to ``cfg.out``)."""
    from .report import build_results, print_summary, write_html, write_json_atomic

    cfg = cfg or DemoConfig()
    build_method(cfg.method, cfg.method_args)  # fail before minutes of finetuning, not after
    out, timing, t0 = Path(cfg.out), {}, time.perf_counter()
    data_dir = out / "data"
    try:
        write_tofu_layout(data_dir, n_people=cfg.n_people, facts_per_person=cfg.facts_per_person, seed=cfg.seed)
    except ValueError as exc:  # bad sizes from a config or override
        raise ConfigError(f"demo benchmark: {exc}") from exc
    pct = cfg.forget_split.removeprefix("forget")
    texts = corpus_text(r for f in sorted(data_dir.glob("*.json")) if f.name != "counts.json"
                        for r in _rows(f))
    build_tiny_model(texts, out / "base", cfg.model)
    log(f"[1/5] benchmark: {cfg.n_people} people x {cfg.facts_per_person} facts -> {data_dir}")
    timing["finetune_target_s"] = finetune_dir(out / "base", data_dir / "full.json", out / "target", cfg.finetune, progress)
    timing["finetune_retain_s"] = finetune_dir(out / "base", data_dir / f"retain{100 - int(pct)}.json",
                                            out / "retain", cfg.finetune, progress)
    log(f"[2/5] finetuned target and retain models ({timing['finetune_target_s']:.0f}s + {timing['finetune_retain_s']:.0f}s)")
    ecfg = EvalConfig(data_dir=str(data_dir), forget_split=cfg.forget_split,
                      probe=ProbeSettings(max_new_tokens=cfg.max_new_tokens, progress=progress))
    splits = load_tofu_splits(ecfg)
    t = time.perf_counter()
    ev = {"retain": _eval(out / "retain", ecfg, splits, None)}
    apply_reference(ev["retain"], ev["retain"])  # the reference against itself: FQ 1, privleak 0
    ev["target"] = _eval(out / "target", ecfg, splits, ev["retain"])
    timing["eval_before_s"] = time.perf_counter() - t
    stop_at = ev["retain"]["values"]["forget_prob"] + cfg.stop_margin
    ucfg = UnlearnConfig(
        model=ModelConfig(path=str(out / "target")),
        data=DataConfig(forget=str(data_dir / f"{cfg.forget_split}.json"),
                        retain=str(data_dir / f"retain{100 - int(pct)}.json")),
        method=cfg.method, method_args=dict(cfg.method_args),
        train=TrainConfig(**{**asdict(cfg.unlearn), "stop_forget_prob": stop_at, "progress": progress}),
        out=str(out / "unlearned"),
    )
    t = time.perf_counter()
    result = api.unlearn(ucfg)
    timing["unlearn_s"] = time.perf_counter() - t
    log(f"[3/5] unlearned with {cfg.method} in {result.steps} steps ({timing['unlearn_s']:.0f}s)"
        f"{', stopped early at the retain level' if result.stopped_early else ''}")
    ev["unlearned"] = _eval(out / "unlearned", ecfg, splits, ev["retain"])
    headline = ("forget_prob", "retain_prob", "forget_truth_ratio", "forget_quality", "model_utility", "privleak")
    add_card_metrics(out / "unlearned", {k: ev["unlearned"]["values"].get(k) for k in headline})
    timing["total_s"] = time.perf_counter() - t0
    doc = build_results(
        models={k: {"path": str(out / k), **ev[k]["values"]} for k in ("target", "retain", "unlearned")},
        metric_info=METRIC_INFO, per_example={k: ev[k]["per_example"] for k in ev},
        config=asdict(cfg), command="unlearnkit demo", timing=timing,
        splits={k: len(v) for k, v in splits.items()},
        training={"unlearned": {"log": result.log, "stopped_early": result.stopped_early}},
    )
    write_json_atomic(out / "results.json", doc)
    write_html(doc, out / "report.html")
    log(f"[4/5] wrote {out / 'results.json'} and {out / 'report.html'}")
    print_summary(doc)
    if cfg.audit:
        _audit(cfg, out, data_dir, progress, log)
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return doc


def _audit(cfg: DemoConfig, out: Path, data_dir: Path, progress: bool, log: Any) -> dict[str, Any]:
    """Step 5: attack the unlearned model (and the retain model, the floor); audit.json + audit.html."""
    from .audit import AuditConfig, run_audit

    t = time.perf_counter()
    acfg = AuditConfig(model=ModelConfig(path=str(out / "unlearned")), reference=str(out / "target"),
                       retain_model=str(out / "retain"), forget=str(data_dir / f"{cfg.forget_split}_perturbed.json"),
                       retain=str(data_dir / "retain_perturbed.json"), attacks=list(cfg.audit),
                       attack_args=dict(cfg.audit_args), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                       progress=progress, out=str(out / "audit.json"))
    doc = run_audit(acfg)
    rows = sorted(doc["attacks"].items(), key=lambda kv: -(kv[1]["unlearned"]["recovery_ratio"] or 0.0))
    shown = ", ".join(f"{n} {r['unlearned']['recovery_ratio']:.2f}" for n, r in rows[:3]
                      if r["unlearned"]["recovery_ratio"] is not None)
    log(f"[5/5] audit: {len(rows)} attacks in {time.perf_counter() - t:.0f}s; largest recovery ratios: {shown} "
        f"-> {out / 'audit.html'}")
    return doc


def _rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def unlearning_worked(doc: dict[str, Any], *, slack: float = 0.1, keep: float = 0.85) -> tuple[bool, str]:
    """The demo's success criterion: forget prob <= retain model's + slack, retain prob >= keep x target's."""
    m = doc["models"]
    f_ok = m["unlearned"]["forget_prob"] <= m["retain"]["forget_prob"] + slack
    r_ok = m["unlearned"]["retain_prob"] >= keep * m["target"]["retain_prob"]
    msg = (f"forget prob {m['unlearned']['forget_prob']:.3f} (retain model {m['retain']['forget_prob']:.3f}, "
           f"target {m['target']['forget_prob']:.3f}); retain prob {m['unlearned']['retain_prob']:.3f} "
           f"(target {m['target']['retain_prob']:.3f})")
    return f_ok and r_ok, msg


__all__ = ["DemoConfig", "run_demo", "unlearning_worked", "load_examples"]
