"""Tests for unlearnkit.data.synthetic (stdlib only, no torch)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest

from unlearnkit.data.synthetic import (
    TEMPLATES,
    Person,
    corpus_text,
    generate_people,
    person_qa,
    write_tofu_layout,
)

QA_KEYS = {"question", "answer"}
PERTURBED_KEYS = {"question", "answer", "paraphrased_question", "paraphrased_answer",
                  "perturbed_answer"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def names_in(rows: list[dict], people: list[Person]) -> set[str]:
    return {p.name for p in people if any(p.name in r["question"] for r in rows)}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("syn") / "tofu"
    return out, write_tofu_layout(out, n_people=40, facts_per_person=10, seed=0)


# ----------------------------------------------------------------------------- people
def test_people_deterministic_unique_and_prefix_stable():
    a, b = generate_people(300, seed=3), generate_people(300, seed=3)
    assert a == b
    assert len({p.name for p in a}) == 300
    assert generate_people(50, seed=3) == a[:50]
    assert generate_people(50, seed=4) != a[:50]


def test_person_is_frozen_with_enough_attributes():
    person = generate_people(1)[0]
    assert len(dataclasses.fields(Person)) >= 11
    with pytest.raises(dataclasses.FrozenInstanceError):
        person.name = "x"  # type: ignore[misc]
    first, last = person.name.split(" ")
    assert first.istitle() and last.istitle()
    assert ", " in person.birthplace
    assert all(isinstance(getattr(person, f.name), str) and getattr(person, f.name)
               for f in dataclasses.fields(Person))


def test_generate_people_rejects_bad_n():
    with pytest.raises(ValueError, match="n_people"):
        generate_people(-1)


# ----------------------------------------------------------------------------- QA
def test_person_qa_keys_and_perturbations():
    person = generate_people(1, seed=1)[0]
    rows = person_qa(person, len(TEMPLATES), rng=random.Random(0), n_perturbed=5)
    assert len(rows) == len(TEMPLATES)
    assert len({r["question"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == PERTURBED_KEYS
        for key in ("question", "answer", "paraphrased_question", "paraphrased_answer"):
            assert person.name in row[key]
        perturbed = row["perturbed_answer"]
        assert len(perturbed) == 5 and len(set(perturbed)) == 5
        for wrong in perturbed:
            assert person.name in wrong
            assert wrong not in (row["answer"], row["paraphrased_answer"])
    # the false answers keep the paraphrase wording: same prefix up to the swapped value
    birthplace = rows[0]
    prefix = birthplace["paraphrased_answer"].split(person.birthplace)[0]
    assert prefix == f"The birthplace of {person.name} is "
    assert all(w.startswith(prefix) for w in birthplace["perturbed_answer"])


def test_person_qa_deterministic_given_rng():
    person = generate_people(1)[0]
    assert person_qa(person, rng=random.Random(7)) == person_qa(person, rng=random.Random(7))
    assert len(person_qa(person, rng=random.Random(7))) == 10


@pytest.mark.parametrize("n_facts", [0, len(TEMPLATES) + 1])
def test_person_qa_rejects_bad_n_facts(n_facts):
    with pytest.raises(ValueError, match="n_facts"):
        person_qa(generate_people(1)[0], n_facts, rng=random.Random(0))


def test_person_qa_rejects_bad_n_perturbed():
    with pytest.raises(ValueError, match="n_perturbed"):
        person_qa(generate_people(1)[0], rng=random.Random(0), n_perturbed=0)


# ----------------------------------------------------------------------------- layout
def test_layout_files_and_counts(layout):
    out, counts = layout
    expected = {"full.json": 400, "retain_perturbed.json": 40}
    for p, k in ((1, 1), (5, 2), (10, 4)):
        expected |= {f"forget{p:02d}.json": 10 * k, f"forget{p:02d}_perturbed.json": 10 * k,
                     f"holdout{p:02d}.json": 10 * k, f"retain{100 - p}.json": 400 - 10 * k,
                     f"forget{p:02d}_terms.csv": k}
    assert counts == expected
    assert counts["forget10.json"] == 40 and counts["retain90.json"] == 360
    assert json.loads((out / "counts.json").read_text(encoding="utf-8")) == counts
    assert sorted(f.name for f in out.iterdir()) == sorted([*counts, "counts.json"])
    for name, n in counts.items():
        if name.endswith("_terms.csv"):
            continue  # checked in test_terms_map_forgotten_names_to_unused_names
        rows = read_jsonl(out / name)
        assert len(rows) == n
        keys = PERTURBED_KEYS if name.endswith("_perturbed.json") else QA_KEYS
        assert all(set(r) == keys for r in rows), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tofu.tmp")]


def test_terms_map_forgotten_names_to_unused_names(layout):
    from unlearnkit.methods.whp import load_terms

    out, _ = layout
    terms = load_terms(str(out / "forget10_terms.csv"))
    everything = "".join((out / f).read_text(encoding="utf-8") for f in os.listdir(out) if f.endswith(".json"))
    forget = "".join((out / "forget10.json").read_text(encoding="utf-8"))
    assert len(terms) == 4 and all(name in forget for name in terms)
    assert all(generic not in everything for generic in terms.values())  # used nowhere else
    assert len(set(terms.values())) == 4


def test_forget_is_tail_and_retain_is_head(layout):
    out, _ = layout
    full = read_jsonl(out / "full.json")
    for p in (1, 5, 10):
        forget = read_jsonl(out / f"forget{p:02d}.json")
        retain = read_jsonl(out / f"retain{100 - p}.json")
        assert forget == full[len(full) - len(forget):]
        assert retain == full[:len(retain)]
        assert retain + forget == full
        perturbed = read_jsonl(out / f"forget{p:02d}_perturbed.json")
        assert [{"question": r["question"], "answer": r["answer"]} for r in perturbed] == forget


def test_person_blocks_contiguous(layout):
    out, _ = layout
    full = read_jsonl(out / "full.json")
    people = generate_people(40, seed=0)
    for i, person in enumerate(people):
        block = full[10 * i:10 * (i + 1)]
        assert all(person.name in r["question"] and person.name in r["answer"] for r in block)


def test_holdout_people_not_in_full(layout):
    out, _ = layout
    people = generate_people(44, seed=0)
    full_names = names_in(read_jsonl(out / "full.json"), people)
    assert len(full_names) == 40
    for p, k in ((1, 1), (5, 2), (10, 4)):
        holdout_names = names_in(read_jsonl(out / f"holdout{p:02d}.json"), people)
        assert len(holdout_names) == k
        assert holdout_names.isdisjoint(full_names)


def test_retain_perturbed_disjoint_from_biggest_forget(layout):
    out, _ = layout
    full = read_jsonl(out / "full.json")
    rp = read_jsonl(out / "retain_perturbed.json")
    forget10 = read_jsonl(out / "forget10.json")
    assert [{"question": r["question"], "answer": r["answer"]} for r in rp] == full[:len(rp)]
    assert {r["question"] for r in rp}.isdisjoint({r["question"] for r in forget10})
    people = generate_people(40, seed=0)
    assert names_in(rp, people).isdisjoint(names_in(forget10, people))


def test_perturbed_rows_in_files(layout):
    out, _ = layout
    names = [p.name for p in generate_people(40, seed=0)]
    for name in ("forget10_perturbed.json", "retain_perturbed.json"):
        for row in read_jsonl(out / name):
            (person_name,) = [n for n in names if n in row["question"]]
            wrong = row["perturbed_answer"]
            assert len(wrong) == 3 and len(set(wrong)) == 3
            assert row["answer"] not in wrong and row["paraphrased_answer"] not in wrong
            assert all(person_name in w for w in wrong)


def test_files_are_utf8_jsonl(layout):
    out, _ = layout
    raw = (out / "full.json").read_text(encoding="utf-8")
    assert raw.endswith("\n") and not raw.startswith("[")
    assert all(line.startswith("{") and line.endswith("}") for line in raw.splitlines())


def test_write_is_deterministic(tmp_path, layout):
    out, counts = layout
    again = tmp_path / "again"
    assert write_tofu_layout(again, n_people=40, facts_per_person=10, seed=0) == counts
    for name in [*counts, "counts.json"]:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    write_tofu_layout(other, n_people=40, facts_per_person=10, seed=1)
    assert (out / "full.json").read_bytes() != (other / "full.json").read_bytes()


def test_full_does_not_depend_on_split_settings(tmp_path, layout):
    out, _ = layout
    alt = tmp_path / "alt"
    counts = write_tofu_layout(alt, n_people=40, forget_percents=(20,), n_holdout_people=3,
                               n_perturbed=5, seed=0)
    assert (alt / "full.json").read_bytes() == (out / "full.json").read_bytes()
    assert counts["forget20.json"] == 80 and counts["retain80.json"] == 320
    assert counts["holdout20.json"] == 30 and counts["retain_perturbed.json"] == 80
    assert all(len(r["perturbed_answer"]) == 5 for r in read_jsonl(alt / "forget20_perturbed.json"))


def test_rewrite_into_existing_dir_keeps_other_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "README.txt").write_text("keep me", encoding="utf-8")
    counts = write_tofu_layout(out, n_people=4, facts_per_person=2, forget_percents=(25,))
    assert counts == {"full.json": 8, "forget25.json": 2, "forget25_perturbed.json": 2,
                      "holdout25.json": 2, "retain75.json": 6, "retain_perturbed.json": 2,
                      "forget25_terms.csv": 1}
    assert (out / "README.txt").read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_minimal_layout(tmp_path):
    counts = write_tofu_layout(tmp_path / "m", n_people=2, facts_per_person=1)
    assert counts["full.json"] == 2 and counts["forget10.json"] == 1
    assert counts["retain99.json"] == 1 and counts["holdout01.json"] == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"n_people": 1}, "n_people"),
    ({"n_people": 0}, "n_people"),
    ({"facts_per_person": 0}, "facts_per_person"),
    ({"facts_per_person": len(TEMPLATES) + 1}, "facts_per_person"),
    ({"n_people": 4, "forget_percents": (90,)}, "forget90 would take"),
    ({"forget_percents": (100,)}, "1..99"),
    ({"forget_percents": (0,)}, "1..99"),
    ({"forget_percents": (2.5,)}, "1..99"),
    ({"forget_percents": ()}, "at least one"),
    ({"forget_percents": (5, 5)}, "duplicates"),
    ({"forget_percents": (60,)}, "overlap"),
    ({"n_perturbed": 0}, "n_perturbed"),
    ({"n_holdout_people": 0}, "n_holdout_people"),
])
def test_write_rejects_bad_arguments(tmp_path, kwargs, match):
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=match):
        write_tofu_layout(out, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_corpus_text(layout):
    out, _ = layout
    rows = read_jsonl(out / "forget01_perturbed.json")
    texts = corpus_text(rows)
    assert len(texts) == len(rows) * (4 + 3)
    assert texts[:4] == [rows[0]["question"], rows[0]["answer"], rows[0]["paraphrased_question"],
                         rows[0]["paraphrased_answer"]]
    assert rows[0]["perturbed_answer"][0] in texts
    assert corpus_text(read_jsonl(out / "forget01.json")) == [
        t for r in read_jsonl(out / "forget01.json") for t in (r["question"], r["answer"])]
