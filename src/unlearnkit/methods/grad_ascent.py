"""Gradient ascent on the forget set (Jang et al. 2023, "Knowledge Unlearning for Mitigating
Privacy Risks in Language Models", ACL 2023, arXiv 2210.01504).

Reference implementation: ``joeljang/knowledge-unlearning`` ``models/Neo_Model.py``
(``training_step`` returns ``loss * -1`` where ``loss`` is the HF mean token cross-entropy) and
``locuslab/open-unlearning`` ``src/trainer/unlearn/grad_ascent.py`` (``-outputs.loss``).

Deviation: none in the loss. Jang et al. train on whole sequences (no prompt) with one full-batch
step per epoch and stop on EL/MA thresholds; those are data / loop settings here (plain-text
records, ``train.batch_size``, ``train.stop_forget_prob``), not part of the method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..logprobs import batch_nll, forward
from ..registry import METHODS
from .base import LossOutput, Method


def ga_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Negative HF mean token NLL over the supervised tokens of the batch.

    logits: (B, T, V), labels: (B, T) with -100 on unsupervised positions -> scalar.
    Minimising it is gradient *ascent* on the forget-set NLL.
    """
    return -batch_nll(logits, labels)  # mean over all answer tokens of the batch (HF `loss`)


@METHODS.register(
    "grad_ascent",
    paper="Jang et al. 2023, Knowledge Unlearning for Mitigating Privacy Risks in LMs, arXiv:2210.01504",
    reference="joeljang/knowledge-unlearning models/Neo_Model.py; "
    "locuslab/open-unlearning src/trainer/unlearn/grad_ascent.py",
    kind="loss",
)
@dataclass(kw_only=True)
class GradAscent(Method):
    """GA: ``loss = -NLL(forget)``. No hyperparameters, no retain term, no reference model."""

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        forget = ga_loss(forward(model, view).logits, view["labels"])
        return LossOutput(forget, {"forget_loss": float(forget.detach())})
