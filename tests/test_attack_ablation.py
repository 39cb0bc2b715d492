"""ablation: direction ablation / orthogonalization (Łucki et al. 2024; Arditi et al. 2024)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearnkit.attacks.ablation import (
    Ablation,
    LayerAblation,
    masked_mean,
    orthogonalize_linear,
    orthogonalize_weights,
    parse_layers,
    project_out,
    token_mask,
)
from unlearnkit.attacks.base import AttackData
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import PromptTemplate
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.recovery import recovery_ratio
from unlearnkit.models import decoder_layers
from unlearnkit.registry import ATTACKS


# ------------------------------------------------------------------------------ maths by hand
def test_orthogonalize_linear_by_hand():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (d_out=3, d_in=2)
    r = torch.tensor([2.0, 2.0, 0.0])  # r̂ = (1, 1, 0) / sqrt(2); the norm of r must not matter
    # r̂ r̂ᵀ W = 0.5 * [[1+3, 2+4], [1+3, 2+4], [0, 0]] = [[2, 3], [2, 3], [0, 0]]
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [5.0, 6.0]])
    out = orthogonalize_linear(w, r)
    torch.testing.assert_close(out, expected)
    x = torch.tensor([[0.3, -1.7], [2.0, 5.0], [1.0, 0.0]])  # (3 inputs, d_in)
    torch.testing.assert_close((x @ out.t()) @ r, torch.zeros(3))  # every output W'x is orthogonal to r
    # a vector: (3, 4, 7) - ((3 + 4) / 2) (1, 1, 0) = (-0.5, 0.5, 7)
    torch.testing.assert_close(project_out(torch.tensor([3.0, 4.0, 7.0]), r), torch.tensor([-0.5, 0.5, 7.0]))
    # a zero direction removes nothing
    torch.testing.assert_close(orthogonalize_linear(w, torch.zeros(3)), w)


def test_direction_from_explicit_activations():
    # two records, width 3, d = 2; record 0 has 3 tokens with a 2-token prompt, record 1 has 2 tokens
    # with a 1-token prompt
    mask = token_mask([3, 2], [2, 1], positions="prompt", skip_first=0, width=3)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert token_mask([3, 2], [2, 1], positions="last", skip_first=0, width=3).tolist() == \
        [[False, True, False], [True, False, False]]
    assert token_mask([3, 2], [2, 1], positions="all", skip_first=1, width=3).tolist() == \
        [[False, True, True], [False, True, False]]
    target = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]], [[2.0, 4.0], [9.0, 9.0], [9.0, 9.0]]])
    model = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [7.0, 7.0]], [[2.0, 1.0], [7.0, 7.0], [7.0, 7.0]]])
    mean_t, n = masked_mean(target, mask)  # tokens (1,0), (3,2), (2,4) -> (2, 2)
    mean_m, _ = masked_mean(model, mask)  # tokens (0,0), (1,1), (2,1) -> (1, 2/3)
    assert n == 3
    torch.testing.assert_close(mean_t - mean_m, torch.tensor([1.0, 4.0 / 3.0]))


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("2, 0,2", 3) == [0, 2]
    with pytest.raises(ConfigError, match="0..2"):
        parse_layers("3", 3)


# ------------------------------------------------------------------- exactness on the tiny model
def _layer_outputs(model, ids):
    """Outputs of the embedding and of every decoder layer, (1, T, d) each."""
    seen, mods = [], [model.get_input_embeddings(), *decoder_layers(model)]
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
               for m in mods]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_weight_orthogonalization_is_exact_and_equals_ablation_everywhere(tiny_model):
    torch.manual_seed(0)
    r = torch.randn(tiny_model.config.hidden_size)
    ids = torch.tensor([[1, 5, 9, 30, 2, 77]])
    edited = copy.deepcopy(tiny_model)
    n = orthogonalize_weights(edited, r)
    assert n == 1 + 2 * len(decoder_layers(tiny_model))  # embeddings + o_proj + down_proj per layer
    assert edited.lm_head.weight is not edited.get_input_embeddings().weight  # untied: the head is unchanged
    torch.testing.assert_close(edited.lm_head.weight, tiny_model.lm_head.weight)
    outs, logits = _layer_outputs(edited, ids)
    for h in outs:  # no residual-stream state has a component along r
        assert (h @ (r / r.norm())).abs().max() < 1e-5
    # the same as projecting r out of everything the original model adds to its residual stream: the
    # embedding, every attention block's and every MLP's output
    hooked = copy.deepcopy(tiny_model)
    for m in [hooked.get_input_embeddings(), *(b for layer in decoder_layers(hooked) for b in (layer.self_attn, layer.mlp))]:
        m.register_forward_hook(LayerAblation(r))
    _, expected = _layer_outputs(hooked, ids)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- behaviour
def test_ablation_recovers_held_out_forget_knowledge(unlearned, learned_model, tiny_model, tiny_tokenizer,
                                                     tiny_forget_tofu, tiny_examples):
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:],
                      retain=tiny_examples[1], max_length=128, target=learned_model)
    prob = lambda m: forget_probability(m, tiny_tokenizer, data.forget_eval, PromptTemplate(), 128)  # noqa: E731
    target, before = prob(learned_model), prob(unlearned)
    ratio = lambda a: recovery_ratio(attacked=a, unlearned=before, target=target).value  # noqa: E731
    out = Ablation().run(unlearned, tiny_tokenizer, data)  # weights, source=target, all layers
    attacked = prob(out.model)
    print(f"\ntarget {target:.4f} unlearned {before:.4f} attacked {attacked:.4f} ratio {ratio(attacked):.3f} "
          f"info {out.info}")
    assert target > 3 * before
    # GA does not act through one direction: recovery is real but small (~0.11 of the gap; 2.5x the
    # unlearned probability)
    assert attacked > 1.5 * before and ratio(attacked) > 0.05
    assert out.info["source"] == "target" and out.info["layers"] == [0, 1, 2]
    assert all(math.isfinite(v) and v > 0 for v in out.info["direction_norms"].values())

    # Łucki's per-layer hooks and the no-target direction: printed; on this model they recover ~nothing
    hooks = prob(Ablation(apply="hooks").run(unlearned, tiny_tokenizer, data).model)
    fvr = prob(Ablation(source="forget_vs_retain").run(unlearned, tiny_tokenizer, data).model)
    print(f"hooks (Łucki) {hooks:.4f} ratio {ratio(hooks):.3f}; forget_vs_retain {fvr:.4f} ratio {ratio(fvr):.3f}")
    assert hooks != before and fvr != before  # they do edit the model ...
    assert ratio(hooks) < ratio(attacked) and ratio(fvr) < ratio(attacked)  # ... but recover less

    # controls. (a) The audit's honest floor: the attack on a model that never learned the forget set,
    # with the real target: the direction is large but there is nothing hidden to bring back.
    never = prob(tiny_model)
    never_attacked = prob(Ablation().run(tiny_model, tiny_tokenizer, data).model)
    print(f"never-learned model {never:.5f} -> attacked {never_attacked:.5f}")
    assert abs(never_attacked - never) < 0.1 * (attacked - before)
    # (b) target = the attacked model itself: the direction is zero and the attack changes nothing
    same = AttackData(data.forget_train, data.forget_eval, max_length=128, target=unlearned)
    for apply in ("weights", "hooks"):
        zero = Ablation(apply=apply).run(unlearned, tiny_tokenizer, same)
        assert all(v == 0.0 for v in zero.info["direction_norms"].values())
        assert prob(zero.model) == pytest.approx(before, abs=1e-7)


def test_hooks_ablate_their_own_layer_and_leave_the_input_alone(unlearned, learned_model, tiny_tokenizer,
                                                                tiny_forget_tofu):
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:], max_length=128,
                      target=learned_model)
    before = {n: p.detach().clone() for n, p in unlearned.named_parameters()}
    attack = Ablation(apply="hooks", layers="1")
    dirs = attack.directions(unlearned, tiny_tokenizer, data, [1])
    out = attack.run(unlearned, tiny_tokenizer, data)
    assert out.info["layers"] == [1]
    outs, _ = _layer_outputs(out.model, torch.tensor([[1, 5, 9, 30]]))
    assert (outs[2] @ (dirs[1] / dirs[1].norm())).abs().max() < 1e-5  # layer 1's output (outs[0]: embedding)
    assert all(torch.equal(p, before[n]) for n, p in unlearned.named_parameters())
    assert not any(m._forward_hooks for m in unlearned.modules())  # no hook left on the input model


# ---------------------------------------------------------------------------------- errors
def test_ablation_errors(tiny_model, tiny_tokenizer, tiny_forget_tofu):
    assert ATTACKS.get("ablation") is Ablation
    with pytest.raises(ConfigError, match="layers"):
        Ablation(layers="1-2")
    with pytest.raises(ConfigError, match="layers"):
        Ablation(layers="")
    for bad in ({"source": "oracle"}, {"apply": "both"}, {"positions": "first"}, {"skip_first": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Ablation(**bad)
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:], max_length=128)
    with pytest.raises(DataError, match="--reference"):
        Ablation().run(tiny_model, tiny_tokenizer, data)
    with pytest.raises(DataError, match="--retain"):
        Ablation(source="forget_vs_retain").run(tiny_model, tiny_tokenizer, data)
    with pytest.raises(DataError, match="forget_train"):
        Ablation().run(tiny_model, tiny_tokenizer, AttackData(forget_train=[], forget_eval=tiny_forget_tofu))
    data.target = tiny_model
    with pytest.raises(ConfigError, match="decoder layers"):
        Ablation(layers="0,7").run(tiny_model, tiny_tokenizer, data)
    with pytest.raises(DataError, match="skip_first"):
        Ablation(skip_first=500).run(tiny_model, tiny_tokenizer, data)


def test_weight_orthogonalization_gpt2_conv1d_and_biases():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0)).eval()  # eval: no dropout
    r = torch.randn(16)
    n = orthogonalize_weights(model, r)
    assert n == 2 + 2 * 2  # wte, wpe + attn.c_proj, mlp.c_proj per layer (HF Conv1D, with biases)
    outs, _ = _layer_outputs(model, torch.tensor([[3, 1, 4, 1, 5]]))
    for h in outs[1:]:  # outs[0] is wte alone; wpe is added next to it
        assert (h @ (r / r.norm())).abs().max() < 1e-5
