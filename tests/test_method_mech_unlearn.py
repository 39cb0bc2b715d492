"""Mechanistic unlearning: the log(1 - p) loss by hand, the localizations' parameter subsets, and the
output-tracing localizations (attribution patching, causal tracing) at the FLU parameter budget."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.methods import mech_unlearn as mu
from unlearnkit.methods.mech_unlearn import (MechUnlearn, attribution_score, log_1_minus_p_loss, position_mean,
                                             take_until_budget)
from unlearnkit.train import Finetune, TrainConfig, forget_prob, run


def test_log_1_minus_p_by_hand():
    """Logits at positions 0, 1 predict tokens 1, 2 (labels are next-token aligned inside):
    position 0: logits (0, ln 3, 0) -> p(label 1) = 3/5, log(1 - p) = ln(2/5);
    position 1: logits (0, 0, -10) -> p(label 2) = e^-10 / (2 + e^-10), log p < -5 -> contributes 0;
    loss = -(ln 0.4 + 0) / 2 supervised tokens."""
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [0.0, 0.0, -10.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 2]])
    assert float(log_1_minus_p_loss(logits, labels)) == pytest.approx(-math.log(0.4) / 2, abs=1e-6)
    # without the floor the second token counts too: log(1 - p) = ln(2 / (2 + e^-10))
    no_floor = -(math.log(0.4) + math.log(2 / (2 + math.exp(-10)))) / 2
    assert float(log_1_minus_p_loss(logits, labels, logp_floor=-100.0)) == pytest.approx(no_floor, abs=1e-6)


def _trainable(method, model) -> set[str]:
    method.select_params(model)
    try:
        return {n for n, p in model.named_parameters() if p.requires_grad}
    finally:
        method.teardown(model)


def test_localizations_select_the_right_parameters(tiny_model):
    flu = _trainable(MechUnlearn(layers=[1]), tiny_model)
    assert flu and all(n.startswith("model.layers.1.mlp.") for n in flu)
    assert {n.split(".")[-2] for n in flu} == {"gate_proj", "up_proj", "down_proj"}
    mlps = _trainable(MechUnlearn(localization="all_mlps"), tiny_model)
    assert flu < mlps and all(".mlp." in n for n in mlps)
    budget = sum(p.numel() for n, p in tiny_model.named_parameters() if n in flu)
    rnd = _trainable(MechUnlearn(localization="random", layers=[1], seed=3), tiny_model)
    assert 0 < sum(p.numel() for n, p in tiny_model.named_parameters() if n in rnd) <= budget  # equal budget
    assert rnd != flu
    assert all(p.requires_grad for p in tiny_model.parameters())  # teardown restored everything
    with pytest.raises(ConfigError, match="layers"):
        MechUnlearn(layers=[7]).select_params(tiny_model)


def test_localized_unlearning_lowers_forget_prob_and_leaves_other_weights(tiny_model, make_paired):
    method = MechUnlearn(layers=[1], retain_loss="none")
    data = make_paired(method)
    run(tiny_model, Finetune(), data, TrainConfig(lr=3e-3, max_steps=30, batch_size=8, progress=False, threads=1))
    before_prob = forget_prob(tiny_model, data)
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if ".layers.1.mlp." not in n}
    run(tiny_model, method, data, TrainConfig(lr=3e-3, max_steps=20, batch_size=8, progress=False, threads=1,
                                               weight_decay=0.0))
    assert forget_prob(tiny_model, data) < 0.5 * before_prob
    assert all(torch.equal(p.detach(), frozen[n]) for n, p in tiny_model.named_parameters() if n in frozen)


def test_take_until_budget_by_hand():
    """sizes 5, 3, 4, 2 visited in the order 2, 0, 1, 3:
    budget 10: take 2 (4), take 0 (9), skip 1 (12 > 10), skip 3 (11 > 10) -> [2, 0];
    budget 8:  take 2 (4), skip 0 (9 > 8), take 1 (7), skip 3 (9 > 8) -> [2, 1];
    budget 3:  skip 2, skip 0, take 1 (3), skip 3 (5 > 3) -> [1]; budget 1: nothing fits."""
    sizes, order = [5, 3, 4, 2], [2, 0, 1, 3]
    assert take_until_budget(order, sizes, 10) == [2, 0]
    assert take_until_budget(order, sizes, 8) == [2, 1]
    assert take_until_budget(order, sizes, 3) == [1]
    assert take_until_budget(order, sizes, 1) == []


def test_mean_corruption_and_attribution_score_by_hand():
    acts = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])  # (1, 3, 2); position 2 is padding
    mask = torch.tensor([[True, True, False]])
    mean = position_mean(acts, mask)
    assert mean.tolist() == [2.0, 4.0]  # ((1 + 3) / 2, (2 + 6) / 2)
    grad = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])
    # sum of grad * (acts - mean): 1 * (1 - 2) + 2 * (6 - 4) = -1 + 4 = 3
    assert float(attribution_score(grad, acts, mean)) == pytest.approx(3.0)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _only_layer2_mlp_matters(model) -> None:
    """Zero every attention output projection and every MLP down projection but layer 2's: then
    only layer 2's MLP changes the logits, so it is the only component with a non-zero score."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("o_proj.weight") or (name.endswith("down_proj.weight") and ".layers.2." not in name):
                p.zero_()


@pytest.mark.parametrize("kw", [dict(localization="attribution"),
                                dict(localization="attribution", corruption="noise"),
                                dict(localization="causal_tracing")], ids=["ap-mean", "ap-noise", "ct"])
def test_ranked_localization_finds_the_one_component_that_matters(tiny_model, make_paired, kw):
    _only_layer2_mlp_matters(tiny_model)
    method = MechUnlearn(layers=[1], **kw)  # budget = one MLP
    method.prepare(tiny_model, make_paired(method), TrainConfig(batch_size=4))
    assert _hooks(tiny_model) == 0
    assert abs(method.scores["model.layers.2.mlp"]) > 1e-3
    assert all(abs(s) < 1e-6 for n, s in method.scores.items() if n != "model.layers.2.mlp")
    trainable = _trainable(method, tiny_model)
    assert method.chosen == ["model.layers.2.mlp"]
    assert trainable == {f"model.layers.2.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}


def test_attribution_and_causal_tracing_fill_the_flu_budget(tiny_model, make_paired):
    comps = mu._components(tiny_model)
    budget = sum(c.size for c in comps if c.kind == "mlp" and c.layer == 1)
    for kw in (dict(localization="attribution"), dict(localization="causal_tracing")):
        method = MechUnlearn(layers=[1], localize_examples=4, **kw)
        method.prepare(tiny_model, make_paired(method), TrainConfig(batch_size=4))
        assert len(method.scores) == len(comps) and max(abs(s) for s in method.scores.values()) > 1e-3
        method.select_params(tiny_model)
        method.teardown(tiny_model)
        count = sum(c.size for c in comps if c.name in method.chosen)
        assert budget - max(c.size for c in comps) < count <= budget  # within one component of the budget
        best = max(method.scores, key=lambda n: abs(method.scores[n]))
        assert method.chosen[0] == best  # taken in score order


@pytest.mark.parametrize("kw", [dict(localization="attribution"),
                                dict(localization="attribution", corruption="noise"),
                                dict(localization="causal_tracing"), dict(localization="random", seed=1)],
                         ids=["ap-mean", "ap-noise", "ct", "random"])
def test_two_step_run_trains_only_the_chosen_components(tiny_model, make_paired, kw):
    # the untrained model gives every answer token log p < -5: no floor, so the forget loss has a gradient
    method = MechUnlearn(layers=[1], retain_loss="none", localize_examples=4, logp_floor=-1e9, **kw)
    data = make_paired(method)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    run(tiny_model, method, data, TrainConfig(lr=1e-2, max_steps=2, batch_size=4, progress=False, threads=1,
                                              weight_decay=0.0))
    assert method.chosen  # kept after the run, for the user
    chosen = tuple(n + "." for n in method.chosen)
    changed = {n for n, p in tiny_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith(chosen) for n in changed)
    assert _hooks(tiny_model) == 0 and all(p.requires_grad for p in tiny_model.parameters())


def test_hooks_are_removed_when_scoring_fails(tiny_model, make_paired, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(mu, "_answer_logp", boom)
    for loc in ("attribution", "causal_tracing"):
        method = MechUnlearn(localization=loc)
        with pytest.raises(RuntimeError, match="boom"):
            method.prepare(tiny_model, make_paired(method), TrainConfig(batch_size=4))
        assert _hooks(tiny_model) == 0


def test_bad_options_raise_config_errors(tiny_model):
    for field, value in (("localization", "ablation"), ("corruption", "zero"), ("noise_scale", -1.0),
                         ("localize_examples", 0)):
        with pytest.raises(ConfigError, match=field):
            MechUnlearn(**{field: value})
    with pytest.raises(RuntimeError, match="prepare"):  # ranked localizations need the forget data
        MechUnlearn(localization="causal_tracing").select_params(tiny_model)
