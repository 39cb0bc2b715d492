"""Knowledge-update records (CounterFact / zsRE style) for ``unlearnkit update`` (F-Learning).

One record = one fact to change: a ``prompt`` whose old answer ``target_true`` must become
``target_new``, optional ``paraphrase_prompts`` (generality) and ``locality_prompts`` (unrelated
prompts whose answers must not change: strings, or ``{"prompt", "answer"}`` objects). Three layouts
are read, each a json / jsonl / csv file or a ``datasets`` directory:

* flat: ``{"prompt", "subject"?, "target_true", "target_new", "paraphrase_prompts"?, "locality_prompts"?}``;
* CounterFact (ROME): ``requested_rewrite.{prompt, subject, target_true.str, target_new.str}`` with
  ``{}`` in the prompt standing for the subject, ``paraphrase_prompts``, ``neighborhood_prompts``;
* zsRE (MEND / EasyEdit): ``src``, ``answers`` (old), ``alt`` (new), ``rephrase``, ``loc``, ``loc_ans``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .records import Example, read_rows


@dataclass(frozen=True)
class Edit:
    """One knowledge update: ``prompt`` -> ``target_true`` (old) must become ``target_new``."""

    prompt: str
    target_true: str
    target_new: str
    subject: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    locality: tuple[tuple[str, str | None], ...] = ()  # (prompt, answer or None: the model's own)


def _text(value: Any, where: str, key: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("str"), str):  # CounterFact {"str": ..., "id": ...}
        value = value["str"]
    if isinstance(value, list) and value and isinstance(value[0], str):  # zsRE answers: a list
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in items):
        raise DataError(f"{where}: '{key}' must be a string or a list of non-empty strings, got {value!r}")
    return tuple(s.strip() for s in items)


def _locality(value: Any, answers: Any, where: str) -> tuple[tuple[str, str | None], ...]:
    """Locality prompts as (prompt, answer-or-None) pairs from strings, objects or zsRE loc/loc_ans."""
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, (list, tuple)):
        raise DataError(f"{where}: 'locality_prompts' must be a list, got {type(value).__name__}")
    answer_list = _strings(answers, where, "loc_ans") if answers is not None else ()
    out = []
    for j, item in enumerate(items):
        if isinstance(item, dict):
            out.append((_text(item.get("prompt"), where, f"locality_prompts[{j}].prompt"),
                        _text(item["answer"], where, f"locality_prompts[{j}].answer") if item.get("answer") else None))
        else:
            out.append((_text(item, where, f"locality_prompts[{j}]"), answer_list[j] if j < len(answer_list) else None))
    return tuple(out)


def edit_from_row(row: Any, i: int, path: Any = "edits") -> Edit:
    """One :class:`Edit` from a row of any of the three layouts, or a DataError naming the row."""
    where = f"{path} row {i}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with prompt / target_true / target_new, got {type(row).__name__}")
    if isinstance(row.get("requested_rewrite"), dict):  # CounterFact
        rw = row["requested_rewrite"]
        subject = _text(rw.get("subject"), where, "requested_rewrite.subject")
        prompt = _text(rw.get("prompt"), where, "requested_rewrite.prompt").replace("{}", subject)
        return Edit(prompt, _text(rw.get("target_true"), where, "target_true"),
                    _text(rw.get("target_new"), where, "target_new"), subject,
                    _strings(row.get("paraphrase_prompts"), where, "paraphrase_prompts"),
                    _locality(row.get("neighborhood_prompts"), None, where))
    if "src" in row and "alt" in row:  # zsRE
        return Edit(_text(row["src"], where, "src"), _text(row.get("answers"), where, "answers"),
                    _text(row["alt"], where, "alt"), row.get("subject"),
                    _strings(row.get("rephrase"), where, "rephrase"), _locality(row.get("loc"), row.get("loc_ans"), where))
    missing = [k for k in ("prompt", "target_true", "target_new") if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (have {', '.join(sorted(row)) or 'nothing'}); an edit "
                        "needs prompt, target_true (the old answer) and target_new, or the CounterFact / zsRE layout")
    prompt = _text(row["prompt"], where, "prompt")
    subject = row.get("subject") or None
    if subject is not None and "{}" in prompt:
        prompt = prompt.replace("{}", subject)
    return Edit(prompt, _text(row["target_true"], where, "target_true"), _text(row["target_new"], where, "target_new"),
                subject, _strings(row.get("paraphrase_prompts"), where, "paraphrase_prompts"),
                _locality(row.get("locality_prompts"), None, where))


def load_edits(path: str | Path) -> list[Edit]:
    """Read and validate knowledge-update records; an empty file or a bad row is a DataError."""
    rows = read_rows(path)
    edits = [edit_from_row(r, i, path) for i, r in enumerate(rows)]
    if not edits:
        raise DataError(f"{path} holds no edits; add records with prompt / target_true / target_new")
    for e in edits:
        if e.target_true == e.target_new:
            raise DataError(f"{path}: the edit of {e.prompt[:60]!r} has the same old and new answer "
                            f"({e.target_new!r}); nothing would change")
    return edits


def old_examples(edits: list[Edit]) -> list[Example]:
    """(prompt, old answer) records: what F-Learning's first stage learns and then subtracts."""
    return [Example(e.prompt, e.target_true) for e in edits]


def new_examples(edits: list[Edit]) -> list[Example]:
    """(prompt, new answer) records: what the update teaches."""
    return [Example(e.prompt, e.target_new) for e in edits]
