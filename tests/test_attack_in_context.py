"""In-context relearning attack: prompt by hand, shot selection and budget, max_length, behaviour, errors."""
from __future__ import annotations

import dataclasses

import pytest

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.in_context import InContext, with_context
from unlearnkit.attacks.relearn import split_forget
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import PromptTemplate, encode, render_prompt
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.recovery import recovery_ratio

A, B, C = (Example("Where was Ann born?", "In Oslo."), Example("What does Ann do?", "She bakes."),
           Example("Who is Ann's father?", "A pilot."))


def test_shots_are_written_in_the_training_format():
    t = PromptTemplate()
    q = with_context("Who is Ann's father?", [A, B], t, "\n\n")
    assert q == "Where was Ann born?\nAnswer:\nIn Oslo.\n\nQuestion: What does Ann do?\nAnswer:\nShe bakes.\n\n" \
                "Question: Who is Ann's father?"
    # rendered by the plain template, every block looks like a training prompt + answer
    assert render_prompt(q, None, t) == ("Question: Where was Ann born?\nAnswer:\nIn Oslo.\n\n"
                                         "Question: What does Ann do?\nAnswer:\nShe bakes.\n\n"
                                         "Question: Who is Ann's father?\nAnswer:\n")
    assert with_context("Q?", [A], t, " | ", chat=True) == "Question: Where was Ann born?\nAnswer:\nIn Oslo. | Question: Q?"
    assert with_context("Q?", [], t, "\n\n") == "Q?"


def test_shot_selection_budget_and_never_the_evaluated_record(tiny_tokenizer):
    data = AttackData(forget_train=[A, B, C], forget_eval=[C, Example("How old is Ann?", "Forty.")], max_length=512)
    out = InContext().run(None, tiny_tokenizer, data)
    assert out.info["shots"] == 3 and sorted(out.info["shot_questions"]) == sorted(e.question for e in (A, B, C))
    assert out.info["shots_per_record"] == [2, 3] and out.info["excluded_own_record"] == 1
    assert "A pilot." not in out.examples[0].question  # C's own answer never appears in its context
    assert out.examples[0].question.endswith("Question: Who is Ann's father?")
    assert [e.answer for e in out.examples] == ["A pilot.", "Forty."]  # the scored answers do not change
    assert out.examples[1].extras["original_question"] == "How old is Ann?"
    assert InContext(n_shots=4, budget=0.5).shots(data) == InContext(n_shots=2).shots(data)  # budget x n_shots
    assert len(InContext(n_shots=2).shots(data)) == 2 and len(InContext(n_shots=8).shots(data)) == 3  # capped
    assert InContext(seed=0).shots(data) == InContext(seed=0).shots(data)


def test_shots_are_dropped_to_keep_the_answer_within_max_length(tiny_tokenizer, tiny_forget_tofu):
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:], max_length=100)
    out = InContext().run(None, tiny_tokenizer, data)
    assert out.info["dropped_shots"] > 0 and all(k < 4 for k in out.info["shots_per_record"])
    for ex in out.examples:
        assert not encode(ex.question, ex.answer, tiny_tokenizer, max_length=100).truncated
    # a record that does not fit even alone is left as it was (0 shots): the attack adds nothing it cannot fit
    tight = InContext().run(None, tiny_tokenizer, dataclasses.replace(data, max_length=20))
    assert tight.info["shots_per_record"] == [0] * 4
    assert [e.question for e in tight.examples] == [e.question for e in tiny_forget_tofu[4:]]


def test_in_context_errors():
    with pytest.raises(DataError, match="forget_train.*split_forget"):
        InContext().run(None, None, AttackData(forget_train=[], forget_eval=[A]))
    with pytest.raises(DataError, match="forget_train"):
        InContext().run(None, None, AttackData(forget_train=[Example(None, "plain text")], forget_eval=[A]))
    with pytest.raises(DataError, match="plain-text"):
        InContext().run(None, None, AttackData(forget_train=[A], forget_eval=[Example(None, "plain text")]))
    for bad in (0, -2, 1.5):
        with pytest.raises(ConfigError, match="n_shots"):
            InContext(n_shots=bad)


# --------------------------------------------------------------------------------------- behaviour
# Measured on the tiny model (printed with -s): 4 other forget facts in context do NOT bring the
# held-out facts back on this 3-layer, 32-dim model (unlearned 0.0193 -> 0.0192, recovery ratio
# ~0.00; also ~0 with 1 shot and after a milder ascent). The context itself is understood: the target
# still gives the held-out answers most of their probability with the shots in front (0.266 ->
# 0.176), so the prompt format is sound; the model is too small for in-context (re)learning.


def test_in_context_on_the_tiny_model(unlearned, learned_model, tiny_model, tiny_tokenizer, tiny_forget_tofu):
    train, held = split_forget(tiny_forget_tofu, fraction=0.5, seed=0)
    data = AttackData(forget_train=train, forget_eval=held, max_length=128)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), 128)  # noqa: E731
    out = InContext().run(unlearned, tiny_tokenizer, data)
    target, before, attacked = prob(learned_model, held), prob(unlearned, held), prob(unlearned, out.examples)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=target).value
    target_ctx, never_ctx = prob(learned_model, out.examples), prob(tiny_model, out.examples)
    print(f"target {target:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | shots "
          f"{out.info['shots_per_record']}; target with the shots {target_ctx:.4f}, never-trained {never_ctx:.4f}")
    assert min(out.info["shots_per_record"]) >= 2  # the facts really are in context
    assert target > 10 * before
    assert target_ctx > 0.5 * target and target_ctx > 20 * never_ctx  # the shots do not break the format
    assert abs(ratio) < 0.1  # honest result: no in-context recovery on the tiny model


# A setting where the in-context attack DOES recover: the target learned the facts both as single
# questions and inside multi-fact contexts (3 other facts of the person before the question, in the
# attack's format, as in a biography-style corpus), and the unlearning is mild (10 gradient-ascent
# steps at lr 5e-4 on the single questions only). Measured (printed with -s): target 0.444 on the
# held-out records (0.429 with the shots), unlearned 0.338 -> 0.385 with 4 forget_train facts in
# context, recovery ratio ~0.44. Control: 4 *retain* facts (other people) in the same format LOWER it
# (0.224), so the lift comes from the forget facts in context, not from the longer prompt. With the
# standard target (single questions only, above) no setting tried recovers anything.
ML = 256


@pytest.fixture(scope="module")
def context_models(train_then_hide, tiny_tokenizer, tiny_forget_tofu):
    """(target finetuned on the forget QAs and on them in context of other forget facts, its mild GA copy)."""
    everything = AttackData(forget_train=tiny_forget_tofu, forget_eval=tiny_forget_tofu, max_length=ML)
    in_context = [ex for s in (1, 2, 3) for ex in InContext(seed=s, n_shots=3).run(None, tiny_tokenizer, everything).examples]
    return train_then_hide(in_context, max_length=ML, ga_steps=10, ga_lr=5e-4)


def test_in_context_recovers_when_the_target_learned_facts_in_context(context_models, tiny_tokenizer, tiny_examples,
                                                                       tiny_forget_tofu):
    target, unlearned = context_models
    train, held = split_forget(tiny_forget_tofu, fraction=0.5, seed=0)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), ML)  # noqa: E731
    out = InContext().run(unlearned, tiny_tokenizer, AttackData(forget_train=train, forget_eval=held, max_length=ML))
    assert out.model is unlearned and out.info["shots_per_record"] == [4] * 4
    t, before, attacked = prob(target, held), prob(unlearned, held), prob(unlearned, out.examples)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=t).value
    # control: 4 facts about OTHER people (retain records) in the same format
    other = InContext(n_shots=4).run(unlearned, tiny_tokenizer,
                                     AttackData(forget_train=tiny_examples[1], forget_eval=held, max_length=ML))
    with_other = prob(unlearned, other.examples)
    print(f"target {t:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | target with the "
          f"shots {prob(target, out.examples):.4f}; unlearned with 4 retain facts in context {with_other:.4f}")
    assert t - before > 0.05  # unlearning removed something
    assert attacked > 1.08 * before and ratio > 0.2  # the forget facts in context bring part of it back ...
    assert with_other < before  # ... and it is their content, not the format: other people's facts lower it
