"""The audit's recovery ratio, by hand."""
from __future__ import annotations

import math

import pytest

from unlearnkit.metrics.recovery import recovery_ratio


def test_recovery_ratio_by_hand():
    # forget prob: target 0.9, unlearned 0.1, attacked 0.5 -> half of the removed knowledge is back
    assert recovery_ratio(attacked=0.5, unlearned=0.1, target=0.9).value == pytest.approx(0.5)
    assert recovery_ratio(attacked=0.1, unlearned=0.1, target=0.9).value == 0.0
    assert recovery_ratio(attacked=0.95, unlearned=0.1, target=0.9).value == pytest.approx(0.85 / 0.8)
    assert recovery_ratio(attacked=0.05, unlearned=0.1, target=0.9).value == pytest.approx(-0.0625)
    # a metric unlearning raised (e.g. a loss): the sign convention still holds
    assert recovery_ratio(attacked=3.0, unlearned=5.0, target=1.0).value == pytest.approx(0.5)


def test_recovery_ratio_undefined_cases():
    assert recovery_ratio(attacked=0.5, unlearned=0.3, target=0.3).value is None
    assert recovery_ratio(attacked=math.nan, unlearned=0.1, target=0.9).value is None
    assert recovery_ratio(attacked=None, unlearned=0.1, target=0.9).value is None
