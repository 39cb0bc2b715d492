"""Rehearsal (replay) data: the base model's own answers to everyday prompts, mixed into finetuning so
that learning new facts does not change how the model answers everything else.

Why: finetuning SmolLM2-135M-Instruct on the synthetic fictitious people (whose answers all start
with the person's name) taught it to start *every* answer with the question's subject: "What is
the capital of France?" -> "France is the capital of France." Measured with ``demo-real`` (10 people,
full finetuning lr 5e-5, 1 epoch): generation accuracy on the built-in general-knowledge questions
1.00 -> 0.60 without rehearsal, 0.93 with the 100 built-in rehearsal prompts mixed in.

This is experience replay / self-distillation as used against catastrophic forgetting (e.g. Huang et
al. 2024, "Mitigating Catastrophic Forgetting in Large Language Models with Self-Synthesized
Rehearsal", ACL): the answers are what the base model itself generates greedily, so no gold answers
are needed and the model is trained toward its own behaviour, not toward better answers.

The built-in prompts (``data/rehearsal_prompts.txt``) are everyday instructions, deliberately
disjoint from the general-knowledge check (``knowledge.py``): a test asserts no prompt mentions any
of its answers, so the check still measures what was kept, not what was rehearsed.
"""
from __future__ import annotations

import re
from importlib import resources
from typing import Any, Sequence

from .data.format import PromptTemplate
from .data.records import Example
from .errors import DataError
from .metrics.probes import ProbeSettings, greedy_answers

REHEARSAL_PROMPTS = "rehearsal_prompts.txt"
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_LIST_MARKER = re.compile(r"\s*\d+")  # a line's "2." is a list number, not a sentence


def load_rehearsal_prompts() -> list[str]:
    """The built-in everyday prompts (one per line; ``#`` lines are comments)."""
    text = resources.files("unlearnkit.data").joinpath(REHEARSAL_PROMPTS).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def complete_sentences(text: str) -> str:
    """``text`` cut after its last sentence end (``.``, ``!`` or ``?`` followed by a space or the end,
    a list number such as ``2.`` at a line start excepted),
    so a generation stopped by ``max_new_tokens`` does not teach the model to stop mid-sentence;
    ``""`` when no sentence ends in it."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)
            if not _LIST_MARKER.fullmatch(text[text.rfind("\n", 0, m.start()) + 1: m.start()])]  # not "2."
    return text[: ends[-1]].strip() if ends else ""


def is_degenerate(text: str, *, max_repeats: int = 2) -> bool:
    """True for an empty answer or one that repeats a line or sentence more than ``max_repeats``
    times ("Boil an egg:\\n\\nBoil an egg:\\n\\n..."), which rehearsal must not reinforce."""
    parts = [p.strip().casefold() for p in re.split(r"\n+|(?<=[.!?])\s+", text) if p.strip()]
    return not parts or max(parts.count(p) for p in set(parts)) > max_repeats


def self_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str] | None = None, template: PromptTemplate | None = None, *,
    max_new_tokens: int = 48, batch_size: int = 16,
) -> list[Example]:
    """Rehearsal records: the model's greedy answer to each prompt (the built-in ones by default),
    cut to complete sentences; degenerate or sentence-less answers are dropped."""
    prompts = list(load_rehearsal_prompts() if prompts is None else prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise DataError("rehearsal needs a non-empty list of non-empty prompts (e.g. load_rehearsal_prompts())")
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens={max_new_tokens}: rehearsal answers need at least 1 new token")
    settings = ProbeSettings(max_new_tokens=max_new_tokens, gen_batch_size=batch_size, progress=False)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        answers = greedy_answers(model, tokenizer, prompts, template or PromptTemplate(), settings)
    finally:
        model.train(was_training)
    cut = [(p, complete_sentences(a)) for p, a in zip(prompts, answers)]
    return [Example(p, a) for p, a in cut if a and not is_degenerate(a)]


__all__ = ["complete_sentences", "is_degenerate", "load_rehearsal_prompts", "self_answers"]
