"""The Python API: ``finetune``, ``unlearn``, ``evaluate`` - the CLI is a thin layer over these.

Each takes the same config dataclass the CLI builds, so the two never drift.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Any

from .config import EvalConfig, FinetuneConfig, ModelConfig, UnlearnConfig, build_method
from .data.pair import build_paired
from .data.records import Example, examples_sha256, load_examples
from .errors import ConfigError, UnlearnkitError
from .evaluation import METRIC_INFO, evaluate_model
from .models import (check_model_dir, frozen_copy, interpolate_weights, load_model, load_tokenizer, maybe_add_lora,
                     merged, save_model)
from .train import Finetune, TrainConfig, TrainResult, run, run_method


def _load(mc: ModelConfig) -> tuple[Any, Any]:
    if not mc.path:
        raise ConfigError("model.path is not set; pass --model DIR (a local from_pretrained directory)")
    check_model_dir(mc.path, allow_pickle=mc.allow_pickle)  # before the tokenizer: clearer errors
    tok = load_tokenizer(mc.path, trust_remote_code=mc.trust_remote_code)
    model = load_model(mc.path, trust_remote_code=mc.trust_remote_code, allow_pickle=mc.allow_pickle)
    return model, tok


def _require(path: str | None, what: str) -> str:
    if not path:
        raise ConfigError(f"{what} is not set")
    return path


def _check_out(out: str) -> Path:
    """Check the output location before any training, so a bad --out never wastes a run."""
    if not out:
        raise ConfigError("out is not set; pass --out DIR for the saved model")
    p = Path(out)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder '{p.parent}': {exc.strerror or exc}") from exc
    if not os.access(p.parent, os.W_OK) or (p.exists() and not p.is_dir()):
        raise ConfigError(f"cannot write the model to '{p}': not a writable directory location")
    return p


def _log_path(out: Path) -> Path:
    return out.with_name(out.name + ".train_log.jsonl")


def _with_checkpoints(train: TrainConfig, out: Path) -> TrainConfig:
    """``train`` with its checkpoint folder set (default ``OUT.checkpoints``): checkpoints, resume
    and the ``divergence.json`` of a tripped guard go there."""
    return replace(train, checkpoint_dir=train.checkpoint_dir or str(out.with_name(out.name + ".checkpoints")))


def _drop_checkpoints(train: TrainConfig) -> None:
    """After the output is saved, its checkpoints (and an earlier attempt's ``divergence.json``) are no
    longer needed: remove them, and the folder when nothing else is in it."""
    root = Path(train.checkpoint_dir or "")
    if not train.checkpoint_dir or not root.is_dir():
        return
    for step in root.glob("step-*"):
        shutil.rmtree(step, ignore_errors=True)
    for stale in root.glob(".step-*"):  # stages of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    (root / "divergence.json").unlink(missing_ok=True)  # an earlier attempt's; this one succeeded
    with contextlib.suppress(OSError):
        root.rmdir()


def _warn_overlap(forget: list[Example], retain: list[Example]) -> None:
    both = {(e.question, e.answer) for e in forget} & {(e.question, e.answer) for e in retain}
    if both:
        warnings.warn(f"{len(both)} forget records also appear in the retain set; the retain term will "
                      "pull them back - remove them from the retain file", stacklevel=3)


def _probabilities(model: Any, data: Any) -> dict[str, float | None]:
    """Forget / retain answer probabilities (TOFU's exp(-mean NLL)) for the deletion record."""
    from .guards import retain_prob
    from .train import forget_prob

    return {"forget_prob": forget_prob(model, data), "retain_prob": retain_prob(model, data) if data.retain else None}


def unlearn(cfg: UnlearnConfig, *, request_id: str | None = None, previous_record: str | None = None,
            audit: dict[str, Any] | None = None) -> TrainResult:
    """Unlearn ``cfg.data.forget`` from ``cfg.model`` with ``cfg.method``; save to ``cfg.out`` with a
    deletion record (``record.json``: :mod:`unlearnkit.deletion`). ``request_id`` / ``previous_record``
    (the sha256 of the previous record) chain sequential requests; ``audit`` is stored as given."""
    from .deletion import build_record, finish_record

    out = _check_out(cfg.out)
    method = build_method(cfg.method, cfg.method_args)
    forget = load_examples(_require(cfg.data.forget, "data.forget (--forget FILE)"), keys=cfg.data.keys)
    retain: list[Example] = []
    if method.needs_retain:
        retain = load_examples(_require(cfg.data.retain, f"method '{cfg.method}' needs data.retain (--retain FILE)"),
                               keys=cfg.data.keys)
        _warn_overlap(forget, retain)
    model, tok = _load(cfg.model)
    ref = frozen_copy(model) if method.needs_ref_model else None
    model = maybe_add_lora(model, cfg.model.lora)
    data = build_paired(method, forget, retain, tok, template=cfg.data.template,
                        max_length=cfg.data.max_length, seed=cfg.train.seed)
    before = _probabilities(model, data)
    train = _with_checkpoints(cfg.train, out)
    result = run_method(model, method, data, train, ref=ref, log_path=_log_path(out), desc=f"unlearn:{cfg.method}")
    card = {"title": f"Unlearned with unlearnkit ({cfg.method})", "base_model": cfg.model.path,
            "method": cfg.method, "config": asdict(cfg), "forget_set_sha256": examples_sha256(forget),
            "retain_set_sha256": examples_sha256(retain) if retain else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_steps": result.steps,
            "stopped_early": result.stopped_early, "stop_reason": result.stop_reason}
    if result.is_main_process:
        record = build_record(forget=forget, retain=retain, input_dir=cfg.model.path, method=cfg.method,
                              method_args=asdict(method) if is_dataclass(method) else dict(cfg.method_args),
                              config=asdict(cfg), seed=cfg.train.seed, request_id=request_id,
                              previous=previous_record, audit=audit,
                              metrics={"before": before, "after": _probabilities(model, data),
                                       "train_steps": result.steps, "stopped_early": result.stopped_early})
        save_model(model, tok, out, card=card, extra=lambda stage: finish_record(record, stage, out))
        _drop_checkpoints(train)
    return result


def finetune(cfg: FinetuneConfig) -> TrainResult:
    """Teach ``cfg.model`` the records in ``cfg.data.train`` (answer-only NLL); save to ``cfg.out``."""
    out = _check_out(cfg.out)
    records = load_examples(_require(cfg.data.train, "data.train (--data FILE)"), keys=cfg.data.keys)
    if not 0.0 <= cfg.wise_alpha <= 1.0:
        raise ConfigError(f"wise_alpha={cfg.wise_alpha}: the weight of the finetuned model must be in [0, 1] (1 = off)")
    model, tok = _load(cfg.model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.wise_alpha < 1 else None
    model = maybe_add_lora(model, cfg.model.lora)
    method = Finetune()
    data = build_paired(method, records, [], tok, template=cfg.data.template,
                        max_length=cfg.data.max_length, seed=cfg.train.seed)
    train = _with_checkpoints(cfg.train, out)
    result = run(model, method, data, train, log_path=_log_path(out), desc="finetune")
    if start is not None:  # WiSE-FT: back toward the starting weights
        model = interpolate_weights(merged(model), start, cfg.wise_alpha)
    card = {"title": "Finetuned with unlearnkit", "base_model": cfg.model.path, "method": "finetune",
            "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if result.is_main_process:
        save_model(model, tok, out, card=card)
        _drop_checkpoints(train)
    return result


def reference_from_results(doc: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Pick a model's values + per-example arrays from a results.json (the only model, or 'retain')."""
    models = doc.get("models") or {}
    if name is None:
        name = next(iter(models)) if len(models) == 1 else "retain"
    if name not in models:
        raise UnlearnkitError(f"reference results have models {sorted(models)}; none is '{name}'")
    values = {k: v for k, v in models[name].items() if k != "path"}
    return {"values": values, "per_example": (doc.get("per_example") or {}).get(name, {})}


def evaluate(cfg: EvalConfig, *, name: str = "model") -> dict[str, Any]:
    """Evaluate ``cfg.model`` on ``cfg.suite`` (tofu | muse), plus lm-evaluation-harness tasks when
    ``cfg.lm_eval_tasks`` is set; return a results document (and write it to ``cfg.out``)."""
    from .report import build_results, load_results, write_json_atomic

    if cfg.suite not in ("tofu", "muse"):
        raise ConfigError(f"unknown eval suite '{cfg.suite}'; available: tofu, muse")
    reference = reference_from_results(load_results(cfg.reference)) if cfg.reference else None
    model, tok = _load(cfg.model)
    if cfg.suite == "muse":
        from .muse import MUSE_METRIC_INFO, evaluate_muse

        info = MUSE_METRIC_INFO
        ev = evaluate_muse(model, tok, _require(cfg.data_dir, "data_dir (--data-dir DIR)"), settings=cfg.muse,
                           reference=reference)
    else:
        info, ev = METRIC_INFO, evaluate_model(model, tok, cfg, reference=reference)
    info = dict(info)
    if cfg.lm_eval_tasks:
        ev["values"].update(_lm_eval_values(model, tok, cfg, info))
    doc = build_results(
        models={name: {"path": cfg.model.path, **ev["values"]}}, metric_info=info,
        per_example={name: ev["per_example"]}, config=asdict(cfg), timing={"eval_s": ev["seconds"]},
    )
    if cfg.out:
        write_json_atomic(cfg.out, doc)
    return doc


def _lm_eval_values(model: Any, tok: Any, cfg: EvalConfig, info: dict[str, Any]) -> dict[str, float]:
    """lm-evaluation-harness scores as flat ``lm_eval/<task>/<metric>`` values (+ their metadata)."""
    from .harness import lm_eval_scores

    scores = lm_eval_scores(model, tok, list(cfg.lm_eval_tasks), include_path=cfg.lm_eval_include,
                            limit=cfg.lm_eval_limit, batch_size=cfg.probe.batch_size)
    out = {}
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            key = f"lm_eval/{task}/{metric}"
            out[key] = value
            info[key] = {"higher_is_better": None if metric.endswith("_stderr") or metric == "sample_len" else True,
                         "version": 1, "description": f"lm-evaluation-harness {task}: {metric}"}
    return out


__all__ = ["finetune", "unlearn", "evaluate", "reference_from_results"]
