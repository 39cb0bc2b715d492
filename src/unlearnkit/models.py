"""Model I/O: load a local ``from_pretrained`` directory, save with a model card, build tiny models.

Loading is offline and safe by default: safetensors weights only, ``trust_remote_code`` off unless
asked, and a missing directory or a directory without weights is a clear :class:`ModelError`.
The tiny Llama-style model and the byte-level BPE tokenizer built here are what the demo and the
tests use; they go through exactly the same ``from_pretrained`` path as a real checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import ConfigError, ModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def check_model_dir(path: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """Validate that ``path`` is a local model directory with config and safetensors weights."""
    p = Path(path)
    if not p.is_dir():
        raise ModelError(
            f"model directory '{p}' does not exist; pass a local directory written by "
            "save_pretrained (no model hub is used)"
        )
    if not (p / "config.json").is_file():
        raise ModelError(f"'{p}' has no config.json: it is not a Hugging Face model directory")
    if any((p / f).is_file() for f in WEIGHT_FILES):
        return p
    if any((p / f).is_file() for f in PICKLE_FILES):
        if allow_pickle:
            return p
        raise ModelError(
            f"'{p}' holds only pickle weights (pytorch_model.bin), which can execute code when "
            "loaded; convert them to safetensors, or pass allow_pickle=True if you trust the file"
        )
    raise ModelError(
        f"'{p}' has a config.json but no weights (expected model.safetensors); "
        "was the save interrupted?"
    )


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer of a local directory; set ``pad_token = eos_token`` if it has none."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ModelError(f"model directory '{path}' does not exist; pass a local directory "
                         "written by save_pretrained (no model hub is used)")
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from '{path}': {exc}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ModelError(f"the tokenizer in '{path}' has no EOS token; set eos_token in its config")
    return tok


def load_model(
    path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a causal LM from a local directory: safetensors only unless ``allow_pickle``, and even
    then pickle weights are read with ``torch.load(weights_only=True)`` (transformers' default with
    torch >= 2.6), so a pickle holding anything but tensors is refused before it can run code.
    ``trust_remote_code`` stays off unless asked: a config that needs custom code is refused."""
    import pickle

    from transformers import AutoModelForCausalLM

    p = check_model_dir(path, allow_pickle=allow_pickle)
    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(p),
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            use_safetensors=not allow_pickle,
        )
    except pickle.UnpicklingError as exc:
        raise ModelError(f"refused the pickle weights in '{p}': they hold objects other than tensors, which could "
                         "run code when loaded (torch.load weights_only=True rejected them). Do not use this file; "
                         "ask its author for safetensors weights") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the model in '{p}': {exc}") from exc
    model.config.use_cache = False
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode with ``requires_grad=False`` (a reference model)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks for Llama/Mistral/Qwen/Phi (``model.model.layers``), GPT-2
    (``transformer.h``) and GPT-NeoX (``gpt_neox.layers``) families, unwrapping a peft model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj: Any = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(
        f"cannot find the decoder layers of {type(base).__name__}; supported: Llama-style "
        "(model.layers), GPT-2 (transformer.h), GPT-NeoX (gpt_neox.layers), OPT"
    )


# --------------------------------------------------------------------------------------- LoRA
@dataclass
class LoraSettings:
    """LoRA options (peft). ``r=0`` means full fine-tuning."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"


def maybe_add_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap ``model`` in a peft LoRA model when ``lora.r > 0``; otherwise return it unchanged."""
    if lora.r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)


def merged(model: Any) -> Any:
    """Merge LoRA adapters into the base weights (no-op for a plain model)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def interpolate_weights(model: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> torch.nn.Module:
    """WiSE-FT weight-space ensembling, in place: every floating-point weight becomes
    ``alpha * θ_finetuned + (1 - alpha) * θ_start``; ``start`` is the state dict before finetuning.

    Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (CVPR; github.com/mlfoundations/wise-ft):
    interpolating toward the starting weights keeps much of what finetuning added and much of what
    the model knew before it. ``model`` must be plain (LoRA merged, :func:`merged`)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"wise_alpha={alpha}: the weight of the finetuned model must be in [0, 1] (1 = no interpolation)")
    state = model.state_dict()
    if set(state) != set(start):
        diff = sorted(set(state) ^ set(start))[:3]
        raise ModelError(f"cannot interpolate: the finetuned and starting models have different weights (e.g. {diff})")
    seen: set[int] = set()  # tied weights (embeddings / LM head) appear under two names: mix them once
    with torch.no_grad():
        for name, value in state.items():
            if value.is_floating_point() and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                value.mul_(alpha).add_(start[name].to(value.device, value.dtype), alpha=1.0 - alpha)
    return model


# --------------------------------------------------------------------------------------- saving
def save_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    card: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save model + tokenizer (+ a README model card) atomically: staged in a hidden sibling directory,
    every file fsynced, a ``manifest.json`` of sha256 hashes written last, then renamed into place
    (:func:`unlearnkit.storage.staged_dir`), so an interrupted save never leaves a half-written model.
    ``extra(stage)`` may add files once the weights are written (the deletion record hashes them)."""
    from .storage import staged_dir

    out = Path(out_dir)
    try:
        with staged_dir(out) as stage:
            _quiet_transformers()
            model = merged(model)
            model.config.use_cache = True
            model.save_pretrained(stage, safe_serialization=True)
            tokenizer.save_pretrained(stage)
            if card is not None:
                (stage / "README.md").write_text(model_card(card), encoding="utf-8")
                (stage / "unlearnkit.json").write_text(json.dumps(card, indent=2, default=str))
            if extra is not None:
                extra(stage)
    except OSError as exc:
        raise ModelError(f"cannot write the model to '{out}': {exc.strerror or exc}; choose another --out") from exc
    return out


def add_card_metrics(model_dir: str | os.PathLike, metrics: dict[str, float | None]) -> None:
    """Add headline metrics to a saved model's card (README.md + unlearnkit.json), atomically."""
    d = Path(model_dir)
    meta_path = d / "unlearnkit.json"
    card = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    card["metrics"] = {**card.get("metrics", {}), **metrics}
    from .storage import refresh_manifest, write_text_atomic

    for name, text in (("unlearnkit.json", json.dumps(card, indent=2, default=str)), ("README.md", model_card(card))):
        write_text_atomic(d / name, text)
    refresh_manifest(d, ["unlearnkit.json", "README.md"])


def model_card(card: dict[str, Any]) -> str:
    """A README.md model card: base model, method and config, forget-set hash, headline metrics."""
    lines = ["---", "library_name: transformers", "tags: [unlearnkit, machine-unlearning]", "---", ""]
    lines.append(f"# {card.get('title', 'Model produced by unlearnkit')}\n")
    for key in ("base_model", "method", "forget_set_sha256", "retain_set_sha256", "created"):
        if card.get(key) is not None:
            lines.append(f"- **{key}**: `{card[key]}`")
    if card.get("config"):
        lines += ["", "## Configuration", "", "```json", json.dumps(card["config"], indent=2, default=str), "```"]
    if card.get("metrics"):
        lines += ["", "## Headline metrics", "", "| metric | value |", "|---|---|"]
        for name, value in card["metrics"].items():
            lines.append(f"| {name} | {value if value is None else f'{value:.4f}'} |")
    lines += [
        "",
        "Unlearning changes a model's behaviour on the forget set; it is not a proof that the "
        "information is gone. See the audit tools before relying on it.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- tiny models
@dataclass
class TinyModelSpec:
    """Shape of the tiny Llama-style model used by the demo and the tests (~1M parameters)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    vocab_size: int = 2048
    seed: int = 0


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048) -> Any:
    """Train a byte-level BPE tokenizer (``tokenizers`` library) on ``texts``.

    BOS is prepended by the post-processor (like Llama tokenizers), EOS is added by our formatting.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_model(
    texts: Iterable[str], out_dir: str | os.PathLike, spec: TinyModelSpec | None = None
) -> Path:
    """Train a tokenizer on ``texts``, build a randomly initialised tiny Llama and save both."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelSpec()
    tokenizer = train_bpe_tokenizer(texts, vocab_size=spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    card = {"title": "Tiny Llama-style model built by unlearnkit", "config": asdict(spec)}
    return save_model(model, tokenizer, out_dir, card=card)
