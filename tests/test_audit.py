"""`unlearnkit audit` (first slice): attacks, recovery ratios, audit.json, --fail-above."""
from __future__ import annotations

import json

import pytest

from unlearnkit.cli import main
from unlearnkit.data.pair import build_paired
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.models import save_model
from unlearnkit.train import TrainConfig, run


@pytest.fixture(scope="module")
def audit_setup(tmp_path_factory, learned_model, tiny_tokenizer, tiny_examples):
    """target = the tiny model that learned the forget set; unlearned = target after gradient ascent."""
    import copy

    forget, retain = tiny_examples
    root = tmp_path_factory.mktemp("audit")
    save_model(learned_model, tiny_tokenizer, root / "target")
    unlearned = copy.deepcopy(learned_model)
    run(unlearned, GradAscent(), build_paired(None, forget, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=10, batch_size=8, lr=3e-3, weight_decay=0.0, progress=False, threads=1))
    save_model(unlearned, tiny_tokenizer, root / "unlearned")
    rows = "".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n" for e in forget)
    (root / "forget.jsonl").write_text(rows)
    return root


def test_audit_reports_recovery_and_gates(audit_setup, tmp_path, capsys):
    root = audit_setup
    out = tmp_path / "audit.json"
    args = ["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
            str(root / "forget.jsonl"), "--attacks", "relearn,quantize", "--out", str(out), "max_length=128"]
    cfg_args = ["attack_args={relearn: {lr: 0.003, steps: 20}}"]
    assert main([*args, *cfg_args]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    m = doc["models"]
    assert m["target"]["forget_prob"] > 3 * m["unlearned"]["forget_prob"]  # unlearning worked on the held-out half
    relearn = doc["attacks"]["relearn"]["unlearned"]
    assert relearn["recovery_ratio"] > 0.2  # a few steps on the other half bring knowledge back
    assert doc["max_recovery_ratio"] >= relearn["recovery_ratio"] and doc["passed"] is None
    assert "relearn" in capsys.readouterr().out
    assert main([*args, *cfg_args, "--fail-above", "0.1"]) == 3  # the release gate
    assert "FAILED" in capsys.readouterr().err


def test_audit_errors(audit_setup, tmp_path, capsys):
    root = audit_setup
    assert main(["audit", "--model", str(root / "unlearned"), "--forget", str(root / "forget.jsonl")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
                 str(root / "forget.jsonl"), "--attacks", "relern"]) == 2
    assert "did you mean 'relearn'" in capsys.readouterr().err
