"""undial: soft-label CE to the frozen teacher whose gold-token logit is lowered by beta."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.methods.undial import UNDIAL, undial_loss
from unlearnkit.models import frozen_copy
from unlearnkit.train import TrainConfig, forget_prob, run_method


def test_undial_on_given_numbers():
    # V = 3, T = 3: position 0 predicts labels[1] = 1, position 1 predicts labels[2] = 2; position 2 unused
    labels = torch.tensor([[-100, 1, 2]])
    teacher = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]]])
    student = torch.tensor([[[0.0, math.log(2), 0.0], [0.0, 0.0, 0.0], [9.0, -9.0, 0.0]]])
    # beta 2: adjusted teacher pos0 = [1, 0, 0] -> q0 = [e, 1, 1]/(e+2); pos1 = [0, 0, 1] -> q1 = [1, 1, e]/(e+2)
    # student pos0 p = [1/4, 1/2, 1/4]: CE0 = (e*ln4 + ln2 + ln4)/(e+2); pos1 p = 1/3 each: CE1 = ln3
    e = math.e
    ce0 = (e * math.log(4) + math.log(2) + math.log(4)) / (e + 2)
    expected = (ce0 + math.log(3)) / 2
    assert undial_loss(student, teacher, labels, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_prompt_and_padding_positions_do_not_count():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, -100, 3, 1, -100], [-100, 2, 0, -100, -100]])  # -100: prompt / padding
    student, teacher = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    base = undial_loss(student, teacher, labels, 10.0)
    masked_pos = (labels[:, 1:] == -100)  # (B, T-1) positions that predict no answer token
    s2, t2 = student.clone(), teacher.clone()
    s2[:, :-1][masked_pos] += torch.randn(int(masked_pos.sum()), 6) * 5
    t2[:, :-1][masked_pos] -= 7.0
    s2[:, -1] += 3.0  # the last position predicts nothing
    assert undial_loss(s2, t2, labels, 10.0).item() == pytest.approx(base.item(), rel=1e-6)


def test_gradient_is_p_minus_adjusted_teacher_over_n_tokens():
    torch.manual_seed(1)
    labels = torch.tensor([[-100, 4, 1, 2], [-100, -100, 3, -100]])  # n = 4 supervised tokens
    student = torch.randn(2, 4, 5, requires_grad=True)
    teacher = torch.randn(2, 4, 5)
    beta = 3.0
    undial_loss(student, teacher, labels, beta).backward()
    expected = torch.zeros(2, 4, 5)
    for b in range(2):
        for t in range(3):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = teacher[b, t].clone()
            z[y] -= beta  # lower the gold logit by beta
            q = torch.exp(z) / torch.exp(z).sum()
            p = torch.exp(student[b, t].detach()) / torch.exp(student[b, t].detach()).sum()
            expected[b, t] = (p - q) / 4  # d CE(p, q) / d z_student = p - q, averaged over 4 tokens
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-7)


def test_loss_glue_uses_the_live_reference(tiny_model, tiny_batch):
    method = UNDIAL()
    assert method.needs_ref_model and not method.needs_retain and not method.ref_logp_views
    batch = tiny_batch(method)
    with pytest.raises(RuntimeError, match="reference"):
        method.loss(tiny_model, batch, None)
    ref = frozen_copy(tiny_model)
    out = method.loss(tiny_model, batch, ref)
    view = batch["forget"]
    logits = tiny_model(input_ids=view["input_ids"], attention_mask=view["attention_mask"]).logits
    assert out.logs["forget_loss"] == pytest.approx(undial_loss(logits, logits, view["labels"], 10.0).item(), rel=1e-5)
    assert out.logs["retain_loss"] == 0.0
    out.loss.backward()
    assert all(p.grad is None for p in ref.parameters())  # the teacher is not trained
    assert UNDIAL(retain_loss="nll").needs_retain and UNDIAL(retain_loss="nll").needs_ref_model


def test_forget_probability_drops(learned_model, make_paired):
    import copy

    model, method = copy.deepcopy(learned_model), UNDIAL()
    data = make_paired(method)
    before = forget_prob(model, data)
    cfg = TrainConfig(max_steps=8, batch_size=4, lr=1e-2, weight_decay=0.0, progress=False, threads=1)
    run_method(model, method, data, cfg, ref=frozen_copy(model))
    after = forget_prob(model, data)
    assert before > 0.15 and after < 0.7 * before


@pytest.mark.parametrize("field", ["beta", "forget_weight", "retain_weight"])
def test_rejects_non_positive_hyperparameters(field):
    with pytest.raises(ConfigError, match=field):
        UNDIAL(**{field: 0.0})


def test_rejects_unknown_retain_loss():
    with pytest.raises(ConfigError, match="retain_loss"):
        UNDIAL(retain_loss="mse")
