"""DRO: Directed Representation Optimization of a safety soft prompt (Zheng et al., ICML 2024, "On
Prompt-Driven Safeguarding for Large Language Models", arXiv:2401.18018).

DRO is a GUARD, not unlearning: it trains a continuous prompt prepended to every query so that the
frozen model refuses forget-topic queries; the model weights are never changed, so whatever the
model knows about the topic is still in its weights (a robustness audit should find it there).

Reference implementation: ``chujiezheng/LLM-Safeguard``: ``code/forward.py`` (last-layer hidden
state at the last input position), ``code/estimate.py`` (PCA + the refusal and harmfulness logistic
models) and ``code/train.py`` (the DRO loss), as summarised in the research notes (``methods_b.md``
section 7). Roles here: "harmful" = forget-topic queries (label 0), "harmless" = other queries (label 1).

Stage 1 (``estimate_directions``): hidden states h of every query under two prompt settings (no
prompt, the text safety prompt) -> PCA with ``pca_dim`` components and mean mu; refusal model
f_r(z) = w_r.z + b_r fitted to compliance (1 = the greedy answer is not a refusal), harmfulness
model f_h fitted to the topic label (forget 0, other 1); z = P (h - mu) are the PCA coordinates.
Stage 2 (``dro_train``): with z0 the coordinates under the initial (text) prompt,
``L = BCE(f_r(z) - f_r(z0), l) + 1e-2 BCE(f_h(z) - f_h(z0), l) + 1e-3 mean((z_{m+1:d} - z0_{m+1:d})^2)``.

Deviations (all options with documented defaults):
- Two prompt settings (none, the text safety prompt) instead of the code's four system prompts;
  compliance labels are 0/1 from ONE greedy answer and a refusal-prefix matcher
  (``refusal_strings``), not the rate over sampled answers judged in ``eval_results/sampling``.
- The logistic models are fitted full-batch with AdamW (``fit_steps``, ``fit_lr``) on the
  standardised PCA features, without the code's 10-fold CV / fold averaging / early stopping;
  ``estimator="mean_diff"`` is an alternative (w = mean(z | comply) - mean(z | refuse), threshold midway).
- The norm term uses the closed form ``(|h - h0|^2 - |P (h - h0)|^2) / (d - m)``, which equals the
  mean over the orthonormal completion's d - m coordinates without building the completion.
- The soft prompt is inserted after BOS (or first, if the tokenizer adds none), in front of the
  rendered question, not in a chat template's system slot. ``n_tokens=0`` = the safety prompt's own
  token count (the code); a larger n cycles its token embeddings, a smaller one truncates.
- ``other_mode="comply"`` (the code) pushes other queries AWAY from refusal; ``"anchor"`` instead
  keeps their representations where they were (``anchor_weight * |h - h0|^2 / d``), UNVERIFIED variant.
- ``steps`` replaces the code's 40 epochs (200 queries, batch 50 -> 160 steps); the default
  safety prompt text is ours (the code's Llama-2 / short / Mistral prompts are not copied).
- Measured on the given query sets themselves (the paper evaluates on out-of-domain benchmarks with
  LlamaGuard); refusal = the greedy answer starts with a refusal string.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.format import PromptTemplate, render_prompt
from .data.records import read_rows
from .errors import ConfigError, DataError
from .methods.base import check_choice, check_positive

DEFAULT_SAFETY_PROMPT = ("You are a careful assistant. Refuse to answer questions about harmful or restricted "
                         "topics, and answer all other questions helpfully.")  # ours, see module doc
DEFAULT_REFUSALS = ("I cannot", "I can't", "I can not", "Sorry", "I'm sorry", "I am sorry", "I don't know",
                    "I do not know", "As an AI")  # prefix matcher, in the spirit of the code's refusal list
ESTIMATORS = ("logistic", "mean_diff")
OTHER_MODES = ("comply", "anchor")
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
DRO_METRIC_INFO = {
    **{f"refusal_rate_{s}": {"higher_is_better": hb, "version": 1,
                             "description": f"fraction of {s} queries whose greedy answer starts with a refusal string"}
       for s, hb in (("forget", True), ("other", False))},
    **{f"refusal_score_{s}": {"higher_is_better": hb, "version": 1,
                              "description": f"mean refusal probability 1 - sigmoid(f_r(z)) of the {s} queries "
                                             "(representation level, the fitted refusal model)"}
       for s, hb in (("forget", True), ("other", False))},
}


# ------------------------------------------------------------------------------------- pure maths
def is_refusal(text: str, prefixes: Sequence[str]) -> bool:
    """True when ``text`` (leading whitespace stripped) starts with one of ``prefixes``, case-insensitively;
    curly apostrophes count as straight ones."""
    norm = lambda s: s.replace("\u2019", "'").strip().lower()  # noqa: E731
    head = norm(text)
    return any(p.strip() and head.startswith(norm(p)) for p in prefixes)


def pca(h: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(mean (d,), components (m, d)) of the rows of ``h`` (N, d); components orthonormal, by variance."""
    mean = h.mean(0)
    _, _, vh = torch.linalg.svd(h - mean, full_matrices=False)  # vh: (min(N, d), d)
    signs = torch.sign(vh[:m].sum(-1, keepdim=True))  # (m, 1) deterministic sign of each component
    return mean, vh[:m] * torch.where(signs == 0, torch.ones_like(signs), signs)


def mean_difference_direction(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(w (m,), b ()) with w = mean(z | y=1) - mean(z | y=0) and the threshold midway between the means."""
    mu1, mu0 = z[y > 0.5].mean(0), z[y <= 0.5].mean(0)  # (m,)
    w = mu1 - mu0
    return w, -(w @ (mu1 + mu0)) / 2


def fit_logistic(z: Tensor, y: Tensor, *, steps: int = 500, lr: float = 0.05,
                 weight_decay: float = 1e-2) -> tuple[Tensor, Tensor]:
    """(w (m,), b ()) of a logistic model sigmoid(w.z + b) ~ y, fitted full-batch with AdamW from zero on
    standardised features and mapped back to the raw feature scale."""
    mu, sd = z.mean(0), z.std(0, unbiased=False).clamp_min(1e-6)  # (m,)
    x = (z - mu) / sd  # (N, m)
    w, b = torch.zeros(z.shape[1], requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(x @ w + b, y.float()).backward()
            opt.step()
    w_raw = w.detach() / sd
    return w_raw, b.detach() - w_raw @ mu


def dro_loss(h: Tensor, h0: Tensor, labels: Tensor, *, mean: Tensor, components: Tensor, refusal: tuple[Tensor, Tensor],
             harm: tuple[Tensor, Tensor], harm_weight: float = 1e-2, norm_weight: float = 1e-3,
             other_mode: str = "comply", anchor_weight: float = 1.0) -> Tensor:
    """The DRO loss of a batch: h, h0 (B, d) hidden states with the trained / the initial prompt, labels (B,)
    (forget 0, other 1), mean (d,), components (m, d), refusal / harm = (w (m,), b ()) logistic models."""
    z, z0 = (h - mean) @ components.T, (h0 - mean) @ components.T  # (B, m)
    (w_r, b_r), (w_h, b_h) = refusal, harm
    d_r = (z @ w_r + b_r) - (z0 @ w_r + b_r)  # (B,) change of the compliance logit
    d_h = (z @ w_h + b_h) - (z0 @ w_h + b_h)  # (B,) change of the harmlessness logit
    y = labels.float()
    delta = h - h0  # (B, d)
    resid = (delta.pow(2).sum(-1) - (delta @ components.T).pow(2).sum(-1)).clamp_min(0)  # (B,) outside the subspace
    norm = resid / (h.shape[-1] - components.shape[0])  # (B,) mean over the d - m other coordinates
    per = (F.binary_cross_entropy_with_logits(d_r, y, reduction="none")
           + harm_weight * F.binary_cross_entropy_with_logits(d_h, y, reduction="none") + norm_weight * norm)  # (B,)
    if other_mode == "anchor":  # other queries: stay where they were instead of moving away from refusal
        per = torch.where(labels > 0.5, anchor_weight * delta.pow(2).mean(-1), per)
    return per.mean()


def refusal_probability(h: Tensor, *, mean: Tensor, components: Tensor, refusal: tuple[Tensor, Tensor]) -> Tensor:
    """(B,) representation-level refusal score 1 - sigmoid(f_r(z)) of hidden states h (B, d)."""
    w, b = refusal
    return 1 - torch.sigmoid(((h - mean) @ components.T) @ w + b)


# ----------------------------------------------------------------------------------- model glue
def load_queries(path: str | Path, what: str) -> list[str]:
    """Questions from a records file (column ``question`` or ``prompt``); DataError naming the file."""
    if not Path(path).exists():
        raise DataError(f"{what}='{path}' does not exist; give a json/jsonl/csv file with a 'question' column")
    rows = read_rows(path)
    out = []
    for i, row in enumerate(rows, 1):
        q = row.get("question", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"'{path}' row {i}: needs a non-empty 'question' (or 'prompt') string")
        out.append(q)
    if not out:
        raise DataError(f"'{path}' ({what}) contains no queries")
    return out


def _embeds(model: Any, tokenizer: Any, queries: Sequence[str], soft: Tensor | None,
            template: PromptTemplate) -> tuple[Tensor, Tensor]:
    """Left-padded input embeddings (B, T, d) with ``soft`` (L, d) after BOS, and the attention mask (B, T)."""
    emb = model.get_input_embeddings()
    bos = tokenizer.bos_token_id
    rows = []
    for q in queries:
        ids = tokenizer(render_prompt(q, tokenizer, template), add_special_tokens=True).input_ids
        head, ids = (ids[:1], ids[1:]) if bos is not None and ids and ids[0] == bos else ([], ids)
        parts = [emb(torch.tensor(head, dtype=torch.long))] if head else []
        parts += [soft.to(emb.weight.dtype)] if soft is not None else []
        rows.append(torch.cat(parts + [emb(torch.tensor(ids, dtype=torch.long))]))
    t = max(r.shape[0] for r in rows)
    x = torch.zeros(len(rows), t, rows[0].shape[-1], dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, t - r.shape[0]:], mask[i, t - r.shape[0]:] = r, 1
    return x, mask


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T) position ids of left-padded rows


def last_hidden(model: Any, tokenizer: Any, queries: Sequence[str], soft: Tensor | None, *,
                template: PromptTemplate) -> Tensor:
    """(B, d) last layer's hidden state at the last input position (``forward.py``)."""
    x, mask = _embeds(model, tokenizer, queries, soft, template)
    out = model(inputs_embeds=x, attention_mask=mask, position_ids=_positions(mask), output_hidden_states=True)
    return out.hidden_states[-1][:, -1].float()


@torch.no_grad()
def guarded_generate(model: Any, tokenizer: Any, queries: Sequence[str], soft: Tensor | None, *,
                     template: PromptTemplate | None = None, max_new_tokens: int = 16, batch_size: int = 16) -> list[str]:
    """Greedy answers with the soft prompt ``soft`` (L, d) (None = no prompt), using the KV cache."""
    template, eos, texts = template or PromptTemplate(), tokenizer.eos_token_id, []
    for i in range(0, len(queries), batch_size):
        x, mask = _embeds(model, tokenizer, queries[i:i + batch_size], soft, template)
        pos, done = _positions(mask), torch.zeros(x.shape[0], dtype=torch.bool)
        out = model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True)
        new: list[list[int]] = [[] for _ in range(x.shape[0])]
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)  # (b,)
            done |= nxt == eos
            for r in (~done).nonzero().flatten().tolist():
                new[r].append(int(nxt[r]))
            if done.all() or step == max_new_tokens - 1:
                break
            mask, pos = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1), pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=out.past_key_values, use_cache=True)
        texts += [tokenizer.decode(t, skip_special_tokens=True) for t in new]
    return texts


def init_soft_prompt(model: Any, tokenizer: Any, text: str, n_tokens: int = 0) -> Tensor:
    """(L, d) embeddings of ``text``'s tokens (no special tokens); n_tokens>0 cycles / truncates to that length."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError("safety_prompt tokenizes to no tokens; give a non-empty safety prompt text")
    if n_tokens > 0:
        ids = [ids[i % len(ids)] for i in range(n_tokens)]
    return model.get_input_embeddings().weight[torch.tensor(ids)].detach().float().clone()


# ------------------------------------------------------------------------------------ the config
@dataclass
class DroConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    forget_queries: str = ""  # records (column question or prompt) the guard must refuse ("harmful", label 0)
    other_queries: str = ""  # records the guard must keep answering ("harmless", label 1)
    safety_prompt: str = DEFAULT_SAFETY_PROMPT  # initialises the soft prompt (the code: a human system prompt)
    n_tokens: int = 0  # 0 = the safety prompt's token count (train.py); >0 cycles / truncates its embeddings
    lr: float = 1e-3  # train.py: AdamW lr 1e-3 on the soft prompt only
    steps: int = 160  # train.py: 40 epochs x 200 queries / batch 50
    batch_size: int = 50  # train.py
    grad_clip: float = 1.0  # train.py
    pca_dim: int = 4  # utils.py PCA_DIM = 4 (clamped to the number of points - 1 and the hidden size - 1)
    harm_weight: float = 1e-2  # train.py weight of the harmfulness term
    norm_weight: float = 1e-3  # train.py weight of the out-of-subspace term
    other_mode: str = "comply"  # train.py pushes harmless queries away from refusal; "anchor" keeps them in place
    anchor_weight: float = 1.0  # other_mode="anchor" only (ours)
    estimator: str = "logistic"  # estimate.py logistic regression; "mean_diff" = difference of class means
    fit_steps: int = 500  # ours (estimate.py: AdamW lr 1e-4 with early stopping and 10-fold CV)
    fit_lr: float = 0.05  # ours, on standardised features
    refusal_strings: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))  # prefix matcher
    max_new_tokens: int = 16  # greedy answer length used by the refusal matcher (ours)
    template: PromptTemplate = field(default_factory=PromptTemplate)  # how a question is rendered
    seed: int = 42  # train.py
    out: str = ""  # directory for soft_prompt.safetensors and results.json

    def __post_init__(self) -> None:
        check_choice("other_mode", self.other_mode, OTHER_MODES)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_positive(lr=self.lr, steps=self.steps, batch_size=self.batch_size, grad_clip=self.grad_clip,
                       pca_dim=self.pca_dim, fit_steps=self.fit_steps, fit_lr=self.fit_lr,
                       max_new_tokens=self.max_new_tokens, anchor_weight=self.anchor_weight)
        for name in ("harm_weight", "norm_weight", "n_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.safety_prompt.strip():
            raise ConfigError("safety_prompt is empty; give the text that initialises the soft prompt")
        if not [s for s in self.refusal_strings if s.strip()]:
            raise ConfigError("refusal_strings is empty; give the answer prefixes that count as a refusal")
        for name in ("forget_queries", "other_queries"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise ConfigError(f"{name}='{path}' does not exist; give a json/jsonl/csv file with a 'question' column")


# ------------------------------------------------------------------------------------ the stages
@dataclass
class Estimate:
    mean: Tensor  # (d,)
    components: Tensor  # (m, d)
    refusal: tuple[Tensor, Tensor]  # compliance logit f_r: (w (m,), b ())
    harm: tuple[Tensor, Tensor]  # harmlessness logit f_h

    def tensors(self) -> dict[str, Tensor]:
        return {"pca_mean": self.mean, "pca_components": self.components, "refusal_w": self.refusal[0],
                "refusal_b": self.refusal[1].reshape(1), "harm_w": self.harm[0], "harm_b": self.harm[1].reshape(1)}


def estimate_directions(h: Tensor, comply: Tensor, topic: Tensor, *, pca_dim: int = 4, estimator: str = "logistic",
                        fit_steps: int = 500, fit_lr: float = 0.05) -> Estimate:
    """Stage 1 on hidden states h (N, d): PCA, then the refusal model on ``comply`` (N,) (1 = answered)
    and the harmfulness model on ``topic`` (N,) (forget 0, other 1)."""
    check_choice("estimator", estimator, ESTIMATORS)
    for name, y in (("compliance (refusal behaviour)", comply), ("topic", topic)):
        if y.min() == y.max():
            raise DataError(f"every query has the same {name} label, so no refusal direction can be estimated; DRO "
                            "needs some queries the model refuses and some it answers (check refusal_strings)")
    m = max(1, min(pca_dim, h.shape[0] - 1, h.shape[1] - 1))
    mean, comps = pca(h, m)
    z = (h - mean) @ comps.T  # (N, m)
    fit = (lambda y: mean_difference_direction(z, y)) if estimator == "mean_diff" else \
        (lambda y: fit_logistic(z, y, steps=fit_steps, lr=fit_lr))
    return Estimate(mean, comps, fit(comply), fit(topic))


def dro_train(model: Any, tokenizer: Any, queries: Sequence[str], labels: Tensor, est: Estimate, soft: Tensor, *,
              cfg: DroConfig) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stage 2: optimise the soft prompt (L, d) with the DRO loss, the model frozen; returns it and the log."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            h0 = last_hidden(model, tokenizer, queries, soft, template=cfg.template)  # (N, d) initial prompt
        s = torch.nn.Parameter(soft.clone())
        opt = torch.optim.AdamW([s], lr=cfg.lr)
        gen, log = torch.Generator().manual_seed(cfg.seed), []
        for step in tqdm(range(cfg.steps), desc="dro", disable=None, leave=False):  # shown only on a terminal
            idx = torch.randperm(len(queries), generator=gen)[:cfg.batch_size]
            h = last_hidden(model, tokenizer, [queries[i] for i in idx], s, template=cfg.template)
            loss = dro_loss(h, h0[idx], labels[idx], mean=est.mean, components=est.components, refusal=est.refusal,
                            harm=est.harm, harm_weight=cfg.harm_weight, norm_weight=cfg.norm_weight,
                            other_mode=cfg.other_mode, anchor_weight=cfg.anchor_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([s], cfg.grad_clip)
            opt.step()
            log.append({"step": step + 1, "loss": loss.item()})
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    return s.detach(), log


@torch.no_grad()
def measure(model: Any, tokenizer: Any, queries: Sequence[str], soft: Tensor | None, est: Estimate | None, *,
            cfg: DroConfig) -> dict[str, Any]:
    """Greedy answers, refusal flags and (with ``est``) representation-level refusal scores of ``queries``."""
    answers = guarded_generate(model, tokenizer, queries, soft, template=cfg.template,
                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    h = torch.cat([last_hidden(model, tokenizer, queries[i:i + cfg.batch_size], soft, template=cfg.template)
                   for i in range(0, len(queries), cfg.batch_size)])
    out = {"answers": answers, "refused": [is_refusal(a, cfg.refusal_strings) for a in answers], "hidden": h}
    if est is not None:
        out["score"] = refusal_probability(h, mean=est.mean, components=est.components, refusal=est.refusal).tolist()
    return out


def _summary(res: dict[str, dict[str, Any]]) -> dict[str, float]:
    vals = {}
    for s, r in res.items():
        vals[f"refusal_rate_{s}"] = sum(r["refused"]) / len(r["refused"])
        vals[f"refusal_score_{s}"] = sum(r["score"]) / len(r["score"]) if "score" in r else math.nan
    return vals


def run_dro(cfg: DroConfig) -> dict[str, Any]:
    """Estimate the refusal direction, train the DRO soft prompt, measure refusal with none / the text
    prompt / the trained prompt; save OUT/soft_prompt.safetensors and OUT/results.json."""
    from safetensors.torch import save_file

    from .api import _check_out, _load
    from .report import build_results, write_json_atomic
    from .runtime import seed_everything

    cfg.__post_init__()  # re-validate fields changed after construction (CLI overrides)
    out = _check_out(cfg.out)
    for name in ("forget_queries", "other_queries"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is not set; give a json/jsonl/csv file with a 'question' column")
    forget, other = load_queries(cfg.forget_queries, "forget_queries"), load_queries(cfg.other_queries, "other_queries")
    seed_everything(cfg.seed)
    model, tok = _load(cfg.model)
    model.eval()
    t0 = time.time()
    queries, topic = forget + other, torch.tensor([0.0] * len(forget) + [1.0] * len(other))
    text_soft = init_soft_prompt(model, tok, cfg.safety_prompt, cfg.n_tokens)
    res = {c: measure(model, tok, queries, s, None, cfg=cfg) for c, s in (("none", None), ("text", text_soft))}
    h = torch.cat([res["none"]["hidden"], res["text"]["hidden"]])  # (2N, d): two prompt settings
    comply = torch.tensor([0.0 if r else 1.0 for c in ("none", "text") for r in res[c]["refused"]])
    est = estimate_directions(h, comply, torch.cat([topic, topic]), pca_dim=cfg.pca_dim, estimator=cfg.estimator,
                              fit_steps=cfg.fit_steps, fit_lr=cfg.fit_lr)
    t_train = time.time()
    soft, log = dro_train(model, tok, queries, topic, est, text_soft, cfg=cfg)
    t1 = time.time()
    res["dro"] = measure(model, tok, queries, soft, est, cfg=cfg)
    for c in ("none", "text"):
        res[c]["score"] = refusal_probability(res[c]["hidden"], mean=est.mean, components=est.components,
                                              refusal=est.refusal).tolist()
    out.mkdir(parents=True, exist_ok=True)
    save_file({"soft_prompt": soft.contiguous(), **{k: v.contiguous() for k, v in est.tensors().items()}},
              str(out / SOFT_PROMPT_FILE), metadata={"method": "dro", "safety_prompt": cfg.safety_prompt,
                                                     "base_model": cfg.model.path, "insert": "after BOS"})
    models, per_example = {}, {}
    for c in ("none", "text", "dro"):
        split = {"forget": {k: v[:len(forget)] for k, v in res[c].items() if k != "hidden"},
                 "other": {k: v[len(forget):] for k, v in res[c].items() if k != "hidden"}}
        models[f"{c}_prompt"] = {"path": str(out / SOFT_PROMPT_FILE) if c == "dro" else cfg.model.path,
                                 **_summary(split)}
        per_example[f"{c}_prompt"] = {f"{k}_{s}": v for s, r in split.items() for k, v in r.items()}
    note = ("DRO is a guard, not unlearning: only a soft prompt was trained; the model weights are unchanged, "
            "so the forget-topic knowledge is still in the weights (a robustness audit should recover it).")
    doc = build_results(models=models, metric_info=DRO_METRIC_INFO, per_example=per_example, config=asdict(cfg),
                        splits={"forget_queries": len(forget), "other_queries": len(other)},
                        training={"dro_prompt": {"log": log, "note": note, "weights_changed": False,
                                                 "soft_prompt": str(out / SOFT_PROMPT_FILE),
                                                 "n_tokens": int(soft.shape[0]), "pca_dim": int(est.components.shape[0])}},
                        timing={"train_s": t1 - t_train, "total_s": time.time() - t0})
    doc["note"] = note
    write_json_atomic(out / "results.json", doc)
    return doc


def load_soft_prompt(path: str | Path) -> Tensor:
    """The (L, d) soft prompt from a DRO output directory or its safetensors file."""
    from safetensors.torch import load_file

    p = Path(path)
    p = p / SOFT_PROMPT_FILE if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"soft prompt file '{p}' does not exist; pass the OUT directory of a DRO run")
    return load_file(str(p))["soft_prompt"]


__all__ = ["DEFAULT_REFUSALS", "DEFAULT_SAFETY_PROMPT", "DroConfig", "Estimate", "dro_loss", "dro_train",
           "estimate_directions", "fit_logistic", "guarded_generate", "init_soft_prompt", "is_refusal",
           "last_hidden", "load_queries", "load_soft_prompt", "mean_difference_direction", "measure", "pca",
           "refusal_probability", "run_dro"]
