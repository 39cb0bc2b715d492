"""The audit's recovery ratio: how much of what unlearning removed an attack brings back."""
from __future__ import annotations

import math

from ..registry import METRICS
from .base import MetricResult


@METRICS.register("recovery_ratio", higher_is_better=False, version=1,
                  description="audit: (m_attacked - m_unlearned) / (m_target - m_unlearned) of a forget metric")
def recovery_ratio(*, attacked: float, unlearned: float, target: float, eps: float = 1e-12) -> MetricResult:
    """``(m_attacked - m_unlearned) / (m_target - m_unlearned)``: 0 = the attack recovered nothing,
    1 = it restored the target model's value, > 1 = beyond it, < 0 = the attack forgot more.

    The value is None when unlearning did not move the metric (``|m_target - m_unlearned| <= eps``:
    there is nothing to recover, so no ratio) or when an input is missing / not finite.
    """
    values = (attacked, unlearned, target)
    if any(v is None or not math.isfinite(v) for v in values):
        return MetricResult(None, extras={"reason": "missing or non-finite input"})
    gap = target - unlearned
    if abs(gap) <= eps:
        return MetricResult(None, extras={"reason": "unlearning did not change this metric"})
    return MetricResult((attacked - unlearned) / gap)
