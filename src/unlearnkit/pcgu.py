"""PCGU: Partitioned Contrastive Gradient Unlearning of social bias (Yu et al. 2023, "Unlearning
Bias in Language Models by Partitioning Gradients", Findings of ACL 2023, pp. 6032-6048; no arXiv id,
ACL Anthology 2023.findings-acl.375).

Reference implementation: ``CharlesYu2000/PCGU-UnlearningBias`` ``src/general_similarity_retrain.py``
(main loop, ``_minimize_grads_2``) and ``src/partition_params.py`` (``create_param_partition``). That
code supports masked LMs only; this module is the causal-LM adaptation proposed in the research notes
(``methods_b.md`` section 3).

One step on a batch of (advantaged, disadvantaged) sentence pairs:

1. ``g1 = grad sum_b s(x_dis)`` and ``g2 = grad sum_b s(x_adv)``, with ``s(x) = sum_t log p(x_t | x_<t)``.
2. Partition every parameter: a >=2-D parameter into its vectors along dim -1 (one part per output
   unit ``W[i, :]`` of ``nn.Linear``, one per token of an embedding); a 1-D parameter is one part.
3. ``sim_p = cos(g1[p], g2[p])``; a part with a missing gradient gets 5 (never chosen first).
4. Keep the ``k`` parts of LOWEST similarity; the update direction is ``g2`` there (SGD then lowers
   the advantaged sentence's likelihood, ``_minimize_grads_2``) or ``-g1`` (``direction=
   "increase_disadvantaged"``, the code's ``--use-disadvantaged``) and zero elsewhere.
5. Plain SGD step (the code builds ``optim.SGD`` without passing its momentum argument).

Deviations from the reference:
- Causal LM, not MLM: the score is the summed log-likelihood of the whole BOS-prefixed sentence
  (plain text, no chat template), not the raw logit of the masked differing token; so pairs need
  not differ at exactly one token.
- GPT-2 ``Conv1D`` weights are stored [in, out]; they are split along dim 0 (columns) so a part is
  still one output unit (the notes' GPT-2 caveat).
- A part whose g1 or g2 is exactly zero (e.g. the embedding row of a token absent from the batch)
  is treated like a missing gradient (similarity 5) when ``skip_zero_grad`` is set (default):
  ``torch`` returns cosine 0 for a zero vector, which would otherwise rank such parts ahead of every
  positively aligned part and spend the ``k`` budget on parts the update leaves unchanged. UNVERIFIED
  whether the reference does this; set ``skip_zero_grad=False`` for plain cosine.
- ``k`` is clamped to the number of parts (a tiny model has fewer than the code's 10,000).
- Not implemented: ``--output-agg``, ``--use-full-grad``, the "dynamic" direction, the per-epoch
  similarity (``--use-same-params``), per-epoch checkpoints and StereoSet model selection.
- Metric: ``preference_rate`` is the CrowS-Pairs/StereoSet SS ratio with causal sentence
  log-likelihoods (fraction of pairs with ``s(adv) > s(dis)``; ideal 0.5); plus perplexity on
  neutral sentences as a language-modelling check (the paper's LMS needs StereoSet's unrelated
  candidates, which this small built-in set does not have).

The built-in pairs (``unlearnkit/data/bias_pairs.jsonl``, 30 gender x occupation pairs written for
this toolkit in the WinoGender style, advantaged = the occupation's majority gender) are a smoke-test
set, not WinoGender itself.
"""
from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.format import Encoded, collate
from .data.records import read_rows
from .errors import ConfigError, DataError
from .logprobs import IGNORE, forward, token_logp
from .methods.base import check_choice, check_positive

DIRECTIONS = ("decrease_advantaged", "increase_disadvantaged")
MISSING_SIM = 5.0  # partition_params.py: a parameter without a gradient gets similarity 5
BUILTIN_NEUTRAL = (
    "The weather was mild for most of the week.",
    "The train left the station a few minutes late.",
    "The committee will meet again next month.",
    "Water boils at a lower temperature at high altitude.",
)
PCGU_METRIC_INFO = {
    "preference_rate": {"higher_is_better": None, "version": 1,
                        "description": "fraction of pairs with log p(advantaged) > log p(disadvantaged); ideal 0.5"},
    "neutral_perplexity": {"higher_is_better": False, "version": 1,
                           "description": "token-level perplexity on neutral sentences (language-modelling check)"},
}


# ------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class BiasPair:
    advantaged: str  # the stereotyped sentence (the side the model is pushed away from)
    disadvantaged: str  # the anti-stereotyped sentence
    domain: str = ""
    neutral: str = ""  # optional neutral variant (used for the perplexity check)


def _text(row: dict, key: str, i: int, where: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # missing or NaN (csv)
        if required:
            raise DataError(f"'{where}' row {i}: missing key '{key}' (row has keys {sorted(row)}); "
                            "each row needs 'advantaged' and 'disadvantaged' sentences")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"'{where}' row {i}: '{key}' must be a non-empty string; fill it in or remove the row")
    return value.strip()


def _to_pair(row: Any, i: int, where: str) -> BiasPair:
    if not isinstance(row, dict):
        raise DataError(f"'{where}' row {i}: expected an object with advantaged/disadvantaged, "
                        f"got {type(row).__name__}")
    adv, dis = (_text(row, k, i, where, required=True) for k in ("advantaged", "disadvantaged"))
    if adv == dis:
        raise DataError(f"'{where}' row {i}: advantaged and disadvantaged are identical ({adv!r}); "
                        "a pair must differ (e.g. in the gendered word)")
    return BiasPair(adv, dis, _text(row, "domain", i, where, required=False),
                    _text(row, "neutral", i, where, required=False))


def load_pairs(path: str | Path | None = None) -> list[BiasPair]:
    """Load (advantaged, disadvantaged) pairs from json/jsonl/csv; ``None`` = the built-in set."""
    if path is None or str(path) == "":
        ref = resources.files("unlearnkit.data").joinpath("bias_pairs.jsonl")
        with resources.as_file(ref) as p:
            rows, where = read_rows(p), "built-in bias_pairs.jsonl"
    else:
        rows, where = read_rows(path), str(path)
    if not rows:
        raise DataError(f"'{where}' contains no pairs; PCGU needs at least one advantaged/disadvantaged pair")
    return [_to_pair(row, i, where) for i, row in enumerate(rows, 1)]  # 1-based rows


def load_neutral(path: str | Path | None, pairs: Sequence[BiasPair] = ()) -> list[str]:
    """Neutral sentences: a file's ``text`` column, else the pairs' ``neutral`` fields, else built-ins."""
    if path:
        rows = read_rows(path)
        texts = [_text(r if isinstance(r, dict) else {}, "text", i, str(path), required=True)
                 for i, r in enumerate(rows, 1)]
        if not texts:
            raise DataError(f"'{path}' contains no neutral sentences; give rows with a 'text' column")
        return texts
    return [p.neutral for p in pairs if p.neutral] or list(BUILTIN_NEUTRAL)


# ---------------------------------------------------------------------------------------- scoring
def encode_sentences(tokenizer: Any, texts: Sequence[str]) -> dict[str, Tensor]:
    """Tokenize plain sentences, BOS-prefixed, every token after BOS supervised: (B, T) tensors."""
    bos = tokenizer.bos_token_id
    items = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True).input_ids
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids  # e.g. GPT-2 adds no BOS by itself
        items.append(Encoded(ids, list(ids)))  # labels = ids: the shift makes token 0 unscored
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collate(items, pad)


def sentence_logp(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """(B,) s(x) = sum_t log p(x_t | x_<t) over each sentence."""
    return token_logp(forward(model, batch).logits, batch["labels"])[0].sum(-1)


@torch.no_grad()
def score_sentences(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """(N,) summed log-probs and (N,) numbers of scored tokens, in ``batch_size`` chunks."""
    logps, counts = [], []
    for i in range(0, len(texts), batch_size):
        batch = encode_sentences(tokenizer, texts[i:i + batch_size])
        logps.append(sentence_logp(model, batch).float())
        counts.append((batch["labels"][:, 1:] != IGNORE).sum(-1))
    return torch.cat(logps), torch.cat(counts)


def preference_rate(s_adv: Sequence[float] | Tensor, s_dis: Sequence[float] | Tensor) -> float:
    """Fraction of pairs with s(advantaged) > s(disadvantaged) (CrowS-Pairs / SS style; ideal 0.5)."""
    a, d = torch.as_tensor(s_adv, dtype=torch.float64), torch.as_tensor(s_dis, dtype=torch.float64)
    if a.shape != d.shape or a.numel() == 0:
        raise ValueError(f"s_adv and s_dis must be non-empty and of one shape, got {tuple(a.shape)}, {tuple(d.shape)}")
    return float((a > d).double().mean())  # ties count as not preferred (strict >, as the CrowS code)


def perplexity(logp_sums: Sequence[float] | Tensor, n_tokens: Sequence[int] | Tensor) -> float:
    """Token-level perplexity exp(-sum log p / sum n) over sentences."""
    total = torch.as_tensor(logp_sums, dtype=torch.float64).sum()
    return float(torch.exp(-total / torch.as_tensor(n_tokens, dtype=torch.float64).sum().clamp_min(1)))


def bias_metrics(model: Any, tokenizer: Any, pairs: Sequence[BiasPair], neutral: Sequence[str],
                 *, batch_size: int = 16) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(values, per-example arrays): preference rate on the pairs and perplexity on ``neutral``."""
    was_training = model.training
    model.eval()
    s_adv, _ = score_sentences(model, tokenizer, [p.advantaged for p in pairs], batch_size=batch_size)
    s_dis, _ = score_sentences(model, tokenizer, [p.disadvantaged for p in pairs], batch_size=batch_size)
    s_neu, n_neu = score_sentences(model, tokenizer, list(neutral), batch_size=batch_size)
    model.train(was_training)
    values = {"preference_rate": preference_rate(s_adv, s_dis), "neutral_perplexity": perplexity(s_neu, n_neu)}
    return values, {"logp_advantaged": s_adv.tolist(), "logp_disadvantaged": s_dis.tolist()}


# ------------------------------------------------------------------------------- the partition
def _as_rows(g: Tensor, column: bool) -> Tensor:
    """(P, D) part vectors: rows along dim -1, columns (Conv1D [in, out]) along dim 0, 1-D = one part."""
    if g.dim() <= 1:
        return g.reshape(1, -1)
    return g.t() if column else g.reshape(-1, g.shape[-1])


def part_similarities(g1: dict[str, Tensor | None], g2: dict[str, Tensor | None], *,
                      columns: frozenset[str] = frozenset(), skip_zero_grad: bool = True,
                      shapes: dict[str, torch.Size] | None = None) -> dict[str, Tensor]:
    """Per parameter, the (P,) cosine similarities of its parts; MISSING_SIM for a missing gradient
    (``shapes`` gives the size of a parameter whose gradient is None in both)."""
    out = {}
    for name in g1.keys() | g2.keys():
        a, b = g1.get(name), g2.get(name)
        ref = a if a is not None else b
        if a is None or b is None:  # no gradient: every part of this parameter gets 5
            shape = ref.shape if ref is not None else (shapes or {})[name]
            n_parts = _as_rows(torch.empty(shape, device="meta"), name in columns).shape[0]
            out[name] = torch.full((n_parts,), MISSING_SIM)
            continue
        ra, rb = _as_rows(a.float(), name in columns), _as_rows(b.float(), name in columns)  # (P, D)
        sim = F.cosine_similarity(ra, rb, dim=-1)  # (P,)
        if skip_zero_grad:
            sim = sim.masked_fill((ra == 0).all(-1) | (rb == 0).all(-1), MISSING_SIM)
        out[name] = sim.cpu()
    return dict(sorted(out.items()))


def partition_similarity(g1: dict[str, Tensor | None], g2: dict[str, Tensor | None], **kwargs: Any
                         ) -> list[tuple[str, int | None, float]]:
    """(name, part index, cosine similarity) for every part; index None = a whole 1-D parameter."""
    sims = part_similarities(g1, g2, **kwargs)
    shapes = kwargs.get("shapes") or {}
    dims = {n: len(g.shape if (g := g1.get(n) if g1.get(n) is not None else g2.get(n)) is not None else shapes[n])
            for n in sims}
    return [(n, None if dims[n] <= 1 else i, float(s)) for n, v in sims.items() for i, s in enumerate(v.tolist())]


def lowest_k(parts: Sequence[tuple[str, int | None, float]], k: int) -> list[tuple[str, int | None]]:
    """The ``k`` parts of lowest similarity (clamped to len(parts)); ties keep their input order."""
    order = sorted(range(len(parts)), key=lambda i: parts[i][2])  # stable
    return [parts[i][:2] for i in order[:max(0, k)]]


def lowest_k_masks(sims: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """Vectorised ``lowest_k``: per parameter, a (P,) bool mask of the chosen parts."""
    names = list(sims)
    flat = torch.cat([sims[n] for n in names])  # (sum P,)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.sort(flat, stable=True).indices[:min(k, flat.numel())]] = True
    return dict(zip(names, torch.split(chosen, [sims[n].numel() for n in names]), strict=True))


def masked_update_grads(g1: dict[str, Tensor | None], g2: dict[str, Tensor | None], masks: dict[str, Tensor], *,
                        direction: str = "decrease_advantaged", columns: frozenset[str] = frozenset()
                        ) -> dict[str, Tensor | None]:
    """The gradient SGD applies: g2 (or -g1) on the chosen parts, zero elsewhere (None if no gradient)."""
    check_choice("direction", direction, DIRECTIONS)
    out: dict[str, Tensor | None] = {}
    for name, mask in masks.items():
        g = g2.get(name) if direction == "decrease_advantaged" else g1.get(name)
        if g is None:
            out[name] = None
            continue
        if g.dim() <= 1:
            full = mask.reshape(()).expand(g.shape)
        elif name in columns:
            full = mask.reshape(1, -1).expand(g.shape)  # Conv1D [in, out]: part j = column j
        else:
            full = mask.reshape(*g.shape[:-1], 1).expand(g.shape)  # part i = row i
        signed = g if direction == "decrease_advantaged" else -g
        out[name] = torch.where(full.to(g.device), signed, torch.zeros_like(g))
    return out


# --------------------------------------------------------------------------------------- training
def conv1d_names(model: torch.nn.Module) -> frozenset[str]:
    """Names of GPT-2 style Conv1D weights ([in, out]), split by column to keep one part per output."""
    return frozenset(f"{m}.weight" if m else "weight" for m, mod in model.named_modules()
                     if type(mod).__name__ == "Conv1D")


def _grads(model: Any, params: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
    score = sentence_logp(model, batch).sum()  # sum_b s(x_b)
    grads = torch.autograd.grad(score, list(params.values()), allow_unused=True)
    return dict(zip(params, grads, strict=True))


def pcgu_step(model: Any, tokenizer: Any, pairs: Sequence[BiasPair], optimizer: torch.optim.Optimizer, *,
              k: int, direction: str, columns: frozenset[str] = frozenset(), skip_zero_grad: bool = True
              ) -> dict[str, Any]:
    """One PCGU update on a batch of pairs; returns the chosen-part masks and the batch's logs."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    g1 = _grads(model, params, encode_sentences(tokenizer, [p.disadvantaged for p in pairs]))
    g2 = _grads(model, params, encode_sentences(tokenizer, [p.advantaged for p in pairs]))
    sims = part_similarities(g1, g2, columns=columns, skip_zero_grad=skip_zero_grad,
                             shapes={n: p.shape for n, p in params.items()})
    masks = lowest_k_masks(sims, k)
    grads = masked_update_grads(g1, g2, masks, direction=direction, columns=columns)
    for name, p in params.items():
        p.grad = grads[name]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    chosen = torch.cat([sims[n][masks[n]] for n in sims])
    return {"masks": masks, "n_parts": sum(m.numel() for m in masks.values()),
            "max_chosen_sim": float(chosen.max()) if chosen.numel() else None}


def _batches(pairs: Sequence[BiasPair], batch_size: int, rng: random.Random) -> Iterator[list[BiasPair]]:
    order = list(range(len(pairs)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [pairs[j] for j in order[i:i + batch_size]]


def pcgu_train(model: Any, tokenizer: Any, pairs: Sequence[BiasPair], *, lr: float = 1e-5, epochs: int = 5,
               batch_size: int = 16, k: int = 10000, direction: str = "decrease_advantaged",
               skip_zero_grad: bool = True, seed: int = 89793) -> list[dict[str, Any]]:
    """Run PCGU for ``epochs`` over shuffled ``pairs`` with plain SGD; returns the per-step log."""
    check_choice("direction", direction, DIRECTIONS)
    check_positive(lr=lr, epochs=epochs, batch_size=batch_size, k=k)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)  # the code's momentum=0.9 is never passed to SGD
    rng, columns, log = random.Random(seed), conv1d_names(model), []
    for epoch in tqdm(range(epochs), desc="pcgu", disable=None, leave=False):  # shown only on a terminal
        for batch in _batches(pairs, batch_size, rng):
            info = pcgu_step(model, tokenizer, batch, optimizer, k=k, direction=direction, columns=columns,
                             skip_zero_grad=skip_zero_grad)
            log.append({"step": len(log) + 1, "epoch": epoch + 1, "n_parts": info["n_parts"],
                        "max_chosen_sim": info["max_chosen_sim"]})
    model.eval()
    return log


# ------------------------------------------------------------------------------------ public run
@dataclass
class PcguConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    pairs: str = ""  # json/jsonl/csv with advantaged/disadvantaged columns; "" = the built-in 30 pairs
    neutral: str = ""  # json/jsonl/csv with a 'text' column; "" = the pairs' 'neutral' fields (or built-ins)
    lr: float = 1e-5  # general_similarity_retrain.py default learning rate (plain SGD)
    epochs: int = 5  # general_similarity_retrain.py default
    batch_size: int = 16  # general_similarity_retrain.py default
    k: int = 10000  # general_similarity_retrain.py default top-k parts; clamped to the number of parts
    direction: str = "decrease_advantaged"  # _minimize_grads_2; "increase_disadvantaged" = --use-disadvantaged
    skip_zero_grad: bool = True  # our deviation: all-zero gradient parts are never chosen (see module doc)
    seed: int = 89793  # general_similarity_retrain.py default seed
    out: str = ""  # where the debiased model is saved; OUT.results.json is written next to it

    def __post_init__(self) -> None:
        check_choice("direction", self.direction, DIRECTIONS)
        check_positive(lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, k=self.k)
        for name in ("pairs", "neutral"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise ConfigError(f"{name}='{path}' does not exist; give a json/jsonl/csv file or leave it empty "
                                  "for the built-in set")


def run_pcgu(cfg: PcguConfig) -> dict[str, Any]:
    """Debias ``cfg.model`` with PCGU, save it to ``cfg.out``; return (and write) a before/after results doc."""
    from .api import _check_out, _load
    from .models import save_model
    from .report import build_results, write_json_atomic
    from .runtime import seed_everything

    cfg.__post_init__()  # re-validate fields changed after construction (CLI overrides)
    out = _check_out(cfg.out)
    if cfg.model.lora.r > 0:
        raise ConfigError("PCGU edits parts of the full weights; set model.lora.r=0 (LoRA is not supported)")
    pairs = load_pairs(cfg.pairs or None)
    neutral = load_neutral(cfg.neutral or None, pairs)
    seed_everything(cfg.seed)
    model, tok = _load(cfg.model)
    t0 = time.time()
    before, before_ex = bias_metrics(model, tok, pairs, neutral, batch_size=cfg.batch_size)
    t_train = time.time()
    log = pcgu_train(model, tok, pairs, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, k=cfg.k,
                     direction=cfg.direction, skip_zero_grad=cfg.skip_zero_grad, seed=cfg.seed)
    t1 = time.time()
    after, after_ex = bias_metrics(model, tok, pairs, neutral, batch_size=cfg.batch_size)
    card = {"title": "Debiased with unlearnkit (pcgu)", "base_model": cfg.model.path, "method": "pcgu",
            "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_steps": len(log),
            "metrics": {f"{k}_before": v for k, v in before.items()} | after}
    save_model(model, tok, out, card=card)
    doc = build_results(models={"before": {"path": cfg.model.path, **before}, "after": {"path": str(out), **after}},
                        metric_info=PCGU_METRIC_INFO, per_example={"before": before_ex, "after": after_ex},
                        config=asdict(cfg), splits={"pairs": len(pairs), "neutral": len(neutral)},
                        training={"after": {"log": log}}, timing={"train_s": t1 - t_train, "total_s": time.time() - t0})
    write_json_atomic(out.with_name(out.name + ".results.json"), doc)
    return doc


__all__ = ["BiasPair", "PcguConfig", "bias_metrics", "encode_sentences", "sentence_logp", "score_sentences",
           "load_neutral", "load_pairs", "lowest_k", "lowest_k_masks",
           "masked_update_grads", "part_similarities", "partition_similarity", "pcgu_step", "pcgu_train",
           "perplexity", "preference_rate", "run_pcgu"]
