"""Quark: quantized reward konditioning (Lu et al. 2022, "Quark: Controllable Text Generation with
Reinforced [Un]learning", NeurIPS 2022, arXiv:2205.13636).

Reference implementation: ``GXimingLu/Quark`` (``main`` branch): ``main.py`` ``ConditionTrainer``
(``sample``/``step``/``loss``), ``data_pool.py`` ``DataPool.add`` (the quantization), ``policy.py``
(sampling) and ``arguments.py`` (defaults). Spec: the research notes ``methods_b.md`` section 4.

The loop (``quark_train``), for ``iterations`` rounds:

1. Exploration: for every prompt sample ``samples_per_prompt`` continuations (temperature 1, top_p 1,
   i.e. plain sampling; EOS blocked for the first ``min_new_tokens``). Round 0 samples from the
   frozen initial model without a control token; later rounds from the policy conditioned on the
   best reward token ``<|rq0|>``.
2. Scoring with a reward ``reward(prompt, completion) -> float`` (a callable, or a name in
   ``REWARDS``: "forbidden" = -1 if any forbidden string occurs else 0; "repetition" = minus the
   repeated-bigram rate).
3. Quantization: the pool keeps every (prompt, completion, reward) of every round; the whole pool is
   re-sorted by reward (descending) and split into K equal-size groups (remainder to the last,
   lowest one); group k gets control token ``<|rqk|>`` (``quantize``).
4. Learning: ``steps_per_iteration`` Adam steps on minibatches of the pool with, per completion
   token (``quark_loss``), ``NLL(y_t | r_k, x, y_<t) + kl_coef * KL(p_theta || p_0) - entropy_coef * H(p_theta)``;
   the frozen reference p_0 sees the prompt WITHOUT the control token and the KL uses the policy
   logits restricted to the original vocabulary (the control-token columns are dropped).
5. Inference: prepend ``<|rq0|>`` to the prompt (``QuarkResult.best_token``; written to the model
   card and the results file).

Deviations from the reference:
- Prompts are plain text tokenized with the model's own tokenizer; when the tokenizer adds a BOS
  token, the control token goes right AFTER it (``[BOS, <|rqk|>, prompt...]``) so BOS stays first
  (GPT-2, the paper's model, has no BOS and the code puts the token first).
- Token names ``<|rq0|>``..``<|rq{K-1}|>`` instead of ``_TREE_TOKEN_00000``.. (no unused extra token).
  New rows are initialised N(mean, std) of the existing input embeddings per dimension (as the code);
  if the model's embedding matrix already has spare rows beyond the tokenizer (padded vocabulary),
  those rows are used and the KL then also covers those unused columns (small effect, not handled).
- The generation of control tokens is suppressed while sampling (the code does not need this since
  the policy was never trained to emit them; it only matters for untied output heads).
- The entropy is taken over the full policy distribution (control tokens included), the NLL too;
  only the KL drops the control columns. UNVERIFIED against the code's ``logits_to_entropy`` input;
  the effect of the K extra columns is negligible.
- Rewards are user callables (the paper: Perspective API toxicity, a sentiment classifier, repetition
  metrics); the built-in "forbidden" reward is our unlearning use: make a string rarer.
- Adaptive KL / entropy controllers (off by default in the code) and gradient clipping (off) are
  not implemented. Minibatches are drawn uniformly with replacement across steps (the code cycles
  a shuffled DataLoader over the pool).
- Metrics: mean reward and the rate of completions containing a forbidden string, over
  ``eval_samples`` sampled completions per prompt with a fixed seed (the paper's toxicity metrics
  need Perspective; dist-n and perplexity are not computed).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.records import read_rows
from .errors import ConfigError, DataError
from .logprobs import IGNORE
from .methods.base import check_choice, check_positive

RewardFn = Callable[[str, str], float]
TOKEN_FORMAT = "<|rq{}|>"  # quantile k's control token; k = 0 is the HIGHEST-reward quantile
QUARK_METRIC_INFO = {
    "mean_reward": {"higher_is_better": True, "version": 1,
                    "description": "mean reward over sampled completions (after: conditioned on the best token)"},
    "forbidden_rate": {"higher_is_better": False, "version": 1,
                       "description": "fraction of sampled completions containing any forbidden string"},
}


# ---------------------------------------------------------------------------------------- rewards
def forbidden_reward(completion: str, forbidden: Sequence[str]) -> float:
    """-1.0 if any (non-empty) forbidden string occurs in ``completion`` (case-sensitive), else 0.0."""
    return -1.0 if any(s and s in completion for s in forbidden) else 0.0


def repeated_bigram_rate(text: str) -> float:
    """Fraction of whitespace-word bigrams that repeat an earlier bigram: 1 - #unique / #bigrams."""
    words = text.split()
    bigrams = list(zip(words, words[1:]))
    return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def _forbidden_factory(forbidden: Sequence[str]) -> RewardFn:
    words = tuple(s for s in forbidden if s)
    if not words:
        raise ConfigError("reward='forbidden' needs at least one string in forbidden, e.g. forbidden=[Zorblax]")
    return lambda prompt, completion: forbidden_reward(completion, words)


def _repetition_factory(forbidden: Sequence[str]) -> RewardFn:
    return lambda prompt, completion: -repeated_bigram_rate(completion)


REWARDS: dict[str, Callable[[Sequence[str]], RewardFn]] = {
    "forbidden": _forbidden_factory,  # -1 if a forbidden string occurs else 0
    "repetition": _repetition_factory,  # minus the repeated-bigram rate
}


def make_reward(name: str, *, forbidden: Sequence[str] = ()) -> RewardFn:
    """The registered reward ``name`` as a ``reward(prompt, completion) -> float`` callable."""
    check_choice("reward", name, tuple(REWARDS))
    return REWARDS[name](forbidden)


# ------------------------------------------------------------------------------------ pure maths
def quantize(rewards: Sequence[float], k: int) -> list[int]:
    """Quantile index per sample (0 = highest rewards), as ``data_pool.py``: sort descending (stable),
    split into ``k`` groups of ``len // k``; the remainder joins the last (lowest) group."""
    check_positive(k=k)
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])  # stable: ties keep pool order
    cut = len(rewards) // k
    bins = [0] * len(rewards)
    for rank, i in enumerate(order):
        bins[i] = min(rank // cut, k - 1) if cut else k - 1  # fewer than k samples: all in the last
    return bins


def quark_terms(logits: Tensor, ref_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token NLL, KL(p_theta || p_0), entropy H(p_theta) and the mask, each (B, L).

    logits: (B, L, V') policy logits at the response positions (``logits[:, t]`` predicts
    ``labels[:, t]``, no shift; V' = V + K control tokens); ref_logits: (B, L, V); labels: (B, L)
    with -100 on padding.
    """
    mask = labels != IGNORE
    logp_full = F.log_softmax(logits.float(), -1)  # (B, L, V'): NLL and entropy on the full vocabulary
    nll = -logp_full.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_full.exp() * logp_full).sum(-1)
    logp = F.log_softmax(logits[..., :ref_logits.shape[-1]].float(), -1)  # control-token columns dropped
    ref = F.log_softmax(ref_logits.float(), -1)
    kl = (logp.exp() * (logp - ref)).sum(-1)  # = KLDivLoss(log_softmax(ref), softmax(policy)) summed
    return nll * mask, kl * mask, entropy * mask, mask


def quark_loss(logits: Tensor, ref_logits: Tensor, labels: Tensor, kl_coef: float, entropy_coef: float) -> Tensor:
    """Quark's objective (main.py ``ConditionTrainer.loss``): mean over response tokens of
    ``NLL + kl_coef * KL(p_theta || p_0) - entropy_coef * H(p_theta)``; shapes as ``quark_terms``."""
    nll, kl, entropy, mask = quark_terms(logits, ref_logits, labels)
    return (nll + kl_coef * kl - entropy_coef * entropy).sum() / mask.sum().clamp_min(1)  # reduce_mean(., masks)


# ------------------------------------------------------------------------------------- encoding
def prompt_ids(tokenizer: Any, prompt: str, control_id: int | None = None) -> list[int]:
    """Token ids of ``prompt``; ``control_id`` goes first, or right after BOS when the tokenizer adds one."""
    ids = list(tokenizer(prompt, add_special_tokens=True).input_ids)
    if control_id is None:
        return ids
    at = 1 if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else 0
    return ids[:at] + [control_id] + ids[at:]


def pack(prefixes: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int) -> dict[str, Any]:
    """Left-padded prefixes + right-padded completions: (B, P + L) ids/mask/positions, (B, L) labels;
    ``start`` = P - 1 is the position whose logits predict the first completion token."""
    p_len, c_len = max(len(p) for p in prefixes), max(1, max(len(c) for c in completions))
    ids, att, labels = [], [], []
    for p, c in zip(prefixes, completions, strict=True):
        lpad, rpad = p_len - len(p), c_len - len(c)
        ids.append([pad_id] * lpad + p + c + [pad_id] * rpad)
        att.append([0] * lpad + [1] * (len(p) + len(c)) + [0] * rpad)
        labels.append(c + [IGNORE] * rpad)
    mask = torch.tensor(att)
    return {"input_ids": torch.tensor(ids), "attention_mask": mask, "labels": torch.tensor(labels),
            "position_ids": (mask.cumsum(-1) - 1).clamp_min(0), "start": p_len - 1}


def response_logits(model: Any, packed: dict[str, Any]) -> Tensor:
    """(B, L, V) logits at the positions that predict the completion tokens."""
    out = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                position_ids=packed["position_ids"])
    start, length = packed["start"], packed["labels"].shape[1]
    return out.logits[:, start:start + length]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# -------------------------------------------------------------------------------------- prompts
def load_prompts(source: str | Path | Sequence[str]) -> list[str]:
    """Prompts from a records file (column ``prompt`` or ``question``) or a list of strings."""
    if isinstance(source, (str, Path)):
        if not str(source):
            raise DataError("no prompts given; set prompts=FILE (records with a 'prompt' or 'question' column)")
        rows, where = read_rows(source), str(source)
        prompts = []
        for i, row in enumerate(rows):
            value = row.get("prompt", row.get("question")) if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"'{where}' row {i}: needs a non-empty string 'prompt' (or 'question') column")
            prompts.append(value)
    else:
        prompts, where = [str(p) for p in source], "the prompt list"
    if not prompts:
        raise DataError(f"{where} holds no prompts; give at least one prompt")
    return prompts


# ------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], *, n: int, control_id: int | None,
                       cfg: QuarkConfig, suppress: Sequence[int] = (), batch_size: int = 32
                       ) -> list[tuple[int, list[int], str]]:
    """``n`` sampled completions per prompt: (prompt index, completion ids up to and with EOS, text)."""
    was_training, pad, eos = model.training, _pad_id(tokenizer), tokenizer.eos_token_id
    model.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, p, control_id) for p in prompts[s:s + batch_size]]
        packed = pack(chunk, [[] for _ in chunk], pad)
        p_len = packed["start"] + 1
        gen = model.generate(input_ids=packed["input_ids"][:, :p_len], attention_mask=packed["attention_mask"][:, :p_len],
                             do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                             num_return_sequences=n, pad_token_id=pad, eos_token_id=eos,
                             suppress_tokens=list(suppress) or None)
        for row, ids in enumerate(gen[:, p_len:].tolist()):
            if eos in ids:
                ids = ids[:ids.index(eos) + 1]  # keep EOS: the policy learns where to stop
            out.append((s + row // n, ids, tokenizer.decode(ids, skip_special_tokens=True)))
    model.train(was_training)
    return out


def score(samples: Sequence[tuple[int, list[int], str]], prompts: Sequence[str], reward: RewardFn) -> list[float]:
    """Reward of each sample; a non-finite or non-numeric reward is an error."""
    values = []
    for i, _, text in samples:
        r = reward(prompts[i], text)
        if not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(f"the reward returned {r!r} for completion {text!r}; it must be a finite float")
        values.append(float(r))
    return values


def behaviour(model: Any, tokenizer: Any, prompts: Sequence[str], reward: RewardFn, cfg: QuarkConfig, *,
              control_id: int | None, suppress: Sequence[int] = ()) -> tuple[dict[str, float | None], dict[str, list]]:
    """Mean reward and forbidden-string rate over ``cfg.eval_samples`` completions per prompt (fixed seed)."""
    torch.manual_seed(cfg.seed + 1)  # the same sampling noise before and after training
    samples = sample_completions(model, tokenizer, prompts, n=cfg.eval_samples, control_id=control_id, cfg=cfg,
                                 suppress=suppress)
    rewards = score(samples, prompts, reward)
    hits = [any(s and s in text for s in cfg.forbidden) for _, _, text in samples]
    rate = sum(hits) / len(hits) if cfg.forbidden else None  # no forbidden strings: no rate
    values = {"mean_reward": sum(rewards) / len(rewards), "forbidden_rate": rate}
    return values, {"rewards": rewards, "completions": [t for _, _, t in samples]}


# ------------------------------------------------------------------------------------- training
def add_quantile_tokens(model: Any, tokenizer: Any, k: int, *, seed: int = 0) -> list[int]:
    """Add ``<|rq0|>``..``<|rq{k-1}|>`` as special tokens; new embedding rows ~ N(mean, std) per dim."""
    names = [TOKEN_FORMAT.format(i) for i in range(k)]
    new = [n for n in names if n not in tokenizer.get_vocab()]
    tokenizer.add_tokens(new, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    emb = model.get_input_embeddings().weight
    old_rows = emb.shape[0]
    if max(ids) >= old_rows:
        model.resize_token_embeddings(max(ids) + 1)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        base = emb[:min(old_rows, min(ids))].float()
        gen = torch.Generator().manual_seed(seed)
        for name, i in zip(names, ids, strict=True):
            if name in new:
                emb[i] = (base.mean(0) + base.std(0) * torch.randn(emb.shape[1], generator=gen)).to(emb.dtype)
    return ids


@dataclass
class QuarkResult:
    tokens: list[int]  # control token ids, index k = quantile k (0 = best)
    best_token: str  # the string to prepend (after BOS) when generating
    log: list[dict[str, Any]]  # per-step loss terms
    rounds: list[dict[str, Any]]  # per exploration round: pool size, mean reward of the new samples


def _train_step(model: Any, ref: Any, tokenizer: Any, prompts: Sequence[str], batch: Sequence[dict],
                tokens: Sequence[int], cfg: QuarkConfig) -> dict[str, float]:
    pad = _pad_id(tokenizer)
    comps = [b["ids"] for b in batch]
    policy_in = pack([prompt_ids(tokenizer, prompts[b["prompt"]], tokens[b["bin"]]) for b in batch], comps, pad)
    ref_in = pack([prompt_ids(tokenizer, prompts[b["prompt"]]) for b in batch], comps, pad)
    with torch.no_grad():
        ref_logits = response_logits(ref, ref_in)  # p_0 sees the prompt without the control token
    logits = response_logits(model, policy_in)
    loss = quark_loss(logits, ref_logits, policy_in["labels"], cfg.kl_coef, cfg.entropy_coef)
    loss.backward()
    with torch.no_grad():
        nll, kl, ent, mask = quark_terms(logits, ref_logits, policy_in["labels"])
        n = mask.sum().clamp_min(1)
    return {"loss": float(loss.detach()), "nll": float(nll.sum() / n), "kl": float(kl.sum() / n), "entropy": float(ent.sum() / n)}


def _schedule(cfg: QuarkConfig) -> Callable[[int], float]:
    total = cfg.iterations * cfg.steps_per_iteration
    warm = cfg.warmup_steps
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


def quark_train(model: Any, tokenizer: Any, prompts: Sequence[str], reward: RewardFn, cfg: QuarkConfig) -> QuarkResult:
    """Run the Quark loop in place on ``model`` (adds the K control tokens to it and ``tokenizer``)."""
    from .models import frozen_copy

    ref = frozen_copy(model)  # p_0: the initial model, original vocabulary
    tokens = add_quantile_tokens(model, tokenizer, cfg.k, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    rng, pool, log, rounds = random.Random(cfg.seed), [], [], []
    torch.manual_seed(cfg.seed)
    for it in tqdm(range(cfg.iterations), desc="quark", disable=None, leave=False):  # shown only on a terminal
        explorer, control = (ref, None) if it == 0 else (model, tokens[0])  # round 0: p_0 without a token
        samples = [s for s in sample_completions(explorer, tokenizer, prompts, n=cfg.samples_per_prompt,
                                                 control_id=control, cfg=cfg, suppress=tokens) if s[1]]
        rewards = score(samples, prompts, reward)
        pool += [{"prompt": i, "ids": ids, "reward": r} for (i, ids, _), r in zip(samples, rewards, strict=True)]
        for item, b in zip(pool, quantize([p["reward"] for p in pool], cfg.k), strict=True):
            item["bin"] = b  # the whole pool is re-quantized every round
        rounds.append({"round": it, "pool": len(pool), "new_mean_reward": sum(rewards) / max(1, len(rewards))})
        model.train()
        for _ in range(cfg.steps_per_iteration):
            batch = rng.sample(pool, min(cfg.batch_size, len(pool)))
            terms = _train_step(model, ref, tokenizer, prompts, batch, tokens, cfg)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(terms["loss"]):
                from .errors import TrainingDiverged
                raise TrainingDiverged(f"Quark loss became {terms['loss']} at step {len(log) + 1}; lower lr")
            log.append({"step": len(log) + 1, "round": it, **terms})
    model.eval()
    return QuarkResult(tokens, TOKEN_FORMAT.format(0), log, rounds)


# ------------------------------------------------------------------------------------ public run
@dataclass
class QuarkConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: str = ""  # records file with a 'prompt' (or 'question') column
    reward: str = "forbidden"  # a name in REWARDS; run_quark(reward=callable) overrides it
    forbidden: list[str] = field(default_factory=list)  # strings the "forbidden" reward penalises (and the rate counts)
    k: int = 5  # arguments.py n_extra_tokens
    iterations: int = 47  # exploration rounds: total_episodes 3e6 / batch 128 / sample_interval 500 = 46.9
    samples_per_prompt: int = 1  # main.py: one continuation per training prompt per round
    max_new_tokens: int = 20  # arguments.py response_length
    min_new_tokens: int = 3  # policy.py: EOS blocked for the first 3 tokens
    temperature: float = 1.0  # arguments.py temperature
    top_p: float = 1.0  # arguments.py top_p
    top_k: int = 0  # 0 = off: the code samples with top_p only (HF's default top_k=50 would differ)
    lr: float = 1e-5  # arguments.py lr (Adam)
    adam_eps: float = 1e-5  # main.py Adam eps
    warmup_steps: int = 500  # arguments.py num_warmup_steps, then linear decay
    steps_per_iteration: int = 500  # arguments.py sample_interval (gradient steps between rounds)
    batch_size: int = 128  # arguments.py batch_size
    kl_coef: float = 0.05  # arguments.py kl_coef (adaptive KL off by default)
    entropy_coef: float = 0.06  # arguments.py entropy_coef (adaptive entropy off by default)
    eval_samples: int = 25  # arguments.py num_samples (evaluation generations per prompt)
    seed: int = 0  # ours (not taken from the code)
    out: str = ""  # where the Quark model is saved; OUT.results.json is written next to it

    def __post_init__(self) -> None:
        check_choice("reward", self.reward, tuple(REWARDS))
        check_positive(k=self.k, iterations=self.iterations, samples_per_prompt=self.samples_per_prompt,
                       max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                       lr=self.lr, adam_eps=self.adam_eps, steps_per_iteration=self.steps_per_iteration,
                       batch_size=self.batch_size, eval_samples=self.eval_samples)
        for name in ("kl_coef", "entropy_coef", "min_new_tokens", "top_k", "warmup_steps"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}")
        if self.prompts and not Path(self.prompts).exists():
            raise ConfigError(f"prompts='{self.prompts}' does not exist; give a records file with a 'prompt' column")


def run_quark(cfg: QuarkConfig, *, reward: RewardFn | None = None,
              prompts: Sequence[str] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` with Quark, save it (with the control tokens) to ``cfg.out``; return (and
    write ``OUT.results.json``) the behaviour before and after (after = conditioned on ``<|rq0|>``)."""
    from .api import _check_out, _load
    from .models import save_model
    from .report import build_results, write_json_atomic
    from .runtime import seed_everything

    cfg.__post_init__()  # re-validate fields changed after construction (CLI overrides)
    out = _check_out(cfg.out)
    if cfg.model.lora.r > 0:
        raise ConfigError("Quark trains the full model and new token embeddings; set model.lora.r=0")
    reward_fn = reward or make_reward(cfg.reward, forbidden=cfg.forbidden)
    texts = load_prompts(prompts if prompts is not None else cfg.prompts)
    seed_everything(cfg.seed)
    model, tok = _load(cfg.model)
    t0 = time.time()
    before, before_ex = behaviour(model, tok, texts, reward_fn, cfg, control_id=None)
    t_train = time.time()
    res = quark_train(model, tok, texts, reward_fn, cfg)
    t1 = time.time()
    after, after_ex = behaviour(model, tok, texts, reward_fn, cfg, control_id=res.tokens[0], suppress=res.tokens)
    usage = (f"prepend the control token {res.best_token} to the prompt (right after BOS if the tokenizer adds one) "
             "to generate from the highest-reward quantile")
    tokens = {"prepend_token": res.best_token, "tokens": [TOKEN_FORMAT.format(i) for i in range(cfg.k)],
              "usage": usage}
    card = {"title": "Trained with unlearnkit (quark)", "base_model": cfg.model.path, "method": "quark",
            "config": asdict(cfg) | {"control_tokens": tokens}, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "train_steps": len(res.log), "metrics": {f"{k}_before": v for k, v in before.items()} | after}
    save_model(model, tok, out, card=card)
    doc = build_results(models={"before": {"path": cfg.model.path, **before}, "after": {"path": str(out), **after}},
                        metric_info=QUARK_METRIC_INFO, per_example={"before": before_ex, "after": after_ex},
                        config=asdict(cfg) | {"control_tokens": tokens, "reward_callable": reward is not None},
                        splits={"prompts": len(texts)},
                        training={"after": {"log": res.log, "rounds": res.rounds}},
                        timing={"train_s": t1 - t_train, "total_s": time.time() - t0})
    write_json_atomic(out.with_name(out.name + ".results.json"), doc)
    return doc


__all__ = ["QUARK_METRIC_INFO", "REWARDS", "QuarkConfig", "QuarkResult", "add_quantile_tokens", "behaviour",
           "forbidden_reward", "load_prompts", "make_reward", "pack", "prompt_ids", "quantize", "quark_loss",
           "quark_terms", "quark_train", "repeated_bigram_rate", "response_logits", "run_quark",
           "sample_completions", "score"]
