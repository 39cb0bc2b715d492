"""Probing read-out attack: logit lens and linear probes read the forgotten answer from hidden states."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.probe import (
    Probe,
    answer_logp,
    best_layer,
    cv_accuracy,
    fit_probe,
    lens_modules,
    mc_accuracy,
    mc_options,
    option_features,
    probe_accuracy,
    read_layers,
    read_out,
)
from unlearnkit.data.format import collate, encode
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError, ModelError
from unlearnkit.metrics.recovery import recovery_ratio


# ------------------------------------------------------------------------------- hand-checked maths
def test_mc_accuracy_by_hand():
    scores = [[-1.0, -2.0, -3.0],  # correct option highest -> right
              [-2.0, -1.0, -3.0],  # a perturbed option higher -> wrong
              [0.0, 0.0, -1.0],  # tie with a perturbed option -> wrong
              [-0.5, -0.6]]  # fewer options is fine -> right
    assert mc_accuracy(scores) == 0.5
    assert mc_accuracy([torch.tensor([0.3, 0.1, 0.2])]) == 1.0
    with pytest.raises(DataError):
        mc_accuracy([])


def test_answer_logp_and_features_by_hand():
    # one row, T=3, V=2: position 0 predicts token 1 (label 1), position 1 predicts token 2 (label 0)
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    expected = (math.log(3 / 4) + math.log(4 / 5)) / 2  # mean of log p(1)=3/4 and log p(0)=4/5
    assert answer_logp(logits, labels).item() == pytest.approx(expected)
    hidden = torch.tensor([[[1.0, 0.0], [2.0, 4.0], [4.0, 8.0]]])  # (1, 3, 2)
    assert option_features(hidden, labels).tolist() == [[3.0, 6.0]]  # mean over positions 1 and 2
    assert option_features(hidden, labels, "last").tolist() == [[4.0, 8.0]]


def test_layer_choice_helpers():
    assert read_layers(4, 4) == [0, 1, 2, 3] and read_layers(4, 9) == [0, 1, 2, 3]
    assert read_layers(4, 2) == [0, 3] and read_layers(4, 1) == [3]
    assert read_layers(13, 5) == [0, 3, 6, 9, 12]
    assert best_layer({0: 0.5, 1: 0.75, 2: 0.75, 3: 0.25}) == 2  # ties go to the later layer


def test_probe_ranks_a_linearly_separable_option():
    rng = np.random.default_rng(0)

    def record() -> np.ndarray:  # 4 options x 3 features; the true option (row 0) has feature 0 = +2
        f = rng.normal(size=(4, 3))
        f[0, 0], f[1:, 0] = 2.0, -2.0
        return f

    train, test = [record() for _ in range(6)], [record() for _ in range(5)]
    probe = fit_probe(train, c=1.0, max_iter=100, seed=0)
    assert probe_accuracy(probe, test) == 1.0
    assert cv_accuracy(train, 3, c=1.0, max_iter=100, seed=0) == 1.0
    assert cv_accuracy(train, 0, c=1.0, max_iter=100, seed=0) == 1.0  # train accuracy


def test_options_use_the_paraphrased_answer(tiny_forget_tofu):
    ex = tiny_forget_tofu[0]
    assert mc_options(ex, "paraphrased") == [ex.paraphrased_answer, *ex.perturbed_answers]
    assert mc_options(ex, "answer") == [ex.answer, *ex.perturbed_answers]
    assert mc_options(Example("q", "a", None, ("b",)), "paraphrased") == ["a", "b"]  # no paraphrase: the answer


def test_logit_lens_is_norm_then_head_and_the_last_layer_is_the_output(tiny_model, tiny_tokenizer, tiny_forget_tofu):
    with torch.no_grad():  # a non-trivial final norm, so applying it twice would show
        tiny_model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, tiny_model.model.norm.weight.numel()))
    tiny_model.eval()
    ex, data = tiny_forget_tofu[0], AttackData(forget_train=[], forget_eval=[], max_length=128)
    got = read_out(tiny_model, tiny_tokenizer, [ex], [1, 3], data, "paraphrased")
    batch = collate([encode(ex.question, o, tiny_tokenizer, max_length=128) for o in mc_options(ex, "paraphrased")],
                    tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        out = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True)
        mid = tiny_model.lm_head(tiny_model.model.norm(out.hidden_states[1]))  # (K, T, V) by hand
    for lay, logits in ((1, mid), (3, out.logits)):
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["labels"][:, 1:].clamp_min(0)[..., None])[..., 0]
        mask = batch["labels"][:, 1:] != -100
        expected = (logp * mask).sum(1) / mask.sum(1)  # (K,) mean answer log-prob per option
        assert torch.allclose(got.lens[lay][0], expected, atol=1e-5), lay
    mask = (batch["labels"] != -100).float()[..., None]  # (K, T, 1) answer positions
    expected_feats = (out.hidden_states[1] * mask).sum(1) / mask.sum(1)  # (K, H) mean over them
    assert np.allclose(got.feats[1][0], expected_feats.numpy(), atol=1e-5) and got.feats[1][0].shape == (4, 32)


# ------------------------------------------------------------------------------- behaviour
def test_logit_lens_reads_what_gradient_ascent_hid(learned_model, unlearned, tiny_model, tiny_tokenizer,
                                                  tiny_forget_tofu):
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:], max_length=128)
    attack = Probe()
    before = {n: p.detach().clone() for n, p in unlearned.named_parameters()}
    unlearned.train()
    target = attack.run(learned_model, tiny_tokenizer, data)
    out = attack.run(unlearned, tiny_tokenizer, data)
    base = attack.baseline(unlearned, tiny_tokenizer, data)
    never = attack.run(tiny_model, tiny_tokenizer, data)
    never_base = attack.baseline(tiny_model, tiny_tokenizer, data)
    assert out.model is unlearned and unlearned.training, "the model (and its train/eval mode) must be left alone"
    assert all(torch.equal(p, before[n]) for n, p in unlearned.named_parameters())
    for key in ("logit_lens_mc_accuracy", "probe_mc_accuracy"):
        ratio = recovery_ratio(attacked=out.scores[key], unlearned=base[key], target=target.scores[key]).value
        print(f"{key}: target read-out {target.scores[key]:.2f} | unlearned output {base[key]:.2f} read-out "
              f"{out.scores[key]:.2f} | ratio {ratio} | never-learned output {never_base[key]:.2f} read-out "
              f"{never.scores[key]:.2f}")
    print("unlearned per-layer lens (train, eval):", out.info["lens_mc_accuracy_train"],
          out.info["lens_mc_accuracy_eval"], "probe (cv, eval):", out.info["probe_mc_accuracy_select"],
          out.info["probe_mc_accuracy_eval"])
    # the last layer's lens is exactly the model's output
    assert out.info["lens_mc_accuracy_eval"]["3"] == out.info["output_mc_accuracy_eval"] == base["logit_lens_mc_accuracy"]
    assert base == {"logit_lens_mc_accuracy": base["probe_mc_accuracy"], "probe_mc_accuracy": base["probe_mc_accuracy"]}
    # gradient ascent lowered the output MC accuracy; the logit lens at the layer chosen on forget_train
    # still reads the true answers of the held-out records; a model that never learned them reads nothing
    lens = "logit_lens_mc_accuracy"
    assert base[lens] <= target.scores[lens] - 0.25
    assert recovery_ratio(attacked=out.scores[lens], unlearned=base[lens], target=target.scores[lens]).value >= 0.5
    assert never.scores[lens] <= 0.25 and out.scores[lens] >= never.scores[lens] + 0.5
    # the binary linear probe on 4 training records: no evidence beyond the never-learned control on this
    # tiny model (what it reads is at most one record better than a model that never saw the facts)
    assert out.scores["probe_mc_accuracy"] <= never.scores["probe_mc_accuracy"] + 0.25


def test_the_original_answer_wording_lets_a_probe_cheat(tiny_model, tiny_tokenizer, tiny_forget_tofu):
    """Why the paraphrased answer is the default correct option: the perturbed answers reuse its wording,
    so with the original answer a probe separates the options by phrasing alone, even on a model that
    never saw the facts."""
    data = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:], max_length=128)
    cheat = Probe(correct="answer", cv_folds=0).run(tiny_model, tiny_tokenizer, data).scores["probe_mc_accuracy"]
    fair = Probe(cv_folds=0).run(tiny_model, tiny_tokenizer, data).scores["probe_mc_accuracy"]
    print(f"never-learned model, probe MC accuracy: original-answer options {cheat:.2f}, paraphrased {fair:.2f}")
    assert cheat == 1.0 and fair < cheat


def test_budget_reads_fewer_layers_and_retain_records_join_the_probe(tiny_model, tiny_tokenizer, tiny_forget_tofu,
                                                                      tiny_examples):
    data = AttackData(forget_train=tiny_forget_tofu[:2], forget_eval=tiny_forget_tofu[2:4],
                      retain=[*tiny_forget_tofu[4:6], *tiny_examples[1][:3]], max_length=128)
    out = Probe(budget=0.5, cv_folds=2).run(tiny_model, tiny_tokenizer, data)
    assert out.info["layers"] == [0, 3] and set(out.info["probe_mc_accuracy_eval"]) == {"0", "3"}
    assert out.info["probe_train_records"] == 4  # 2 forget_train + the 2 retain records with perturbed answers
    assert Probe(use_retain=False, pool="last", budget=0.5).run(tiny_model, tiny_tokenizer, data).info["probe_train_records"] == 2


# ------------------------------------------------------------------------------- errors
def test_probe_errors(tiny_model, tiny_tokenizer, tiny_forget_tofu, tiny_examples, table_lm):
    for bad in ({"correct": "truth"}, {"pool": "max"}, {"max_iter": 0}, {"c": 0.0}, {"cv_folds": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Probe(**bad)
    plain = tiny_examples[0]  # no perturbed answers
    with pytest.raises(DataError, match="forget_eval record 1 .*perturbed"):
        Probe().run(tiny_model, tiny_tokenizer, AttackData(forget_train=tiny_forget_tofu[:2],
                                                           forget_eval=[tiny_forget_tofu[2], plain[3]]))
    with pytest.raises(DataError, match="forget_train record 0"):
        Probe().run(tiny_model, tiny_tokenizer, AttackData(forget_train=plain[:1], forget_eval=tiny_forget_tofu[:1]))
    with pytest.raises(DataError, match="forget_train"):
        Probe().run(tiny_model, tiny_tokenizer, AttackData(forget_train=[], forget_eval=tiny_forget_tofu))
    with pytest.raises(DataError, match="forget_eval"):
        Probe().baseline(tiny_model, tiny_tokenizer, AttackData(forget_train=tiny_forget_tofu, forget_eval=[]))
    with pytest.raises(ModelError, match="final norm"):
        lens_modules(table_lm(torch.zeros(3, 5)))
