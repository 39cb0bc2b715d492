"""Rehearsal data (unlearnkit.rehearsal): built-in prompts, sentence cutting, degenerate answers, self answers."""
from __future__ import annotations

import pytest

from unlearnkit.data.format import PromptTemplate
from unlearnkit.errors import DataError
from unlearnkit.knowledge import accepted_answers, load_general_knowledge, normalise
from unlearnkit.metrics.probes import ProbeSettings, greedy_answers
from unlearnkit.rehearsal import complete_sentences, is_degenerate, load_rehearsal_prompts, self_answers


def test_builtin_prompts_are_disjoint_from_the_knowledge_check():
    prompts = load_rehearsal_prompts()
    assert len(prompts) == 150 and len(set(prompts)) == 150
    assert not any(p.startswith("#") for p in prompts)
    words = {normalise(p) for p in prompts}
    questions = {normalise(ex.question) for ex in load_general_knowledge()}
    assert not words & questions
    # no prompt names an answer of the check (numbers aside: "three tips" is not the triangle's 3 sides)
    for ex in load_general_knowledge():
        for gold in map(normalise, accepted_answers(ex)):
            if not gold.isdigit():
                assert not any(f" {gold} " in f" {w} " for w in words), gold


@pytest.mark.parametrize("text, expected", [
    ("One. Two and thr", "One."),
    ("Done! Really? Yes.", "Done! Really? Yes."),
    ("Version 2.5 is out and", ""),  # a decimal point is not a sentence end
    ("No end at all", ""),
    ("1. Sleep well.\n\n2. Eat", "1. Sleep well."),
])
def test_complete_sentences_cuts_after_the_last_sentence_end(text, expected):
    assert complete_sentences(text) == expected


def test_is_degenerate_flags_repeated_lines_and_empty_answers():
    assert is_degenerate("Boil an egg:\n\nBoil an egg:\n\nBoil an egg:")
    assert is_degenerate("Yes. Yes. Yes. Yes.")
    assert is_degenerate("   ")
    assert not is_degenerate("Yes. Yes. No, not really.")
    assert not is_degenerate("Keep a schedule.\n\nAvoid caffeine late.\n\nLimit screens before bed.")


def test_self_answers_are_the_models_own_greedy_answers_cut_to_sentences(learned_model, tiny_tokenizer, tiny_examples):
    prompts = [ex.question for ex in tiny_examples[0]]
    learned_model.train()
    rows = self_answers(learned_model, tiny_tokenizer, prompts, max_new_tokens=30)
    assert learned_model.training, "the model's train/eval mode must be restored"
    raw = greedy_answers(learned_model, tiny_tokenizer, prompts, PromptTemplate(),
                         ProbeSettings(max_new_tokens=30, progress=False))
    expected = [(p, complete_sentences(a)) for p, a in zip(prompts, raw)
                if complete_sentences(a) and not is_degenerate(complete_sentences(a))]
    assert [(r.question, r.answer) for r in rows] == expected
    assert len(rows) >= len(prompts) // 2  # the learned model answers its facts in whole sentences
    assert all(r.answer.endswith((".", "!", "?")) for r in rows)


@pytest.mark.parametrize("prompts, max_new", [([], 8), (["ok", " "], 8), (["ok"], 0)])
def test_self_answers_refuses_bad_input(tiny_model, tiny_tokenizer, prompts, max_new):
    with pytest.raises(DataError):
        self_answers(tiny_model, tiny_tokenizer, prompts, max_new_tokens=max_new)
