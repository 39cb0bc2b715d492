"""Hand-computed checks of the shared log-prob maths (unlearnkit.logprobs).

Logits are chosen as log-probabilities, so softmax(logits) is exactly the chosen distribution and
every expected value below is a sum of ``math.log`` terms.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnkit.logprobs import IGNORE, batch_nll, kl_on_supervised, mean_nll, sequence_logp, token_logp

# Row t is the next-token distribution at position t (V = 3). The last row predicts nothing.
P = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]
LOGITS = torch.log(torch.tensor([P], dtype=torch.float64)).float()  # (1, 3, 3)


def test_token_logp_shift_and_mask():
    labels = torch.tensor([[IGNORE, 1, 2]])  # position 0 predicts label 1, position 1 predicts 2
    logp, mask = token_logp(LOGITS, labels)
    assert logp.shape == mask.shape == (1, 2)
    assert mask.tolist() == [[True, True]]
    assert logp[0, 0].item() == pytest.approx(math.log(0.25), abs=1e-6)  # P[0][1]
    assert logp[0, 1].item() == pytest.approx(math.log(0.5), abs=1e-6)  # P[1][2]


def test_token_logp_masked_positions_are_zero():
    labels = torch.tensor([[0, IGNORE, 2]])  # label at position 0 never scored (nothing predicts it)
    logp, mask = token_logp(LOGITS, labels)
    assert mask.tolist() == [[False, True]]
    assert logp[0, 0].item() == 0.0
    assert logp[0, 1].item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert logp.dtype == torch.float32


def test_token_logp_is_float32_for_half_logits():
    logp, _ = token_logp(LOGITS.bfloat16(), torch.tensor([[IGNORE, 1, 2]]))
    assert logp.dtype == torch.float32


def _batch():
    logits = LOGITS.expand(2, 3, 3).clone()
    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, IGNORE, 0]])
    return logits, labels


def test_sequence_logp_sums_supervised_tokens():
    logits, labels = _batch()
    out = sequence_logp(logits, labels)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(math.log(0.25) + math.log(0.5), abs=1e-6)
    assert out[1].item() == pytest.approx(math.log(0.2), abs=1e-6)  # P[1][0]


def test_mean_nll_averages_over_supervised_tokens_only():
    logits, labels = _batch()
    out = mean_nll(logits, labels)
    assert out[0].item() == pytest.approx(-(math.log(0.25) + math.log(0.5)) / 2, abs=1e-6)
    assert out[1].item() == pytest.approx(-math.log(0.2), abs=1e-6)  # 1 token, not 2


def test_mean_nll_of_fully_masked_row_is_zero_not_nan():
    out = mean_nll(LOGITS, torch.full((1, 3), IGNORE))
    assert out.item() == 0.0


def test_batch_nll_hand_value():
    logits, labels = _batch()
    expected = -(math.log(0.25) + math.log(0.5) + math.log(0.2)) / 3  # token-weighted, not row mean
    assert batch_nll(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_batch_nll_equals_torch_cross_entropy_on_shifted_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = IGNORE
    labels[1, 5:] = IGNORE
    labels[2, :1] = IGNORE
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )
    assert batch_nll(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_kl_is_zero_for_identical_logits():
    logits, labels = _batch()
    assert kl_on_supervised(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_matches_hand_value_on_one_supervised_position():
    q = [0.5, 0.25, 0.25]  # reference distribution at position 1
    ref = LOGITS.clone()
    ref[0, 1] = torch.log(torch.tensor(q))
    ref[0, 0] = torch.log(torch.tensor([0.1, 0.1, 0.8]))  # differs, but position 0 is unsupervised
    labels = torch.tensor([[IGNORE, IGNORE, 2]])
    expected = sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, P[1]))  # KL(ref || theta)
    out = kl_on_supervised(LOGITS, ref, labels)
    assert out.item() == pytest.approx(expected, abs=1e-6)
    # direction: KL(ref || theta), not KL(theta || ref)
    reverse = sum(pi * (math.log(pi) - math.log(qi)) for qi, pi in zip(q, P[1]))
    assert abs(expected - reverse) > 1e-3
