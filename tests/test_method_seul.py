"""seul: gradient ascent on sensitive-span tokens only, L = mean over span tokens of log p(x_t | x_<t)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnkit.data.format import IGNORE
from unlearnkit.data.pair import build_paired
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.logprobs import forward, token_logp
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.methods.seul import SeUL, seul_loss
from unlearnkit.train import TrainConfig, run

LN = math.log


# ---------------------------------------------------------------------------- the maths by hand


def _table_batch(labels: list[list[int]]) -> dict[str, dict[str, torch.Tensor]]:
    lab = torch.tensor(labels)
    view = {"input_ids": torch.zeros_like(lab), "labels": lab, "attention_mask": torch.ones_like(lab)}
    return {"span": view}


def test_loss_is_the_mean_log_prob_of_the_span_tokens(table_lm):
    # Row t of the table predicts token t+1. Softmax of each row (V = 3):
    #   row 0 = [0, 0, 0]       -> p = [1/3, 1/3, 1/3]
    #   row 1 = [ln 3, 0, 0]    -> p = [3/5, 1/5, 1/5]
    #   row 2 = [0, ln 2, 0]    -> p = [1/4, 1/2, 1/4]
    table = [[0.0, 0.0, 0.0], [LN(3), 0.0, 0.0], [0.0, LN(2), 0.0], [5.0, -1.0, 2.0]]
    model = table_lm(table)
    # record 0: span tokens at positions 1 (token 0, by row 0) and 3 (token 1, by row 2) -> ln 1/3, ln 1/2
    # record 1: one span token at position 3 (token 2, by row 2) -> ln 1/4
    # position 2 is a non-span answer token of both records: -100 in the span view, no loss
    batch = _table_batch([[IGNORE, 0, IGNORE, 1], [IGNORE, IGNORE, IGNORE, 2]])
    out = SeUL().loss(model, batch, None)
    expected = (LN(1 / 3) + LN(1 / 2) + LN(1 / 4)) / 3  # mean over the batch's 3 span tokens = -0.9242
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.logs["forget_loss"] == pytest.approx(expected, rel=1e-6)
    assert out.logs["span_tokens"] == 3.0 and out.logs["retain_loss"] == 0.0
    # the per-record mean would be ((ln 1/3 + ln 1/2) / 2 + ln 1/4) / 2 = -1.0397: we normalise by |S|
    assert out.loss.item() != pytest.approx(((LN(1 / 3) + LN(1 / 2)) / 2 + LN(1 / 4)) / 2, rel=1e-3)
    out.loss.backward()
    # only rows 0 and 2 predict span tokens: rows 1 (non-span token) and 3 (predicts nothing) get no gradient
    grad_rows = model.table.grad.abs().sum(-1)
    assert grad_rows[0] > 0 and grad_rows[2] > 0 and grad_rows[1] == 0 and grad_rows[3] == 0


def test_forget_weight_scales_and_no_span_tokens_give_zero(table_lm):
    model = table_lm([[0.0, 0.0, 0.0], [LN(3), 0.0, 0.0], [0.0, LN(2), 0.0]])
    batch = _table_batch([[IGNORE, 0, IGNORE]])
    assert SeUL(forget_weight=2.0).loss(model, batch, None).loss.item() == pytest.approx(2 * LN(1 / 3), rel=1e-6)
    empty = SeUL().loss(model, _table_batch([[IGNORE, IGNORE, IGNORE]]), None)  # a record without spans
    assert empty.loss.item() == 0.0 and empty.logs["span_tokens"] == 0.0
    empty.loss.backward()
    assert model.table.grad.abs().sum() == 0  # it contributes nothing
    logp, mask = torch.tensor([[-1.0, -2.0, -4.0]]), torch.tensor([[True, False, True]])
    assert seul_loss(logp, mask).item() == pytest.approx(-2.5)  # (-1 - 4) / 2


# ---------------------------------------------------------------------------- span views on a real tokenizer

ANSWER = "Her code is 4417, mail ann@ex.io."


def _prepared(method: SeUL, tokenizer, model=None, extras=None):
    ex = Example("What is her code?", ANSWER, extras=extras or {})
    data = build_paired(method, [ex], [], tokenizer, max_length=128)
    method.prepare(model, data, TrainConfig(batch_size=4, progress=False))
    return data


def _span_tokens(data, tokenizer) -> list[str]:
    span, forget = data.forget[0]["span"], data.forget[0]["forget"]
    assert span.input_ids == forget.input_ids  # same sequence, only the labels differ
    on = [j for j, lab in enumerate(span.labels) if lab != IGNORE]
    assert all(span.labels[j] == forget.labels[j] == forget.input_ids[j] for j in on)  # answer tokens only
    return [tokenizer.decode([span.input_ids[j]]) for j in on]


def test_span_view_from_records(tiny_tokenizer):
    # the tiny BPE splits "4417" into single digits: the record's "sensitive" string marks exactly those
    data = _prepared(SeUL(spans="records"), tiny_tokenizer, extras={"sensitive": ["4417"]})
    assert _span_tokens(data, tiny_tokenizer) == ["4", "4", "1", "7"]
    # char offsets on the answer: "Her code is 4417, mail " is 23 characters, so "ann@ex.io" = [23, 32)
    data = _prepared(SeUL(spans="records"), tiny_tokenizer, extras={"sensitive_spans": [[23, 32]]})
    assert "".join(_span_tokens(data, tiny_tokenizer)) == "ann@ex.io"


def test_span_view_from_regex_and_union(tiny_tokenizer):
    data = _prepared(SeUL(spans="regex", regex_kinds="email"), tiny_tokenizer)
    assert "".join(_span_tokens(data, tiny_tokenizer)) == "ann@ex.io"
    data = _prepared(SeUL(spans="regex", regex_kinds="digits"), tiny_tokenizer)
    assert _span_tokens(data, tiny_tokenizer) == ["4", "4", "1", "7"]
    # records+regex: the record's "Her" plus the email (regex digits off)
    method = SeUL(spans="records+regex", regex_kinds="email")
    data = _prepared(method, tiny_tokenizer, extras={"sensitive": ["Her"]})
    toks = _span_tokens(data, tiny_tokenizer)
    assert "".join(toks).replace(" ", "") == "Her" + "ann@ex.io"
    assert method.span_tokens == len(toks) and method.span_records == 1 and method.n_spans == 2


def test_span_view_online_keeps_the_most_probable_answer_tokens(tiny_model, tiny_tokenizer):
    method = SeUL(spans="online", online_fraction=0.2)
    data = _prepared(method, tiny_tokenizer, model=tiny_model)
    enc = data.forget[0]["forget"]
    n, T = enc.prompt_len, len(enc.input_ids) - enc.prompt_len - 1  # answer tokens without EOS
    with torch.no_grad():
        probs = torch.softmax(tiny_model(input_ids=torch.tensor([enc.input_ids])).logits[0], -1)
    p = [probs[n + j - 1, enc.input_ids[n + j]].item() for j in range(T)]  # p(x_t | x_<t) by hand
    k = math.ceil(0.2 * T)
    top = sorted(range(T), key=lambda j: -p[j])[:k]
    on = [j - n for j, lab in enumerate(data.forget[0]["span"].labels) if lab != IGNORE]
    assert sorted(top) == on and method.span_tokens == k
    low = SeUL(spans="online", online_fraction=0.2, online_rule="lowest")
    data = _prepared(low, tiny_tokenizer, model=tiny_model)
    on = [j - n for j, lab in enumerate(data.forget[0]["span"].labels) if lab != IGNORE]
    assert on == sorted(sorted(range(T), key=lambda j: p[j])[:k])


def test_default_spans_find_the_synthetic_dates(make_paired, tiny_tokenizer):
    method = SeUL()
    assert method.spans == "records+regex" and method.retain_loss == "none" and not method.needs_retain
    data = make_paired(method)
    method.prepare(None, data, TrainConfig(progress=False))
    # of the 8 synthetic forget records only "... was born on June 19, 1991." has a regex match
    assert method.span_records == 1
    i = next(i for i, ex in enumerate(data.examples) if "1991" in ex.answer)
    span = data.forget[i]["span"]
    text = tiny_tokenizer.decode([t for t, lab in zip(span.input_ids, span.labels) if lab != IGNORE])
    assert text.strip() == "June 19, 1991"


# ---------------------------------------------------------------------------- behaviour on the tiny model


def _span_and_rest_logp(model, data, tokenizer) -> tuple[float, float]:
    """Mean log p of the span tokens and of the other answer tokens (EOS excluded)."""
    from unlearnkit.data.format import collate

    f = collate([v["forget"] for v in data.forget], data.pad_id)
    s = collate([v["span"] for v in data.forget], data.pad_id)
    with torch.no_grad():
        logp, answer = token_logp(forward(model, f).logits, f["labels"])
    span = s["labels"][:, 1:] != IGNORE
    rest = answer & ~span & (f["input_ids"][:, 1:] != tokenizer.eos_token_id)
    return logp[span].mean().item(), logp[rest].mean().item()


def _last_word_records(tiny_examples) -> list[Example]:
    return [Example(e.question, e.answer, extras={"sensitive": [e.answer.split()[-1].rstrip(".")]})
            for e in tiny_examples[0]]


@pytest.mark.parametrize("method_cls", [SeUL, GradAscent])
def test_span_tokens_drop_more_than_the_rest_of_the_answer(method_cls, tiny_model, tiny_tokenizer, tiny_examples):
    forget = _last_word_records(tiny_examples)  # the last word of each answer is "sensitive"
    data = build_paired(SeUL(spans="records"), forget, [], tiny_tokenizer, max_length=128)
    SeUL(spans="records").prepare(tiny_model, data, None)  # the span view, to measure both methods on
    span0, rest0 = _span_and_rest_logp(tiny_model, data, tiny_tokenizer)
    method = SeUL(spans="records") if method_cls is SeUL else GradAscent()
    cfg = TrainConfig(max_steps=5, batch_size=8, lr=1e-2, weight_decay=0.0, progress=False, threads=1)
    run(tiny_model, method, data, cfg)
    span1, rest1 = _span_and_rest_logp(tiny_model, data, tiny_tokenizer)
    d_span, d_rest = span1 - span0, rest1 - rest0  # log of the relative change of p
    if method_cls is SeUL:  # (measured: -0.92 vs -0.21) the span tokens' p falls ~2x more, relatively
        assert d_span < -0.3 and d_span < d_rest - 0.3
    else:  # whole-answer GA has no such preference for the span tokens
        assert d_rest < -0.3 and d_span > d_rest - 0.3


# ---------------------------------------------------------------------------- errors


def test_no_span_anywhere_is_a_data_error(make_paired):
    method = SeUL(spans="records")  # the synthetic records have no 'sensitive' column
    with pytest.raises(DataError, match="no sensitive spans found.*'sensitive'.*spans=regex / spans=online"):
        method.prepare(None, make_paired(method), TrainConfig(progress=False))
    method = SeUL(spans="regex", regex_kinds="email")  # and no email either
    with pytest.raises(DataError, match="no sensitive spans found in the 8 forget records"):
        method.prepare(None, make_paired(method), TrainConfig(progress=False))


def test_bad_record_annotation_is_a_data_error(tiny_tokenizer):
    with pytest.raises(DataError, match="'Bob' does not occur"):
        _prepared(SeUL(spans="records"), tiny_tokenizer, extras={"sensitive": ["Bob"]})


@pytest.mark.parametrize("kwargs, match", [
    ({"regex_kinds": "email,phnoe"}, "regex_kinds.*unknown: phnoe"),
    ({"regex_kinds": " , "}, "regex_kinds"),
    ({"spans": "offline"}, "spans='offline'"),
    ({"online_rule": "middle"}, "online_rule"),
    ({"online_fraction": 0.0}, "online_fraction"),
    ({"online_fraction": 1.5}, "online_fraction"),
    ({"retain_weight": -1.0}, "retain_weight"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SeUL(**kwargs)


def test_empty_regex_kinds_is_fine_without_regex():
    assert SeUL(spans="online", regex_kinds="").kinds == ()


def test_loss_without_prepare_says_so(tiny_model, tiny_batch):
    with pytest.raises(RuntimeError, match="SeUL.prepare"):
        SeUL().loss(tiny_model, tiny_batch(), None)


def test_retain_variants():
    assert SeUL(retain_loss="nll").needs_retain and not SeUL(retain_loss="nll").needs_ref_model
    assert SeUL(retain_loss="kl").needs_ref_model
    assert np.isclose(SeUL().online_fraction, 0.2)
