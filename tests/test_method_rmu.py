"""rmu: masked activation MSE to a random control vector (forget) and to the frozen model (retain)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unlearnkit.errors import ConfigError
from unlearnkit.logprobs import forward
from unlearnkit.methods.rmu import RMU, control_vector, masked_mse
from unlearnkit.models import frozen_copy

ACTS = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 4.0]],  # per-token mean of squares: 1, 2, 8
                     [[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]])  # 9, 0, 0


def test_masked_mse_by_hand():
    mask = torch.tensor([[False, True, True], [True, False, False]])
    # seq 0: (2 + 8) / 2 = 5; seq 1: 9 / 1 = 9; batch mean 7
    assert masked_mse(ACTS, torch.zeros_like(ACTS), mask).item() == pytest.approx(7.0)
    everything = torch.ones(2, 3, dtype=torch.bool)  # as released: plain F.mse_loss
    plain = F.mse_loss(ACTS, torch.zeros_like(ACTS)).item()
    assert masked_mse(ACTS, torch.zeros_like(ACTS), everything).item() == pytest.approx(plain)
    assert masked_mse(ACTS, ACTS + 1.0, mask).item() == pytest.approx(1.0)


def test_control_vector_is_seeded_uniform_with_norm_c():
    u = control_vector(32, 6.5, seed=42)
    assert u.shape == (1, 1, 32) and (u >= 0).all()
    assert u.norm().item() == pytest.approx(6.5, rel=1e-6)
    assert torch.equal(u, control_vector(32, 6.5, seed=42))
    assert not torch.equal(u, control_vector(32, 6.5, seed=1))


def test_layer_choice_and_validation(tiny_model):
    assert RMU().layer_index(tiny_model) == 1  # 3 layers // 3
    assert RMU(layer=2).layer_index(tiny_model) == 2
    with pytest.raises(ConfigError, match="layer"):
        RMU(layer=3).layer_index(tiny_model)
    with pytest.raises(ConfigError, match="layer"):
        RMU(layer=-1)
    with pytest.raises(ConfigError, match="trainable"):
        RMU(trainable="mlp")


def test_trainable_layers_selects_mlp_out_projections_and_teardown_restores(tiny_model):
    method = RMU(layer=2, trainable="layers")
    method.select_params(tiny_model)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)}
    method.teardown(tiny_model)
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_hooks_capture_block_output_and_are_removed(tiny_model, tiny_batch):
    method, ref = RMU(), frozen_copy(tiny_model)
    batch = tiny_batch(method)
    method.setup(tiny_model, ref)
    out = method.loss(tiny_model, batch, ref)
    assert out.logs["retain_loss"] == pytest.approx(0.0, abs=1e-10)  # model == frozen copy
    method.teardown(tiny_model)
    assert not any(m._forward_hooks for mod in (tiny_model, ref) for m in mod.modules())
    view = batch["forget"]
    with torch.no_grad():
        # the output of block 1 (the default layer) is HF hidden_states[1 + 1]
        h = forward(tiny_model, view, output_hidden_states=True).hidden_states[2]
    u = control_vector(32, 2.0, seed=42).expand_as(h)
    assert out.logs["forget_loss"] == pytest.approx(masked_mse(h, u, view["labels"] != -100).item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.logs["forget_loss"], rel=1e-6)


def test_unmasked_variant_averages_every_position(tiny_model, tiny_batch):
    method, ref = RMU(mask_to_labels=False, steering_coeff=3.0), frozen_copy(tiny_model)
    batch = tiny_batch(method)
    method.setup(tiny_model, ref)
    try:
        out = method.loss(tiny_model, batch, ref)
    finally:
        method.teardown(tiny_model)
    with torch.no_grad():
        h = forward(tiny_model, batch["forget"], output_hidden_states=True).hidden_states[2]
    expected = F.mse_loss(h, control_vector(32, 3.0, seed=42).expand_as(h))
    assert out.logs["forget_loss"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(RuntimeError, match="setup"):
        method.loss(tiny_model, batch, ref)


def test_one_step_with_trainable_layers_changes_only_those_weights(tiny_model, make_paired):
    from unlearnkit.train import TrainConfig, run

    method = RMU(layer=1, trainable="layers")
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cfg = TrainConfig(max_steps=1, batch_size=4, lr=1e-3, weight_decay=0.0, progress=False, threads=1)
    run(tiny_model, method, make_paired(method), cfg, ref=frozen_copy(tiny_model))
    changed = {n for n, p in tiny_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    assert all(p.requires_grad for p in tiny_model.parameters())
