"""Quantization attack (Zhang et al. 2024, "Catastrophic Failure of LLM Unlearning via
Quantization", ICLR 2025, arXiv:2410.16454).

The attack is simply to use the unlearned model at low precision: unlearning with a small learning
rate (and a utility constraint) moves each weight by less than a quantization bin, so the unlearned
and the original weights round to the same grid point and the forgotten knowledge comes back
(paper: 21% of the forgotten knowledge retained at full precision, 83% after 4-bit quantization).

Reference implementation: ``zzwjames/FailureLLMUnlearning`` ``utils.py::load_model`` (loads the
unlearned checkpoint with bitsandbytes ``BitsAndBytesConfig(load_in_4bit=True)`` / ``load_in_8bit``;
``GPTQConfig`` is imported), evaluated by ``eval.py``.

When it works (measured, tests/test_attack_quantize.py): round-to-nearest is unbiased for weights that
sit at random places in their bins, so on a full-precision target we found no recovery in 120
configurations (GA / GradDiff / NPO, 4 or 8 bits, channel or tensor scales). It does undo small-lr
unlearning of a target whose weights already lie on the grid (a checkpoint that was quantized,
dequantized, then unlearned): ratio 0.82 on the tiny model, 0.01 from a normal target.

Deviations (all stated):
- bitsandbytes / GPTQ / AWQ kernels need a GPU here, so this is an exact CPU *simulation* of
  round-to-nearest (RTN) weight-only quantization: every ``nn.Linear`` weight is replaced by its
  quantize-then-dequantize value (:func:`quantize_rtn`); activations and the forward pass stay in
  full precision, which is what a weight-only quantizer computes up to kernel rounding.
- The grid is integer RTN, not bitsandbytes' default 4-bit data type (fp4, a non-uniform code with
  block-wise absmax scales). Which quantizer the paper's RTN rows use exactly (symmetric or
  zero-point) is UNVERIFIED in our notes, so ``symmetric`` is an option; the default is the
  asymmetric min-max zero-point RTN of GPTQ-style weight-only quantization (range widened to
  [min(w, 0), max(w, 0)] so 0 is exact, integer zero point). ``symmetric=True`` is absmax RTN.
- Per-tensor statistics are float32; the result is cast back to the weight's dtype.
- Biases, norms and embeddings stay in full precision; ``lm_head`` is skipped by default
  (``skip``) as weight-only quantizers usually leave it, which is configurable.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..methods.base import check_choice
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

GRANULARITIES = ("channel", "group", "tensor")
_NAME_PART = re.compile(r"^[A-Za-z0-9_.]+$")  # what a torch module name can contain


def _rtn_rows(w: Tensor, *, bits: int, symmetric: bool) -> Tensor:
    """Quantize-dequantize each row of ``w`` (R, C) with its own scale (and zero point)."""
    if symmetric:  # grid {-2^(b-1), ..., 2^(b-1) - 1} * scale, scale = absmax / (2^(b-1) - 1)
        q_max, q_min = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        scale = (w.abs().amax(dim=1, keepdim=True) / q_max).clamp(min=1e-8)  # (R, 1)
        return torch.clamp(torch.round(w / scale), q_min, q_max) * scale
    q_max = 2**bits - 1  # grid {0, ..., 2^b - 1}: (q - zero) * scale spans [min, max]
    # the range is widened to contain 0 (GPTQ's quantizer convention), so 0 is exactly representable
    w_min = w.amin(dim=1, keepdim=True).clamp(max=0.0)  # (R, 1)
    w_max = w.amax(dim=1, keepdim=True).clamp(min=0.0)  # (R, 1)
    scale = ((w_max - w_min) / q_max).clamp(min=1e-8)  # (R, 1)
    zero = torch.clamp(-torch.round(w_min / scale), 0, q_max)  # (R, 1) integer zero point
    q = torch.clamp(torch.round(w / scale) + zero, 0, q_max)  # (R, C) integers in [0, q_max]
    return (q - zero) * scale


def quantize_rtn(w: Tensor, *, bits: int, granularity: str, group_size: int, symmetric: bool) -> Tensor:
    """Round-to-nearest weight quantization, returned dequantized (same shape and dtype as ``w``).

    ``w``: (out, in) as an ``nn.Linear`` weight. ``channel``: one scale per output row;
    ``group``: one per run of ``group_size`` consecutive inputs in a row (the last run of a row may
    be shorter when ``in % group_size != 0``); ``tensor``: one for the whole matrix.
    """
    w32 = w.detach().float().reshape(w.shape[0], -1) if w.dim() > 1 else w.detach().float().reshape(1, -1)
    if granularity == "tensor":
        out = _rtn_rows(w32.reshape(1, -1), bits=bits, symmetric=symmetric).reshape(w32.shape)
    elif granularity == "channel":
        out = _rtn_rows(w32, bits=bits, symmetric=symmetric)
    else:  # group: each (out, <=group_size) column block, row by row
        out = torch.cat([_rtn_rows(blk, bits=bits, symmetric=symmetric)
                         for blk in w32.split(group_size, dim=1)], dim=1)
    return out.reshape(w.shape).to(w.dtype)


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(s in name for s in skip)


def _linear_weights(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, bool]]:
    """(name, module, transposed) of the Linear-like layers: nn.Linear and HF Conv1D (GPT-2, (in, out))."""
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            found.append((name, mod, False))
        elif type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None:
            found.append((name, mod, True))
    return found


@ATTACKS.register(
    "quantize",
    paper="Zhang et al. 2024, Catastrophic Failure of LLM Unlearning via Quantization (ICLR 2025), arXiv:2410.16454",
    reference="zzwjames/FailureLLMUnlearning utils.py::load_model (bitsandbytes load_in_4bit / load_in_8bit)",
    cost="no training: one pass over the weights (seconds); budget has no effect",
)
@dataclass(kw_only=True)
class Quantize(Attack):
    """Weight-only round-to-nearest quantization (simulated on CPU) of the unlearned model.

    Every Linear weight not matched by ``skip`` is replaced by its ``bits``-bit RTN value; the data
    are not used. Small-lr unlearning that stays inside one quantization bin is undone.
    """

    bits: int = 4  # paper's main attack is 4-bit (Tab. 1-3); 8-bit is also reported
    granularity: str = "channel"  # channel | group | tensor; per-output-channel RTN (AWQ/GPTQ "RTN" baseline style)
    group_size: int = 128  # used when granularity="group"; 128 as in AWQ/GPTQ 4-bit settings
    symmetric: bool = False  # False: min-max zero-point RTN (UNVERIFIED which the paper used; see module doc)
    skip: str = "lm_head,embed"  # comma-separated name parts left in full precision (usual for weight-only)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 16:
            raise ConfigError(f"bits must be an integer in 2..16 (4 or 8 in the paper), got {self.bits!r}")
        check_choice("granularity", self.granularity, GRANULARITIES)
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError(f"group_size must be a positive integer (128 in AWQ/GPTQ), got {self.group_size!r}")
        bad = [s for s in self.skip_parts if not _NAME_PART.match(s)]
        if bad:
            raise ConfigError(f"skip={self.skip!r}: {bad} cannot be part of a module name; give comma-separated "
                              "name parts such as 'lm_head,embed' (or '' to quantize every Linear layer)")

    @property
    def skip_parts(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.skip.split(",") if s.strip())

    def run(self, model: Any, tokenizer: Any, data: AttackData | None = None) -> Attacked:
        """A deep copy of ``model`` whose Linear weights (except ``skip``) are RTN-quantized."""
        attacked = copy.deepcopy(model)
        n = 0
        with torch.no_grad():
            for name, mod, transposed in _linear_weights(attacked):
                if _skipped(name, self.skip_parts):
                    continue
                w = mod.weight.t() if transposed else mod.weight  # (out, in)
                q = quantize_rtn(w, bits=self.bits, granularity=self.granularity, group_size=self.group_size,
                                 symmetric=self.symmetric)
                mod.weight.copy_(q.t() if transposed else q)
                n += 1
        return Attacked(attacked, info={"quantized_layers": n})
