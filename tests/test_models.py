"""Model I/O: directory checks, atomic save with a model card, reload parity, LoRA, layer access."""
from __future__ import annotations

import json

import pytest
import torch

from unlearnkit.errors import ConfigError, ModelError
from unlearnkit.models import (
    LoraSettings,
    check_model_dir,
    decoder_layers,
    frozen_copy,
    interpolate_weights,
    load_model,
    load_tokenizer,
    maybe_add_lora,
    model_card,
    save_model,
)

IDS = torch.tensor([[1, 5, 17, 42, 99, 7, 3], [1, 8, 250, 12, 0, 0, 0]])


def logits_of(model, ids=IDS):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def partials(parent):
    return [p.name for p in parent.iterdir() if ".partial" in p.name]


# ----------------------------------------------------------------------------- directory checks
def test_missing_dir(tmp_path):
    for fn in (check_model_dir, load_model):
        with pytest.raises(ModelError, match="does not exist"):
            fn(tmp_path / "nope")


def test_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    for fn in (check_model_dir, load_model):
        with pytest.raises(ModelError, match="no config.json"):
            fn(tmp_path)


def test_config_but_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        check_model_dir(tmp_path)
    with pytest.raises(ModelError, match="no weights"):
        load_model(tmp_path)


def test_pickle_only_dir_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="pickle") as info:
        check_model_dir(tmp_path)
    assert "allow_pickle" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ModelError, match="pickle"):
        load_model(tmp_path)
    assert check_model_dir(tmp_path, allow_pickle=True) == tmp_path


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def pickle_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose weights are a pickle (pytorch_model.bin) instead of safetensors."""
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    return d


def test_malicious_pickle_is_refused_and_runs_nothing(pickle_dir, tmp_path, capsys):
    from unlearnkit.cli import main

    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Evil(marker)}, pickle_dir / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights"):
        load_model(pickle_dir)
    with pytest.raises(ModelError, match="refused the pickle weights .* objects other than tensors"):
        load_model(pickle_dir, allow_pickle=True)  # even when allowed: torch.load(weights_only=True)
    assert main(["eval", "--model", str(pickle_dir), "model.allow_pickle=true", "--no-progress"]) == 2
    assert "refused the pickle weights" in capsys.readouterr().err
    assert not marker.exists()


def test_plain_pickle_loads_when_allowed(pickle_dir, _tiny_model_pristine):
    state = {k: v.clone() for k, v in _tiny_model_pristine.state_dict().items()}
    torch.save(state, pickle_dir / "pytorch_model.bin")
    loaded = load_model(pickle_dir, allow_pickle=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_remote_code_is_refused_unless_trusted(tiny_model_dir, tmp_path):
    import shutil

    d, marker = tmp_path / "custom", tmp_path / "pwned"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ModelError, match="trust_remote_code=True"):
        load_model(d)
    assert not marker.exists()


def test_safetensors_index_counts_as_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert check_model_dir(tmp_path) == tmp_path


def test_model_dir_is_valid(tiny_model_dir):
    assert check_model_dir(tiny_model_dir) == tiny_model_dir


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(ModelError, match="tokenizer"):
        load_tokenizer(tmp_path / "nope")


# ----------------------------------------------------------------------------- saving
def test_save_reload_identical_logits(tiny_model, tiny_tokenizer, tmp_path):
    before = logits_of(tiny_model)
    out = save_model(tiny_model, tiny_tokenizer, tmp_path / "saved")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "README.md").exists()  # no card requested
    back = load_model(out)
    assert torch.equal(logits_of(back), before)
    tok = load_tokenizer(out)
    text = "Question: who?\nAnswer:\n"
    assert tok(text).input_ids == tiny_tokenizer(text).input_ids
    assert tok.eos_token_id == tiny_tokenizer.eos_token_id and tok.pad_token_id == tiny_tokenizer.pad_token_id
    assert partials(tmp_path) == []


def test_save_failure_leaves_nothing(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_tokenizer, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tiny_model, tiny_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert partials(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_save_failure_keeps_existing_output(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    out = save_model(tiny_model, tiny_tokenizer, tmp_path / "out", card={"method": "old"})
    before = sorted(p.name for p in out.iterdir())
    weights = (out / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # an interrupted save, too, must clean up

    monkeypatch.setattr(tiny_tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model, tiny_tokenizer, out, card={"method": "new"})
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "model.safetensors").read_bytes() == weights
    assert "`old`" in (out / "README.md").read_text()
    assert partials(tmp_path) == []


def test_save_replaces_existing_output(tiny_model, tiny_tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    save_model(tiny_model, tiny_tokenizer, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert partials(tmp_path) == []


CARD = {
    "base_model": "tiny-llama",
    "method": "npo",
    "forget_set_sha256": "f0f0abc123",
    "config": {"method_args": {"beta": 0.1}},
    "metrics": {"forget_quality": 0.41234, "model_utility": 0.5, "privleak": None},
}


def test_model_card(tiny_model, tiny_tokenizer, tmp_path):
    out = save_model(tiny_model, tiny_tokenizer, tmp_path / "carded", card=CARD)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers")
    assert "- **method**: `npo`" in readme
    assert "- **base_model**: `tiny-llama`" in readme
    assert "- **forget_set_sha256**: `f0f0abc123`" in readme
    assert "| metric | value |" in readme
    assert "| forget_quality | 0.4123 |" in readme
    assert "| model_utility | 0.5000 |" in readme
    assert "| privleak | None |" in readme
    assert '"beta": 0.1' in readme
    assert json.loads((out / "unlearnkit.json").read_text()) == CARD


def test_model_card_without_optional_parts():
    text = model_card({"method": "grad_ascent"})
    assert "grad_ascent" in text and "Headline metrics" not in text and "Configuration" not in text


def test_frozen_copy(tiny_model):
    ref = frozen_copy(tiny_model)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())  # the original is untouched
    assert torch.equal(logits_of(ref), logits_of(tiny_model))


# ----------------------------------------------------------------------------- LoRA
def test_lora_r0_is_a_no_op(tiny_model):
    assert maybe_add_lora(tiny_model, LoraSettings()) is tiny_model


def test_lora_only_adapters_trainable(tiny_model):
    n_base = sum(p.numel() for p in tiny_model.parameters())
    peft_model = maybe_add_lora(tiny_model, LoraSettings(r=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("lora_" not in n for n in frozen)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" not in n) == n_base
    # all-linear: attention and MLP projections of every layer are adapted
    assert any("q_proj.lora_A" in n for n in trainable) and any("down_proj.lora_B" in n for n in trainable)


def test_lora_save_merges_into_plain_model(tiny_model, tiny_tokenizer, tmp_path):
    base_logits = logits_of(tiny_model)
    peft_model = maybe_add_lora(tiny_model, LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero; make the adapter matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    peft_logits = logits_of(peft_model)
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)
    out = save_model(peft_model, tiny_tokenizer, tmp_path / "lora_out")
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    back = load_model(out)
    assert not any("lora" in n for n, _ in back.named_parameters())
    torch.testing.assert_close(logits_of(back), peft_logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- layers
def test_decoder_layers_llama(tiny_model):
    layers = decoder_layers(tiny_model)
    assert layers is tiny_model.model.layers
    assert len(layers) == tiny_model.config.num_hidden_layers


def test_decoder_layers_through_peft(tiny_model):
    layers = tiny_model.model.layers
    assert decoder_layers(maybe_add_lora(tiny_model, LoraSettings(r=2))) is layers


def test_decoder_layers_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64))
    layers = decoder_layers(model)
    assert layers is model.transformer.h and len(layers) == 2


def test_decoder_layers_unknown_architecture():
    with pytest.raises(ModelError, match="cannot find the decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- WiSE-FT interpolation
def test_interpolate_weights_mixes_every_weight_once(tiny_model):
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(1.0)  # "finetuned" = start + 1 everywhere
    assert tiny_model.get_input_embeddings().weight is tiny_model.get_output_embeddings().weight  # tied
    interpolate_weights(tiny_model, start, 0.25)
    for name, value in tiny_model.state_dict().items():
        if value.is_floating_point():  # 0.25 x (start + 1) + 0.75 x start; the tied matrix not mixed twice
            torch.testing.assert_close(value, start[name] + 0.25, msg=name)


def test_interpolate_weights_endpoints_and_errors(tiny_model):
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    finetuned = {k: v + 0.5 if v.is_floating_point() else v for k, v in start.items()}
    tiny_model.load_state_dict(finetuned)
    interpolate_weights(tiny_model, start, 1.0)
    assert all(torch.equal(v, finetuned[k]) for k, v in tiny_model.state_dict().items())
    interpolate_weights(tiny_model, start, 0.0)
    assert all(torch.equal(v, start[k]) for k, v in tiny_model.state_dict().items())
    with pytest.raises(ConfigError, match="wise_alpha"):
        interpolate_weights(tiny_model, start, 1.5)
    with pytest.raises(ModelError, match="different weights"):
        interpolate_weights(tiny_model, {k: v for k, v in start.items() if "layers.0." not in k}, 0.5)


def test_finetune_wise_alpha_saves_the_interpolated_model(tiny_model_dir, tiny_examples, tmp_path):
    """api.finetune with wise_alpha: the saved weights are alpha x plain finetune + (1 - alpha) x start."""
    from unlearnkit import api
    from unlearnkit.config import DataConfig, FinetuneConfig, ModelConfig
    from unlearnkit.train import TrainConfig

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in tiny_examples[0]))
    outs = {}
    for alpha in (1.0, 0.5):
        cfg = FinetuneConfig(model=ModelConfig(path=str(tiny_model_dir)), data=DataConfig(train=str(data)),
                             train=TrainConfig(lr=1e-2, max_steps=3, batch_size=4, progress=False, threads=1),
                             wise_alpha=alpha, out=str(tmp_path / f"a{alpha}"))
        api.finetune(cfg)
        outs[alpha] = load_model(tmp_path / f"a{alpha}").state_dict()
    start = load_model(tiny_model_dir).state_dict()
    for name, value in outs[0.5].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * outs[1.0][name] + 0.5 * start[name], msg=name)
    assert not torch.equal(outs[0.5]["model.norm.weight"], outs[1.0]["model.norm.weight"])
    with pytest.raises(ConfigError, match="wise_alpha"):
        api.finetune(FinetuneConfig(model=ModelConfig(path=str(tiny_model_dir)), data=DataConfig(train=str(data)),
                                    wise_alpha=-0.1, out=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()
