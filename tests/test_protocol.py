"""`unlearnkit bench tofu`: the TOFU protocol end to end, resume, settings guard, author subsets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.data.records import read_rows
from unlearnkit.data.synthetic import write_tofu_layout
from unlearnkit.errors import ConfigError
from unlearnkit.protocol import fingerprint, subset_tofu

TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
FAST = ["tiny.hidden_size=32", "tiny.intermediate_size=64", "tiny.num_hidden_layers=2", "tiny.vocab_size=400",
        "finetune.max_steps=6", "finetune.lr=3e-3", "finetune.grad_accum=1", "unlearn.max_steps=3",
        "unlearn.lr=1e-4", "unlearn.grad_accum=1", "probe.max_new_tokens=6", "qa_per_author=4"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("syn") / "data"
    write_tofu_layout(d, n_people=10, facts_per_person=4, seed=0)
    return d


def _bench(data: Path, out: Path, *extra: str) -> int:
    return main(["bench", "tofu", "--data-dir", str(data), "--split", "forget10", "--out", str(out), "--no-progress",
                 *FAST, *extra])


def test_protocol_end_to_end_then_resume_with_another_method(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _bench(synthetic, out) == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["models"]) == ["retain", "target", "npo"]
    assert doc["models"]["retain"]["forget_quality"] == pytest.approx(1.0)  # the reference against itself
    for name in ("target", "npo"):
        assert 0.0 <= doc["models"][name]["forget_quality"] <= 1.0
        assert doc["models"][name]["model_utility"] is not None
    assert {"target", "retain", "npo"} <= set(doc["training"])
    assert (out / "report.html").is_file() and (out / "unlearned_npo" / "model.safetensors").is_file()
    capsys.readouterr()
    assert _bench(synthetic, out, "--method", "grad_ascent") == 0  # reuses target / retain / their evals
    log = capsys.readouterr().out
    for step in ("base", "target", "retain", "eval:retain", "eval:target"):
        assert f"[skip] {step}:" in log
    assert "[run]  unlearn:grad_ascent" in log
    doc2 = json.loads((out / "results.json").read_text())
    assert list(doc2["models"]) == ["retain", "target", "grad_ascent", "npo"]
    assert doc2["models"]["npo"] == doc["models"]["npo"]  # earlier runs are kept, not recomputed
    runs = doc2["config"]["unlearning_runs"]  # each run's own method and settings, from its model card
    assert {k: v["method"] for k, v in runs.items()} == {"grad_ascent": "grad_ascent", "npo": "npo"}
    assert runs["npo"]["train"]["max_steps"] == 3 and "method" not in doc2["config"]


def test_resume_redoes_only_a_missing_step_and_refuses_changed_settings(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _bench(synthetic, out, "--method", "grad_ascent") == 0
    (out / "eval" / "grad_ascent.json").unlink()  # as if the run was killed during the last evaluation
    capsys.readouterr()
    assert _bench(synthetic, out, "--method", "grad_ascent") == 0
    log = capsys.readouterr().out
    assert "[skip] unlearn:grad_ascent" in log and "[run]  eval:grad_ascent" in log
    assert _bench(synthetic, out, "--method", "grad_ascent", "finetune.lr=1e-3") == 2
    err = capsys.readouterr().err
    assert "step 'target'" in err and "other settings" in err


def test_bad_protocol_inputs_fail_before_training(synthetic, tmp_path, capsys):
    assert _bench(synthetic, tmp_path / "a", "--method", "nop") == 2
    assert "did you mean 'npo'" in capsys.readouterr().err
    assert main(["bench", "tofu", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _bench(synthetic, tmp_path / "c", "--tag", "target") == 2
    assert not (tmp_path / "a" / "target").exists()


def test_fingerprint_ignores_speed_settings_only():
    from unlearnkit.train import TrainConfig

    assert fingerprint(TrainConfig(progress=False, threads=1)) == fingerprint(TrainConfig(progress=True, threads=2))
    assert fingerprint(TrainConfig(lr=1e-5)) != fingerprint(TrainConfig(lr=2e-5))
    # a field at its default does not count: adding a new setting later keeps old runs valid
    assert fingerprint(TrainConfig(track_em_every=0)) == fingerprint(TrainConfig())
    assert fingerprint(TrainConfig(track_em_every=5)) != fingerprint(TrainConfig())


def test_subset_of_real_tofu_keeps_the_forget_share(tmp_path):
    """10 authors at forget10 -> 1 forget author (20 QA, the first of forget10) + 9 retain authors
    (the first 180 rows of retain90); evaluation files are filtered to those authors."""
    assert TOFU.is_dir(), f"the TOFU benchmark is expected at {TOFU} (../shared/data/tofu)"
    dst = tmp_path / "sub"
    counts = subset_tofu(TOFU, dst, "forget10", "retain90", authors=10, per_author=20)
    full, forget, retain = (read_rows(dst / f) for f in ("full.json", "forget10.json", "retain90.json"))
    assert (len(forget), len(retain), len(full)) == (20, 180, 200)
    assert full == retain + forget and forget == read_rows(TOFU / "forget10.json")[:20]
    pert = read_rows(dst / "forget10_perturbed.json")
    assert [r["question"] for r in pert] == [r["question"] for r in forget] and len(pert[0]["perturbed_answer"]) == 5
    kept = {r["question"] for r in retain}
    rp = read_rows(dst / "retain_perturbed.json")
    assert rp and all(r["question"] in kept for r in rp)
    assert counts["holdout10.json"] == 20 and counts["real_authors_perturbed.json"] == 100
    with pytest.raises(ConfigError, match="no retain author"):
        subset_tofu(TOFU, tmp_path / "x", "forget10", "retain90", authors=1, per_author=20)
    with pytest.raises(ConfigError, match="needs"):
        subset_tofu(TOFU, tmp_path / "y", "forget10", "retain90", authors=1000, per_author=20)


def test_swapped_alternates_give_every_row_another_rows_answer():
    from unlearnkit.protocol import with_swapped_alternates

    rows = [{"question": f"q{i}", "answer": a} for i, a in enumerate(["a", "b", "a", "c"])]
    out = with_swapped_alternates(rows, "alternate", seed=3)
    assert [r["answer"] for r in out] == ["a", "b", "a", "c"] and "alternate" not in rows[0]
    assert all(r["alternate"] != r["answer"] and r["alternate"] in {"a", "b", "c"} for r in out)
    assert with_swapped_alternates(rows, "alternate", seed=3) == out  # seeded
    assert "alternate" not in with_swapped_alternates([{"answer": "x"}, {"answer": "x"}], "alternate")[0]


def test_protocol_runs_methods_that_need_extra_inputs(synthetic, tmp_path):
    """kga gets the holdout split as its non-member set, dpo swapped alternates, whp the synthetic
    benchmark's name dictionary, and task_vector (a procedure, no loop to stop early) ignores
    stop_margin - all with no method arguments."""
    out = tmp_path / "run"
    fast_aux = ["method.aux_epochs=0.5"]
    assert _bench(synthetic, out, "--method", "kga", "stop_margin=0", *fast_aux) == 0
    card = json.loads((out / "results.json").read_text())["config"]["unlearning_runs"]["kga"]
    assert card["method_args"]["aux_epochs"] == 0.5  # the card records the holdout file it was given
    assert Path(card["method_args"]["new_data"]).name == "holdout10.json"
    for method in ("dpo", "task_vector"):
        assert _bench(synthetic, out, "--method", method, "stop_margin=0") == 0
    assert _bench(synthetic, out, "--method", "whp", "method.reinforce_epochs=0.5") == 0
    doc = json.loads((out / "results.json").read_text())
    assert {"kga", "dpo", "task_vector", "whp"} <= set(doc["models"])
    whp_args = doc["config"]["unlearning_runs"]["whp"]["method_args"]
    assert Path(whp_args["terms"]).name == "forget10_terms.csv"  # the synthetic benchmark's name dictionary
    alts = read_rows(out / "inputs" / "forget10_alternate.json")
    assert all(r["alternate"] != r["answer"] for r in alts)
