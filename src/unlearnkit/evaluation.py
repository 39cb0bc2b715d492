"""Evaluation: suite -> probes (one batched pass per split) -> pure metrics -> flat results.

The ``tofu`` suite reads a folder in the TOFU file layout (the real benchmark or
``unlearnkit.data.synthetic``) and computes the TOFU metric set as open-unlearning defines it,
plus memorization (EM, extraction strength) and MIA / privleak when a holdout split exists.
Splits that are absent (e.g. real_authors on the synthetic benchmark) are skipped, and model
utility is then the harmonic mean of the parts that exist.
"""
from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .config import EvalConfig
from .data.records import Example, load_examples
from .errors import ConfigError, DataError
from .metrics import memorization as mem
from .metrics import privacy as priv
from .metrics import tofu
from .metrics.probes import ProbeSettings, SplitProbe, probe_split

# Flat result keys and their metadata (direction, version, description).
METRIC_INFO: dict[str, dict[str, Any]] = {
    "forget_prob": {"higher_is_better": False, "description": "TOFU answer probability on the forget set"},
    "forget_truth_ratio": {"higher_is_better": True, "description": "TOFU truth ratio, forget: mean min(tr, 1/tr)"},
    "forget_rouge": {"higher_is_better": False, "description": "ROUGE-L recall of greedy answers, forget set"},
    "forget_quality": {"higher_is_better": True, "description": "KS-test p-value of forget truth ratios vs the retain model"},
    "forget_exact_mem": {"higher_is_better": False, "description": "exact memorization (argmax == label), forget answers"},
    "forget_extraction_strength": {"higher_is_better": False, "description": "extraction strength, forget answers"},
    "retain_prob": {"higher_is_better": True, "description": "TOFU answer probability on the retain set"},
    "retain_truth_ratio": {"higher_is_better": True, "description": "TOFU truth ratio, retain: mean max(0, 1 - tr)"},
    "retain_rouge": {"higher_is_better": True, "description": "ROUGE-L recall of greedy answers, retain set"},
    "holdout_prob": {"higher_is_better": None, "description": "answer probability on never-seen people (holdout)"},
    "model_utility": {"higher_is_better": True, "description": "TOFU model utility: harmonic mean of retain / real-author / world-fact scores"},
    "mia_loss_auc": {"higher_is_better": None, "description": "LOSS MIA AUC forget vs holdout (0.5 = indistinguishable)"},
    "mia_zlib_auc": {"higher_is_better": None, "description": "zlib MIA AUC forget vs holdout"},
    "mia_min_k_auc": {"higher_is_better": None, "description": "Min-k% (k=0.4) MIA AUC forget vs holdout"},
    "mia_min_k_plus_plus_auc": {"higher_is_better": None, "description": "Min-k%++ MIA AUC forget vs holdout"},
    "privleak": {"higher_is_better": None, "description": "MUSE privleak vs the retain model's Min-k% AUC (0 = like the retain model)"},
}
for _split in ("forget", "holdout"):
    METRIC_INFO[f"{_split}_ma"] = {"higher_is_better": None, "description": f"Jang et al. memorization accuracy, {_split} answers"}
METRIC_INFO["forget_s_ma"] = {"higher_is_better": False, "description": "SeUL S-MA: memorization accuracy on the annotated sensitive spans of the forget answers"}
METRIC_INFO["forget_exposure"] = {"higher_is_better": False, "description": "canary exposure (bits) of the forget records' secrets, Carlini et al. 2019"}
METRIC_INFO["jang_forgotten"] = {"higher_is_better": True, "description": "1 if forget MA and EL_n are both below the holdout (never seen) values, Jang et al. 2023"}
for _split in ("real_authors", "world_facts"):
    METRIC_INFO[f"{_split}_prob"] = {"higher_is_better": True, "description": f"normalised answer probability, {_split}"}
    METRIC_INFO[f"{_split}_truth_ratio"] = {"higher_is_better": True, "description": f"truth ratio max(0, 1 - tr), {_split}"}
    METRIC_INFO[f"{_split}_rouge"] = {"higher_is_better": True, "description": f"ROUGE-L recall, {_split}"}
METRIC_INFO["real_knowledge_mc_accuracy"] = {"higher_is_better": True, "description": "general-knowledge questions the model "
                                             "already knew: true answer more likely than 3 false ones (unlearnkit.knowledge)"}
METRIC_INFO["real_knowledge_gen_accuracy"] = {"higher_is_better": True, "description": "general-knowledge questions: the "
                                              "greedy answer contains the gold answer (unlearnkit.knowledge)"}
METRIC_INFO["ordinary_text_perplexity"] = {"higher_is_better": False, "description": "perplexity of a few paragraphs "
                                           "of ordinary English prose (unlearnkit.knowledge)"}
for _info in METRIC_INFO.values():
    _info.setdefault("version", 1)


def tofu_split_files(data_dir: str | Path, forget_split: str) -> dict[str, Path]:
    """The files of the TOFU layout that exist: forget / retain / real_authors / world_facts / holdout."""
    if not data_dir:
        raise ConfigError("data_dir is not set; pass --data-dir DIR (a folder in the TOFU file layout)")
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data directory '{d}' does not exist; point --data-dir at a TOFU-layout folder")
    m = re.fullmatch(r"forget(\d+)", forget_split)
    if not m:
        raise ConfigError(f"forget_split={forget_split!r}; expected a name like forget10")
    candidates = {
        "forget": [d / f"{forget_split}_perturbed.json", d / f"{forget_split}.json"],
        "retain": [d / "retain_perturbed.json"],
        "real_authors": [d / "real_authors_perturbed.json"],
        "world_facts": [d / "world_facts_perturbed.json"],
        "holdout": [d / f"holdout{m.group(1)}.json"],
    }
    files = {k: next((p for p in ps if p.is_file()), None) for k, ps in candidates.items()}
    if files["forget"] is None:
        raise DataError(f"'{d}' has no {forget_split}_perturbed.json or {forget_split}.json")
    return {k: p for k, p in files.items() if p is not None}


def qa_metrics(name: str, p: SplitProbe, values: dict, per_ex: dict, *, forget: bool) -> None:
    """Probability, truth ratio and ROUGE of one split into ``values`` / ``per_ex``."""
    normalised = name in ("real_authors", "world_facts")
    if normalised and p.avg_nll_pert is not None:
        prob = tofu.probability_normalised(avg_nll=p.avg_nll, avg_nll_perturbed=p.avg_nll_pert)
    else:
        prob = tofu.probability(avg_nll=p.avg_nll)
    values[f"{name}_prob"], per_ex[f"{name}_prob"] = prob.value, prob.per_example
    correct = p.avg_nll if normalised else p.avg_nll_para
    if correct is not None and p.avg_nll_pert is not None:
        tr = tofu.truth_ratio(avg_nll_correct=correct, avg_nll_perturbed=p.avg_nll_pert,
                              aggregation="closer_to_1" if forget else "true_better")
        values[f"{name}_truth_ratio"], per_ex[f"{name}_truth_ratio"] = tr.value, tr.per_example
    if p.generations:
        rouge = tofu.rouge_l_recall(ground_truths=p.ground_truths, generations=p.generations)
        values[f"{name}_rouge"], per_ex[f"{name}_rouge"] = rouge.value, rouge.per_example
        per_ex[f"{name}_generations"] = list(p.generations)


def _mia_metrics(f: SplitProbe, h: SplitProbe, values: dict) -> None:
    values["mia_loss_auc"] = priv.mia_loss(forget_avg_nll=f.avg_nll, holdout_avg_nll=h.avg_nll).value
    values["mia_zlib_auc"] = priv.mia_zlib(forget_avg_nll=f.avg_nll, forget_texts=f.texts,
                                           holdout_avg_nll=h.avg_nll, holdout_texts=h.texts).value
    auc = priv.mia_min_k(forget_token_logp=f.token_logp, holdout_token_logp=h.token_logp).value
    values["mia_min_k_auc"] = auc
    values["mia_min_k_plus_plus_auc"] = priv.mia_min_k_plus_plus(
        forget_token_logp=f.token_logp, forget_token_mu=f.token_mu, forget_token_sigma=f.token_sigma,
        holdout_token_logp=h.token_logp, holdout_token_mu=h.token_mu, holdout_token_sigma=h.token_sigma,
    ).value


def _jang_metrics(probes: dict[str, SplitProbe], values: dict, n: int) -> None:
    """Jang et al. 2023 MA and EL_n on the forget answers; the same on the holdout split (people
    the model never saw) gives the paper's "forgotten" thresholds. Answers with <= n tokens are
    left out of EL_n (it is undefined for them)."""
    for split in ("forget", "holdout"):
        p = probes.get(split)
        if p is None:
            continue
        if p.token_match:
            values[f"{split}_ma"] = mem.memorization_accuracy(token_match=p.token_match).value
        METRIC_INFO.setdefault(f"{split}_el{n}", {"higher_is_better": None, "version": 1,
                               "description": f"Jang et al. EL_{n} (n-gram extraction likelihood), {split} answers"})
        keep = [i for i, t in enumerate(p.el_targets) if len(t) > n]
        values[f"{split}_el{n}"] = mem.el_n_batch(
            target_ids=[p.el_targets[i] for i in keep], continuations=[p.el_continuations[i] for i in keep], n=n,
        ).value if keep else None
    th_ma, th_el = values.get("holdout_ma"), values.get(f"holdout_el{n}")
    if None not in (th_ma, th_el, values.get("forget_ma"), values.get(f"forget_el{n}")):
        values["jang_forgotten"] = float(mem.is_forgotten(values["forget_ma"], values[f"forget_el{n}"], th_ma, th_el))


def _sensitive_metrics(model: Any, tokenizer: Any, examples: list[Example], probe: SplitProbe, cfg: EvalConfig,
                       values: dict) -> None:
    """SeUL S-MA (and S-EL_n when ``probe.el_n``) over the sensitive spans that forget records carry
    (``sensitive``: strings, or ``sensitive_spans``: [start, end) offsets into the answer). Reuses the
    forget probe's argmax matches and EL continuations; only the span masks are new."""
    from .data.format import encode
    from .data.spans import spans_from_example
    from .metrics import sensitive as sens
    from .metrics.sensitive_probes import answer_span_mask, probe_sensitive

    spans = [spans_from_example(e) for e in examples]
    if not any(spans):
        return
    n = cfg.probe.el_n
    if probe.token_match and (not n or probe.el_continuations):
        encs = [encode(e.question, e.answer, tokenizer, template=cfg.template, max_length=cfg.probe.max_length)
                for e in examples]
        masks = [answer_span_mask(enc, e, sp, tokenizer, cfg.template) for enc, e, sp in zip(encs, examples, spans)]
        match, targets, conts = probe.token_match, probe.el_targets, probe.el_continuations
    else:  # the forget probe ran without token statistics: probe the spans on their own
        sp = probe_sensitive(model, tokenizer, examples, spans, template=cfg.template, n=n,
                             batch_size=cfg.probe.batch_size, max_length=cfg.probe.max_length)
        masks, match, targets, conts = sp.span_mask, sp.token_match, sp.el_targets, sp.el_continuations
    values["forget_s_ma"] = sens.s_ma(token_match=match, span_mask=masks).value
    if n:
        METRIC_INFO.setdefault(f"forget_s_el{n}", {"higher_is_better": False, "version": 1,
                               "description": f"SeUL S-EL_{n} on the sensitive spans of the forget answers"})
        try:
            values[f"forget_s_el{n}"] = sens.s_el(target_ids=targets, continuations=conts, span_mask=masks, n=n).value
        except ValueError:  # no span has an eligible prefix at this n
            values[f"forget_s_el{n}"] = None


def _exposure_metrics(model: Any, tokenizer: Any, examples: list[Example], cfg: EvalConfig, values: dict,
                      per_ex: dict) -> None:
    """Canary exposure (Carlini et al. 2019) of each forget record's ``secret`` (a substring of its
    answer, e.g. a phone number or an email): its log-likelihood after the question prompt and the
    answer text before it, ranked among ``probe.exposure_candidates`` random strings of the same
    format; the rank is extrapolated to the whole format space (``exposure_exact(space_size=...)``)."""
    from .data.format import render_prompt
    from .metrics import exposure as expo
    from .metrics.secret_probes import candidate_space_size, random_candidates, secret_scores

    rng, exposures = np.random.default_rng(0), []
    for i, e in enumerate(examples):
        secret = e.extras.get("secret")
        if not secret:
            continue
        if not isinstance(secret, str) or secret not in e.answer:
            raise DataError(f"forget record {i + 1}: 'secret' {secret!r} must be a string found in its answer")
        before = render_prompt(e.question, tokenizer, cfg.template) + e.answer[: e.answer.index(secret)]
        prefix = before.rstrip()
        ws = before[len(prefix):]  # whitespace goes with the candidates (byte-level BPE keeps " 555" whole)
        cands = [ws + c for c in random_candidates(secret, cfg.probe.exposure_candidates, rng)]
        try:
            scores = secret_scores(model, tokenizer, prefix, [ws + secret] + cands, batch_size=cfg.probe.batch_size)
        except ValueError as exc:
            raise DataError(f"forget record {i + 1}: cannot score its secret {secret!r}: {exc}") from exc
        exposures.append(expo.exposure_exact(secret_score=scores[0], candidate_scores=scores[1:],
                                             space_size=candidate_space_size(secret)))
    if exposures:
        res = expo.exposure(exposures=exposures)
        values["forget_exposure"], per_ex["forget_exposure"] = res.value, res.per_example


def apply_reference(ev: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """Fill the metrics that compare with a reference model (the retain model): forget quality
    (KS test of forget truth ratios) and privleak (vs its Min-k% AUC; 0.5 without a reference).
    ``ev`` and ``reference`` are outputs of :func:`evaluate_model`; pass ``ev`` itself as its own
    reference for the retain model (forget quality 1, privleak 0)."""
    values, reference = ev["values"], reference or {"values": {}, "per_example": {}}
    tr, ref_tr = ev["per_example"].get("forget_truth_ratio"), reference["per_example"].get("forget_truth_ratio")
    values["forget_quality"] = (tofu.forget_quality(tr_model=np.array(tr), tr_reference=np.array(ref_tr)).value
                                if tr and ref_tr else None)
    if values.get("mia_min_k_auc") is not None:
        ref_auc = reference["values"].get("mia_min_k_auc")
        values["privleak"] = priv.privleak(auc=values["mia_min_k_auc"],
                                           auc_ref=0.5 if ref_auc is None else ref_auc).value
    return ev


def model_utility_of(values: dict[str, float | None]) -> float | None:
    """TOFU model utility over the retain / real-author / world-fact components that exist."""
    keys = [f"{s}_{m}" for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge", "truth_ratio")]
    comps = {k: values[k] for k in keys if values.get(k) is not None}
    return tofu.model_utility(components=comps).value if comps else None


def _settings_for(split: str, s: ProbeSettings) -> ProbeSettings:
    """Only the probes a split's metrics use: no generation on holdout (no ROUGE there); per-token
    statistics (EM, extraction strength, MIA) and EL_n continuations only on forget and holdout."""
    mia_side = split in ("forget", "holdout")
    return replace(s, generate=s.generate and split != "holdout", el_n=s.el_n if mia_side else 0,
                   token_stats=s.token_stats and mia_side)


def evaluate_model(
    model: Any, tokenizer: Any, cfg: EvalConfig, *, reference: dict | None = None,
    splits: dict[str, list[Example]] | None = None,
) -> dict[str, Any]:
    """All metrics of one model: {"values": flat floats, "per_example": lists, "seconds": s}.

    ``reference`` is another model's output of this function (the retain model), used for
    forget quality and privleak. ``splits`` may be given to skip reading files again.
    """
    started = time.perf_counter()
    splits = splits or load_tofu_splits(cfg)
    bar = tqdm(splits.items(), desc="evaluate", disable=None if cfg.probe.progress else True, leave=False)
    probes = {name: probe_split(model, tokenizer, exs, template=cfg.template, settings=_settings_for(name, cfg.probe))
              for name, exs in bar}
    values: dict[str, Any] = {}
    per_ex: dict[str, Any] = {}
    for name, p in probes.items():
        if name == "holdout":
            values["holdout_prob"] = tofu.probability(avg_nll=p.avg_nll).value
            continue
        qa_metrics(name, p, values, per_ex, forget=name == "forget")
    f = probes["forget"]
    if f.token_match:
        values["forget_exact_mem"] = mem.exact_memorization(token_match=f.token_match).value
        values["forget_extraction_strength"] = mem.extraction_strength(token_match=f.token_match).value
    if "holdout" in probes and f.token_logp:
        _mia_metrics(f, probes["holdout"], values)
    if cfg.probe.el_n:
        _jang_metrics(probes, values, cfg.probe.el_n)
    _sensitive_metrics(model, tokenizer, splits["forget"], f, cfg, values)
    if cfg.probe.exposure_candidates:
        _exposure_metrics(model, tokenizer, splits["forget"], cfg, values, per_ex)
    values["model_utility"] = model_utility_of(values)
    ev = {"values": values, "per_example": per_ex, "seconds": time.perf_counter() - started,
          "probe_seconds": _probe_seconds(probes.values())}
    return apply_reference(ev, reference)


def _probe_seconds(probes: Any) -> dict[str, float]:
    """Wall time per probe kind, summed over splits (shown by bench/eval_throughput.py)."""
    total: dict[str, float] = {}
    for p in probes:
        for k, v in p.seconds.items():
            total[k] = total.get(k, 0.0) + v
    return total


def load_tofu_splits(cfg: EvalConfig) -> dict[str, list[Example]]:
    if cfg.suite != "tofu":
        raise ConfigError(f"unknown eval suite '{cfg.suite}'; available: tofu")
    files = tofu_split_files(cfg.data_dir, cfg.forget_split)
    return {name: load_examples(path, keys=cfg.keys) for name, path in files.items()}
