"""wga: -mean over answer tokens of [p^beta * CE] with the weight p^beta detached, plus retain NLL."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.logprobs import batch_nll, forward, token_logp
from unlearnkit.methods.base import nll
from unlearnkit.methods.wga import WGA, wga_loss
from unlearnkit.train import TrainConfig, forget_prob, run_method


def test_wga_on_given_numbers():
    # answer-token probabilities 0.5, 0.25 (row 0) and 0.8 (row 1); the zeros are masked positions
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 0.0], [math.log(0.8), 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # beta 1: -(0.5*ln2 + 0.25*ln4 + 0.8*ln1.25)/3 ; beta 2: weights squared
    b1 = -(0.5 * math.log(2) + 0.25 * math.log(4) + 0.8 * math.log(1.25)) / 3
    b2 = -(0.25 * math.log(2) + 0.0625 * math.log(4) + 0.64 * math.log(1.25)) / 3
    assert wga_loss(logp, mask, 1.0).item() == pytest.approx(b1, rel=1e-6)
    assert wga_loss(logp, mask, 2.0).item() == pytest.approx(b2, rel=1e-6)


def test_weight_is_detached(table_lm):
    # T = 3, V = 4: position 0 predicts 2, position 1 predicts 0, position 2 predicts nothing
    lm = table_lm([[0.5, -1.0, 2.0, 0.0], [1.0, 0.3, -0.2, 0.7], [3.0, 3.0, 3.0, 3.0]])
    labels = torch.tensor([[-100, 2, 0]])
    view = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3), "labels": labels}
    beta = 2.0
    WGA(beta=beta, retain_loss="none").loss(lm, {"forget": view}, None).loss.backward()
    expected = torch.zeros(3, 4)
    undetached = torch.zeros(3, 4)
    for t, y in ((0, 2), (1, 0)):
        p = torch.softmax(lm.table.detach()[t], -1)  # (V,)
        d_logp = torch.nn.functional.one_hot(torch.tensor(y), 4) - p  # d log p_y / d z
        w = p[y] ** beta
        expected[t] = w * d_logp / 2  # constant weight times the GA gradient, mean over 2 tokens
        undetached[t] = w * (1 + beta * torch.log(p[y])) * d_logp / 2  # what a non-detached weight gives
    torch.testing.assert_close(lm.table.grad, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(expected, undetached, atol=1e-3)  # the test tells the two apart


def test_small_beta_is_gradient_ascent(tiny_model, tiny_batch):
    view = tiny_batch()["forget"]
    logits = forward(tiny_model, view).logits
    logp, mask = token_logp(logits, view["labels"])
    # beta -> 0: every weight -> 1, so L_forget -> -(HF mean NLL over the batch's answer tokens)
    assert wga_loss(logp, mask, 1e-9).item() == pytest.approx(-batch_nll(logits, view["labels"]).item(), rel=1e-6)


def test_loss_glue_combines_forget_and_retain(tiny_model, tiny_batch):
    method = WGA()
    assert not method.needs_ref_model and method.needs_retain and not method.ref_logp_views
    batch = tiny_batch(method)
    out = method.loss(tiny_model, batch, None)
    view = batch["forget"]
    with torch.no_grad():
        logp, mask = token_logp(forward(tiny_model, view).logits, view["labels"])
    p = logp.exp()
    expected = float(((p * logp) * mask).sum() / mask.sum())  # -mean(p * CE), beta 1
    assert out.logs["forget_loss"] == pytest.approx(expected, rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(nll(tiny_model, batch["retain"]).item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(out.logs["forget_loss"] + out.logs["retain_loss"], rel=1e-5)


def test_forget_probability_drops(learned_model, make_paired):
    model, method = copy.deepcopy(learned_model), WGA()
    data = make_paired(method)
    before = forget_prob(model, data)
    cfg = TrainConfig(max_steps=8, batch_size=4, lr=1e-2, weight_decay=0.0, progress=False, threads=1)
    run_method(model, method, data, cfg)
    after = forget_prob(model, data)
    assert before > 0.15 and after < 0.5 * before


@pytest.mark.parametrize("field", ["beta", "forget_weight", "retain_weight"])
def test_rejects_non_positive_hyperparameters(field):
    with pytest.raises(ConfigError, match=field):
        WGA(**{field: -1.0})


def test_rejects_unknown_retain_loss():
    with pytest.raises(ConfigError, match="retain_loss"):
        WGA(retain_loss="NLL")
