"""Multiple-choice format attack (TOFU-style options): prompt by hand, seeded shuffle, behaviour, errors."""
from __future__ import annotations

import dataclasses
import random

import pytest

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.multiple_choice import TRUE, MultipleChoice, option_order, render_options
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import PromptTemplate, encode
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.recovery import recovery_ratio

ANN = Example("Where was Ann born?", "Ann was born in Oslo.", paraphrased_answer="Ann's birthplace is Oslo.",
              perturbed_answers=("Ann's birthplace is Rome.", "Ann's birthplace is Lima.", "Ann's birthplace is Kyiv."))


def test_prompt_format_by_hand():
    assert render_options("Where was Ann born?", ["Ann's birthplace is Rome.", "Ann's birthplace is Oslo."],
                          "{letter}. {option}") == ("Where was Ann born?\nA. Ann's birthplace is Rome.\n"
                                                    "B. Ann's birthplace is Oslo.")
    assert render_options("Q?", ["x", "y", "z"], "({letter}) {option}") == "Q?\n(A) x\n(B) y\n(C) z"
    # option_order: the true answer (-1) and the perturbed answers 0..n-1, shuffled by the given rng
    expected = [-1, 0, 1, 2]
    random.Random(5).shuffle(expected)
    assert option_order(3, random.Random(5)) == expected and sorted(expected) == [TRUE, 0, 1, 2]


def test_options_are_the_true_and_false_answers_in_a_seeded_order(tiny_tokenizer):
    data = AttackData(forget_train=[], forget_eval=[ANN] * 6, max_length=512)
    out = MultipleChoice().run(None, tiny_tokenizer, data)
    for ex, order, letter in zip(out.examples, out.info["option_orders"], out.info["correct_letters"]):
        lines = ex.question.split("\n")
        assert lines[0] == ANN.question and ex.answer == ANN.answer  # the scored answer is unchanged
        assert [line[:3] for line in lines[1:]] == ["A. ", "B. ", "C. ", "D. "]
        assert sorted(line[3:] for line in lines[1:]) == sorted([ANN.paraphrased_answer, *ANN.perturbed_answers])
        assert lines[1 + order.index(TRUE)] == f"{letter}. {ANN.paraphrased_answer}"  # info points at the true one
        assert [lines[1 + order.index(k)][3:] for k in range(3)] == list(ANN.perturbed_answers)
    # the same record gets a different order at each position (per-record seeds) ...
    assert len({tuple(o) for o in out.info["option_orders"]}) > 1
    # ... the same orders again with the same seed, other orders with another seed
    assert MultipleChoice().run(None, tiny_tokenizer, data).examples == out.examples
    assert MultipleChoice(seed=1).run(None, tiny_tokenizer, data).info["option_orders"] != out.info["option_orders"]
    assert out.info["n_options"] == [4] * 6 and out.info["true_option_from"] == ["paraphrased_answer"] * 6
    # correct="answer" writes the true option in the scored wording; max_distractors limits the options
    other = MultipleChoice(correct="answer", max_distractors=1).run(None, tiny_tokenizer, data)
    assert ANN.answer in other.examples[0].question.split("\n")[1:][other.info["option_orders"][0].index(TRUE)]
    assert other.info["n_options"] == [2] * 6 and other.info["true_option_from"] == ["answer"] * 6


def test_options_are_dropped_to_keep_the_answer_within_max_length(tiny_tokenizer, tiny_forget_tofu):
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=128)
    out = MultipleChoice().run(None, tiny_tokenizer, data)
    assert sum(out.info["dropped_distractors"]) > 0  # this tokenizer spends ~30 tokens per option
    assert [n + d for n, d in zip(out.info["n_options"], out.info["dropped_distractors"])] == [4] * 8
    for ex in out.examples:
        assert not encode(ex.question, ex.answer, tiny_tokenizer, max_length=128).truncated
    with pytest.raises(DataError, match="max_length=40"):
        MultipleChoice().run(None, tiny_tokenizer, dataclasses.replace(data, max_length=40))


def test_multiple_choice_errors(tiny_tokenizer):
    bare = Example("What does Bo do?", "Bo is a baker.", paraphrased_answer="Bo bakes.")
    with pytest.raises(DataError, match=r"record 1 .*What does Bo do.*perturbed_answers"):
        MultipleChoice().run(None, tiny_tokenizer, AttackData(forget_train=[], forget_eval=[ANN, bare]))
    with pytest.raises(DataError, match="plain-text"):
        MultipleChoice().run(None, tiny_tokenizer, AttackData(forget_train=[], forget_eval=[Example(None, "text")]))
    with pytest.raises(ConfigError, match="correct"):
        MultipleChoice(correct="best")
    with pytest.raises(ConfigError, match="max_distractors"):
        MultipleChoice(max_distractors=-1)
    for bad in ("{option}", "{letter}) {option} {extra}", "{letter}. {option"):
        with pytest.raises(ConfigError, match="option_format"):
            MultipleChoice(option_format=bad)


# --------------------------------------------------------------------------------------- behaviour
# Measured on the tiny model (printed with -s): the options LOWER the target's answer probability
# (0.266 -> 0.186: a longer, unfamiliar prompt) but RAISE the gradient-ascent model's (0.0134 ->
# 0.0197, recovery ratio ~0.025; ~0.12 after a milder 5-step ascent). The control shows why: with the
# true option replaced by a false one the lift is almost the same (0.0183), so on this model it is a
# format effect (GA suppressed the answer after the plain prompt only), not the true option being
# recognised or copied.


def test_multiple_choice_on_the_tiny_model(unlearned, learned_model, tiny_tokenizer, tiny_forget_tofu):
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=128)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), 128)  # noqa: E731
    mc = MultipleChoice().run(unlearned, tiny_tokenizer, data).examples
    target, before, attacked = prob(learned_model, tiny_forget_tofu), prob(unlearned, tiny_forget_tofu), prob(unlearned, mc)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=target).value
    # control: the same format with no true option (the "true" slot holds a false answer)
    fake = [dataclasses.replace(e, paraphrased_answer=e.perturbed_answers[0], perturbed_answers=e.perturbed_answers[1:])
            for e in tiny_forget_tofu]
    no_true = prob(unlearned, MultipleChoice().run(unlearned, tiny_tokenizer, dataclasses.replace(data, forget_eval=fake)).examples)
    print(f"target {target:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | target under "
          f"the MC format {prob(learned_model, mc):.4f}; unlearned, options without the true answer {no_true:.4f}")
    assert target > 10 * before
    assert attacked > 1.2 * before and 0 < ratio < 0.2  # the format lifts the unlearned model a little ...
    assert no_true - before > 0.5 * (attacked - before)  # ... and most of the lift is the format itself


# A setting where the multiple-choice format DOES recover: the target learned the facts both as free
# questions and as multiple-choice questions (two other option orders, as a model that also saw
# exam-style questions), and the unlearning is mild (10 gradient-ascent steps at lr 5e-4 on the free
# questions only, as TOFU-style methods train). Measured (printed with -s): target 0.518 (0.510 under
# the MC format), unlearned 0.209 -> 0.351 as MC, recovery ratio ~0.46. Control as above (the true
# option replaced by a false one): 0.312, so most of the lift is format transfer (the forgetting did
# not reach the MC format) and a smaller part the true option itself.
MC_ML = 256


@pytest.fixture(scope="module")
def mc_models(train_then_hide, tiny_tokenizer, tiny_forget_tofu):
    """(target finetuned on the forget QAs and on them as MC questions, its mild GA copy)."""
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=MC_ML)
    as_mc = [ex for s in (1, 2) for ex in MultipleChoice(seed=s).run(None, tiny_tokenizer, data).examples]
    return train_then_hide(as_mc, max_length=MC_ML, ga_steps=10, ga_lr=5e-4)


def test_multiple_choice_recovers_when_the_target_learned_the_format(mc_models, tiny_tokenizer, tiny_forget_tofu):
    target, unlearned = mc_models
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=MC_ML)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), MC_ML)  # noqa: E731
    out = MultipleChoice().run(unlearned, tiny_tokenizer, data)  # seed 0: option orders the target never saw
    assert out.model is unlearned and out.info["n_options"] == [4] * 8
    t, before, attacked = prob(target, tiny_forget_tofu), prob(unlearned, tiny_forget_tofu), prob(unlearned, out.examples)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=t).value
    fake = [dataclasses.replace(e, paraphrased_answer=e.perturbed_answers[0], perturbed_answers=e.perturbed_answers[1:])
            for e in tiny_forget_tofu]
    no_true = prob(unlearned, MultipleChoice().run(unlearned, tiny_tokenizer, dataclasses.replace(data, forget_eval=fake)).examples)
    print(f"target {t:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | target under the MC "
          f"format {prob(target, out.examples):.4f}; unlearned, options without the true answer {no_true:.4f}")
    assert t - before > 0.1  # unlearning removed something
    assert attacked > 1.3 * before and ratio > 0.25  # the MC format brings a good part of it back ...
    assert before < no_true < attacked  # ... mostly by the format, and the true option adds to it
