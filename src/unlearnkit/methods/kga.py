"""KGA: knowledge-gap alignment (Wang, Chen, Yuan, Zhang, Li, Pan, Xu, Wong; ACL 2023,
"KGA: A General Machine Unlearning Framework Based on Knowledge Gap Alignment", arXiv:2305.06535).

``L = L_a + alpha * L_r`` with ``L_a = |KL(A_f || A*) on D_f - KL(A_n || A_D) on D_n|`` and
``L_r = KL(A_D || A*) on D_r``. A_D is the original model (the loop's frozen ``ref``), A* the
model being unlearned (initialised from A_D), A_f a model trained on the forget set D_f and A_n
one trained on D_n, a small extra set from the training distribution that A_D never saw (for
TOFU: the holdout split). Unlearning makes A*'s "knowledge gap" to A_f on D_f as large as A_D's gap
to A_n on unseen data, i.e. A* should treat D_f the way A_D treats data it was never trained on.

Reference implementation: ``Lingzhi-WANG/KGAUnlearn`` ``response/kga_generation.py`` (training
loop of ``main``): ``F.kl_div(log p_model, log p_target, log_target=True)`` = KL(target || model);
``loss_remain = KL(A_D || A*)`` on a "train_file" (D_r) batch scaled by ``retain_loss_ratio``;
``gap_cur = KL(A_f || A*)`` on a D_f batch, ``gap_tgt = KL(A_n || A_D)`` on a D_n batch (no grad),
``loss_align = |gap_cur - gap_tgt|``; reduction ``'batchmean'``; training stops once
``loss_align <= stop_value``. A_f and A_n are checkpoints trained beforehand
(``--forget_model_dir`` / ``--new_model_dir``).

Adaptation to a causal LM and deviations (toolkit choices, not from the paper):

* KLs are over next-token distributions at the supervised (answer) positions only, padding masked
  (the code sums every position of an encoder-decoder's target, padding included).
  ``kl_reduction="sequence"`` (default) = sum over tokens and vocabulary / B, the code's
  ``'batchmean'``; ``"token"`` = mean per supervised token (``logprobs.kl_on_supervised``).
* A_f / A_n: given as model directories (``forget_model`` / ``new_model``) like the code, or, when
  empty, finetuned in ``prepare`` from ``base_model``. Its default ("") is a copy of the model being
  unlearned (A_D), whereas the paper trains them from the base initialisation: with A_D as the
  start, A_f differs from A_D mainly where A_D does not already fit D_f, and A_n is "A_D after also
  learning D_n" - so gap_new measures how far A_D is from knowing unseen data, the target gap.
  Pass ``base_model=DIR`` (e.g. the pretrained model A_D was finetuned from) for the paper's setup.
* The stop rule is checked at every step (the code checks every 200 updates); 0 disables it.
* Both terms are computed and back-propagated together at every micro-step (the code adds the
  retain loss every micro-step and the alignment loss once per update of ``update_freq`` steps).
* The D_n batches (same batch size as the forget batches) are cycled independently of the loop's
  forget/retain pairing, and are not split across processes (gap_new carries no gradient).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ..errors import ConfigError
from ..logprobs import IGNORE, forward, kl_on_supervised
from ..registry import METHODS
from .base import LossOutput, Method, check_choice, check_positive

KL_REDUCTIONS = ("sequence", "token")


def supervised_kl(logits: Tensor, target_logits: Tensor, labels: Tensor, *, reduction: str) -> Tensor:
    """KL(p_target || p_model) of the next-token distributions at the supervised positions.

    logits, target_logits: (B, T, V); labels: (B, T) with -100 on prompt and padding -> scalar.
    ``"token"``: mean per supervised token; ``"sequence"``: summed over supervised tokens and the
    vocabulary, divided by B (the reference code's ``F.kl_div(..., reduction='batchmean')``).
    """
    per_token = kl_on_supervised(logits, target_logits, labels)  # sum over (tokens, V) / n_tokens
    if reduction == "token":
        return per_token
    n_tokens = (labels[:, 1:] != IGNORE).sum()  # supervised next-token positions in the batch
    return per_token * n_tokens / labels.shape[0]  # (sum over tokens and V) / B


def kga_loss(*, gap_forget: Tensor, gap_new: Tensor, retain_kl: Tensor, retain_weight: float) -> Tensor:
    """KGA objective ``|gap_forget - gap_new| + alpha * retain_kl`` (all scalars).

    gap_forget = KL(A_f || A*) on D_f (carries the gradient), gap_new = KL(A_n || A_D) on D_n (a
    constant target), retain_kl = KL(A_D || A*) on D_r.
    """
    align = (gap_forget - gap_new.detach()).abs()  # L_a: the knowledge gaps should match
    return align + retain_weight * retain_kl  # + alpha * L_r


def _check_path(name: str, value: str, what: str) -> None:
    if value and not Path(value).exists():
        raise ConfigError(f"method.{name}={value!r} does not exist; give {what}")


def _freeze(model: Any) -> Any:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@METHODS.register(
    "kga",
    paper="Wang et al. 2023, KGA: A General Machine Unlearning Framework Based on Knowledge Gap Alignment, "
          "ACL 2023, arXiv:2305.06535",
    reference="Lingzhi-WANG/KGAUnlearn response/kga_generation.py (main training loop)",
    kind="loss",
    inputs=("new_data",),
)
@dataclass(kw_only=True)
class KGA(Method):
    """Knowledge-gap alignment: A*'s KL gap to a D_f-trained model is pulled to A_D's gap on unseen data.

    Needs ``new_data`` (D_n): records from the training distribution that the model never saw (for
    TOFU, the holdout split). The auxiliary models A_f (trained on the forget set) and A_n (trained
    on D_n) are loaded from ``forget_model`` / ``new_model`` or finetuned in ``prepare``.
    """

    new_data: str = ""  # D_n records file (json/jsonl/csv); required: KGA's extra set, not in D
    retain_weight: float = 0.3  # α, retain_loss_ratio, KGAUnlearn README (response generation)
    stop_value: float = 0.05  # --stop_value, KGAUnlearn README; stop once L_a <= this (0 = never)
    kl_reduction: str = "sequence"  # "sequence" = code's 'batchmean' (sum / B); "token" = per-token mean
    forget_model: str = ""  # A_f model dir (--forget_model_dir); "" = finetune one in prepare
    new_model: str = ""  # A_n model dir (--new_model_dir); "" = finetune one in prepare
    base_model: str = ""  # init of A_f / A_n when trained here; "" = copy of A_D (deviation, see module doc)
    aux_epochs: float = 5.0  # epochs for A_f / A_n: toolkit choice = TOFU's finetuning recipe (5 epochs)
    aux_lr: float | None = None  # lr for A_f / A_n; None = train.lr (toolkit choice)

    def __post_init__(self) -> None:
        check_choice("kl_reduction", self.kl_reduction, KL_REDUCTIONS)
        check_positive(retain_weight=self.retain_weight, aux_epochs=self.aux_epochs)
        if self.aux_lr is not None:
            check_positive(aux_lr=self.aux_lr)
        if not self.stop_value >= 0:
            raise ConfigError(f"stop_value must be >= 0 (0 disables the stop rule), got {self.stop_value}")
        _check_path("new_data", self.new_data, "a records file (json/jsonl/csv) of D_n")
        _check_path("forget_model", self.forget_model, "a local model directory of A_f, or leave it empty")
        _check_path("new_model", self.new_model, "a local model directory of A_n, or leave it empty")
        _check_path("base_model", self.base_model, "a local model directory, or leave it empty")
        self._forget_model: Any = None  # A_f, frozen
        self._new_model: Any = None  # A_n, frozen
        self._new_batches: Iterator[dict[str, dict[str, Tensor]]] | None = None  # cycled D_n batches

    @property
    def needs_ref_model(self) -> bool:
        return True  # A_D: the target of L_r and the model A_n is compared with on D_n

    @property
    def needs_retain(self) -> bool:
        return True

    def prepare(self, model: Any, data: Any, cfg: Any) -> None:
        """Encode D_n and load or finetune the frozen auxiliary models A_f (on D_f) and A_n (on D_n)."""
        from ..data.pair import build_paired

        new = build_paired(None, self._load_new_examples(), [], data.tokenizer,
                           template=data.template, max_length=data.max_length)
        self._forget_model = self._aux_model(model, self.forget_model, data, cfg, "A_f")
        self._new_model = self._aux_model(model, self.new_model, new, cfg, "A_n")
        self._new_batches = new.batches(cfg.batch_size, seed=cfg.seed)

    def _load_new_examples(self) -> list[Any]:
        from ..data.records import load_examples

        if not self.new_data:
            raise ConfigError(
                "kga needs method.new_data=FILE: records (json/jsonl/csv, question/answer) of D_n, data "
                "from the same distribution as the training set that the model was never trained on "
                "(e.g. TOFU's holdout split); KGA aligns the forget set's knowledge gap with theirs")
        _check_path("new_data", self.new_data, "a records file (json/jsonl/csv) of D_n")
        return load_examples(self.new_data)

    def _aux_model(self, model: Any, path: str, train_data: Any, cfg: Any, what: str) -> Any:
        """Load ``path``, or finetune a copy of ``base_model`` (default: of ``model``) on ``train_data``."""
        from ..models import load_model
        from ..train import finetune_frozen

        if path:
            return _freeze(load_model(path))
        aux = load_model(self.base_model) if self.base_model else copy.deepcopy(model)
        return finetune_frozen(aux, train_data, cfg, epochs=self.aux_epochs, lr=self.aux_lr, desc=f"kga:{what}")

    def setup(self, model: Any, ref: Any | None) -> None:
        device = next(model.parameters()).device
        for aux in (self._forget_model, self._new_model):
            if aux is not None:
                aux.to(device)

    def teardown(self, model: Any) -> None:
        self._forget_model = self._new_model = self._new_batches = None  # free the auxiliary models

    def _kl(self, logits: Tensor, target_logits: Tensor, view: dict[str, Tensor]) -> Tensor:
        return supervised_kl(logits, target_logits, view["labels"], reduction=self.kl_reduction)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        if self._forget_model is None or self._new_batches is None:
            raise RuntimeError("KGA.loss called before prepare(); train with unlearnkit.train.run")
        if ref is None:
            raise RuntimeError("kga needs the frozen original model A_D as ref; the loop did not provide it")
        kl, forget = self._kl, batch["forget"]
        with torch.no_grad():
            new = {k: t.to(forget["input_ids"].device) for k, t in next(self._new_batches)["forget"].items()}
            gap_new = kl(forward(ref, new).logits, forward(self._new_model, new).logits, new)  # KL(A_n || A_D)
            target_f = forward(self._forget_model, forget).logits
        gap_forget = kl(forward(model, forget).logits, target_f, forget)  # KL(A_f || A*) on D_f
        retain_kl = torch.zeros((), device=gap_forget.device)
        if "retain" in batch:
            view = batch["retain"]
            with torch.no_grad():
                ref_logits = forward(ref, view).logits
            retain_kl = kl(forward(model, view).logits, ref_logits, view)  # KL(A_D || A*) on D_r
        total = kga_loss(gap_forget=gap_forget, gap_new=gap_new, retain_kl=retain_kl, retain_weight=self.retain_weight)
        align = float((gap_forget - gap_new).abs().detach())
        logs = {"align_loss": align, "gap_forget": float(gap_forget.detach()), "gap_new": float(gap_new),
                "retain_loss": float(retain_kl.detach())}
        return LossOutput(total, logs, stop=self.stop_value > 0 and align <= self.stop_value)
