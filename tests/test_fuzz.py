"""Bad input, fuzzed (hypothesis): record files of random bytes, random rows (wrong types, huge
strings, unicode edge cases, empty files) and random CLI overrides end in a clean success or a
clear UnlearnkitError - never another exception, never partial output."""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import assume, given, HealthCheck, settings, strategies as st

from unlearnkit.cli import main
from unlearnkit.config import apply_overrides, UnlearnConfig
from unlearnkit.data.records import Example, load_examples
from unlearnkit.errors import DataError, UnlearnkitError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SUFFIXES = (".json", ".jsonl", ".csv")

# unicode edge cases: NUL, BOM, RTL marks, combining marks, emoji, lone surrogates (JSON-escaped)
EDGE = st.sampled_from(["", " ", "\x00", "\ufeff", "\u202e", "e\u0301", "\U0001f600", "\\ud800", "\n", "\r\n", "\t",
                        "x" * 20_000, "null", "NaN", "[]", "{}", '"', ","])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), EDGE)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=6)
KEYS = st.sampled_from(["question", "answer", "text", "perturbed_answer", "paraphrased_answer", "Question", ""]) | st.text(max_size=8)
TEXT = st.text(min_size=1, max_size=40) | EDGE
# mostly well-formed QA rows, some with optional columns of any type, mixed with arbitrary rows
GOOD_ROW = st.fixed_dictionaries({"question": TEXT, "answer": TEXT},
                                 optional={"perturbed_answer": VALUES | st.lists(TEXT, max_size=3),
                                           "paraphrased_answer": VALUES, "extra": VALUES})
ROWS = st.lists(st.one_of(GOOD_ROW, GOOD_ROW, GOOD_ROW, st.dictionaries(KEYS, VALUES, max_size=5), VALUES), max_size=6)


def _outcome(path: Path) -> list[Example] | None:
    """load_examples' result, or None for a clear DataError; anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            examples = load_examples(path)
    except DataError as exc:
        assert str(path.name) in str(exc) or "data file" in str(exc), str(exc)  # the message names the file
        return None
    for ex in examples:  # a success is a usable record set
        assert isinstance(ex.question, str) and ex.question.strip() and isinstance(ex.answer, str) and ex.answer.strip()
        (ex.question + ex.answer).encode("utf-8")  # storable, hashable text (no lone surrogates)
    return examples


def _write_rows(path: Path, rows: list) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, allow_nan=True), encoding="utf-8", errors="surrogatepass")
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r, allow_nan=True) for r in rows), encoding="utf-8", errors="surrogatepass")
    else:
        dict_rows = [r for r in rows if isinstance(r, dict)]
        header = sorted({str(k) for r in dict_rows for k in r})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header)
        writer.writeheader()
        for r in dict_rows:
            writer.writerow({str(k): v for k, v in r.items()})
        path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path, data, suffix):
    path = tmp_path / f"records{suffix}"
    path.write_bytes(data)
    _outcome(path)


@FUZZ
@given(rows=ROWS, suffix=st.sampled_from(SUFFIXES))
def test_random_rows(tmp_path, rows, suffix):
    path = tmp_path / f"rows{suffix}"
    _write_rows(path, rows)
    _outcome(path)


@pytest.mark.parametrize("content", [
    "[" * 100_000,  # nesting deeper than the JSON parser's recursion limit
    '{"question": "q", "answer": "\\ud800"}',  # a lone surrogate: not storable as UTF-8
    '\ufeff{"question": "q", "answer": "a"}',  # a byte-order mark before the first record
    '"just a string"',
    "[1, 2, 3]",
])
def test_json_edge_cases(tmp_path, content):
    path = tmp_path / "edge.jsonl"
    path.write_text(content, encoding="utf-8")
    _outcome(path)


def test_huge_and_unicode_records_load(tmp_path):
    rows = [{"question": "Q " + "é" * 50_000, "answer": "\U0001f600 " * 20_000},
            {"question": "\u202eRTL?", "answer": "e\u0301"}]
    path = tmp_path / "big.jsonl"
    _write_rows(path, rows)
    assert [ex.answer for ex in _outcome(path)] == [r["answer"] for r in rows]


def test_csv_with_nul_and_giant_field(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_text("question,answer\nq\x00,a\n", encoding="utf-8")
    _outcome(path)
    path.write_text("question,answer\nq," + "x" * 200_000 + "\n", encoding="utf-8")
    assert len(_outcome(path)[0].answer) == 200_000


OVERRIDE_KEYS = st.sampled_from(["train.lr", "train.epochs", "train.max_steps", "train.batch_size", "train.scheduler",
                                 "train.resume", "train.guard_loss_blowup", "model.lora.r", "model.path", "method",
                                 "method.beta", "data.max_length", "data.keys.question", "out", "train", "nope.x",
                                 "train.lr.x", "model.lora"])
OVERRIDE_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["1e-5", "-1", "0", "nan", "inf", "true", "null",
                                                                   "[1, 2]", "{a: 1}", "'", "1e999", ""]))


@FUZZ
@given(pairs=st.lists(st.tuples(OVERRIDE_KEYS | st.text(max_size=10), OVERRIDE_VALUES), max_size=4))
def test_random_overrides(pairs):
    try:
        cfg = apply_overrides(UnlearnConfig(), [f"{k}={v}" for k, v in pairs])
        cfg.train.validate()
    except UnlearnkitError:
        return


@FUZZ
@given(rows=ROWS, overrides=st.lists(st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES), max_size=2))
def test_cli_unlearn_fails_cleanly_and_writes_nothing(tmp_path, capsys, rows, overrides):
    """A malformed forget file or bad override: exit code 2 with one error line, no output folder."""
    assume(not any(k in ("out", "train.resume") for k, _ in overrides))
    forget = tmp_path / "forget.jsonl"
    _write_rows(forget, rows)
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tmp_path / "no-model"), "--forget", str(forget), "--method", "grad_ascent",
                 "--out", str(out), "--no-progress", *[f"{k}={v}" for k, v in overrides]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()


def test_forget_items_in_the_retain_set_warn(tiny_model_dir, tiny_examples, tmp_path):
    forget, retain = tiny_examples
    paths = {}
    for name, exs in (("forget", forget), ("retain", retain + forget[:2])):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in exs))
    with pytest.warns(UserWarning, match="2 forget records also appear in the retain set"):
        assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(paths["forget"]), "--retain",
                     str(paths["retain"]), "--method", "grad_diff", "--out", str(tmp_path / "out"), "--no-progress",
                     "train.max_steps=1", "train.threads=1"]) == 0
