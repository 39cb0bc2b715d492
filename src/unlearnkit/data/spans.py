"""Sensitive-span annotations: character spans on a text, regex annotators, and token masks.

SeUL (Wang et al. 2024, "Selective Forgetting: Advancing Machine Unlearning Techniques and
Evaluation in Language Models", arXiv 2402.05813; no official code) forgets and evaluates only
*sensitive spans* of a record. This module turns a record's annotations into spans and spans into
token masks; the SeUL metrics (``metrics/sensitive.py``) and the SeUL method reuse it.

Conventions:
* a span is a half-open character interval ``[start, end)`` on ONE text (for QA records the
  answer, for plain-text records the text);
* every function returns spans sorted and merged: overlapping or touching spans become one, so a
  span list is the canonical "set of sensitive characters";
* a token is sensitive when its character interval overlaps a span (one shared character is
  enough), so a span that starts mid-token marks the whole token.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError

Span = tuple[int, int]

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
           r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")

REGEX_PATTERNS: dict[str, re.Pattern[str]] = {
    # local@domain.tld (RFC 5322's common subset)
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # optional +country code, then 3-3-4 digits with optional ( ) / space / dot / dash separators
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}(?![\w])"
    ),
    # ISO 2023-01-31, 31/01/2023, 1.31.23, "January 5, 2023", "5 Jan 2023", "June 19"
    "date": re.compile(
        r"(?<!\d)(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2}))(?!\d)"
        rf"|\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b"
        rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}(?:,?\s+\d{{4}})?\b"
    ),
    # any run of ASCII digits (secret numbers, ids, years)
    "digits": re.compile(r"[0-9]+"),
}


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sort spans and merge overlapping or touching ones: [(5, 8), (0, 3), (3, 4)] -> [(0, 4), (5, 8)]."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_list(value: Any, what: str) -> list:
    """A JSON / parquet cell as a plain list (json text, numpy array, list or tuple), else DataError."""
    if isinstance(value, str):
        try:
            value = json.loads(value)  # csv cells hold JSON text, e.g. "[[0, 4]]"
        except json.JSONDecodeError:
            raise DataError(f"{what} must be a list of [start, end] pairs, got the text {value[:60]!r}") from None
    if hasattr(value, "tolist"):  # parquet: numpy arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{what} must be a list of [start, end] pairs, got {type(value).__name__}")
    return list(value)


def _offset_spans(text: str, offsets: Any) -> list[Span]:
    spans = []
    for k, pair in enumerate(_as_list(offsets, "sensitive span offsets")):
        pair = pair.tolist() if hasattr(pair, "tolist") else pair
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise DataError(f"span offsets[{k}] = {pair!r} must be a pair of ints [start, end) (character offsets)")
        start, end = int(pair[0]), int(pair[1])
        if not 0 <= start < end <= len(text):
            why = "start >= end (an empty span)" if start >= end else f"out of range for a text of {len(text)} characters"
            raise DataError(f"span offsets[{k}] = [{start}, {end}) is {why}; offsets are [start, end) character positions")
        spans.append((start, end))
    return spans


def _string_spans(text: str, strings: Any) -> list[Span]:
    items = [strings] if isinstance(strings, str) else strings
    items = items.tolist() if hasattr(items, "tolist") else items
    if not isinstance(items, (list, tuple)):
        raise DataError(f"sensitive strings must be a string or a list of strings, got {type(strings).__name__}")
    spans = []
    for k, s in enumerate(items):
        if not isinstance(s, str) or not s:
            raise DataError(f"sensitive strings[{k}] = {s!r} must be a non-empty string")
        start = text.find(s)
        if start < 0:
            raise DataError(f"sensitive string {s!r} does not occur in the text {text[:60]!r}; "
                            "strings must appear verbatim (case and spacing included)")
        while start >= 0:  # every occurrence, overlapping ones included (they merge)
            spans.append((start, start + len(s)))
            start = text.find(s, start + 1)
    return spans


def char_spans(text: str, *, offsets: Any = None, strings: Any = None) -> list[Span]:
    """Character spans of ``text`` from explicit offsets and/or sensitive strings; sorted, merged.

    ``offsets``: [start, end) pairs, e.g. ``[[0, 4], [10, 15]]`` (a JSON string of that is accepted,
    as csv cells hold text). ``strings``: one string or a list; every occurrence is a span. Both may
    be given (their union is returned); neither gives []. Bad annotations raise DataError.
    """
    if not isinstance(text, str):
        raise DataError(f"text must be a string, got {type(text).__name__}")
    spans: list[Span] = []
    if offsets is not None:
        spans += _offset_spans(text, offsets)
    if strings is not None:
        spans += _string_spans(text, strings)
    return merge_spans(spans)


def regex_spans(text: str, kinds: Sequence[str] = ("email", "phone", "date", "digits")) -> list[Span]:
    """Spans matched by the ``REGEX_PATTERNS`` of ``kinds`` (sorted, merged across kinds).

    A simple offline annotator for PII-like strings (DEPN-style phone numbers, emails, dates,
    digit secrets); SeUL's own annotators (model-probability or LLM based) are not reproduced here.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in REGEX_PATTERNS]
    if unknown:
        raise ValueError(f"unknown regex kind(s) {unknown}; choose from {sorted(REGEX_PATTERNS)}")
    return merge_spans((m.start(), m.end()) for k in kinds for m in REGEX_PATTERNS[k].finditer(text))


def _missing(value: Any) -> bool:
    """None, NaN (empty csv / parquet cell) or a blank string."""
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def spans_from_example(example: Any, *, key_offsets: str = "sensitive_spans", key_strings: str = "sensitive") -> list[Span]:
    """Spans on ``example.answer`` from its record annotations (``example.extras``).

    ``extras[key_offsets]``: [start, end) character offsets into the answer; ``extras[key_strings]``:
    sensitive strings of the answer. Missing / empty keys mean "no annotation" and give [].
    Errors name the key and the answer so the bad record can be found.
    """
    extras: Mapping[str, Any] = getattr(example, "extras", None) or {}
    offsets, strings = extras.get(key_offsets), extras.get(key_strings)
    try:
        return char_spans(
            example.answer,
            offsets=None if _missing(offsets) else offsets,
            strings=None if _missing(strings) else strings,
        )
    except DataError as err:
        raise DataError(f"record with answer {example.answer[:60]!r} (keys '{key_offsets}' / '{key_strings}'): {err}") from None


def token_mask(char_spans: Sequence[Span], offsets_mapping: Any) -> np.ndarray:
    """(T,) bool: token j is sensitive iff its characters [a_j, b_j) overlap a span [s, e).

    ``offsets_mapping`` is a fast tokenizer's ``return_offsets_mapping`` output for the same text,
    shape (T, 2); tokens with an empty interval (special tokens, (0, 0)) are never sensitive.
    """
    off = np.asarray(offsets_mapping, dtype=np.int64).reshape(-1, 2)  # (T, 2)
    mask = np.zeros(len(off), dtype=bool)  # (T,)
    for s, e in char_spans:
        mask |= (off[:, 0] < e) & (s < off[:, 1]) & (off[:, 0] < off[:, 1])  # overlap, non-empty token
    return mask


ONLINE_RULES = ("highest", "lowest")


def select_tokens(scores: Sequence[float], fraction: float, rule: str = "highest") -> np.ndarray:
    """(T,) bool: SeUL-style *online* span selection from per-token scores (e.g. log p(x_t | x_<t)).

    Keeps ``ceil(fraction * n)`` of the ``n`` scored tokens: the highest scores for ``rule="highest"``
    (the most memorised tokens), the lowest for ``"lowest"`` (the most surprising ones). NaN scores
    (tokens without a prediction) are never selected and do not count in ``n``; ties go to the
    earlier token. Which rule and fraction SeUL uses is not verified (no official code).
    Example: scores [0.1, 0.9, 0.5, 0.8], fraction 0.5, highest -> [F, T, F, T].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if rule not in ONLINE_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(ONLINE_RULES)}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)  # (T,)
    valid = np.flatnonzero(~np.isnan(s))  # indices that may be selected
    k = int(np.ceil(fraction * len(valid) - 1e-9))  # -1e-9: 0.2 * 10 must give 2, not 3
    key = -s[valid] if rule == "highest" else s[valid]
    order = valid[np.argsort(key, kind="stable")]  # stable: ties keep position order
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:k]] = True
    return mask


def token_runs(mask: Sequence[bool]) -> list[Span]:
    """Contiguous runs of selected tokens as half-open token-index spans (adjacent tokens merge):
    [F, T, T, F, T] -> [(1, 3), (4, 5)]."""
    m = np.asarray(mask, dtype=bool).reshape(-1)
    edges = np.diff(np.concatenate(([0], m.astype(np.int8), [0])))  # +1 at a run start, -1 after its end
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]
