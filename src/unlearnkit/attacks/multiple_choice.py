"""Multiple-choice format attack: ask each forget question with lettered options (TOFU-style).

Format transfer: unlearning trained on free-form answers may not reach the same fact asked as a
multiple-choice question. Łucki et al. 2024 ("An Adversarial Perspective on Machine Unlearning for
AI Safety", arXiv:2409.18025) measure forgotten knowledge as 4-way multiple choice (WMDP: argmax of
the A/B/C/D letter logits); Guo et al. 2024 (arXiv:2410.12949) add a multiple-choice *format* as a
robustness evaluation of unlearned models ("Question: ...\\nA: Football\\nB: ...\\n\\nAnswer:").
Here the options come from the TOFU record itself (Maini et al. 2024, arXiv:2401.06121): the true
answer plus the record's ``perturbed_answers`` (TOFU's false answers, written in the *paraphrased*
answer's wording), in a seeded shuffled order under letters A, B, C, ...

The rewritten question is ``question + "\\nA. ...\\nB. ...\\n..."``; the answer the audit scores
stays the record's ``answer``, so the attack measures whether seeing the options (one of them
true) raises the model's probability of its original answer. Nothing else is computed here (no
letter accuracy).

Reference implementations: ``ethz-spylab/unlearning-vs-safety`` ``src/benchmarking/benchmark.py``
(letter-logit MC accuracy on WMDP); ``magikarp01/tasks`` ``SportsTask_MC`` (Guo et al.'s MC prompt).

Deviations / choices (all options):
- The true option is written as the record's ``paraphrased_answer`` (``correct="paraphrased"``,
  default; falls back to ``answer`` when a record has none): TOFU's perturbed answers use the
  paraphrased wording, so the options then differ only in the fact, not in style, and the scored
  answer does not appear verbatim in the prompt (with ``correct="answer"`` the model could copy
  it from the context). The choice is a toolkit decision (UNVERIFIED in the papers).
- Options are all of the record's perturbed answers (TOFU: 5 -> 6-way); ``max_distractors=3``
  gives the papers' 4-way format.
- Option lines are ``"{letter}. {option}"`` (``option_format``; Guo et al. write ``"A: ..."``).
- ``encode`` keeps the first ``max_length`` tokens, so a long option list would cut the scored
  answer: false options are dropped (from the end of ``perturbed_answers``) until prompt + answer
  fit, reported in ``info["dropped_distractors"]``; a record that does not fit with one false
  option is a DataError (raise ``max_length``).
- The true and false answers are in the prompt, so the audit's truth ratio and paraphrased-answer
  probability on these records partly measure copying from context; read the answer probability.
- No training or generation: ``budget`` has no effect.
"""
from __future__ import annotations

import dataclasses
import random
import string
from dataclasses import dataclass
from typing import Any

from ..data.records import Example
from ..errors import ConfigError, DataError
from ..methods.base import check_choice
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked
from .in_context import prompt_fits

CORRECT = ("paraphrased", "answer")
LETTERS = string.ascii_uppercase
TRUE = -1  # the true option's index in an option order (perturbed answers are 0, 1, ...)


def option_order(n_perturbed: int, rng: random.Random) -> list[int]:
    """A shuffled order of the options: TRUE (-1) for the true answer, k for perturbed answer k."""
    order = [TRUE, *range(n_perturbed)]
    rng.shuffle(order)
    return order


def render_options(question: str, options: list[str], option_format: str) -> str:
    """``question`` followed by one line per option, lettered A, B, C, ..."""
    lines = [option_format.format(letter=LETTERS[i], option=opt) for i, opt in enumerate(options)]
    return "\n".join([question, *lines])


def true_option(ex: Example, correct: str) -> tuple[str, str]:
    """The true option's text and the column it comes from (paraphrased_answer falls back to answer)."""
    if correct == "paraphrased" and ex.paraphrased_answer:
        return ex.paraphrased_answer, "paraphrased_answer"
    return ex.answer, "answer"


@ATTACKS.register(
    "multiple_choice",
    paper="Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025 "
    "(MC evaluation); Guo et al. 2024, Mechanistic Unlearning, arXiv:2410.12949 (MC format); options from TOFU, "
    "Maini et al. 2024, arXiv:2401.06121",
    reference="ethz-spylab/unlearning-vs-safety src/benchmarking/benchmark.py; magikarp01/tasks SportsTask_MC",
    cost="no training; budget has no effect: one rewritten prompt per forget_eval record, then the audit's "
    "usual scoring",
)
@dataclass(kw_only=True)
class MultipleChoice(Attack):
    """Ask every forget_eval question with the true and the perturbed answers as lettered options."""

    kind = "input"  # rewrites the forget records; the model is unchanged

    correct: str = "paraphrased"  # wording of the true option: "paraphrased" (TOFU's distractor wording) or "answer"
    max_distractors: int = 0  # perturbed answers per question; 0 = all (TOFU: 5); 3 = the papers' 4-way MC
    option_format: str = "{letter}. {option}"  # Guo et al.'s SportsTask_MC writes "{letter}: {option}"
    seed: int = 0  # seeds the option shuffle (record i uses seed * 1_000_003 + i)

    def __post_init__(self) -> None:
        check_choice("correct", self.correct, CORRECT)
        if not isinstance(self.max_distractors, int) or self.max_distractors < 0:
            raise ConfigError(f"max_distractors={self.max_distractors!r} must be an integer >= 0 (0 = all)")
        try:
            self.option_format.format(letter="A", option="x")
            ok = "{letter}" in self.option_format and "{option}" in self.option_format
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"option_format={self.option_format!r} must contain '{{letter}}' and '{{option}}' and "
                              "no other {...} fields, e.g. '{letter}. {option}'")

    def rewrite(self, ex: Example, i: int, tokenizer: Any, data: AttackData) -> tuple[Example, list[int]]:
        """Record ``i`` as a multiple-choice question, and its option order (see :func:`option_order`).

        Distractors are dropped from the end of ``perturbed_answers`` until prompt + answer fit in
        ``data.max_length`` tokens (``encode`` would otherwise cut the scored answer)."""
        wrong = self._distractors(ex, i)
        for k in range(len(wrong), 0, -1):
            order = option_order(k, random.Random(self.seed * 1_000_003 + i))
            options = [true_option(ex, self.correct)[0] if j == TRUE else wrong[j] for j in order]
            question = render_options(ex.question or "", options, self.option_format)
            if prompt_fits(question, ex.answer, tokenizer, data.template, data.max_length):
                extras = {**ex.extras, "original_question": ex.question}
                return dataclasses.replace(ex, question=question, extras=extras), order
        raise DataError(f"forget_eval record {i} ({(ex.question or '')[:60]!r}): even with one false option the "
                        f"multiple-choice prompt and the answer exceed max_length={data.max_length} tokens; "
                        "raise data.max_length")

    def _distractors(self, ex: Example, i: int) -> list[str]:
        """The record's false options (at most ``max_distractors``), or a DataError naming the record."""
        if ex.question is None or not ex.perturbed_answers:
            what = "is a plain-text record (no question)" if ex.question is None else "has no perturbed_answers"
            raise DataError(f"forget_eval record {i} ({(ex.question or ex.answer)[:60]!r}) {what}; the "
                            "multiple-choice attack needs question/answer records with false options in a "
                            "'perturbed_answer' column (TOFU's forget*_perturbed files have them)")
        wrong = list(ex.perturbed_answers[: self.max_distractors or None])
        if len(wrong) + 1 > len(LETTERS):
            raise DataError(f"forget_eval record {i} has {len(wrong)} perturbed answers; at most {len(LETTERS) - 1} "
                            "fit the letters A-Z (set max_distractors)")
        return wrong

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """The same ``model`` and the forget_eval records as multiple-choice questions."""
        rewritten = [self.rewrite(ex, i, tokenizer, data) for i, ex in enumerate(data.forget_eval)]
        orders = [order for _ex, order in rewritten]
        available = [len(self._distractors(ex, i)) for i, ex in enumerate(data.forget_eval)]
        info = {"option_orders": orders, "correct_letters": [LETTERS[o.index(TRUE)] for o in orders],
                "n_options": [len(o) for o in orders],
                "dropped_distractors": [n + 1 - len(o) for n, o in zip(available, orders)],  # to fit max_length
                "true_option_from": [true_option(ex, self.correct)[1] for ex in data.forget_eval]}
        return Attacked(model, examples=[ex for ex, _order in rewritten], info=info)
