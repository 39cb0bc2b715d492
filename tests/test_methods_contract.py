"""The contract every registered unlearning method keeps (one test per method and property)."""
from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import LossOutput, Method, Procedure
from unlearnkit.models import frozen_copy
from unlearnkit.registry import METHODS
from unlearnkit.train import TrainConfig, reference_prepass, run_method

NAMES = METHODS.names()
POSITIVE = ("beta", "forget_weight", "retain_weight", "bad_weight", "random_weight", "normal_weight",
            "alpha", "steering_coeff")


def test_the_first_methods_are_registered():
    assert {"grad_ascent", "grad_diff", "npo", "simnpo", "idk", "yao", "rmu"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_describes_itself(name):
    cls = METHODS.get(name)
    method = cls()
    assert isinstance(method, Method) and dataclasses.is_dataclass(method)
    meta = METHODS.meta[name]
    assert meta["kind"] == ("procedure" if isinstance(method, Procedure) else "loss")
    assert meta["paper"] and meta["reference"]
    assert cls.__module__ == f"unlearnkit.methods.{name}"  # file name = registry key
    assert cls.__doc__ and "arXiv" in (importlib.import_module(cls.__module__).__doc__ or "")
    dataclasses.asdict(method)  # serialisable config


@pytest.mark.parametrize("name", NAMES)
def test_rejects_unknown_and_positional_hyperparameters(name):
    cls = METHODS.get(name)
    with pytest.raises(TypeError):
        cls(bata=0.1)
    with pytest.raises(TypeError):
        dataclasses.replace(cls(), bata=0.1)
    with pytest.raises(TypeError):
        cls(0.1)  # keyword-only


@pytest.mark.parametrize("name", NAMES)
def test_rejects_bad_values_with_config_error(name):
    cls = METHODS.get(name)
    free = set(METHODS.meta[name].get("free_text", ()))  # e.g. a record column name: any string is valid
    bad = {f.name: "no-such-choice" for f in dataclasses.fields(cls) if f.type in (str, "str") and f.name not in free}
    bad.update({f.name: -1.0 for f in dataclasses.fields(cls) if f.name in POSITIVE})
    if not bad:
        assert not dataclasses.fields(cls), f"{name} has hyperparameters but none is validated"
        return  # nothing to validate: a method without hyperparameters
    for field_name, value in bad.items():
        with pytest.raises(ConfigError, match=field_name):
            cls(**{field_name: value})


def _all_hooks(*models: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for model in models for m in model.modules())


def _build(name: str, method_inputs: dict[str, str]) -> Method:
    """The method with defaults, plus the inputs its registry entry says the user must supply
    (``inputs=(field, ...)``: e.g. KGA's extra non-member set), taken from the fixture."""
    needed = METHODS.meta[name].get("inputs", ())
    missing = [f for f in needed if f not in method_inputs]
    assert not missing, f"conftest's method_inputs has no test value for {missing}"
    return METHODS.get(name)(**{f: method_inputs[f] for f in needed})


@pytest.mark.parametrize("name", NAMES)
def test_one_step_trains_and_cleans_up(name, tiny_model, make_paired, method_inputs):
    method = _build(name, method_inputs)
    data = make_paired(method)
    ref = frozen_copy(tiny_model) if method.needs_ref_model else None
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    hooks = _all_hooks(tiny_model, *([ref] if ref is not None else []))
    cfg = TrainConfig(max_steps=1, batch_size=4, lr=1e-3, weight_decay=0.0, progress=False, threads=1)
    result = run_method(tiny_model, method, data, cfg, ref=ref)
    assert result.steps == 1 and math.isfinite(result.log[0]["loss"])
    changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, f"{name}: one step changed no parameter"
    assert _all_hooks(tiny_model, *([ref] if ref is not None else [])) == hooks, "hooks left behind"
    assert all(p.requires_grad for p in tiny_model.parameters()), "requires_grad not restored"


@pytest.mark.parametrize("name", NAMES)
def test_loss_output_has_gradient_and_float_logs(name, tiny_model, make_paired, method_inputs):
    method = _build(name, method_inputs)
    if isinstance(method, Procedure):
        with pytest.raises(TypeError, match="procedure"):
            method.loss(tiny_model, {}, None)
        return
    data = make_paired(method)
    method.prepare(tiny_model, data, TrainConfig(max_steps=1, progress=False, threads=1))
    if method.ref_logp_views:
        reference_prepass(tiny_model, data, method.ref_logp_views)
    batch = next(data.batches(4, seed=0))
    ref = frozen_copy(tiny_model) if method.needs_ref_model else None
    method.select_params(tiny_model)
    method.setup(tiny_model, ref)
    try:
        out = method.loss(tiny_model, batch, ref)
    finally:
        method.teardown(tiny_model)
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and out.loss.requires_grad
    assert out.logs and all(isinstance(v, float) and math.isfinite(v) for v in out.logs.values())
