"""The shared maths: token log-probs, sequence log-probs and NLLs under a label mask.

Conventions: ``labels`` is (B, T) with -100 where no loss applies; position t predicts token t+1
(the usual causal shift). Everything is computed in float32 for stable log-softmax.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def token_logp(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of each label token and the mask of supervised positions.

    logits: (B, T, V), labels: (B, T) -> logp (B, T-1), mask (B, T-1) bool.
    """
    lg = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    lb = labels[:, 1:]  # (B, T-1)
    mask = lb != IGNORE
    nll = F.cross_entropy(lg.transpose(1, 2), lb.masked_fill(~mask, 0), reduction="none")
    return (-nll) * mask, mask  # zero where masked


def sequence_logp(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) summed log-prob of the supervised tokens (NPO/DPO use sequence likelihood)."""
    logp, _ = token_logp(logits, labels)
    return logp.sum(-1)


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) per-example mean NLL over supervised tokens (TOFU's avg loss; SimNPO's |y|-normalised)."""
    logp, mask = token_logp(logits, labels)
    return -logp.sum(-1) / mask.sum(-1).clamp_min(1)


def batch_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Scalar mean NLL over all supervised tokens of the batch (HF ``outputs.loss``)."""
    logp, mask = token_logp(logits, labels)
    return -logp.sum() / mask.sum().clamp_min(1)


def forward(model: Any, view: dict[str, Tensor], **kwargs: Any) -> Any:
    """Run the model on one tokenized view (input_ids, attention_mask)."""
    return model(input_ids=view["input_ids"], attention_mask=view["attention_mask"], **kwargs)


def kl_on_supervised(logits: Tensor, ref_logits: Tensor, labels: Tensor) -> Tensor:
    """Scalar forward KL(p_ref || p_theta) per token, averaged over supervised positions.

    open-unlearning's ``compute_kl_divergence`` averages over all positions (padding included);
    we mask to the label positions (a documented deviation: padding carries no knowledge).
    """
    _, mask = token_logp(logits, labels)
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V)
    ref = F.log_softmax(ref_logits[:, :-1].float(), -1)
    kl = (ref.exp() * (ref - logp)).sum(-1)  # (B, T-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)
