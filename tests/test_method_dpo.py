"""dpo: DPO (open-unlearning compute_dpo_loss, 2/beta scale) with win = a user-supplied alternate answer."""
from __future__ import annotations

import copy
import json
import math
import random
import re

import numpy as np
import pytest
import torch

from unlearnkit.data.pair import build_paired
from unlearnkit.data.records import Example, load_examples
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.logprobs import forward, mean_nll
from unlearnkit.methods import dpo as dpo_module
from unlearnkit.methods import idk as idk_module
from unlearnkit.methods.dpo import DPO
from unlearnkit.methods.idk import IDK_ANSWERS
from unlearnkit.train import TrainConfig, forget_prob, reference_prepass, run_method

EX = Example("Where was Ana born?", "Ana was born in Lisbon.")


def with_alt(value: object, ex: Example = EX, key: str = "alternate") -> Example:
    return Example(ex.question, ex.answer, extras={key: value})


@pytest.fixture
def alt_examples(tiny_examples):
    """The forget records with two alternates each: answers about other (retain) people."""
    forget, retain = tiny_examples
    return [with_alt([retain[j].answer, retain[j + 8].answer], ex) for j, ex in enumerate(forget)], retain


@pytest.fixture
def alt_paired(alt_examples, tiny_tokenizer):
    forget, retain = alt_examples
    return lambda method, seed=0: build_paired(method, forget, retain, tiny_tokenizer, max_length=128, seed=seed)


def test_dpo_maths_is_idks_and_matches_given_numbers():
    assert dpo_module.dpo_loss is idk_module.dpo_loss  # shared, not duplicated
    t = lambda x: torch.tensor(x)  # noqa: E731
    # margins: (-1 - -2) - (-6 - -5) = 2 and (-3 - -3) - (-4 - -4) = 0; beta 1:
    # -(2/1) * mean(logsig(2), logsig(0)) = ln(1 + e^-2) + ln 2
    loss = dpo_module.dpo_loss(t([-1.0, -3.0]), t([-2.0, -3.0]), t([-6.0, -4.0]), t([-5.0, -4.0]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)) + math.log(2), rel=1e-6)


def test_extra_view_takes_the_alternate_column():
    method = DPO()
    assert method.extra_views(with_alt("Ana was born in Porto."), random.Random(0), []) == {
        "alternate": (EX.question, "Ana was born in Porto.")}
    custom = DPO(alternate_key="fake")
    assert custom.extra_views(with_alt("Ana was born in Faro.", key="fake"), random.Random(0), [])[
        "alternate"][1] == "Ana was born in Faro."


@pytest.mark.parametrize("as_type", [list, tuple, np.array])
def test_a_list_of_alternates_is_drawn_from_with_the_seeded_rng(as_type):
    options = ["Ana was born in Porto.", "Ana was born in Faro.", "  "]  # the blank one is never used
    ex = with_alt(as_type(options))
    draws = [DPO().extra_views(ex, random.Random(seed), [])["alternate"][1] for seed in range(20)]
    assert set(draws) == set(options[:2])
    assert draws == [DPO().extra_views(ex, random.Random(seed), [])["alternate"][1] for seed in range(20)]


@pytest.mark.parametrize("value", [None, "", "   ", [], ["", " "], float("nan")])
def test_missing_alternate_is_a_data_error_that_says_how_to_fix_it(value):
    ex = Example("Where was the famous and rather long-named author Ana Bellamy-Carrington born?", EX.answer,
                 extras={} if value is None else {"alternate": value})
    with pytest.raises(DataError, match="alternate") as err:
        DPO().extra_views(ex, random.Random(0), [])
    msg = str(err.value)
    assert "Where was the famous" in msg and "..." in msg  # names the record, truncated
    assert "method.missing=idk" in msg and "method 'idk'" in msg


def test_missing_idk_falls_back_to_a_refusal_answer():
    method = DPO(missing="idk")
    question, answer = method.extra_views(Example(EX.question, EX.answer), random.Random(3), [])["alternate"]
    assert question == EX.question and answer in IDK_ANSWERS
    assert method.extra_views(with_alt("Ana was born in Porto."), random.Random(3), [])["alternate"][1] == (
        "Ana was born in Porto.")  # records that have one keep it


@pytest.mark.parametrize("value", [3, {"a": "b"}, ["Ana was born in Porto.", 7]])
def test_wrong_column_type_is_a_data_error(value):
    with pytest.raises(DataError, match="string or a list of strings"):
        DPO().extra_views(with_alt(value), random.Random(0), [])


def test_alternate_equal_to_the_answer_is_a_data_error():
    with pytest.raises(DataError, match="equals the forget answer"):
        DPO().extra_views(with_alt([" Ana was born in Lisbon. "]), random.Random(0), [])


def test_building_data_without_alternates_names_the_record(tiny_examples, tiny_tokenizer):
    forget = [Example(ex.question, ex.answer) for ex in tiny_examples[0]]  # no extra columns
    with pytest.raises(DataError, match=re.escape(f"{forget[0].question!r} has no alternate answer in column 'alternate'")):
        build_paired(DPO(), forget, [], tiny_tokenizer, max_length=128)


def test_alternates_load_from_a_jsonl_column(tmp_path, tiny_tokenizer):
    path = tmp_path / "forget.jsonl"
    rows = [{"question": EX.question, "answer": EX.answer, "alternate": ["Ana was born in Porto."]},
            {"question": "Who wrote it?", "answer": "Ana wrote it.", "alternate": "Rui wrote it."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_paired(DPO(), load_examples(path), [], tiny_tokenizer, max_length=64)
    batch = data.forget_batch([0, 1])["alternate"]
    answers = [tiny_tokenizer.decode(batch["input_ids"][i][batch["labels"][i] != -100], skip_special_tokens=True)
               for i in range(2)]
    assert [a.strip() for a in answers] == ["Ana was born in Porto.", "Rui wrote it."]


def test_loss_glue_uses_alternate_and_forget_views_with_their_ref_logp(tiny_model, alt_paired):
    method = DPO()
    assert method.ref_logp_views == ("forget", "alternate") and not method.needs_ref_model
    data = alt_paired(method)
    reference_prepass(tiny_model, data, method.ref_logp_views)
    batch = next(data.batches(4, seed=0))
    out = method.loss(tiny_model, batch, None)
    assert out.logs["forget_loss"] == pytest.approx(20 * math.log(2), rel=1e-5)  # model == reference
    batch["alternate"]["ref_logp"] = batch["alternate"]["ref_logp"] - 1.0  # win log ratio +1 -> margin +1
    shifted = method.loss(tiny_model, batch, None).logs["forget_loss"]
    assert shifted == pytest.approx(-20 * math.log(1 / (1 + math.exp(-0.1))), rel=1e-4)
    del batch["alternate"]["ref_logp"]
    with pytest.raises(RuntimeError, match="ref_logp"):
        method.loss(tiny_model, batch, None)


@torch.no_grad()
def view_prob(model, data, view: str) -> float:
    """Mean exp(-mean answer NLL) of one view over all forget examples."""
    b = data.forget_batch(list(range(len(data.forget))))[view]
    return float(torch.exp(-mean_nll(forward(model, b).logits, b["labels"])).mean())


def test_forget_probability_drops_and_the_alternate_gains(learned_model, alt_paired):
    model, method = copy.deepcopy(learned_model), DPO()
    data = alt_paired(method)
    before, alt_before = forget_prob(model, data), view_prob(model, data, "alternate")
    cfg = TrainConfig(max_steps=8, batch_size=4, lr=3e-3, weight_decay=0.0, progress=False, threads=1)
    result = run_method(model, method, data, cfg)
    assert result.steps == 8 and result.log[-1]["forget_loss"] < 20 * math.log(2)
    assert before > 0.15 and forget_prob(model, data) < 0.5 * before
    assert view_prob(model, data, "alternate") > alt_before


@pytest.mark.parametrize("field", ["beta", "forget_weight", "retain_weight"])
def test_rejects_non_positive_hyperparameters(field):
    with pytest.raises(ConfigError, match=field):
        DPO(**{field: 0.0})


@pytest.mark.parametrize("kwargs, field", [({"retain_loss": "x"}, "retain_loss"), ({"missing": "skip"}, "missing"),
                                           ({"alternate_key": ""}, "alternate_key"),
                                           ({"alternate_key": "  "}, "alternate_key")])
def test_rejects_bad_choices(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DPO(**kwargs)
