"""npo: -(2/beta) * logsigmoid(-beta * (logp - ref_logp)) on summed answer log-probs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnkit.logprobs import forward, sequence_logp
from unlearnkit.methods.base import nll
from unlearnkit.methods.npo import NPO, npo_loss


def test_at_the_reference_npo_is_2_ln2_over_beta():
    logp = torch.tensor([-3.0, -7.5])
    assert npo_loss(logp, logp.clone(), 0.1).item() == pytest.approx(20 * math.log(2), rel=1e-6)  # 13.8629


def test_npo_on_given_numbers():
    logp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])  # log ratios +1, -1
    # beta = 1: -2 * mean(logsig(-1), logsig(1)) = ln(1 + e) + ln(1 + 1/e)
    expected = math.log(1 + math.e) + math.log(1 + 1 / math.e)
    assert npo_loss(logp, ref, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_small_beta_gradient_is_ga_on_summed_nll(tiny_model, tiny_batch):
    view = tiny_batch()["forget"]
    logp = sequence_logp(forward(tiny_model, view).logits, view["labels"])  # (B,)
    params = list(tiny_model.parameters())
    g_npo = torch.autograd.grad(npo_loss(logp, logp.detach(), 1e-4), params, retain_graph=True)
    g_ga = torch.autograd.grad(logp.mean(), params)  # GA on summed NLL: minimise -NLL_sum = logp
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert F.cosine_similarity(flat(g_npo), flat(g_ga), dim=0).item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(flat(g_npo), flat(g_ga), rtol=1e-3, atol=1e-6)  # d/dlogp = 2σ(0)/B = 1/B


def test_loss_reads_ref_logp_from_the_batch(tiny_model, tiny_batch):
    method = NPO()
    assert method.ref_logp_views == ("forget",) and not method.needs_ref_model  # no live reference
    batch = tiny_batch(method)
    assert batch["forget"]["ref_logp"].shape == (4,)
    out = method.loss(tiny_model, batch, None)
    assert out.logs["forget_loss"] == pytest.approx(20 * math.log(2), rel=1e-5)  # model == reference
    assert out.logs["retain_loss"] == pytest.approx(nll(tiny_model, batch["retain"]).item(), rel=1e-6)
    batch["forget"]["ref_logp"] = batch["forget"]["ref_logp"] + 1.0  # log ratio -1 for every example
    shifted = method.loss(tiny_model, batch, None).logs["forget_loss"]
    assert shifted == pytest.approx(-20 * math.log(1 / (1 + math.exp(-0.1))), rel=1e-4)
    del batch["forget"]["ref_logp"]
    with pytest.raises(RuntimeError, match="ref_logp"):
        method.loss(tiny_model, batch, None)


def test_retain_variants():
    assert NPO(retain_loss="none").needs_retain is False
    assert NPO(retain_loss="kl").needs_ref_model is True
