"""Deletion-request records: record.json of an unlearn run (no raw text, weights hashes, before /
after), a queue processed in sequence as a hash chain, and `requests verify` catching tampering."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.data.records import Example
from unlearnkit.deletion import item_sha256, verify_chain, weights_sha256
from unlearnkit.storage import sha256_file, verify_manifest

ARGS = ["--no-progress", "train.max_steps=3", "train.batch_size=4", "train.lr=3e-3", "train.threads=1"]


def _write(path: Path, examples) -> Path:
    path.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in examples))
    return path


@pytest.fixture
def queue(tiny_examples, tmp_path):
    forget, retain = tiny_examples
    q = tmp_path / "queue"
    q.mkdir()
    _write(q / "001-alice.jsonl", forget[:5])
    _write(q / "002-bob.jsonl", forget[5:])
    return q, _write(tmp_path / "retain.jsonl", retain)


def _process(queue_dir, retain, model, out, *extra) -> int:
    return main(["requests", "process", str(queue_dir), "--model", str(model), "--retain", str(retain),
                 "--out", str(out), *extra, *ARGS])


def test_item_hash_is_salted():
    ex = Example("Where was Ann born?", "In Oslo.")
    assert item_sha256(ex, "a") == item_sha256(ex, "a") != item_sha256(ex, "b")
    assert item_sha256(ex, "a") != item_sha256(Example("Where was Ann born?", "In Bergen."), "a")


def test_unlearn_writes_a_record_without_raw_text(tiny_model_dir, queue, tmp_path):
    q, retain = queue
    out = tmp_path / "out"
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(q / "001-alice.jsonl"), "--retain",
                 str(retain), "--method", "npo", "--out", str(out), *ARGS]) == 0
    text = (out / "record.json").read_text()
    rec = json.loads(text)
    forget = [json.loads(line) for line in (q / "001-alice.jsonl").read_text().splitlines()]
    assert not any(row["question"] in text or row["answer"] in text for row in forget)  # hashes only
    salt = rec["forget_items"]["salt"]
    assert rec["forget_items"]["sha256"] == [item_sha256(Example(r["question"], r["answer"]), salt) for r in forget]
    assert rec["input_model"]["weights_sha256"] == {"model.safetensors": sha256_file(tiny_model_dir / "model.safetensors")}
    assert rec["output_model"]["weights_sha256"] == weights_sha256(out)
    assert rec["method"] == "npo" and rec["method_args"]["beta"] == 0.1 and rec["seeds"] == {"train": 0}
    assert rec["metrics"]["after"]["forget_prob"] < rec["metrics"]["before"]["forget_prob"]
    assert rec["previous_record_sha256"] is None and "not a proof" in rec["disclaimer"]
    assert rec["software"]["torch"] and verify_manifest(out) is None  # the record is part of the manifest


def test_queue_is_a_verifiable_chain(tiny_model_dir, queue, tmp_path, capsys):
    q, retain = queue
    out = tmp_path / "chain"
    assert _process(q, retain, tiny_model_dir, out) == 0
    chain = json.loads((out / "chain.json").read_text())
    first, second = (json.loads((out / e["record"]).read_text()) for e in chain["entries"])
    assert [e["request_id"] for e in chain["entries"]] == ["001-alice.jsonl", "002-bob.jsonl"]
    assert second["previous_record_sha256"] == chain["entries"][0]["record_sha256"]
    assert second["input_model"]["weights_sha256"] == first["output_model"]["weights_sha256"]
    assert main(["requests", "verify", str(out)]) == 0
    assert "chain verified: 10/10" in capsys.readouterr().out

    _write(q / "003-carol.jsonl", [Example("Who is Carol?", "A test person.")])  # a new request arrives
    assert _process(q, retain, out / "models/001", out) == 2  # not the chain's starting model
    assert "was started from the model" in capsys.readouterr().err
    assert _process(q, retain, tiny_model_dir, out) == 0
    again = json.loads((out / "chain.json").read_text())
    assert again["entries"][:2] == chain["entries"] and len(again["entries"]) == 3  # only the new one ran
    assert verify_chain(out).ok


@pytest.mark.parametrize("tamper, failing", [
    (lambda out: (out / "records/001.json").write_text("{}"), "001 001-alice.jsonl: record hash"),
    (lambda out: (out / "models/002/model.safetensors").write_bytes(b"swapped"), "002 002-bob.jsonl: model weights match the record"),
    (lambda out: (out / "models/001/record.json").write_text("{}"), "001 001-alice.jsonl: record in the model folder"),
])
def test_verify_catches_tampering(tiny_model_dir, queue, tmp_path, capsys, tamper, failing):
    q, retain = queue
    out = tmp_path / "chain"
    assert _process(q, retain, tiny_model_dir, out) == 0
    tamper(out)
    assert main(["requests", "verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"FAIL {failing}" in printed and "chain BROKEN" in printed


def test_keep_last_model_and_refuse_edited_requests(tiny_model_dir, queue, tmp_path, capsys):
    q, retain = queue
    out = tmp_path / "chain"
    assert _process(q, retain, tiny_model_dir, out, "--keep-models", "last") == 0
    assert sorted(p.name for p in (out / "models").iterdir() if p.is_dir()) == ["002"]
    assert verify_chain(out).ok  # the deleted model's record and hashes remain
    (q / "001-alice.jsonl").write_text(json.dumps({"question": "Edited?", "answer": "Yes."}))
    assert _process(q, retain, tiny_model_dir, out) == 2
    assert "already processed from a different file" in capsys.readouterr().err


def test_bad_queues_fail_before_any_model_changes(tiny_model_dir, queue, tmp_path, capsys):
    q, retain = queue
    (q / "000-broken.jsonl").write_text('{"question": "no answer key"}\n')
    out = tmp_path / "chain"
    assert _process(q, retain, tiny_model_dir, out) == 2
    assert "000-broken.jsonl" in capsys.readouterr().err and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _process(empty, retain, tiny_model_dir, out) == 2
    assert "has no request files" in capsys.readouterr().err
    assert main(["requests", "verify", str(tmp_path)]) == 2
    assert "holds no chain.json" in capsys.readouterr().err


def test_audit_results_go_into_the_record(tiny_model_dir, queue, tmp_path, capsys):
    q, retain = queue
    out = tmp_path / "chain"
    assert _process(q, retain, tiny_model_dir, out, "--audit", "quantize") == 0
    rec = json.loads((out / "records/002.json").read_text())
    assert rec["audit"]["file"] == "audits/002.json" and set(rec["audit"]["recovery_ratio"]) == {"quantize"}
    assert rec["audit"]["sha256"] == sha256_file(out / "audits/002.json")
    assert verify_chain(out).ok and verify_manifest(out / "models/002") is None
    (out / "audits/002.json").write_text("{}")
    assert main(["requests", "verify", str(out)]) == 1
    assert "FAIL 002 002-bob.jsonl: audit file matches the record" in capsys.readouterr().out
