"""TOFU metrics (Maini et al. 2024, arXiv 2401.06121) as pure functions of probe arrays.

Every definition follows open-unlearning (locuslab/open-unlearning, ``src/evals/metrics/``), whose
per-example outputs are the reference for parity; the exact conventions are listed in
``/work/shared/research/tofu_metric_details.md``. Inputs are per-example mean token NLLs over the
answer tokens + EOS (``avg_nll``), so ``p = exp(-avg_nll)`` is the per-token geometric-mean
probability of an answer.

This module also holds the small input checks shared by the other metric modules.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..registry import METRICS
from .base import MetricResult

_EPS = 1e-10  # the reference's epsilon in every ratio below


# ---------------------------------------------------------------------------- input checks


def finite_array(name: str, values: object, *, ndim: int) -> np.ndarray:
    """``values`` as a float64 array of ``ndim`` dims, non-empty and NaN-free, else ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(N, K)"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one value")
    if np.isnan(arr).any():
        bad = np.argwhere(np.isnan(arr))[0].tolist()
        raise ValueError(f"{name} contains NaN (first at index {bad})")
    return arr


def same_length(**named: Sequence | np.ndarray) -> int:
    """Check that all named inputs have the same number of examples; return it."""
    lengths = {name: len(v) for name, v in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same number of examples, got {lengths}")
    return next(iter(lengths.values()))


def ragged_arrays(name: str, seqs: Sequence, *, dtype: type = np.float64) -> list[np.ndarray]:
    """A non-empty list of non-empty 1-D arrays (one per example), NaN-free, else ValueError."""
    if len(seqs) == 0:
        raise ValueError(f"{name} is empty; need at least one example")
    out = []
    for i, seq in enumerate(seqs):
        arr = np.asarray(seq, dtype=dtype)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"{name}[{i}] must be a non-empty 1-D array (one value per answer token), "
                f"got shape {arr.shape}"
            )
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError(f"{name}[{i}] contains NaN")
        out.append(arr)
    return out


# ---------------------------------------------------------------------------- probabilities


@METRICS.register(
    "probability", higher_is_better=None, version=1,
    description="TOFU answer probability exp(-mean token NLL), mean over examples",
)
def probability(*, avg_nll: np.ndarray) -> MetricResult:
    """Mean answer probability, TOFU "Prob." (Maini et al. 2024, §3.2).

    Reference: open-unlearning ``memorization.py::probability`` (handler ``probability``):
    p_i = exp(-avg_loss_i) with avg_loss the mean NLL over answer tokens + EOS; value = mean_i p_i.
    Direction depends on the split (high on retain is good, low on forget is good).
    """
    nll = finite_array("avg_nll", avg_nll, ndim=1)  # (N,)
    return MetricResult.from_array(np.exp(-nll))  # (N,) per-token geometric-mean probabilities


@METRICS.register(
    "probability_normalised", higher_is_better=None, version=1,
    description="TOFU p / (p + sum_k p_k) for real authors / world facts, mean over examples",
)
def probability_normalised(*, avg_nll: np.ndarray, avg_nll_perturbed: np.ndarray) -> MetricResult:
    """Normalised answer probability, TOFU real authors / world facts "Prob." (Maini et al. 2024).

    Reference: open-unlearning ``memorization.py::probability_w_options``:
    p / (p + sum_k p_k + 1e-10), with p = exp(-avg_nll) of the correct answer and p_k =
    exp(-avg_nll_perturbed[:, k]) of the K wrong options, all per-token normalised.
    """
    nll = finite_array("avg_nll", avg_nll, ndim=1)  # (N,)
    nll_k = finite_array("avg_nll_perturbed", avg_nll_perturbed, ndim=2)  # (N, K)
    same_length(avg_nll=nll, avg_nll_perturbed=nll_k)
    p, p_wrong = np.exp(-nll), np.exp(-nll_k).sum(axis=1)  # (N,), (N,) summed over options
    return MetricResult.from_array(p / (p + p_wrong + _EPS))


# ---------------------------------------------------------------------------- truth ratio

_TR_AGGREGATIONS = ("closer_to_1", "true_better")


@METRICS.register(
    "truth_ratio", higher_is_better=True, version=1,
    description="TOFU truth ratio; forget: mean min(tr, 1/tr), others: mean max(0, 1 - tr)",
)
def truth_ratio(
    *, avg_nll_correct: np.ndarray, avg_nll_perturbed: np.ndarray, aggregation: str
) -> MetricResult:
    """TOFU truth ratio (Maini et al. 2024, §3.2), open-unlearning handler ``truth_ratio``.

    Per example tr = exp(-mean_k avg_nll_perturbed[:, k]) / (exp(-avg_nll_correct) + 1e-10): the
    perturbed answers are averaged in avg-NLL space (a geometric mean of per-token-normalised
    probabilities), as open-unlearning's ``aggregate_to_1D``. ``avg_nll_correct`` is the paraphrased
    answer on the forget/retain splits and the original answer on real authors / world facts.

    ``aggregation``: "closer_to_1" (forget split, the reference's ``closer_to_1_better``):
    mean(min(tr, 1/(tr + 1e-10))); "true_better" (retain, real authors, world facts):
    mean(max(0, 1 - tr)). Both are higher-is-better. ``per_example`` holds the RAW tr values
    (the input of ``forget_quality``).
    """
    if aggregation not in _TR_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_TR_AGGREGATIONS}, got {aggregation!r}")
    nll = finite_array("avg_nll_correct", avg_nll_correct, ndim=1)  # (N,)
    nll_k = finite_array("avg_nll_perturbed", avg_nll_perturbed, ndim=2)  # (N, K)
    same_length(avg_nll_correct=nll, avg_nll_perturbed=nll_k)
    tr = np.exp(-nll_k.mean(axis=1)) / (np.exp(-nll) + _EPS)  # (N,) raw truth ratios
    if aggregation == "closer_to_1":
        value = np.mean(np.minimum(tr, 1.0 / (tr + _EPS)))
    else:
        value = np.mean(np.maximum(0.0, 1.0 - tr))
    return MetricResult(float(value), [float(t) for t in tr], {"aggregation": aggregation})


# ---------------------------------------------------------------------------- ROUGE

_SCORER = None  # rouge_score.RougeScorer, built on first use (import + stemmer setup is slow)


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _SCORER


@METRICS.register(
    "rouge_l_recall", higher_is_better=None, version=1,
    description="TOFU ROUGE-L recall of greedy generations vs ground truth (rouge_score, stemmer)",
)
def rouge_l_recall(*, ground_truths: Sequence[str], generations: Sequence[str]) -> MetricResult:
    """Mean ROUGE-L recall, TOFU "ROUGE" (Maini et al. 2024), open-unlearning handler ``rouge``
    with ``rouge_type: rougeL_recall``.

    ``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(ground_truth, generation)``
    (target first); the value is the mean rougeL recall, extras carry rouge1 recall. Generations
    must already be greedy, cut at EOS and decoded as in tofu_metric_details.md (that is the probe's
    job). Direction depends on the split.
    """
    n = same_length(ground_truths=ground_truths, generations=generations)
    if n == 0:
        raise ValueError("ground_truths and generations are empty; need at least one pair")
    for name, texts in (("ground_truths", ground_truths), ("generations", generations)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"{name}[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
    scores = [_rouge_scorer().score(gt, gen) for gt, gen in zip(ground_truths, generations)]
    r1 = np.array([s["rouge1"].recall for s in scores])  # (N,)
    rl = np.array([s["rougeL"].recall for s in scores])  # (N,)
    return MetricResult.from_array(
        rl, rouge1_recall=float(r1.mean()), rouge1_recall_per_example=[float(v) for v in r1]
    )


# ---------------------------------------------------------------------------- aggregates


@METRICS.register(
    "forget_quality", higher_is_better=True, version=1,
    description="TOFU forget quality: KS-test p-value of truth ratios vs the retain model's",
)
def forget_quality(*, tr_model: np.ndarray, tr_reference: np.ndarray) -> MetricResult:
    """TOFU forget quality (Maini et al. 2024, §3.3), open-unlearning handler ``ks_test``.

    ``scipy.stats.ks_2samp(tr_model, tr_reference).pvalue`` (default two-sided test) on the RAW
    per-example truth ratios (``truth_ratio(...).per_example``) of the unlearned model and of the
    retain model on the same forget split. Legacy TOFU uses 1/tr; KS is invariant to that map.
    """
    a = finite_array("tr_model", tr_model, ndim=1)  # (N,)
    b = finite_array("tr_reference", tr_reference, ndim=1)  # (M,) usually M == N
    import scipy.stats  # lazy: keeps `unlearnkit ls` fast
    res = scipy.stats.ks_2samp(a, b)
    return MetricResult(
        float(res.pvalue), None,
        {"ks_statistic": float(res.statistic), "n_model": a.size, "n_reference": b.size},
    )


@METRICS.register(
    "model_utility", higher_is_better=True, version=1,
    description="TOFU model utility: harmonic mean of 9 retain / real-author / world-fact scores",
)
def model_utility(*, components: Mapping[str, float]) -> MetricResult:
    """TOFU model utility (Maini et al. 2024, §3.3), open-unlearning handler ``hm_aggregate``.

    ``scipy.stats.hmean`` of the named values; TOFU uses 9: {Prob. (normalised for real authors
    and world facts), ROUGE-L recall, truth ratio ("true_better")} x {retain, real authors, world
    facts}.
    The result is 0.0 when any component is <= 0. ``extras["components"]`` lists the inputs.
    """
    if not isinstance(components, Mapping) or len(components) == 0:
        raise ValueError("components must be a non-empty mapping of name -> value")
    comps = {}
    for key, val in components.items():
        try:
            comps[str(key)] = float(val)
        except (TypeError, ValueError):
            raise ValueError(f"components[{key!r}] = {val!r} is not a number") from None
    vals = finite_array("components", list(comps.values()), ndim=1)  # (C,)
    import scipy.stats  # lazy: keeps `unlearnkit ls` fast
    value = 0.0 if (vals <= 0).any() else float(scipy.stats.hmean(vals))
    return MetricResult(value, None, {"components": comps})
