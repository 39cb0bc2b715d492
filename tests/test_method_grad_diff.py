"""grad_diff: gamma * (-NLL forget) + alpha * retain term (open-unlearning GradDiff)."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.methods.grad_diff import GradDiff

LN2, LN3 = math.log(2.0), math.log(3.0)
TABLE = torch.tensor([[0.0, 0.0], [LN3, 0.0], [0.0, 0.0]])  # (T=3, V=2) logits per position


def view(labels: list[int]) -> dict[str, torch.Tensor]:
    lab = torch.tensor([labels])
    return {"input_ids": torch.zeros_like(lab), "attention_mask": torch.ones_like(lab), "labels": lab}


def batch() -> dict[str, dict[str, torch.Tensor]]:
    # forget: p(1 | pos 0) = 1/2, p(0 | pos 1) = 3/4 -> NLL = (ln 2 + ln 4/3) / 2
    # retain: p(0 | pos 0) = 1/2 -> NLL = ln 2
    return {"forget": view([-100, 1, 0]), "retain": view([-100, 0, -100])}


def test_defaults_and_choices():
    m = GradDiff()
    assert (m.forget_weight, m.retain_weight, m.retain_loss) == (1.0, 1.0, "nll")
    assert m.needs_retain and not m.needs_ref_model
    assert GradDiff(retain_loss="kl").needs_ref_model
    with pytest.raises(ConfigError, match="retain_loss"):
        GradDiff(retain_loss="none")  # GradDiff without a retain term is grad_ascent
    with pytest.raises(ConfigError, match="retain_weight"):
        GradDiff(retain_weight=0.0)


def test_nll_retain_by_hand(table_lm):
    out = GradDiff(forget_weight=2.0, retain_weight=0.5).loss(table_lm(TABLE), batch(), None)
    forget_nll = (LN2 + math.log(4 / 3)) / 2
    assert out.loss.item() == pytest.approx(2.0 * -forget_nll + 0.5 * LN2, abs=1e-6)
    assert out.logs["forget_loss"] == pytest.approx(-forget_nll, abs=1e-6)
    assert out.logs["retain_loss"] == pytest.approx(LN2, abs=1e-6)


def test_kl_retain_by_hand(table_lm):
    ref = table_lm(torch.tensor([[LN3, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # p_ref(. | pos 0) = (3/4, 1/4)
    out = GradDiff(retain_loss="kl").loss(table_lm(TABLE), batch(), ref)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_ref || p) at the one retain token
    assert out.logs["retain_loss"] == pytest.approx(kl, abs=1e-6)
    same = GradDiff(retain_loss="kl").loss(table_lm(TABLE), batch(), table_lm(TABLE))
    assert same.logs["retain_loss"] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(RuntimeError, match="reference"):
        GradDiff(retain_loss="kl").loss(table_lm(TABLE), batch(), None)
