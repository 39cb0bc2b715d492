"""Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, arXiv 2404.05868).

``L_NPO = -(2/beta) * E[log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))]`` on the forget
set, with sequence (summed) answer log-probs, plus a retain term (NPO-RT = ``npo_grad_diff``).

Reference implementation: ``licong-lin/negative-preference-optimization`` ``TOFU/dataloader.py``
(``neg_log_ratio = NLL_theta - NLL_ref``, summed CE; ``loss = -logsigmoid(beta * neg_log_ratio)
.mean() * 2 / beta``) and ``TOFU/config/forget.yaml``; same form in ``locuslab/open-unlearning``
``src/trainer/unlearn/npo.py`` (``compute_dpo_loss`` with lose = forget only).

Deviation: pi_ref's log-probs of the forget answers are computed once before training by the loop
(``ref_logp_views``) and read from ``batch["forget"]["ref_logp"]`` instead of running a live
reference model every step; the values are the same because the reference is frozen. The KL
retain variant (``npo_KL``) is averaged over retain answer tokens, not all positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..logprobs import forward, sequence_logp
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, ref_logp, retain_term


def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """NPO forget loss. logp, ref_logp: (B,) summed answer log-probs -> scalar.

    Equals (2/beta)*ln 2 at logp == ref_logp; as beta -> 0 its gradient tends to that of GA on the
    summed NLL (d/d logp = 2*sigmoid(beta*(logp - ref_logp))/B -> 1/B).
    """
    log_ratio = logp - ref_logp  # (B,) log pi_theta(y|x) - log pi_ref(y|x)
    return -2.0 / beta * F.logsigmoid(-beta * log_ratio).mean()



@METHODS.register(
    "npo",
    paper="Zhang, Lin, Bai, Mei 2024, Negative Preference Optimization, arXiv:2404.05868",
    reference="licong-lin/negative-preference-optimization TOFU/dataloader.py, TOFU/config/forget.yaml",
    kind="loss",
)
@dataclass(kw_only=True)
class NPO(Method):
    """NPO with an optional retain term (default NLL = NPO-RT)."""

    ref_logp_views = ("forget",)  # reference log-probs pre-computed by the loop (not a field)

    beta: float = 0.1  # β, NPO TOFU/config/forget.yaml (and open-unlearning NPO.yaml)
    forget_weight: float = 1.0  # npo_coeff, NPO forget.yaml
    retain_weight: float = 1.0  # grad_diff_coeff / KL_coeff, NPO forget.yaml
    retain_loss: str = "nll"  # "nll" = npo_grad_diff (NPO-RT), "kl" = npo_KL, "none" = plain NPO

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        # (B,) summed: NPO uses the sequence likelihood
        logp = sequence_logp(forward(model, view).logits, view["labels"])
        forget = npo_loss(logp, ref_logp(batch, "forget").to(logp), self.beta)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
