"""Mechanistic (localized) unlearning: train only a localized parameter subset with a log(1 - p)
forget loss (Guo, Syed, Sheshadri, Ewart, Dziugaite 2024, "Mechanistic Unlearning: Robust
Knowledge Unlearning and Editing via Mechanistic Localization", arXiv 2410.12949, ICML 2025).

Reference code: ``magikarp01/mechanistic-unlearning`` (``cb_utils/mask_utils.py``
``apply_localized_gradients`` and ``get_top_components_no_subcomponents``;
``finetuning_scripts/localized_finetuning_script_*.py``; ``create_localizations.ipynb`` for the
attribution-patching / causal-tracing graphs) and its ``tasks`` submodule (``inference_utils.py``
``log_1_minus_p``).

* Forget loss ``log_1_minus_p``: L = -mean_t log(1 - p(y_t | x)) over the answer tokens, computed
  as logsumexp(non-target logits) - logsumexp(all logits); a token whose log p is already below
  ``logp_floor`` (-5, i.e. p < 0.0067) contributes 0, as in the code.
* Objective: ``forget_weight * L_forget + retain_weight * NLL(retain)`` (the code's c_f = 5 in its
  rebuttal configs, maintain CE weight 1; its Pile LM term is not included).
* Components: each decoder layer's MLP (all its weight matrices together) and each attention
  projection (q/k/v/o, heads combined), as the code's ranked localizations use them.
* Localization (``--localization_type`` of the code):

  - ``mlp_layers`` = all MLP matrices of fixed early layers (the paper's fact-lookup "FLU"
    localization: Llama-3-8B layers 1-4, Gemma-7B 2-7). The code's FLU layers come from path
    patching / probing per model; here ``layers`` is set by the user, defaulting to layers
    1..ceil(L/8) (1-4 of Llama-3-8B's 32).
  - ``all_mlps``; ``none`` = every parameter.
  - The output-tracing (OT) and random baselines take components in an order until their
    parameter count reaches the budget of ``mlp_layers`` (the code's
    ``param_count=manual_param_count``), with :func:`take_until_budget`: a component that would
    overshoot is skipped and later, smaller ones may still fit, so the count ends within one
    component of the budget. The order is:
  - ``random``: a seeded random permutation (``seed``);
  - ``attribution`` (the code's ``localized_ap``; attribution patching, Syed, Rager, Conmy 2023,
    arXiv 2310.10348, after Nanda): score = |sum over the scored forget examples and positions of
    grad_a log p(answer) . (a_clean - a_corrupted)| for each component output a, from one forward
    with hooks and one backward per batch (the gradient is taken at the clean run). ``corruption``
    picks a_corrupted: ``"mean"`` = the component's mean output over the batch's non-padding
    positions (a mean-ablation baseline that needs no second input) or ``"noise"`` = its output
    when Gaussian noise is added to the prompt-token embeddings, as for causal tracing;
  - ``causal_tracing`` (the code's ``localized_ct``; ROME, Meng et al. 2022, arXiv 2202.05262):
    noise of std ``noise_scale`` (3, ROME) x the std of the prompt-token embeddings is added to
    the prompt (question) token embeddings; then each component's clean output is restored (at
    all positions) in the noised run, and its indirect effect = log p(answer | restored) -
    log p(answer | noised), summed over examples. Cost: 2 + (number of components) forwards per
    batch (5 x 32 + 2 for a 32-layer Llama: its MLP and q/k/v/o per layer), fine for small models;
    ``localize_examples`` (32) bounds the number of forget examples scored, for both ranked
    localizations.

  The ranked localizations are computed in ``prepare`` (which has the data) on
  ``localize_examples`` seeded forget examples; ``select_params`` applies them. After
  ``select_params`` (and after the run), ``method.chosen`` lists the trained components' module
  names and ``method.scores`` maps every component to its score (ranked localizations); the choice
  is also logged at INFO level on the ``unlearnkit.methods.mech_unlearn`` logger.

Deviations: the code scores components with TransformerLens hooks on its AP/CT graphs; here the
hooks are PyTorch forward hooks on the HF modules (MLP modules, attention projection Linears), so
q/k/v are patched before the rotary embedding. The noise covers the whole prompt (question and
template tokens), not only the subject tokens as in ROME, because the subject span is not marked
in the data. Both ranked localizations rank by the absolute score (|indirect effect| for causal
tracing), as the research notes describe the code's ranking by |attribution| (UNVERIFIED in the
code for causal tracing); ``scores`` keeps the signed effect.
"""
from __future__ import annotations

import logging
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..logprobs import IGNORE, forward, sequence_logp
from ..models import decoder_layers
from ..registry import METHODS
from .base import (LossOutput, Method, check_choice, check_positive, combine, freeze_all_but, retain_term,
                   unfreeze)

LOCALIZATIONS = ("mlp_layers", "all_mlps", "random", "attribution", "causal_tracing", "none")
RANKED = ("attribution", "causal_tracing")  # need prepare() on the forget data
CORRUPTIONS = ("mean", "noise")
log = logging.getLogger(__name__)


def log_1_minus_p_loss(logits: Tensor, labels: Tensor, *, logp_floor: float = -5.0) -> Tensor:
    """-mean over supervised tokens of log(1 - p(label)); tokens with log p < ``logp_floor`` give 0.

    logits (B, T, V) and labels (B, T) (-100 = not supervised), next-token aligned inside.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # (B, T-1, V), (B, T-1)
    mask = labels != -100
    safe = labels.clamp_min(0)
    logz = torch.logsumexp(logits, -1)  # (B, T-1)
    target = logits.gather(-1, safe[..., None]).squeeze(-1)  # (B, T-1) target logit
    others = logits.scatter(-1, safe[..., None], float("-inf"))  # the target removed
    log1mp = torch.logsumexp(others, -1) - logz  # (B, T-1) log(1 - p), stable
    active = mask & (target - logz >= logp_floor)  # p already tiny: no more push
    return -(log1mp * active).sum() / mask.sum().clamp_min(1)


def take_until_budget(order: Sequence[int], sizes: Sequence[int], budget: int) -> list[int]:
    """Indices taken from ``order`` (best first) while the summed ``sizes`` stays <= ``budget``;
    an index that would overshoot is skipped and later, smaller ones may still fit."""
    chosen, total = [], 0
    for i in order:
        if total + sizes[i] <= budget:
            chosen.append(i)
            total += sizes[i]
    return chosen


def position_mean(acts: Tensor, mask: Tensor) -> Tensor:
    """(d,) mean of ``acts`` (B, T, d) over the positions where ``mask`` (B, T) is true."""
    m = mask.to(acts.dtype)[..., None]  # (B, T, 1)
    return (acts * m).sum((0, 1)) / m.sum().clamp_min(1)


def attribution_score(grad: Tensor, clean: Tensor, corrupted: Tensor) -> Tensor:
    """Attribution patching's linear estimate grad . (clean - corrupted), summed (scalar).
    grad, clean: (B, T, d); corrupted: (B, T, d) or broadcastable (d,)."""
    return (grad.float() * (clean.float() - corrupted.float())).sum()


class Component(NamedTuple):
    layer: int
    kind: str  # "mlp" | "attn"
    name: str  # module name in the model, e.g. model.layers.1.mlp
    module: torch.nn.Module
    params: list[torch.nn.Parameter]  # its weight matrices (what the localization trains)

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def _components(model: Any) -> list[Component]:
    """Each MLP (all its weight matrices) and each attention projection of every decoder layer."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for i, block in enumerate(decoder_layers(model)):
        for name, mod in block.named_children():
            if "mlp" in name:
                ws = [p for n, p in mod.named_parameters() if n.endswith("weight")]
                out.append(Component(i, "mlp", names.get(id(mod), f"{i}.{name}"), mod, ws))
            elif "attn" in name or "attention" in name:
                for sub, proj in mod.named_children():
                    ws = [p for n, p in proj.named_parameters(recurse=False) if n == "weight"]
                    if ws:
                        out.append(Component(i, "attn", names.get(id(proj), f"{i}.{name}.{sub}"), proj, ws))
    return out


# ------------------------------------------------------------------ hooks and runs for the ranking
def _tensor(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _hooks(pairs: list[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Forward hooks registered for the block and always removed."""
    handles = [m.register_forward_hook(h) for m, h in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _capture(comps: list[Component]) -> Iterator[dict[int, Tensor]]:
    """{component index: its output (B, T, d)} of the forwards run inside the block."""
    acts: dict[int, Tensor] = {}

    def hook(i: int) -> Callable:
        def f(module: Any, args: Any, output: Any) -> None:
            acts[i] = _tensor(output)
        return f

    with _hooks([(c.module, hook(i)) for i, c in enumerate(comps)]):
        yield acts


@contextmanager
def _restored(comp: Component, clean: Tensor) -> Iterator[None]:
    """The component's output replaced by ``clean`` (at all positions) inside the block."""
    def f(module: Any, args: Any, output: Any) -> Any:
        return (clean, *output[1:]) if isinstance(output, tuple) else clean

    with _hooks([(comp.module, f)]):
        yield


def _answer_logp(model: Any, embeds: Tensor, view: dict[str, Tensor]) -> Tensor:
    """Scalar log-likelihood of the answers, summed over examples and answer tokens."""
    logits = model(inputs_embeds=embeds, attention_mask=view["attention_mask"]).logits
    return sequence_logp(logits, view["labels"]).sum()


def _prompt_mask(view: dict[str, Tensor]) -> Tensor:
    """(B, T) the prompt (question + template) tokens: unsupervised and not padding."""
    return (view["labels"] == IGNORE) & view["attention_mask"].bool()


def _noised(embeds: Tensor, mask: Tensor, std: float, gen: torch.Generator) -> Tensor:
    """ROME's corruption: Gaussian noise of std ``std`` added to the embeddings where ``mask``."""
    noise = torch.randn(embeds.shape, generator=gen) * std  # (B, T, d), drawn on CPU: reproducible
    return embeds + noise.to(embeds) * mask[..., None].to(embeds)


def _embed(model: Any, view: dict[str, Tensor]) -> Tensor:
    return model.get_input_embeddings()(view["input_ids"]).detach()  # (B, T, d)


def prompt_embedding_std(model: Any, batches: list[dict[str, Tensor]]) -> float:
    """Std of the prompt-token embedding values (ROME's ``collect_embedding_std``, over prompts)."""
    with torch.no_grad():
        vals = [_embed(model, v)[_prompt_mask(v)].float().flatten() for v in batches]
    return float(torch.cat(vals).std())


def attribution_scores(model: Any, comps: list[Component], batches: list[dict[str, Tensor]], *,
                       corruption: str, noise_std: float, seed: int) -> list[float]:
    """|sum over batches of grad . (clean - corrupted)| per component (attribution patching)."""
    totals, gen = [0.0] * len(comps), torch.Generator().manual_seed(seed)
    for view in batches:
        clean = _embed(model, view)
        corrupted: dict[int, Tensor] = {}
        if corruption == "noise":
            with torch.no_grad(), _capture(comps) as corrupted:
                _answer_logp(model, _noised(clean, _prompt_mask(view), noise_std, gen), view)
        with torch.enable_grad(), _capture(comps) as acts:
            metric = _answer_logp(model, clean.requires_grad_(True), view)
            found = sorted(acts)
            grads = torch.autograd.grad(metric, [acts[i] for i in found], allow_unused=True)
        valid = view["attention_mask"].bool()
        for i, g in zip(found, grads):
            if g is not None:
                base = corrupted[i] if corruption == "noise" else position_mean(acts[i].detach(), valid)
                totals[i] += float(attribution_score(g, acts[i].detach(), base))
    return [abs(t) for t in totals]


def causal_tracing_scores(model: Any, comps: list[Component], batches: list[dict[str, Tensor]], *,
                          noise_std: float, seed: int) -> list[float]:
    """Indirect effect per component: log p(answer) with its clean output restored in the noised
    run minus log p(answer) in the noised run, summed over examples (ROME's causal tracing)."""
    totals, gen = [0.0] * len(comps), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for view in batches:
            clean = _embed(model, view)
            with _capture(comps) as acts:
                _answer_logp(model, clean, view)
            noisy = _noised(clean, _prompt_mask(view), noise_std, gen)  # the same noise for every restore
            base = float(_answer_logp(model, noisy, view))
            for i, comp in enumerate(comps):
                if i in acts:
                    with _restored(comp, acts[i]):
                        totals[i] += float(_answer_logp(model, noisy, view)) - base
    return totals


@METHODS.register(
    "mech_unlearn",
    paper="Guo et al. 2024, Mechanistic Unlearning, arXiv:2410.12949 (ICML 2025)",
    reference="magikarp01/mechanistic-unlearning cb_utils/mask_utils.py; tasks inference_utils.py log_1_minus_p",
    kind="loss",
)
@dataclass(kw_only=True)
class MechUnlearn(Method):
    """Localized unlearning: log(1 - p) forget loss + retain NLL on a chosen parameter subset."""

    localization: str = "mlp_layers"  # --localization_type: manual_interp (FLU) ~ mlp_layers
    layers: list[int] | None = None  # FLU layers; None = 1..ceil(L/8) (Llama-3-8B: 1-4)
    forget_weight: float = 5.0  # forget_loss_coef c_f, rebuttal configs
    retain_weight: float = 1.0  # maintain CE weight
    retain_loss: str = "nll"
    logp_floor: float = -5.0  # log_1_minus_p zeroes tokens with log p below this
    seed: int = 0  # draws of the random localization, the scored examples and the noise
    corruption: str = "mean"  # attribution's corrupted output: "mean" (no second input) | "noise" (as CT)
    noise_scale: float = 3.0  # noise std / embedding std, ROME causal tracing (3x)
    localize_examples: int = 32  # forget examples scored by attribution / causal_tracing (cost bound)

    def __post_init__(self) -> None:
        check_choice("localization", self.localization, LOCALIZATIONS)
        check_choice("retain_loss", self.retain_loss, ("nll", "kl", "none"))
        check_choice("corruption", self.corruption, CORRUPTIONS)
        check_positive(forget_weight=self.forget_weight, retain_weight=self.retain_weight,
                       noise_scale=self.noise_scale)
        if self.localize_examples < 1:
            raise ConfigError(f"localize_examples must be >= 1, got {self.localize_examples}")
        self._frozen: list[torch.nn.Parameter] = []
        self.scores: dict[str, float] = {}  # component -> score, filled by prepare (ranked localizations)
        self.chosen: list[str] = []  # module names of the trained components, filled by select_params

    def prepare(self, model: Any, data: Any, cfg: Any) -> None:
        """Rank the components on the forget data (attribution / causal_tracing only)."""
        self.scores = {}
        if self.localization not in RANKED:
            return
        comps, batches = _components(model), self._score_batches(model, data, getattr(cfg, "batch_size", 8))
        needs_noise = self.localization == "causal_tracing" or self.corruption == "noise"
        noise_std = self.noise_scale * prompt_embedding_std(model, batches) if needs_noise else 0.0
        was_training = model.training
        model.eval()
        try:
            if self.localization == "attribution":
                scores = attribution_scores(model, comps, batches, corruption=self.corruption,
                                            noise_std=noise_std, seed=self.seed)
            else:
                scores = causal_tracing_scores(model, comps, batches, noise_std=noise_std, seed=self.seed)
        finally:
            model.train(was_training)
        self.scores = {c.name: s for c, s in zip(comps, scores)}

    def _score_batches(self, model: Any, data: Any, batch_size: int) -> list[dict[str, Tensor]]:
        """``localize_examples`` seeded forget examples ("forget" view), batched, on the model's device."""
        n = len(data.forget)
        idx = sorted(random.Random(self.seed).sample(range(n), min(n, self.localize_examples)))
        device = next(model.parameters()).device
        return [{k: t.to(device) for k, t in data.forget_batch(idx[s:s + batch_size])["forget"].items()}
                for s in range(0, len(idx), max(1, batch_size))]

    def components(self, model: Any) -> list[Component]:
        """The components this localization trains."""
        comps = _components(model)
        n_layers = len(decoder_layers(model))
        layers = self.layers if self.layers is not None else list(range(1, 1 + max(1, math.ceil(n_layers / 8))))
        if any(not 0 <= i < n_layers for i in layers):
            raise ConfigError(f"mech_unlearn layers={layers}; the model has layers 0..{n_layers - 1}")
        flu = [c for c in comps if c.kind == "mlp" and c.layer in layers]
        if self.localization == "mlp_layers":
            return flu
        if self.localization == "all_mlps":
            return [c for c in comps if c.kind == "mlp"]
        if self.localization == "none":
            return comps
        if self.localization == "random":
            order = random.Random(self.seed).sample(range(len(comps)), len(comps))
        else:
            order = self._ranked(comps)
        budget = sum(c.size for c in flu)  # the code's param_count=manual_param_count
        return [comps[i] for i in take_until_budget(order, [c.size for c in comps], budget)]

    def _ranked(self, comps: list[Component]) -> list[int]:
        """Component indices by decreasing |score| (ties keep the model's order)."""
        missing = [c.name for c in comps if c.name not in self.scores]
        if missing:
            raise RuntimeError(f"mech_unlearn localization={self.localization!r} has no score for {missing[:3]}: "
                               "call prepare(model, data, cfg) on this model first (unlearnkit.train.run does)")
        return sorted(range(len(comps)), key=lambda i: -abs(self.scores[comps[i].name]))

    def select_params(self, model: Any) -> None:
        picked = self.components(model)
        if not picked:
            raise ConfigError(f"mech_unlearn localization={self.localization!r} selected no parameter "
                              f"(decoder layers of {type(model).__name__} have no MLP / attention projections?)")
        self.chosen = [c.name for c in picked]
        log.info("mech_unlearn localization=%s trains %d components (%d parameters): %s", self.localization,
                 len(picked), sum(c.size for c in picked), ", ".join(self.chosen))
        self._frozen = freeze_all_but(model, {id(p) for c in picked for p in c.params})

    def teardown(self, model: Any) -> None:
        unfreeze(self._frozen)
        self._frozen = []

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        forget = log_1_minus_p_loss(forward(model, view).logits, view["labels"], logp_floor=self.logp_floor)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
