"""Probes: every model call evaluation needs, done once per split, batched, into plain arrays.

Conventions follow open-unlearning's TOFU evaluation (shared/research/tofu_metric_details.md):
batches of ``batch_size`` examples in file order, right-padded; each perturbed answer index is
scored as its own batch; probability uses the mean NLL over answer tokens + EOS; MIA / extraction
statistics use the answer tokens without EOS; greedy generation from left-padded prompts with
``pad_token_id = EOS``, stopped at EOS. Metrics (pure functions) consume the :class:`SplitProbe`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.format import Encoded, PromptTemplate, collate, encode, render_prompt
from ..data.records import Example


@dataclass
class SplitProbe:
    """Per-example arrays for one split. Ragged per-token arrays are lists of 1-D arrays."""

    avg_nll: np.ndarray  # (N,) mean NLL over answer + EOS
    avg_nll_para: np.ndarray | None = None  # (N,) paraphrased answer, same question
    avg_nll_pert: np.ndarray | None = None  # (N, K) each perturbed answer
    token_logp: list[np.ndarray] = field(default_factory=list)  # answer tokens, no EOS
    token_mu: list[np.ndarray] = field(default_factory=list)  # E_v[log p(v)] per position
    token_sigma: list[np.ndarray] = field(default_factory=list)  # Std_v[log p(v)] per position
    token_match: list[np.ndarray] = field(default_factory=list)  # argmax == label, no EOS
    texts: list[str] = field(default_factory=list)  # the answers (for zlib)
    ground_truths: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    el_targets: list[list[int]] = field(default_factory=list)  # answer ids without EOS
    el_continuations: list[list[list[int]]] = field(default_factory=list)  # per prefix length t


@dataclass
class ProbeSettings:
    batch_size: int = 32  # open-unlearning's eval batch size
    max_length: int = 512
    max_new_tokens: int = 200  # TOFU generation length
    generate: bool = True
    token_stats: bool = True
    el_n: int = 0  # Jang et al. EL_n on the answers (forget + holdout); 0 = off (costs T-1 generations each)
    progress: bool = True  # a progress bar over splits


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def _score(model: Any, encs: list[Encoded], pad_id: int, bs: int, stats: bool) -> dict[str, list]:
    """Teacher-forced statistics of each encoded example (one forward per batch)."""
    out: dict[str, list] = {"avg_nll": [], "logp": [], "mu": [], "sigma": [], "match": []}
    for chunk in _batches(encs, bs):
        b = collate(chunk, pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logp_all = F.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V)
        labels = b["labels"][:, 1:]  # (B, T-1)
        for i in range(len(chunk)):
            pos = (labels[i] != -100).nonzero().squeeze(-1)  # answer positions incl. EOS
            lp = logp_all[i, pos]  # (n, V)
            tok = lp.gather(-1, labels[i, pos, None]).squeeze(-1)  # (n,)
            out["avg_nll"].append(float(-tok.mean()))
            if stats:
                body = slice(0, len(pos) - 1)  # drop EOS for MIA / extraction statistics
                p = lp[body].exp()
                mu = (p * lp[body]).sum(-1)
                var = (p * lp[body].square()).sum(-1) - mu.square()
                out["logp"].append(tok[body].numpy())
                out["mu"].append(mu.numpy())
                out["sigma"].append(var.clamp_min(1e-6).sqrt().numpy())  # reference clamps var at 1e-6
                out["match"].append((lp[body].argmax(-1) == labels[i, pos][body]).numpy())
    return out


@torch.inference_mode()
def greedy_answers(
    model: Any, tokenizer: Any, questions: Sequence[str | None], template: PromptTemplate, s: ProbeSettings
) -> list[str]:
    """Greedy generations for each question's prompt (left-padded, stop at EOS)."""
    prompts = [render_prompt(q, tokenizer, template) for q in questions]
    chat = template.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outs: list[str] = []
    try:
        for chunk in _batches(prompts, s.batch_size):
            enc = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=not chat)
            gen = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=s.max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            outs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return outs


def ground_truth_text(enc: Encoded, tokenizer: Any) -> str:
    """decode(prompt + answer) minus decode(prompt), as open-unlearning's ROUGE ground truth."""
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": True}
    full = tokenizer.decode(enc.input_ids, **kw)
    return full[len(tokenizer.decode(enc.input_ids[: enc.prompt_len], **kw)) :]


def probe_split(
    model: Any, tokenizer: Any, examples: Sequence[Example], *,
    template: PromptTemplate | None = None, settings: ProbeSettings | None = None,
) -> SplitProbe:
    """Run every probe on one split of examples."""
    template, s, pad = template or PromptTemplate(), settings or ProbeSettings(), tokenizer.pad_token_id
    model.eval()
    enc = [encode(e.question, e.answer, tokenizer, template=template, max_length=s.max_length) for e in examples]
    main = _score(model, enc, pad, s.batch_size, s.token_stats)
    probe = SplitProbe(
        avg_nll=np.array(main["avg_nll"]), token_logp=main["logp"], token_mu=main["mu"],
        token_sigma=main["sigma"], token_match=main["match"], texts=[e.answer for e in examples],
    )
    probe.avg_nll_para = _alt_nll(model, tokenizer, examples, template, s, lambda e: e.paraphrased_answer)
    k = min((len(e.perturbed_answers) for e in examples), default=0)
    if k:
        cols = [_alt_nll(model, tokenizer, examples, template, s, lambda e, j=j: e.perturbed_answers[j]) for j in range(k)]
        probe.avg_nll_pert = np.stack(cols, axis=1)  # (N, K)
    if s.el_n:
        probe.el_targets, probe.el_continuations = el_continuations(model, tokenizer, enc)
    if s.generate:
        probe.ground_truths = [ground_truth_text(e, tokenizer) for e in enc]
        probe.generations = greedy_answers(model, tokenizer, [e.question for e in examples], template, s)
    return probe


def _alt_nll(model, tokenizer, examples, template, s, pick) -> np.ndarray | None:
    """avg NLL of an alternative answer (paraphrased / j-th perturbed) under the original question."""
    answers = [pick(e) for e in examples]
    if any(a is None for a in answers):
        return None
    enc = [encode(e.question, a, tokenizer, template=template, max_length=s.max_length) for e, a in zip(examples, answers)]
    return np.array(_score(model, enc, tokenizer.pad_token_id, s.batch_size, False)["avg_nll"])


@torch.inference_mode()
def el_continuations(model: Any, tokenizer: Any, encs: Sequence[Encoded]) -> tuple[list, list]:
    """Greedy continuations of every answer prefix, for Jang et al.'s EL_n on QA answers.

    For an answer a_1..a_T (EOS excluded) and t = 1..T-1, the prefix is prompt + a_<t+1... i.e. the
    prompt followed by the first t answer tokens, and the continuation is the next T - t greedy
    tokens (cut at EOS, as HF generation stops there). All prefixes of one example run as one
    left-padded batch. Adaptation: Jang et al. use whole 200-token sequences with no prompt.
    """
    eos, targets, conts = tokenizer.eos_token_id, [], []
    for e in encs:
        answer = e.input_ids[e.prompt_len : -1]  # (T,) without EOS
        T = len(answer)
        prefixes = [e.input_ids[: e.prompt_len + t] for t in range(1, T)]
        outs: list[list[int]] = []
        if prefixes:
            width = max(len(p) for p in prefixes)
            ids = torch.full((len(prefixes), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prefixes):  # left padding
                ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=T - 1,
                                 pad_token_id=eos, eos_token_id=eos)[:, width:]
            for t, row in enumerate(gen.tolist(), 1):
                row = row[: T - t]
                outs.append(row[: row.index(eos)] if eos in row else row)
        targets.append(answer)
        conts.append(outs)
    return targets, conts
