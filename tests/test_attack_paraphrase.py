"""Paraphrase attack (TOFU's paraphrased_question): rewriting by hand, behaviour on the tiny model, errors."""
from __future__ import annotations


import pytest

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.paraphrase import Paraphrase
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import PromptTemplate
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.recovery import recovery_ratio

RECORDS = [Example("Where was Ann born?", "Ann was born in Oslo.", paraphrased_question="What is Ann's birthplace?",
                   extras={"id": 7}),
           Example("What does Bo do?", "Bo is a baker.", paraphrased_question="What is the job of Bo?")]


def test_paraphrase_replaces_questions_and_keeps_answers():
    model = object()
    out = Paraphrase().run(model, None, AttackData(forget_train=[], forget_eval=RECORDS))
    assert out.model is model  # input attack: the very same model, untouched
    assert [e.question for e in out.examples] == ["What is Ann's birthplace?", "What is the job of Bo?"]
    assert [e.answer for e in out.examples] == [e.answer for e in RECORDS]  # the scored answers do not change
    assert out.examples[0].extras == {"id": 7, "original_question": "Where was Ann born?"}
    assert RECORDS[0].question == "Where was Ann born?" and RECORDS[0].extras == {"id": 7}  # inputs not mutated
    assert out.info == {"records": 2, "paraphrased": 2, "fallback_records": []}


def test_missing_paraphrase_uses_the_template_fallback_when_asked():
    records = [RECORDS[0], Example("What does Bo do?", "Bo is a baker.")]  # the second has no paraphrase
    data = AttackData(forget_train=[], forget_eval=records)
    out = Paraphrase(missing="template").run(None, None, data)
    assert [e.question for e in out.examples] == ["What is Ann's birthplace?", "Tell me this: What does Bo do?"]
    assert out.info["fallback_records"] == [1] and out.info["paraphrased"] == 1
    custom = Paraphrase(missing="template", fallback="Q: {question} Please answer.").run(None, None, data)
    assert custom.examples[1].question == "Q: What does Bo do? Please answer."


def test_paraphrase_errors():
    records = [RECORDS[0], Example("What does Bo do?", "Bo is a baker.")]
    with pytest.raises(DataError, match=r"record 1 .*What does Bo do.*paraphrased_question.*missing='template'"):
        Paraphrase().run(None, None, AttackData(forget_train=[], forget_eval=records))
    with pytest.raises(DataError, match="plain-text"):
        Paraphrase().run(None, None, AttackData(forget_train=[], forget_eval=[Example(None, "some text")]))
    with pytest.raises(ConfigError, match="missing"):
        Paraphrase(missing="skip")
    for bad in ("Tell me this", "{question} in {language}", "{question"):
        with pytest.raises(ConfigError, match="fallback"):
            Paraphrase(fallback=bad)


# --------------------------------------------------------------------------------------- behaviour
# Measured on the tiny model (printed with -s): the target answers the paraphrased questions almost
# as well as the originals (0.227 vs 0.266, ~90x the never-trained model's 0.0025): the knowledge
# transfers across wording. Gradient ascent on the original wording removes it under the
# paraphrases too (unlearned 0.0134 -> 0.0145 when paraphrased, recovery ratio ~0.004): on this tiny
# model paraphrasing does NOT bring the knowledge back. The test asserts exactly that.


def test_paraphrase_on_the_tiny_model(unlearned, learned_model, tiny_model, tiny_tokenizer, tiny_forget_tofu):
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=128)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), 128)  # noqa: E731
    para = Paraphrase().run(unlearned, tiny_tokenizer, data).examples
    target, before, attacked = prob(learned_model, tiny_forget_tofu), prob(unlearned, tiny_forget_tofu), prob(unlearned, para)
    target_para, never_para = prob(learned_model, para), prob(tiny_model, para)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=target).value
    print(f"target {target:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | "
          f"target on paraphrases {target_para:.4f}, never-trained model on paraphrases {never_para:.4f}")
    assert target > 10 * before  # unlearning did remove something
    # the knowledge transfers across wording: the paraphrases are real rewordings of learned facts
    assert target_para > 0.6 * target and target_para > 20 * never_para
    # ... and so does gradient ascent's forgetting: paraphrasing recovers (almost) nothing here
    assert abs(ratio) < 0.1 and attacked < 0.2 * target_para


# A setting where paraphrasing DOES recover: the target learned each fact under BOTH wordings (as a
# model that saw a fact phrased several ways; TOFU-style unlearning still trains on the forget
# questions as written), and the unlearning is mild (5 gradient-ascent steps at lr 1e-3, a
# utility-preserving budget). Measured (printed with -s): target 0.700 (0.703 on the paraphrases),
# unlearned 0.493 -> 0.555 when paraphrased, recovery ratio ~0.30; on the target itself paraphrasing
# changes nothing (ratio of the two ~1.005), so the lift is the forgetting not reaching the second
# wording. With the standard target (original wording only, above) the same mild ascent gives a
# negative ratio (~-0.3): the paraphrases there are a weaker access path to begin with.
@pytest.fixture(scope="module")
def two_wordings(train_then_hide, tiny_forget_tofu):
    """(target finetuned on the forget facts under the original AND the paraphrased questions, its mild GA copy)."""
    return train_then_hide([Example(e.paraphrased_question, e.answer) for e in tiny_forget_tofu], max_length=128,
                           ga_steps=5, ga_lr=1e-3)


def test_paraphrase_recovers_when_the_target_learned_both_wordings(two_wordings, tiny_tokenizer, tiny_forget_tofu):
    target, unlearned = two_wordings
    data = AttackData(forget_train=[], forget_eval=tiny_forget_tofu, max_length=128)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), 128)  # noqa: E731
    out = Paraphrase().run(unlearned, tiny_tokenizer, data)
    assert out.model is unlearned
    t, before, attacked = prob(target, tiny_forget_tofu), prob(unlearned, tiny_forget_tofu), prob(unlearned, out.examples)
    t_para = prob(target, out.examples)  # control: the same rewording applied to the target
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=t).value
    print(f"target {t:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} | target on the "
          f"paraphrases {t_para:.4f} (x{t_para / t:.3f}); unlearned lifted x{attacked / before:.3f}")
    assert t - before > 0.1  # unlearning removed something under the original wording
    assert 0.9 < t_para / t < 1.1  # the rewording alone does not raise the answer probability ...
    assert attacked > 1.05 * before and ratio > 0.15  # ... but it brings part of the forgotten answers back
