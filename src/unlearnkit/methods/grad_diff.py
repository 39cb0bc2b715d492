"""Gradient difference: ascend on the forget set, descend on the retain set.

Form and defaults of ``locuslab/open-unlearning`` ``src/trainer/unlearn/grad_diff.py`` with
``configs/trainer/GradDiff.yaml`` (gamma 1, alpha 1, ``retain_loss_type: NLL``); the method goes
back to Liu, Liu & Stone 2022 ("Continual Learning and Private Unlearning", CoLLAs) and is the
"Grad. Diff." baseline of TOFU (Maini et al. 2024, arXiv 2401.06121).

``loss = forget_weight * (-NLL(forget)) + retain_weight * L_retain`` with L_retain the HF mean NLL
on retain (``nll``) or the forward KL to the frozen initial model (``kl``).

Deviation: with ``retain_loss="kl"`` the KL is averaged over the retain answer tokens
(``logprobs.kl_on_supervised``); open-unlearning averages over all flattened positions, padding
included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..logprobs import batch_nll, forward
from ..registry import METHODS
from .base import LossOutput, Method, check_choice, check_positive, combine, retain_term


@METHODS.register(
    "grad_diff",
    paper="Liu, Liu & Stone 2022 (CoLLAs); TOFU baseline, Maini et al. 2024, arXiv:2401.06121",
    reference="locuslab/open-unlearning src/trainer/unlearn/grad_diff.py, configs/trainer/GradDiff.yaml",
    kind="loss",
)
@dataclass(kw_only=True)
class GradDiff(Method):
    """GradDiff: ``gamma * (-NLL forget) + alpha * retain term``."""

    forget_weight: float = 1.0  # gamma, open-unlearning GradDiff.yaml
    retain_weight: float = 1.0  # alpha, open-unlearning GradDiff.yaml
    retain_loss: str = "nll"  # retain_loss_type NLL, open-unlearning GradDiff.yaml (or "kl")

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, ("nll", "kl"))
        check_positive(forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        forget = -batch_nll(forward(model, view).logits, view["labels"])  # GA term, HF mean NLL
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
