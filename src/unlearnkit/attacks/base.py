"""What every robustness attack shares (issue 6: the audit): the attack contract and its inputs.

An attack takes an unlearned model and tries to bring the forgotten knowledge back. It is a
dataclass whose fields are its settings (defaults quoted from the paper that introduced it), with a
``budget`` knob where the compute is tunable, registered in ``unlearnkit.registry.ATTACKS`` under
its file name, and implements ``run(model, tokenizer, data) -> attacked model``. ``run`` must not
modify ``model`` (the audit applies several attacks to the same unlearned model, and to the retain
model as the honest floor): it returns a new model (a copy, edited or trained).

The audit evaluates the forget metrics of the attacked model on ``data.forget_eval`` and reports
the recovery ratio (``metrics.recovery.recovery_ratio``) against the target and unlearned models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.format import PromptTemplate
from ..data.records import Example


@dataclass
class AttackData:
    """The records an attack may use.

    ``forget_train``: forget records the attacker is allowed to see (e.g. relearning's small part);
    ``forget_eval``: the forget records recovery is measured on (disjoint from ``forget_train`` when
    the attack trains on forget data); ``retain``: other records (benign finetuning, probes).
    """

    forget_train: list[Example]
    forget_eval: list[Example]
    retain: list[Example] = field(default_factory=list)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512
    seed: int = 0


class Attack:
    """Base of attacks: subclasses are dataclasses and implement :meth:`run`."""

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Any:
        """Return an attacked model (never modify ``model`` itself)."""
        raise NotImplementedError
