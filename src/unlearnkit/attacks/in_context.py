"""In-context relearning attack: put other forget facts in the prompt before each forget question.

If unlearning only suppressed the answers to the forget prompts as written, showing the model a
few *other* forgotten facts in its context (the same person, the same topic) may re-activate the
suppressed knowledge, with no weight update at all: the prompt-only analogue of the relearning
attack of Łucki et al. 2024 ("An Adversarial Perspective on Machine Unlearning for AI Safety",
arXiv:2409.18025), who show that finetuning on a few examples (even unrelated ones) brings
unlearned knowledge back.
In-context relearning as such is UNVERIFIED in our notes: Hu et al. 2024 ("Jogging the Memory of
Unlearned LLMs Through Targeted Relearning Attacks", arXiv:2406.13356) mention in-context
learning as a possible relearning channel (third-party summary only), and MUSE's knowmem prompts
carry few-shot QA examples (shared/research/open_unlearning.md); neither was checked for this exact
protocol.

The shots are records of ``AttackData.forget_train`` (disjoint from ``forget_eval``), never the
evaluated record itself: a shot with the same question or the same answer as the evaluated record
is skipped. Each shot is written in the prompt format the model was trained on, so with the plain
template the prompt reads ``Question: q1\\nAnswer:\\na1\\n\\nQuestion: q2 ...\\nQuestion: q\\nAnswer:\\n``
and the audit scores the record's answer after it.

Reference implementation: none known (no code for an in-context relearning attack in our notes).

Choices (all options):
- ``n_shots`` (default 8, UNVERIFIED) forget_train records, the first ones after a seeded shuffle,
  the same context for every record; ``budget`` multiplies ``n_shots`` (capped by forget_train).
- Shots are separated by ``separator`` (default a blank line; in training each answer ended with EOS).
- ``encode`` keeps the first ``max_length`` tokens, so a long context would cut the *answer*: when
  a prompt would not fit, shots are dropped from the end of the list until prompt + answer fit, and
  ``info["shots_per_record"]`` / ``info["dropped_shots"]`` say so.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from ..data.format import PromptTemplate, encode
from ..data.records import Example
from ..errors import ConfigError, DataError
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked


def shot_text(shots: list[Example], template: PromptTemplate, separator: str) -> str:
    """The shots as training-format QA blocks: ``user_start q user_end assistant_start a separator`` each."""
    return "".join(f"{template.user_start}{s.question}{template.user_end}{template.assistant_start}{s.answer}"
                   f"{separator}" for s in shots)


def with_context(question: str, shots: list[Example], template: PromptTemplate, separator: str, *,
                 chat: bool = False) -> str:
    """The question text that, rendered by ``template``, puts the shots before ``question``.

    Plain template: ``render_prompt`` wraps the question as ``user_start + question + user_end +
    assistant_start``, so the returned text leaves out the first ``user_start`` (the template adds
    it) and the rendered prompt is ``shot 1 ... shot n + user_start + question + user_end +
    assistant_start``. With a chat template (``chat``) the whole text is the user turn.
    """
    if not shots:
        return question
    text = shot_text(shots, template, separator) + template.user_start + question
    return text if chat else text[len(template.user_start):]


def prompt_fits(question: str, answer: str, tokenizer: Any, template: PromptTemplate, max_length: int) -> bool:
    """True when prompt + answer fit in ``max_length`` tokens (``encode`` would not truncate the answer)."""
    try:
        return not encode(question, answer, tokenizer, template=template, max_length=max_length).truncated
    except DataError:  # the prompt alone leaves no room for the answer
        return False


def _pool(data: AttackData) -> list[Example]:
    pool = [ex for ex in data.forget_train if ex.question is not None]
    if not pool:
        raise DataError("the in-context relearning attack needs forget question/answer records to show the model: "
                        "AttackData.forget_train has none. Split the forget set (unlearnkit.attacks.relearn."
                        "split_forget) into the records placed in context (forget_train) and the held-out records "
                        "recovery is measured on (forget_eval)")
    return pool


@ATTACKS.register(
    "in_context",
    paper="Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025 "
    "(relearning from related data; the in-context variant is UNVERIFIED, cf. Hu et al. 2024 arXiv:2406.13356)",
    reference="none (prompt-only analogue of ethz-spylab/unlearning-vs-safety src/finetuning/finetune.py)",
    cost="no training; budget x n_shots forget_train records (capped by forget_train) placed before every "
    "forget_eval question: scoring cost grows with the prompt length",
)
@dataclass(kw_only=True)
class InContext(Attack):
    """Prepend ``n_shots`` forget_train QA pairs to every forget_eval question; the model is unchanged."""

    kind = "input"  # rewrites the forget records; the model is unchanged

    n_shots: int = 8  # forget_train records in context (times `budget`); UNVERIFIED toolkit default
    separator: str = "\n\n"  # between shots (after each shot's answer)
    seed: int = 0  # seeds which forget_train records are shown, and their order

    def __post_init__(self) -> None:
        if not isinstance(self.n_shots, int) or self.n_shots < 1:
            raise ConfigError(f"n_shots={self.n_shots!r} must be an integer >= 1 (forget_train records shown "
                              "before each question)")

    def shots(self, data: AttackData) -> list[Example]:
        """The shots shown: ``budget x n_shots`` forget_train QA records after a seeded shuffle."""
        pool = _pool(data)
        random.Random(self.seed).shuffle(pool)
        return pool[: min(len(pool), self.scaled(self.n_shots))]

    def rewrite(self, ex: Example, shots: list[Example], tokenizer: Any,
                data: AttackData) -> tuple[Example, int, int]:
        """``ex`` with as many of ``shots`` before its question as fit in max_length; the number of
        shots used, and the number allowed (shots equal to the record itself left out)."""
        if ex.question is None:
            raise DataError(f"forget_eval record {ex.answer[:60]!r} is a plain-text record (no question); the "
                            "in-context attack needs question/answer records")
        own = [s for s in shots if s.question != ex.question and s.answer != ex.answer]  # never its own answer
        chat = data.template.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        k = len(own)
        while True:  # drop shots from the end until prompt + answer fit (k = 0 is the plain question)
            question = with_context(ex.question, own[:k], data.template, self.separator, chat=chat)
            if k == 0 or prompt_fits(question, ex.answer, tokenizer, data.template, data.max_length):
                break
            k -= 1
        extras = {**ex.extras, "original_question": ex.question}
        return dataclasses.replace(ex, question=question, extras=extras), k, len(own)

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """The same ``model`` and the forget_eval records with forget_train facts in their prompts."""
        shots = self.shots(data)
        rewritten = [self.rewrite(ex, shots, tokenizer, data) for ex in data.forget_eval]
        info = {"shots": len(shots), "shots_per_record": [k for _ex, k, _n in rewritten],
                "dropped_shots": sum(n - k for _ex, k, n in rewritten),  # to keep the answer within max_length
                "excluded_own_record": sum(len(shots) - n for _ex, _k, n in rewritten),  # forget_train overlapping
                "shot_questions": [s.question for s in shots]}
        return Attacked(model, examples=[ex for ex, _k, _n in rewritten], info=info)
