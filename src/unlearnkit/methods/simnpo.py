"""SimNPO: reference-free, length-normalised NPO (Fan et al. 2024, "Simplicity Prevails:
Rethinking Negative Preference Optimization for LLM Unlearning", arXiv 2410.07163).

Paper: ``L = -(2/beta) * E[log sigmoid(-(beta/|y|) * log pi_theta(y|x) - gamma)] + lambda * L_retain``.
Code form (``OPTML-Group/Unlearn-Simple`` ``TOFU/dataloader.py``; ``locuslab/open-unlearning``
``src/trainer/unlearn/simnpo.py``), which we follow:
``-(2/beta) * log sigmoid(beta * (NLL_sum/|y| - delta))``, i.e. the margin is ``delta = gamma/beta``
(identical at the default 0). Defaults are open-unlearning's / Unlearn-Simple's TOFU forget10
setting (beta 4.5, forget coefficient 0.125, retain coefficient 1, NLL retain).

Deviation: none for ``retain_loss="nll"``; ``"kl"`` averages over retain answer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..logprobs import forward, mean_nll
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, retain_term


def simnpo_loss(mean_nll: Tensor, beta: float, delta: float) -> Tensor:
    """SimNPO forget loss. mean_nll: (B,) per-example mean answer NLL (sum / |y|) -> scalar."""
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


@METHODS.register(
    "simnpo",
    paper="Fan et al. 2024, Simplicity Prevails: Rethinking NPO for LLM Unlearning, arXiv:2410.07163",
    reference="OPTML-Group/Unlearn-Simple TOFU/dataloader.py; "
    "locuslab/open-unlearning src/trainer/unlearn/simnpo.py",
    kind="loss",
)
@dataclass(kw_only=True)
class SimNPO(Method):
    """SimNPO + retain term; no reference model (log-probs are length-normalised instead)."""

    beta: float = 4.5  # β, open-unlearning SimNPO.yaml / Unlearn-Simple TOFU forget10
    delta: float = 0.0  # δ = margin γ (code form γ/β), open-unlearning SimNPO.yaml
    forget_weight: float = 0.125  # gamma (npo_coeff), open-unlearning SimNPO.yaml
    retain_weight: float = 1.0  # alpha, open-unlearning SimNPO.yaml
    retain_loss: str = "nll"  # GD retain term, open-unlearning SimNPO.yaml

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        per_example = mean_nll(forward(model, view).logits, view["labels"])  # (B,) |y|-normalised
        forget = simnpo_loss(per_example, self.beta, self.delta)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
