"""What every unlearning method shares: the loss contract and small composable helpers.

A *loss method* is a dataclass whose fields are its hyperparameters and which implements
``loss(model, batch, ref) -> LossOutput``. The shared loop (``unlearnkit.train``) does everything
else. ``batch`` maps view names to tokenized tensors: ``"forget"`` (the forget examples),
``"retain"`` (cycled retain examples) and any extra forget-anchored views a method asks for via
``extra_views`` (e.g. IdkDPO's "I don't know" answers). When ``ref_logp_views`` is non-empty the loop
computes those views' sequence log-probs under the initial model once, before training, and puts
them in ``batch[view]["ref_logp"]`` (B,) - so NPO-style methods keep no second model resident.

Hooks, in the order the loop calls them: ``prepare(model, data, cfg)`` (before anything else: build
per-example views such as SeUL's span labels or WHP's generic labels, train auxiliary models) ->
``select_params`` -> ``setup`` -> ``loss`` every micro-step (``LossOutput.stop`` ends the run, e.g.
KGA's alignment threshold) -> ``teardown``.

A *procedure method* (:class:`Procedure`, registry ``kind="procedure"``) edits the model instead of
only adding a loss (task-vector negation, F-Learning, neuron editing): it implements
``apply(model, data, cfg, ...)`` and may call the shared loop for its training stages.
``unlearnkit.train.run_method`` dispatches between the two kinds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.records import Example
from ..logprobs import batch_nll, forward, kl_on_supervised

RETAIN_KINDS = ("nll", "kl", "none")


@dataclass
class LossOutput:
    """The scalar loss to minimise and a dict of named float terms for the log."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    stop: bool = False  # True ends training after this step (a method's own stopping rule)


class Method:
    """Base of loss methods. Subclasses are dataclasses; override the class attributes they need."""

    ref_logp_views: tuple[str, ...] = ()  # views whose initial-model log-probs are pre-computed

    @property
    def needs_ref_model(self) -> bool:
        """True when a live frozen copy of the initial model is needed (KL terms, RMU)."""
        return getattr(self, "retain_loss", "none") == "kl"

    @property
    def needs_retain(self) -> bool:
        return getattr(self, "retain_loss", "none") != "none"

    def extra_views(self, ex: Example, rng: random.Random, pool: list[Example]) -> dict[str, tuple[str | None, str]]:
        """Extra (question, answer) views built from each forget example; ``pool`` = retain set."""
        return {}

    def prepare(self, model: Any, data: Any, cfg: Any) -> None:
        """Called first by the loop with the model, the ``PairedData`` (its ``examples``,
        ``tokenizer``, ``template`` and ``max_length`` say how it was built) and the
        ``TrainConfig``: add per-example views, train or load auxiliary models. Default: nothing."""

    def select_params(self, model: Any) -> None:
        """Called before the optimizer is built: set ``requires_grad`` to restrict training
        (e.g. RMU's layer subset). Default: train whatever is trainable."""

    def setup(self, model: Any, ref: Any | None) -> None:
        """Called once before training (e.g. to draw RMU's random direction)."""

    def teardown(self, model: Any) -> None:
        """Called once after training (e.g. to remove hooks)."""

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        raise NotImplementedError


class Procedure(Method):
    """Base of procedure methods: ``apply`` edits the model in place (and may train it with
    ``unlearnkit.train.run`` for its stages); it returns the ``TrainResult`` of what it trained."""

    def apply(self, model: Any, data: Any, cfg: Any, *, ref: Any | None = None,
              log_path: Any = None, desc: str = "train") -> Any:
        raise NotImplementedError

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        raise TypeError(f"{type(self).__name__} is a procedure method: run it with unlearnkit.train.run_method, "
                        "which calls its apply()")


def freeze_all_but(model: Any, keep: set[int]) -> list[Any]:
    """Set ``requires_grad=False`` on every trainable parameter whose id is not in ``keep`` (a
    method's ``select_params``); returns them for :func:`unfreeze` in ``teardown``."""
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def unfreeze(params: Any) -> None:
    """Undo :func:`freeze_all_but`, so the model object is left as it came."""
    for p in params:
        p.requires_grad_(True)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ConfigError naming the allowed values."""
    from ..errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(choices)}")


def check_positive(**values: float) -> None:
    """Raise a ConfigError for a hyperparameter that must be > 0."""
    from ..errors import ConfigError

    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


def ref_logp(batch: dict[str, dict[str, Tensor]], name: str) -> Tensor:
    """The pre-computed reference sequence log-probs (B,) of view ``name``, or a clear error."""
    view = batch[name]
    if "ref_logp" not in view:
        raise RuntimeError(
            f"batch['{name}'] has no 'ref_logp'; train with unlearnkit.train.run, which computes "
            "the reference log-probs of the method's ref_logp_views before the first step"
        )
    return view["ref_logp"]


def nll(model: Any, view: dict[str, Tensor]) -> Tensor:
    """Scalar HF-style mean token NLL of a view (answer tokens only)."""
    return batch_nll(forward(model, view).logits, view["labels"])


def retain_term(model: Any, ref: Any | None, view: dict[str, Tensor] | None, kind: str) -> Tensor:
    """The retain loss shared by GradDiff/NPO/SimNPO/...: ``nll``, ``kl`` (to the frozen
    reference, open-unlearning's ``retain_loss_type: KL``) or ``none`` (returns 0)."""
    if kind == "none" or view is None:
        return torch.zeros(())
    if kind == "nll":
        return nll(model, view)
    if ref is None:
        raise RuntimeError("retain_loss='kl' needs the reference model; the loop did not provide it")
    logits = forward(model, view).logits
    with torch.no_grad():
        ref_logits = forward(ref, view).logits
    return kl_on_supervised(logits, ref_logits, view["labels"])


def combine(forget: Tensor, retain: Tensor, *, forget_weight: float, retain_weight: float) -> LossOutput:
    """``gamma * L_forget + alpha * L_retain`` with both terms logged."""
    total = forget_weight * forget + retain_weight * retain
    return LossOutput(total, {"forget_loss": float(forget.detach()), "retain_loss": float(retain.detach())})
