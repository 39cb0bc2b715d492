"""Latent perturbation attack: one residual-stream vector, found by PGD, added at a decoder layer's
input so the model says the forgotten answers (the attack stage of LAU, Yuan et al. 2024, "Towards
Robust Knowledge Unlearning: An Adversarial Framework for Assessing and Improving Unlearning
Robustness in LLMs", arXiv:2408.10682, Section 4).

LAU's inner problem is an adversary that perturbs the input of decoder layer ``l`` within an L2
ball to *minimise* the forget answers' cross-entropy. If unlearning only hid the knowledge, a small
push in latent space brings it back; used as an audit attack, the push is fitted on
``AttackData.forget_train`` and recovery is measured on the held-out ``forget_eval``.

Reference implementation: ``HongbangYuan/RobustUnlearning`` ``LLaMA_Factory/src/llmtuner/train/
adv_npo/trainer.py`` (``adv_attack``: PGD with unit-L2 normalised steps of eps/steps, L2
projection, random start) and ``.../model/lat_model.py`` (delta added to ``hidden_states`` just
before decoder layer ``perturb_layer``). The maths (projection, step, random start, step size,
hook point, auto layer) is imported from :mod:`unlearnkit.methods.lau`.

Deviations (all stated):
- **Universal vector.** LAU's delta is (B, T, d), one vector per token of each training batch,
  refitted every step. An attack on a *held-out* set needs something that transfers, so here delta
  is one vector (d,) shared by every record and every position, fitted on all of ``forget_train``
  (full-batch gradient, summed over records in chunks of ``batch_size``).
- **Every position.** delta is added at every token (prompt, answer, padding, and each generated
  token): the returned model must work in plain ``model(input_ids=..., attention_mask=...)`` and
  ``generate`` calls, where a hook cannot know where the prompt ends. Padding is on the right (or
  masked in attention), so it does not change the supervised positions.
- **Radius.** ``epsilon_mode="relative"`` (default, LAU's convention here) uses
  ``eps = epsilon * sqrt(mean_t ||h_t||^2)``, the RMS norm of the clean latents over the non-padding
  tokens of ``forget_train``: a vector of norm eps repeated over an example's T tokens has norm
  ``epsilon * ||h_i||`` when its tokens have the mean norm, which is LAU's per-example radius
  ``epsilon * ||h_i||_2``. ``epsilon=0.1`` is LAU's toolkit default [UNVERIFIED against the paper];
  ``epsilon_mode="absolute"`` takes ``epsilon`` as the radius (RWKU scripts: 8 on Llama-3-8B).
- **No range clamp.** ``adv_attack`` clamps ``h + delta`` into [min(h), max(h)] element-wise; that
  makes delta position-dependent, so a universal vector is bounded by the L2 ball only.
- **Steps.** LAU trains with 6 PGD steps per batch; an attack can afford more, so ``steps=20``
  (times ``budget``) [toolkit choice], with the same step size eps/steps. The lowest-loss delta seen
  is kept (plain PGD returns the last one), which costs one extra pass over forget_train.
- The random start (``random_init``, as ``adv_attack``) is seeded by ``seed``.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..data.pair import build_paired
from ..errors import ConfigError, DataError
from ..logprobs import IGNORE, forward, token_logp
from ..methods.base import check_choice, check_positive
from ..methods.lau import (EPSILON_MODES, auto_layer, latent_hook, map_hidden_states, pgd_step, project_l2,
                           pgd_step_size, random_delta)
from ..models import decoder_layers
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

BUFFER = "unlearnkit_latent_delta"  # the non-persistent buffer holding delta on the hooked block


# ----------------------------------------------------------------------------------- pure maths
def universal_radius(norms: Tensor, mask: Tensor, epsilon: float) -> float:
    """``epsilon`` times the RMS of the clean latents' token norms ``norms`` (any shape, e.g. (B, T))
    over the tokens where ``mask`` (same shape) is 1: ``epsilon * sqrt(sum ||h_t||^2 / n_tokens)``."""
    m = mask.to(norms)
    return float(epsilon * ((norms * m).pow(2).sum() / m.sum().clamp_min(1)).sqrt())


def broadcast(delta: Tensor, like: Tensor) -> Tensor:
    """The universal ``delta`` (d,) as a (B, T, d) perturbation of ``like``: the same vector everywhere."""
    return delta.to(like).expand_as(like)  # like's dtype and device


def universal_pgd(loss_grad: Callable[[Tensor], tuple[float, Tensor]], dim: int, *, eps: float, steps: int,
                  random_init: bool) -> tuple[Tensor, float]:
    """PGD over one vector (d,) that lowers a loss within the L2 ball of radius ``eps``: LAU's
    ``pgd_step`` (unit-L2 gradient step of eps/steps, then projection) on delta viewed as (1, 1, d),
    without the range clamp. ``loss_grad(delta (d,)) -> (loss, d loss / d delta (d,))``. Returns the
    lowest-loss delta seen (the final one included) and its loss."""
    zero = torch.zeros(1, 1, dim)  # (1, 1, d): h = 0 and an infinite range make the clamp a no-op
    delta = project_l2(random_delta(zero, eps, torch.ones(1, 1)), eps) if random_init else zero.clone()
    best, best_loss = delta, float("inf")
    for i in range(steps + 1):
        loss, grad = loss_grad(delta.reshape(dim))
        if loss < best_loss:
            best, best_loss = delta, loss
        if i < steps:  # the last iteration only scores the final delta
            delta = pgd_step(delta, grad.reshape(1, 1, dim), h=zero, eps=eps, step_size=pgd_step_size(eps, steps),
                             lo=-float("inf"), hi=float("inf"))
    return best.reshape(dim).detach(), best_loss


# ----------------------------------------------------------------------------------- model glue
def _add_delta(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Persistent forward pre-hook: add the block's ``BUFFER`` (d,) at every position of its input
    ``hidden_states`` (``args[0]`` or the keyword, as :func:`unlearnkit.methods.lau.latent_hook`)."""
    delta = getattr(module, BUFFER)
    return map_hidden_states(module, args, kwargs, lambda hs: hs + broadcast(delta, hs))


def install_delta(block: torch.nn.Module, delta: Tensor) -> None:
    """Make ``block`` add ``delta`` (d,) to its input in every later call. delta is a non-persistent
    buffer (moves with ``.to()``, not saved in the state dict); the hook survives ``copy.deepcopy``."""
    p = next(block.parameters(), None)
    block.register_buffer(BUFFER, delta.detach().clone().to(p if p is not None else delta), persistent=False)
    block.register_forward_pre_hook(_add_delta, with_kwargs=True)


def forget_chunks(model: Any, tokenizer: Any, data: AttackData, batch_size: int) -> list[dict[str, Tensor]]:
    """forget_train tokenized and collated in chunks of ``batch_size`` (right-padded), on the model's device."""
    paired = build_paired(None, data.forget_train, [], tokenizer, template=data.template,
                          max_length=data.max_length, seed=data.seed)
    device = next(model.parameters()).device
    n = len(paired.forget)
    return [{k: t.to(device) for k, t in paired.forget_batch(list(range(i, min(i + batch_size, n))))["forget"].items()}
            for i in range(0, n, batch_size)]


def answer_nll(model: Any, block: torch.nn.Module, chunks: list[dict[str, Tensor]], delta: Tensor | None,
               *, grad: bool = False) -> tuple[float, Tensor | None]:
    """Mean answer-token NLL over all chunks (token-weighted, as one big batch) with ``delta`` (d,)
    added at ``block``'s input at every position (None = clean), and with ``grad`` its gradient
    with respect to delta (d,), accumulated chunk by chunk so only one chunk's graph is in memory."""
    count = sum(int((c["labels"][:, 1:] != IGNORE).sum()) for c in chunks)
    total, g = 0.0, None if delta is None else torch.zeros_like(delta)
    for view in chunks:
        d = None if delta is None else delta.detach().to(view["input_ids"].device).reshape(1, 1, -1).requires_grad_(grad)
        with torch.set_grad_enabled(grad), latent_hook(block, delta=d):
            logp, _ = token_logp(forward(model, view).logits, view["labels"])  # (B, T-1), 0 off the answers
            loss = -logp.sum() / max(count, 1)
        if grad and d is not None:
            g = g + torch.autograd.grad(loss, d)[0].reshape(-1).to(g)
        total += float(loss.detach())
    return total, g


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter while active (only delta needs a gradient, so no
    activation is kept for weight gradients), the flags restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _latent_norms(model: Any, block: torch.nn.Module, chunks: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, int]:
    """Token norms of ``block``'s clean input over all chunks, flattened: (N,), the mask (N,), and d."""
    norms, masks, dim = [], [], 0
    with torch.no_grad():
        for view in chunks:
            store: dict[str, Tensor] = {}
            with latent_hook(block, store=store):
                forward(model, view)
            dim = store["h"].shape[-1]
            norms.append(store["h"].float().norm(dim=-1).reshape(-1).cpu())  # (B*T,)
            masks.append(view["attention_mask"].reshape(-1).cpu())
    return torch.cat(norms), torch.cat(masks), dim


@ATTACKS.register(
    "latent",
    paper="Yuan et al. 2024, Towards Robust Knowledge Unlearning (LAU attack stage: latent PGD), arXiv:2408.10682",
    reference="HongbangYuan/RobustUnlearning LLaMA_Factory/src/llmtuner/train/adv_npo/trainer.py (adv_attack); "
    ".../model/lat_model.py",
    cost="budget x `steps` PGD iterations, each one forward+backward pass over all of forget_train "
    "(in chunks of batch_size), plus 3 more passes; no weight is trained",
)
@dataclass(kw_only=True)
class Latent(Attack):
    """Latent perturbation: a universal residual-stream vector at a decoder layer's input, fitted by
    PGD on ``forget_train`` to make the model say the forget answers, baked into a copy of the model.

    The copy adds the vector at every token position through a forward pre-hook, so plain forward
    passes and greedy generation both see it.
    """

    layer: int = -1  # decoder layer whose INPUT gets delta; -1 = max(1, round(L/8)) (LAU: layer 4 of 32, §4.3)
    steps: int = 20  # PGD iterations (times `budget`); LAU trains with 6 (adv_npo_steps), an attack affords more
    epsilon: float = 0.1  # L2 radius; relative default = LAU's toolkit default (RWKU scripts: absolute 8)
    epsilon_mode: str = "relative"  # "relative" = epsilon * RMS token norm of the clean latents; "absolute"
    random_init: bool = True  # adv_attack random_init=True (N(0,I) scaled to r*eps, r ~ U(0,1))
    batch_size: int = 8  # records per forward pass (memory only: the gradient is over all of forget_train)
    seed: int = 0  # seeds the random start

    def __post_init__(self) -> None:
        check_choice("epsilon_mode", self.epsilon_mode, EPSILON_MODES)
        check_positive(epsilon=self.epsilon)
        for name in ("layer", "steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.layer < -1:
            raise ConfigError(f"layer must be a decoder layer index >= 0, or -1 for auto; got {self.layer}")
        check_positive(steps=self.steps, batch_size=self.batch_size)

    def layer_index(self, model: Any) -> int:
        n = len(decoder_layers(model))
        layer = auto_layer(n) if self.layer == -1 else self.layer
        if layer >= n:
            raise ConfigError(f"latent attack layer={layer} but the model has {n} decoder layers (0..{n - 1}); "
                              "choose a smaller layer or -1 for auto")
        return layer

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """A deep copy of ``model`` (eval mode) whose decoder layer ``layer`` adds the fitted delta to its input."""
        if not data.forget_train:
            raise DataError("the latent attack fits its perturbation on forget records: AttackData.forget_train "
                            "is empty. Split the forget set (unlearnkit.attacks.relearn.split_forget) into a part "
                            "the attacker fits on (forget_train) and a held-out part where recovery is measured")
        steps, layer = self.scaled(self.steps), self.layer_index(model)
        attacked = copy.deepcopy(model).eval()
        block = decoder_layers(attacked)[layer]
        chunks = forget_chunks(attacked, tokenizer, data, self.batch_size)
        norms, mask, dim = _latent_norms(attacked, block, chunks)  # (N,), (N,), d
        eps = universal_radius(norms, mask, self.epsilon) if self.epsilon_mode == "relative" else float(self.epsilon)
        before, _ = answer_nll(attacked, block, chunks, None)
        with torch.random.fork_rng(devices=[]), _frozen(attacked):
            torch.manual_seed(self.seed)
            delta, after = universal_pgd(lambda d: answer_nll(attacked, block, chunks, d, grad=True), dim, eps=eps,
                                         steps=steps, random_init=self.random_init)
        install_delta(block, delta)
        return Attacked(attacked, info={"layer": layer, "eps": eps, "delta_norm": float(delta.norm()),
                                        "loss_before": before, "loss_after": after, "steps": steps,
                                        "records": len(data.forget_train)})
