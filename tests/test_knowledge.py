"""Real-knowledge data and metrics (unlearnkit.knowledge): built-in data, MC / generation accuracy, perplexity."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.data.format import PromptTemplate, collate, encode
from unlearnkit.data.records import Example
from unlearnkit.errors import DataError
from unlearnkit.knowledge import (
    accepted_answers,
    answer_in_generation,
    knowledge_accuracy,
    load_general_knowledge,
    load_ordinary_text,
    mc_correct,
    normalise,
    perplexity,
    split_paragraphs,
)
from unlearnkit.logprobs import mean_nll



# ------------------------------------------------------------------------------------- built-in data
def test_general_knowledge_rows_are_well_formed():
    rows = load_general_knowledge()
    assert len(rows) >= 90
    questions = [normalise(ex.question) for ex in rows]
    assert len(set(questions)) == len(questions), "duplicate questions"
    for ex in rows:
        assert ex.paraphrased_answer and len(ex.perturbed_answers) == 3, ex.question
        assert len(set(ex.perturbed_answers)) == 3, ex.question
        assert all(p != ex.paraphrased_answer for p in ex.perturbed_answers), ex.question
        # the true sentence states the gold answer; no false sentence does
        assert answer_in_generation(ex.answer, ex.paraphrased_answer), ex.question
        assert not any(answer_in_generation(ex.answer, p) for p in ex.perturbed_answers), ex.question


def test_ordinary_text_is_a_few_plain_paragraphs():
    paragraphs = load_ordinary_text()
    assert 5 <= len(paragraphs) <= 8
    assert all(80 <= len(p.split()) <= 150 for p in paragraphs)
    assert all("\n" not in p and "  " not in p for p in paragraphs)


def test_split_paragraphs_joins_wrapped_lines():
    assert split_paragraphs("One two\nthree.\n\n  \nFour  five.\n") == ["One two three.", "Four five."]


# ------------------------------------------------------------------------------------- pure scoring
def test_normalise_and_whole_word_match():
    assert normalise("Seven days, São Paulo!") == "7 days sao paulo"
    assert normalise("Water boils at 100°C.") == "water boils at 100 c"  # a symbol separates words
    assert answer_in_generation("100", "It boils at 100°C (212°F).") and answer_in_generation("CO2", "It is CO₂.")
    assert answer_in_generation("Au", "The symbol for gold is Au.")
    assert not answer_in_generation("Au", "Australia is large.")  # whole words only
    assert answer_in_generation("seven", "A week has 7 days.")
    assert answer_in_generation("New Delhi", "It is new  DELHI, India")
    assert not answer_in_generation("New Delhi", "Delhi")
    assert not answer_in_generation("...", "anything ...")  # an answer with no words never matches


def test_aliases_accept_other_forms_of_the_answer_only():
    by_question = {ex.question: ex for ex in load_general_knowledge()}
    egypt = by_question["On which continent is Egypt?"]
    assert accepted_answers(egypt) == ["Africa", "African"]
    said = "Egypt is located on the African continent."
    assert not answer_in_generation(egypt.answer, said)
    assert any(answer_in_generation(a, said) for a in accepted_answers(egypt))
    for ex in by_question.values():  # no alias makes a false (perturbed) answer count
        for wrong in ex.perturbed_answers:
            assert not any(answer_in_generation(a, wrong) for a in accepted_answers(ex)), (ex.question, wrong)
    with pytest.raises(DataError, match="'aliases' must be a list"):
        accepted_answers(Example("Q?", "A", extras={"aliases": "African"}))


def test_mc_correct_is_strict():
    para = [1.0, 2.0, 1.0]
    pert = [[1.5, 2.0, 3.0], [1.0, 3.0, 4.0], [1.0, 2.0, 3.0]]  # right, a lower wrong answer, a tie
    assert mc_correct(para, pert).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="avg_nll_pert"):
        mc_correct([1.0], [1.0])


# ------------------------------------------------------------------------------------- on the tiny model
def _nll(model, tokenizer, question, answer):
    batch = collate([encode(question, answer, tokenizer, template=PromptTemplate())], tokenizer.pad_token_id)
    with torch.no_grad():
        return float(mean_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])[0])


def test_knowledge_accuracy_on_tiny_model(tiny_model, tiny_tokenizer):
    examples = load_general_knowledge()[:4]
    res = knowledge_accuracy(tiny_model, tiny_tokenizer, examples, PromptTemplate(), max_new_tokens=8)
    assert res["n"] == 4 and 0.0 <= res["mc_accuracy"] <= 1.0 and 0.0 <= res["generation_accuracy"] <= 1.0
    assert len(res["mc_correct"]) == len(res["generation_correct"]) == len(res["generations"]) == 4
    assert res["mc_accuracy"] == pytest.approx(sum(res["mc_correct"]) / 4)
    # MC by hand: mean NLL of each choice, one sequence at a time
    for ex, got in zip(examples, res["mc_correct"]):
        para = _nll(tiny_model, tiny_tokenizer, ex.question, ex.paraphrased_answer)
        pert = [_nll(tiny_model, tiny_tokenizer, ex.question, p) for p in ex.perturbed_answers]
        if abs(para - min(pert)) > 1e-5:  # away from float-rounding ties
            assert got == (para < min(pert)), ex.question


def test_generation_accuracy_on_a_model_that_learned_the_answers(learned_model, tiny_tokenizer, tiny_forget_tofu):
    examples = tiny_forget_tofu[:3]
    res = knowledge_accuracy(learned_model, tiny_tokenizer, examples, max_new_tokens=32)
    assert res["mc_accuracy"] == 1.0  # finetuned on these very answers: the true one beats the perturbed ones
    gens = res["generations"]
    assert all(normalise(g) for g in gens)
    # gold = a word of the model's own answer (matches) / a word it never says (does not)
    said = [Example(e.question, g.split()[0], e.paraphrased_answer, e.perturbed_answers) for e, g in zip(examples, gens)]
    unsaid = [Example(e.question, "Qqqqq", e.paraphrased_answer, e.perturbed_answers) for e in examples]
    res = knowledge_accuracy(learned_model, tiny_tokenizer, said + unsaid, max_new_tokens=32)
    assert res["generation_correct"] == [True] * 3 + [False] * 3
    assert res["generation_accuracy"] == 0.5


def test_mc_tie_is_not_correct(tiny_model, tiny_tokenizer):
    tie = [Example("What is the capital of France?", "Paris", "Same answer.", ("Same answer.",) * 3)]
    assert knowledge_accuracy(tiny_model, tiny_tokenizer, tie, max_new_tokens=2)["mc_correct"] == [False]


def test_knowledge_accuracy_needs_choices(tiny_model, tiny_tokenizer):
    with pytest.raises(DataError, match="perturbed_answer"):
        knowledge_accuracy(tiny_model, tiny_tokenizer, [Example("Q?", "A")])
    with pytest.raises(DataError, match="no general-knowledge examples"):
        knowledge_accuracy(tiny_model, tiny_tokenizer, [])


def test_bad_aliases_fail_before_any_model_call(tiny_tokenizer):
    def never_called(*args, **kwargs):
        raise AssertionError("the model ran before the aliases were checked")

    bad = Example("Q?", "A", "The answer is A.", ["The answer is B."], extras={"aliases": [""]})
    with pytest.raises(DataError, match="'aliases' must be a list"):
        knowledge_accuracy(never_called, tiny_tokenizer, [bad])


def test_perplexity_of_tiny_model_is_finite(tiny_model, tiny_tokenizer):
    with pytest.warns(UserWarning, match="2 of 2 texts"):  # paragraphs are > 64 tiny-tokenizer tokens
        ppl = perplexity(tiny_model, tiny_tokenizer, load_ordinary_text()[:2], max_length=64)
    assert 1.0 < ppl < 10 * len(tiny_tokenizer)  # random init: near the vocabulary size


# ------------------------------------------------------------------------------------- perplexity by hand
def test_perplexity_uniform_logits_is_vocab_size(table_lm, tiny_tokenizer):
    v = len(tiny_tokenizer)
    lm = table_lm(torch.zeros(64, v))
    assert perplexity(lm, tiny_tokenizer, ["The man", "A longer sentence here."]) == pytest.approx(v, rel=1e-6)


def test_perplexity_matches_hand_computed_nll(table_lm, tiny_tokenizer):
    v = len(tiny_tokenizer)
    table = torch.randn(64, v, generator=torch.Generator().manual_seed(0)) * 3
    texts = ["The man", "A longer sentence here, with more words."]
    total, n = 0.0, 0
    for text in texts:  # BOS + text; logits row j predicts token j + 1
        ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(text, add_special_tokens=False).input_ids
        for j in range(len(ids) - 1):
            total += float(torch.logsumexp(table[j], 0) - table[j, ids[j + 1]])
            n += 1
    lm = table_lm(table)
    assert perplexity(lm, tiny_tokenizer, texts, batch_size=2) == pytest.approx(math.exp(total / n), rel=1e-5)
    assert perplexity(lm, tiny_tokenizer, texts, batch_size=1) == pytest.approx(math.exp(total / n), rel=1e-5)
    # cut to 3 tokens each: 2 scored tokens per text (rows 0 and 1), with a warning
    ids = [[tiny_tokenizer.bos_token_id] + tiny_tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    cut = sum(float(torch.logsumexp(table[j], 0) - table[j, seq[j + 1]]) for seq in ids for j in range(2))
    with pytest.warns(UserWarning, match="max_length=3"):
        assert perplexity(lm, tiny_tokenizer, texts, max_length=3) == pytest.approx(math.exp(cut / 4), rel=1e-5)


def test_perplexity_rejects_empty_input(table_lm, tiny_tokenizer):
    lm = table_lm(torch.zeros(8, len(tiny_tokenizer)))
    with pytest.raises(DataError, match="non-empty"):
        perplexity(lm, tiny_tokenizer, [])
    with pytest.raises(DataError, match="non-empty"):
        perplexity(lm, tiny_tokenizer, ["fine", "  "])


# ------------------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_smollm2_knows_the_builtin_facts(smollm2_dir):
    from unlearnkit.models import load_model, load_tokenizer

    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    res = knowledge_accuracy(model, tokenizer, load_general_knowledge(), PromptTemplate())
    assert res["mc_accuracy"] >= 0.95, res["mc_accuracy"]
    assert res["generation_accuracy"] >= 0.95, res["generation_accuracy"]
    assert 5.0 < perplexity(model, tokenizer, load_ordinary_text()) < 40.0  # measured 20.1
