"""Hand-computed tests for the TOFU metrics (pure functions of probe arrays)."""
import math

import numpy as np
import pytest

from unlearnkit.metrics import tofu
from unlearnkit.metrics.base import MetricResult
from unlearnkit.registry import METRICS

LN2, LN4, LN8 = math.log(2), math.log(4), math.log(8)


def test_probability_is_mean_of_exp_minus_nll():
    # p = exp(-[0, ln2, ln4]) = [1, 1/2, 1/4]; mean = 1.75 / 3
    res = tofu.probability(avg_nll=np.array([0.0, LN2, LN4]))
    assert isinstance(res, MetricResult)
    assert res.per_example == pytest.approx([1.0, 0.5, 0.25])
    assert res.value == pytest.approx(1.75 / 3)


def test_probability_normalised():
    # ex 0: p = 1/2, wrong = 1/4 + 1/4 = 1/2 -> 0.5 / (0.5 + 0.5 + 1e-10)
    # ex 1: p = 1,   wrong = 1/2 + 1/4 = 3/4 -> 1 / 1.75
    res = tofu.probability_normalised(
        avg_nll=np.array([LN2, 0.0]), avg_nll_perturbed=np.array([[LN4, LN4], [LN2, LN4]])
    )
    expected = [0.5 / (1.0 + 1e-10), 1.0 / (1.75 + 1e-10)]
    assert res.per_example == pytest.approx(expected, rel=1e-12)
    assert res.value == pytest.approx(sum(expected) / 2, rel=1e-12)


# ex 0: p_correct = exp(-ln2) = 1/2; perturbed nll mean = (ln2 + ln8)/2 = ln4 -> 1/4; tr = 1/2
#       (an arithmetic mean of probabilities would give (1/2 + 1/8)/2 / (1/2) = 0.625 instead)
# ex 1: p_correct = 1/4; perturbed p = 1/2 -> tr = 2
TR_NLL = np.array([LN2, LN4])
TR_NLL_PERT = np.array([[LN2, LN8], [LN2, LN2]])


def test_truth_ratio_per_example_is_raw_geometric_ratio():
    res = tofu.truth_ratio(
        avg_nll_correct=TR_NLL, avg_nll_perturbed=TR_NLL_PERT, aggregation="closer_to_1"
    )
    assert res.per_example == pytest.approx([0.25 / (0.5 + 1e-10), 0.5 / (0.25 + 1e-10)])
    assert res.per_example[0] != pytest.approx(0.625)
    assert res.extras["aggregation"] == "closer_to_1"


def test_truth_ratio_closer_to_1():
    # min(tr, 1/(tr + 1e-10)): ex 0 -> min(0.5, 2) = 0.5; ex 1 -> min(2, 0.5) = 0.5; mean 0.5
    res = tofu.truth_ratio(
        avg_nll_correct=TR_NLL, avg_nll_perturbed=TR_NLL_PERT, aggregation="closer_to_1"
    )
    assert res.value == pytest.approx(0.5, rel=1e-9)


def test_truth_ratio_true_better():
    # max(0, 1 - tr): ex 0 -> 0.5; ex 1 -> max(0, -1) = 0; mean 0.25
    res = tofu.truth_ratio(
        avg_nll_correct=TR_NLL, avg_nll_perturbed=TR_NLL_PERT, aggregation="true_better"
    )
    assert res.value == pytest.approx(0.25, rel=1e-9)


def test_truth_ratio_rejects_bad_aggregation_and_shapes():
    with pytest.raises(ValueError, match="aggregation"):
        tofu.truth_ratio(avg_nll_correct=TR_NLL, avg_nll_perturbed=TR_NLL_PERT, aggregation="x")
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        tofu.truth_ratio(
            avg_nll_correct=TR_NLL, avg_nll_perturbed=TR_NLL, aggregation="true_better"
        )
    with pytest.raises(ValueError, match="same number of examples"):
        tofu.truth_ratio(
            avg_nll_correct=TR_NLL[:1], avg_nll_perturbed=TR_NLL_PERT, aggregation="true_better"
        )


def test_rouge_known_pairs():
    pairs = [
        # LCS "the cat on the mat" = 5 of 6 reference tokens; unigram overlap also 5/6
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6, 5 / 6),
        # all 4 unigrams present (rouge1 = 1) but reversed order: LCS = 1 -> rougeL = 1/4
        ("alice likes green apples", "apples green likes alice", 1.0, 1 / 4),
        # stemming: running -> run, dogs -> dog
        ("running dogs", "run dog", 1.0, 1.0),
        # empty generation
        ("some answer", "", 0.0, 0.0),
    ]
    res = tofu.rouge_l_recall(
        ground_truths=[p[0] for p in pairs], generations=[p[1] for p in pairs]
    )
    assert res.per_example == pytest.approx([p[3] for p in pairs])
    assert res.value == pytest.approx((5 / 6 + 1 / 4 + 1 + 0) / 4)
    assert res.extras["rouge1_recall_per_example"] == pytest.approx([p[2] for p in pairs])
    assert res.extras["rouge1_recall"] == pytest.approx((5 / 6 + 1 + 1 + 0) / 4)


def test_rouge_argument_order_is_ground_truth_first():
    # recall = LCS / len(ground truth) = 2/2 = 1; with the arguments swapped it would be 2/4
    res = tofu.rouge_l_recall(ground_truths=["alpha beta"], generations=["alpha beta gamma delta"])
    assert res.value == pytest.approx(1.0)


def test_rouge_validation():
    with pytest.raises(ValueError, match="same number"):
        tofu.rouge_l_recall(ground_truths=["a"], generations=[])
    with pytest.raises(ValueError, match="empty"):
        tofu.rouge_l_recall(ground_truths=[], generations=[])
    with pytest.raises(ValueError, match="expected str"):
        tofu.rouge_l_recall(ground_truths=["a"], generations=[None])


def test_forget_quality_ks_pvalue():
    # identical samples: KS statistic 0 -> p = 1
    same = tofu.forget_quality(tr_model=[0.1, 0.5, 0.9], tr_reference=[0.1, 0.5, 0.9])
    assert same.value == pytest.approx(1.0)
    # fully separated samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 2 / 20 = 0.1
    apart = tofu.forget_quality(tr_model=[1.0, 2.0, 3.0], tr_reference=[4.0, 5.0, 6.0])
    assert apart.value == pytest.approx(0.1)
    assert apart.extras["ks_statistic"] == pytest.approx(1.0)


def test_forget_quality_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="tr_reference is empty"):
        tofu.forget_quality(tr_model=[0.5], tr_reference=[])
    with pytest.raises(ValueError, match="tr_model is empty"):
        tofu.forget_quality(tr_model=[], tr_reference=[0.5])
    with pytest.raises(ValueError, match="NaN"):
        tofu.forget_quality(tr_model=[0.5, float("nan")], tr_reference=[0.5])


def test_model_utility_harmonic_mean():
    # hmean(1/2, 1/4, 1) = 3 / (2 + 4 + 1) = 3/7
    comps = {"retain_prob": 0.5, "retain_rouge": 0.25, "retain_tr": 1.0}
    res = tofu.model_utility(components=comps)
    assert res.value == pytest.approx(3 / 7)
    assert res.extras["components"] == comps


def test_model_utility_zero_component_gives_zero():
    assert tofu.model_utility(components={"a": 0.5, "b": 0.0}).value == 0.0
    assert tofu.model_utility(components={"a": 0.5, "b": -0.1}).value == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        tofu.model_utility(components={})
    with pytest.raises(ValueError, match="not a number"):
        tofu.model_utility(components={"a": None})


def test_nan_and_empty_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        tofu.probability(avg_nll=[0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        tofu.probability(avg_nll=[])
    with pytest.raises(ValueError, match="shape"):
        tofu.probability(avg_nll=[[0.1]])


@pytest.mark.parametrize(
    "name, higher",
    [
        ("probability", None),
        ("probability_normalised", None),
        ("truth_ratio", True),
        ("rouge_l_recall", None),
        ("forget_quality", True),
        ("model_utility", True),
    ],
)
def test_registered(name, higher):
    assert name in METRICS
    meta = METRICS.meta[name]
    assert meta["higher_is_better"] is higher
    assert meta["version"] == 1
    assert meta["description"]
    assert METRICS[name].__doc__
