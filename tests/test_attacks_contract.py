"""The contract every registered robustness attack keeps (issue 6)."""
from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

from unlearnkit.attacks.base import Attack, AttackData, Attacked
from unlearnkit.audit import forget_probability
from unlearnkit.errors import ConfigError
from unlearnkit.registry import ATTACKS

NAMES = ATTACKS.names()


def test_attacks_are_registered():
    assert {"benign", "quantize", "relearn"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_describes_itself(name):
    cls = ATTACKS.get(name)
    attack = cls()
    assert isinstance(attack, Attack) and dataclasses.is_dataclass(attack)
    assert attack.budget == 1.0  # every attack has the budget knob
    assert attack.kind in ("model", "input", "read-out") and (attack.kind == "read-out") == attack.readout
    meta = ATTACKS.meta[name]
    assert meta["paper"] and meta["reference"] and meta["cost"]  # the audit documents what each costs
    assert "budget" in meta["cost"]  # ... and what its budget scales
    assert cls.__module__ == f"unlearnkit.attacks.{name}"  # file name = registry key
    assert "arXiv" in (importlib.import_module(cls.__module__).__doc__ or "")
    with pytest.raises(TypeError):
        cls(no_such_setting=1)


def test_budget_scales_and_is_checked():
    assert Attack(budget=0.5).scaled(20) == 10 and Attack(budget=0.01).scaled(20) == 1 and Attack().scaled(7) == 7
    for bad in (0, -1.0, "2"):
        with pytest.raises(ConfigError, match="budget"):
            Attack(budget=bad).scaled(3)


@pytest.mark.parametrize("name", NAMES)
def test_run_leaves_the_input_alone_and_changes_something(name, tiny_model, learned_model, tiny_tokenizer,
                                                          tiny_forget_tofu, tiny_examples):
    forget_train, forget_eval = tiny_forget_tofu[:4], tiny_forget_tofu[4:]
    if name == "relation_graph":  # rebuilds a graph of people: needs >= 3 of them (here 4: forget + retain people)
        forget_train, forget_eval = tiny_examples[0] + tiny_examples[1][:16], tiny_examples[1][16:]
    data = AttackData(forget_train=forget_train, forget_eval=forget_eval, retain=tiny_examples[1][:8],
                      max_length=128, target=learned_model)
    attack = ATTACKS.get(name)(budget=0.5)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    out = attack.run(tiny_model, tiny_tokenizer, data)
    assert isinstance(out, Attacked)
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters()), "the input model was changed"
    if attack.readout:
        base = attack.baseline(tiny_model, tiny_tokenizer, data)
        assert out.scores and set(out.scores) == set(base)
        assert all(math.isfinite(v) for v in [*out.scores.values(), *base.values()])
        return
    assert (out.examples is not None) == (attack.kind == "input")
    if attack.kind == "input":  # the same model, the forget records rewritten (answers kept)
        assert out.model is tiny_model and len(out.examples) == len(data.forget_eval)
        assert [e.answer for e in out.examples] == [e.answer for e in data.forget_eval]
    else:  # a new model
        assert out.model is not tiny_model and out.examples is None
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, data.template, 128)  # noqa: E731
    assert prob(out.model, out.examples or data.forget_eval) != prob(tiny_model, data.forget_eval), \
        f"{name} changed nothing the audit measures"
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters()), "the input model was changed"
