"""Relearning attack: a few finetuning steps on a small part of the forget set, recovery measured on
the other part (Łucki et al. 2024, "An Adversarial Perspective on Machine Unlearning for AI Safety",
TMLR 2025, arXiv:2409.18025; and the relearning evaluation of Guo et al. 2024, "Mechanistic
Unlearning: Robust Knowledge Unlearning and Editing via Mechanistic Localization", arXiv:2410.12949).

If unlearning removed the knowledge, training on some forget records teaches only those records; if
it merely hid it, a few steps on a few records bring back the held-out ones too. The attacker trains
on ``AttackData.forget_train``; the audit measures recovery on the disjoint ``AttackData.forget_eval``
(:func:`split_forget` makes such a split).

Reference implementations:
- ``ethz-spylab/unlearning-vs-safety`` ``src/finetuning/finetune.py`` (SFTTrainer + LoRA r 128,
  alpha 16, dropout 0, attention + MLP projections; lr 2e-4, 3 epochs, batch 1, linear schedule,
  warmup 5 %, weight decay 0.01, max_len 1024; ``n_samples`` records, e.g. 10).
- Guo et al. (``magikarp01/mechanistic-unlearning``, relearning eval of the finetuning scripts): LoRA
  r 512, alpha 32, dropout 0.05, all-linear; lr 2e-4, cosine, 20 iterations, on a train split of the forgotten athletes.

Deviations:
- Defaults follow Guo et al.'s eval (20 steps, lr 2e-4, cosine, alpha 32) but ``lora_r`` defaults
  to 0 (full finetuning, the strongest attacker for a small model); set ``lora_r=512`` (Guo) or
  ``lora_r=128, lora_alpha=16`` (Łucki) to reproduce the papers' LoRA attacks.
- The loss is the answer-token NLL of the forget records (the toolkit's ``Finetune``), not the
  full-sequence LM loss of SFTTrainer, and Guo's extra maintain / Pile terms are not added (the
  attacker here only uses forget records).
- LoRA dropout defaults to 0.0 (Łucki) rather than Guo's 0.05, so the attack is deterministic.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

from ..errors import ConfigError, DataError
from ..methods.base import check_choice, check_positive
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

T = TypeVar("T")
SCHEDULERS = ("cosine", "linear", "constant")


def split_forget(examples: Sequence[T], fraction: float = 0.5, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split forget records into (attacker's train part, held-out eval part): a seeded shuffle, the
    first ``round(fraction * n)`` records (clamped to 1..n-1) go to train. Disjoint, both non-empty."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction={fraction} must be strictly between 0 and 1")
    n = len(examples)
    if n < 2:
        raise DataError(f"split_forget needs at least 2 forget records (got {n}): one to relearn on, one to "
                        "measure recovery on")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(fraction * n)))
    return [examples[i] for i in order[:k]], [examples[i] for i in order[k:]]


@ATTACKS.register(
    "relearn",
    paper="Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025; "
    "Guo et al. 2024, Mechanistic Unlearning (relearning eval), arXiv:2410.12949",
    reference="ethz-spylab/unlearning-vs-safety src/finetuning/finetune.py; "
    "magikarp01/mechanistic-unlearning finetuning_scripts/localized_finetuning_script_sports.py (relearning eval)",
    cost="budget x `steps` optimizer steps of finetuning (full or LoRA) on forget_train: ~ steps x batch_size "
    "forward+backward passes",
)
@dataclass(kw_only=True)
class Relearn(Attack):
    """Relearning: finetune a copy of the model for a few steps on part of the forget set.

    Recovery is then measured on the other, held-out part of the forget set.
    """

    steps: int = 20  # optimizer steps (times `budget`). Guo et al. relearning eval: 20 iterations;
    # Łucki et al. finetune.py: 3 epochs at batch 1 on n_samples records (e.g. 10 -> 30 steps)
    lr: float = 2e-4  # both papers: 2e-4 (Guo relearning eval; Łucki finetune.py)
    batch_size: int = 1  # Łucki finetune.py: batch 1 (Guo's batch size is not in our notes)
    lora_r: int = 0  # 0 = full finetuning (toolkit default); Guo: 512, Łucki: 128
    lora_alpha: int = 32  # Guo: 32; Łucki: 16
    lora_dropout: float = 0.0  # Łucki: 0; Guo: 0.05
    scheduler: str = "cosine"  # Guo: cosine; Łucki: linear (with 5 % warmup, see warmup_ratio)
    warmup_ratio: float = 0.0  # Guo: none in our notes; Łucki: 0.05
    weight_decay: float = 0.0  # Guo: not in our notes; Łucki: 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_positive(steps=self.steps, lr=self.lr, batch_size=self.batch_size)
        if self.lora_r < 0 or (self.lora_r > 0 and self.lora_alpha <= 0):
            raise ConfigError(f"lora_r={self.lora_r}, lora_alpha={self.lora_alpha}: lora_r must be >= 0 "
                              "(0 = full finetuning) and lora_alpha > 0")
        if not 0.0 <= self.lora_dropout < 1.0 or not 0.0 <= self.warmup_ratio < 1.0 or self.weight_decay < 0:
            raise ConfigError("lora_dropout and warmup_ratio must be in [0, 1) and weight_decay >= 0")

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """A finetuned copy of ``model`` (LoRA merged back); ``model`` is not modified."""
        if not data.forget_train:
            raise DataError("the relearning attack needs forget records to train on: AttackData.forget_train is "
                            "empty. Split the forget set (unlearnkit.attacks.relearn.split_forget) into a small "
                            "part the attacker trains on (forget_train) and a held-out part where recovery is "
                            "measured (forget_eval)")
        steps = self.scaled(self.steps)
        attacked = finetune_copy(model, tokenizer, data.forget_train, self, data, steps=steps, desc="relearn")
        return Attacked(attacked, info={"steps": steps, "records": len(data.forget_train)})


def finetune_copy(model: Any, tokenizer: Any, examples: list, s: Any, data: AttackData, *, steps: int,
                  desc: str) -> Any:
    """A copy of ``model`` finetuned for ``steps`` on ``examples`` with the settings of ``s`` (lr, batch_size,
    lora_*, scheduler, warmup_ratio, weight_decay, seed), LoRA merged back: the relearning and
    benign-finetuning attacks."""
    from ..data.pair import build_paired
    from ..models import LoraSettings, maybe_add_lora, merged
    from ..train import Finetune, TrainConfig
    from ..train import run as train_run

    paired = build_paired(None, examples, [], tokenizer, template=data.template, max_length=data.max_length,
                          seed=s.seed)
    attacked = maybe_add_lora(copy.deepcopy(model), LoraSettings(r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout))
    cfg = TrainConfig(lr=s.lr, max_steps=steps, batch_size=s.batch_size, scheduler=s.scheduler,
                      warmup_ratio=s.warmup_ratio, weight_decay=s.weight_decay, seed=s.seed, progress=False,
                      threads=torch.get_num_threads())
    train_run(attacked, Finetune(), paired, cfg, desc=desc)
    attacked = merged(attacked)
    attacked.eval()
    return attacked
