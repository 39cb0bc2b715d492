"""PCGU (Yu et al. 2023): hand-computed partition maths and metrics, behaviour on the tiny model, errors."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from unlearnkit.config import ModelConfig
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.models import LoraSettings, load_model
from unlearnkit.pcgu import (
    MISSING_SIM,
    PcguConfig,
    bias_metrics,
    encode_sentences,
    load_neutral,
    load_pairs,
    lowest_k,
    lowest_k_masks,
    masked_update_grads,
    part_similarities,
    partition_similarity,
    pcgu_step,
    pcgu_train,
    perplexity,
    preference_rate,
    run_pcgu,
    sentence_logp,
)

T = torch.tensor


# ------------------------------------------------------------------------------ hand-computed maths
def _hand_grads():
    g1 = {"w": T([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]]), "b": T([1.0, 0.0]), "gone": None}
    g2 = {"w": T([[0.0, 2.0], [2.0, 2.0], [1.0, 1.0]]), "b": T([-1.0, 0.0]), "gone": None}
    return g1, g2


def test_partition_similarity_by_hand():
    g1, g2 = _hand_grads()
    parts = partition_similarity(g1, g2, shapes={"gone": torch.Size([4])})
    got = {(n, i): s for n, i, s in parts}
    # rows of w: (1,0).(0,2)=0 -> 0; (1,1) // (2,2) -> 1; (0,3).(1,1)=3 / (3*sqrt2) = 1/sqrt2
    assert got[("w", 0)] == pytest.approx(0.0)
    assert got[("w", 1)] == pytest.approx(1.0)
    assert got[("w", 2)] == pytest.approx(1 / math.sqrt(2))
    assert got[("b", None)] == pytest.approx(-1.0)  # 1-D: one part, (1,0) vs (-1,0)
    assert got[("gone", None)] == MISSING_SIM  # missing gradient -> 5
    assert len(parts) == 5


def test_zero_gradient_part_is_skipped_unless_asked():
    g1, g2 = {"e": T([[0.0, 0.0], [1.0, 0.0]])}, {"e": T([[0.0, 0.0], [0.0, 1.0]])}
    assert part_similarities(g1, g2)["e"].tolist() == [MISSING_SIM, 0.0]
    assert part_similarities(g1, g2, skip_zero_grad=False)["e"].tolist() == [0.0, 0.0]  # torch cosine of 0-vector


def test_conv1d_weight_is_split_by_column():
    # Conv1D weight [in=2, out=3]: part j = column j = output unit j
    g1 = {"c": T([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])}
    g2 = {"c": T([[1.0, -1.0, 0.0], [0.0, -1.0, 2.0]])}
    sims = part_similarities(g1, g2, columns=frozenset({"c"}))["c"]
    # columns: (1,0)vs(1,0) -> 1; (1,1)vs(-1,-1) -> -1; (0,1)vs(0,2) -> 1
    assert sims.tolist() == pytest.approx([1.0, -1.0, 1.0])


def test_lowest_k_by_hand_and_clamped():
    g1, g2 = _hand_grads()
    parts = partition_similarity(g1, g2, shapes={"gone": torch.Size([4])})
    assert lowest_k(parts, 2) == [("b", None), ("w", 0)]  # sims -1 and 0
    assert lowest_k(parts, 100)[-1] == ("gone", None)  # clamped: all 5 parts, the missing one last
    assert len(lowest_k(parts, 100)) == 5
    masks = lowest_k_masks(part_similarities(g1, g2, shapes={"gone": torch.Size([4])}), 2)
    assert masks["w"].tolist() == [True, False, False] and masks["b"].tolist() == [True]
    assert masks["gone"].tolist() == [False]


def test_masked_update_grads_by_hand():
    g1, g2 = _hand_grads()
    masks = {"w": T([True, False, True]), "b": T([False]), "gone": T([True])}
    got = masked_update_grads(g1, g2, masks)
    assert got["w"].tolist() == [[0.0, 2.0], [0.0, 0.0], [1.0, 1.0]]  # g2 on rows 0 and 2
    assert got["b"].tolist() == [0.0, 0.0] and got["gone"] is None
    neg = masked_update_grads(g1, g2, masks, direction="increase_disadvantaged")
    assert neg["w"].tolist() == [[-1.0, 0.0], [0.0, 0.0], [0.0, -3.0]]  # -g1 on rows 0 and 2
    cols = masked_update_grads({"c": None}, {"c": T([[1.0, 2.0], [3.0, 4.0]])}, {"c": T([False, True])},
                               columns=frozenset({"c"}))
    assert cols["c"].tolist() == [[0.0, 2.0], [0.0, 4.0]]  # column 1 only


def test_preference_rate_and_perplexity_by_hand():
    assert preference_rate([1.0, 2.0, 3.0, -1.0], [0.0, 2.0, 4.0, -2.0]) == pytest.approx(2 / 4)  # tie not counted
    # two sentences: log p sums -2 and -4 over 1 and 3 tokens -> exp(6/4)
    assert perplexity([-2.0, -4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError):
        preference_rate([1.0], [1.0, 2.0])


# ------------------------------------------------------------------------------------------ data
def test_builtin_pairs_and_neutral():
    pairs = load_pairs()
    assert len(pairs) >= 30 and all(p.advantaged != p.disadvantaged for p in pairs)
    assert {p.domain for p in pairs} == {"gender"}
    assert len(load_neutral(None, pairs)) == len(pairs)


def test_load_pairs_files(tmp_path):
    (tmp_path / "p.csv").write_text("advantaged,disadvantaged\nA she.,A he.\n")
    assert load_pairs(tmp_path / "p.csv")[0].disadvantaged == "A he."
    (tmp_path / "p.json").write_text(json.dumps([{"advantaged": "x", "disadvantaged": "y"}]))
    assert load_pairs(str(tmp_path / "p.json"))[0].advantaged == "x"
    (tmp_path / "n.jsonl").write_text('{"text": "Neutral one."}\n')
    assert load_neutral(tmp_path / "n.jsonl") == ["Neutral one."]


@pytest.mark.parametrize("rows, match", [
    ('{"advantaged": "a", "disadvantaged": "b"}\n{"advantaged": "a"}\n', "row 2: missing key 'disadvantaged'"),
    ('{"advantaged": "  ", "disadvantaged": "b"}\n', "row 1: 'advantaged' must be a non-empty"),
    ('{"advantaged": "same", "disadvantaged": "same"}\n', "row 1: advantaged and disadvantaged are identical"),
    ("", "contains no pairs"),
])
def test_load_pairs_errors(tmp_path, rows, match):
    (tmp_path / "bad.jsonl").write_text(rows)
    with pytest.raises(DataError, match=match):
        load_pairs(tmp_path / "bad.jsonl")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="direction"):
        PcguConfig(direction="no-such-choice")
    with pytest.raises(ConfigError, match="lr"):
        PcguConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="pairs"):
        PcguConfig(pairs=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="neutral"):
        PcguConfig(neutral=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="out"):
        run_pcgu(PcguConfig(model=ModelConfig(path=str(tmp_path))))
    with pytest.raises(ConfigError, match="lora"):
        run_pcgu(PcguConfig(model=ModelConfig(path=str(tmp_path), lora=LoraSettings(r=4)), out=str(tmp_path / "o")))


# ------------------------------------------------------------------------------ tiny-model behaviour
@pytest.fixture(scope="module")
def biased(tiny_model_dir, tiny_tokenizer):
    """The tiny model finetuned (50 Adam steps, lr 1e-2) on the advantaged sentences, with a margin
    term over the disadvantaged ones (plain NLL needs ~2x the steps): it prefers the advantaged side."""
    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    pairs = load_pairs()
    adv = encode_sentences(tiny_tokenizer, [p.advantaged for p in pairs])
    dis = encode_sentences(tiny_tokenizer, [p.disadvantaged for p in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(50):
        s_adv, s_dis = sentence_logp(model, adv), sentence_logp(model, dis)
        loss = -s_adv.mean() - torch.nn.functional.logsigmoid(s_adv - s_dis).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, pairs


def test_sentence_logp_is_bos_prefixed_sum(tiny_model, tiny_tokenizer):
    batch = encode_sentences(tiny_tokenizer, ["The nurse said that she was tired.", "Hi."])
    assert (batch["input_ids"][:, 0] == tiny_tokenizer.bos_token_id).all()
    with torch.no_grad():
        got = sentence_logp(tiny_model, batch)
        one = encode_sentences(tiny_tokenizer, ["Hi."])
        logits = tiny_model(input_ids=one["input_ids"]).logits[0].log_softmax(-1)  # (T, V)
    ids = one["input_ids"][0]
    expected = sum(float(logits[t - 1, ids[t]]) for t in range(1, len(ids)))  # padding in batch must not matter
    assert float(got[1]) == pytest.approx(expected, abs=1e-4)


def test_pcgu_lowers_preference_rate(biased, tiny_tokenizer):
    model, pairs = copy.deepcopy(biased[0]), biased[1]
    before, _ = bias_metrics(model, tiny_tokenizer, pairs, load_neutral(None, pairs))
    assert before["preference_rate"] >= 0.9  # the finetune made the model prefer the advantaged side
    log = pcgu_train(model, tiny_tokenizer, pairs, lr=1e-3, epochs=3, batch_size=16, k=200)
    after, _ = bias_metrics(model, tiny_tokenizer, pairs, load_neutral(None, pairs))
    assert len(log) == 6 and all(r["n_parts"] > 200 for r in log)  # 30 pairs / 16 -> 2 steps per epoch
    assert after["preference_rate"] <= before["preference_rate"] - 0.3
    assert after["neutral_perplexity"] < 5 * before["neutral_perplexity"]  # not a collapsed model


def test_only_chosen_parts_change(biased, tiny_tokenizer):
    model, pairs = copy.deepcopy(biased[0]), biased[1]
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    info = pcgu_step(model, tiny_tokenizer, pairs[:8], opt, k=50, direction="decrease_advantaged")
    n_changed = 0
    for name, p in model.named_parameters():
        mask = info["masks"][name]
        rows_new, rows_old = p.detach().reshape(mask.numel(), -1), old[name].reshape(mask.numel(), -1)
        assert torch.equal(rows_new[~mask], rows_old[~mask]), name  # unchosen parts bit-identical
        n_changed += int((rows_new[mask] != rows_old[mask]).any(-1).sum())
    assert sum(int(m.sum()) for m in info["masks"].values()) == 50
    assert n_changed >= 40  # chosen parts (with a non-zero gradient) moved


def test_run_pcgu_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "debiased"
    doc = run_pcgu(PcguConfig(model=ModelConfig(path=str(tiny_model_dir)), lr=1e-3, epochs=1, k=100, out=str(out)))
    saved = json.loads((tmp_path / "debiased.results.json").read_text())
    assert saved["models"]["after"]["preference_rate"] == doc["models"]["after"]["preference_rate"]
    assert set(saved["models"]) == {"before", "after"} and saved["config"]["k"] == 100
    assert len(saved["per_example"]["before"]["logp_advantaged"]) == 30
    assert len(saved["training"]["after"]["log"]) == 2  # 30 pairs, batch 16
    assert load_model(out) is not None


def test_cli_pcgu(tiny_model_dir, tmp_path, capsys):
    from unlearnkit.cli import main

    out = tmp_path / "debiased"
    assert main(["pcgu", "--model", str(tiny_model_dir), "--out", str(out), "lr=1e-3", "epochs=1", "k=100"]) == 0
    assert "PCGU ->" in capsys.readouterr().out and (tmp_path / "debiased.results.json").is_file()
    assert main(["pcgu", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "direction=sideways"]) == 2
    assert "direction" in capsys.readouterr().err and not (tmp_path / "x").exists()
