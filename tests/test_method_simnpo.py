"""simnpo: -(2/beta) * logsigmoid(beta * (mean_nll - delta)), reference-free."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.logprobs import forward, mean_nll
from unlearnkit.methods.base import nll
from unlearnkit.methods.simnpo import SimNPO, simnpo_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_closed_form_on_given_numbers():
    per_example = torch.tensor([1.0, 3.0])
    # beta 2, delta 0.5: -(2/2) * mean(logsig(2 * 0.5), logsig(2 * 2.5)) = mean(softplus(-1), softplus(-5))
    expected = (softplus(-1.0) + softplus(-5.0)) / 2
    assert simnpo_loss(per_example, 2.0, 0.5).item() == pytest.approx(expected, rel=1e-6)
    at_margin = simnpo_loss(torch.tensor([0.25]), 4.5, 0.25)  # mean_nll == delta: (2/beta) ln 2
    assert at_margin.item() == pytest.approx(2 / 4.5 * math.log(2), rel=1e-6)


def test_minimising_raises_the_nll():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    simnpo_loss(x, 4.5, 0.0).backward()
    assert (x.grad < 0).all()


def test_defaults_follow_open_unlearning():
    m = SimNPO()
    assert (m.beta, m.delta, m.forget_weight, m.retain_weight, m.retain_loss) == (4.5, 0.0, 0.125, 1.0, "nll")
    assert m.ref_logp_views == () and not m.needs_ref_model and m.needs_retain


def test_loss_glue_uses_length_normalised_forget_and_nll_retain(tiny_model, tiny_batch):
    method = SimNPO(delta=0.3)
    batch = tiny_batch(method)
    assert "ref_logp" not in batch["forget"]
    out = method.loss(tiny_model, batch, None)
    view = batch["forget"]
    forget = simnpo_loss(mean_nll(forward(tiny_model, view).logits, view["labels"]), 4.5, 0.3)
    retain = nll(tiny_model, batch["retain"])
    assert out.logs["forget_loss"] == pytest.approx(forget.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.125 * forget.item() + retain.item(), rel=1e-6)
