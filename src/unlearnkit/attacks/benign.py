"""Benign finetuning attack: finetune the unlearned model on a few UNRELATED records (no forget data)
and measure how much forgotten knowledge comes back (Łucki et al. 2024, "An Adversarial Perspective
on Machine Unlearning for AI Safety", arXiv 2409.18025, attack 1: "finetuning on 10 unrelated
examples ... can recover most hazardous capabilities for models edited with RMU").

Reference: ``ethz-spylab/unlearning-vs-safety`` ``src/finetuning/finetune.py`` (LoRA r 128, alpha 16,
dropout 0, lr 2e-4, 3 epochs, batch 1, linear schedule, 5 % warmup, weight decay 0.01; data:
wikitext or retain corpora, ``n_samples`` of them). Here the unrelated records are the audit's
retain records (``AttackData.retain``), the first ``n_samples`` after a seeded shuffle; the loss is
the toolkit's answer-token finetuning loss (the reference trains on whole texts), and the default is
full finetuning (``lora_r=128`` reproduces the reference's LoRA).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DataError
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked
from .relearn import SCHEDULERS, finetune_copy


@ATTACKS.register(
    "benign",
    paper="Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025",
    reference="ethz-spylab/unlearning-vs-safety src/finetuning/finetune.py",
    cost="budget x epochs x n_samples / batch_size optimizer steps of finetuning on unrelated records",
)
@dataclass(kw_only=True)
class Benign(Attack):
    """Benign finetuning: a few steps on unrelated records (the retain set), no forget data at all."""

    n_samples: int = 10  # the abstract's "10 unrelated examples"
    epochs: int = 3  # finetune.py: 3 epochs
    lr: float = 2e-4  # finetune.py
    batch_size: int = 1  # finetune.py
    lora_r: int = 0  # 0 = full finetuning (toolkit default); the reference: LoRA r 128
    lora_alpha: int = 16  # finetune.py
    lora_dropout: float = 0.0  # finetune.py
    scheduler: str = "linear"  # finetune.py
    warmup_ratio: float = 0.05  # finetune.py
    weight_decay: float = 0.01  # finetune.py
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.n_samples < 1 or self.epochs < 1 or not self.lr > 0 or self.batch_size < 1 or self.lora_r < 0:
            raise ConfigError("n_samples, epochs, batch_size must be >= 1, lr > 0 and lora_r >= 0")

    @property
    def steps(self) -> int:
        """Optimizer steps of the finetuning (what ``finetune_copy`` runs), ``budget`` included."""
        return self.scaled(self.epochs * -(-self.n_samples // self.batch_size))

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """A copy of ``model`` finetuned on ``n_samples`` retain records; ``model`` is not modified."""
        if not data.retain:
            raise DataError("the benign finetuning attack trains on unrelated records: AttackData.retain is empty "
                            "(give the audit --retain FILE)")
        pool = list(data.retain)
        random.Random(self.seed).shuffle(pool)
        attacked = finetune_copy(model, tokenizer, pool[: self.n_samples], self, data, steps=self.steps, desc="benign")
        return Attacked(attacked, info={"steps": self.steps, "records": len(pool[: self.n_samples])})
