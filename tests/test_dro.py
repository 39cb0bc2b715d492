"""DRO (Zheng et al. 2024): hand-computed maths, a guard trained on a tiny model taught to refuse, errors."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from unlearnkit.config import ModelConfig
from unlearnkit.data.pair import build_paired
from unlearnkit.data.records import Example
from unlearnkit.data.synthetic import generate_people, person_qa
from unlearnkit.dro import (
    DroConfig,
    dro_loss,
    estimate_directions,
    fit_logistic,
    is_refusal,
    load_queries,
    load_soft_prompt,
    mean_difference_direction,
    pca,
    run_dro,
)
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.models import load_model, save_model

T = torch.tensor
REFUSAL = "I cannot help with that."


# ------------------------------------------------------------------------------ hand-computed maths
def test_is_refusal():
    pre = ["I cannot", "Sorry", "I don't know"]
    assert is_refusal("  i CANNOT help.", pre) and is_refusal("Sorry, no.", pre)
    assert is_refusal("I don\u2019t know him.", pre)  # curly apostrophe
    assert not is_refusal("The answer: I cannot", pre) and not is_refusal("", pre)
    assert not is_refusal("anything", ["", "  "])  # blank prefixes never match


def test_mean_difference_direction_by_hand():
    z = T([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [0.0, -2.0]])
    y = T([1.0, 1.0, 0.0, 0.0])
    w, b = mean_difference_direction(z, y)
    # mean(y=1) = (2, 1), mean(y=0) = (0, -1) -> w = (2, 2); midpoint (1, 0) -> b = -(2*1 + 2*0) = -2
    assert w.tolist() == [2.0, 2.0] and float(b) == -2.0


def test_pca_by_hand():
    h = T([[1.0, 5.0], [3.0, 5.0], [-1.0, 5.0], [-3.0, 5.0]])  # all variance along x
    mean, comps = pca(h, 1)
    assert mean.tolist() == [0.0, 5.0]
    assert comps[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6) and comps.shape == (1, 2)


def test_fit_logistic_separates_and_uses_raw_scale():
    z = T([[10.0], [11.0], [12.0], [13.0]])
    y = T([0.0, 0.0, 1.0, 1.0])
    w, b = fit_logistic(z, y)
    p = torch.sigmoid(z @ w + b)
    assert w.item() > 0 and p[:2].max() < 0.3 and p[2:].min() > 0.7
    assert float(-b / w) == pytest.approx(11.5, abs=0.2)  # the boundary sits between 11 and 12


def test_dro_loss_by_hand():
    h, h0 = T([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), T([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = T([0.0, 1.0])  # row 0 forget, row 1 other
    kw = dict(mean=torch.zeros(3), components=T([[1.0, 0.0, 0.0]]), refusal=(T([2.0]), T(0.5)),
              harm=(T([-1.0]), T(0.0)))
    # row 0: z=1, z0=0 -> refusal logit change 2, BCE(2, 0) = log(1+e^2); harm change -1, BCE(-1, 0) = log(1+e^-1)
    #        delta = (1, 2, 0): |delta|^2 - |P delta|^2 = 5 - 1 = 4 over d - m = 2 coordinates -> 2
    row0 = math.log1p(math.exp(2)) + 0.01 * math.log1p(math.exp(-1)) + 0.001 * 2
    # row 1: z = z0 = 0 -> both changes 0, BCE = log 2; delta = (0, 0, 2): 4 - 0 = 4 -> 2
    row1 = math.log(2) + 0.01 * math.log(2) + 0.001 * 2
    assert float(dro_loss(h, h0, labels, **kw)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # anchor mode: row 1 becomes anchor_weight * mean(delta^2) = 0.5 * 4 / 3
    got = dro_loss(h, h0, labels, **kw, other_mode="anchor", anchor_weight=0.5)
    assert float(got) == pytest.approx((row0 + 0.5 * 4 / 3) / 2, rel=1e-6)


def test_estimate_directions_needs_both_behaviours():
    h = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="refusal"):
        estimate_directions(h, torch.ones(6), T([0.0, 0, 0, 1, 1, 1]))
    est = estimate_directions(h, T([0.0, 1, 0, 1, 0, 1]), T([0.0, 0, 0, 1, 1, 1]), pca_dim=10, estimator="mean_diff")
    assert est.components.shape == (4, 5)  # clamped to min(pca_dim, N - 1, d - 1)


# ---------------------------------------------------------------------------- behaviour, tiny model
@pytest.fixture(scope="module")
def refusing_setup(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """The tiny model finetuned to refuse half of person 0's questions and answer everything else."""
    from unlearnkit.train import Finetune, TrainConfig, run

    rows = [person_qa(p, 8, rng=random.Random(i)) for i, p in enumerate(generate_people(3, seed=0))]
    ex = [Example(r["question"], REFUSAL if i < 4 else r["answer"]) for i, r in enumerate(rows[0])]
    ex += [Example(r["question"], r["answer"]) for rs in rows[1:] for r in rs]
    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    run(model, Finetune(), build_paired(None, ex, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=120, batch_size=8, lr=1e-2, weight_decay=0.0, progress=False, threads=1, seed=0))
    root = tmp_path_factory.mktemp("dro")
    save_model(model, tiny_tokenizer, root / "model")
    write = lambda name, rs: (root / name).write_text("".join(json.dumps({"question": r["question"]}) + "\n"  # noqa: E731
                                                            for r in rs))
    write("forget.jsonl", rows[0])  # the whole forget topic: 4 refused + 4 answered before DRO
    write("other.jsonl", [r for rs in rows[1:] for r in rs])
    return root


def _cfg(root, **kw) -> DroConfig:
    base = dict(model=ModelConfig(path=str(root / "model")), forget_queries=str(root / "forget.jsonl"),
                other_queries=str(root / "other.jsonl"), safety_prompt="Answer", n_tokens=2, lr=1e-2, steps=60,
                out=str(root / "out"))
    return DroConfig(**(base | kw))


def test_dro_raises_refusal_on_forget_topic_only(refusing_setup):
    root = refusing_setup
    before = {k: v.clone() for k, v in load_model(root / "model").state_dict().items()}
    doc = run_dro(_cfg(root))
    m = doc["models"]
    none, dro = m["none_prompt"], m["dro_prompt"]
    assert none["refusal_rate_forget"] >= 0.25 and none["refusal_rate_other"] == 0.0  # a refusal direction exists
    # the guard: more forget-topic queries refused, other queries still answered
    assert dro["refusal_rate_forget"] >= none["refusal_rate_forget"] + 0.2
    assert dro["refusal_rate_other"] <= 0.1
    gain_forget = dro["refusal_score_forget"] - none["refusal_score_forget"]
    gain_other = dro["refusal_score_other"] - none["refusal_score_other"]
    assert gain_forget >= gain_other + 0.1
    assert dro["refusal_score_forget"] > m["text_prompt"]["refusal_score_forget"]  # DRO improves on the text prompt
    answers = doc["per_example"]["dro_prompt"]["answers_forget"]
    assert sum(a.startswith("I cannot") for a in answers) >= 5
    # a guard, not an edit: weights bit-identical, the soft prompt saved, the note says so
    after = load_model(root / "model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_soft_prompt(root / "out").shape == (2, 32)
    assert "not unlearning" in doc["note"] and doc["training"]["dro_prompt"]["weights_changed"] is False
    saved = json.loads((root / "out" / "results.json").read_text())
    assert saved["models"]["dro_prompt"]["refusal_rate_forget"] == dro["refusal_rate_forget"]


def test_dro_leaves_in_memory_model_untouched(refusing_setup, tiny_tokenizer):
    from unlearnkit.dro import Estimate, dro_train, init_soft_prompt

    model = load_model(refusing_setup / "model")
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    soft = init_soft_prompt(model, tiny_tokenizer, "Answer", 2)
    est = Estimate(torch.zeros(32), torch.eye(32)[:2], (T([1.0, -1.0]), T(0.0)), (T([0.5, 0.5]), T(0.0)))
    new, log = dro_train(model, tiny_tokenizer, ["Who is A?", "Who is B?"], T([0.0, 1.0]), est, soft,
                         cfg=DroConfig(steps=3, lr=1e-2))
    assert len(log) == 3 and not torch.equal(new, soft)  # only the soft prompt moved
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert [p.requires_grad for p in model.parameters()] == flags


# ------------------------------------------------------------------------------------------ errors
def test_config_errors(tmp_path):
    for name in ("forget_queries", "other_queries"):
        with pytest.raises(ConfigError, match=name):
            DroConfig(**{name: str(tmp_path / "missing.jsonl")})
    for name in ("other_mode", "estimator"):
        with pytest.raises(ConfigError, match=name):
            DroConfig(**{name: "no-such-choice"})
    for name in ("lr", "harm_weight", "norm_weight"):
        with pytest.raises(ConfigError, match=name):
            DroConfig(**{name: -1.0})
    with pytest.raises(ConfigError, match="refusal_strings"):
        DroConfig(refusal_strings=[""])
    with pytest.raises(ConfigError, match="forget_queries"):
        run_dro(DroConfig(out=str(tmp_path / "o")))
    (tmp_path / "q.jsonl").write_text('{"question": "Q?"}\n')
    with pytest.raises(ConfigError, match="model.path"):
        run_dro(DroConfig(forget_queries=str(tmp_path / "q.jsonl"), other_queries=str(tmp_path / "q.jsonl"),
                          out=str(tmp_path / "o")))


def test_query_file_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        load_queries(tmp_path / "nope.jsonl", "forget_queries")
    (tmp_path / "bad.jsonl").write_text('{"answer": "x"}\n')
    with pytest.raises(DataError, match="question"):
        load_queries(tmp_path / "bad.jsonl", "forget_queries")
    (tmp_path / "ok.csv").write_text("prompt\nWhat is X?\n")
    assert load_queries(tmp_path / "ok.csv", "other_queries") == ["What is X?"]
    with pytest.raises(ConfigError, match="soft prompt"):
        load_soft_prompt(tmp_path)


def test_dro_beats_a_bad_text_prompt(refusing_setup):
    # 4 cycled "Answer" tokens break the tiny model's refusals; optimising them brings refusals back
    m = run_dro(_cfg(refusing_setup, n_tokens=4, out=str(refusing_setup / "out4")))["models"]
    text, dro = m["text_prompt"], m["dro_prompt"]
    assert dro["refusal_rate_forget"] >= text["refusal_rate_forget"] + 0.2
    assert dro["refusal_score_forget"] >= text["refusal_score_forget"] + 0.05
    assert dro["refusal_rate_other"] <= 0.1


def test_cli_dro(refusing_setup, tmp_path, capsys):
    from unlearnkit.cli import main

    root = refusing_setup
    args = ["dro", "--model", str(root / "model"), "--forget-queries", str(root / "forget.jsonl"), "--other-queries",
            str(root / "other.jsonl"), "--safety-prompt", "Answer", "--out", str(tmp_path / "guard"), "steps=5",
            "n_tokens=2"]
    assert main(args) == 0, capsys.readouterr().err
    assert "a guard, not unlearning" in capsys.readouterr().out
    assert (tmp_path / "guard" / "soft_prompt.safetensors").is_file()
    assert main([*args[:-2], "estimator=magic"]) == 2 and "estimator" in capsys.readouterr().err
