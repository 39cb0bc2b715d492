"""Sensitive-span annotation (`unlearnkit.annotate`, `unlearnkit annotate`): SeUL's annotation step."""
from __future__ import annotations

import json

import numpy as np
import pytest

from unlearnkit.annotate import annotate, annotate_file, answer_token_logp, answer_token_offsets
from unlearnkit.cli import main
from unlearnkit.data.format import PromptTemplate, encode
from unlearnkit.data.records import Example, load_examples
from unlearnkit.data.spans import select_tokens, spans_from_example
from unlearnkit.errors import ConfigError
from unlearnkit.metrics.sensitive_probes import answer_span_mask

ANSWER = "Call 555-123-4567 or mail ann@ex.io before 2020."


def test_regex_and_record_spans_by_hand():
    ex = Example("How to reach her?", ANSWER, extras={"sensitive": ["mail"]})
    (regex,) = annotate([ex], source="regex", kinds=("email", "phone"))
    assert [ANSWER[s:e] for s, e in regex] == ["555-123-4567", "ann@ex.io"]
    assert regex == [(5, 17), (26, 35)]
    (both,) = annotate([ex], source="records+regex", kinds=("email", "phone"))
    assert [ANSWER[s:e] for s, e in both] == ["555-123-4567", "mail", "ann@ex.io"]  # union, sorted
    (digits,) = annotate([ex], source="regex", kinds=("digits",))
    assert [ANSWER[s:e] for s, e in digits] == ["555", "123", "4567", "2020"]
    assert annotate([ex], source="records") == [[(21, 25)]]


def test_online_spans_are_the_selected_tokens(tiny_model, tiny_tokenizer, tiny_examples):
    forget, _ = tiny_examples
    examples, template = forget[:4], PromptTemplate()
    encs = [encode(e.question, e.answer, tiny_tokenizer, template=template) for e in examples]
    spans = annotate(examples, source="online", model=tiny_model, tokenizer=tiny_tokenizer, fraction=0.3)
    scores = answer_token_logp(tiny_model, encs, tiny_tokenizer.pad_token_id)
    for enc, ex, sp, s in zip(encs, examples, spans, scores):
        chosen = select_tokens(np.exp(s), 0.3, "highest")  # (T,) the top 30% by the model's p(x_t|x_<t)
        assert chosen.sum() == int(np.ceil(0.3 * np.isfinite(s).sum() - 1e-9))
        back = answer_span_mask(enc, ex, sp, tiny_tokenizer, template)  # spans -> tokens again
        assert np.array_equal(back, chosen)
        offsets = answer_token_offsets(enc, ex, tiny_tokenizer, template)
        assert "".join(ex.answer[a:b] for a, b in offsets).replace(" ", "") == ex.answer.replace(" ", "")


def test_annotate_file_and_cli_write_a_sensitive_spans_column(tmp_path, capsys):
    src = tmp_path / "forget.jsonl"
    rows = [{"question": "Q1?", "answer": ANSWER, "keep": 1}, {"question": "Q2?", "answer": "Nothing here."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = annotate_file(str(src), str(tmp_path / "a.jsonl"), source="regex", kinds=("email",))
    assert counts == {"records": 2, "annotated": 1, "spans": 1}
    out = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert out[0]["keep"] == 1 and out[0]["sensitive_spans"] == [[26, 35]] and out[1]["sensitive_spans"] == []
    assert spans_from_example(load_examples(str(tmp_path / "a.jsonl"))[0]) == [(26, 35)]  # eval / seul read it
    assert main(["annotate", str(src), "--out", str(tmp_path / "b.jsonl"), "--kinds", "phone,email"]) == 0
    assert "2 sensitive spans in 1 of 2 records" in capsys.readouterr().out


def test_annotate_errors_name_the_setting(tmp_path, capsys):
    ex = Example("q", ANSWER)
    with pytest.raises(ConfigError, match="spans=online scores tokens with a model"):
        annotate([ex], source="online")
    with pytest.raises(ConfigError, match="regex_kinds"):
        annotate([ex], source="regex", kinds=("ssn",))
    with pytest.raises(ConfigError, match="spans="):
        annotate([ex], source="everything")
    src = tmp_path / "f.jsonl"
    src.write_text(json.dumps({"question": "q", "answer": ANSWER}) + "\n")
    assert main(["annotate", str(src), "--out", str(tmp_path / "o.jsonl"), "--spans", "online"]) == 2
    assert "model.path is not set" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written
    assert main(["annotate", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
