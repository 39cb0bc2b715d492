"""Paraphrase attack: ask each forget question in other words (TOFU's ``paraphrased_question``).

Unlearning is usually trained on the forget questions exactly as written. If it only suppressed
those prompts, the same fact asked in other words still comes out. The TOFU benchmark (Maini et al.
2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121) ships a
``paraphrased_question`` column for its forget splits; this attack replaces each forget_eval
question with it and leaves the answer unchanged, so the audit scores the same answer (probability,
ROUGE-L, truth ratio) under the reworded prompt. Prompt rewording as an input attack follows the
adversarial evaluation of Łucki et al. 2024 ("An Adversarial Perspective on Machine Unlearning for
AI Safety", arXiv:2409.18025), whose input attacks perturb the prompt and keep the model fixed
(they use character perturbations and jailbreaks; paraphrasing is this toolkit's choice of input
rewrite, not one of their attacks).

Reference implementation: none known. TOFU's own evaluation scores paraphrased *answers* under the
original question; the open-unlearning notes (shared/research/open_unlearning.md) list
prompt-paraphrase as a robustness stage no reference toolkit has. The data come from the TOFU files
(``locuslab/TOFU`` ``forget*_perturbed``) as ``data.records`` loads them.

Deviations / choices (all options):
- Records without a ``paraphrased_question``: ``missing="error"`` (default) stops with a DataError
  naming the record; ``missing="template"`` rewrites the question with the fixed ``fallback``
  pattern (default ``"Tell me this: {question}"``). That fallback is a weak paraphrase (the original
  wording stays inside it) and is reported in ``info["fallback_records"]``. UNVERIFIED: no paper
  defines such a fallback.
- No training and no generation: ``budget`` has no effect.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data.records import Example
from ..errors import ConfigError, DataError
from ..methods.base import check_choice
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

MISSING = ("error", "template")


def _describe(i: int, ex: Example) -> str:
    """'forget_eval record 3 ('Where was ...?')' for error messages."""
    return f"forget_eval record {i} ({(ex.question or ex.answer)[:60]!r})"


def paraphrase_record(ex: Example, i: int, *, missing: str, fallback: str) -> tuple[Example, bool]:
    """``ex`` with its question replaced by its paraphrase (or the fallback); True when the fallback
    was used. The answer, the answer variants and the extras are kept."""
    if ex.question is None:
        raise DataError(f"{_describe(i, ex)} is a plain-text record (no question); the paraphrase attack needs "
                        "question/answer records")
    if ex.paraphrased_question:
        question, used_fallback = ex.paraphrased_question, False
    elif missing == "template":
        question, used_fallback = fallback.format(question=ex.question), True
    else:
        raise DataError(f"{_describe(i, ex)} has no 'paraphrased_question' column value; add one to the forget "
                        "file (TOFU's forget*_perturbed files have it) or run the attack with missing='template' "
                        "to use a fixed rewording instead")
    extras = {**ex.extras, "original_question": ex.question}
    return dataclasses.replace(ex, question=question, extras=extras), used_fallback


@ATTACKS.register(
    "paraphrase",
    paper="Maini et al. 2024, TOFU: A Task of Fictitious Unlearning for LLMs, arXiv:2401.06121 (paraphrased_question); "
    "Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025 "
    "(input attacks on a fixed model)",
    reference="none (TOFU data locuslab/TOFU forget*_perturbed: paraphrased_question column)",
    cost="no training; budget has no effect: one rewritten prompt per forget_eval record, then the audit's "
    "usual scoring",
)
@dataclass(kw_only=True)
class Paraphrase(Attack):
    """Ask every forget_eval question with its paraphrase; the model and the answers are unchanged."""

    kind = "input"  # rewrites the forget records; the model is unchanged

    missing: str = "error"  # records without paraphrased_question: "error" or "template" (the fallback below)
    fallback: str = "Tell me this: {question}"  # UNVERIFIED toolkit choice; a weak rewording, keeps the original

    def __post_init__(self) -> None:
        check_choice("missing", self.missing, MISSING)
        try:
            ok = "{question}" in self.fallback and bool(self.fallback.format(question="q"))
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"fallback={self.fallback!r} must contain '{{question}}' (where the original "
                              "question goes) and no other {...} fields, e.g. 'Tell me this: {question}'")

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """The same ``model`` and the forget_eval records with paraphrased questions."""
        pairs = [paraphrase_record(ex, i, missing=self.missing, fallback=self.fallback)
                 for i, ex in enumerate(data.forget_eval)]
        fallback = [i for i, (_ex, used) in enumerate(pairs) if used]
        return Attacked(model, examples=[ex for ex, _used in pairs],
                        info={"records": len(pairs), "paraphrased": len(pairs) - len(fallback),
                              "fallback_records": fallback})
