"""Large Language Model Unlearning (Yao, Xu, Liu 2023, arXiv 2310.10683).

``loss = bad_weight * L_fgt + random_weight * L_rdn + normal_weight * L_nor`` where
- ``L_fgt``: gradient ascent on the forget answers (per-sample mean answer CE, then mean over samples),
- ``L_rdn``: gradient descent on the forget *question* paired with a random answer from the retain
  ("normal") pool (the "mismatch" view),
- ``L_nor``: forward KL(p_original || p_theta) on retain data, to a frozen copy of the initial model.

Reference implementation: ``kevinyaobytedance/llm_unlearn`` ``utils.py`` (``get_answer_loss``,
``get_rand_ans_loss``, ``compute_kl``) and ``unlearn_harm.py`` (``--bad_weight 0.5
--random_weight 1 --normal_weight 1``).

Deviations:
- ``L_nor`` is averaged over retain answer tokens (``logprobs.kl_on_supervised``). The released
  ``compute_kl`` averages ``-sum_v p_0 log p_theta`` (KL plus the constant entropy of p_0) over all
  positions, padding and question included; ``kl_all_positions=True`` averages the forward KL over
  all non-padding positions instead (same gradient as released, minus the padding positions).
- One random answer per forget example, drawn (seeded) when the data are built; the released code
  pairs every question of a batch with K=5 fresh random answers from TruthfulQA.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.records import Example
from ..errors import ConfigError
from ..logprobs import forward, kl_on_supervised, mean_nll
from ..registry import METHODS
from .base import LossOutput, Method, check_positive


def yao_loss(fgt: Tensor, rdn: Tensor, nor: Tensor, *, bad_weight: float, random_weight: float,
             normal_weight: float) -> Tensor:
    """The weighted sum of the three scalar terms (``unlearn_harm.py``: 0.5 / 1 / 1)."""
    return bad_weight * fgt + random_weight * rdn + normal_weight * nor


def kl_all_positions(logits: Tensor, ref_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Forward KL(p_ref || p_theta) per position, averaged over all non-padding positions.

    logits, ref_logits: (B, T, V); attention_mask: (B, T) -> scalar (as-released ``compute_kl``
    averaging, without its constant entropy term and without the padding positions).
    """
    logp = F.log_softmax(logits.float(), -1)  # (B, T, V)
    ref = F.log_softmax(ref_logits.float(), -1)
    kl = (ref.exp() * (ref - logp)).sum(-1)  # (B, T)
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


@METHODS.register(
    "yao",
    paper="Yao, Xu, Liu 2023, Large Language Model Unlearning, arXiv:2310.10683",
    reference="kevinyaobytedance/llm_unlearn utils.py, unlearn_harm.py",
    kind="loss",
)
@dataclass(kw_only=True)
class Yao(Method):
    """GA on forget + GD on mismatched (question, random answer) + KL to the original on retain."""

    bad_weight: float = 0.5  # ε1, llm_unlearn unlearn_harm.py --bad_weight
    random_weight: float = 1.0  # ε2, llm_unlearn unlearn_harm.py --random_weight
    normal_weight: float = 1.0  # ε3, llm_unlearn unlearn_harm.py --normal_weight
    kl_all_positions: bool = False  # True = as released: KL averaged over all non-pad positions

    def __post_init__(self) -> None:
        check_positive(bad_weight=self.bad_weight, random_weight=self.random_weight,
                       normal_weight=self.normal_weight)

    @property
    def needs_ref_model(self) -> bool:
        return True  # L_nor is a KL to the frozen original model

    @property
    def needs_retain(self) -> bool:
        return True  # L_nor uses retain data; the mismatch answers come from the retain pool

    def extra_views(
        self, ex: Example, rng: random.Random, pool: list[Example]
    ) -> dict[str, tuple[str | None, str]]:
        if not pool:
            raise ConfigError(
                "method 'yao' draws its random (mismatch) answers from the retain set; provide retain data"
            )
        return {"mismatch": (ex.question, rng.choice(pool).answer)}

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        if ref is None:
            raise RuntimeError("method 'yao' needs the frozen reference model; the loop did not give it")
        fgt_view, rdn_view, nor_view = batch["forget"], batch["mismatch"], batch["retain"]
        # (B,) per-sample mean answer CE, then the mean over samples (get_answer_loss)
        fgt = -mean_nll(forward(model, fgt_view).logits, fgt_view["labels"]).mean()
        rdn = mean_nll(forward(model, rdn_view).logits, rdn_view["labels"]).mean()
        logits = forward(model, nor_view).logits  # (B, T, V)
        with torch.no_grad():
            ref_logits = forward(ref, nor_view).logits
        if self.kl_all_positions:
            nor = kl_all_positions(logits, ref_logits, nor_view["attention_mask"])
        else:
            nor = kl_on_supervised(logits, ref_logits, nor_view["labels"])
        total = yao_loss(fgt, rdn, nor, bad_weight=self.bad_weight, random_weight=self.random_weight,
                         normal_weight=self.normal_weight)
        logs = {"forget_loss": fgt, "mismatch_loss": rdn, "retain_kl": nor}
        return LossOutput(total, {k: float(v.detach()) for k, v in logs.items()})
