"""Latent Adversarial Unlearning (LAU: AdvGA / AdvNPO; Yuan et al. 2024, "Towards Robust Knowledge
Unlearning: An Adversarial Framework for Assessing and Improving Unlearning Robustness in LLMs",
arXiv 2408.10682, Section 4).

Min-max objective: ``max_theta E_{D_f}[ min_{||delta||_2 <= eps} CE(pi_theta2(pi_theta1(x_f) + delta), y_f) ]``.
The *inner* problem is an adversary that perturbs the residual stream at the input of decoder layer
``layer`` so that the model recalls the forget answer (it *minimises* the answer cross-entropy);
the *outer* problem applies the unlearning loss to that perturbed forward pass:
AdvGA = ``-NLL`` with delta, AdvNPO = NPO with ``pi_theta(y|x)`` taken under delta (the reference
log-probs are not perturbed). Retain terms are computed without perturbation.

Reference implementation: ``HongbangYuan/RobustUnlearning`` ``LLaMA_Factory/src/llmtuner/train/
adv_npo/trainer.py`` (``adv_attack`` = the PGD below, ``LATSFTTrainer`` = the outer step) and
``.../model/lat_model.py`` (delta added to ``hidden_states`` just before decoder layer
``perturb_layer``). PGD, as in ``adv_attack``: model in eval mode; delta (B, T, d), one vector per
token; random init N(0, I) rescaled per example to norm r*eps, r ~ U(0, 1); each of ``steps``
iterations takes g = grad_delta CE normalised to unit L2 per example, sets
``delta <- delta - (eps/steps) * g``, projects onto the per-example L2 ball (norm over the flattened
[T*d]) and clamps ``h + delta`` into [min(h), max(h)] (global min/max of the clean latents of the
batch); the returned delta is detached and used for one optimiser step.

Deviations / options:

- ``epsilon_mode="relative"`` (default) sets each example's radius to ``epsilon * ||h_i||_2``
  (the norm of its clean latents over the non-padding tokens) instead of an absolute radius. The
  official RWKU scripts use an absolute ``--adv_npo_epsilon 8`` for Llama-3-8B-Instruct, a value
  tied to that model's residual-stream scale at layer 4 (research notes: "rescale by the ratio of
  residual norms" for other models). The relative default 0.1 (delta at most a tenth of the
  latents' norm) is a toolkit choice [UNVERIFIED against the paper]; ``epsilon_mode="absolute",
  epsilon=8`` reproduces the official setting on Llama-3-8B.
- ``layer=-1`` picks ``max(1, round(L / 8))`` for an L-layer model: the paper's layer 4 of 32 (its
  Section 5 ablation: layer 0, the embeddings, is ineffective; shallow layers work best).
- Padding: delta is multiplied by the attention mask (zero at padding positions), so padding takes
  none of the L2 budget; the official code perturbs every position. The relative radius uses the
  norm of the non-padding latents; the clamp range is the global min/max over the whole batch, as
  in the code.
- The attack loss is the mean token cross-entropy over the batch's answer tokens (HF ``loss``),
  as the code's ``model(...).loss``; the AdvGA variant is not in the official repository (the
  README recommends AdvNPO); here it is GA (``-mean NLL``) on the perturbed pass, as the paper's
  equation.
- The official trainer is LLaMA-Factory's; optimisation settings (AdamW, lr 1e-6, cosine, warmup
  20 steps) are ``train.*`` options, not method fields.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..errors import ConfigError
from ..logprobs import batch_nll, forward, sequence_logp
from ..models import decoder_layers
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, ref_logp, retain_term
from .grad_ascent import ga_loss
from .npo import npo_loss

OBJECTIVES = ("npo", "ga")
EPSILON_MODES = ("relative", "absolute")


# ----------------------------------------------------------------------------------- pure maths
def _per_example(x: Tensor | float, like: Tensor) -> Tensor:
    """A float or a (B,) tensor -> (B, 1, 1) broadcastable against ``like`` (B, T, d)."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1) if t.dim() else t.expand(like.shape[0]).reshape(-1, 1, 1)


def _norms(x: Tensor) -> Tensor:
    """(B, T, d) -> (B, 1, 1) L2 norm of each example's flattened [T*d] tensor."""
    return x.flatten(1).norm(dim=1).reshape(-1, 1, 1)


def project_l2(delta: Tensor, eps: Tensor | float) -> Tensor:
    """Project each example of ``delta`` (B, T, d) onto the L2 ball of radius ``eps`` (float or (B,)):
    ``delta * min(1, eps / ||delta||)`` with the norm over the flattened [T*d] (``adv_attack``)."""
    scale = (_per_example(eps, delta) / _norms(delta).clamp_min(1e-12)).clamp(max=1.0)  # (B, 1, 1)
    return delta * scale


def clamp_to_range(delta: Tensor, h: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """The delta that puts ``h + delta`` inside [lo, hi] (element-wise clamp), i.e. clamp(h+delta) - h."""
    return (h + delta).clamp(min=lo, max=hi) - h


def pgd_step(delta: Tensor, grad: Tensor, *, h: Tensor, eps: Tensor | float, step_size: Tensor | float,
             lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """One PGD step that *lowers* the loss: ``delta - step_size * grad / ||grad||`` (per example),
    then the L2 projection, then the clamp of ``h + delta`` into [lo, hi]. All (B, T, d)."""
    g = grad / _norms(grad).clamp_min(1e-12)  # (B, T, d) unit L2 per example
    delta = project_l2(delta - step_size * g, eps)
    return clamp_to_range(delta, h, lo, hi)


def random_delta(h: Tensor, eps: Tensor | float, mask: Tensor) -> Tensor:
    """N(0, I) noise (zero where ``mask`` (B, T) is 0), rescaled per example to norm r*eps with
    r ~ U(0, 1): the ``random_init`` of ``adv_attack``. Uses the global torch RNG (seeded by the loop)."""
    noise = torch.randn_like(h) * mask.unsqueeze(-1).to(h)  # (B, T, d)
    r = torch.rand(h.shape[0], 1, 1, dtype=h.dtype, device=h.device)  # (B, 1, 1)
    return noise / _norms(noise).clamp_min(1e-12) * r * _per_example(eps, h)


def pgd_attack(loss_fn: Callable[[Tensor], Tensor], h: Tensor, *, eps: Tensor | float, steps: int,
               mask: Tensor, random_init: bool = True) -> Tensor:
    """Latent PGD of ``adv_attack``: a detached delta (B, T, d) within the per-example L2 ball of
    radius ``eps`` that lowers ``loss_fn(delta)`` (a scalar), with ``h + delta`` kept within
    [min(h), max(h)]. ``h``: (B, T, d) clean latents; ``mask``: (B, T) 1 where delta may be non-zero."""
    h = h.detach()
    lo, hi = h.min(), h.max()  # global range of the clean latents of the batch
    m = mask.unsqueeze(-1).to(h)  # (B, T, 1)
    delta = random_delta(h, eps, mask) if random_init else torch.zeros_like(h)
    delta = clamp_to_range(project_l2(delta, eps), h, lo, hi) * m
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(delta), delta)
        delta = pgd_step(delta.detach(), grad * m, h=h, eps=eps, step_size=pgd_step_size(eps, steps), lo=lo, hi=hi)
        delta = delta * m
    return delta.detach()


def pgd_step_size(eps: Tensor | float, steps: int) -> Tensor | float:
    """eps / steps, per example when eps is a (B,) tensor (``adv_attack``'s step size)."""
    return eps / steps if not isinstance(eps, Tensor) else (eps / steps).reshape(-1, 1, 1)


# ----------------------------------------------------------------------------------- model glue
def map_hidden_states(module: Any, args: tuple, kwargs: dict, fn: Callable[[Tensor], Tensor]) -> tuple[tuple, dict]:
    """In a forward pre-hook (``with_kwargs=True``) on a decoder block: replace its input
    ``hidden_states`` (B, T, d) by ``fn(hidden_states)``. It is ``args[0]`` (how Llama/GPT-2 models
    call their blocks in transformers 5.x) or the keyword argument."""
    positional = bool(args)
    if not positional and "hidden_states" not in kwargs:
        raise RuntimeError(f"cannot find hidden_states in the call of {type(module).__name__}")
    hs = fn(args[0] if positional else kwargs["hidden_states"])
    return ((hs, *args[1:]), kwargs) if positional else (args, {**kwargs, "hidden_states": hs})


@contextmanager
def latent_hook(block: torch.nn.Module, *, delta: Tensor | None = None,
                store: dict[str, Tensor] | None = None) -> Iterator[None]:
    """While active, a forward pre-hook on ``block`` records its input ``hidden_states`` (B, T, d)
    in ``store["h"]`` and/or adds ``delta`` to it (:func:`map_hidden_states`).
    The hook is always removed on exit, even on an error. It is safe under gradient checkpointing:
    transformers checkpoints a block's ``forward``, so module hooks run outside the recomputation."""

    def edit(hs: Tensor) -> Tensor:
        if store is not None:
            store["h"] = hs
        return hs if delta is None else hs + delta.to(hs.dtype)

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return map_hidden_states(module, args, kwargs, edit)

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def auto_layer(n_layers: int) -> int:
    """The paper's layer 4 of 32 scaled to an ``n_layers`` model: ``max(1, round(n_layers / 8))``."""
    return max(1, round(n_layers / 8))


def _unwrap(model: Any) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@METHODS.register(
    "lau",
    paper="Yuan et al. 2024, Towards Robust Knowledge Unlearning (LAU: AdvGA/AdvNPO), arXiv:2408.10682",
    reference="HongbangYuan/RobustUnlearning LLaMA_Factory/src/llmtuner/train/adv_npo/trainer.py "
    "(adv_attack, LATSFTTrainer); .../model/lat_model.py",
    kind="loss",
)
@dataclass(kw_only=True)
class LAU(Method):
    """Latent adversarial unlearning: NPO or GA on a forward pass whose layer input is perturbed by a PGD adversary.

    Each step first finds, by ``steps`` PGD iterations, the residual-stream perturbation delta (an
    L2 ball of radius ``epsilon`` per example) at the input of decoder layer ``layer`` that makes
    the model most likely to recall the forget answers, then takes the unlearning loss
    (``objective``) with that delta injected; the retain term is computed without delta.
    """

    objective: str = "npo"  # "npo" = AdvNPO (README's recommendation), "ga" = AdvGA (paper eq., §4)
    beta: float = 0.1  # NPO β; the AdvNPO RWKU script leaves dpo_beta at its default 0.1
    layer: int = -1  # decoder layer whose INPUT gets delta; -1 = max(1, round(L/8)) (paper §4.3: 4 of 32)
    steps: int = 6  # PGD iterations, paper §4.3 / adv_npo_steps=6 (0 = random delta only)
    epsilon: float = 0.1  # L2 radius; relative default is a toolkit choice (RWKU scripts: absolute 8)
    epsilon_mode: str = "relative"  # "relative" = epsilon*||h_i||, "absolute" = epsilon (official code)
    random_init: bool = True  # adv_attack random_init=True (N(0,I) scaled to r*eps, r ~ U(0,1))
    forget_weight: float = 1.0  # npo_coeff=1 (paper §2.2: equal forget/retain weights)
    retain_weight: float = 1.0  # grad_diff=1 / KL_coeff=1 (paper §2.2)
    retain_loss: str = "nll"  # "nll" = GDR, "kl" = KLR, "none" = plain AdvNPO / AdvGA

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("epsilon_mode", self.epsilon_mode, EPSILON_MODES)
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(beta=self.beta, epsilon=self.epsilon, forget_weight=self.forget_weight,
                       retain_weight=self.retain_weight)
        if self.layer < -1:
            raise ConfigError(f"layer must be a decoder layer index >= 0, or -1 for auto; got {self.layer}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0 (PGD iterations; 0 = random delta only), got {self.steps}")

    @property
    def ref_logp_views(self) -> tuple[str, ...]:  # type: ignore[override]
        """AdvNPO needs the (unperturbed) reference log-probs of the forget answers, pre-computed."""
        return ("forget",) if self.objective == "npo" else ()

    def layer_index(self, model: Any) -> int:
        n = len(decoder_layers(_unwrap(model)))
        layer = auto_layer(n) if self.layer == -1 else self.layer
        if layer >= n:
            raise ConfigError(f"lau layer={layer} but the model has {n} decoder layers (0..{n - 1}); "
                              "choose a smaller layer or -1 for auto")
        return layer

    def setup(self, model: Any, ref: Any | None) -> None:
        self.layer_index(model)  # fail before training on a layer outside the model

    def attack(self, model: Any, view: dict[str, Tensor]) -> tuple[Tensor, float]:
        """The PGD delta (B, T, d) for one forget batch and the clean (unperturbed) answer NLL.
        Runs the unwrapped model in eval mode and restores its train/eval mode."""
        net = _unwrap(model)
        block = decoder_layers(net)[self.layer_index(model)]
        was_training = net.training
        net.eval()
        try:
            store: dict[str, Tensor] = {}
            with torch.no_grad(), latent_hook(block, store=store):
                clean = batch_nll(forward(net, view).logits, view["labels"])
            h, mask = store["h"].float(), view["attention_mask"]  # (B, T, d), (B, T)
            eps = self._radius(h, mask)

            def loss_fn(delta: Tensor) -> Tensor:
                with latent_hook(block, delta=delta):
                    return batch_nll(forward(net, view).logits, view["labels"])

            delta = pgd_attack(loss_fn, h, eps=eps, steps=self.steps, mask=mask, random_init=self.random_init)
        finally:
            net.train(was_training)
        return delta, float(clean)

    def _radius(self, h: Tensor, mask: Tensor) -> Tensor | float:
        if self.epsilon_mode == "absolute":
            return self.epsilon
        return self.epsilon * (h * mask.unsqueeze(-1).to(h)).flatten(1).norm(dim=1)  # (B,)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        view = batch["forget"]
        delta, clean_nll = self.attack(model, view)
        with latent_hook(decoder_layers(_unwrap(model))[self.layer_index(model)], delta=delta):
            logits = forward(model, view).logits  # (B, T, V) under the adversarial delta
        if self.objective == "npo":
            logp = sequence_logp(logits, view["labels"])  # (B,) summed: NPO's sequence likelihood
            forget = npo_loss(logp, ref_logp(batch, "forget").to(logp), self.beta)  # reference unperturbed
        else:
            forget = ga_loss(logits, view["labels"])
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)  # no delta (as the code)
        out = combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
        out.logs.update(clean_nll=clean_nll, adv_nll=float(batch_nll(logits.detach(), view["labels"])),
                        delta_norm=float(delta.flatten(1).norm(dim=1).mean()))
        return out
