"""`unlearnkit update`: knowledge-update records, edit metrics by hand, F-Learning on the tiny model."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from unlearnkit.cli import main
from unlearnkit.data.edits import Edit, load_edits
from unlearnkit.data.synthetic import generate_people, person_qa
from unlearnkit.errors import DataError
from unlearnkit.metrics.edit import edit_generality, edit_locality, edit_old_answer_rate, edit_reliability
from unlearnkit.models import load_model, load_tokenizer, save_model


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_three_record_layouts(tmp_path):
    flat = {"prompt": "{} plays", "subject": "Ann", "target_true": "golf", "target_new": "chess",
            "paraphrase_prompts": ["What does Ann play?"],
            "locality_prompts": ["Bob plays", {"prompt": "Cy plays", "answer": "tennis"}]}
    cf = {"requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                "target_true": {"str": "French"}, "target_new": {"str": "English"}},
          "paraphrase_prompts": ["Danielle Darrieux speaks"], "neighborhood_prompts": ["Jean Gabin speaks"]}
    zsre = {"src": "Who designed X?", "answers": ["Ann"], "alt": "Bob", "rephrase": "X was designed by?",
            "loc": "nq question: who sang y", "loc_ans": "Cy"}
    a, b, c = load_edits(_write(tmp_path / "e.jsonl", [flat, cf, zsre]))
    assert a == Edit("Ann plays", "golf", "chess", "Ann", ("What does Ann play?",), (("Bob plays", None), ("Cy plays", "tennis")))
    assert b.prompt == "The mother tongue of Danielle Darrieux is" and (b.target_true, b.target_new) == ("French", "English")
    assert b.locality == (("Jean Gabin speaks", None),) and b.paraphrase_prompts == ("Danielle Darrieux speaks",)
    assert (c.prompt, c.target_true, c.target_new) == ("Who designed X?", "Ann", "Bob")
    assert c.paraphrase_prompts == ("X was designed by?",) and c.locality == (("nq question: who sang y", "Cy"),)


@pytest.mark.parametrize("row, match", [
    ({"prompt": "p", "target_true": "a"}, "missing target_new"),
    ({"prompt": "p", "target_true": "a", "target_new": "a"}, "same old and new answer"),
    ({"prompt": "", "target_true": "a", "target_new": "b"}, "'prompt' must be a non-empty string"),
    ({"prompt": "p", "target_true": "a", "target_new": "b", "paraphrase_prompts": [3]}, "paraphrase_prompts"),
    ("just a string", "expected an object"),
])
def test_bad_records_name_the_row_and_field(tmp_path, row, match):
    with pytest.raises(DataError, match=match):
        load_edits(_write(tmp_path / "bad.jsonl", [row]))


def test_empty_edit_file(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(DataError):
        load_edits(str(tmp_path / "e.json"))


def test_edit_metrics_by_hand():
    match = [np.array([True, False]), np.array([True, True, True, False])]
    assert edit_reliability(token_match=match).value == pytest.approx((0.5 + 0.75) / 2)
    assert edit_generality(token_match=match).per_example == [0.5, 0.75]
    before = [np.array([5, 6, 7]), np.array([1])]
    after = [np.array([5, 0, 7]), np.array([2])]
    assert edit_locality(pred_before=before, pred_after=after).value == pytest.approx((2 / 3 + 0) / 2)
    rate = edit_old_answer_rate(logp_old=[-1.0, -5.0, -2.0], logp_new=[-3.0, -1.0, -2.0])
    assert rate.value == pytest.approx(1 / 3) and rate.per_example == [1.0, 0.0, 0.0]  # a tie is not a win
    with pytest.raises(ValueError):
        edit_locality(pred_before=before, pred_after=after[:1])


@pytest.fixture(scope="module")
def knows_old_facts(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """The tiny model finetuned on 2 people's facts (the old knowledge), and edits that change them."""
    from unlearnkit.data.pair import build_paired
    from unlearnkit.data.records import Example
    from unlearnkit.train import Finetune, TrainConfig, run

    people = generate_people(4, seed=0)
    rows = [r for i, p in enumerate(people[:2]) for r in person_qa(p, 4, rng=random.Random(i))]
    other = [r for i, p in enumerate(people[2:]) for r in person_qa(p, 2, rng=random.Random(10 + i))]
    model = load_model(tiny_model_dir)
    data = build_paired(None, [Example(r["question"], r["answer"]) for r in rows + other], [], tiny_tokenizer)
    run(model, Finetune(), data, TrainConfig(max_steps=60, batch_size=8, lr=1e-2, weight_decay=0.0, progress=False,
                                             threads=1))
    d = tmp_path_factory.mktemp("upd")
    save_model(model, load_tokenizer(tiny_model_dir), d / "old")
    edits = [{"prompt": r["question"], "target_true": r["answer"], "target_new": r["perturbed_answer"][0],
              "paraphrase_prompts": [r["paraphrased_question"]],
              "locality_prompts": [o["question"] for o in other[:2]]} for r in rows]
    return str(d / "old"), _write(d / "edits.jsonl", edits)


@pytest.mark.parametrize("method, extra", [("flearning", []), ("flearning", ["delta=lora"]), ("finetune", [])])
def test_update_replaces_the_old_answers(knows_old_facts, tmp_path, method, extra, capsys):
    model_dir, edits = knows_old_facts
    out = tmp_path / "updated"
    args = ["update", "--model", model_dir, "--edits", edits, "--method", method, "--out", str(out), "--no-progress",
            "learn.max_steps=40", "learn.lr=1e-2", "learn.batch_size=8", "learn.threads=1", "forget.max_steps=20",
            "forget.lr=1e-2", "forget.batch_size=8", "forget.threads=1", "scale=0.5", *extra]
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "updated.results.json").read_text())
    before, after = doc["models"]["before"], doc["models"][method]
    assert before["old_answer_rate"] == 1.0  # the model knew the old facts
    assert after["old_answer_rate"] <= 0.25 and after["reliability"] > before["reliability"] + 0.3
    assert after["generality"] is not None and 0.0 <= after["locality"] <= 1.0
    assert (out / "model.safetensors").is_file() and set(doc["training"]) >= {"learn_new"}
    assert ("forget_old" in doc["training"]) == (method == "flearning")


def test_update_errors_leave_nothing(knows_old_facts, tmp_path, capsys):
    model_dir, edits = knows_old_facts
    assert main(["update", "--model", model_dir, "--edits", edits, "--method", "rome", "--out", str(tmp_path / "o")]) == 2
    assert "flearning" in capsys.readouterr().err
    assert main(["update", "--model", model_dir, "--edits", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_locality_of_an_unchanged_model_is_one(knows_old_facts):
    from unlearnkit.update import UpdateConfig, edit_metrics, locality_pairs, probe_edits

    model_dir, edits_path = knows_old_facts
    model, tok, edits = load_model(model_dir), load_tokenizer(model_dir), load_edits(edits_path)
    cfg = UpdateConfig(edits=edits_path)
    loc = locality_pairs(model, tok, edits, cfg)  # the model's own greedy answers
    assert len(loc) == 2 * len(edits) and all(a for _, a in loc)
    probe = probe_edits(model, tok, edits, loc, cfg)
    values = edit_metrics(probe, before=probe)
    assert values["locality"] == 1.0 and values["old_answer_rate"] == 1.0
