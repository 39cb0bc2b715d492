"""IdkDPO: DPO towards "I don't know" answers and away from the forget answers (TOFU,
Maini et al. 2024, arXiv 2401.06121, "Preference Optimization" baseline; DPO: Rafailov et al.
2023, arXiv 2305.18290).

``L = -(2/beta) * E[log sigmoid(beta * ((log pi(y_idk) - log pi_ref(y_idk)) - (log pi(y) - log pi_ref(y))))]``
with summed answer log-probs, plus a retain term. This is ``compute_dpo_loss`` of
``locuslab/open-unlearning`` ``src/trainer/utils.py`` (win = ``forget.alternate``, an answer from
``data/idk.jsonl``; lose = the forget answer), used by ``src/trainer/unlearn/dpo.py`` with the
``configs/experiment/unlearn/tofu/idk.yaml`` experiment. Note its 2/beta scale (standard DPO has 1).

Deviations: the refusal answers are our own (``unlearnkit/data/idk.txt``, ~100 lines), not
TOFU's ``idk.jsonl``; one answer is drawn per forget example when the data are built (seeded)
rather than per access; the reference log-probs of both views are pre-computed by the loop
(``ref_logp_views``) instead of a live reference model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..data.records import Example
from ..logprobs import forward, sequence_logp
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, ref_logp, retain_term


@lru_cache(maxsize=1)
def load_idk_answers() -> tuple[str, ...]:
    """The packaged "I don't know" answers (``unlearnkit/data/idk.txt``, one per line)."""
    text = resources.files("unlearnkit.data").joinpath("idk.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


IDK_ANSWERS = load_idk_answers()


def dpo_loss(win_logp: Tensor, win_ref: Tensor, lose_logp: Tensor, lose_ref: Tensor, beta: float) -> Tensor:
    """open-unlearning's ``compute_dpo_loss``. All inputs (B,) summed answer log-probs -> scalar.

    Equals (2/beta)*ln 2 when the model is the reference.
    """
    margin = (win_logp - win_ref) - (lose_logp - lose_ref)  # (B,) DPO implicit-reward margin
    return -2.0 / beta * F.logsigmoid(beta * margin).mean()



@METHODS.register(
    "idk",
    paper="TOFU IdkPO, Maini et al. 2024, arXiv:2401.06121 (DPO: Rafailov et al. 2023, arXiv:2305.18290)",
    reference="locuslab/open-unlearning src/trainer/unlearn/dpo.py, src/trainer/utils.py compute_dpo_loss",
    kind="loss",
)
@dataclass(kw_only=True)
class IdkDPO(Method):
    """DPO with win = a refusal answer to the forget question, lose = the forget answer."""

    ref_logp_views = ("forget", "idk")  # reference log-probs pre-computed by the loop (not a field)

    beta: float = 0.1  # β, open-unlearning DPO.yaml (TOFU idk experiment)
    forget_weight: float = 1.0  # gamma, open-unlearning DPO.yaml
    retain_weight: float = 1.0  # alpha, open-unlearning DPO.yaml
    retain_loss: str = "nll"  # retain_loss_type NLL, open-unlearning DPO.yaml

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    def extra_views(
        self, ex: Example, rng: random.Random, pool: list[Example]
    ) -> dict[str, tuple[str | None, str]]:
        return {"idk": (ex.question, rng.choice(IDK_ANSWERS))}

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        return preference_unlearning_loss(self, model, batch, ref, win="idk")


def preference_unlearning_loss(method: Any, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None, *,
                               win: str) -> LossOutput:
    """DPO with win = view ``win`` and lose = the forget answer (reference log-probs pre-computed
    for both), plus ``method``'s retain term: the loss of ``idk`` and ``dpo``."""
    w, lose = batch[win], batch["forget"]
    win_logp = sequence_logp(forward(model, w).logits, w["labels"])  # (B,) summed
    lose_logp = sequence_logp(forward(model, lose).logits, lose["labels"])  # (B,) summed
    win_ref, lose_ref = ref_logp(batch, win).to(win_logp), ref_logp(batch, "forget").to(lose_logp)
    forget = dpo_loss(win_logp, win_ref, lose_logp, lose_ref, method.beta)
    retain = retain_term(model, ref, batch.get("retain"), method.retain_loss)
    return combine(forget, retain, forget_weight=method.forget_weight, retain_weight=method.retain_weight)
