"""Adversarial suffix attack: one universal suffix, optimized by GCG on some forget questions, makes
the model say the forgotten answers to held-out ones (the Dynamic Unlearning Attack, DUA, of Yuan et
al. 2024, "Towards Robust Knowledge Unlearning: An Adversarial Framework for Assessing and Improving
Unlearning Robustness in LLMs", arXiv:2408.10682; GCG-style adaptive attacks in Łucki et al. 2024,
"An Adversarial Perspective on Machine Unlearning for AI Safety", arXiv:2409.18025).

DUA's objective: ``min_q sum_(x, y) -log p(y | [x; q])`` over a suffix ``q`` of ``n`` tokens shared
by all questions (universal), optimized with Greedy Coordinate Gradient (GCG, Zou et al. 2023,
"Universal and Transferable Adversarial Attacks on Aligned Language Models", arXiv:2307.15043).
One GCG step (:func:`token_gradients`, :func:`sample_candidates`):

1. the gradient of the loss w.r.t. the one-hot matrix of the suffix tokens (``one_hot @ W_E`` fed as
   input embeddings): ``g`` (n, V); a large negative ``g[i, v]`` says that putting token ``v`` at
   position ``i`` should lower the loss;
2. per position, the ``topk`` allowed tokens with the most negative gradient;
3. a batch of ``candidates`` suffixes, each with ONE position replaced (positions evenly spread over
   the batch, the new token drawn at random from that position's top-k);
4. every candidate's loss computed exactly; the suffix moves to the best candidate (even when it is
   worse than the current one, as GCG does) and the best suffix ever seen is returned.

The attacker optimizes on ``AttackData.forget_train`` (Yuan's "Cross-Query" setting: other questions
about the same target) and the audit measures on the held-out ``forget_eval`` questions with the
suffix appended; the model itself is never modified.

Reference implementations: ``llm-attacks/llm-attacks`` ``llm_attacks/gcg/gcg_attack.py``
(``token_gradients``, ``GCGPromptManager.sample_control``) and ``llm_attacks/base/attack_manager.py``
(``get_filtered_cands``, ``MultiPromptAttack.run`` keeps the best control); Yuan et al.'s DUA code is
not released (``HongbangYuan/RobustUnlearning`` acknowledges llm-attacks).

Deviations (all stated):
- Compute is scaled down for CPU (each default below says from what): 30 steps instead of ~500,
  64 candidates per step instead of 512, top-k 64 instead of 256; ``budget`` scales the steps. The
  suffix keeps GCG's 20 tokens: on the tiny test model (GA-unlearned, 4 training / 4 held-out
  questions, 30 steps) 10 tokens reached a held-out recovery ratio of 0.026, 20 tokens 0.060 and 40
  tokens 0.089, at nearly the same cost; ``n_tokens`` is an option.
- The loss is the mean over records of the per-record mean answer-token NLL (the TOFU quantity the
  audit measures; GCG's per-prompt mean target CE, averaged over prompts) rather than DUA's
  per-record *summed* NLL; both share the minimiser when answers have equal length.
- Text round trip: the suffix is handed over as text (``question + suffix``), and text re-tokenized
  inside the prompt can differ from the optimized ids. We optimize over the tokenization that is
  actually evaluated: each candidate's text is appended to every training question, the whole
  record is encoded as the audit encodes it (``data.format.encode``), and a candidate is kept only
  if that encoding is exactly the question's encoding with the suffix ids inserted at one unambiguous
  place (:func:`find_span`; GCG's ``get_filtered_cands`` only checks the suffix's own round trip).
  Candidate losses are then the losses of the evaluated encodings.
- The suffix's text is decoded in context (after an anchor token), so leading spaces that belong to
  the first token are kept; GCG joins goal and control with a space instead.
- Allowed tokens: those whose decoding is non-empty printable ASCII, never special tokens (GCG's
  ``get_nonascii_toks``); GCG normalises the gradient per position, which does not change the top-k.
- The initial suffix is ``init`` repeated (GCG: "! ! ! ..."), tokenized in context after a space
  and cut to ``n_tokens`` ids.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.format import Encoded, collate, encode
from ..errors import ConfigError, DataError
from ..logprobs import mean_nll
from ..methods.base import check_positive
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

ANCHOR = "."  # the suffix's text is decoded after this token, so its leading whitespace survives


def allowed_tokens(tokenizer: Any, vocab_size: int) -> Tensor:
    """(V,) bool: token ids whose decoding is non-empty printable ASCII and that are not special
    (llm-attacks ``get_nonascii_toks``). Ids past the tokenizer's vocabulary are not allowed."""
    special = set(tokenizer.all_special_ids)
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        ok[i] = i not in special and text != "" and text.isascii() and text.isprintable()
    return ok


def suffix_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of the suffix ``ids`` as it reads after other text (leading spaces kept)."""
    anchor = tokenizer(ANCHOR, add_special_tokens=False).input_ids
    head = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    whole = tokenizer.decode(list(anchor) + list(ids), clean_up_tokenization_spaces=False)
    return whole[len(head):] if whole.startswith(head) else " " + tokenizer.decode(list(ids))


def find_span(base: Sequence[int], full: Sequence[int], suffix: Sequence[int]) -> int | None:
    """The start ``L`` such that ``full == base[:L] + suffix + base[L:]``, or None when there is no
    such place or more than one (the suffix did not re-tokenize as itself, or its place is ambiguous)."""
    base, full, suffix = list(base), list(full), list(suffix)
    if len(full) != len(base) + len(suffix):
        return None
    cp = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), len(base))  # common prefix
    places = [start for start in range(max(0, cp - len(suffix)), cp + 1)
              if full[start:start + len(suffix)] == suffix and full[start + len(suffix):] == base[start:]
              and full[:start] == base[:start]]
    return places[0] if len(places) == 1 else None


def token_gradients(model: Any, batch: dict[str, Tensor], starts: Sequence[int], suffix: Tensor) -> Tensor:
    """(n, V) gradient of the mean per-record answer NLL w.r.t. the one-hot suffix tokens.

    ``batch``: collated records (B, T) whose ids hold ``suffix`` (n,) at ``starts[b]``. The suffix
    rows of the input embeddings are ``one_hot @ W_E``; only ``one_hot`` gets a gradient (the
    model's parameters and their ``.grad`` are left alone).
    """
    weight = model.get_input_embeddings().weight.detach()  # (V, d)
    one_hot = F.one_hot(suffix, weight.shape[0]).to(weight.dtype).requires_grad_(True)  # (n, V)
    with torch.enable_grad():
        rows = one_hot @ weight  # (n, d)
        embeds = weight[batch["input_ids"]]  # (B, T, d)
        n = len(suffix)
        embeds = torch.stack([torch.cat([e[:s], rows, e[s + n:]]) for e, s in zip(embeds, starts)])
        logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        loss = mean_nll(logits, batch["labels"]).mean()
        (grad,) = torch.autograd.grad(loss, one_hot)
    return grad


def sample_candidates(suffix: Tensor, grad: Tensor, allowed: Tensor, topk: int, n: int,
                      generator: torch.Generator) -> Tensor:
    """(n, L) candidate suffixes, each ``suffix`` (L,) with one position replaced (llm-attacks
    ``sample_control``): candidate ``c`` changes position ``floor(c * L / n)`` to one of the ``topk``
    allowed tokens with the most negative ``grad`` (L, V) there, drawn uniformly."""
    length = suffix.shape[0]
    scores = (-grad.float()).masked_fill(~allowed, float("-inf"))  # (L, V) disallowed never chosen
    k = min(topk, int(allowed.sum()))
    top = scores.topk(k, dim=1).indices  # (L, k)
    pos = (torch.arange(n) * length // n).long()  # (n,) evenly spread positions
    pick = torch.randint(0, k, (n,), generator=generator)  # (n,)
    out = suffix.repeat(n, 1)  # (n, L)
    out[torch.arange(n), pos] = top[pos, pick]
    return out


@torch.no_grad()
def record_losses(model: Any, encs: Sequence[Encoded], pad_id: int, chunk: int) -> Tensor:
    """(N,) mean answer NLL of each encoded record, ``chunk`` records per forward pass."""
    out = []
    for i in range(0, len(encs), chunk):
        b = collate(encs[i:i + chunk], pad_id)
        out.append(mean_nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                            b["labels"]).float())
    return torch.cat(out)


def _n_consistent(plain: Sequence[Any], suffixed: Sequence[Any], ids: Sequence[int], tokenizer: Any,
                  data: AttackData) -> int:
    """How many records tokenize, with the suffix appended, as their own tokens plus exactly ``ids``
    (always all training records; a diagnostic for the held-out ones)."""
    def enc(ex: Any) -> list[int]:
        return encode(ex.question, ex.answer, tokenizer, template=data.template, max_length=data.max_length).input_ids

    return sum(find_span(enc(a), enc(b), ids) is not None for a, b in zip(plain, suffixed))


@dataclass
class _Placed:
    """A suffix as evaluated on the training records: its encodings and where the suffix sits."""

    ids: tuple[int, ...]
    text: str
    encs: list[Encoded]
    starts: list[int]


@ATTACKS.register(
    "suffix",
    paper="Yuan et al. 2024, Towards Robust Knowledge Unlearning (DUA), arXiv:2408.10682; Łucki et al. 2024, "
    "An Adversarial Perspective on Machine Unlearning for AI Safety, arXiv:2409.18025; GCG: Zou et al. 2023, "
    "arXiv:2307.15043",
    reference="llm-attacks/llm-attacks llm_attacks/gcg/gcg_attack.py (token_gradients, sample_control), "
    "llm_attacks/base/attack_manager.py (get_filtered_cands); DUA code not released",
    cost="budget x `steps` GCG steps; each = 1 forward+backward on forget_train + `candidates` x len(forget_train) "
    "forward passes (and as many tokenizations)",
)
@dataclass(kw_only=True)
class Suffix(Attack):
    """Universal adversarial suffix (GCG) optimized on forget_train, appended to forget_eval questions."""

    kind = "input"  # rewrites the forget records (suffixed questions); the model is unchanged
    n_tokens: int = 20  # suffix length. GCG: 20 ("! " x 20); kept (10 recovered < half as much on the tiny model)
    steps: int = 30  # GCG steps (times `budget`). GCG: ~500 (demo / individual runs; UNVERIFIED in our notes);
    # DUA's count is in its appendix (not checked). 30 keeps a tiny-model audit within seconds on CPU
    topk: int = 64  # tokens kept per position. GCG: 256 of a 32k vocabulary; 64 for small vocabularies
    candidates: int = 64  # candidate suffixes evaluated per step. GCG: batch_size 512; 64 for CPU
    init: str = "!"  # initial suffix: init repeated n_tokens times, space-separated (GCG: "! ! ! ...")
    eval_batch: int = 64  # records per forward pass when scoring candidates (memory only; no effect on results)
    seed: int | None = None  # seed of the candidate draws; None = AttackData.seed

    def __post_init__(self) -> None:
        self.check_budget()
        check_positive(n_tokens=self.n_tokens, steps=self.steps, topk=self.topk, candidates=self.candidates,
                       eval_batch=self.eval_batch)
        if not isinstance(self.init, str) or not self.init.strip():
            raise ConfigError(f"init={self.init!r} must be a non-empty string (GCG starts from '!')")

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """The input model (unmodified) and ``forget_eval`` with the optimized suffix on each question."""
        self._check(data)
        was_training = model.training
        model.eval()  # no dropout while searching; the mode is restored below
        try:
            best, info = self._optimize(model, tokenizer, data)
        finally:
            if was_training:
                model.train()
        examples = [dataclasses.replace(ex, question=f"{ex.question}{best.text}") for ex in data.forget_eval]
        info["eval_retokenized"] = _n_consistent(data.forget_eval, examples, best.ids, tokenizer, data)
        return Attacked(model, examples=examples, info=info)

    def _check(self, data: AttackData) -> None:
        if not data.forget_train:
            raise DataError("the adversarial suffix attack optimizes its suffix on forget records: "
                            "AttackData.forget_train is empty. Split the forget set "
                            "(unlearnkit.attacks.relearn.split_forget) into a part the attacker optimizes on "
                            "(forget_train) and a held-out part where recovery is measured (forget_eval)")
        for name in ("forget_train", "forget_eval"):
            for i, ex in enumerate(getattr(data, name)):
                if ex.question is None:
                    raise DataError(f"AttackData.{name}[{i}] has no question (a plain-text record): the suffix "
                                    "attack appends its suffix to questions; use question/answer records")

    def _place(self, ids: Sequence[int], ctx: dict[str, Any]) -> _Placed | None:
        """Encode every training record with suffix ``ids`` appended as text; None if it does not
        re-tokenize as ``ids`` at one place in each record."""
        text = suffix_text(ctx["tok"], ids)
        encs, starts = [], []
        for ex, base in zip(ctx["data"].forget_train, ctx["base"]):
            enc = encode(ex.question + text, ex.answer, ctx["tok"], template=ctx["data"].template,
                         max_length=ctx["data"].max_length)
            start = find_span(base.input_ids, enc.input_ids, ids)
            if start is None or start >= base.prompt_len:  # the suffix must sit in the prompt
                return None
            encs.append(enc)
            starts.append(start)
        return _Placed(tuple(ids), text, encs, starts)

    def _initial(self, ctx: dict[str, Any]) -> _Placed:
        """GCG's "! ! ! ...": ``init`` repeated, tokenized after a space in the first record, cut to n_tokens."""
        data, tok = ctx["data"], ctx["tok"]
        ex = data.forget_train[0]
        spaced = " " + " ".join([self.init.strip()] * self.n_tokens)
        full = encode(ex.question + spaced, ex.answer, tok, template=data.template, max_length=data.max_length)
        base = ctx["base"][0].input_ids
        cp = next((i for i, (a, b) in enumerate(zip(base, full.input_ids)) if a != b), len(base))
        ids = full.input_ids[cp:cp + self.n_tokens]
        placed = self._place(ids, ctx) if len(ids) == self.n_tokens else None
        if placed is None:
            raise ConfigError(f"init={self.init!r}: {self.n_tokens} tokens of {spaced!r} do not re-tokenize as "
                              "themselves after the forget_train questions (or do not fit in data.max_length); "
                              "choose another init character (GCG uses '!') or raise data.max_length")
        return placed

    def _loss(self, model: Any, placed: Sequence[_Placed], ctx: dict[str, Any]) -> Tensor:
        """(C,) mean over training records of the answer NLL with each placed suffix."""
        encs = [e for p in placed for e in p.encs]
        return record_losses(model, encs, ctx["pad"], self.eval_batch).view(len(placed), -1).mean(1)

    def _step(self, model: Any, cur: _Placed, ctx: dict[str, Any]) -> tuple[list[_Placed], Tensor]:
        """One GCG step from ``cur``: the consistent candidates and their losses (may be empty)."""
        suffix, n, k = torch.tensor(cur.ids), len(cur.encs), self.eval_batch
        grad = sum(token_gradients(model, collate(cur.encs[i:i + k], ctx["pad"]), cur.starts[i:i + k], suffix)
                   * (min(n, i + k) - i) / n for i in range(0, n, k))  # (L, V) mean over records, in chunks
        cands = sample_candidates(suffix, grad, ctx["allowed"], self.topk, self.candidates, ctx["gen"])
        unique = dict.fromkeys(tuple(c) for c in cands.tolist() if tuple(c) != cur.ids)
        kept = [p for c in unique if (p := self._place(c, ctx)) is not None]
        return kept, (self._loss(model, kept, ctx) if kept else torch.empty(0))

    def _optimize(self, model: Any, tokenizer: Any, data: AttackData) -> tuple[_Placed, dict[str, Any]]:
        gen = torch.Generator().manual_seed(data.seed if self.seed is None else self.seed)
        vocab = model.get_input_embeddings().weight.shape[0]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        base = [encode(ex.question, ex.answer, tokenizer, template=data.template, max_length=data.max_length)
                for ex in data.forget_train]
        ctx = {"tok": tokenizer, "data": data, "base": base, "pad": pad, "gen": gen,
               "allowed": allowed_tokens(tokenizer, vocab)}
        if not ctx["allowed"].any():
            raise DataError("the tokenizer has no printable ASCII non-special token to build a suffix from")
        cur = best = self._initial(ctx)
        loss_init = best_loss = float(self._loss(model, [cur], ctx)[0])
        steps, skipped, evaluated = self.scaled(self.steps), 0, 0
        for _ in range(steps):
            kept, losses = self._step(model, cur, ctx)
            if not kept:
                skipped += 1
                continue
            evaluated += len(kept)
            i = int(losses.argmin())
            cur = kept[i]  # GCG moves to the best candidate even when it is worse than the current one
            if float(losses[i]) < best_loss:
                best, best_loss = cur, float(losses[i])
        loss_before = float(record_losses(model, base, pad, self.eval_batch).mean())
        info = {"suffix": best.text, "suffix_ids": list(best.ids), "loss_before": loss_before,
                "loss_init": loss_init, "loss_after": best_loss, "steps": steps, "skipped_steps": skipped,
                "candidates_evaluated": evaluated, "records": len(data.forget_train)}
        return best, info
