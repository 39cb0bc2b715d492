"""idk: DPO (open-unlearning compute_dpo_loss, 2/beta scale) with win = an "I don't know" answer."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

import unlearnkit
from unlearnkit.data.records import Example
from unlearnkit.methods.idk import IDK_ANSWERS, IdkDPO, dpo_loss, load_idk_answers


def test_dpo_on_given_numbers():
    t = lambda x: torch.tensor([x])  # noqa: E731
    # margin = (-2 - -3) - (-5 - -4) = 2; beta 0.5: -(2/0.5) * logsig(0.5 * 2) = 4 * ln(1 + 1/e)
    loss = dpo_loss(t(-2.0), t(-3.0), t(-5.0), t(-4.0), 0.5)
    assert loss.item() == pytest.approx(4 * math.log(1 + math.exp(-1)), rel=1e-6)


def test_dpo_at_the_reference_is_2_ln2_over_beta():
    a, b = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -1.0])
    assert dpo_loss(a, a, b, b, 0.1).item() == pytest.approx(20 * math.log(2), rel=1e-6)


def test_idk_answers_come_from_the_packaged_file():
    path = Path(unlearnkit.__file__).parent / "data" / "idk.txt"
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    assert IDK_ANSWERS == load_idk_answers() == tuple(lines)
    assert len(set(IDK_ANSWERS)) >= 90 and all(len(a) < 80 for a in IDK_ANSWERS)


def test_extra_views_pair_the_question_with_an_idk_answer():
    ex = Example("Where was Ana born?", "Ana was born in Lisbon.")
    views = [IdkDPO().extra_views(ex, random.Random(7), []) for _ in range(2)]
    assert views[0] == views[1]  # seeded
    question, answer = views[0]["idk"]
    assert question == ex.question and answer in IDK_ANSWERS


def test_loss_glue_uses_idk_and_forget_views_with_their_ref_logp(tiny_model, tiny_batch, tiny_tokenizer):
    method = IdkDPO()
    assert method.ref_logp_views == ("forget", "idk") and not method.needs_ref_model
    batch = tiny_batch(method)
    idk, fgt = batch["idk"], batch["forget"]
    for i in range(idk["input_ids"].shape[0]):
        answer_ids = idk["input_ids"][i][idk["labels"][i] != -100]
        assert tiny_tokenizer.decode(answer_ids, skip_special_tokens=True).strip() in IDK_ANSWERS
        n_prompt = int((fgt["labels"][i] == -100).nonzero()[0])  # same question in both views
        assert torch.equal(idk["input_ids"][i][:n_prompt], fgt["input_ids"][i][:n_prompt])
    out = method.loss(tiny_model, batch, None)
    assert out.logs["forget_loss"] == pytest.approx(20 * math.log(2), rel=1e-5)  # model == reference
    idk["ref_logp"] = idk["ref_logp"] - 1.0  # win log ratio +1 -> margin +1
    shifted = method.loss(tiny_model, batch, None).logs["forget_loss"]
    assert shifted == pytest.approx(-20 * math.log(1 / (1 + math.exp(-0.1))), rel=1e-4)
    del idk["ref_logp"]
    with pytest.raises(RuntimeError, match="ref_logp"):
        method.loss(tiny_model, batch, None)
