"""Deletion-request records: what was done to a model for each request, as a verifiable hash chain.

Every ``unlearnkit unlearn`` writes ``record.json`` into the model it saves: a salted sha256 of each
forget item (never the text), the sha256 of the input and output weight files, the method and the
whole config, library versions, seeds, the forget / retain answer probabilities before and after,
audit results when given, and the sha256 of the previous record when requests are processed in
sequence. ``unlearnkit requests process QUEUE/`` applies the request files of a folder one after
another (sequential unlearning, Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks
in Language Models", ACL) and keeps the chain in ``OUT/chain.json``; ``unlearnkit requests verify
OUT/`` re-hashes it.

**This records procedure; it is not a proof of erasure.** A record shows which data were submitted,
which model went in and came out, and what was measured. Whether the information can still be
extracted is an empirical question: run ``unlearnkit audit`` on the output, and read the metrics.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .config import UnlearnConfig
from .data.records import Example
from .errors import ConfigError, DataError
from .storage import sha256_file, write_text_atomic

RECORD = "record.json"
RECORD_FORMAT = 1
CHAIN = "chain.json"
DISCLAIMER = ("This record describes the procedure that was run on the model (data hashes, weights hashes, method, "
              "config, measurements). It is not a proof that the information was erased: check with an audit.")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def item_sha256(example: Example, salt: str) -> str:
    """Salted sha256 of one record: ``sha256(salt + canonical JSON [question, answer])``. With the salt
    (kept in the record) a holder of the text can check it was in the request; the hash alone reveals
    nothing, and the salt stops one record's hashes being matched against another's."""
    canonical = json.dumps([example.question, example.answer], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((salt + canonical).encode("utf-8")).hexdigest()


def weights_sha256(model_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of each weight file of a model directory (shards and their index included)."""
    d = Path(model_dir)
    names = sorted(p.name for p in d.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in WEIGHT_INDEXES))
    if not names:
        raise DataError(f"'{d}' holds no weight files (*.safetensors / *.bin) to hash")
    return {name: sha256_file(d / name) for name in names}


def record_sha256(path: str | os.PathLike) -> str:
    """The hash that chains records: sha256 of the record file's bytes."""
    return sha256_file(path)


def build_record(
    *, forget: Sequence[Example], retain: Sequence[Example], input_dir: str | os.PathLike, method: str,
    method_args: dict[str, Any], config: dict[str, Any], seed: int, metrics: dict[str, Any],
    previous: str | None = None, request_id: str | None = None, audit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one unlearn run, without the output weights (added by :func:`finish_record` once
    they are written)."""
    from . import __version__
    from .data.records import examples_sha256
    from .report import git_sha
    from .runtime import environment

    salt = secrets.token_hex(16)
    env = environment()
    return {
        "format": RECORD_FORMAT,
        "kind": "unlearnkit deletion record",
        "disclaimer": DISCLAIMER,
        "request_id": request_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "forget_items": {"n": len(forget), "salt": salt, "sha256": [item_sha256(ex, salt) for ex in forget]},
        "retain_set_sha256": examples_sha256(retain) if retain else None,
        "input_model": {"path": str(input_dir), "weights_sha256": weights_sha256(input_dir)},
        "output_model": None,
        "method": method,
        "method_args": method_args,
        "config": config,
        "seeds": {"train": seed},
        "metrics": metrics,
        "audit": audit,
        "previous_record_sha256": previous,
        "software": {"unlearnkit": __version__, "git": git_sha(), "python": env["python"], **env["packages"]},
        "environment": {k: env[k] for k in ("platform", "machine", "torch_threads", "gpu", "deterministic")},
    }


def finish_record(record: dict[str, Any], stage: Path, out: Path) -> None:
    """Write ``record`` into the staged output model directory with the output weights' hashes."""
    done = {**record, "output_model": {"path": str(out), "weights_sha256": weights_sha256(stage)}}
    (stage / RECORD).write_text(json.dumps(done, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------- the queue
@dataclass
class RequestsConfig:
    """``unlearnkit requests process``: the unlearn settings applied to every request of a queue."""

    queue: str = ""  # a folder of request files (json / jsonl / csv / parquet records), taken in name order
    out: str = ""  # the chain folder: models/, records/, chain.json
    keep_models: str = "all"  # all | last (intermediate models deleted; their records and hashes stay)
    audit: list[str] = field(default_factory=list)  # attacks run on each output (vs its input); [] = none
    # model.path = the model the first request applies to; data.retain, method, train: for every request
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)


REQUEST_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def request_files(queue: str | os.PathLike) -> list[Path]:
    q = Path(queue)
    if not q.is_dir():
        raise DataError(f"request queue '{q}' is not a folder; pass a folder of request files (.json/.jsonl/.csv)")
    files = sorted(p for p in q.iterdir() if p.is_file() and p.suffix in REQUEST_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"request queue '{q}' has no request files (*.json, *.jsonl, *.csv, *.parquet)")
    return files


def read_chain(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / CHAIN
    if not path.is_file():
        return {"format": RECORD_FORMAT, "disclaimer": DISCLAIMER, "base_model": None, "entries": []}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["entries"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a readable request chain ({exc}); restore it from a backup") from exc
    return doc


def process_queue(cfg: RequestsConfig, *, progress: bool = True) -> dict[str, Any]:
    """Apply each not-yet-processed request of ``cfg.queue`` in name order, each to the model the
    previous one produced; write each model, its record (also under ``records/``) and ``chain.json``
    (rewritten atomically after every request, so a crash loses at most the request in progress)."""
    from . import api
    from .data.records import load_examples

    if cfg.keep_models not in ("all", "last"):
        raise ConfigError(f"keep_models={cfg.keep_models!r}; choose all or last")
    if not cfg.out:
        raise ConfigError("out is not set; pass --out FOLDER for the chain (models, records, chain.json)")
    out = Path(cfg.out)
    files = request_files(cfg.queue)
    for f in files:  # fail on a bad request before any model is changed
        load_examples(f, keys=cfg.unlearn.data.keys)
    chain = read_chain(out)
    given = cfg.unlearn.model.path
    if chain["base_model"] and given and Path(given).resolve() != Path(chain["base_model"]):
        raise ConfigError(f"the chain in '{out}' was started from the model '{chain['base_model']}', not '{given}'; "
                          "new requests continue from its last output: drop --model, or choose another --out")
    base = chain["base_model"] or given
    if not base:
        raise ConfigError("model.path is not set; pass --model DIR (the model the first request applies to)")
    chain["base_model"] = str(Path(base).resolve())
    done = {e["request_id"]: e for e in chain["entries"]}
    for f in files:
        rid = f.name  # unique within the folder
        if rid in done:
            if done[rid]["request_file_sha256"] != sha256_file(f):
                raise DataError(f"request '{rid}' was already processed from a different file ({f} changed); "
                                "name a new request with a new file instead of editing a processed one")
            continue
        prev = chain["entries"][-1] if chain["entries"] else None
        n = len(chain["entries"]) + 1
        model_rel, record_rel = f"models/{n:03d}", f"records/{n:03d}.json"  # relative to the chain folder
        start = str(out / prev["model_dir"]) if prev else chain["base_model"]
        step = replace(cfg.unlearn, model=replace(cfg.unlearn.model, path=start),
                       data=replace(cfg.unlearn.data, forget=str(f)), out=str(out / model_rel))
        if progress:
            print(f"request {n}: {rid} -> {out / model_rel}", flush=True)
        api.unlearn(step, request_id=rid, previous_record=prev["record_sha256"] if prev else None)
        if cfg.audit:
            _audit_into_record(cfg, out, n, out / model_rel, start, f)
        (out / "records").mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / record_rel, (out / model_rel / RECORD).read_text(encoding="utf-8"))
        chain["entries"].append({"request_id": rid, "request_file": str(f.resolve()), "request_file_sha256": sha256_file(f),
                                 "model_dir": model_rel, "record": record_rel,
                                 "record_sha256": record_sha256(out / record_rel)})
        write_text_atomic(out / CHAIN, json.dumps(chain, indent=2))
        if cfg.keep_models == "last" and prev and (out / prev["model_dir"]).is_dir():
            shutil.rmtree(out / prev["model_dir"])
    return chain


def _audit_into_record(cfg: RequestsConfig, out: Path, n: int, model_dir: Path, start: str, request: Path) -> None:
    """Run ``cfg.audit`` on a request's output (the input model as the reference), write the audit to
    ``audits/NNN.json`` and its summary + sha256 into the model's record (manifest refreshed)."""
    from .audit import AuditConfig, run_audit
    from .storage import refresh_manifest

    audit_path = out / "audits" / f"{n:03d}.json"
    acfg = AuditConfig(reference=start, forget=str(request), retain=cfg.unlearn.data.retain or "",
                       attacks=list(cfg.audit), progress=False, out=str(audit_path), seed=cfg.unlearn.train.seed)
    acfg.model.path = str(model_dir)
    doc = run_audit(acfg)
    rec = json.loads((model_dir / RECORD).read_text(encoding="utf-8"))
    rec["audit"] = {"file": audit_path.relative_to(out).as_posix(), "sha256": sha256_file(audit_path),
                    "max_recovery_ratio": doc["max_recovery_ratio"], "skipped": sorted(doc["skipped"]),
                    "recovery_ratio": {name: a["unlearned"]["recovery_ratio"] for name, a in doc["attacks"].items()}}
    write_text_atomic(model_dir / RECORD, json.dumps(rec, indent=2, ensure_ascii=False, default=str) + "\n")
    refresh_manifest(model_dir, [RECORD])


# --------------------------------------------------------------------------------------- verifying
@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, ok, detail))


def _load_record(path: Path, v: Verification, label: str) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        v.add(f"{label}: record readable", False, f"{path}: {exc}")
        return None


def verify_chain(out: str | os.PathLike) -> Verification:
    """Re-hash a request chain: every record file matches its hash in ``chain.json``, links to the
    previous record, starts from the weights the previous request produced, and every model still
    present has the output weights its record names. Also checks each record inside a model folder
    equals its copy under ``records/``."""
    out = Path(out)
    if not (out / CHAIN).is_file():
        raise DataError(f"'{out}' holds no {CHAIN}; pass the --out folder of `unlearnkit requests process`")
    chain = read_chain(out)
    v = Verification()
    base = Path(chain.get("base_model") or "")
    prev_hash, prev_out = None, weights_sha256(base) if chain.get("base_model") and base.is_dir() else None
    if not chain["entries"]:
        v.add("chain has entries", False, "chain.json lists no processed request")
    for i, entry in enumerate(chain["entries"], 1):
        label = f"{i:03d} {entry['request_id']}"
        path = out / entry["record"]
        if not path.is_file():
            v.add(f"{label}: record present", False, f"missing {path}")
            prev_hash, prev_out = entry["record_sha256"], None
            continue
        actual = record_sha256(path)
        v.add(f"{label}: record hash", actual == entry["record_sha256"],
              "" if actual == entry["record_sha256"] else f"{path} was changed (sha256 {actual[:12]}..., chain says "
              f"{entry['record_sha256'][:12]}...)")
        rec = _load_record(path, v, label)
        if rec is None:
            continue
        v.add(f"{label}: links to the previous record", rec.get("previous_record_sha256") == prev_hash,
              f"record says {rec.get('previous_record_sha256')}, previous is {prev_hash}")
        weights_in = (rec.get("input_model") or {}).get("weights_sha256")
        if prev_out is not None:
            v.add(f"{label}: input = previous output", weights_in == prev_out,
                  "" if weights_in == prev_out else "the request was applied to other weights than the previous output")
        prev_out = (rec.get("output_model") or {}).get("weights_sha256")
        audit = rec.get("audit") or {}
        if audit.get("file"):
            audit_file = out / audit["file"]
            same = audit_file.is_file() and sha256_file(audit_file) == audit.get("sha256")
            v.add(f"{label}: audit file matches the record", same, "" if same else f"{audit_file} missing or changed")
        model_dir = out / entry["model_dir"]
        if model_dir.is_dir():
            now = weights_sha256(model_dir)
            v.add(f"{label}: model weights match the record", now == prev_out,
                  "" if now == prev_out else f"{model_dir} weights changed since the record was written")
            inside = model_dir / RECORD
            v.add(f"{label}: record in the model folder", inside.is_file() and record_sha256(inside) == actual,
                  "" if inside.is_file() and record_sha256(inside) == actual else f"{inside} missing or different")
        prev_hash = entry["record_sha256"]
    return v


__all__ = ["DISCLAIMER", "RequestsConfig", "Verification", "build_record", "finish_record", "item_sha256",
           "process_queue", "record_sha256", "request_files", "verify_chain", "weights_sha256"]
