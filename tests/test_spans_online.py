"""Hand-worked tests for the online span selector of data/spans.py (select_tokens, token_runs)."""
import math

import numpy as np
import pytest

from unlearnkit.data.spans import select_tokens, token_runs

T, F = True, False


def test_select_highest_and_lowest():
    scores = [0.1, 0.9, 0.5, 0.8]
    # ceil(0.5 * 4) = 2 tokens: highest 0.9 (1), 0.8 (3); lowest 0.1 (0), 0.5 (2)
    assert select_tokens(scores, 0.5, "highest").tolist() == [F, T, F, T]
    assert select_tokens(scores, 0.5, "lowest").tolist() == [T, F, T, F]
    assert select_tokens(scores, 1.0).tolist() == [T, T, T, T]


def test_select_rounds_up_so_every_scored_answer_keeps_a_token():
    # ceil(0.2 * 3) = ceil(0.6) = 1; ceil(0.2 * 10) = 2 exactly (not 3 from float noise); ceil(0.3 * 10) = 3
    assert select_tokens([0.2, 0.7, 0.4], 0.2).tolist() == [F, T, F]
    assert select_tokens(np.arange(10.0), 0.2).tolist() == [F] * 8 + [T, T]
    assert select_tokens(np.arange(10.0), 0.3, "lowest").tolist() == [T, T, T] + [F] * 7
    assert select_tokens([], 0.2).tolist() == []


def test_select_ties_go_to_the_earlier_token_and_nan_is_never_selected():
    assert select_tokens([0.5, 0.5, 0.5, 0.1], 0.5).tolist() == [T, T, F, F]
    assert select_tokens([0.5, 0.5, 0.5, 0.9], 0.25, "lowest").tolist() == [T, F, F, F]
    # NaN (no prediction) does not count: 3 valid tokens, ceil(0.5 * 3) = 2 -> lowest 0.2, 0.3
    assert select_tokens([math.nan, 0.3, 0.9, 0.2], 0.5, "lowest").tolist() == [F, T, F, T]
    assert select_tokens([math.nan], 1.0).tolist() == [F]


@pytest.mark.parametrize("fraction, rule, match", [(0.0, "highest", "fraction"), (1.5, "highest", "fraction"),
                                                   (0.2, "middle", "unknown rule 'middle'")])
def test_select_errors(fraction, rule, match):
    with pytest.raises(ValueError, match=match):
        select_tokens([0.1, 0.2], fraction, rule)


def test_token_runs_merge_adjacent_tokens():
    assert token_runs([F, T, T, F, T]) == [(1, 3), (4, 5)]
    assert token_runs([T, T, T]) == [(0, 3)]
    assert token_runs([F, F]) == [] and token_runs([]) == []
    assert token_runs(select_tokens([0.9, 0.8, 0.1, 0.7], 0.75)) == [(0, 2), (3, 4)]
