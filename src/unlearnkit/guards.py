"""Divergence guards of the training loop: stop a run that is wrecking the model, before it is saved.

Non-finite losses always stop the run (:func:`nonfinite`). Three more guards are opt-in
(``TrainConfig.guard_*``) and trip when

- the loss blows up (checked every step): ``|loss| > guard_loss_blowup x |loss of step 1|``
  (gradient ascent's -NLL running off toward -inf is the typical case; Zhang et al. 2024 call it
  catastrophic collapse);
- the retain set is being forgotten (checked every ``eval_every`` steps, as is the next one): its
  mean answer probability (TOFU's ``exp(-mean NLL)``, on at most ``GUARD_RETAIN_N`` retain records)
  falls below ``guard_retain_prob_floor`` x its value before the first step;
- the model babbles: more than ``guard_gibberish_rate`` of its greedy answers to ``GUARD_GEN_N``
  retain questions are gibberish (:func:`is_gibberish`).

On a trip the loop rolls the model back to the last verified checkpoint, writes ``divergence.json``
and raises :class:`~unlearnkit.errors.TrainingDiverged` (CLI exit code 3).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from .data.format import collate
from .errors import ConfigError

GUARD_RETAIN_N = 64  # retain records scored for the probability floor
GUARD_GEN_N = 8  # retain questions answered for the gibberish rate
GUARD_GEN_TOKENS = 24  # new tokens per answer


def is_gibberish(text: str) -> bool:
    """A crude, model-free babble test for short greedy answers: True when the answer is empty, has
    fewer than half of its words made of letters, has one word making up more than half of 4+
    words ("the the the the"), or repeats a sentence more than twice
    (:func:`unlearnkit.rehearsal.is_degenerate`)."""
    from .rehearsal import is_degenerate

    words = text.split()
    if not words or is_degenerate(text):
        return True
    wordlike = sum(bool(re.search(r"[^\W\d_]{2,}", w)) for w in words)
    if wordlike < len(words) / 2:
        return True
    top = Counter(w.casefold().strip(".,;:!?") for w in words).most_common(1)[0][1]
    return len(words) >= 4 and top > len(words) / 2


def nonfinite(terms: dict[str, float]) -> list[str]:
    """Names of the logged terms that are NaN or infinite."""
    return [k for k, v in terms.items() if not math.isfinite(v)]


def jsonable_terms(record: dict[str, Any]) -> dict[str, Any]:
    """The log record with NaN / inf written as the strings "nan" / "inf" / "-inf" (valid JSON, and
    the value is kept rather than filtered out)."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


@torch.no_grad()
def retain_prob(model: Any, data: Any, n: int = GUARD_RETAIN_N, batch_size: int = 16) -> float:
    """Mean TOFU answer probability exp(-mean NLL) of the first ``n`` retain records."""
    from .train import answer_prob

    device = next(model.parameters()).device
    items = data.retain[:n]
    batches = ({k: t.to(device) for k, t in collate(items[i:i + batch_size], data.pad_id).items()}
               for i in range(0, len(items), batch_size))
    return answer_prob(model, batches)


def gibberish_rate(model: Any, data: Any, n: int = GUARD_GEN_N, max_new_tokens: int = GUARD_GEN_TOKENS) -> float:
    """Fraction of the greedy answers to the first ``n`` retain questions that :func:`is_gibberish`."""
    from .data.format import PromptTemplate
    from .metrics.probes import greedy_answers, ProbeSettings

    questions = [ex.question for ex in data.retain_examples[:n]]
    settings = ProbeSettings(max_new_tokens=max_new_tokens, progress=False)
    was_training = model.training
    model.eval()
    try:
        answers = greedy_answers(model, data.tokenizer, questions, data.template or PromptTemplate(), settings)
    finally:
        model.train(was_training)
    return sum(map(is_gibberish, answers)) / len(answers)


@dataclass
class Guards:
    """The opt-in guards of one run; ``check`` returns why the run must stop, or None."""

    loss_blowup: float | None = None
    retain_prob_floor: float | None = None
    gibberish_rate: float | None = None
    first_loss: float | None = None
    start_retain_prob: float | None = None
    last: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> "Guards":
        g = cls(cfg.guard_loss_blowup, cfg.guard_retain_prob_floor, cfg.guard_gibberish_rate)
        if (g.retain_prob_floor is not None or g.gibberish_rate is not None) and not data.retain:
            raise ConfigError("train.guard_retain_prob_floor / guard_gibberish_rate watch the retain set, but this "
                              "run has none; pass a retain file or unset the guard")
        if g.gibberish_rate is not None and not any(ex.question for ex in data.retain_examples[:GUARD_GEN_N]):
            raise ConfigError("train.guard_gibberish_rate needs retain records with questions to answer")
        return g

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.loss_blowup, self.retain_prob_floor, self.gibberish_rate))

    def start(self, model: Any, data: Any) -> None:
        """Measure the starting retain probability (before the first step)."""
        if self.retain_prob_floor is not None:
            self.start_retain_prob = retain_prob(model, data)

    def check(self, step: int, loss: float, model: Any, data: Any, evaluate: bool) -> str | None:
        """Why the run must stop at ``step`` (``evaluate``: also run the model-probing guards)."""
        if self.first_loss is None:
            self.first_loss = loss
        if self.loss_blowup is not None and abs(loss) > self.loss_blowup * max(abs(self.first_loss), 1e-3):
            return (f"loss blow-up at step {step}: |{loss:.4g}| > guard_loss_blowup={self.loss_blowup:g} x "
                    f"|{self.first_loss:.4g}| (step 1)")
        if not evaluate:
            return None
        if self.retain_prob_floor is not None and self.start_retain_prob is not None:
            p = self.last["retain_prob"] = retain_prob(model, data)
            if p < self.retain_prob_floor * self.start_retain_prob:
                return (f"retain probability {p:.4f} at step {step} fell below guard_retain_prob_floor="
                        f"{self.retain_prob_floor:g} x its starting {self.start_retain_prob:.4f}")
        if self.gibberish_rate is not None:
            r = self.last["gibberish_rate"] = gibberish_rate(model, data)
            if r > self.gibberish_rate:
                return (f"{r:.0%} of the greedy answers to retain questions were gibberish at step {step} "
                        f"(guard_gibberish_rate={self.gibberish_rate:g})")
        return None


__all__ = ["Guards", "gibberish_rate", "is_gibberish", "jsonable_terms", "nonfinite", "retain_prob"]
