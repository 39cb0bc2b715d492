"""Load and validate QA / text records from .json, .jsonl, .csv, .parquet and ``datasets`` dirs.

Every problem is a :class:`DataError` naming the file, the row and the key, and saying how to fix
it. TOFU's own layout (``question``/``answer`` plus ``paraphrased_answer``, ``perturbed_answer``,
``paraphrased_question``) is understood directly, so the real TOFU files load unchanged.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError

SUPPORTED = ".json, .jsonl, .csv, .parquet, or a `datasets` save_to_disk directory"


@dataclass(frozen=True)
class Example:
    """One record. For plain-text (sequence) records ``question`` is None and ``answer`` is the text."""

    question: str | None
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Keys:
    """Column names of a record file (TOFU's by default). ``text`` set => plain-text records."""

    question: str = "question"
    answer: str = "answer"
    paraphrased_answer: str = "paraphrased_answer"
    perturbed_answer: str = "perturbed_answer"
    paraphrased_question: str = "paraphrased_question"
    text: str | None = None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read raw rows (dicts) from any supported file type; errors name the file and line."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}' does not exist; expected {SUPPORTED}")
    if p.is_dir():
        return _read_datasets_dir(p)
    suffix = p.suffix.lower()
    try:
        if suffix in (".json", ".jsonl"):
            return _read_json(p)
        if suffix == ".csv":
            return _read_csv(p)
    except UnicodeDecodeError as exc:
        raise DataError(f"'{p}' is not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") from exc
    if suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(p).to_dict("records")
        except Exception as exc:  # pyarrow raises several types
            raise DataError(f"'{p}' is not a readable parquet file: {exc}") from exc
    raise DataError(f"'{p}': unsupported file type '{suffix}'; use {SUPPORTED}")


def _read_csv(p: Path) -> list[dict[str, Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers are fine (the default cap is 128 KiB)
    with p.open(newline="", encoding="utf-8-sig") as fh:
        try:
            return [dict(r) for r in csv.DictReader(fh)]
        except csv.Error as exc:
            raise DataError(f"'{p}' is not a readable CSV file: {exc}; check its quoting and remove NUL bytes") from exc


def _read_json(p: Path) -> list[dict[str, Any]]:
    text = p.read_text(encoding="utf-8-sig")  # a leading byte-order mark is dropped
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"'{p}' is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
        except RecursionError as exc:
            raise DataError(f"'{p}' is nested too deeply to be a list of records") from exc
        return list(rows)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except RecursionError as exc:
            raise DataError(f"'{p}' line {lineno} is nested too deeply to be a record") from exc
        except json.JSONDecodeError as exc:
            raise DataError(
                f"'{p}' line {lineno} is not valid JSON ({exc.msg}); expected one JSON object "
                "per line (JSON Lines) or a single JSON array"
            ) from exc
    return rows


def _read_datasets_dir(p: Path) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"'{p}' is a directory but not a `datasets` save_to_disk folder: {exc}") from exc
    if hasattr(ds, "keys"):  # a DatasetDict: take its only split, or 'train'
        splits = list(ds.keys())
        if "train" not in splits and len(splits) != 1:
            raise DataError(f"'{p}' has splits {splits}; point to one split's folder")
        ds = ds["train" if "train" in splits else splits[0]]
    return [dict(r) for r in ds]


def load_examples(
    path: str | Path, *, keys: Keys | None = None, allow_empty: bool = False
) -> list[Example]:
    """Load and validate records into :class:`Example`s (QA, or plain text when ``keys.text``)."""
    keys = keys or Keys()
    rows = read_rows(path)
    if not rows and not allow_empty:
        raise DataError(f"'{path}' contains no records; an empty forget/retain set cannot be used")
    return [_to_example(row, i, path, keys) for i, row in enumerate(rows, 1)]  # 1-based rows


def _field(row: dict, key: str, i: int, path: Any, *, required: bool) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # missing or NaN (csv)
        if required:
            raise DataError(
                f"'{path}' row {i}: missing key '{key}' (row has keys {sorted(row)}); "
                f"rename the column or set the key name in the data config"
            )
        return None
    if not isinstance(value, str):
        raise DataError(f"'{path}' row {i}: '{key}' must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" from a JSON escape
        raise DataError(f"'{path}' row {i}: '{key}' holds an invalid character at position {exc.start} "
                        "(a lone UTF-16 surrogate); fix the text") from exc
    if not required and not value.strip():  # an empty optional cell (csv) is a missing value
        return None
    if required and not value.strip():
        raise DataError(f"'{path}' row {i}: '{key}' is empty; remove the row or fill it in")
    return value


def _to_example(row: Any, i: int, path: Any, keys: Keys) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"'{path}' row {i}: expected a JSON object, got {type(row).__name__}")
    if keys.text is not None:
        return Example(None, _field(row, keys.text, i, path, required=True), extras=row)  # type: ignore[arg-type]
    perturbed = row.get(keys.perturbed_answer)
    if isinstance(perturbed, float) and perturbed != perturbed:  # NaN: a missing cell (csv/parquet)
        perturbed = None
    if isinstance(perturbed, str):
        perturbed = [perturbed] if perturbed.strip() else None
    is_seq = isinstance(perturbed, (list, tuple)) or type(perturbed).__name__ == "ndarray"
    if perturbed is not None and not (is_seq and all(isinstance(x, str) for x in perturbed)):
        raise DataError(f"'{path}' row {i}: '{keys.perturbed_answer}' must be a list of strings")
    return Example(
        question=_field(row, keys.question, i, path, required=True),
        answer=_field(row, keys.answer, i, path, required=True),  # type: ignore[arg-type]
        paraphrased_answer=_field(row, keys.paraphrased_answer, i, path, required=False),
        perturbed_answers=tuple(perturbed) if perturbed is not None else (),  # parquet: ndarray
        paraphrased_question=_field(row, keys.paraphrased_question, i, path, required=False),
        extras=row,  # other columns (e.g. sensitive spans, secrets) for metrics and methods that use them
    )


def examples_sha256(examples: Iterable[Example]) -> str:
    """A content hash of a record set (for model cards and run records; no raw text is stored)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.question, ex.answer], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
