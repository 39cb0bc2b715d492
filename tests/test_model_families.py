"""Every command takes any local Hugging Face causal-LM directory, not only Llama: a tiny random model of
each family the README names is saved with ``save_pretrained`` and goes through the real CLI
(finetune -> unlearn -> eval), loaded by the same ``from_pretrained`` code as a downloaded checkpoint."""
from __future__ import annotations

import json

import pytest
import transformers

from unlearnkit import cli
from unlearnkit.data.synthetic import write_tofu_layout
from unlearnkit.models import load_model, load_tokenizer

# family -> (config class, extra config kwargs); all 2 layers, width 32, 4 heads
FAMILIES = {
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "phi3": ("Phi3Config", {}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2}),
    "gpt2": ("GPT2Config", {}),
    "gpt_neox": ("GPTNeoXConfig", {}),
}
_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "max_position_embeddings": 256}
_GPT2_SIZES = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("families") / "data"
    write_tofu_layout(out, n_people=10, facts_per_person=2, seed=0)
    return out


def _save_family(family: str, tokenizer, out) -> None:
    import torch

    cls_name, extra = FAMILIES[family]
    sizes = _GPT2_SIZES if family == "gpt2" else _SIZES
    config = getattr(transformers, cls_name)(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                             **sizes, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_finetune_unlearn_eval_through_the_cli(family, tiny_tokenizer, bench_dir, tmp_path):
    base = tmp_path / "base"
    _save_family(family, tiny_tokenizer, base)
    quiet = ["--no-progress", "train.threads=1"]
    assert cli.main(["finetune", "--model", str(base), "--data", str(bench_dir / "full.json"), "--out",
                     str(tmp_path / "target"), *quiet, "train.max_steps=4", "train.lr=1e-3"]) == 0
    assert cli.main(["unlearn", "--model", str(tmp_path / "target"), "--forget", str(bench_dir / "forget10.json"),
                     "--retain", str(bench_dir / "retain90.json"), "--method", "npo", "--out",
                     str(tmp_path / "unlearned"), *quiet, "train.max_steps=2", "train.lr=1e-3"]) == 0
    results = tmp_path / "results.json"
    assert cli.main(["eval", "--model", str(tmp_path / "unlearned"), "--suite", "tofu", "--data-dir", str(bench_dir),
                     "--forget-split", "forget10", "--out", str(results), "--no-progress", "probe.max_new_tokens=4"]) == 0
    values = json.loads(results.read_text())["models"]
    (only,) = values.values()
    assert 0.0 < only["forget_prob"] < 1.0 and 0.0 < only["retain_prob"] < 1.0
    model = load_model(tmp_path / "unlearned")
    assert model.config.model_type == family
    text = bench_dir.joinpath("full.json").read_text()[:300]
    assert load_tokenizer(tmp_path / "unlearned")(text).input_ids == load_tokenizer(base)(text).input_ids
