"""grad_ascent: Jang et al. 2023 GA = -(HF mean token NLL) on the forget set."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.logprobs import batch_nll, forward
from unlearnkit.methods.grad_ascent import GradAscent, ga_loss

LN3 = math.log(3.0)


def two_token_example() -> tuple[torch.Tensor, torch.Tensor]:
    """V=2. Position 0 predicts label 1 with p=1/2; position 1 predicts label 0 with p=3/4."""
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [0.0, 0.0]]])  # (1, 3, 2)
    labels = torch.tensor([[-100, 1, 0]])  # (1, 3): token 0 is the prompt
    return logits, labels


def test_ga_is_minus_mean_nll_by_hand():
    logits, labels = two_token_example()
    mean_nll = (math.log(2.0) + math.log(4.0 / 3.0)) / 2  # -(ln 1/2 + ln 3/4) / 2
    assert ga_loss(logits, labels).item() == pytest.approx(-mean_nll, abs=1e-6)


def test_loss_glue_uses_the_forget_view_only(table_lm):
    logits, labels = two_token_example()
    model = table_lm(logits[0])
    view = {"input_ids": torch.zeros_like(labels), "attention_mask": torch.ones_like(labels),
            "labels": labels}
    retain = {k: v.clone() for k, v in view.items()}
    retain["labels"] = torch.tensor([[-100, 0, -100]])
    out = GradAscent().loss(model, {"forget": view, "retain": retain}, None)
    expected = -(math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.logs == {"forget_loss": pytest.approx(expected, abs=1e-6)}


def test_gradient_is_minus_the_nll_gradient(tiny_model, tiny_batch):
    method = GradAscent()
    assert not method.needs_retain and not method.needs_ref_model and method.ref_logp_views == ()
    batch = tiny_batch(method)
    assert set(batch) == {"forget"}  # no retain data prepared for GA
    method.loss(tiny_model, batch, None).loss.backward()
    g_ga = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    batch_nll(forward(tiny_model, batch["forget"]).logits, batch["forget"]["labels"]).backward()
    for g, p in zip(g_ga, tiny_model.parameters()):
        torch.testing.assert_close(g, -p.grad)
