"""Training checkpoints that resume bit-identically, written atomically and verified before use.

A checkpoint is a directory ``<root>/step-00000012/`` holding everything the loop's future depends on:

- ``model.safetensors``: the trainable model's weights (LoRA adapters included; safetensors, so
  loading it runs no code);
- ``optim.pt``: optimizer and LR-scheduler state and the method's reference log-probs (tensors,
  numbers and lists only: read back with ``torch.load(weights_only=True)``);
- ``trainer.json``: the step, the micro-batches consumed from the forget / retain stream, the RNG
  states of Python, NumPy and torch, the reference log-prob cache key, the training config and
  method (a resume with other settings is refused) and the log so far;
- ``manifest.json``: sha256 of each file, written last (:mod:`unlearnkit.storage`).

It is staged in a hidden sibling directory, fsynced and renamed into place, so a kill during a save
leaves the previous checkpoints intact; :func:`latest_checkpoint` uses only checkpoints whose manifest
verifies, and reports the others. The stream position is a count of consumed batches: the pairing of
:meth:`PairedData.batches` is a pure function of the seed, so skipping that many reproduces it exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, TrainingDiverged
from .storage import MANIFEST, staged_dir, verify_manifest

FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{8})$")
# settings that do not change what the run computes (and the guard_* thresholds): a resume may change them
RESUME_FREE = {"progress", "threads", "resume", "checkpoint_every", "keep_checkpoints", "checkpoint_dir"}


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def ref_cache_key(data: Any, views: tuple[str, ...], model: Any) -> str:
    """sha256 naming the reference log-probs: the model's name and the exact token ids and labels
    of every forget view they were computed on. A checkpoint whose key differs is from other data."""
    h = hashlib.sha256()
    h.update(str(getattr(getattr(model, "config", None), "_name_or_path", "")).encode())
    for view in views:
        h.update(view.encode())
        for ex in data.forget:
            enc = ex[view]
            h.update(np.asarray(enc.input_ids, dtype=np.int64).tobytes())
            h.update(np.asarray(enc.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def run_signature(cfg: Any, method: Any) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run: the training config (minus the
    settings in ``RESUME_FREE``) and the method with its hyperparameters."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE and not k.startswith("guard_")}
    args = dataclasses.asdict(method) if dataclasses.is_dataclass(method) else {}
    return json.loads(json.dumps({"train": train, "method": type(method).__name__, "method_args": args}, default=str))


def save_checkpoint(
    root: str | Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, data: Any,
    signature: dict[str, Any], micro_batches: int, ref_key: str | None, log: list[dict[str, Any]],
    guards: dict[str, Any] | None = None, keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically (staged, fsynced, manifest, rename), then
    delete all but the newest ``keep`` finished checkpoints. ``model`` is the unwrapped module."""
    from safetensors.torch import save_model

    out = step_dir(root, step)
    with staged_dir(out) as stage:
        save_model(model, str(stage / "model.safetensors"))  # shared (tied) tensors stored once
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "ref_logp": {k: v.clone() for k, v in data.ref_logp.items()}}, stage / "optim.pt")
        meta = {"format": FORMAT, "step": step, "micro_batches": micro_batches, "rng": rng_state(),
                "ref_key": ref_key, "signature": signature, "log": log, "guards": guards or {}}
        (stage / "trainer.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
    _prune(Path(root), keep)
    return out


def _steps(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` finished checkpoints (those with a manifest; the full
    re-hash happens once, at resume, not after every save)."""
    finished = [path for _, path in _steps(root) if (path / MANIFEST).is_file()]
    for path in finished[max(1, keep):]:
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` whose manifest verifies, and the (path, reason) of each
    newer one that was skipped as partial or corrupted."""
    skipped = []
    for _, path in _steps(Path(root)):
        reason = verify_manifest(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "trainer.json").read_text(encoding="utf-8"))


def check_signature(meta: dict[str, Any], signature: dict[str, Any], path: Path) -> None:
    """Refuse to continue a checkpoint made with other settings, naming the first differences."""
    saved = meta.get("signature", {})
    if saved == signature:
        return
    diffs = []
    for part in ("method", "method_args", "train"):
        a, b = saved.get(part), signature.get(part)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{part}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{part}: {a!r} -> {b!r}")
    raise ConfigError(f"checkpoint {path} was made with other settings ({'; '.join(diffs[:4])}); resume with the "
                      f"same settings, or delete {path.parent} to start over")


def restore(path: str | Path, *, model: Any, optimizer: Any, scheduler: Any, data: Any,
            ref_key: str | None) -> dict[str, Any]:
    """Load checkpoint ``path`` into the unwrapped ``model``, ``optimizer``, ``scheduler`` and ``data``
    (reference log-probs); return its trainer metadata (the loop restores ``meta["rng"]`` with
    :func:`set_rng_state` just before its next step, after every setup that draws random numbers)."""
    from safetensors.torch import load_model

    path = Path(path)
    meta = read_meta(path)
    if meta.get("ref_key") != ref_key:
        raise ConfigError(f"checkpoint {path} was made for other forget data or another model (reference "
                          f"log-prob key differs); delete {path.parent} to start over")
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ConfigError(f"checkpoint {path} holds other weights than this model (e.g. missing {missing[:2]}, "
                          f"unexpected {unexpected[:2]}); check the model and LoRA settings")
    state = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    data.ref_logp.update(state["ref_logp"])
    return meta


def roll_back(root: str | Path | None, model: Any, why: str, details: dict[str, Any]) -> TrainingDiverged:
    """After a guard trips: load the newest verified checkpoint's weights back into ``model``, write
    ``divergence.json`` (why, the step, the values, the checkpoint) under ``root``, and return the
    error to raise. Without checkpoints nothing is rolled back and nothing is saved."""
    from safetensors.torch import load_model

    from .storage import write_text_atomic

    good, _ = latest_checkpoint(root) if root else (None, [])
    if good is not None:
        load_model(model, str(good / "model.safetensors"), strict=False)
        where = f"the model was rolled back to the weights of {good}"
    else:
        where = "no checkpoint to roll back to (set train.checkpoint_every to keep one)"
    if root:
        doc = {"why": why, **details, "rolled_back_to": str(good) if good else None}
        write_text_atomic(Path(root) / "divergence.json", json.dumps(doc, indent=2, default=str))
    return TrainingDiverged(f"{why}; {where}; nothing was saved as the output model. Start again with a lower "
                            "train.lr, a higher retain weight, or a gentler method (e.g. npo)")


def warn_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, reason in skipped:
        warnings.warn(f"skipped checkpoint {path}: {reason}", stacklevel=3)


__all__ = ["check_signature", "latest_checkpoint", "read_meta", "ref_cache_key", "restore", "rng_state", "roll_back",
           "run_signature", "save_checkpoint", "set_rng_state", "step_dir", "warn_skipped"]
