"""What every robustness attack shares (issue 6: the audit): the attack contract and its inputs.

An attack tries to bring an unlearned model's forgotten knowledge back. It is a dataclass whose
fields are its settings (defaults quoted from the paper that introduced it), registered in
``unlearnkit.registry.ATTACKS`` under its file name with ``paper``, ``reference`` and ``cost``
(what one run computes, and what ``budget`` scales), and implements
``run(model, tokenizer, data) -> Attacked``.

Three kinds of attack fit this contract:

- **model attacks** (relearning, quantization, latent perturbation, direction ablation) return an
  edited or trained *copy* of the model in ``Attacked.model``;
- **input attacks** (paraphrase, multiple-choice format, in-context relearning, adversarial suffix)
  return the model unchanged and the forget records as they rewrite them in ``Attacked.examples``;
- **read-out attacks** (``readout = True``: probes, relation-graph reconstruction) do not make the
  model say anything: they read the knowledge out of its internals and return their measurement in
  ``Attacked.scores``; :meth:`Attack.baseline` gives the same measurement from the model's own
  outputs (or chance), the zero point of their recovery ratio.

``run`` must never modify ``model``: the audit applies several attacks to the same unlearned model,
and to the retain model (the honest floor). The audit scores the forget metrics of each
``Attacked`` on ``data.forget_eval`` (or ``Attacked.examples``) and reports the recovery ratio
``(m_attacked - m_unlearned) / (m_target - m_unlearned)`` (``metrics.recovery``); for read-out
attacks ``m_target`` is the read-out of the target model and ``m_unlearned`` the baseline of the
attacked model.

``budget`` (every attack has it, default 1.0 = the paper's setting) multiplies the attack's
compute: steps, epochs, candidates or records, as its ``cost`` entry says. Use :meth:`Attack.scaled`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..data.format import PromptTemplate
from ..data.records import Example
from ..errors import ConfigError


@dataclass
class AttackData:
    """The records an attack may use.

    ``forget_train``: forget records the attacker is allowed to see (e.g. relearning's small part);
    ``forget_eval``: the forget records recovery is measured on (disjoint from ``forget_train`` when
    the attack trains on forget data); ``retain``: other records (benign finetuning, probes);
    ``target``: the model before unlearning, when the attacker is assumed to have it (direction
    ablation); None otherwise.
    """

    forget_train: list[Example]
    forget_eval: list[Example]
    retain: list[Example] = field(default_factory=list)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512
    seed: int = 0
    target: Any = None


@dataclass
class Attacked:
    """What an attack returns.

    ``model``: the model to evaluate (a new copy for model attacks; the input model itself, unmodified,
    for input and read-out attacks). ``examples``: the forget records as an input attack rewrites them
    (same order and length as ``data.forget_eval``; None = unchanged). ``scores``: a read-out attack's
    measurement, ``{metric name: value}``. ``info``: what is worth reporting (the suffix found, the
    layer chosen, per-layer accuracies...), JSON-serialisable.
    """

    model: Any
    examples: list[Example] | None = None
    scores: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Attack:
    """Base of attacks: subclasses are ``@dataclass(kw_only=True)`` and implement :meth:`run`."""

    kind: ClassVar[str] = "model"  # "model" | "input" | "read-out" (documentation: docs/attacks.md)
    readout: ClassVar[bool] = False  # True: run() returns Attacked.scores, baseline() gives their zero point
    budget: float = 1.0  # multiplies the attack's compute (see its registry `cost`); 1.0 = the paper's setting

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.readout:
            cls.kind = "read-out"

    def check_budget(self) -> None:
        """ConfigError unless ``budget`` is a number > 0."""
        if not isinstance(self.budget, (int, float)) or isinstance(self.budget, bool) or not self.budget > 0:
            raise ConfigError(f"budget={self.budget!r} must be a number > 0 (1.0 = the paper's compute; "
                              "0.5 halves it, 2 doubles it)")

    def scaled(self, n: int) -> int:
        """``n`` (a step / epoch / candidate count) times ``budget``, rounded, at least 1."""
        self.check_budget()
        return max(1, round(n * self.budget))

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """Attack ``model`` (never modify it) and return what the audit evaluates."""
        raise NotImplementedError

    def baseline(self, model: Any, tokenizer: Any, data: AttackData) -> dict[str, float]:
        """Read-out attacks: the same measurement as ``run(...).scores`` without the attack (from the
        model's outputs, or chance) — the zero point of their recovery ratio."""
        raise NotImplementedError(f"{type(self).__name__} is a read-out attack and must define baseline()")
