"""The one training loop, for finetuning and for every loss-based unlearning method.

Read top to bottom: seed -> prepare (Accelerate) -> reference pre-pass (or resume from the newest
verified checkpoint) -> steps (grad accumulation, clipping, warmup + schedule) -> per-step log of
every loss term (progress bar + JSONL) -> guards (NaN/inf always stops the run; loss blow-up, retain
probability and gibberish guards are opt-in; a trip rolls back to the last checkpoint and nothing is
saved) -> checkpoints every ``checkpoint_every`` steps (:mod:`unlearnkit.checkpoint`) -> optional
early stop once the forget-set answer probability reaches a target level (Jang et al. 2023 stop on
thresholds). Saving the result is the caller's job, so a failed run never leaves a model behind.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.pair import PairedData
from . import checkpoint as ckpt
from .errors import ConfigError
from .guards import Guards, jsonable_terms, nonfinite
from .logprobs import forward, mean_nll, sequence_logp
from .methods.base import LossOutput, Method, Procedure, nll
from .runtime import seed_everything, set_threads


@dataclass
class TrainConfig:
    """Optimisation settings shared by finetune and unlearn (AdamW, as in TOFU / open-unlearning)."""

    lr: float = 1e-5  # TOFU / open-unlearning default for 7B models
    epochs: float = 5.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0  # fraction of the steps; TOFU warms up for 1 epoch
    scheduler: str = "linear"  # linear | constant | cosine
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    stop_forget_prob: float | None = None  # stop once forget-set mean answer prob <= this
    eval_every: int = 5  # steps between early-stop checks
    track_em_every: int = 0  # log Tirumala M(f) of the anchor set every k steps as "em" (0 = off)
    progress: bool = True
    threads: int | None = None  # torch threads; default = free cores
    checkpoint_every: int = 0  # steps between checkpoints (0 = none); unlearnkit.checkpoint
    keep_checkpoints: int = 2  # newest finished checkpoints kept during the run (resume verifies them)
    checkpoint_dir: str | None = None  # the CLI / API use <out>.checkpoints (removed after a successful save)
    resume: bool = False  # continue from the newest verified checkpoint in checkpoint_dir (if any)
    guard_loss_blowup: float | None = None  # stop when |loss| > this x |loss of step 1| (unlearnkit.guards)
    guard_retain_prob_floor: float | None = None  # stop when retain answer prob < this x its starting value
    guard_gibberish_rate: float | None = None  # stop when more than this fraction of retain answers is gibberish

    def validate(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.lr must be > 0 and train.batch_size/grad_accum >= 1")
        if self.scheduler not in ("linear", "constant", "cosine"):
            raise ConfigError(f"train.scheduler={self.scheduler!r}; choose linear, constant or cosine")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError("train.epochs must be > 0 (or set train.max_steps)")
        if self.track_em_every < 0 or self.eval_every < 1:
            raise ConfigError("train.track_em_every must be >= 0 and train.eval_every >= 1")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("train.checkpoint_every must be >= 0 (0 = none) and train.keep_checkpoints >= 1")
        if (self.checkpoint_every or self.resume) and not self.checkpoint_dir:
            raise ConfigError("train.checkpoint_every / train.resume need train.checkpoint_dir (the CLI sets "
                              "<out>.checkpoints)")
        for name, low, high in (("guard_loss_blowup", 1.0, math.inf), ("guard_retain_prob_floor", 0.0, 1.0),
                                ("guard_gibberish_rate", 0.0, 1.0)):
            value = getattr(self, name)
            if value is not None and not low < value <= high:
                raise ConfigError(f"train.{name}={value} must be in ({low:g}, {high:g}]")


@dataclass
class TrainResult:
    steps: int
    log: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str = ""  # "forget_prob" (reached train.stop_forget_prob) or "method" (its own rule)
    seconds: float = 0.0
    is_main_process: bool = True  # under `accelerate launch`, only the main process saves


class Finetune(Method):
    """Plain supervised finetuning: NLL of the answer tokens of the (anchor) data."""

    @property
    def needs_retain(self) -> bool:
        return False

    def loss(self, model: Any, batch: dict, ref: Any) -> LossOutput:
        loss = nll(model, batch["forget"])
        return LossOutput(loss, {"nll": float(loss.detach())})


def total_steps(cfg: TrainConfig, data: PairedData) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(data.steps_per_epoch(cfg.batch_size) / cfg.grad_accum)
    return max(1, math.ceil(per_epoch * cfg.epochs))


def _lr_lambda(cfg: TrainConfig, n_steps: int):
    warm = int(cfg.warmup_ratio * n_steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.scheduler == "constant":
            return 1.0
        frac = (step - warm) / max(1, n_steps - warm)
        return max(0.0, 1 - frac) if cfg.scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def _forget_views(model: Any, data: PairedData, view: str, batch_size: int):
    """Batches of one forget view in order, on the model's device."""
    device = next(model.parameters()).device
    for start in range(0, len(data.forget), batch_size):
        b = data.forget_batch(list(range(start, min(start + batch_size, len(data.forget)))))[view]
        yield {k: t.to(device) for k, t in b.items()}


@torch.no_grad()
def reference_prepass(model: Any, data: PairedData, views: tuple[str, ...], batch_size: int = 32) -> None:
    """Sequence log-probs of the forget views under the initial model, computed once (B,)."""
    model.eval()
    for view in views:
        out = [sequence_logp(forward(model, b).logits, b["labels"]).float().cpu()
               for b in _forget_views(model, data, view, batch_size)]
        data.ref_logp[view] = torch.cat(out)


@torch.no_grad()
def answer_prob(model: Any, batches: Any) -> float:
    """Mean TOFU answer probability exp(-mean NLL) over the examples of ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    probs = [torch.exp(-mean_nll(forward(model, b).logits, b["labels"])).cpu() for b in batches]  # (B,) each
    model.train(was_training)
    return float(torch.cat(probs).mean())


@torch.no_grad()
def forget_prob(model: Any, data: PairedData, batch_size: int = 32) -> float:
    """Mean TOFU answer probability over the forget examples (early stopping)."""
    return answer_prob(model, _forget_views(model, data, "forget", batch_size))


@torch.no_grad()
def memorization_of(model: Any, data: PairedData, batch_size: int = 32) -> float:
    """Tirumala et al. 2022 M(f) of the anchor records (the forget set when unlearning, the training
    set when finetuning): teacher-forced argmax accuracy over every supervised token (answer + EOS,
    the pairs the loss trains on). The memorization-curve callback of :func:`run`."""
    from .metrics.memorization import memorization_m_f

    was_training = model.training
    model.eval()
    matches = []
    for b in _forget_views(model, data, "forget", batch_size):
        pred = forward(model, b).logits[:, :-1].argmax(-1)  # (B, T-1) next-token predictions
        labels = b["labels"][:, 1:]  # (B, T-1)
        for row_pred, row_lab in zip(pred, labels):
            keep = row_lab != -100
            matches.append((row_pred[keep] == row_lab[keep]).cpu().numpy())
    model.train(was_training)
    return memorization_m_f(token_match=matches).value


def run(
    model: Any,
    method: Method,
    data: PairedData,
    cfg: TrainConfig,
    *,
    ref: Any | None = None,
    log_path: str | Path | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place with ``method.loss`` on forget-anchored batches; return the log."""
    from accelerate import Accelerator

    cfg.validate()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    started = time.perf_counter()
    if method.needs_ref_model and ref is None:
        raise ConfigError(f"{type(method).__name__} needs a frozen reference model: pass ref=frozen_copy(model)")
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    model.to(acc.device)  # the pre-pass and method.prepare run on the training device
    method.prepare(model, data, cfg)
    resume_from = _resume_point(cfg)
    ref_key = ckpt.ref_cache_key(data, method.ref_logp_views, model) if method.ref_logp_views else None
    if method.ref_logp_views and resume_from is None:  # a checkpoint carries them (same cache key)
        reference_prepass(model, data, method.ref_logp_views)
    try:
        method.select_params(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters; check the LoRA / mask settings")
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n_steps = total_steps(cfg, data)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, n_steps))
        run_ = _Run(ckpt.run_signature(cfg, method), ref_key, Guards.from_config(cfg, data))
        if resume_from is not None:
            ckpt.check_signature(ckpt.read_meta(resume_from), run_.signature, resume_from)
            run_.meta = ckpt.restore(resume_from, model=model, optimizer=opt, scheduler=sched, data=data,
                                     ref_key=ref_key)
        # The scheduler is not prepared: Accelerate would step it once per process, but every
        # process here sees a slice of the same global batch, so it must step once per update.
        model, opt = acc.prepare(model, opt)
        if ref is not None:
            ref.to(acc.device)
        method.setup(model, ref)
        return _loop(model, method, data, cfg, acc, opt, sched, ref, n_steps, log_path, desc, started, run_)
    finally:
        method.teardown(model)


def stage_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` for an auxiliary training stage: no checkpoints, no resume, no opt-in guards (those
    belong to the user's run; NaN still stops a stage)."""
    from dataclasses import replace

    return replace(cfg, checkpoint_every=0, resume=False, guard_loss_blowup=None, guard_retain_prob_floor=None,
                   guard_gibberish_rate=None)


def finetune_frozen(model: Any, data: PairedData, cfg: TrainConfig, *, epochs: float, lr: float | None = None,
                    desc: str = "stage") -> Any:
    """A method's auxiliary model: ``model`` (copied by the caller if it must survive) finetuned on
    the anchor view of ``data`` for ``epochs`` at ``lr`` (None or 0: ``cfg.lr``), then frozen (eval
    mode, no gradients). The run's stopping and tracking settings do not apply to this stage.
    Used by WHP's reinforced model and KGA's A_f / A_n."""
    from dataclasses import replace

    stage = replace(stage_config(cfg), lr=lr or cfg.lr, epochs=epochs, max_steps=None, stop_forget_prob=None,
                    track_em_every=0)
    run(model, Finetune(), data, stage, desc=desc)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_method(
    model: Any,
    method: Method,
    data: PairedData,
    cfg: TrainConfig,
    *,
    ref: Any | None = None,
    log_path: str | Path | None = None,
    desc: str = "train",
) -> TrainResult:
    """Unlearn with any registered method: the shared loop (:func:`run`) for loss methods,
    ``method.apply`` for procedure methods (which call :func:`run` for their own stages)."""
    if isinstance(method, Procedure):
        cfg.validate()
        if cfg.checkpoint_every or cfg.resume:
            warnings.warn(f"{type(method).__name__} runs in stages of its own: train.checkpoint_every / train.resume "
                          "apply to loss methods only; running without checkpoints", stacklevel=2)
        cfg = stage_config(cfg)
        set_threads(cfg.threads)
        seed_everything(cfg.seed)
        return method.apply(model, data, cfg, ref=ref, log_path=log_path, desc=desc)
    return run(model, method, data, cfg, ref=ref, log_path=log_path, desc=desc)


@dataclass
class _Run:
    """What the loop carries for checkpoints and guards: the settings a resume must match, the
    reference log-prob key, the guards, and the metadata of the checkpoint resumed from (if any)."""

    signature: dict[str, Any]
    ref_key: str | None
    guards: Guards
    meta: dict[str, Any] | None = None


def _resume_point(cfg: TrainConfig) -> Path | None:
    """The newest verified checkpoint to resume from (``cfg.resume``), reporting skipped ones."""
    if not cfg.resume:
        return None
    path, skipped = ckpt.latest_checkpoint(cfg.checkpoint_dir or "")
    ckpt.warn_skipped(skipped)
    if path is None and cfg.progress:
        print(f"no verified checkpoint in {cfg.checkpoint_dir}; starting from step 0", flush=True)
    return path


def _loop(model, method, data, cfg, acc, opt, sched, ref, n_steps, log_path, desc, started, run_) -> TrainResult:
    meta = run_.meta or {"step": 0, "micro_batches": 0, "log": [], "guards": {}}
    result = TrainResult(steps=meta["step"], log=list(meta["log"]))
    stream = data.batches(cfg.batch_size, seed=cfg.seed, rank=acc.process_index, world=acc.num_processes,
                          start=meta["micro_batches"])
    log_fh = open(log_path, "w", encoding="utf-8") if log_path and acc.is_main_process else None
    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, redirects)
    bar = tqdm(total=n_steps, initial=meta["step"], desc=desc,
               disable=None if cfg.progress and acc.is_main_process else True, leave=False)
    model.train()
    guards = run_.guards
    if run_.meta is None:
        guards.start(model, data)
        if cfg.track_em_every:  # the memorization curve starts at the model before training
            result.log.append({"step": 0, "em": memorization_of(model, data)})
    else:
        guards.first_loss, guards.start_retain_prob = meta["guards"].get("first_loss"), meta["guards"].get("start_retain_prob")
        ckpt.set_rng_state(meta["rng"])  # after every setup step that draws random numbers
    try:
        for record in result.log if log_fh else ():  # a resumed run's log is the whole run's
            log_fh.write(json.dumps(record) + "\n")
        for step in range(meta["step"] + 1, n_steps + 1):
            t_step = time.perf_counter()
            terms = _one_step(model, method, stream, cfg, acc, opt, sched, ref, step)
            result.stopped_early = bool(terms.pop("_stop", 0.0))  # the method's own stopping rule
            result.stop_reason = "method" if result.stopped_early else ""
            record = {"step": step, **terms, "lr": sched.get_last_lr()[0], "step_s": time.perf_counter() - t_step}
            result.log.append(record)
            result.steps = step
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()})
            evaluate = step % cfg.eval_every == 0
            why = _guard_trip(guards, step, record, model, data, evaluate)
            if _any_process(acc, why is not None) and why is None:  # all processes stop together
                why = f"another process stopped the run at step {step} (a guard tripped there)"
            if cfg.stop_forget_prob is not None and evaluate and why is None:
                record["forget_prob"] = forget_prob(model, data)
                if not result.stopped_early and record["forget_prob"] <= cfg.stop_forget_prob:
                    result.stopped_early, result.stop_reason = True, "forget_prob"
            if cfg.track_em_every and why is None and (step % cfg.track_em_every == 0 or step == n_steps
                                                       or result.stopped_early):
                record["em"] = memorization_of(model, data)
            if log_fh:
                log_fh.write(json.dumps(jsonable_terms(record)) + "\n")
                log_fh.flush()
            if why is not None:
                raise ckpt.roll_back(cfg.checkpoint_dir, acc.unwrap_model(model), why,
                                     {"step": step, "record": jsonable_terms(record)})
            if result.stopped_early:
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < n_steps:
                _checkpoint(model, data, cfg, acc, opt, sched, run_, step, result.log)
    finally:
        bar.close()
        if log_fh:
            log_fh.close()
    model.eval()
    acc.wait_for_everyone()
    result.seconds = time.perf_counter() - started
    result.is_main_process = acc.is_main_process
    return result


def _any_process(acc: Any, flag: bool) -> bool:
    """True when ``flag`` is true on any process (one all-reduce under several processes), so a
    non-finite loss or a tripped guard on one process never leaves the others waiting forever."""
    if acc.num_processes == 1:
        return flag
    return bool(acc.reduce(torch.tensor([float(flag)], device=acc.device), reduction="sum").item() > 0)


def _guard_trip(guards: Guards, step: int, record: dict[str, Any], model: Any, data: PairedData,
                evaluate: bool) -> str | None:
    """Why the run must stop after this step: a non-finite term (always), or an opt-in guard."""
    bad = nonfinite({k: v for k, v in record.items() if isinstance(v, float)})
    if bad:
        return f"loss became non-finite at step {step} ({', '.join(f'{k}={record[k]}' for k in bad)})"
    why = guards.check(step, record["loss"], model, data, evaluate) if guards.active else None
    record.update(guards.last)
    return why


def _checkpoint(model, data, cfg, acc, opt, sched, run_, step, log) -> None:
    """Write checkpoint ``step`` from the main process; every process waits for it."""
    if acc.is_main_process:
        g = run_.guards
        ckpt.save_checkpoint(cfg.checkpoint_dir, step, model=acc.unwrap_model(model), optimizer=opt, scheduler=sched,
                             data=data, signature=run_.signature, micro_batches=step * cfg.grad_accum,
                             ref_key=run_.ref_key, log=log, keep=cfg.keep_checkpoints,
                             guards={"first_loss": g.first_loss, "start_retain_prob": g.start_retain_prob})
    acc.wait_for_everyone()


def _one_step(model, method, stream, cfg, acc, opt, sched, ref, step) -> dict[str, float]:
    """One optimizer step = ``grad_accum`` micro-batches; returns the mean of each logged term.
    A non-finite loss returns at once, before any backward pass or update."""
    sums: dict[str, float] = {}
    for _ in range(cfg.grad_accum):
        batch = next(stream)
        batch = {v: {k: t.to(acc.device) for k, t in d.items()} for v, d in batch.items()}
        with acc.accumulate(model):
            out = method.loss(model, batch, ref)
            terms = {"loss": float(out.loss.detach()), **out.logs}
            if _any_process(acc, bool(nonfinite(terms))):  # every process skips the backward pass together
                return terms
            acc.backward(out.loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()  # a no-op on accumulation micro-steps (Accelerate)
            if acc.sync_gradients:
                sched.step()
            opt.zero_grad(set_to_none=True)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        if out.stop:
            sums["_stop"] = 1.0
    return sums
