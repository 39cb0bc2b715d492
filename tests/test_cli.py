"""The command line: the fast demo meets the unlearning criterion; errors are one clear line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.demo import unlearning_worked


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_files(tiny_examples, tmp_path):
    forget, retain = tiny_examples
    rows = lambda exs: [{"question": e.question, "answer": e.answer} for e in exs]  # noqa: E731
    return _write(tmp_path / "forget.jsonl", rows(forget)), _write(tmp_path / "retain.jsonl", rows(retain))


def test_demo_fast_unlearns(tmp_path, capsys):
    """`unlearnkit demo --fast`: forget prob falls to the retain model's level, retain prob kept."""
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    ok, msg = unlearning_worked(doc)
    assert ok, msg
    for name in ("target", "retain", "unlearned"):
        for key in ("forget_prob", "retain_prob", "forget_quality", "model_utility"):
            assert doc["models"][name][key] is not None, (name, key)
    m = doc["models"]
    assert m["target"]["forget_prob"] > 0.8  # the target really learned the forget people
    assert m["unlearned"]["forget_quality"] > m["target"]["forget_quality"]
    html = (out / "report.html").read_text()
    assert "unlearned" in html and "data:image/png;base64," in html
    card = (out / "unlearned" / "README.md").read_text()
    assert "npo" in card and f"| forget_quality | {m['unlearned']['forget_quality']:.4f} |" in card
    assert "unlearning worked" in capsys.readouterr().out
    audit = json.loads((out / "audit.json").read_text())  # step 5: the robustness audit of the unlearned model
    assert set(audit["attacks"]) == {"relearn", "quantize", "paraphrase", "probe"}
    assert all(set(r) >= {"unlearned", "retain"} for r in audit["attacks"].values())
    assert "data:image/png;base64," in (out / "audit.html").read_text()


def test_cli_chain_with_yaml_and_overrides(tiny_model_dir, qa_files, tmp_path):
    forget, retain = qa_files
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("train:\n  lr: 0.003\n  max_steps: 2\n  batch_size: 4\n")
    target, unlearned = tmp_path / "target", tmp_path / "unlearned"
    assert main(["finetune", str(cfg), "train.max_steps=3", "--model", str(tiny_model_dir), "--data", str(forget),
                 "--out", str(target), "--no-progress"]) == 0
    assert main(["unlearn", "--model", str(target), "--forget", str(forget), "--retain", str(retain),
                 "--method", "grad_diff", "train.max_steps=2", "method.retain_weight=2", "--out", str(unlearned),
                 "--no-progress"]) == 0
    card = json.loads((unlearned / "unlearnkit.json").read_text())
    assert card["method"] == "grad_diff" and card["config"]["method_args"] == {"retain_weight": 2}
    assert card["train_steps"] == 2 and len(card["forget_set_sha256"]) == 64


def test_cli_eval_writes_results(tiny_model_dir, tmp_path, capsys):
    from unlearnkit.data.synthetic import write_tofu_layout

    write_tofu_layout(tmp_path / "data", n_people=10, facts_per_person=3, forget_percents=(10,))
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "data"),
                 "probe.max_new_tokens=4", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and "forget_prob" in doc["models"]["model"]
    ref_out = tmp_path / "r2.json"  # the model against itself as reference: forget quality 1
    assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "data"),
                 "probe.max_new_tokens=4", "--reference", str(out), "--out", str(ref_out)]) == 0
    assert json.loads(ref_out.read_text())["models"]["model"]["forget_quality"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, needle", [
    (["unlearn", "--model", "MODEL", "--forget", "missing.json", "--out", "OUT"], "does not exist"),
    (["unlearn", "--model", "nowhere", "--forget", "FORGET", "--out", "OUT", "--method", "grad_ascent"], "does not exist"),
    (["unlearn", "--model", "MODEL", "--forget", "FORGET", "--out", "OUT", "--method", "nop"], "did you mean 'npo'"),
    (["unlearn", "--model", "MODEL", "--forget", "FORGET", "--out", "OUT", "method.bata=1"], "did you mean 'beta'"),
    (["unlearn", "--model", "MODEL", "--forget", "FORGET", "--out", "OUT", "train.lrr=1"], "did you mean 'lr'"),
    (["unlearn", "--model", "MODEL", "--forget", "FORGET", "--out", "OUT", "--method", "npo"], "needs data.retain"),
    (["unlearn", "--model", "MODEL", "--forget", "EMPTY", "--out", "OUT"], "no records"),
    (["unlearn", "--model", "MODEL", "--forget", "FORGET", "--retain", "FORGET", "--out", "FILE/sub"], "cannot create"),
    (["finetune", "--model", "MODEL", "--data", "FORGET", "--out", "FILE"], "not a writable directory"),
    (["finetune", "--model", "MODEL", "--data", "FORGET", "--out", "OUT", "data.max_length=4"], "raise data.max_length"),
    (["eval", "--model", "MODEL", "--out", "OUT"], "data_dir is not set"),
    (["eval", "--model", "MODEL", "--data-dir", "FILE"], "does not exist"),
    (["demo", "--out", "OUT", "n_people=1"], "n_people"),
    (["demo", "--out", "OUT", "method=nope"], "unknown method"),
    (["report", "missing.json"], "not found"),
])
def test_cli_errors_are_one_clear_line(argv, needle, tiny_model_dir, qa_files, tmp_path, capsys):
    empty, a_file = tmp_path / "empty.json", tmp_path / "a_file"
    empty.write_text("")
    a_file.write_text("x")
    subst = {"MODEL": str(tiny_model_dir), "FORGET": str(qa_files[0]), "OUT": str(tmp_path / "out"),
             "EMPTY": str(empty), "missing.json": str(tmp_path / "missing.json"), "FILE": str(a_file),
             "FILE/sub": str(a_file / "sub")}
    assert main([subst.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_ls_and_help_are_fast_and_clean():
    out = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "ls", "methods"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("grad_ascent", "grad_diff", "npo", "simnpo", "idk", "yao", "rmu"):
        assert name in out.stdout
    metrics = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "ls", "metrics"], capture_output=True, text=True)
    assert "truth_ratio" in metrics.stdout and "privleak" in metrics.stdout
    helped = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "unlearn" in helped.stdout


def test_ls_methods_markdown_is_one_row_per_registered_method():
    from unlearnkit.registry import METHODS

    out = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "ls", "methods", "--markdown"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == METHODS.names()
    npo = next(r for r in rows if r.startswith("| `npo`"))
    cells = [c.strip() for c in npo.strip("|").split(" | ")]
    assert cells[1:2] == ["loss"] and "arXiv:2404.05868" in cells[2]
    assert cells[3] == "log-probs (pre-computed)" and cells[4] == "yes" and "beta=0.1" in cells[6]


def test_ls_attacks_lists_every_attack_with_its_cost():
    from unlearnkit.registry import ATTACKS

    out = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "ls", "attacks", "--markdown"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ATTACKS.names()
    relearn = [c.strip() for c in next(r for r in rows if r.startswith("| `relearn`")).strip("|").split(" | ")]
    assert "budget x `steps`" in relearn[3] and "steps=20" in relearn[4]
