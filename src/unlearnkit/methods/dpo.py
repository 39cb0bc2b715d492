"""DPO towards user-supplied alternate answers and away from the forget answers (DPO: Rafailov et al.
2023, arXiv 2305.18290; used for unlearning with plausible alternate answers by AltPO, Mekala et al.
2025, "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language Models",
COLING 2025, arXiv 2409.13474).

``L = -(2/beta) * E[log sigmoid(beta * ((log pi(y_alt) - log pi_ref(y_alt)) - (log pi(y) - log pi_ref(y))))]``
with summed answer log-probs (win = the alternate answer to the forget question, lose = the forget
answer), plus a retain term. This is ``compute_dpo_loss`` of ``locuslab/open-unlearning``
``src/trainer/utils.py`` as used by ``src/trainer/unlearn/dpo.py`` (class ``DPO``) with the
``QAwithAlternateDataset`` handler of ``src/data/qa.py`` (the AltPO setup); defaults from
``configs/trainer/DPO.yaml`` (beta 0.1, gamma 1, alpha 1, retain NLL). The maths is shared with
method ``idk`` (:func:`unlearnkit.methods.idk.dpo_loss`); note its 2/beta scale (standard DPO has 1).

Data: each forget record carries its alternate answer(s) in an extra column (``alternate_key``,
default ``"alternate"``): a string, or a non-empty list of strings of which one is drawn per forget
example (seeded) when the data are built. A record without one is a DataError, unless
``missing="idk"``, which substitutes a refusal answer from ``unlearnkit/data/idk.txt`` for such
records (then those records train exactly like method ``idk``).

Deviations:
- The alternates are not generated here: AltPO generates them with an LLM
  (open-unlearning ``community/methods/AltPO/generate.py``); supply them as a column.
- We implement the open-unlearning DPO form with one alternate per forget example; the AltPO
  paper's own objective may combine several alternates per question differently (UNVERIFIED: the
  research notes only describe the open-unlearning setup).
- The reference log-probs of both views are pre-computed by the loop (``ref_logp_views``) instead of
  running a live reference model; the values are the same because the reference is frozen.
- ``retain_loss="kl"`` averages over retain answer tokens (``logprobs.kl_on_supervised``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..data.records import Example
from ..errors import ConfigError, DataError
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive
from .idk import IDK_ANSWERS, dpo_loss, preference_unlearning_loss  # noqa: F401 (dpo_loss: the shared maths)

MISSING_CHOICES = ("error", "idk")


def _describe(ex: Example) -> str:
    """A short name for a record in error messages (its question, or its text, truncated)."""
    text = ex.question if ex.question is not None else ex.answer
    return repr(text if len(text) <= 60 else text[:57] + "...")


def alternate_candidates(ex: Example, key: str) -> list[str]:
    """The non-blank alternate answers in ``ex.extras[key]`` ([] when absent); bad types -> DataError."""
    value = ex.extras.get(key)
    if value is None or (isinstance(value, float) and value != value):  # absent, or NaN (csv / parquet)
        return []
    if isinstance(value, str):
        value = [value]
    is_seq = isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"  # parquet lists: ndarray
    bad = [v for v in value if not isinstance(v, str)] if is_seq else [value]
    if bad:
        got = f"a list holding {type(bad[0]).__name__}" if is_seq else type(value).__name__
        raise DataError(
            f"forget record {_describe(ex)}: column '{key}' must be a string or a list of strings "
            f"(alternate answers), got {got}"
        )
    found = [v for v in value if v.strip()]
    if any(v.strip() == ex.answer.strip() for v in found):
        raise DataError(
            f"forget record {_describe(ex)}: an alternate answer in column '{key}' equals the forget "
            "answer, so DPO has nothing to prefer; give an answer that differs from it"
        )
    return found


@METHODS.register(
    "dpo",
    paper="Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290; for unlearning with "
          "alternate answers: AltPO, Mekala et al. 2025, arXiv:2409.13474",
    reference="locuslab/open-unlearning src/trainer/unlearn/dpo.py, src/trainer/utils.py compute_dpo_loss, "
              "src/data/qa.py QAwithAlternateDataset",
    kind="loss",
    free_text=("alternate_key",),  # a record column name: any non-empty string is valid
)
@dataclass(kw_only=True)
class DPO(Method):
    """DPO with win = a user-supplied alternate answer to the forget question, lose = the forget answer.

    The alternates come from the forget records' ``alternate_key`` column (a string or a list of strings).
    """

    ref_logp_views = ("forget", "alternate")  # reference log-probs pre-computed by the loop (not a field)

    beta: float = 0.1  # β, open-unlearning configs/trainer/DPO.yaml
    forget_weight: float = 1.0  # gamma, open-unlearning DPO.yaml
    retain_weight: float = 1.0  # alpha, open-unlearning DPO.yaml
    retain_loss: str = "nll"  # retain_loss_type NLL, open-unlearning DPO.yaml ("kl" / "none" also allowed)
    alternate_key: str = "alternate"  # forget-record column with the alternate answer(s) (our name)
    missing: str = "error"  # record without an alternate: "error" (DataError) or "idk" (a refusal answer)

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_choice("missing", self.missing, MISSING_CHOICES)
        check_positive(beta=self.beta, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
        if not self.alternate_key.strip():
            raise ConfigError("alternate_key is empty; set it to the name of the forget-record column that "
                              "holds the alternate answers (default 'alternate')")

    def extra_views(
        self, ex: Example, rng: random.Random, pool: list[Example]
    ) -> dict[str, tuple[str | None, str]]:
        found = alternate_candidates(ex, self.alternate_key)
        if found:
            return {"alternate": (ex.question, found[0] if len(found) == 1 else rng.choice(found))}
        if self.missing == "idk":
            return {"alternate": (ex.question, rng.choice(IDK_ANSWERS))}
        raise DataError(
            f"forget record {_describe(ex)} has no alternate answer in column '{self.alternate_key}'; "
            f"add a '{self.alternate_key}' column (a string or a list of strings) to every forget record, "
            "set method.alternate_key to the column that holds them, set method.missing=idk to use a "
            "refusal answer for records without one, or use method 'idk' for refusal answers throughout"
        )

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        return preference_unlearning_loss(self, model, batch, ref, win="alternate")
