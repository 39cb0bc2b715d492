"""Durable outputs: atomic files, staged directories, sha256 manifests.

Every file unlearnkit writes either appears whole or not at all:

- a single file goes to a temporary sibling, is fsynced, then ``os.replace``-d into place
  (:func:`write_text_atomic`);
- a directory (a saved model, a checkpoint) is built in a hidden staging sibling, every file is
  fsynced, a ``manifest.json`` with the sha256 of each file is written last, and the staging
  directory is renamed into place (:func:`staged_dir`). A directory whose manifest is missing or
  does not match its files is incomplete or corrupted (:func:`verify_manifest`).

A kill at any moment leaves either the previous output or the new one, plus at most a hidden
``.NAME.partial-*`` directory that the next write of the same output removes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from .errors import UnlearnkitError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable on POSIX; a no-op where directories cannot be opened."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | flag)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temp file next to ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise UnlearnkitError(
                f"cannot write {path}: {exc.strerror or exc}; check that the directory is writable"
            ) from exc
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` except the manifest, as sorted relative paths."""
    return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """fsync every file under ``directory``, then write ``manifest.json`` (relative path -> sha256)
    last, fsynced too; return the hashes."""
    d = Path(directory)
    hashes = {}
    for rel in _files(d):
        with open(d / rel, "rb+") as fh:
            os.fsync(fh.fileno())
        hashes[rel.as_posix()] = sha256_file(d / rel)
    doc = {"format": MANIFEST_FORMAT, "sha256": hashes}
    with open(d / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    return hashes


def refresh_manifest(directory: str | os.PathLike, names: list[str]) -> None:
    """After rewriting the files ``names`` of a finished directory in place, update their hashes in
    its manifest (atomically); a directory without a manifest is left without one."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["sha256"].update({name: sha256_file(d / name) for name in names})
    write_text_atomic(path, json.dumps(doc, indent=2))


def verify_manifest(directory: str | os.PathLike) -> str | None:
    """None when ``directory`` is complete (its manifest lists exactly its files, hashes equal);
    otherwise a short reason ("no manifest.json", "model.safetensors: sha256 mismatch", ...)."""
    d = Path(directory)
    try:
        doc = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        hashes = doc["sha256"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the write did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    present = {p.as_posix() for p in _files(d)}
    missing = sorted(set(hashes) - present)
    if missing:
        return f"missing file {missing[0]}"
    extra = sorted(present - set(hashes))
    if extra:
        return f"unlisted file {extra[0]}"
    for rel, digest in sorted(hashes.items()):
        if sha256_file(d / rel) != digest:
            return f"{rel}: sha256 mismatch (corrupted)"
    return None


def _remove_stale_stages(out: Path) -> None:
    """Remove hidden ``.NAME.partial-*`` / ``.NAME.old-*`` siblings that a killed write left behind."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, manifest: bool = True) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``out``; on a clean exit write its manifest (every
    file fsynced) and rename it to ``out``, replacing an existing ``out``; on an error remove it.

    The old ``out`` is first renamed aside and deleted only after the new one is in place, so a kill
    between the two renames leaves the previous output recoverable as ``.NAME.old-*``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        if manifest:
            write_manifest(stage)
        fsync_dir(stage)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


__all__ = ["MANIFEST", "fsync_dir", "refresh_manifest", "sha256_file", "staged_dir", "verify_manifest", "write_manifest",
           "write_text_atomic"]
