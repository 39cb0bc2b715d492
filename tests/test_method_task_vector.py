"""task_vector: finetune a copy on the forget set, then theta_0 - scale * (theta_ft - theta_0)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from unlearnkit.data.pair import build_paired
from unlearnkit.errors import ConfigError
from unlearnkit.methods.task_vector import TaskVector, apply_task_vector, effective_state, task_vector
from unlearnkit.models import LoraSettings, maybe_add_lora
from unlearnkit.train import Finetune, TrainConfig, forget_prob, run, run_method

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # peft "all-linear"


def _linear(weight: list[list[float]], bias: list[float]) -> torch.nn.Linear:
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return lin


def test_negation_on_hand_computed_numbers():
    base = _linear([[1.0, 2.0], [3.0, 4.0]], [0.0, 1.0])
    finetuned = _linear([[2.0, 2.0], [1.0, 5.0]], [1.0, 1.0])
    tau = task_vector(effective_state(base), effective_state(finetuned))
    # tau = ft - base: W [[1, 0], [-2, 1]], b [1, 0]
    assert torch.equal(tau["weight"], torch.tensor([[1.0, 0.0], [-2.0, 1.0]]))
    assert torch.equal(tau["bias"], torch.tensor([1.0, 0.0]))
    apply_task_vector(base, tau, -0.5)  # negation, lambda = 0.5: base - 0.5 * tau
    assert torch.equal(base.weight.detach(), torch.tensor([[0.5, 2.0], [4.0, 3.5]]))  # 1-.5, 2-0, 3+1, 4-.5
    assert torch.equal(base.bias.detach(), torch.tensor([-0.5, 1.0]))


def test_positive_coef_adds_the_vector_and_integer_entries_are_skipped():
    base = _linear([[1.0, 2.0], [3.0, 4.0]], [0.0, 1.0])
    finetuned = _linear([[2.0, 2.0], [1.0, 5.0]], [1.0, 1.0])
    state = {**effective_state(base), "counter": torch.tensor(3)}  # an int64 buffer, as in the reference
    tau = task_vector(state, {**effective_state(finetuned), "counter": torch.tensor(7)})
    assert set(tau) == {"weight", "bias"}
    apply_task_vector(base, tau, 1.0)  # reference apply_to(scaling_coef=1): base + tau = finetuned
    assert torch.equal(base.weight, finetuned.weight) and torch.equal(base.bias, finetuned.bias)
    with pytest.raises(KeyError, match="weight"):
        task_vector(effective_state(base), {"bias": finetuned.bias})


def test_tied_weights_are_edited_once():
    emb = torch.nn.Embedding(3, 2)
    head = torch.nn.Linear(2, 3, bias=False)
    head.weight = emb.weight  # tied, as tie_word_embeddings
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    start = emb.weight.detach().clone()
    assert list(effective_state(model)) == ["emb.weight"]
    apply_task_vector(model, {"emb.weight": torch.ones(3, 2)}, -0.25)
    assert torch.equal(head.weight.detach(), start - 0.25)  # not start - 0.5


def test_lora_delta_is_alpha_over_r_times_b_a_on_adapted_weights_only(tiny_model):
    method = TaskVector(delta="lora", lora_r=4, lora_alpha=8)
    lora = method.finetuned_copy(tiny_model)
    assert not hasattr(tiny_model, "peft_config")  # the copy is wrapped, not the model
    torch.manual_seed(0)
    expected = {}
    for name, module in lora.get_base_model().named_modules():
        if hasattr(module, "lora_A"):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # (r, in), (out, r)
            with torch.no_grad():
                b.normal_()  # peft starts B at 0; give it values so the product is not trivial
            expected[f"{name}.weight"] = (8 / 4) * (b @ a).detach()  # (out, in) = (alpha/r) B A
    assert expected and all(k.split(".")[-2] in ADAPTED for k in expected)
    assert len(expected) == 3 * len(ADAPTED)  # every attention + MLP matrix of the 3 layers
    tau = task_vector(effective_state(tiny_model), effective_state(lora, consume=True))
    assert set(tau) == set(dict(tiny_model.named_parameters()))
    for name, diff in tau.items():
        if name in expected:
            torch.testing.assert_close(diff, expected[name], rtol=1e-5, atol=1e-6)
        else:
            assert not diff.any(), f"{name} changed but has no adapter"


def _learned(tiny_model, examples, tokenizer):
    """The random tiny model finetuned on forget + retain, so it knows the people (a target model)."""
    both = build_paired(None, examples[0] + examples[1], [], tokenizer, max_length=128)
    run(tiny_model, Finetune(), both, TrainConfig(max_steps=40, lr=1e-2, batch_size=8, weight_decay=0.0,
                                                  progress=False, threads=1))
    return tiny_model


def _probs(model, data, retain) -> tuple[float, float]:
    return forget_prob(model, data), forget_prob(model, retain)  # mean answer prob of each set


def test_negation_lowers_the_forget_probability_more_than_retain(tiny_model, make_paired, tiny_examples,
                                                                 tiny_tokenizer):
    model = _learned(tiny_model, tiny_examples, tiny_tokenizer)
    method = TaskVector(scale=0.5)
    data = make_paired(method)
    retain = build_paired(None, tiny_examples[1], [], tiny_tokenizer, max_length=128)
    forget0, retain0 = _probs(model, data, retain)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(max_steps=10, lr=3e-3, batch_size=4, progress=False, threads=1)
    result = run_method(model, method, data, cfg)
    assert result.steps == 10 and all(r["nll"] == r["nll"] for r in result.log)  # finetuning steps, finite
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    forget1, retain1 = _probs(model, data, retain)
    print(f"forget prob {forget0:.4f} -> {forget1:.4f}, retain prob {retain0:.4f} -> {retain1:.4f}")
    # measured (1 thread): forget 0.0368 -> 0.0239 (x0.65), retain 0.0357 -> 0.0302 (x0.84)
    assert forget1 < 0.8 * forget0
    assert forget1 / forget0 < retain1 / retain0  # the forget set loses more than the retain set
    assert retain1 > 0.5 * retain0
    assert vars(method) == dataclasses.asdict(method)  # no model state kept on the method


def _effective_change(model, scale: float, data) -> dict[str, torch.Tensor]:
    start = effective_state(model)
    start = {k: v.clone() for k, v in start.items()}
    run_method(model, TaskVector(scale=scale), data,
               TrainConfig(max_steps=3, lr=1e-2, batch_size=4, progress=False, threads=1))
    return {k: v - start[k] for k, v in effective_state(model).items()}


def test_a_lora_model_is_negated_through_its_merged_adapters(tiny_model, make_paired):
    peft_model = maybe_add_lora(tiny_model, LoraSettings(r=4, alpha=8))
    grads = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    adapters = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    data = make_paired(TaskVector())
    other = copy.deepcopy(peft_model)
    full = _effective_change(peft_model, 1.0, data)
    half = _effective_change(other, 0.5, data)
    changed = {k for k, v in full.items() if v.any()}
    assert changed and all(k.split(".")[-2] in ADAPTED for k in changed)  # only the adapted matrices
    for k in full:  # the same finetuning run (same seed), negated with twice the strength
        torch.testing.assert_close(full[k], 2 * half[k], rtol=1e-4, atol=1e-7)
    assert {n: p.requires_grad for n, p in peft_model.named_parameters()} == grads
    assert all(torch.equal(p, adapters[n]) for n, p in peft_model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("kwargs, field", [
    ({"delta": "no-such-choice"}, "delta"), ({"scale": 0.0}, "scale"), ({"scale": -1.0}, "scale"),
    ({"lora_r": 0}, "lora_r"), ({"lora_alpha": -1}, "lora_alpha"), ({"lora_r": 2.5}, "lora_r"),
])
def test_bad_values_raise_config_errors_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TaskVector(**kwargs)


def test_stop_forget_prob_is_rejected(tiny_model, make_paired):
    method = TaskVector()
    with pytest.raises(ConfigError, match="stop_forget_prob"):
        run_method(tiny_model, method, make_paired(method),
                   TrainConfig(max_steps=1, stop_forget_prob=0.1, progress=False, threads=1))
    with pytest.raises(TypeError, match="procedure"):
        method.loss(tiny_model, {}, None)
