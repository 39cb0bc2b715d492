"""`unlearnkit audit`: attacks, per-metric recovery ratios, the retain-model floor, audit.json + HTML,
--budget, --fail-above."""
from __future__ import annotations

import json

import pytest

from unlearnkit.cli import main
from unlearnkit.data.pair import build_paired
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.models import save_model
from unlearnkit.train import TrainConfig, run


@pytest.fixture(scope="module")
def audit_setup(tmp_path_factory, learned_model, tiny_tokenizer, tiny_examples, tiny_forget_tofu):
    """target = the tiny model that learned the forget set; unlearned = target after gradient ascent."""
    import copy

    forget, retain = tiny_examples
    root = tmp_path_factory.mktemp("audit")
    save_model(learned_model, tiny_tokenizer, root / "target")
    unlearned = copy.deepcopy(learned_model)
    run(unlearned, GradAscent(), build_paired(None, forget, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=10, batch_size=8, lr=3e-3, weight_decay=0.0, progress=False, threads=1))
    save_model(unlearned, tiny_tokenizer, root / "unlearned")
    rows = "".join(json.dumps({"question": e.question, "answer": e.answer, "paraphrased_answer": e.paraphrased_answer,
                               "perturbed_answer": list(e.perturbed_answers)}) + "\n" for e in tiny_forget_tofu)
    (root / "forget.jsonl").write_text(rows)
    return root


def test_audit_reports_recovery_and_gates(audit_setup, tiny_model_dir, tmp_path, capsys):
    root = audit_setup
    out = tmp_path / "audit.json"
    args = ["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
            str(root / "forget.jsonl"), "--attacks", "relearn,quantize", "--out", str(out), "max_length=128",
            "max_new_tokens=12", "--retain-model", str(tiny_model_dir), "--budget", "2"]
    cfg_args = ["attack_args={relearn: {lr: 0.003, steps: 10}}"]
    assert main([*args, *cfg_args]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    m = {who: v["metrics"] for who, v in doc["models"].items()}
    assert set(m) == {"target", "unlearned", "retain"} and set(m["target"]) == set(doc["metrics"])
    assert m["target"]["forget_prob"] > 3 * m["unlearned"]["forget_prob"]  # unlearning worked on the held-out half
    relearn = doc["attacks"]["relearn"]
    assert relearn["settings"]["budget"] == 2 and relearn["unlearned"]["info"]["steps"] == 20  # --budget 2 x 10 steps
    unl = relearn["unlearned"]
    assert unl["recovery"]["forget_prob"] > 0.2  # a few steps on the other half bring knowledge back
    expected = (unl["metrics"]["forget_prob"] - m["unlearned"]["forget_prob"]) / (
        m["target"]["forget_prob"] - m["unlearned"]["forget_prob"])
    assert unl["recovery"]["forget_prob"] == pytest.approx(expected)
    assert unl["recovery_ratio"] == max(v for v in unl["recovery"].values() if v is not None)
    # the honest floor: the same attack on a model that never saw the forget set recovers far less
    assert relearn["retain"]["metrics"]["forget_prob"] < unl["metrics"]["forget_prob"]
    assert doc["max_recovery_ratio"] >= unl["recovery_ratio"] and doc["passed"] is None
    assert "relearn" in capsys.readouterr().out
    page = out.with_suffix(".html").read_text()
    assert "data:image/png;base64," in page and "relearn" in page and "quantize" in page
    assert main([*args, *cfg_args, "--fail-above", "0.1"]) == 3  # the release gate
    assert "FAILED" in capsys.readouterr().err


def test_min_gap_gives_no_ratio_for_a_metric_unlearning_did_not_move():
    from unlearnkit.audit import _ratios

    r = _ratios({"a": 0.5, "b": 0.5}, {"a": 0.1, "b": 0.30}, {"a": 0.9, "b": 0.31}, min_gap=0.02)
    assert r["a"] == pytest.approx(0.4 / 0.8) and r["b"] is None


def test_audit_errors(audit_setup, tmp_path, capsys):
    root = audit_setup
    assert main(["audit", "--model", str(root / "unlearned"), "--forget", str(root / "forget.jsonl")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
                 str(root / "forget.jsonl"), "--attacks", "relern"]) == 2
    assert "did you mean 'relearn'" in capsys.readouterr().err
    base = ["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
            str(root / "forget.jsonl"), "--attacks", "quantize"]
    assert main([*base, "metrics=[forget_bleu]"]) == 2
    assert "forget_prob" in capsys.readouterr().err
    assert main([*base, "attack_args={relearn: {steps: 1}}"]) == 2
    assert "not run" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err
    assert main([*base, "attack_args={quantize: {bitz: 4}}"]) == 2
    assert "bitz" in capsys.readouterr().err
    assert main([*base, "--budget", "0"]) == 2
    assert "budget" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main([*base[:-4], "--forget", str(empty), "--attacks", "quantize"]) == 2
    assert "no records" in capsys.readouterr().err


def test_audit_page_renders_missing_values_and_rejects_other_documents():
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.report import render_audit_html

    row = {"kind": "model", "cost": "cheap <b>", "unlearned": {"metrics": {"forget_prob": 0.2},
                                                              "recovery": {"forget_prob": None}, "recovery_ratio": None}}
    doc = {"metrics": {"forget_prob": "answer probability"}, "attacks": {"x": row},
           "models": {"target": {"metrics": {"forget_prob": 0.9}}}, "max_recovery_ratio": None, "passed": None}
    page = render_audit_html(doc)
    assert "n/a" in page and "cheap &lt;b&gt;" in page and "no gate" in page
    with pytest.raises(UnlearnkitError, match="attacks"):
        render_audit_html({"models": {}})


def test_an_attack_whose_data_is_missing_is_skipped_under_all_and_fails_when_named(audit_setup, tmp_path, monkeypatch,
                                                                                  capsys):
    import unlearnkit.audit as audit_mod
    from unlearnkit.attacks.paraphrase import Paraphrase
    from unlearnkit.attacks.quantize import Quantize

    root = audit_setup  # its forget records have no paraphrased_question
    base = ["audit", "--model", str(root / "unlearned"), "--reference", str(root / "target"), "--forget",
            str(root / "forget.jsonl"), "max_length=128", "metrics=[forget_prob]", "--no-progress"]
    assert main([*base, "--attacks", "paraphrase"]) == 2
    assert "paraphrased_question" in capsys.readouterr().err
    monkeypatch.setattr(audit_mod, "build_attacks", lambda cfg: {"paraphrase": Paraphrase(), "quantize": Quantize()})
    out = tmp_path / "audit.json"
    assert main([*base, "--out", str(out)]) == 0  # --attacks all (the default)
    doc = json.loads(out.read_text())
    assert list(doc["attacks"]) == ["quantize"] and "paraphrased_question" in doc["skipped"]["paraphrase"]
    assert "skipped" in capsys.readouterr().err
    assert "was not run" in out.with_suffix(".html").read_text()
