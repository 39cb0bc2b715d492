"""Real-knowledge checks: does an unlearned model still know ordinary facts and write ordinary text?

Two built-in data sets ship with the package (``unlearnkit/data``):

* ``general_knowledge.jsonl``: general-knowledge questions in TOFU's layout (``question``,
  ``answer``, ``paraphrased_answer`` = a short full sentence, ``perturbed_answer`` = three false
  sentences worded like it, only the fact changed). Only facts that SmolLM2-135M-Instruct answers
  correctly (by both measures below) were kept, so its accuracy on them is 1.0 by construction and a
  drop after unlearning is collateral damage.
* ``ordinary_text.txt``: a few paragraphs of plain English prose, separated by blank lines.

Metrics, all computed with the shared probe code (``metrics.probes``) and the same prompt format
(``data.format.PromptTemplate``: the tokenizer's chat template when it has one) as the evaluation:

* multiple-choice accuracy: the true ``paraphrased_answer`` has a lower mean NLL per answer token
  (answer tokens + EOS, TOFU's convention) than every perturbed answer, given the question;
* generation accuracy: the greedy answer contains the gold ``answer`` as whole words, after
  lower-casing, removing accents and punctuation (:func:`normalise`);
* perplexity: exp of the token-weighted mean NLL over paragraphs (BOS-prefixed, every token after
  BOS scored, as ``pcgu.score_sentences``).
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch

from .data.format import PromptTemplate
from .data.records import Example, load_examples
from .errors import DataError
from .logprobs import IGNORE
from .metrics.probes import ProbeSettings, probe_split
from .pcgu import encode_sentences, perplexity as _perplexity, sentence_logp

GENERAL_KNOWLEDGE = "general_knowledge.jsonl"
ORDINARY_TEXT = "ordinary_text.txt"
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}  # "seven" and "7" count as the same answer


# ------------------------------------------------------------------------------------- data
def load_general_knowledge() -> list[Example]:
    """The built-in general-knowledge questions (TOFU layout: paraphrased + 3 perturbed answers)."""
    ref = resources.files("unlearnkit.data").joinpath(GENERAL_KNOWLEDGE)
    with resources.as_file(ref) as path:
        return load_examples(path)


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, each with its line breaks and runs of spaces collapsed."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def load_ordinary_text() -> list[str]:
    """The built-in paragraphs of ordinary English prose (for a perplexity check)."""
    text = resources.files("unlearnkit.data").joinpath(ORDINARY_TEXT).read_text(encoding="utf-8")
    return split_paragraphs(text)


# ------------------------------------------------------------------------------------- pure scoring
def normalise(text: str) -> str:
    """Lower-case, accents removed, every run of non-alphanumerics (symbols such as ``°`` included) a
    single space, number words zero..twenty as digits:
    ``normalise("Seven days, São Paulo!") == "7 days sao paulo"``, ``normalise("100°C") == "100 c"``."""
    plain = "".join("" if unicodedata.combining(c) else c if c.isascii() else " "
                    for c in unicodedata.normalize("NFKD", text))  # "ã" -> "a", "₂" -> "2", "°" -> " "
    words = re.sub(r"[^0-9a-z]+", " ", plain.casefold()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def answer_in_generation(answer: str, generation: str) -> bool:
    """True when the normalised ``answer`` occurs as whole words in the normalised ``generation``
    ("Au" matches "The symbol is Au." but not "Australia")."""
    gold = normalise(answer)
    return bool(gold) and f" {gold} " in f" {normalise(generation)} "


def accepted_answers(example: Example) -> list[str]:
    """The gold answer and the record's optional ``aliases`` (other forms of the same answer, e.g. the
    adjective "African" for "On which continent is Egypt?" -> "Africa", so "Egypt is on the African
    continent." counts)."""
    aliases = (example.extras or {}).get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise DataError(f"general-knowledge example {(example.question or '')[:60]!r}: 'aliases' must be a list of "
                        "non-empty strings")
    return [example.answer, *aliases]


def mc_correct(avg_nll_para: Sequence[float] | np.ndarray, avg_nll_pert: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(N,) bool: the true answer's mean token NLL (N,) is strictly below every perturbed one (N, K),
    i.e. it has the highest mean per-token log-likelihood of the K + 1 choices (ties count as wrong)."""
    para = np.asarray(avg_nll_para, dtype=np.float64)
    pert = np.asarray(avg_nll_pert, dtype=np.float64)
    if para.ndim != 1 or pert.ndim != 2 or pert.shape[0] != para.shape[0] or pert.shape[1] == 0:
        raise ValueError(f"expected avg_nll_para (N,) and avg_nll_pert (N, K>0), got {para.shape} and {pert.shape}")
    return para < pert.min(axis=1)


# ------------------------------------------------------------------------------------- model glue
def _check_choices(examples: Sequence[Example]) -> None:
    """Every example needs a paraphrased (true, full-sentence) answer and at least one perturbed one."""
    if not examples:
        raise DataError("no general-knowledge examples given; pass at least one (or use load_general_knowledge())")
    for i, ex in enumerate(examples, 1):
        if ex.paraphrased_answer is None or not ex.perturbed_answers:
            raise DataError(f"general-knowledge example {i} ({(ex.question or '')[:60]!r}) needs a 'paraphrased_answer' "
                            "and a list 'perturbed_answer' of false answers worded like it; add them to the record")


def knowledge_accuracy(
    model: Any, tokenizer: Any, examples: Sequence[Example], template: PromptTemplate | None = None, *,
    max_new_tokens: int = 32, batch_size: int = 32,
) -> dict[str, Any]:
    """Multiple-choice and generation accuracy on QA ``examples`` (TOFU layout), one probe pass.

    Returns ``mc_accuracy`` and ``generation_accuracy`` (fractions in [0, 1]), ``n``, per-example
    ``mc_correct`` / ``generation_correct`` / ``generations``, and ``seconds`` (``mc``, ``generation``).
    """
    _check_choices(examples)
    accepted = [accepted_answers(ex) for ex in examples]  # bad aliases fail here, before the model pass
    settings = ProbeSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, token_stats=False, progress=False)
    # the probe's main pass scores the true sentence (so the short gold answer costs no extra pass);
    # its alternatives pass scores the perturbed sentences, under the same question
    choices = [Example(ex.question, ex.paraphrased_answer, None, ex.perturbed_answers) for ex in examples]  # type: ignore[arg-type]
    was_training = getattr(model, "training", False)
    try:
        probe = probe_split(model, tokenizer, choices, template=template or PromptTemplate(), settings=settings)
    finally:
        model.train(was_training)
    mc = mc_correct(probe.avg_nll, probe.avg_nll_pert)  # (N,), (N, K) with K = the fewest perturbed answers
    gen = np.array([any(answer_in_generation(a, g) for a in answers) for answers, g in zip(accepted, probe.generations)])
    return {
        "mc_accuracy": float(mc.mean()),
        "generation_accuracy": float(gen.mean()),
        "n": len(examples),
        "mc_correct": mc.tolist(),
        "generation_correct": gen.tolist(),
        "generations": list(probe.generations),
        "seconds": {"mc": probe.seconds["answers"] + probe.seconds["paraphrased_perturbed"],
                    "generation": probe.seconds["greedy_generation"]},
    }


@torch.inference_mode()
def _text_logps(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int) -> tuple:
    """(N,) summed log-probs, (N,) scored-token counts, and how many texts were cut to ``max_length``."""
    sums, counts, cut = [], [], 0
    for start in range(0, len(texts), batch_size):
        batch = encode_sentences(tokenizer, list(texts[start:start + batch_size]))  # (B, T), right-padded
        cut += int((batch["attention_mask"].sum(-1) > max_length).sum())
        batch = {k: v[:, :max_length] for k, v in batch.items()}  # right padding: keeps each row's first tokens
        sums.append(sentence_logp(model, batch).double())  # (B,) summed log-probs
        counts.append((batch["labels"][:, 1:] != IGNORE).sum(-1))  # (B,) scored tokens
    return torch.cat(sums), torch.cat(counts), cut


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 512, *, batch_size: int = 8) -> float:
    """exp(token-weighted mean NLL) of ``texts``: each BOS-prefixed, cut to ``max_length`` tokens (with a
    warning), every token after BOS scored; sums over all texts, so a long paragraph weighs more."""
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise DataError("perplexity needs a non-empty list of non-empty texts (e.g. load_ordinary_text())")
    if max_length < 2:
        raise DataError(f"max_length={max_length} leaves no token to score; use at least 2")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        sums, counts, cut = _text_logps(model, tokenizer, texts, max_length, batch_size)
    finally:
        model.train(was_training)
    if cut:
        warnings.warn(f"{cut} of {len(texts)} texts were longer than max_length={max_length} tokens and were cut; "
                      "raise max_length to score them whole", stacklevel=2)
    return _perplexity(sums, counts)


__all__ = ["accepted_answers", "answer_in_generation", "knowledge_accuracy", "load_general_knowledge", "load_ordinary_text",
           "mc_correct", "normalise", "perplexity", "split_paragraphs"]
