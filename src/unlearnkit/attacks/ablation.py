"""Direction ablation (orthogonalization): project an "unlearning direction" out of the residual stream
(Łucki et al. 2024, "An Adversarial Perspective on Machine Unlearning for AI Safety", TMLR 2025,
arXiv:2409.18025, attack 2; weight orthogonalization as in Arditi et al. 2024, "Refusal in Language
Models Is Mediated by a Single Direction", arXiv:2406.11717).

If unlearning hid the knowledge by pushing the activations of forget prompts along a few directions
(RMU's noise direction, a refusal direction), removing those directions brings the knowledge back.
Per chosen layer l, the direction r_l is a difference of mean activations at that layer's output on
the attacker's forget prompts (``AttackData.forget_train``); recovery is measured on ``forget_eval``:

- ``source="target"`` (Łucki's "ground_truth" direction, issue 6's definition):
  r_l = mean h_target,l - mean h_model,l over the same forget-prompt tokens. Needs the model before
  unlearning (``AttackData.target``; the audit passes it from ``--reference``).
- ``source="forget_vs_retain"`` (Łucki's "mmlu" direction; Arditi's difference of means): within the
  attacked model, mean h_l on forget prompts - mean h_l on retain prompts. Needs no target model,
  only ``AttackData.retain``.

Two ways to remove it (``apply``):

- ``"hooks"`` (Łucki's code): a forward hook on each chosen decoder layer replaces its output h by
  h - (h·r̂_l) r̂_l with that layer's own unit direction. The hooks live on the returned copy (they act
  in the audit's forward passes but are not kept by ``save_pretrained``).
- ``"weights"`` (Arditi; the default here, see Deviations): ONE unit direction r̂ (the normalized mean of the unit r̂_l over the chosen
  layers; ``layers="k"`` reads it at layer k only, as Arditi does) is removed from every matrix that
  writes to the residual stream: W <- W - r̂ r̂ᵀ W for the token (and position) embeddings, every
  attention output projection and MLP down projection (and r̂ is projected out of their biases).
  Exact and persistent: no residual-stream state ever has a component along r̂. Tied input/output
  embeddings are untied first, so the unembedding is unchanged.

Reference implementation: ``ethz-spylab/unlearning-vs-safety`` ``src/orthogonalization/orthogonalization.py``
(``compute_activations``: forward hooks on ``model.layers[l]`` outputs; ``compute_noise_direction``:
per-layer mean(h_unlearned) - mean(h_original); ``get_direction_ablation_output_hook``, taken from
``andyrdt/refusal_direction``: h <- h - (h·d̂) d̂ at every chosen layer).

Deviations (all stated):
- Łucki keep only "noise-triggering" questions (the original model answers correctly, the unlearned
  one does not); here every ``forget_train`` record is used (TOFU answers are free text, not MC).
- Łucki skip the first 40 tokens (``ignore_first_x_tokens``: the shared MC instruction) and drop
  outlier tokens by z-score; TOFU prompts are shorter than 40 tokens, so ``skip_first`` defaults to 0
  and no outlier filter is applied.
- The sign is target - model (the issue's definition; Łucki use unlearned - original). Projection
  does not depend on the sign.
- Which tokens enter the means is the option ``positions``: "prompt" (default: every prompt token,
  as Łucki average every question token), "last" (the last prompt token, Arditi's post-instruction
  position) or "all" (prompt and the attacker's known answer tokens).
- Default ``apply="weights"`` (Arditi's single direction removed everywhere), not Łucki's per-layer
  hooks: on the toolkit's tiny gradient-ascent test (tests/test_attack_ablation.py) the per-layer hooks
  recover nothing (ratio -0.01) while the single orthogonalized direction recovers ~0.11; GA does not
  hide knowledge along one direction per layer, and removing a direction everywhere is the stronger
  attacker. ``apply="hooks"`` reproduces the reference code.
- Łucki's "pca" and "wikitext" directions are not implemented.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ..data.format import encode
from ..errors import ConfigError, DataError, ModelError
from ..methods.base import check_choice
from ..models import decoder_layers
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

SOURCES = ("target", "forget_vs_retain")
APPLY = ("hooks", "weights")
POSITIONS = ("prompt", "last", "all")
# last name part of the modules inside a decoder layer that write to the residual stream (Llama / Qwen /
# Mistral / Gemma: o_proj, down_proj; GPT-2: c_proj; GPT-NeoX / Phi: dense, dense_4h_to_h, fc2; OPT:
# out_proj, fc2; Mixtral experts: w2)
WRITERS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h", "out_proj", "fc2", "w2")
EPS = 1e-8
_LAYERS = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*$")


# ------------------------------------------------------------------------------------- the maths
def unit(r: Tensor) -> Tensor:
    """r / |r|; the zero vector when |r| <= 1e-8 (nothing to remove: the ablation is then a no-op)."""
    norm = r.norm()
    return r / norm if norm > EPS else torch.zeros_like(r)


def project_out(x: Tensor, r: Tensor) -> Tensor:
    """x - (x·r̂) r̂ along the last axis. x: (..., d), r: (d,) -> (..., d), orthogonal to r."""
    u = unit(r.float()).to(x.dtype)  # (d,)
    return x - (x @ u).unsqueeze(-1) * u


def orthogonalize_linear(w: Tensor, r: Tensor) -> Tensor:
    """An ``nn.Linear`` weight (d_out = d, d_in) writing to a d-dim stream: W - r̂ r̂ᵀ W, so that every
    output W x is orthogonal to r (Arditi et al. 2024, weight orthogonalization)."""
    return project_out(w.t(), r).t()


def masked_mean(h: Tensor, mask: Tensor) -> tuple[Tensor, int]:
    """(mean over the positions where ``mask`` is True, their number). h: (B, T, d), mask: (B, T) -> (d,)."""
    n = int(mask.sum())
    total = (h.float() * mask.unsqueeze(-1)).sum(dim=(0, 1))  # (d,)
    return total / max(n, 1), n


def token_mask(lengths: Sequence[int], prompt_lens: Sequence[int], *, positions: str, skip_first: int,
               width: int) -> Tensor:
    """(B, width) bool: the token positions whose activations enter the mean.

    "prompt": 0 <= t < prompt_len; "last": t = prompt_len - 1; "all": t < length (prompt + answer);
    then positions t < ``skip_first`` are dropped.
    """
    t = torch.arange(width).unsqueeze(0)  # (1, width)
    n_prompt = torch.tensor(prompt_lens).unsqueeze(1)  # (B, 1)
    if positions == "prompt":
        mask = t < n_prompt
    elif positions == "last":
        mask = t == n_prompt - 1
    else:
        mask = t < torch.tensor(lengths).unsqueeze(1)
    return mask & (t >= skip_first)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """"all" -> 0..n-1; "1,3" -> [1, 3] (sorted, unique). Indices must be < ``n_layers``."""
    if spec.strip() == "all":
        return list(range(n_layers))
    chosen = sorted({int(s) for s in spec.split(",")})
    bad = [i for i in chosen if i >= n_layers]
    if bad:
        raise ConfigError(f"layers={spec!r}: the model has {n_layers} decoder layers (0..{n_layers - 1}); "
                          f"{bad} do not exist")
    return chosen


# ---------------------------------------------------------------------------------- activations
def _output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # decoder layers return h or (h, ...)


class LayerAblation:
    """Forward hook on a decoder layer: its output h becomes h - (h·r̂) r̂ (andyrdt/refusal_direction)."""

    def __init__(self, direction: Tensor) -> None:
        self.direction = unit(direction.detach().float())  # (d,)

    def __call__(self, module: Any, inputs: Any, out: Any) -> Any:
        h = project_out(_output(out), self.direction.to(_output(out).device))  # (B, T, d)
        return (h, *out[1:]) if isinstance(out, tuple) else h


def _batches(model: Any, tokenizer: Any, examples: Sequence[Any], data: AttackData, positions: str,
             batch_size: int) -> Iterator[tuple[Tensor, Tensor, list[int], list[int]]]:
    """(input_ids (B, T), attention_mask (B, T), lengths, prompt_lens) of the records' token ids;
    cut after the prompt unless ``positions == "all"`` (later tokens cannot change a prompt token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in range(0, len(examples), batch_size):
        seqs, n_prompt = [], []
        for ex in examples[i:i + batch_size]:
            enc = encode(ex.question, ex.answer, tokenizer, template=data.template, max_length=data.max_length)
            seqs.append(enc.input_ids if positions == "all" else enc.input_ids[:max(enc.prompt_len, 1)])
            n_prompt.append(enc.prompt_len)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        yield ids, mask, [len(s) for s in seqs], n_prompt


@torch.no_grad()
def layer_means(model: Any, tokenizer: Any, examples: Sequence[Any], data: AttackData, layers: list[int], *,
                positions: str, skip_first: int, batch_size: int = 8) -> tuple[dict[int, Tensor], int]:
    """Mean output activation of each chosen decoder layer over the chosen tokens of ``examples``
    ({layer: (d,)}, number of tokens). ``model`` is left as it was (hooks removed, mode restored)."""
    blocks, seen = decoder_layers(model), {}
    handles = [blocks[l].register_forward_hook(lambda m, i, o, l=l: seen.__setitem__(l, _output(o))) for l in layers]
    was_training, sums, n = model.training, {l: 0.0 for l in layers}, 0
    try:
        model.eval()
        for ids, attn, lengths, n_prompt in _batches(model, tokenizer, examples, data, positions, batch_size):
            model(input_ids=ids, attention_mask=attn)
            keep = token_mask(lengths, n_prompt, positions=positions, skip_first=skip_first, width=ids.shape[1])
            for l in layers:
                mean, k = masked_mean(seen[l], keep)
                sums[l] = sums[l] + mean * k
            n += int(keep.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {l: sums[l] / max(n, 1) for l in layers}, n


# ------------------------------------------------------------------------- weight orthogonalization
def _untie_output_embeddings(model: Any) -> None:
    """Give the LM head its own copy of tied input embeddings, so editing the embeddings leaves it alone."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


def _writers(layer: torch.nn.Module, hidden: int) -> list[tuple[torch.nn.Module, bool]]:
    """(module, transposed) of a decoder layer's residual writers: Linear (out = hidden) or HF Conv1D."""
    found = []
    for name, mod in layer.named_modules():
        if name.rsplit(".", 1)[-1] not in WRITERS or getattr(mod, "weight", None) is None:
            continue
        if isinstance(mod, torch.nn.Linear) and mod.out_features == hidden:
            found.append((mod, False))
        elif type(mod).__name__ == "Conv1D" and mod.weight.shape[1] == hidden:
            found.append((mod, True))
    return found


@torch.no_grad()
def orthogonalize_weights(model: Any, r: Tensor) -> int:
    """Remove direction ``r`` (d,) from every residual-stream writer of ``model`` in place (embeddings,
    attention output and MLP down projections, their biases); returns the number of modules edited."""
    hidden, blocks = r.numel(), decoder_layers(model)
    _untie_output_embeddings(model)
    inside = {id(m) for m in blocks.modules()}
    edited = 0
    for mod in model.modules():  # token / position embeddings: rows are d-vectors added to the stream
        if isinstance(mod, torch.nn.Embedding) and id(mod) not in inside and mod.embedding_dim == hidden:
            mod.weight.copy_(project_out(mod.weight, r))
            edited += 1
    for i, layer in enumerate(blocks):
        writers = _writers(layer, hidden)
        if not writers:
            raise ModelError(f"cannot find the modules of decoder layer {i} that write to the residual stream "
                             f"(looked for {', '.join(WRITERS)}); use apply='hooks', which works on any layer list")
        for mod, transposed in writers:
            w = mod.weight
            mod.weight.copy_(project_out(w, r) if transposed else orthogonalize_linear(w, r))
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(project_out(mod.bias, r))
            edited += 1
    return edited


# ------------------------------------------------------------------------------------- the attack
@ATTACKS.register(
    "ablation",
    paper="Łucki et al. 2024, An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025 "
    "(orthogonalization); Arditi et al. 2024, Refusal in Language Models Is Mediated by a Single Direction, "
    "arXiv:2406.11717 (weight orthogonalization)",
    reference="ethz-spylab/unlearning-vs-safety src/orthogonalization/orthogonalization.py; "
    "andyrdt/refusal_direction (ablation hook, weight orthogonalization)",
    cost="no training: one forward pass over forget_train (and retain or the target model's pass); "
    "budget has no effect",
)
@dataclass(kw_only=True)
class Ablation(Attack):
    """Direction ablation: remove per-layer mean-difference directions from the residual stream."""

    source: str = "target"  # target: mean h_target - mean h_model on forget prompts (Łucki "ground_truth",
    # issue 6); forget_vs_retain: mean h_model on forget - on retain prompts (Łucki "mmlu", no target needed)
    layers: str = "all"  # "all" or comma-separated decoder-layer indices; Łucki tried all, 5,6,7 and single layers
    apply: str = "weights"  # weights: one direction orthogonalized out of every residual writer (Arditi;
    # stronger on the tiny GA test, see module doc); hooks: per-layer output hooks, one direction per layer (Łucki's code)
    positions: str = "prompt"  # prompt | last | all: tokens averaged (Łucki: every question token)
    skip_first: int = 0  # leading tokens left out of the means (Łucki: 40, longer than a TOFU prompt)
    batch_size: int = 8  # records per forward pass (memory only)

    def __post_init__(self) -> None:
        check_choice("source", self.source, SOURCES)
        check_choice("apply", self.apply, APPLY)
        check_choice("positions", self.positions, POSITIONS)
        if not isinstance(self.layers, str) or not (self.layers.strip() == "all" or _LAYERS.match(self.layers)):
            raise ConfigError(f"layers={self.layers!r}: give 'all' or comma-separated decoder-layer indices "
                              "such as '0,1,2'")
        if not isinstance(self.skip_first, int) or self.skip_first < 0:
            raise ConfigError(f"skip_first must be an integer >= 0 (Łucki: 40), got {self.skip_first!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def _check(self, data: AttackData) -> None:
        if not data.forget_train:
            raise DataError("direction ablation reads its direction from forget prompts the attacker knows: "
                            "AttackData.forget_train is empty (the audit splits --forget into forget_train and "
                            "the held-out forget_eval)")
        if self.source == "target" and data.target is None:
            raise DataError("ablation source='target' needs the model before unlearning (AttackData.target): give "
                            "the audit --reference TARGET_DIR, or use source='forget_vs_retain' (needs --retain)")
        if self.source == "forget_vs_retain" and not data.retain:
            raise DataError("ablation source='forget_vs_retain' needs retain records (AttackData.retain): give "
                            "the audit --retain FILE, or use source='target' (needs --reference)")

    def directions(self, model: Any, tokenizer: Any, data: AttackData, layers: list[int]) -> dict[int, Tensor]:
        """{layer: r_l (d,)}: the mean-activation difference of :attr:`source` at each chosen layer."""
        kw = {"positions": self.positions, "skip_first": self.skip_first, "batch_size": self.batch_size}
        mine, n = layer_means(model, tokenizer, data.forget_train, data, layers, **kw)
        if n == 0:
            raise DataError(f"no forget_train tokens are left with positions={self.positions!r} and skip_first="
                            f"{self.skip_first} (records without a question have no prompt); lower skip_first "
                            "or use positions='all'")
        if self.source == "target":
            if len(decoder_layers(data.target)) != len(decoder_layers(model)):
                raise ModelError("the target model (AttackData.target) has a different number of decoder layers "
                                 "than the attacked model; give the model it was unlearned from")
            other, _ = layer_means(data.target, tokenizer, data.forget_train, data, layers, **kw)
            return {l: other[l] - mine[l] for l in layers}
        other, _ = layer_means(model, tokenizer, data.retain, data, layers, **kw)
        return {l: mine[l] - other[l] for l in layers}

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """A copy of ``model`` with the directions removed (hooks or edited weights); ``model`` is untouched."""
        self._check(data)
        layers = parse_layers(self.layers, len(decoder_layers(model)))
        dirs = self.directions(model, tokenizer, data, layers)
        attacked = copy.deepcopy(model)
        attacked.eval()
        info: dict[str, Any] = {"source": self.source, "apply": self.apply, "layers": layers,
                                "direction_norms": {str(l): float(dirs[l].norm()) for l in layers},
                                "records": len(data.forget_train)}
        if self.apply == "hooks":
            blocks = decoder_layers(attacked)
            for l in layers:
                blocks[l].register_forward_hook(LayerAblation(dirs[l]))
        else:
            r = unit(torch.stack([unit(dirs[l]) for l in layers]).mean(0))  # (d,) one direction
            info["edited_modules"] = orthogonalize_weights(attacked, r)
        return Attacked(attacked, info=info)
