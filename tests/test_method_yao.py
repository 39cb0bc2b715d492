"""yao: 0.5 * GA(forget) + 1 * GD(question, random answer) + 1 * KL(original || model) on retain."""
from __future__ import annotations

import math
import random

import pytest
import torch

from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError
from unlearnkit.methods.yao import Yao, kl_all_positions, yao_loss

LN2, LN3 = math.log(2.0), math.log(3.0)
# model logits per position (T=4, V=2); position 3 is padding in the retain view
MODEL = torch.tensor([[0.0, 0.0], [LN3, 0.0], [0.0, 0.0], [5.0, 0.0]])
REF = torch.tensor([[LN3, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])


def view(labels: list[list[int]], mask: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    lab = torch.tensor(labels)
    att = torch.tensor(mask) if mask is not None else torch.ones_like(lab)
    return {"input_ids": torch.zeros_like(lab), "attention_mask": att, "labels": lab}


def batch() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "forget": view([[-100, 1, 0, -100], [-100, 1, -100, -100]]),  # 2 and 1 answer tokens
        "mismatch": view([[-100, 0, -100, -100]]),
        "retain": view([[-100, 1, 0, -100]], [[1, 1, 1, 0]]),
    }


def kl(p_ref: tuple[float, float], p: tuple[float, float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p_ref, p))


def test_weights_combine_as_released():
    m = Yao()
    assert (m.bad_weight, m.random_weight, m.normal_weight, m.kl_all_positions) == (0.5, 1.0, 1.0, False)
    assert m.needs_ref_model and m.needs_retain
    t = torch.tensor
    total = yao_loss(t(2.0), t(3.0), t(5.0), bad_weight=m.bad_weight, random_weight=m.random_weight,
                     normal_weight=m.normal_weight)
    assert total.item() == 0.5 * 2.0 + 3.0 + 5.0


def test_loss_by_hand(table_lm):
    out = Yao().loss(table_lm(MODEL), batch(), table_lm(REF))
    # GA: per-sample mean answer NLL, then mean over samples (not the token mean (2 ln2 + ln 4/3) / 3)
    fgt = -(((LN2 + math.log(4 / 3)) / 2 + LN2) / 2)
    rdn = LN2  # p(0 | pos 0) = 1/2
    kl0, kl1 = kl((0.75, 0.25), (0.5, 0.5)), kl((0.5, 0.5), (0.75, 0.25))  # the two retain answer tokens
    nor = (kl0 + kl1) / 2
    assert out.logs["forget_loss"] == pytest.approx(fgt, abs=1e-6)
    assert out.logs["mismatch_loss"] == pytest.approx(rdn, abs=1e-6)
    assert out.logs["retain_kl"] == pytest.approx(nor, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * fgt + 1.0 * rdn + 1.0 * nor, abs=1e-6)


def test_kl_all_positions_flag(table_lm):
    out = Yao(kl_all_positions=True).loss(table_lm(MODEL), batch(), table_lm(REF))
    kl0, kl1 = kl((0.75, 0.25), (0.5, 0.5)), kl((0.5, 0.5), (0.75, 0.25))
    assert out.logs["retain_kl"] == pytest.approx((kl0 + kl1 + 0.0) / 3, abs=1e-6)  # pad position 3 excluded
    full = kl_all_positions(MODEL[None], REF[None], torch.ones(1, 4))
    assert full.item() > out.logs["retain_kl"]  # position 3 (padding) would add a large KL
    with pytest.raises(RuntimeError, match="reference"):
        Yao().loss(table_lm(MODEL), batch(), None)


def test_mismatch_view_pairs_the_forget_question_with_a_retain_answer(tiny_batch):
    pool = [Example("q1", "Answer one."), Example("q2", "Answer two.")]
    ex = Example("Where was Ana born?", "Ana was born in Lisbon.")
    q, a = Yao().extra_views(ex, random.Random(0), pool)["mismatch"]
    assert q == ex.question and a in {p.answer for p in pool}
    with pytest.raises(ConfigError, match="retain"):
        Yao().extra_views(ex, random.Random(0), [])
    b = tiny_batch(Yao())
    assert set(b) == {"forget", "mismatch", "retain"}
