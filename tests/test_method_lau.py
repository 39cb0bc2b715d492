"""lau: latent PGD adversary at a layer input (inner min of the forget CE), NPO/GA on the attacked pass."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearnkit.data.pair import build_paired
from unlearnkit.errors import ConfigError
from unlearnkit.logprobs import batch_nll, forward
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.methods.lau import LAU, auto_layer, latent_hook, pgd_attack, pgd_step, project_l2, random_delta
from unlearnkit.methods.npo import NPO
from unlearnkit.models import decoder_layers, load_model
from unlearnkit.train import Finetune, TrainConfig, forget_prob, reference_prepass, run


def _cfg(steps: int, lr: float) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=8, lr=lr, weight_decay=0.0, progress=False, threads=1)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def unlearned_once(tiny_model_dir, tiny_tokenizer, tiny_examples):
    """The tiny model finetuned on the forget set (40 steps), then gradient-ascended 3 steps."""
    forget, retain = tiny_examples
    model = load_model(tiny_model_dir)
    data = build_paired(None, forget, retain, tiny_tokenizer, max_length=128, seed=0)
    run(model, Finetune(), data, _cfg(40, 3e-3))
    run(model, GradAscent(), data, _cfg(3, 1e-3))
    return model


# ----------------------------------------------------------------------------------- pure maths
def test_project_l2_by_hand():
    delta = torch.tensor([[[3.0, 4.0]], [[0.3, 0.4]]])  # (B=2, T=1, d=2), norms 5 and 0.5
    out = project_l2(delta, 1.0)
    torch.testing.assert_close(out, torch.tensor([[[0.6, 0.8]], [[0.3, 0.4]]]))  # 5 -> 1; 0.5 inside
    per_example = project_l2(delta, torch.tensor([2.5, 0.1]))  # radii per example
    torch.testing.assert_close(per_example, torch.tensor([[[1.5, 2.0]], [[0.06, 0.08]]]))
    # the norm is over the flattened [T*d]: tokens (3,0) and (0,4) together have norm 5
    two_tokens = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])
    torch.testing.assert_close(project_l2(two_tokens, 1.0), torch.tensor([[[0.6, 0.0], [0.0, 0.8]]]))


def test_pgd_step_moves_against_the_normalised_gradient_then_projects_and_clamps():
    h = torch.tensor([[[0.0, 1.0], [-0.5, 0.2]]])  # (1, 2, 2); global range [-0.5, 1.0]
    grad = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # norm 5 -> unit direction (0.6, 0.8)
    zero = torch.zeros_like(h)
    # step 0.25: delta = -0.25 * (0.6, 0.8) = (-0.15, -0.2); inside the ball and the range
    small = pgd_step(zero, grad, h=h, eps=1.0, step_size=0.25, lo=-0.5, hi=1.0)
    torch.testing.assert_close(small, torch.tensor([[[-0.15, -0.2], [0.0, 0.0]]]))
    # step 2 with eps 1: (-1.2, -1.6) is projected to norm 1 -> (-0.6, -0.8); then h+delta =
    # (-0.6, 0.2) is clamped to (-0.5, 0.2) -> delta = (-0.5, -0.8)
    big = pgd_step(zero, grad, h=h, eps=1.0, step_size=2.0, lo=-0.5, hi=1.0)
    torch.testing.assert_close(big, torch.tensor([[[-0.5, -0.8], [0.0, 0.0]]]))


def test_pgd_attack_walks_eps_along_the_descent_direction_of_a_linear_loss():
    w = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # loss = <w, delta>; gradient w, unit w/5
    h = torch.tensor([[[0.0, 5.0], [-5.0, 0.0]]])  # range [-5, 5]: the clamp is inactive
    mask = torch.ones(1, 2)
    # 6 steps of eps/6 along -w/|w|: delta = -eps * w / |w| = -(0.6, 0, 0, 0.8) * 0.3
    delta = pgd_attack(lambda d: (w * d).sum(), h, eps=0.3, steps=6, mask=mask, random_init=False)
    torch.testing.assert_close(delta, torch.tensor([[[-0.18, 0.0], [0.0, -0.24]]]))
    assert not delta.requires_grad
    # one step of size eps lands on the same point; 0 steps (no random start) = no move
    far = pgd_attack(lambda d: (w * d).sum(), h, eps=0.3, steps=1, mask=mask, random_init=False)
    torch.testing.assert_close(far, delta)
    none = pgd_attack(lambda d: (w * d).sum(), h, eps=0.3, steps=0, mask=mask, random_init=False)
    assert torch.equal(none, torch.zeros_like(h))


def test_pgd_attack_clamps_into_the_clean_range_and_ignores_padding():
    h = torch.tensor([[[0.0, 0.1], [0.2, 0.0]]])  # range [0, 0.2]
    w = torch.ones(1, 2, 2)  # descent pushes every coordinate down
    delta = pgd_attack(lambda d: (w * d).sum(), h, eps=1.0, steps=3, mask=torch.tensor([[1, 0]]),
                       random_init=False)
    # token 0 is clamped to the lower bound 0: h + delta = (0, 0); token 1 is padding: no delta
    torch.testing.assert_close(delta, torch.tensor([[[0.0, -0.1], [0.0, 0.0]]]))


def test_random_delta_has_norm_at_most_eps_and_zero_padding():
    torch.manual_seed(0)
    h = torch.zeros(64, 3, 4)
    mask = torch.tensor([[1, 1, 0]]).expand(64, 3)
    delta = random_delta(h, 0.5, mask)
    norms = delta.flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-6).all() and (norms > 0).all()
    assert 0.15 < norms.mean().item() < 0.35  # r ~ U(0, 1): mean norm eps/2
    assert torch.equal(delta[:, 2], torch.zeros(64, 4))


# ----------------------------------------------------------------------------------- the hook
class _Double(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return 2 * hidden_states * scale


def test_latent_hook_handles_positional_and_keyword_hidden_states_and_is_removed():
    block, x, delta = _Double(), torch.ones(1, 2, 3), torch.full((1, 2, 3), 0.5)
    store: dict[str, torch.Tensor] = {}
    with latent_hook(block, delta=delta, store=store):
        torch.testing.assert_close(block(x), torch.full((1, 2, 3), 3.0))  # 2 * (1 + 0.5)
        torch.testing.assert_close(block(hidden_states=x, scale=2.0), torch.full((1, 2, 3), 6.0))
        assert torch.equal(store["h"], x)  # the clean input is recorded
    assert _hooks(block) == 0 and torch.equal(block(x), 2 * x)
    with pytest.raises(ValueError), latent_hook(block, delta=delta):
        raise ValueError("boom")
    assert _hooks(block) == 0  # removed on errors too


def test_hook_point_is_the_input_of_the_decoder_layer(tiny_model, tiny_batch):
    view = tiny_batch()["forget"]
    block = decoder_layers(tiny_model)[1]
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        hs = forward(tiny_model, view, output_hidden_states=True).hidden_states
        hooks = _hooks(tiny_model)  # transformers may keep its own hidden-state recorders
        clean = forward(tiny_model, view).logits
        with latent_hook(block, store=store, delta=torch.zeros_like(hs[1])):
            same = forward(tiny_model, view).logits
        with latent_hook(block, delta=torch.randn_like(hs[1])):
            moved = forward(tiny_model, view).logits
    torch.testing.assert_close(store["h"], hs[1])  # HF hidden_states[1] = input of layer 1
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(moved, clean)
    assert _hooks(tiny_model) == hooks


# ----------------------------------------------------------------------------------- behaviour
def test_the_attack_makes_an_unlearned_model_recall(unlearned_once, make_paired):
    model = copy.deepcopy(unlearned_once)
    model.train()
    view = make_paired().forget_batch(list(range(8)))["forget"]
    block = decoder_layers(model)[1]  # auto layer for 3 layers

    def adv_nll(method: LAU) -> tuple[float, float, torch.Tensor]:
        torch.manual_seed(0)
        delta, clean = method.attack(model, view)
        with torch.no_grad(), latent_hook(block, delta=delta):
            return batch_nll(forward(model, view).logits, view["labels"]).item(), clean, delta

    attacked, clean, delta = adv_nll(LAU())
    random_only, _, _ = adv_nll(LAU(steps=0))
    assert attacked < clean - 0.03  # the adversary lowers the forget CE (a wrong sign raises it)
    assert attacked < random_only - 0.03  # and the PGD steps, not the random start, do it
    assert model.training and _hooks(model) == 0
    pad = view["attention_mask"] == 0
    assert pad.any() and torch.equal(delta[pad], torch.zeros_like(delta[pad]))
    with torch.no_grad():
        h = forward(model, view, output_hidden_states=True).hidden_states[1] * (~pad).unsqueeze(-1)
    radius = 0.1 * h.flatten(1).norm(dim=1)  # relative epsilon 0.1
    assert (delta.flatten(1).norm(dim=1) <= radius + 1e-5).all()
    _, _, absolute = adv_nll(LAU(epsilon_mode="absolute", epsilon=0.05))
    assert (absolute.flatten(1).norm(dim=1) <= 0.05 + 1e-6).all()


def test_forget_loss_is_npo_or_ga_on_the_attacked_pass(tiny_model, tiny_batch):
    batch = tiny_batch(NPO())
    npo = NPO(retain_loss="none").loss(tiny_model, batch, None).logs["forget_loss"]
    assert npo == pytest.approx(20 * math.log(2), rel=1e-5)  # model == reference
    # no delta (0 steps, no random start): exactly NPO
    plain = LAU(steps=0, random_init=False, retain_loss="none").loss(tiny_model, batch, None)
    assert plain.logs["forget_loss"] == pytest.approx(npo, rel=1e-6)
    assert plain.logs["delta_norm"] == 0.0
    # with the adversary the model recalls more (higher logp), so the NPO loss is higher
    torch.manual_seed(0)
    attacked = LAU(epsilon=0.3).loss(tiny_model, batch, None)
    assert attacked.logs["adv_nll"] < attacked.logs["clean_nll"]
    assert attacked.logs["forget_loss"] > npo + 1e-3
    assert attacked.logs["retain_loss"] == pytest.approx(batch_nll(
        forward(tiny_model, batch["retain"]).logits, batch["retain"]["labels"]).item(), rel=1e-6)  # no delta
    ga = LAU(objective="ga", steps=0, random_init=False, retain_loss="none")
    assert ga.ref_logp_views == () and LAU().ref_logp_views == ("forget",)
    nll = batch_nll(forward(tiny_model, batch["forget"]).logits, batch["forget"]["labels"]).item()
    assert ga.loss(tiny_model, batch, None).logs["forget_loss"] == pytest.approx(-nll, rel=1e-6)


def test_a_few_steps_lower_the_forget_probability_and_leave_no_trace(unlearned_once, make_paired):
    model = copy.deepcopy(unlearned_once)
    method = LAU()
    data = make_paired(method)
    before = forget_prob(model, data)
    flags, hooks = [p.requires_grad for p in model.parameters()], _hooks(model)
    result = run(model, method, data, _cfg(4, 1e-3))
    after = forget_prob(model, data)  # ~0.021 -> ~0.010 at seed 0
    assert after < 0.7 * before
    assert all(math.isfinite(r["loss"]) and r["adv_nll"] < r["clean_nll"] for r in result.log)
    assert _hooks(model) == hooks
    assert [p.requires_grad for p in model.parameters()] == flags


# ----------------------------------------------------------------------------------- errors
def test_layer_choice_and_validation(tiny_model, make_paired):
    assert (auto_layer(32), auto_layer(12), auto_layer(3), auto_layer(1)) == (4, 2, 1, 1)
    assert LAU().layer_index(tiny_model) == 1 and LAU(layer=0).layer_index(tiny_model) == 0
    with pytest.raises(ConfigError, match="layer"):
        LAU(layer=3).setup(tiny_model, None)  # the tiny model has layers 0..2
    method = LAU(layer=5)
    data = make_paired(method)
    reference_prepass(tiny_model, data, method.ref_logp_views)
    with pytest.raises(ConfigError, match="layer"):
        run(tiny_model, method, data, _cfg(1, 1e-3))
    assert _hooks(tiny_model) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"objective": "dpo"}, "objective"), ({"epsilon_mode": "linf"}, "epsilon_mode"),
    ({"retain_loss": "mse"}, "retain_loss"), ({"beta": 0.0}, "beta"), ({"epsilon": -1.0}, "epsilon"),
    ({"forget_weight": -1.0}, "forget_weight"), ({"retain_weight": -1.0}, "retain_weight"),
    ({"layer": -2}, "layer"), ({"steps": -1}, "steps"),
])
def test_bad_hyperparameters_raise_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        LAU(**kwargs)


def test_loss_without_reference_logprobs_says_how_to_fix(tiny_model, tiny_batch):
    batch = tiny_batch()  # no ref_logp computed
    with pytest.raises(RuntimeError, match="ref_logp"):
        LAU(steps=1).loss(tiny_model, batch, None)
