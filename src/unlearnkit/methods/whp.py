"""Who's Harry Potter (WHP): finetune on "generic" next-token labels (Eldan & Russinovich 2023,
"Who's Harry Potter? Approximate Unlearning in LLMs", arXiv:2310.02238).

Algorithm (as summarised in the research notes, shared/research/methods_a.md §3; paper sections not checked):

1. *Reinforced model*: a copy of the baseline finetuned further on the forget (unlearn-target) text;
   it completes text "the Harry Potter way" even from weak cues.
2. *Anchored terms*: a dictionary of idiosyncratic terms -> generic translations ("Harry" -> "Jon")
   that the user supplies (the paper builds ~1,500 with GPT-4). Each forget example is translated.
3. *Generic logits*: ``v_generic = v_baseline - alpha * ReLU(v_reinforced - v_baseline)``, with
   ``v_reinforced`` from the reinforced model on the ORIGINAL text and ``v_baseline`` from the
   baseline (the model before unlearning) on the TRANSLATED text, at aligned positions. The label
   of each answer token is ``argmax v_generic``.
4. *Finetune* the baseline with plain cross-entropy on (original text -> generic labels).

Reference code: there is no official training code (the authors released the unlearned model
``microsoft/Llama2-7b-WhoIsHarryPotter``). The generic-logit formula, with ``alpha = 1`` by default,
is the one of the MUSE baselines' ``WHPModelForCausalLM`` (as in ``OPTML-Group/Unlearn-Simple``),
which applies it at inference time without translation.

Token alignment (not specified in the paper; our rule). Label j of the original answer is predicted
from the context "original text up to the end of token j-1". It is aligned with the translated
position whose context ends at the same place of the translated text: the end offset of token j-1
is mapped through the translation (text outside anchored terms is shifted, an anchor's start and
end map to its replacement's start and end) and must be the end offset of a translated token. So
the first token of an anchored term is trained towards the baseline's prediction after the same
(translated) context, e.g. "Jon" where the original has "Harry"; the other tokens of the term have
no aligned position (their context ends inside the term) and get label -100; the token after the
term is aligned with the token after its replacement. Where tokenization differs around an anchor
(a merge across its boundary), the affected labels cannot be aligned: they get -100 and a warning
counts them. Offsets come from the fast tokenizer (``return_offsets_mapping``); the question is
translated too (it is context, never supervised) and aligned by its common prefix / suffix with the
original rendered prompt.

Anchored-term substitution: whole words only (a term is not preceded or followed by a word
character), case-sensitive, longest term first where terms overlap, and consistent (a term always
gets the same generic). ``terms=""`` skips the translation: the labels then come from the
reinforced-logit step alone (v_baseline on the original text), one of the paper's ablations.

Deviations / toolkit choices: the reinforcement budget (``reinforce_epochs``, ``reinforce_lr``)
and alpha are not given in our notes of the paper (UNVERIFIED) and are options with stated
defaults; the paper processes fixed-length blocks of book text, here each forget example
(question + answer) is one block and only its answer tokens are supervised; the optional retain
term (``retain_loss``, default "none" as in the paper, which has none) is the shared helper.
``prepare`` holds a second copy of the model (the reinforced one) while it trains it and computes
the labels (two forward passes per example), then frees it before the unlearning run.
"""
from __future__ import annotations

import copy
import csv
import gc
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.format import IGNORE, Encoded, PromptTemplate, _uses_chat, collate, render_prompt
from ..errors import ConfigError, DataError
from ..logprobs import forward
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, nll, retain_term


def generic_logits(v_base: Tensor, v_reinforced: Tensor, alpha: float) -> Tensor:
    """WHP generic prediction: ``v_base - alpha * relu(v_reinforced - v_base)``. (..., V) both -> (..., V).

    Only logits that the reinforcement *raised* are pushed down (by alpha times the rise); the
    generic label is the argmax of the result.
    """
    return v_base - alpha * torch.relu(v_reinforced - v_base)


# ----------------------------------------------------------------------------- anchored terms
def _add_term(terms: dict[str, str], term: Any, generic: Any, where: str) -> None:
    if not isinstance(term, str) or not isinstance(generic, str):
        raise DataError(f"{where}: term and generic must be strings, got {term!r} -> {generic!r}")
    term, generic = term.strip(), generic.strip()
    if not term or not generic:
        raise DataError(f"{where}: empty term or generic ({term!r} -> {generic!r}); every anchored term "
                        "needs a non-empty generic translation")
    if terms.get(term, generic) != generic:
        raise DataError(f"{where}: term {term!r} is given two generics ({terms[term]!r} and {generic!r}); "
                        "a term must always be translated the same way - keep one")
    terms[term] = generic


class _Object(list):
    """A JSON object as its (key, value) pairs, so duplicate keys stay visible (json keeps the last)."""


def _terms_from_json(text: str, path: str) -> dict[str, str]:
    try:
        obj = json.loads(text, object_pairs_hook=_Object)
    except json.JSONDecodeError as err:
        raise DataError(f"terms file {path} is not valid JSON ({err}); give a JSON object "
                        '{"term": "generic", ...} or a JSON list of {"term": ..., "generic": ...} '
                        "(a CSV file must end in .csv)") from None
    terms: dict[str, str] = {}
    if isinstance(obj, _Object):
        for term, generic in obj:
            _add_term(terms, term, generic, f"terms file {path}")
    elif isinstance(obj, list) and all(isinstance(x, _Object) for x in obj):
        for i, item in enumerate(obj):
            keys = sorted(k for k, _ in item)
            if keys != ["generic", "term"]:
                raise DataError(f"terms file {path}, item {i}: expected the keys 'term' and 'generic', got {keys}")
            d = dict(item)
            _add_term(terms, d["term"], d["generic"], f"terms file {path}, item {i}")
    else:
        raise DataError(f"terms file {path}: expected a JSON object {{\"term\": \"generic\"}} or a JSON list of "
                        '{"term": ..., "generic": ...} objects')
    return terms


def _terms_from_csv(text: str, path: str) -> dict[str, str]:
    terms: dict[str, str] = {}
    rows = [(i, r) for i, r in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][1]] == ["term", "generic"]:
        rows = rows[1:]  # optional header
    for line, row in rows:
        if len(row) != 2:
            raise DataError(f"terms file {path}, line {line}: expected 2 columns (term,generic), got {len(row)}")
        _add_term(terms, row[0], row[1], f"terms file {path}, line {line}")
    return terms


def _check_terms_path(value: str) -> None:
    if value and not Path(value).is_file():
        raise ConfigError(f"method.terms={value!r} does not exist; give a JSON or CSV file of anchored terms "
                          "(term -> generic translation), or terms='' for no translation")


def load_terms(path: str) -> dict[str, str]:
    """Anchored term -> generic translation from a JSON object, a JSON list of {"term", "generic"}
    objects, or a 2-column CSV (``.csv``; optional ``term,generic`` header). Raises DataError."""
    _check_terms_path(path or "(empty)")
    text = Path(path).read_text(encoding="utf-8")
    terms = _terms_from_csv(text, path) if path.lower().endswith(".csv") else _terms_from_json(text, path)
    if not terms:
        raise DataError(f"terms file {path} has no terms; use terms='' for no translation")
    return terms


def term_pattern(terms: dict[str, str]) -> re.Pattern[str]:
    """Whole-word, case-sensitive matcher of the terms, longest first (so "Harry Potter" beats "Harry")."""
    ordered = sorted(terms, key=lambda t: (-len(t), t))
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)")


@dataclass(frozen=True)
class Piece:
    """A span of the original text and its image in the translated text: identical text (``same``)
    or a replaced anchored term."""

    o_start: int
    o_end: int
    t_start: int
    t_end: int
    same: bool


def translate(text: str, terms: dict[str, str], pattern: re.Pattern[str] | None = None) -> tuple[str, list[Piece]]:
    """Replace every anchored term by its generic; return the text and the pieces covering it."""
    if not terms:
        return text, [Piece(0, len(text), 0, len(text), True)]
    pattern = pattern or term_pattern(terms)
    out: list[str] = []
    pieces: list[Piece] = []
    o = t = 0  # read position in the original, write position in the translation
    for m in pattern.finditer(text):
        gap, generic = text[o : m.start()], terms[m.group()]
        pieces.append(Piece(o, m.start(), t, t + len(gap), True))
        t += len(gap)
        pieces.append(Piece(m.start(), m.end(), t, t + len(generic), False))
        out += [gap, generic]
        o, t = m.end(), t + len(generic)
    pieces.append(Piece(o, len(text), t, t + len(text) - o, True))
    return "".join(out) + text[o:], pieces


# ----------------------------------------------------------------------------- alignment
def prompt_pieces(orig: str, trans: str) -> list[Piece]:
    """Pieces of a rendered prompt and its translation: common prefix, changed middle, common suffix."""
    lo, lt = len(orig), len(trans)
    p = 0
    while p < min(lo, lt) and orig[p] == trans[p]:
        p += 1
    s = 0
    while s < min(lo, lt) - p and orig[lo - 1 - s] == trans[lt - 1 - s]:
        s += 1
    pieces = [Piece(0, p, 0, p, True)]
    if lo - s > p or lt - s > p:
        pieces.append(Piece(p, lo - s, p, lt - s, False))
    return pieces + [Piece(lo - s, lo, lt - s, lt, True)]


def map_boundary(b: int, pieces: list[Piece]) -> int | None:
    """The translated offset of original text offset ``b``; None strictly inside a replaced term."""
    for pc in pieces:
        if pc.o_start <= b <= pc.o_end:
            if pc.same:
                return pc.t_start + b - pc.o_start
            if b in (pc.o_start, pc.o_end):
                return pc.t_start if b == pc.o_start else pc.t_end
            return None
    return None


def align_rows(o_ends: list[int], t_ends: list[int], pieces: list[Piece],
               label_pos: list[int]) -> tuple[list[tuple[int, int, int]], int]:
    """Match each supervised original position j with a translated context row.

    ``o_ends`` / ``t_ends``: end offset of every original / translated token. Label j is predicted
    from row j-1, whose context ends at ``o_ends[j-1]``; it is aligned with the translated row whose
    token ends at the mapped offset (the k-th of equal ends for the k-th, e.g. byte tokens of one
    character). Returns ([(j, original row, translated row)], number of positions that could not be
    aligned although their context is not inside an anchored term).
    """
    o_groups: dict[int, list[int]] = {}
    t_groups: dict[int, list[int]] = {}
    for groups, ends in ((o_groups, o_ends), (t_groups, t_ends)):
        for i, e in enumerate(ends):
            groups.setdefault(e, []).append(i)
    out, lost = [], 0
    for j in label_pos:
        b = o_ends[j - 1]
        mapped = map_boundary(b, pieces)
        if mapped is None:
            continue  # context ends inside an anchored term: no generic counterpart (label -100)
        same_end, targets = o_groups[b], t_groups.get(mapped, [])
        if len(targets) != len(same_end):
            lost += 1  # tokenization differs here: alignment cannot be proved
            continue
        out.append((j, j - 1, targets[same_end.index(j - 1)]))
    return out, lost


@dataclass
class Plan:
    """How to label one forget example: (label position, original row, translated row) triples,
    the translated input ids (cut after the last row used) and the unaligned-position count."""

    rows: list[tuple[int, int, int]]
    trans_ids: list[int]
    lost: int = 0


def _offsets(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[int]]:
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except NotImplementedError:
        raise ConfigError("method.terms: WHP aligns the translated text by token offsets, which needs a fast "
                          "tokenizer (use_fast=True); or set terms='' for no translation") from None
    return list(enc.input_ids), [int(e) for _, e in enc.offset_mapping]


def plan_example(ex: Any, enc: Encoded, data: Any, terms: dict[str, str], pattern: re.Pattern[str]) -> Plan:
    """Translate one forget example and align its answer positions (see the module docstring)."""
    label_pos = [j for j, lab in enumerate(enc.labels) if lab != IGNORE and j > 0]
    tok, template = data.tokenizer, data.template or PromptTemplate()
    prompt_o = render_prompt(ex.question, tok, template)
    q_t = translate(ex.question, terms, pattern)[0] if ex.question is not None else None
    prompt_t = render_prompt(q_t, tok, template)
    answer_t, a_pieces = translate(ex.answer, terms, pattern)
    if prompt_t == prompt_o and answer_t == ex.answer:  # nothing to translate: identity alignment
        return Plan([(j, j - 1, j - 1) for j in label_pos], list(enc.input_ids))
    special = not _uses_chat(tok, template)  # as data.format.encode
    o_ids, o_ends = _offsets(tok, prompt_o + ex.answer, special)
    if o_ids[: data.max_length] != enc.input_ids[: len(o_ids[: data.max_length])]:
        raise DataError(f"forget example {ex.question!r} does not re-encode to its 'forget' view; build the data "
                        "with unlearnkit.data.pair.build_paired and the same tokenizer, template and max_length")
    t_ids, t_ends = _offsets(tok, prompt_t + answer_t, special)
    lo, lt = len(prompt_o), len(prompt_t)
    pieces = prompt_pieces(prompt_o, prompt_t) + [
        Piece(p.o_start + lo, p.o_end + lo, p.t_start + lt, p.t_end + lt, p.same) for p in a_pieces]
    rows, lost = align_rows(o_ends[: data.max_length], t_ends, pieces, label_pos)
    keep = max((t for _, _, t in rows), default=0) + 1
    return Plan(rows, t_ids[:keep], lost)


def plan_all(data: Any, terms: dict[str, str]) -> list[Plan]:
    """Plans for every forget example; warns with the number of positions that could not be aligned."""
    if not terms:  # no translation: every answer position is aligned with itself
        return [Plan([(j, j - 1, j - 1) for j, lab in enumerate(v["forget"].labels) if lab != IGNORE and j > 0],
                     list(v["forget"].input_ids)) for v in data.forget]
    if data.tokenizer is None or len(data.examples) != len(data.forget):
        raise DataError("WHP needs the forget records and tokenizer (data.examples, data.tokenizer) to translate "
                        "them; build the data with unlearnkit.data.pair.build_paired")
    pattern = term_pattern(terms)
    plans = [plan_example(ex, views["forget"], data, terms, pattern) for ex, views in zip(data.examples, data.forget)]
    lost = [p.lost for p in plans if p.lost]
    if lost:
        warnings.warn(f"whp: {sum(lost)} answer tokens in {len(lost)} of {len(plans)} forget examples could not be "
                      "aligned with the translated text (the tokenization differs around an anchored term); they "
                      "are not trained (label -100)", stacklevel=2)
    if not any(pattern.search(ex.answer) or pattern.search(ex.question or "") for ex in data.examples):
        warnings.warn(f"whp: none of the {len(terms)} anchored terms occurs in the forget set; the labels come "
                      "from the reinforced-logit step alone", stacklevel=2)
    return plans


# ----------------------------------------------------------------------------- labels
@torch.no_grad()
def _rows(model: Any, ids: list[list[int]], rows: list[list[int]], pad_id: int) -> list[Tensor]:
    """Logits (n_i, V) of ``model`` at positions ``rows[i]`` of sequence ``ids[i]``, on the CPU in float32."""
    device = next(model.parameters()).device
    batch = collate([Encoded(x, [IGNORE] * len(x)) for x in ids], pad_id)
    logits = forward(model, {k: t.to(device) for k, t in batch.items()}).logits  # (B, T, V)
    return [logits[i, r].float().cpu() for i, r in enumerate(rows)]


def generic_views(base: Any, reinforced: Any, data: Any, plans: list[Plan], *, alpha: float,
                  batch_size: int) -> list[Encoded]:
    """The "generic" view of every forget example: its input ids with argmax-v_generic labels at the
    aligned answer positions and -100 elsewhere."""
    modes = [(m, m.training) for m in (base, reinforced)]
    for m, _ in modes:
        m.eval()
    out = []
    for start in range(0, len(plans), batch_size):
        idx = range(start, min(start + batch_size, len(plans)))
        encs = [data.forget[i]["forget"] for i in idx]
        v_reinf = _rows(reinforced, [e.input_ids for e in encs], [[o for _, o, _ in plans[i].rows] for i in idx],
                        data.pad_id)  # on the original text
        v_base = _rows(base, [plans[i].trans_ids for i in idx], [[t for _, _, t in plans[i].rows] for i in idx],
                       data.pad_id)  # on the translated text
        for i, enc, vb, vr in zip(idx, encs, v_base, v_reinf):
            labels = [IGNORE] * len(enc.input_ids)
            for (j, _, _), y in zip(plans[i].rows, generic_logits(vb, vr, alpha).argmax(-1).tolist()):
                labels[j] = y
            out.append(Encoded(list(enc.input_ids), labels, enc.truncated))
    for m, was_training in modes:
        m.train(was_training)
    return out


def reinforce(model: Any, data: Any, cfg: Any, *, epochs: float, lr: float) -> Any:
    """The reinforced model: a frozen copy of ``model`` finetuned further on the forget set."""
    from ..train import finetune_frozen

    return finetune_frozen(copy.deepcopy(model), data, cfg, epochs=epochs, lr=lr, desc="whp:reinforce")


@METHODS.register(
    "whp",
    paper="Eldan & Russinovich 2023, Who's Harry Potter? Approximate Unlearning in LLMs, arXiv:2310.02238",
    reference="no official training code (released model microsoft/Llama2-7b-WhoIsHarryPotter); generic logits "
              "as MUSE baselines' WHPModelForCausalLM (OPTML-Group/Unlearn-Simple)",
    kind="loss",
)
@dataclass(kw_only=True)
class WHP(Method):
    """Finetune on generic labels: argmax of baseline logits on anchor-translated text minus the reinforced boost.

    ``prepare`` trains the reinforced model (a copy finetuned further on the forget set), computes
    the generic label of every answer token and adds the "generic" view; the loss is the NLL of that
    view. ``terms`` is a JSON / CSV file of anchored terms -> generic translations (see the module
    docstring for the formats and the token-alignment rule).
    """

    alpha: float = 1.0  # α of v_generic; MUSE WHPModelForCausalLM default (paper value UNVERIFIED)
    terms: str = ""  # anchored-term file (JSON / CSV; WHP builds it with GPT-4); "" = no translation (ablation)
    reinforce_epochs: float = 3.0  # epochs of the reinforced model; paper value UNVERIFIED, toolkit choice
    reinforce_lr: float = 0.0  # lr of the reinforced model; 0 = train.lr (paper value UNVERIFIED)
    retain_weight: float = 1.0  # weight of the optional retain term (toolkit choice)
    retain_loss: str = "none"  # the paper has no retain term; "nll" / "kl" add the shared one

    def __post_init__(self) -> None:
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(alpha=self.alpha, reinforce_epochs=self.reinforce_epochs, retain_weight=self.retain_weight)
        if not self.reinforce_lr >= 0:
            raise ConfigError(f"reinforce_lr must be >= 0 (0 = the unlearning train.lr), got {self.reinforce_lr}")
        _check_terms_path(self.terms)
        self.n_generic = self.n_lost = 0  # counts filled by prepare (supervised / unaligned positions)

    def prepare(self, model: Any, data: Any, cfg: Any) -> None:
        """Train the reinforced model, then add the "generic" view to every forget example."""
        _check_terms_path(self.terms)
        plans = plan_all(data, load_terms(self.terms) if self.terms else {})  # fails fast, before training
        reinforced = reinforce(model, data, cfg, epochs=self.reinforce_epochs, lr=self.reinforce_lr)
        views = generic_views(model, reinforced, data, plans, alpha=self.alpha, batch_size=cfg.batch_size)
        del reinforced  # free the auxiliary model before the unlearning run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for item, view in zip(data.forget, views):
            item["generic"] = view
        self.n_generic = sum(len(p.rows) for p in plans)
        self.n_lost = sum(p.lost for p in plans)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        if "generic" not in batch:
            raise RuntimeError("batch has no 'generic' view: WHP.prepare was not called; "
                               "train with unlearnkit.train.run")
        forget = nll(model, batch["generic"])  # CE towards the generic labels (WHP step 4: finetune on them)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        return combine(forget, retain, forget_weight=1.0, retain_weight=self.retain_weight)
