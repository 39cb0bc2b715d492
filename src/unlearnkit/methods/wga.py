"""Weighted Gradient Ascent, WGA (Wang, Zhang, Liu, Han, Liu 2025, "Rethinking LLM Unlearning
Objectives: A Gradient Perspective and Go Beyond", arXiv 2502.19301).

Gradient ascent whose every answer token is weighted by its own probability raised to ``beta``,
with the weight treated as a constant (no gradient flows through it):

``L_forget = -mean over answer tokens of [ w_t * CE_t ]``, ``w_t = p_t^beta = exp(-beta * CE_t)`` (detached)

so tokens the model already finds unlikely (small p_t) stop being pushed further, which tames the
unbounded growth of plain gradient ascent. The total is
``forget_weight * L_forget + retain_weight * NLL(retain)``.

Reference implementation: ``tmlr-group/G-effect`` (the authors' code) and ``locuslab/open-unlearning``
``src/trainer/unlearn/wga.py`` (class ``WGA``) with ``src/trainer/utils.py`` ``compute_wga_loss``
(the mean runs over every valid token of the batch, flattened); defaults from
``configs/trainer/WGA.yaml`` (beta 1, alpha 1, gamma 1, retain NLL).

Deviation: none for ``retain_loss="nll"``; ``"kl"`` averages over retain answer tokens
(``logprobs.kl_on_supervised``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..logprobs import forward, token_logp
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, retain_term


def wga_loss(logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """WGA forget loss. logp: (B, T) token log-probs (0 where masked), mask: (B, T) bool -> scalar.

    ``-mean_{mask}[ p^beta * CE ]`` with ``p^beta = exp(beta * logp)`` detached and CE = -logp, i.e.
    ``mean_{mask}[ p^beta * logp ]``; its gradient is ``p^beta * d logp`` per token.
    """
    weight = (beta * logp).exp().detach()  # (B, T) p^beta, a constant: no gradient through the weight
    return (weight * logp * mask).sum() / mask.sum().clamp_min(1)  # = -mean(weight * CE) over answer tokens


@METHODS.register(
    "wga",
    paper="Wang et al. 2025, Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond, "
          "arXiv:2502.19301",
    reference="tmlr-group/G-effect; locuslab/open-unlearning src/trainer/unlearn/wga.py, "
              "src/trainer/utils.py compute_wga_loss",
    kind="loss",
)
@dataclass(kw_only=True)
class WGA(Method):
    """WGA: gradient ascent with each answer token weighted by its detached probability to the power beta."""

    beta: float = 1.0  # weight exponent, open-unlearning configs/trainer/WGA.yaml
    forget_weight: float = 1.0  # gamma, open-unlearning WGA.yaml
    retain_weight: float = 1.0  # alpha, open-unlearning WGA.yaml
    retain_loss: str = "nll"  # retain_loss_type NLL, open-unlearning WGA.yaml ("kl" / "none" also allowed)

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        logp, mask = token_logp(forward(model, view).logits, view["labels"])  # (B, T-1) each
        forget = wga_loss(logp, mask, self.beta)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
