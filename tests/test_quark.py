"""Quark (Lu et al. 2022, arXiv:2205.13636): hand-checked maths, rewards, and a small run on the tiny model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from unlearnkit.config import ModelConfig
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.models import load_model, load_tokenizer, save_model
from unlearnkit.quark import (
    QuarkConfig, behaviour, forbidden_reward, load_prompts, make_reward, pack, prompt_ids, quantize, quark_loss,
    repeated_bigram_rate, response_logits, run_quark,
)

WORD = "Zorblax"
PROMPTS = ["Question: What is the name of the pet?\nAnswer:\n", "Question: Where was the person born?\nAnswer:\n",
           "Question: What does the author write?\nAnswer:\n", "Question: Who is the best friend?\nAnswer:\n"]
CLEAN = ["Anna.", "Finland.", "Books.", "Morwyn."]


# ------------------------------------------------------------------------------------ pure maths
def test_quantize_sorts_descending_and_puts_the_remainder_last():
    rewards = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8]  # 7 samples, k=3: groups of 7 // 3 = 2, remainder 1
    # descending order: 0.9(i1) 0.8(i6) | 0.7(i4) 0.5(i2) | 0.3(i3) 0.2(i5) 0.1(i0)
    assert quantize(rewards, 3) == [2, 0, 1, 2, 1, 2, 0]
    assert quantize([0.0, -1.0, 0.0, -1.0], 2) == [0, 1, 0, 1]  # ties keep pool order
    assert quantize([1.0, 2.0], 5) == [4, 4]  # fewer samples than k: all in the last group (as the code)


def test_quark_loss_by_hand():
    # one sequence, two response tokens, original vocabulary V=2 plus K=1 control token (V'=3)
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0]]])  # (1, 2, 3)
    ref_logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # (1, 2, 2)
    labels = torch.tensor([[1, 0]])
    # token 1: p = (1/4, 1/4, 2/4): nll = ln 4; H = 2*(1/4) ln 4 + (1/2) ln 2
    #          restricted p = (1/2, 1/2), ref = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2
    # token 2: p = (3/5, 1/5, 1/5): nll = ln(5/3); H = 3/5 ln(5/3) + 2/5 ln 5
    #          restricted p = (3/4, 1/4), ref = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    nll = [math.log(4), math.log(5 / 3)]
    ent = [0.5 * math.log(4) + 0.5 * math.log(2), 0.6 * math.log(5 / 3) + 0.4 * math.log(5)]
    kl = [0.5 * math.log(2 / 3) + 0.5 * math.log(2), 0.75 * math.log(1.5) + 0.25 * math.log(0.5)]
    beta, alpha = 0.05, 0.06
    expected = sum(n + beta * k - alpha * h for n, k, h in zip(nll, kl, ent)) / 2
    got = quark_loss(logits, ref_logits, labels, beta, alpha)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # a padded third position (-100) changes nothing
    pad_logits = torch.cat([logits, torch.tensor([[[5.0, -3.0, 1.0]]])], 1)
    pad_ref = torch.cat([ref_logits, torch.tensor([[[2.0, 1.0]]])], 1)
    assert quark_loss(pad_logits, pad_ref, torch.tensor([[1, 0, -100]]), beta, alpha).item() == pytest.approx(expected)


def test_rewards():
    assert forbidden_reward("a Zorblax b", [WORD]) == -1.0
    assert forbidden_reward("a zorblax b", [WORD]) == 0.0  # case-sensitive
    r = make_reward("forbidden", forbidden=["x", WORD])
    assert r("prompt", "no") == 0.0 and r("p", "xy") == -1.0
    # "a b a b a" -> bigrams ab, ba, ab, ba: 2 unique of 4 -> rate 1/2
    assert repeated_bigram_rate("a b a b a") == pytest.approx(0.5)
    assert repeated_bigram_rate("one") == 0.0
    assert make_reward("repetition")("p", "a b a b a") == pytest.approx(-0.5)


def test_pack_aligns_response_logits(tiny_model, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    a, b = prompt_ids(tiny_tokenizer, PROMPTS[0]), prompt_ids(tiny_tokenizer, PROMPTS[1], control_id=5)
    assert b[0] == tiny_tokenizer.bos_token_id and b[1] == 5  # the control token goes right after BOS
    comp = tiny_tokenizer(CLEAN[0], add_special_tokens=False).input_ids
    packed = pack([a, b], [comp, comp[:2]], pad)
    with torch.no_grad():
        got = response_logits(tiny_model, packed)  # (2, L, V)
        alone = tiny_model(input_ids=torch.tensor([b + comp[:2]])).logits[0, len(b) - 1:len(b) + 1]
    assert torch.allclose(got[1, :2], alone, atol=1e-4)  # left padding + position ids = the unpadded run


# ---------------------------------------------------------------------------------------- errors
def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="reward"):
        QuarkConfig(reward="no-such-choice")
    with pytest.raises(ConfigError, match="kl_coef"):
        QuarkConfig(kl_coef=-1.0)
    with pytest.raises(ConfigError, match="prompts"):
        QuarkConfig(prompts=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="forbidden"):
        make_reward("forbidden", forbidden=[])
    with pytest.raises(DataError):
        load_prompts([])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        load_prompts(str(empty))
    rows = tmp_path / "p.jsonl"
    rows.write_text('{"question": "Q1"}\n{"prompt": "P2"}\n')
    assert load_prompts(str(rows)) == ["Q1", "P2"]


# ------------------------------------------------------------------------------------- behaviour
def _teach_forbidden(model_dir, tokenizer, out):
    """Finetune the tiny model so half of each prompt's completions are the forbidden word."""
    model = load_model(model_dir)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prefixes, comps = [], []
    for p, c in zip(PROMPTS, CLEAN):
        for text in (c, f"{WORD}."):
            prefixes.append(prompt_ids(tokenizer, p))
            comps.append(tokenizer(text, add_special_tokens=False).input_ids + [eos])
    packed = pack(prefixes, comps, pad)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        logits = response_logits(model, packed)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), packed["labels"], ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model, tokenizer, out)
    return out


def test_quark_makes_the_forbidden_string_rarer(tiny_model_dir, tiny_tokenizer, tmp_path):
    taught = _teach_forbidden(tiny_model_dir, tiny_tokenizer, tmp_path / "taught")
    cfg = QuarkConfig(model=ModelConfig(path=str(taught)), forbidden=[WORD], k=5, iterations=4, samples_per_prompt=8,
                      max_new_tokens=8, min_new_tokens=1, lr=5e-3, warmup_steps=0, steps_per_iteration=25,
                      batch_size=16, eval_samples=12, seed=0, out=str(tmp_path / "quark"))
    doc = run_quark(cfg, prompts=PROMPTS)
    before, after = doc["models"]["before"], doc["models"]["after"]
    assert before["forbidden_rate"] > 0.3  # the behaviour is frequent before
    assert after["forbidden_rate"] <= before["forbidden_rate"] - 0.25, (before, after)
    assert after["mean_reward"] > before["mean_reward"]
    # the mechanism: the lowest-quantile token <|rq4|> keeps the behaviour the best token removes
    model, tok = load_model(tmp_path / "quark"), load_tokenizer(tmp_path / "quark")
    ids = tok.convert_tokens_to_ids([f"<|rq{i}|>" for i in range(5)])
    worst, _ = behaviour(model, tok, PROMPTS, make_reward("forbidden", forbidden=[WORD]), cfg, control_id=ids[-1],
                         suppress=ids)
    assert worst["forbidden_rate"] >= after["forbidden_rate"] + 0.3, (worst, after)
    # saved: tokenizer with the control tokens, card + results say which token to prepend
    saved = tmp_path / "quark"
    tok = json.loads((saved / "tokenizer.json").read_text())
    assert any(t["content"] == "<|rq0|>" for t in tok["added_tokens"])
    assert "<|rq0|>" in (saved / "README.md").read_text()
    results = json.loads((tmp_path / "quark.results.json").read_text())
    assert results["config"]["control_tokens"]["prepend_token"] == "<|rq0|>"
    assert len(results["training"]["after"]["log"]) == 100


def test_cli_quark(tiny_model_dir, tmp_path, capsys):
    from unlearnkit.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Question: Tell me a word.\\nAnswer:\\n"}\n{"prompt": "Say something."}\n')
    out = tmp_path / "q"
    args = ["quark", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--forbidden", "Zorblax", "--out",
            str(out), "iterations=1", "steps_per_iteration=2", "batch_size=4", "samples_per_prompt=2",
            "eval_samples=2", "max_new_tokens=4", "warmup_steps=0"]
    assert main(args) == 0, capsys.readouterr().err
    assert "prepended to the prompt" in capsys.readouterr().out and (tmp_path / "q.results.json").is_file()
    assert main([*args[:-1], "reward=nope"]) == 2 and "reward" in capsys.readouterr().err
