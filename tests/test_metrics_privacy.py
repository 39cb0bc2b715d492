"""Hand-computed tests for the MIA scores / AUCs and privleak."""
import zlib

import numpy as np
import pytest

from unlearnkit.metrics import privacy as pv
from unlearnkit.registry import METRICS


def test_loss_scores_and_auc_sign_convention():
    # Memorised forget set has low loss; holdout high -> every holdout score > every forget score
    # -> AUC (holdout = positive class) = 1
    res = pv.mia_loss(forget_avg_nll=[0.1, 0.2], holdout_avg_nll=[1.0, 2.0])
    assert res.value == pytest.approx(1.0)
    assert res.extras["forget_scores"] == [0.1, 0.2]
    # Interleaved: pairs (f, h) with h > f: (0.1,1.0) (0.1,2.0) (1.5,2.0) = 3 of 4 -> AUC 0.75
    assert pv.mia_auc([0.1, 1.5], [1.0, 2.0]) == pytest.approx(0.75)


def test_zlib_scores():
    # zlib.compress(b"") is 8 bytes and zlib.compress(b"a") is 9 bytes
    assert len(zlib.compress(b"")) == 8 and len(zlib.compress(b"a")) == 9
    scores = pv.zlib_scores(np.array([0.8, 0.9]), ["", "a"])
    assert scores == pytest.approx([0.8 / 8, 0.9 / 9])
    res = pv.mia_zlib(
        forget_avg_nll=[0.8], forget_texts=[""], holdout_avg_nll=[0.9], holdout_texts=["a"]
    )
    # forget 0.1 vs holdout 0.1: a tie -> AUC 0.5
    assert res.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same number"):
        pv.zlib_scores(np.array([0.8]), ["a", "b"])


def test_min_k_scores():
    # n=5, k=0.4 -> int(2.0) = 2 lowest: -5, -4 -> -mean = 4.5
    # n=2 (< 3 tokens): int(0.8) = 0 -> max(1, 0) = 1 lowest: -3 -> 3
    # n=1: the single token -> 0.7 (float32: 0.69999999)
    lps = [np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), np.array([-0.5, -3.0]), np.array([-0.7])]
    assert pv.min_k_scores(lps) == pytest.approx([4.5, 3.0, 0.7], rel=1e-6)
    # k = 1 -> mean of all: ex 0 -> 3
    assert pv.min_k_scores(lps[:1], k=1.0) == pytest.approx([3.0])
    with pytest.raises(ValueError, match="k must be"):
        pv.min_k_scores(lps, k=0.0)


def test_min_k_plus_plus_scores():
    # z = (logp - mu) / sigma: (-1+1.5)/0.5 = 1, (-2+1.5)/1 = -0.5, (-3+1.5)/sqrt(1e-6) = -1500
    # (sigma 0 is floored at sqrt(1e-6) = 1e-3). n=3, k=0.4 -> int(1.2) = 1 lowest: -1500 -> 1500
    lp, mu, sd = [np.array([-1.0, -2.0, -3.0])], [np.full(3, -1.5)], [np.array([0.5, 1.0, 0.0])]
    assert pv.min_k_plus_plus_scores(lp, mu, sd) == pytest.approx([1500.0], rel=1e-5)
    # k=1: mean(1, -0.5, -1500) = -499.8333 -> 499.8333
    assert pv.min_k_plus_plus_scores(lp, mu, sd, k=1.0) == pytest.approx([1499.5 / 3], rel=1e-5)
    with pytest.raises(ValueError, match="lengths differ"):
        pv.min_k_plus_plus_scores(lp, [np.full(2, -1.5)], sd)


def test_mia_min_k_and_plus_plus_auc():
    member = [np.array([-0.1, -0.2, -0.1])]  # min-k score 0.2
    nonmember = [np.array([-2.0, -3.0, -1.0])]  # min-k score 3.0
    res = pv.mia_min_k(forget_token_logp=member, holdout_token_logp=nonmember)
    assert res.value == pytest.approx(1.0)
    assert res.extras["forget_scores"] == pytest.approx([0.2], rel=1e-6)
    assert res.extras["k"] == 0.4
    # min-k++ with mu = -1, sigma = 1: member z = (.9, .8, .9) -> -0.8; non-member lowest z -2 -> 2
    ones = [np.ones(3)]
    res = pv.mia_min_k_plus_plus(
        forget_token_logp=member, forget_token_mu=[-np.ones(3)], forget_token_sigma=ones,
        holdout_token_logp=nonmember, holdout_token_mu=[-np.ones(3)], holdout_token_sigma=ones,
    )
    assert res.extras["forget_scores"] == pytest.approx([-0.8], rel=1e-6)
    assert res.extras["holdout_scores"] == pytest.approx([2.0], rel=1e-6)
    assert res.value == pytest.approx(1.0)


def test_mia_validation():
    with pytest.raises(ValueError, match="scores_holdout is empty"):
        pv.mia_auc([0.1], [])
    with pytest.raises(ValueError, match="NaN"):
        pv.mia_loss(forget_avg_nll=[float("nan")], holdout_avg_nll=[1.0])
    with pytest.raises(ValueError, match=r"token_logp\[0\] must be a non-empty"):
        pv.min_k_scores([np.array([])])


def test_privleak():
    # auc 1, ref 0.5: ((1-1) - (1-0.5)) / (0.5 + 1e-10) * 100 = -100
    assert pv.privleak(auc=1.0).value == pytest.approx(-100.0)
    # auc = ref -> 0
    assert pv.privleak(auc=0.5).value == pytest.approx(0.0)
    # auc 0.75, ref 0.6: (0.25 - 0.4) / 0.4 * 100 = -37.5
    assert pv.privleak(auc=0.75, auc_ref=0.6).value == pytest.approx(-37.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pv.privleak(auc=1.5)


@pytest.mark.parametrize(
    "name", ["mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "privleak"]
)
def test_registered(name):
    assert name in METRICS
    meta = METRICS.meta[name]
    assert "higher_is_better" in meta and meta["higher_is_better"] is None
    assert meta["version"] == 1
    assert meta["description"]
    assert METRICS[name].__doc__
