"""The contract every registered robustness attack keeps (issue 6)."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from unlearnkit.attacks.base import Attack, AttackData
from unlearnkit.registry import ATTACKS

NAMES = ATTACKS.names()


def test_attacks_are_registered():
    assert {"benign", "quantize", "relearn"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_describes_itself(name):
    cls = ATTACKS.get(name)
    attack = cls()
    assert isinstance(attack, Attack) and dataclasses.is_dataclass(attack)
    meta = ATTACKS.meta[name]
    assert meta["paper"] and meta["reference"] and meta["cost"]  # the audit documents what each costs
    assert cls.__module__ == f"unlearnkit.attacks.{name}"  # file name = registry key
    assert "arXiv" in (importlib.import_module(cls.__module__).__doc__ or "")
    with pytest.raises(TypeError):
        cls(no_such_setting=1)


@pytest.mark.parametrize("name", NAMES)
def test_run_returns_a_new_model_and_leaves_the_input_alone(name, tiny_model, tiny_tokenizer, tiny_examples):
    forget, retain = tiny_examples
    data = AttackData(forget_train=forget[:4], forget_eval=forget[4:], retain=retain[:8], max_length=128)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    attacked = ATTACKS.get(name)().run(tiny_model, tiny_tokenizer, data)
    assert attacked is not tiny_model
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters()), "the input model was changed"
    changed = [n for n, p in attacked.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert changed, f"{name} changed nothing"
