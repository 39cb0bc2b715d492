"""Knowledge-update metrics (EasyEdit / MEND / ROME definitions), pure functions of probe arrays.

Used by ``unlearnkit update`` (F-Learning, Ni et al. 2024, arXiv 2311.08011, which reports
reliability, generality and locality on zsRE and CounterFact; the exact variant it used is not
verified, so these follow the common EasyEdit definitions, as the research notes propose):

* reliability = mean_i acc(prompt_i -> target_new_i), ``acc`` = teacher-forced token accuracy
  (the fraction of the answer's tokens that are the argmax given the prompt and the previous tokens);
* generality  = the same on paraphrased prompts (every paraphrase counts as one item);
* locality    = mean over locality prompts of the fraction of answer positions whose argmax
  prediction is the same after the edit as before it (EasyEdit's zsRE ``loc`` comparison);
* old_answer_rate = fraction of edits where the model still prefers the old answer:
  log p(target_true | prompt) > log p(target_new | prompt) (the complement of ROME's efficacy
  score ES = E[1(p(o_new) > p(o_true))]).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..registry import METRICS
from .base import MetricResult
from .tofu import ragged_arrays


@METRICS.register("edit_reliability", higher_is_better=True, version=1,
                  description="knowledge update: mean teacher-forced token accuracy of the new answers")
def edit_reliability(*, token_match: Sequence[np.ndarray]) -> MetricResult:
    """Reliability (edit success): mean over edits of the token accuracy of ``target_new`` given the
    prompt. token_match: N x (T_i,) bool, argmax == label at each answer token (no EOS)."""
    return MetricResult.from_array([m.mean() for m in ragged_arrays("token_match", token_match, dtype=bool)])


@METRICS.register("edit_generality", higher_is_better=True, version=1,
                  description="knowledge update: token accuracy of the new answers after paraphrased prompts")
def edit_generality(*, token_match: Sequence[np.ndarray]) -> MetricResult:
    """Generality: reliability measured on the paraphrased prompts (one item per paraphrase)."""
    return edit_reliability(token_match=token_match)


@METRICS.register("edit_locality", higher_is_better=True, version=1,
                  description="knowledge update: share of unrelated-prompt predictions left unchanged")
def edit_locality(*, pred_before: Sequence[np.ndarray], pred_after: Sequence[np.ndarray]) -> MetricResult:
    """Locality: mean over locality prompts of the fraction of answer positions where the argmax
    token after the edit equals the one before. pred_*: N x (T_i,) int token ids, aligned."""
    before = ragged_arrays("pred_before", pred_before, dtype=np.int64)
    after = ragged_arrays("pred_after", pred_after, dtype=np.int64)
    if len(before) != len(after) or any(b.shape != a.shape for b, a in zip(before, after)):
        raise ValueError("pred_before and pred_after must hold the same number of equally long arrays")
    return MetricResult.from_array([(b == a).mean() for b, a in zip(before, after)])


@METRICS.register("edit_old_answer_rate", higher_is_better=False, version=1,
                  description="knowledge update: share of edits where the old answer is still more likely")
def edit_old_answer_rate(*, logp_old: Sequence[float], logp_new: Sequence[float]) -> MetricResult:
    """Fraction of edits with log p(target_true | prompt) > log p(target_new | prompt) (summed
    answer log-probs): 1 - ROME's efficacy score. logp_old, logp_new: (N,)."""
    old, new = np.asarray(logp_old, dtype=np.float64), np.asarray(logp_new, dtype=np.float64)
    if old.shape != new.shape or old.ndim != 1 or old.size == 0:
        raise ValueError(f"logp_old and logp_new must be equal-length non-empty 1-D arrays, got {old.shape}, {new.shape}")
    return MetricResult.from_array((old > new).astype(np.float64))
