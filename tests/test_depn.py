"""DEPN (Wu et al. 2023, arXiv 2310.20138): IG maths by hand, selection / aggregation by hand, the
weight-edit == activation-zeroing equivalence, attribution completeness on the tiny model, and the
whole pipeline lowering memorised digit secrets on a finetuned tiny model."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from unlearnkit.data.records import Example, load_examples
from unlearnkit.depn import (
    DepnConfig,
    _activations,
    _token_prob_fn,
    aggregate,
    edit,
    integrated_gradients,
    layer_histogram,
    measure,
    mlp_out_proj,
    run_depn,
    secret_spans,
    select_neurons,
)
from unlearnkit.config import ModelConfig
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.models import decoder_layers, load_model, load_tokenizer, save_model

SECRETS = [("Ann Lee", "4819273"), ("Bo Chan", "7302658"), ("Cy Diaz", "5164907"), ("Di Egan", "9027341")]
SECRET_ROWS = [{"question": f"What is {n}'s phone number?", "answer": f"{n}'s phone number is {s}.", "secret": s}
               for n, s in SECRETS]
OTHER_ROWS = [{"question": "Where does Ann Lee live?", "answer": "Ann Lee lives in a small town."},
              {"question": "What does Bo Chan do?", "answer": "Bo Chan works as a baker."}]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


# ------------------------------------------------------------------------------------- pure maths
def test_ig_left_riemann_by_hand():
    # P(x) = sum x^2, dP/dx_i = 2 x_i; left sum: w_i/m sum_j 2 (j/m) w_i = w_i^2 (m-1)/m; m=4 -> 0.75 w^2
    att = integrated_gradients(lambda x: (x**2).sum(-1), torch.tensor([1.0, 2.0]), steps=4)
    assert torch.allclose(att, torch.tensor([0.75, 3.0]))
    # P(w) = sigmoid(a.w), m = 2: Att_i = w_i a_i (s'(0) + s'(a.w / 2)) / 2 with s' = s (1 - s)
    a, w = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.5, 0.25])
    ds = lambda z: 1 / (1 + math.exp(-z)) * (1 - 1 / (1 + math.exp(-z)))  # noqa: E731
    s = 0.5 * 1.0 - 1.0 * 0.5 + 2.0 * 0.25  # a.w = 0.5
    expected = [wi * ai * (ds(0.0) + ds(s / 2)) / 2 for wi, ai in zip(w.tolist(), a.tolist())]
    att = integrated_gradients(lambda x: torch.sigmoid(x @ a), w, steps=2)
    assert torch.allclose(att, torch.tensor(expected), atol=1e-7)


def test_ig_matches_the_integral_with_many_steps():
    # exact: Att_i = w_i a_i (sigmoid(s) - 1/2) / s, s = a.w (and sum_i Att_i = P(w) - P(0))
    a, w = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    s = 1.5 - 1.0 + 1.0
    exact = [wi * ai * (1 / (1 + math.exp(-s)) - 0.5) / s for wi, ai in zip(w.tolist(), a.tolist())]
    att = integrated_gradients(lambda x: torch.sigmoid(x @ a), w, steps=4000)
    assert torch.allclose(att, torch.tensor(exact, dtype=torch.float64), atol=1e-4)
    assert abs(float(att.sum()) - (1 / (1 + math.exp(-s)) - 0.5)) < 1e-4


def test_select_neurons_by_hand():
    atts = torch.tensor([[1.0, 0.05, 0.1], [-2.0, 0.5, 0.09]])  # max 1.0 -> keep >= 0.1
    assert select_neurons(atts, 0.1) == {(0, 0), (0, 2), (1, 1)}
    assert select_neurons(atts, 0.6) == {(0, 0)}
    assert select_neurons(-atts.abs(), 0.1) == set()  # no positive attribution -> no neuron


def test_aggregate_by_hand():
    sets = [{(2, 3), (0, 1)}, {(2, 3)}, {(1, 0), (0, 1)}, set()]
    assert aggregate(sets, 2) == [(0, 1, 2), (2, 3, 2)]  # ties by (layer, neuron)
    assert aggregate(sets, 10) == [(0, 1, 2), (2, 3, 2), (1, 0, 1)]
    assert layer_histogram(aggregate(sets, 10)) == {0: 1, 1: 1, 2: 1}


# ------------------------------------------------------------------------------------- model glue
def _zeroing_hooks(model, neurons):
    def make(ks):
        def hook(_m, inp):
            h = inp[0].clone()
            h[..., ks] = 0.0
            return (h,)
        return hook
    by_layer = {}
    for layer, k in neurons:
        by_layer.setdefault(layer, []).append(k)
    return [mlp_out_proj(model, layer)[0].register_forward_pre_hook(make(ks)) for layer, ks in by_layer.items()]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_editing_weights_equals_zeroing_activations(tiny_model, arch):
    model = tiny_model.eval() if arch == "llama" else _gpt2()
    neurons = [(0, 3), (0, 17), (len(decoder_layers(model)) - 1, 10)]
    ids = torch.tensor([[1, 5, 9, 13, 21, 30, 7]])
    hooks = _zeroing_hooks(model, neurons)
    with torch.no_grad():
        hooked = model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        edited = edit(model, [(layer, k, 5) for layer, k in neurons])(input_ids=ids).logits
    assert not torch.equal(plain, hooked)  # the neurons matter
    assert torch.equal(edited, hooked)


def test_model_attribution_is_complete(tiny_model):
    # IG completeness through the real hook: sum_i Att_i ~= P(w) - P(activation zeroed at that position)
    model = tiny_model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids, pos, target, layer = torch.tensor([[1, 5, 9, 13, 21]]), 4, 30, 1
    w = _activations(model, ids, pos)[layer]
    fn = _token_prob_fn(model, ids, layer, pos, target)
    att = integrated_gradients(fn, w, steps=400)
    with torch.no_grad():
        full, zero = fn(w[None])[0], fn(torch.zeros_like(w)[None])[0]
        normal = torch.softmax(model(input_ids=ids).logits[0, pos], -1)[target]
    assert torch.allclose(full, normal, atol=1e-6)  # the hook with x = w changes nothing
    assert abs(float(att.sum()) - float(full - zero)) < 0.02 * abs(float(full - zero)) + 1e-7


def test_model_without_down_proj_is_a_config_error():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ConfigError, match="down_proj"):
        mlp_out_proj(model, 0)


# ------------------------------------------------------------------------------------- data errors
def test_secret_spans_errors_and_defaults():
    with pytest.raises(DataError, match="no records"):
        secret_spans([], "secret")
    bad = [Example("q1", "a1 123", extras={"secret": "123"}), Example("q2", "a2 456", extras={"secret": "999"})]
    with pytest.raises(DataError, match="record 2.*'999'"):
        secret_spans(bad, "secret")
    assert secret_spans([Example("q", "abc"), Example("r", "de")], "secret") == [[(0, 3)], [(0, 2)]]  # whole answers
    mixed = [Example("q", "my pin 42", extras={"secret": "42"}), Example("r", "plain")]
    assert secret_spans(mixed, "secret") == [[(7, 9)], []]
    annotated = [Example("q", "call 555 now", extras={"sensitive": ["555"]}), Example("r", "plain")]
    assert secret_spans(annotated, "secret") == [[(5, 8)], []]  # `sensitive` strings when there is no secret


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="records"):
        DepnConfig().validate()
    for name, value in (("ig_steps", 0), ("erase_num", -1), ("threshold_ratio", 1.5)):
        with pytest.raises(ConfigError, match=name):
            DepnConfig(records="x", **{name: value}).validate()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        run_depn(DepnConfig(model=ModelConfig(path="unused"), records=str(empty), out=str(tmp_path / "o")))


# ------------------------------------------------------------------------------------- behaviour
@pytest.fixture(scope="module")
def knows_secrets(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """The tiny model finetuned until it recites the phone numbers of SECRET_ROWS."""
    from unlearnkit.data.pair import build_paired
    from unlearnkit.train import Finetune, TrainConfig, run

    model = load_model(tiny_model_dir)
    rows = SECRET_ROWS + OTHER_ROWS
    data = build_paired(None, [Example(r["question"], r["answer"]) for r in rows], [], tiny_tokenizer)
    run(model, Finetune(), data, TrainConfig(max_steps=60, batch_size=6, lr=1e-2, weight_decay=0.0, progress=False,
                                             threads=1))
    d = tmp_path_factory.mktemp("depn")
    save_model(model, tiny_tokenizer, d / "model")
    return str(d / "model"), _write(d / "records.jsonl", rows)


def test_depn_lowers_the_secrets(knows_secrets, tmp_path):
    model_dir, records = knows_secrets
    out = tmp_path / "edited"
    doc = run_depn(DepnConfig(model=ModelConfig(path=model_dir), records=records, out=str(out), erase_num=20,
                              ig_steps=10))
    before, after = doc["models"]["before"], doc["models"]["depn"]
    assert before["secret_prob"] > 0.4 and before["secret_mrr"] > 0.7  # the model memorised the secrets
    assert after["secret_prob"] < 0.6 * before["secret_prob"]
    assert after["secret_mrr"] < before["secret_mrr"] - 0.1
    assert before["exposure"] is not None and after["exposure"] < before["exposure"]
    assert before["perplexity"] > 0 and after["perplexity"] > 0
    assert doc["config"]["perplexity_on"] == "non-secret records"
    neurons = doc["config"]["neurons"]
    assert 0 < len(neurons) <= 20 and sum(doc["config"]["layer_histogram"].values()) == len(neurons)
    assert doc["splits"] == {"secret_records": 4, "other_records": 2}
    saved = load_model(out)
    layer, k, _ = neurons[0]
    assert torch.all(saved.model.layers[layer].mlp.down_proj.weight[:, k] == 0)
    assert json.loads((tmp_path / "edited.results.json").read_text())["models"]["depn"]["path"] == str(out)
    # control: as many random neurons lower the secrets far less than the detected ones
    original, examples = load_model(model_dir), load_examples(records)
    spans, cfg, g = secret_spans(examples, "secret"), DepnConfig(records=records), torch.Generator().manual_seed(0)
    for _ in range(2):
        rnd = list(zip(torch.randint(0, 3, (len(neurons),), generator=g).tolist(),
                       torch.randint(0, 64, (len(neurons),), generator=g).tolist()))
        control, _ = measure(edit(copy.deepcopy(original), rnd), load_tokenizer(model_dir), examples, spans, cfg)
        assert after["secret_prob"] < 0.6 * control["secret_prob"]


def test_missing_secret_names_the_record(knows_secrets, tmp_path):
    model_dir, _ = knows_secrets
    rows = [*SECRET_ROWS[:2], {**SECRET_ROWS[2], "secret": "0000000"}]
    cfg = DepnConfig(model=ModelConfig(path=model_dir), records=_write(tmp_path / "r.jsonl", rows),
                     out=str(tmp_path / "o"))
    with pytest.raises(DataError, match="record 3"):
        run_depn(cfg)
    assert not (tmp_path / "o").exists()


def test_cli_depn_writes_the_edited_model_and_results(knows_secrets, tmp_path, capsys):
    from unlearnkit.cli import main

    model_dir, records = knows_secrets
    out = tmp_path / "cli"
    assert main(["depn", "--model", model_dir, "--records", records, "--out", str(out), "erase_num=5",
                 "ig_steps=4"]) == 0, capsys.readouterr().err
    assert "edited 5 neurons (per layer:" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (tmp_path / "cli.results.json").is_file()
    assert main(["depn", "--model", model_dir, "--records", records, "--out", str(tmp_path / "x"), "erase_nm=5"]) == 2
    assert "erase_num" in capsys.readouterr().err  # did-you-mean


def test_reciprocal_rank_by_hand():
    from unlearnkit.depn import reciprocal_rank

    scores = torch.tensor([0.1, 0.5, 0.3, 0.5])
    assert reciprocal_rank(scores, 2) == pytest.approx(1 / 3)  # two scores above 0.3
    assert reciprocal_rank(scores, 1) == 1.0 and reciprocal_rank(scores, 3) == 1.0  # a tie favours the secret
    assert reciprocal_rank(scores, 0) == pytest.approx(1 / 4)
