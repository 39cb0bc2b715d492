"""Sensitive-span annotation of records: SeUL's annotation step as a reusable component.

SeUL (Wang et al. 2024, "Selective Forgetting", arXiv 2402.05813) forgets and evaluates only the
*sensitive spans* of a record. This module finds them, as character spans on each record's answer:

* ``records``: the record's own annotations (a ``sensitive_spans`` column of [start, end) offsets,
  or a ``sensitive`` column of strings), :func:`unlearnkit.data.spans.spans_from_example`;
* ``regex``: pattern annotators (email, phone, date, digits), :func:`unlearnkit.data.spans.regex_spans`;
* ``records+regex``: their union;
* ``online``: from the model's own token likelihoods - each answer token is scored by
  p(x_t | x_<t) under ``model`` and the top ``fraction`` of the answer (``rule="highest"``: the
  most memorised tokens; ``"lowest"``: the most surprising) is kept, adjacent tokens forming one
  span (:func:`unlearnkit.data.spans.select_tokens`). The paper's rule and fraction are not
  verified (no official code), hence the options.

Used by the ``seul`` method (``prepare``), and by ``unlearnkit annotate``, which writes the spans
into a ``sensitive_spans`` column so that ``unlearnkit eval`` reports S-MA / S-EL on them and the
same annotation can be reviewed, edited and reused.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.format import Encoded, PromptTemplate, _uses_chat, collate, encode, render_prompt
from .data.records import Example
from .data.spans import ONLINE_RULES, REGEX_PATTERNS, Span, merge_spans, regex_spans, select_tokens, spans_from_example
from .errors import ConfigError, DataError
from .logprobs import forward, token_logp

SOURCES = ("records", "regex", "online", "records+regex")


def check_settings(source: str, kinds: Sequence[str], fraction: float, rule: str) -> None:
    """ConfigErrors naming the setting, for the CLI and for the ``seul`` method's fields."""
    if source not in SOURCES:
        raise ConfigError(f"spans={source!r} is not allowed; choose one of {', '.join(SOURCES)}")
    unknown = [k for k in kinds if k not in REGEX_PATTERNS]
    if unknown or ("regex" in source and not kinds):
        raise ConfigError(f"regex_kinds={','.join(kinds)!r}: give a comma-separated list of "
                          f"{', '.join(REGEX_PATTERNS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"online_fraction must be in (0, 1], got {fraction}")
    if rule not in ONLINE_RULES:
        raise ConfigError(f"online_rule={rule!r} is not allowed; choose one of {', '.join(ONLINE_RULES)}")


@torch.no_grad()
def answer_token_logp(model: Any, encs: Sequence[Encoded], pad_id: int, batch_size: int = 16) -> list[np.ndarray]:
    """Per-example (T_i,) log p(x_t | x_<t) of the answer tokens without EOS; NaN for an answer
    token at position 0 (nothing predicts it)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(encs), batch_size):
        chunk = list(encs[start : start + batch_size])
        b = {k: t.to(device) for k, t in collate(chunk, pad_id).items()}
        logp, _ = token_logp(forward(model, b).logits, b["labels"])  # (B, L-1): [:, t-1] scores token t
        for row, e in zip(logp.float().cpu().numpy(), chunk):
            n, T = e.prompt_len, len(e.input_ids) - e.prompt_len - 1
            scores = np.full(max(T, 0), np.nan)
            lo = 1 if n == 0 else 0  # a first token of the sequence has no prediction
            if T > lo:
                scores[lo:] = row[n - 1 + lo : n - 1 + T]
            out.append(scores)
    model.train(was_training)
    return out


def answer_token_offsets(enc: Encoded, example: Example, tokenizer: Any, template: PromptTemplate) -> list[Span]:
    """Character [start, end) on ``example.answer`` of each answer token (no EOS) of ``enc``, from
    the fast tokenizer's offsets on prompt + answer tokenized exactly as ``encode`` does."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("online spans need a fast tokenizer (return_offsets_mapping); load it with use_fast=True")
    prompt = render_prompt(example.question, tokenizer, template)
    out = tokenizer(prompt + example.answer, add_special_tokens=not _uses_chat(tokenizer, template),
                    return_offsets_mapping=True)
    n, T = enc.prompt_len, len(enc.input_ids) - enc.prompt_len - 1
    if out["input_ids"][: n + T] != enc.input_ids[: n + T]:
        raise DataError("re-tokenizing a record with offsets gave different ids than encode(); "
                        "the tokenizer is not deterministic for this text")
    shift = len(prompt)
    return [(max(0, s - shift), max(0, e - shift)) for s, e in out["offset_mapping"][n : n + T]]


def online_spans(model: Any, tokenizer: Any, examples: Sequence[Example], *, template: PromptTemplate | None = None,
                 fraction: float = 0.2, rule: str = "highest", max_length: int = 512,
                 encoded: Sequence[Encoded] | None = None, batch_size: int = 16) -> list[list[Span]]:
    """Answer character spans of the top ``fraction`` tokens of each answer by ``model``'s p(x_t|x_<t)."""
    template = template or PromptTemplate()
    encs = list(encoded) if encoded is not None else [
        encode(e.question, e.answer, tokenizer, template=template, max_length=max_length) for e in examples]
    scores = answer_token_logp(model, encs, tokenizer.pad_token_id, batch_size)
    out = []
    for enc, ex, s in zip(encs, examples, scores):
        offsets = answer_token_offsets(enc, ex, tokenizer, template)
        chosen = select_tokens(np.exp(s), fraction, rule)  # (T,) bool
        out.append(merge_spans(offsets[j] for j in np.flatnonzero(chosen) if offsets[j][1] > offsets[j][0]))
    return out


def annotate(examples: Sequence[Example], *, source: str = "records+regex",
             kinds: Sequence[str] = ("email", "phone", "date", "digits"), model: Any = None, tokenizer: Any = None,
             template: PromptTemplate | None = None, fraction: float = 0.2, rule: str = "highest",
             max_length: int = 512, encoded: Sequence[Encoded] | None = None) -> list[list[Span]]:
    """Sensitive character spans on each example's answer (sorted, merged), from ``source``."""
    check_settings(source, kinds, fraction, rule)
    if source == "online":
        if model is None or tokenizer is None:
            raise ConfigError("spans=online scores tokens with a model: pass --model DIR (model and tokenizer)")
        return online_spans(model, tokenizer, examples, template=template, fraction=fraction, rule=rule,
                            max_length=max_length, encoded=encoded)
    out = []
    for ex in examples:
        spans = spans_from_example(ex) if source in ("records", "records+regex") else []
        if source in ("regex", "records+regex"):
            spans = merge_spans(spans + regex_spans(ex.answer, kinds))
        out.append(spans)
    return out


def annotate_file(records: str, out: str, *, source: str = "regex", kinds: Sequence[str] = ("email", "phone",
                  "date", "digits"), model_dir: str | None = None, fraction: float = 0.2, rule: str = "highest",
                  template: PromptTemplate | None = None, max_length: int = 512) -> dict[str, int]:
    """Read ``records``, write them to ``out`` (JSON Lines) with a ``sensitive_spans`` column of
    [start, end) answer offsets; return counts. Plain-text records (a ``text`` column) are not
    supported here (their spans would be on the text, not an answer)."""
    from .data.records import load_examples, read_rows
    from .storage import write_text_atomic

    check_settings(source, kinds, fraction, rule)  # before loading a model
    rows, examples = read_rows(records), load_examples(records)
    model = tok = None
    if source == "online":
        from .api import _load
        from .config import ModelConfig

        model, tok = _load(ModelConfig(path=model_dir or ""))
    spans = annotate(examples, source=source, kinds=kinds, model=model, tokenizer=tok, template=template,
                     fraction=fraction, rule=rule, max_length=max_length)
    lines = []
    for row, sp in zip(rows, spans):
        lines.append(_json_line({**row, "sensitive_spans": [list(s) for s in sp]}))
    write_text_atomic(Path(out), "".join(lines))
    return {"records": len(rows), "annotated": sum(bool(s) for s in spans), "spans": sum(len(s) for s in spans)}


def _json_line(row: dict[str, Any]) -> str:
    import json

    from .report import to_jsonable

    return json.dumps(to_jsonable(row), ensure_ascii=False) + "\n"
