"""Task-vector negation (Ilharco, Ribeiro, Wortsman, Gururangan, Schmidt, Hajishirzi, Farhadi 2023,
"Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089, §3 "Forgetting via negation").

1. Finetune a copy of the model on the forget set (answer-only NLL, the shared loop with
   :class:`unlearnkit.train.Finetune`): theta_ft.
2. Task vector ``tau = theta_ft - theta_0`` (:func:`task_vector`).
3. Negate it: ``theta' = theta_0 - scale * tau`` (:func:`apply_task_vector` with ``coef = -scale``),
   written in place into the model.

This is also stage 1 of F-Learning (Ni et al. 2024, "Forgetting before Learning", ACL 2024,
arXiv:2311.08011, no official code), which continues by finetuning theta' on the new knowledge; its
LoRA variant trains an adapter in step 1 and subtracts the merged adapter delta
``(lora_alpha / r) * B @ A`` (``delta="lora"`` here). :func:`task_vector`,
:func:`apply_task_vector` and :func:`effective_state` are public for that reuse.

Reference implementation: ``mlfoundations/task_vectors`` ``src/task_vectors.py``: ``TaskVector``
(``vector[key] = finetuned[key] - pretrained[key]`` over the state dict, integer buffers skipped),
``__neg__`` and ``apply_to(pretrained, scaling_coef)`` (``pretrained[key] + scaling_coef * vector[key]``).
Our ``apply_task_vector(model, tau, coef)`` has the same convention (adds ``coef * tau``); negation
with strength lambda is ``coef = -lambda``.

How to run: ``unlearnkit unlearn --method task_vector method.scale=0.5 train.lr=1e-5 train.epochs=3``.
The ``train.*`` settings are the budget of the finetuning stage (step 1), not of an unlearning loop.

Deviations and choices:

* The vector covers the model's parameters (``named_parameters``, tied weights once), not its
  buffers; the reference takes the whole state dict, but buffers (e.g. rotary frequencies) do not
  change when finetuning a causal LM, so their difference is zero anyway.
* The difference is computed in float32 and the result cast back to each parameter's dtype.
* A model that already carries LoRA adapters (``unlearn --lora``) is finetuned through those adapters,
  whatever ``delta`` says (``lora_r`` / ``lora_alpha`` are then unused). The vector is taken on the
  *effective* weights (adapters merged, :func:`effective_state`) and the negation is written into the
  frozen base weights of the adapted layers; the adapters themselves are left as they were. Negating
  the adapter matrices A and B one by one would not negate their product B @ A, so this is the
  exact reading of ``theta_0 - scale * tau`` for a LoRA model. The result is nonzero only on the
  adapted matrices.
* ``train.stop_forget_prob`` is rejected: the finetuning stage *raises* the forget probability and
  the negation is one shot; tune ``scale`` instead.
* Memory: the finetuned copy, the vector and (for a LoRA model) a merged copy of the original are
  held at once, i.e. about three to four model-sized sets of weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models import LoraSettings, maybe_add_lora, merged
from ..registry import METHODS
from .base import Procedure, check_choice, check_positive

DELTAS = ("full", "lora")


def task_vector(base_state: dict[str, Tensor], finetuned_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tau[k] = finetuned[k] - base[k]`` (float32) for every floating-point entry of ``base_state``.

    Integer entries are skipped (as the reference's ``TaskVector``); a key missing from
    ``finetuned_state`` or a shape mismatch is an error, since the two must be the same architecture.
    """
    tau = {}
    for name, base in base_state.items():
        if not torch.is_floating_point(base):
            continue
        if name not in finetuned_state:
            raise KeyError(f"'{name}' is in the base weights but not in the finetuned ones")
        ft = finetuned_state[name]
        if ft.shape != base.shape:
            raise ValueError(f"'{name}': finetuned shape {tuple(ft.shape)} != base shape {tuple(base.shape)}")
        tau[name] = ft.detach().float() - base.detach().to(ft.device).float()  # same shape as the weight
    return tau


def _target(model: Any, name: str) -> torch.nn.Parameter:
    """The parameter of ``model`` that holds the plain-model weight ``name``; for a peft LoRA layer,
    its frozen ``base_layer`` weight (the adapters stay as they are)."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    module_name, _, attr = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    module = getattr(module, "base_layer", module)  # peft LoRA wrapper -> the wrapped layer
    return getattr(module, attr)


@torch.no_grad()
def apply_task_vector(model: Any, tau: dict[str, Tensor], coef: float) -> None:
    """In place: ``theta[k] <- theta[k] + coef * tau[k]`` for every key of ``tau`` (reference
    ``apply_to(..., scaling_coef=coef)``). Negation with strength lambda: ``coef = -lambda``.

    Keys are plain-model parameter names (as :func:`effective_state` gives them); on a peft model
    the update goes into the base weights of the adapted layers.
    """
    for name, delta in tau.items():
        param = _target(model, name)
        param.copy_((param.float() + coef * delta.to(param.device)).to(param.dtype))


def effective_state(model: Any, *, consume: bool = False) -> dict[str, Tensor]:
    """The parameters of the plain model that ``model`` computes, by name (tied weights once).

    For a peft model the adapters are merged into the base weights first (``merge_and_unload``), on a
    deep copy unless ``consume=True`` (then ``model`` itself is merged and must not be used again).
    """
    if hasattr(model, "merge_and_unload"):
        model = merged(model if consume else copy.deepcopy(model))
    return {name: p.detach() for name, p in model.named_parameters()}


@METHODS.register(
    "task_vector",
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (negation), ICLR 2023, arXiv:2212.04089; "
          "stage 1 of F-Learning, Ni et al. 2024, arXiv:2311.08011",
    reference="mlfoundations/task_vectors src/task_vectors.py TaskVector (__neg__, apply_to)",
    kind="procedure",
)
@dataclass(kw_only=True)
class TaskVector(Procedure):
    """Finetune a copy on the forget set, then subtract the weight change: theta_0 - scale * (theta_ft - theta_0).

    ``train.*`` is the budget of the finetuning stage; the returned ``TrainResult`` is that stage's.
    """

    # lambda. Ilharco et al. §3 choose it on held-out data ([UNVERIFIED] grid 0.0..1.0); 1.0 = plain
    # negation, as the reference apply_to(scaling_coef=1.0) default. F-Learning [PROPOSED] sweep:
    # {0.1, 0.3, 0.5, 0.7, 1.0} (research notes methods_b.md §1).
    scale: float = 1.0
    delta: str = "full"  # "full" = full finetuning (Ilharco et al.); "lora" = F-Learning's LoRA variant
    lora_r: int = 8  # LoRA rank for delta="lora"; F-Learning [PROPOSED] r=8 (methods_b.md §1)
    lora_alpha: int = 16  # LoRA alpha for delta="lora"; F-Learning [PROPOSED] alpha=16 (methods_b.md §1)

    def __post_init__(self) -> None:
        check_choice("delta", self.delta, DELTAS)
        check_positive(scale=self.scale, lora_r=self.lora_r, lora_alpha=self.lora_alpha)
        for name in ("lora_r", "lora_alpha"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ConfigError(f"{name} must be a whole number, got {getattr(self, name)}")

    @property
    def needs_ref_model(self) -> bool:
        return False  # theta_0 is the model itself, read before it is edited

    @property
    def needs_retain(self) -> bool:
        return False

    def finetuned_copy(self, model: Any) -> Any:
        """A deep copy of ``model`` to finetune: wrapped in a fresh LoRA adapter (attention + MLP
        linears, peft ``all-linear``) for ``delta="lora"`` unless it already has adapters."""
        copied = copy.deepcopy(model)
        if self.delta == "lora" and not hasattr(copied, "merge_and_unload"):
            copied = maybe_add_lora(copied, LoraSettings(r=self.lora_r, alpha=self.lora_alpha))
        return copied

    def apply(self, model: Any, data: Any, cfg: Any, *, ref: Any | None = None,
              log_path: Any = None, desc: str = "train") -> Any:
        from ..train import Finetune, run

        if cfg.stop_forget_prob is not None:
            raise ConfigError("train.stop_forget_prob does not apply to task_vector: train.* is the budget of "
                              "the finetuning stage and the negation is one step; unset it and tune method.scale")
        finetuned = self.finetuned_copy(model)
        result = run(finetuned, Finetune(), data, cfg, log_path=log_path, desc=f"{desc}:finetune")
        tau = task_vector(effective_state(model), effective_state(finetuned, consume=True))
        del finetuned
        apply_task_vector(model, tau, -self.scale)  # theta_0 - scale * tau
        return result
