"""UNDIAL: self-distillation with adjusted logits (Dong, Lin, Belinkov, Specia, Cohn 2024, "UNDIAL:
Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models", arXiv 2402.10052).

The teacher is the frozen initial model. At every answer position its logit of the gold (label) token
is lowered by ``beta``; the softmax of these adjusted logits is the soft target, and the student is
trained with the soft-label cross-entropy ``-sum_v q_v log p_theta(v)``:

``q = softmax(z_ref - beta * onehot(y))``, ``L_forget = mean over answer tokens of CE(p_theta, q)``

Only the gold token's probability is reduced; the rest of the teacher's distribution is kept, which
is what makes UNDIAL gentler than gradient ascent (its loss is bounded below by the entropy of q).

Reference implementation: ``locuslab/open-unlearning`` ``src/trainer/unlearn/undial.py`` (class
``UNDIAL``) and ``src/trainer/utils.py`` ``compute_undial_loss``; defaults from
``configs/trainer/UNDIAL.yaml`` (beta 10, retain NLL with alpha 0, i.e. no retain term).

Deviations:
- The soft-label CE is averaged over the supervised (answer) positions only. ``compute_undial_loss``
  averages over *all* positions (prompt and padding included) and scatters the -100 labels of the
  prompt straight into the one-hot mask, where negative indexing lowers the logit of vocabulary
  entry ``V - 100`` at every prompt position (a bug: it distils prompt positions towards an
  arbitrary token being less likely). Masking keeps the loss about the answer.
- ``retain_loss`` defaults to ``"none"``: open-unlearning's UNDIAL.yaml has retain NLL with weight
  alpha = 0, i.e. no retain term (and our weights must be > 0). ``retain_loss="nll"`` (or ``"kl"``)
  with ``retain_weight`` (default 1.0) turns one on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..logprobs import IGNORE, forward
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, retain_term


def undial_targets(ref_logits: Tensor, labels: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Soft targets from the teacher's logits with ``beta`` subtracted at the gold token.

    ref_logits: (B, T, V), labels: (B, T) with -100 off the answer -> targets (B, T-1, V), mask (B, T-1).
    Position t predicts token t+1 (the causal shift of ``logprobs.token_logp``).
    """
    lb = labels[:, 1:]  # (B, T-1) the token each position predicts
    mask = lb != IGNORE
    adjusted = ref_logits[:, :-1].float().clone()  # (B, T-1, V)
    shift = (-beta * mask.to(adjusted.dtype)).unsqueeze(-1)  # (B, T-1, 1): -beta on answer tokens, 0 elsewhere
    adjusted.scatter_add_(-1, lb.masked_fill(~mask, 0).unsqueeze(-1), shift)  # lower only the gold logit
    return F.softmax(adjusted, -1), mask


def undial_loss(logits: Tensor, ref_logits: Tensor, labels: Tensor, beta: float) -> Tensor:
    """UNDIAL forget loss: soft-label CE of the student to the adjusted teacher, mean over answer tokens.

    logits (student), ref_logits (teacher): (B, T, V); labels: (B, T) -> scalar.
    """
    targets, mask = undial_targets(ref_logits.detach(), labels, beta)  # (B, T-1, V), (B, T-1)
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V)
    ce = -(targets * logp).sum(-1)  # (B, T-1) cross-entropy with a probability target
    return (ce * mask).sum() / mask.sum().clamp_min(1)


@METHODS.register(
    "undial",
    paper="Dong et al. 2024, UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in "
          "Large Language Models, arXiv:2402.10052",
    reference="locuslab/open-unlearning src/trainer/unlearn/undial.py, src/trainer/utils.py compute_undial_loss",
    kind="loss",
)
@dataclass(kw_only=True)
class UNDIAL(Method):
    """UNDIAL: distil from the frozen initial model with the gold token's logit lowered by beta.

    Needs a live frozen reference model (the teacher's full next-token distributions are used).
    """

    beta: float = 10.0  # logit adjustment strength, open-unlearning configs/trainer/UNDIAL.yaml
    forget_weight: float = 1.0  # gamma, open-unlearning UNDIAL.yaml (inherited GradDiff default)
    retain_weight: float = 1.0  # alpha when a retain term is enabled (GradDiff default; UNDIAL.yaml sets 0)
    retain_loss: str = "none"  # UNDIAL.yaml: NLL with alpha 0 == no retain term; "nll" / "kl" enable one

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)

    @property
    def needs_ref_model(self) -> bool:
        return True  # the teacher: its whole next-token distribution at every answer position

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        if ref is None:
            raise RuntimeError("method 'undial' needs the frozen reference model (the teacher); "
                               "the loop did not provide it")
        view = batch["forget"]
        logits = forward(model, view).logits  # (B, T, V)
        with torch.no_grad():
            ref_logits = forward(ref, view).logits
        forget = undial_loss(logits, ref_logits, view["labels"], self.beta)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
