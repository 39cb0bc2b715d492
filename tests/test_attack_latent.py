"""Latent perturbation attack (LAU's attack stage, Yuan et al. 2024, arXiv:2408.10682): a universal
residual-stream vector fitted by PGD. Hand-checked maths, the hook on the copy, behaviour, errors."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.latent import (BUFFER, Latent, answer_nll, broadcast, forget_chunks, universal_pgd,
                                      universal_radius)
from unlearnkit.attacks.relearn import split_forget
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import PromptTemplate
from unlearnkit.data.pair import build_paired
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.generation import greedy_generate
from unlearnkit.logprobs import batch_nll, forward
from unlearnkit.methods.lau import latent_hook
from unlearnkit.metrics.recovery import recovery_ratio
from unlearnkit.models import decoder_layers


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------------- pure maths
def test_universal_radius_is_epsilon_times_the_rms_token_norm_by_hand():
    h = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[6.0, 8.0], [9.0, 9.0]]])  # (B=2, T=2, d=2)
    mask = torch.tensor([[1, 1], [1, 0]])  # the (9, 9) token is padding
    # token norms 5, 0, 10 -> mean square (25 + 0 + 100) / 3 -> rms sqrt(125 / 3)
    assert universal_radius(h.norm(dim=-1), mask, 0.1) == pytest.approx(0.1 * math.sqrt(125 / 3), rel=1e-6)


def test_universal_delta_broadcasts_to_every_position():
    like = torch.zeros(2, 3, 4)
    out = broadcast(torch.tensor([1.0, 2.0, 3.0, 4.0]), like)
    assert out.shape == (2, 3, 4) and all(torch.equal(out[b, t], torch.tensor([1.0, 2.0, 3.0, 4.0]))
                                          for b in range(2) for t in range(3))


def test_universal_pgd_walks_eps_along_the_descent_direction_of_a_linear_loss():
    w = torch.tensor([3.0, 0.0, -4.0])  # loss <w, delta>: gradient w, unit direction w / 5
    lin = lambda d: (float(w @ d), w.clone())  # noqa: E731
    delta, loss = universal_pgd(lin, 3, eps=0.5, steps=4, random_init=False)
    # 4 steps of 0.5 / 4 along -w/5 -> -0.5 * (0.6, 0, -0.8); loss = -0.5 * 5
    torch.testing.assert_close(delta, torch.tensor([-0.3, 0.0, 0.4]))
    assert loss == pytest.approx(-2.5) and not delta.requires_grad


def test_universal_pgd_stays_in_the_ball_and_keeps_the_best_iterate():
    c = torch.tensor([3.0, 4.0])  # loss ||delta - c||^2, minimum outside the ball of radius 1
    quad = lambda d: (float((d - c).pow(2).sum()), 2 * (d - c))  # noqa: E731
    delta, loss = universal_pgd(quad, 2, eps=1.0, steps=3, random_init=False)
    torch.testing.assert_close(delta, torch.tensor([0.6, 0.8]))  # the ball point nearest to c
    assert loss == pytest.approx(16.0)  # (3 - 0.6)^2 + (4 - 0.8)^2 = 5.76 + 10.24
    # minimum inside the ball: steps of 0.4 overshoot (0.1, 0) and oscillate; the best iterate is kept
    c2 = torch.tensor([0.1, 0.0])
    quad2 = lambda d: (float((d - c2).pow(2).sum()), 2 * (d - c2))  # noqa: E731
    best, best_loss = universal_pgd(quad2, 2, eps=2.0, steps=5, random_init=False)  # iterates 0, 0.4, 0, ...
    torch.testing.assert_close(best, torch.zeros(2))
    assert best_loss == pytest.approx(0.01)
    # random start: seeded, norm <= eps, whatever the loss
    torch.manual_seed(0)
    rnd, _ = universal_pgd(lambda d: (0.0, torch.zeros(2)), 2, eps=1.0, steps=1, random_init=True)
    assert 0 < float(rnd.norm()) <= 1.0 + 1e-6


def test_chunked_loss_and_gradient_equal_one_big_batch(tiny_model, tiny_tokenizer, tiny_examples):
    forget = tiny_examples[0][:5]
    block = decoder_layers(tiny_model)[1]
    tiny_model.eval()
    view = build_paired(None, forget, [], tiny_tokenizer, max_length=128).forget_batch(list(range(5)))["forget"]
    delta = torch.linspace(-0.5, 0.5, 32).requires_grad_(True)
    with latent_hook(block, delta=delta.reshape(1, 1, -1)):  # LAU's hook with a (1, 1, d) delta
        want = batch_nll(forward(tiny_model, view).logits, view["labels"])
    (want_grad,) = torch.autograd.grad(want, delta)
    data = AttackData(forget_train=forget, forget_eval=[], max_length=128)
    for size in (2, 5):  # chunks of 2, 2, 1 (different padding widths) and one chunk
        loss, grad = answer_nll(tiny_model, block, forget_chunks(tiny_model, tiny_tokenizer, data, size), delta, grad=True)
        assert loss == pytest.approx(float(want.detach()), rel=1e-5)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------- the copy
def test_copy_carries_the_hook_and_the_input_is_untouched(tiny_model, tiny_tokenizer, tiny_examples):
    forget = tiny_examples[0]
    tiny_model.train()
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    grads = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    data = AttackData(forget_train=forget[:4], forget_eval=forget[4:], max_length=128)
    out = Latent(steps=3, layer=2, epsilon=0.5).run(tiny_model, tiny_tokenizer, data)
    # the input model: no hook, no buffer, same weights, requires_grad and mode
    assert _hooks(tiny_model) == 0 and not hasattr(decoder_layers(tiny_model)[2], BUFFER)
    assert all(torch.equal(p, before[n]) and p.requires_grad == grads[n] and p.grad is None
               for n, p in tiny_model.named_parameters())
    assert tiny_model.training
    # the copy: exactly one pre-hook, on layer 2, adding the reported delta; not in the state dict
    attacked = out.model
    assert _hooks(attacked) == 1 and len(decoder_layers(attacked)[2]._forward_pre_hooks) == 1
    delta = getattr(decoder_layers(attacked)[2], BUFFER)
    assert delta.shape == (32,) and float(delta.norm()) == pytest.approx(out.info["delta_norm"], rel=1e-5)
    assert float(delta.norm()) <= out.info["eps"] * (1 + 1e-5)  # the L2 bound
    assert not any(BUFFER in k for k in attacked.state_dict())
    assert all(p.requires_grad == grads[n] for n, p in attacked.named_parameters())  # flags restored on the copy
    assert out.info["layer"] == 2 and out.info["steps"] == 3 and out.info["loss_after"] <= out.info["loss_before"]
    # a plain forward of the copy = the input model with the delta added at every position by hand
    ids = tiny_tokenizer(["Question: who?\nAnswer:\n"], return_tensors="pt")
    tiny_model.eval()
    with torch.no_grad(), latent_hook(decoder_layers(tiny_model)[2], delta=broadcast(delta, torch.zeros(1, ids.input_ids.shape[1], 32))):
        want = tiny_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
        plain = attacked(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
        again = copy.deepcopy(attacked)(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    torch.testing.assert_close(plain, want)
    torch.testing.assert_close(again, want)  # the hook survives a deep copy
    assert _hooks(tiny_model) == 0


def test_greedy_generation_of_the_copy_sees_the_delta_at_every_new_token(tiny_model, tiny_tokenizer, tiny_examples):
    forget = tiny_examples[0]
    data = AttackData(forget_train=forget[:4], forget_eval=forget[4:], max_length=128)
    attacked = Latent(steps=2, epsilon=2.0).run(tiny_model, tiny_tokenizer, data).model
    ids = tiny_tokenizer(["Question: " + forget[5].question + "\nAnswer:\n"], return_tensors="pt")
    cached = greedy_generate(attacked, ids.input_ids, ids.attention_mask, max_new_tokens=6, eos_token_id=-1)[0]
    seq = ids.input_ids  # no KV cache: the whole sequence through the hooked copy at each step
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, attacked(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
    assert cached == seq[0, ids.input_ids.shape[1]:].tolist()


# --------------------------------------------------------------------------------------- behaviour
# Measured on the tiny model (-s prints them): GA (lr 3e-3, 10 steps) lowers the held-out answer
# probability ~14x (0.266 -> 0.019). At the default radius (0.1 x the RMS latent norm) the vector
# fitted on the other half recovers ~0.4 % of it (ratio 0.004); at epsilon=1 (delta as large as a
# typical latent) 11 % (0.047; 0.106-0.116 over random-start seeds), while on the never-trained
# model the same attack moves the held-out probability by ~1e-4 (0.0025 -> 0.0026): one shared
# vector cannot write four different answers, it can only bring back hidden ones.


def test_latent_vector_fitted_on_half_the_forget_set_recovers_the_other_half(unlearned, learned_model, tiny_model,
                                                                             tiny_tokenizer, tiny_examples):
    train, held = split_forget(tiny_examples[0], fraction=0.5, seed=0)
    data = AttackData(forget_train=train, forget_eval=held, max_length=128)
    prob = lambda m: forget_probability(m, tiny_tokenizer, held, PromptTemplate(), 128)  # noqa: E731
    target, before = prob(learned_model), prob(unlearned)
    out = Latent(epsilon=1.0).run(unlearned, tiny_tokenizer, data)
    small = prob(Latent().run(unlearned, tiny_tokenizer, data).model)  # default epsilon 0.1
    attacked = prob(out.model)
    ratio = recovery_ratio(attacked=attacked, unlearned=before, target=target).value
    control = Latent(epsilon=1.0).run(tiny_model, tiny_tokenizer, data).model
    never, never_attacked = prob(tiny_model), prob(control)
    print(f"\ntarget {target:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio:.3f} "
          f"(epsilon 0.1: {small:.4f}, ratio "
          f"{recovery_ratio(attacked=small, unlearned=before, target=target).value:.3f}) | never-learned "
          f"{never:.4f} -> {never_attacked:.4f} | info {out.info}")
    assert target > 5 * before
    assert out.info["loss_after"] < out.info["loss_before"] - 0.5  # the fit on forget_train worked
    assert ratio > 0.08 and attacked > 2 * before  # ... and transfers to the held-out records
    assert before < small < attacked  # a larger radius recovers more
    # the never-learned model gains < 1/20 of what the unlearned one gains: hidden knowledge came back
    assert never_attacked - never < (attacked - before) / 20


# ------------------------------------------------------------------------------------------ errors
def test_latent_errors(tiny_model, tiny_tokenizer, tiny_examples):
    for bad in ({"epsilon_mode": "huge"}, {"epsilon": 0}, {"steps": 0}, {"steps": 1.5}, {"batch_size": 0},
                {"layer": -2}, {"layer": True}):
        with pytest.raises(ConfigError):
            Latent(**bad)
    with pytest.raises(DataError, match="forget_train"):
        Latent().run(tiny_model, tiny_tokenizer, AttackData(forget_train=[], forget_eval=tiny_examples[0]))
    data = AttackData(forget_train=tiny_examples[0][:2], forget_eval=tiny_examples[0][2:], max_length=128)
    with pytest.raises(ConfigError, match="3 decoder layers"):
        Latent(layer=3).run(tiny_model, tiny_tokenizer, data)
    with pytest.raises(ConfigError, match="budget"):
        Latent(budget=0).run(tiny_model, tiny_tokenizer, data)
    assert _hooks(tiny_model) == 0
    # absolute radius: the vector's norm is bounded by epsilon itself
    out = Latent(epsilon_mode="absolute", epsilon=0.05, steps=2).run(tiny_model, tiny_tokenizer, data)
    assert out.info["eps"] == 0.05 and out.info["delta_norm"] <= 0.05 + 1e-6
