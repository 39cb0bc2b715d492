"""Membership-inference (MIA) metrics and privleak as pure functions of probe arrays.

Conventions follow open-unlearning (locuslab/open-unlearning, ``src/evals/metrics/mia/*.py`` and
``privacy.py``): every score is "higher = looks more like a NON-member" (a loss-like score), and
the AUC is ``roc_auc_score`` with labels forget = 0, holdout = 1, so AUC -> 1 when the forget set
is still memorised and ~0.5 for a model that never saw it. Scores are computed on answer tokens
(without EOS for the token-level attacks).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ..registry import METRICS
from .base import MetricResult
from .tofu import finite_array, ragged_arrays, same_length

MIN_K = 0.4  # k of Min-k% / Min-k%++ in open-unlearning's TOFU / MUSE configs (class default 0.2)
_SIGMA_FLOOR = np.sqrt(np.float32(1e-6))  # reference clamps the variance at 1e-6 before sqrt


# ---------------------------------------------------------------------------- scores (N,)


def loss_scores(avg_nll: np.ndarray) -> np.ndarray:
    """LOSS attack (Yeom et al. 2018), reference ``LOSSAttack``: score = avg_nll. (N,) -> (N,)"""
    return finite_array("avg_nll", avg_nll, ndim=1)


def zlib_scores(avg_nll: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """zlib attack (Carlini et al. 2021), reference ``ZLIBAttack``:
    score = avg_nll / len(zlib.compress(text.encode("utf-8"))), text = the decoded answer. (N,)"""
    nll = finite_array("avg_nll", avg_nll, ndim=1)  # (N,)
    same_length(avg_nll=nll, texts=texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of str (the decoded answers)")
    zlen = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return nll / zlen  # zlib output is never empty (>= 8 bytes), so no division by zero


def _min_k_one(values: np.ndarray, k: float) -> float:
    """-mean of the max(1, int(k * n)) lowest values, in float32 like the reference."""
    num_k = max(1, int(values.size * k))
    return -float(np.mean(np.sort(values)[:num_k]))


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k!r}")


def min_k_scores(token_logp: Sequence[np.ndarray], *, k: float = MIN_K) -> np.ndarray:
    """Min-k% Prob (Shi et al. 2024, arXiv 2310.16789), reference ``MinKProbAttack``:
    score = -mean of the max(1, int(k * n)) lowest token log-probs (float32). N x (n_i,) -> (N,)
    The reference scores an example with no tokens 0.0; here it raises ValueError."""
    _check_k(k)
    lps = ragged_arrays("token_logp", token_logp, dtype=np.float32)  # N x (n_i,)
    return np.array([_min_k_one(lp, k) for lp in lps])


def min_k_plus_plus_scores(
    token_logp: Sequence[np.ndarray],
    token_mu: Sequence[np.ndarray],
    token_sigma: Sequence[np.ndarray],
    *,
    k: float = MIN_K,
) -> np.ndarray:
    """Min-k%++ (Zhang et al. 2025, arXiv 2404.02936), reference ``MinKPlusPlusAttack``:
    z_t = (log p(x_t) - mu_t) / sigma_t, with mu_t, sigma_t the mean and STD of log p(v) under the
    model's own next-token distribution; score = -mean of the max(1, int(k * n)) lowest z (float32).
    sigma is floored at sqrt(1e-6) (the reference clamps the variance at 1e-6). N x (n_i,) -> (N,)
    """
    _check_k(k)
    lps = ragged_arrays("token_logp", token_logp, dtype=np.float32)  # N x (n_i,)
    mus = ragged_arrays("token_mu", token_mu, dtype=np.float32)
    sigmas = ragged_arrays("token_sigma", token_sigma, dtype=np.float32)
    same_length(token_logp=lps, token_mu=mus, token_sigma=sigmas)
    out = []
    for i, (lp, mu, sd) in enumerate(zip(lps, mus, sigmas)):
        if not lp.shape == mu.shape == sd.shape:
            raise ValueError(
                f"example {i}: token_logp, token_mu, token_sigma lengths differ "
                f"({lp.size}, {mu.size}, {sd.size})"
            )
        z = (lp - mu) / np.maximum(sd, _SIGMA_FLOOR)  # (n_i,) float32
        out.append(_min_k_one(z, k))
    return np.array(out)


def mia_auc(scores_forget: np.ndarray, scores_holdout: np.ndarray) -> float:
    """ROC AUC with labels forget = 0, holdout = 1 (reference ``mia/utils.py::mia_auc``)."""
    f = finite_array("scores_forget", scores_forget, ndim=1)  # (N_f,)
    h = finite_array("scores_holdout", scores_holdout, ndim=1)  # (N_h,)
    labels = np.concatenate([np.zeros(f.size), np.ones(h.size)])
    from sklearn.metrics import roc_auc_score  # lazy: keeps `unlearnkit ls` fast
    return float(roc_auc_score(labels, np.concatenate([f, h])))


def _auc_result(scores_forget: np.ndarray, scores_holdout: np.ndarray, **extras) -> MetricResult:
    auc = mia_auc(scores_forget, scores_holdout)
    return MetricResult(auc, None, {
        "forget_scores": [float(s) for s in scores_forget],
        "holdout_scores": [float(s) for s in scores_holdout],
        **extras,
    })


# ---------------------------------------------------------------------------- registered AUCs

_AUC_DOC = "MIA AUC (forget = 0, holdout = 1; ~1 = forget set memorised, ~0.5 = never seen)"


@METRICS.register("mia_loss", higher_is_better=None, version=1, description=f"LOSS {_AUC_DOC}")
def mia_loss(*, forget_avg_nll: np.ndarray, holdout_avg_nll: np.ndarray) -> MetricResult:
    """LOSS-attack AUC, open-unlearning ``mia_loss``; scores from ``loss_scores``."""
    return _auc_result(loss_scores(forget_avg_nll), loss_scores(holdout_avg_nll))


@METRICS.register("mia_zlib", higher_is_better=None, version=1, description=f"zlib {_AUC_DOC}")
def mia_zlib(
    *,
    forget_avg_nll: np.ndarray,
    forget_texts: Sequence[str],
    holdout_avg_nll: np.ndarray,
    holdout_texts: Sequence[str],
) -> MetricResult:
    """zlib-attack AUC, open-unlearning ``mia_zlib``; scores from ``zlib_scores``."""
    return _auc_result(
        zlib_scores(forget_avg_nll, forget_texts), zlib_scores(holdout_avg_nll, holdout_texts)
    )


@METRICS.register("mia_min_k", higher_is_better=None, version=1, description=f"Min-k% {_AUC_DOC}")
def mia_min_k(
    *,
    forget_token_logp: Sequence[np.ndarray],
    holdout_token_logp: Sequence[np.ndarray],
    k: float = MIN_K,
) -> MetricResult:
    """Min-k% AUC, open-unlearning ``mia_min_k`` (k = 0.4 as in its TOFU config)."""
    return _auc_result(
        min_k_scores(forget_token_logp, k=k), min_k_scores(holdout_token_logp, k=k), k=k
    )


@METRICS.register(
    "mia_min_k_plus_plus", higher_is_better=None, version=1, description=f"Min-k%++ {_AUC_DOC}"
)
def mia_min_k_plus_plus(
    *,
    forget_token_logp: Sequence[np.ndarray],
    forget_token_mu: Sequence[np.ndarray],
    forget_token_sigma: Sequence[np.ndarray],
    holdout_token_logp: Sequence[np.ndarray],
    holdout_token_mu: Sequence[np.ndarray],
    holdout_token_sigma: Sequence[np.ndarray],
    k: float = MIN_K,
) -> MetricResult:
    """Min-k%++ AUC, open-unlearning ``mia_min_k_plus_plus``; scores from
    ``min_k_plus_plus_scores``."""
    f = min_k_plus_plus_scores(forget_token_logp, forget_token_mu, forget_token_sigma, k=k)
    h = min_k_plus_plus_scores(holdout_token_logp, holdout_token_mu, holdout_token_sigma, k=k)
    return _auc_result(f, h, k=k)


@METRICS.register(
    "privleak", higher_is_better=None, version=1,
    description="MUSE privleak: relative AUC gap to the retain model (or 0.5), in %; 0 is ideal",
)
def privleak(*, auc: float, auc_ref: float = 0.5) -> MetricResult:
    """PrivLeak (Shi et al. 2024, MUSE, arXiv 2407.06460), open-unlearning handler ``privleak``:
    ((1 - auc) - (1 - auc_ref)) / (1 - auc_ref + 1e-10) * 100, with ``auc`` usually the Min-k% AUC
    and ``auc_ref`` the retain model's AUC (0.5 without a reference). ~0 matches the retain model;
    large negative values mean the forget set is still detectable (under-unlearning)."""
    a, ref = finite_array("auc, auc_ref", [auc, auc_ref], ndim=1)
    if not (0.0 <= a <= 1.0 and 0.0 <= ref <= 1.0):
        raise ValueError(f"auc and auc_ref must lie in [0, 1], got auc={a}, auc_ref={ref}")
    value = ((1.0 - a) - (1.0 - ref)) / (1.0 - ref + 1e-10) * 100.0
    return MetricResult(float(value), None, {"auc": float(a), "auc_ref": float(ref)})
