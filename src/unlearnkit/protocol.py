"""``unlearnkit bench tofu``: the TOFU protocol end to end, resumable (Maini et al. 2024, §4).

Steps, each recorded in ``OUT/protocol.json`` with a fingerprint of the settings that made it:

1. ``data``    the benchmark folder, or a subset of ``authors`` authors with the same forget share;
2. ``base``    the given model directory, or a tiny Llama + tokenizer built on the benchmark text;
3. ``target``  finetune the base on ``full``;  4. ``retain``  finetune it on ``retainXX``;
5. evaluate the retain model (the reference for forget quality and privleak) and the target;
6. ``unlearn:<tag>`` unlearn the forget split from the target with a method; evaluate it;
7. write ``results.json`` + ``report.html`` with every model evaluated in OUT so far.

A step whose output exists with the same fingerprint is skipped, so an interrupted protocol
resumes, and running it again with another ``method`` (and ``tag``) reuses the finetuned models:
that is how several methods are compared on the same target. A step whose settings changed is
an error (delete its output or pick another ``out``) rather than a silent mix of two settings.
The metric set is TOFU's as open-unlearning computes it (see ``evaluation.py``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import api
from .config import DataConfig, EvalConfig, FinetuneConfig, ModelConfig, UnlearnConfig, build_method
from .data.format import PromptTemplate
from .data.records import read_rows
from .errors import ConfigError, DataError
from .evaluation import METRIC_INFO, apply_reference, evaluate_model, load_tofu_splits, tofu_split_files
from .metrics.probes import ProbeSettings
from .models import TinyModelSpec, add_card_metrics, build_tiny_model, check_model_dir, load_model, load_tokenizer
from .registry import METHODS
from .train import TrainConfig

# Settings that change how fast a step runs but not what it produces (left out of fingerprints).
_VOLATILE = {"progress", "threads"}


@dataclass
class TofuProtocolConfig:
    """Defaults are TOFU's (paper §4, open-unlearning ``configs/experiment``) for a real model;
    ``configs/bench_tofu_tiny.yaml`` holds the CPU preset measured on 2 cores."""

    data_dir: str = ""  # a folder in the TOFU file layout (e.g. ../shared/data/tofu)
    split: str = "forget10"  # forget01 | forget05 | forget10 (retain99/95/90 follow)
    out: str = "runs/tofu"
    model: ModelConfig = field(default_factory=ModelConfig)  # empty path: build a tiny model on the data
    tiny: TinyModelSpec = field(default_factory=lambda: TinyModelSpec(max_position_embeddings=1024))
    authors: int | None = None  # keep this many authors (same forget share) for a CPU-sized run
    qa_per_author: int = 20  # TOFU: 20 QA per author, in contiguous blocks
    # TOFU finetuning: lr 1e-5, 5 epochs, effective batch 32, 1 warm-up epoch, weight decay 0.01
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-5, epochs=5, batch_size=4, grad_accum=8, warmup_ratio=0.2))
    method: str = "npo"
    method_args: dict[str, Any] = field(default_factory=dict)
    tag: str = ""  # name of this unlearning run in OUT (default: the method name)
    # open-unlearning TOFU unlearning: lr 1e-5, 10 epochs, batch 4 x accumulation 4, 1 warm-up epoch
    unlearn: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-5, epochs=10, batch_size=4, grad_accum=4, warmup_ratio=0.1))
    stop_margin: float | None = None  # stop unlearning at the retain model's forget prob + margin
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 512

    def retain_split(self) -> str:
        m = re.fullmatch(r"forget(\d+)", self.split)
        if not m:
            raise ConfigError(f"split={self.split!r}; expected forget01, forget05 or forget10")
        return f"retain{100 - int(m.group(1)):02d}"

    def run_tag(self) -> str:
        tag = self.tag or self.method
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", tag) or tag in ("target", "retain", "base", "data"):
            raise ConfigError(f"tag={tag!r}: use letters, digits and _.+- (and not target/retain/base/data)")
        return tag


# --------------------------------------------------------------------------------------- state


def _settings(x: Any) -> Any:
    """What of ``x`` defines a result: dataclass fields that differ from the class default (so a
    field added in a later version, at its default, does not invalidate earlier runs), recursively;
    speed-only keys dropped."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        try:
            default = type(x)()
        except TypeError:  # no default for some field: keep every field
            default = None
        out = {}
        for f in dataclasses.fields(x):
            value = getattr(x, f.name)
            if f.name in _VOLATILE or (default is not None and value == getattr(default, f.name)):
                continue
            out[f.name] = _settings(value)
        return out
    if isinstance(x, dict):
        return {k: _settings(v) for k, v in sorted(x.items()) if k not in _VOLATILE}
    return [_settings(v) for v in x] if isinstance(x, (list, tuple)) else x


def fingerprint(*parts: Any) -> str:
    """A short hash of settings (dataclasses / dicts), ignoring speed-only keys and defaults."""
    text = json.dumps([_settings(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class State:
    """``OUT/protocol.json``: step -> {fingerprint, seconds, finished}; written atomically."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.path, self.log = out / "protocol.json", log
        self.steps: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.steps = json.loads(self.path.read_text(encoding="utf-8"))["steps"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{self.path} is damaged ({exc}); delete it to start the protocol again") from exc

    def done(self, step: str, fp: str, output: Path) -> bool:
        """True if ``step`` already ran with these settings and its output is there."""
        rec = self.steps.get(step)
        if rec is None or not output.exists():
            return False
        if rec["fingerprint"] != fp:
            raise ConfigError(
                f"step '{step}' in {self.path.parent} was made with other settings; delete '{output}' "
                "(and the steps after it) to redo it, or use another --out")
        self.log(f"  [skip] {step}: done at {rec['finished']} with the same settings")
        return True

    def record(self, step: str, fp: str, seconds: float) -> None:
        from .report import write_json_atomic

        self.steps[step] = {"fingerprint": fp, "seconds": round(seconds, 2),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.path, {"protocol": "tofu", "steps": self.steps})


# --------------------------------------------------------------------------------------- data subset


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def subset_tofu(src: Path, dst: Path, split: str, retain_split: str, *, authors: int, per_author: int) -> dict[str, int]:
    """Write a TOFU-layout folder with ``authors`` authors and the split's forget share: the first
    authors of ``forgetXX`` are forgotten, the first of ``retainYY`` kept; evaluation files are
    filtered to those authors (real authors / world facts are copied whole). Returns row counts."""
    pct = int(split.removeprefix("forget"))
    n_forget = max(1, round(authors * pct / 100))
    n_retain = authors - n_forget
    if n_retain < 1:
        raise ConfigError(f"authors={authors} leaves no retain author at {split}; use at least {n_forget + 1}")
    files = tofu_split_files(src, split)
    forget = read_rows(src / f"{split}.json") if (src / f"{split}.json").is_file() else read_rows(files["forget"])
    retain_file = src / f"{retain_split}.json"
    if not retain_file.is_file():
        raise DataError(f"'{src}' has no {retain_split}.json, needed to finetune the retain model")
    retain = read_rows(retain_file)
    nf, nr = n_forget * per_author, n_retain * per_author
    if len(forget) < nf or len(retain) < nr:
        raise ConfigError(f"authors={authors} needs {nf} forget and {nr} retain rows; {src} has "
                          f"{len(forget)} and {len(retain)} (lower --authors or check qa_per_author)")
    forget, retain = forget[:nf], retain[:nr]
    keep = {r.get("question") for r in forget}
    kept_retain = {r.get("question") for r in retain}
    out = {"full.json": retain + forget, f"{split}.json": forget, f"{retain_split}.json": retain,
           f"{split}_perturbed.json": [r for r in read_rows(files["forget"]) if r.get("question") in keep]}
    if "retain" in files:
        out["retain_perturbed.json"] = [r for r in read_rows(files["retain"]) if r.get("question") in kept_retain]
        if not out["retain_perturbed.json"]:
            raise ConfigError(f"no row of retain_perturbed.json belongs to the first {n_retain} authors; raise --authors")
    if "holdout" in files:
        out[files["holdout"].name] = read_rows(files["holdout"])[:nf]
    for name in ("real_authors", "world_facts"):
        if name in files:
            out[files[name].name] = read_rows(files[name])
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    tmp.mkdir(parents=True)
    for name, rows in out.items():
        _write_rows(tmp / name, rows)
    shutil.rmtree(dst, ignore_errors=True)  # our own derived copy, being redone
    tmp.rename(dst)
    return {name: len(rows) for name, rows in out.items()}


def _corpus(data_dir: Path) -> list[str]:
    """Every string of the benchmark folder (to train the tiny model's tokenizer on)."""
    texts: list[str] = []
    for f in sorted(data_dir.glob("*.json")):
        if f.name == "counts.json":
            continue
        for row in read_rows(f):
            for v in row.values():
                texts += [v] if isinstance(v, str) else [s for s in v if isinstance(s, str)] if isinstance(v, list) else []
    return texts


# --------------------------------------------------------------------------------------- steps


class Protocol:
    """One run of the TOFU protocol; each ``step_*`` method skips itself when already done."""

    def __init__(self, cfg: TofuProtocolConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.cfg, self.log, self.progress = cfg, log, progress
        self.out = Path(cfg.out)
        self.tag, self.retain_split = cfg.run_tag(), cfg.retain_split()
        build_method(cfg.method, cfg.method_args)  # a bad method fails before any finetuning
        if not cfg.data_dir:
            raise ConfigError("data_dir is not set; pass --data-dir DIR (a folder in the TOFU file layout)")
        tofu_split_files(cfg.data_dir, cfg.split)  # a bad data_dir or split fails now, too
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = State(self.out, log)
        self._splits: dict | None = None

    def _timed(self, step: str, fp: str, output: Path, work: Callable[[], None]) -> None:
        if self.state.done(step, fp, output):
            return
        self.log(f"  [run]  {step} ...")
        t = time.perf_counter()
        work()
        self.state.record(step, fp, time.perf_counter() - t)
        self.log(f"  [done] {step} in {time.perf_counter() - t:.0f}s")

    def step_data(self) -> tuple[Path, str]:
        cfg = self.cfg
        src = Path(cfg.data_dir).resolve()
        if cfg.authors is None:
            return src, fingerprint(str(src), cfg.split)
        fp = fingerprint(str(src), cfg.split, cfg.authors, cfg.qa_per_author)
        dst = self.out / "data"

        def work() -> None:
            counts = subset_tofu(src, dst, cfg.split, self.retain_split, authors=cfg.authors, per_author=cfg.qa_per_author)
            self.log(f"         subset of {cfg.authors} authors: {counts}")
        self._timed("data", fp, dst, work)
        return dst, fp

    def step_base(self, data_dir: Path, fp_data: str) -> tuple[Path, str]:
        if self.cfg.model.path:
            path = check_model_dir(self.cfg.model.path, allow_pickle=self.cfg.model.allow_pickle)
            stamp = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir() if f.is_file())
            return path, fingerprint(str(path.resolve()), stamp)  # a model replaced in place is a new base
        fp = fingerprint(fp_data, self.cfg.tiny)
        out = self.out / "base"
        self._timed("base", fp, out, lambda: build_tiny_model(_corpus(data_dir), out, self.cfg.tiny))
        return out, fp

    def step_finetune(self, name: str, base: Path, records: Path, fp_base: str) -> str:
        cfg = self.cfg
        fp = fingerprint(fp_base, records.name, cfg.finetune, cfg.template, cfg.max_length, cfg.model.lora)
        ft = FinetuneConfig(model=ModelConfig(path=str(base), lora=cfg.model.lora),
                            data=DataConfig(train=str(records), template=cfg.template, max_length=cfg.max_length),
                            train=_with_progress(cfg.finetune, self.progress), out=str(self.out / name))
        self._timed(name, fp, self.out / name, lambda: api.finetune(ft))
        return fp

    def splits(self, data_dir: Path) -> dict:
        if self._splits is None:
            self._splits = load_tofu_splits(self._eval_cfg(data_dir))
        return self._splits

    def _eval_cfg(self, data_dir: Path) -> EvalConfig:
        probe = ProbeSettings(**{**asdict(self.cfg.probe), "progress": self.progress})
        return EvalConfig(data_dir=str(data_dir), forget_split=self.cfg.split, probe=probe, template=self.cfg.template)

    def step_eval(self, name: str, model_dir: Path, fp_model: str, data_dir: Path, reference: str | None) -> str:
        """Evaluate ``model_dir`` into ``OUT/eval/<name>.json``; ``reference`` names another eval."""
        from .report import build_results, load_results, write_json_atomic

        ref_fp = self.state.steps.get(f"eval:{reference}", {}).get("fingerprint") if reference else None
        fp = fingerprint(fp_model, self.cfg.probe, self.cfg.template, ref_fp)
        path = self.out / "eval" / f"{name}.json"

        def work() -> None:
            ref = api.reference_from_results(load_results(self.out / "eval" / f"{reference}.json")) if reference else None
            ev = evaluate_model(load_model(model_dir), load_tokenizer(model_dir), self._eval_cfg(data_dir),
                                splits=self.splits(data_dir), reference=ref)
            if reference is None:
                apply_reference(ev, ev)  # the retain model against itself: forget quality 1, privleak 0
            doc = build_results(models={name: {"path": str(model_dir), **ev["values"]}}, metric_info=METRIC_INFO,
                                per_example={name: ev["per_example"]}, timing={"eval_s": ev["seconds"]},
                                config={"data_dir": str(data_dir), "split": self.cfg.split, "probe": asdict(self.cfg.probe)},
                                splits={k: len(v) for k, v in self.splits(data_dir).items()})
            write_json_atomic(path, doc)
        self._timed(f"eval:{name}", fp, path, work)
        return fp

    def step_unlearn(self, data_dir: Path, fp_target: str) -> tuple[Path, str]:
        cfg, tag = self.cfg, self.tag
        args = self._method_args(data_dir)  # with the inputs filled from the benchmark: part of the fingerprint
        fp = fingerprint(fp_target, cfg.method, args, cfg.unlearn, cfg.stop_margin, cfg.template,
                         cfg.max_length, cfg.model.lora, self.state.steps.get("eval:retain", {}).get("fingerprint"))
        out = self.out / f"unlearned_{tag}"

        def work() -> None:
            train = _with_progress(cfg.unlearn, self.progress)
            # the early stop is the loop's; a procedure method (task_vector) has no loop to stop
            if cfg.stop_margin is not None and METHODS.meta[cfg.method].get("kind") == "loss":
                retain_forget_prob = json.loads((self.out / "eval" / "retain.json").read_text())["models"]["retain"]["forget_prob"]
                train.stop_forget_prob = retain_forget_prob + cfg.stop_margin
            ucfg = UnlearnConfig(
                model=ModelConfig(path=str(self.out / "target"), lora=cfg.model.lora),
                data=DataConfig(forget=str(self._forget_file(data_dir)), retain=str(data_dir / f"{self.retain_split}.json"),
                                template=cfg.template, max_length=cfg.max_length),
                method=cfg.method, method_args=args, train=train, out=str(out))
            res = api.unlearn(ucfg)
            why = {"forget_prob": " (stopped early at the retain level)", "method": " (stopped by the method's own rule)"}
            self.log(f"         {res.steps} steps{why.get(res.stop_reason, '')}")
        self._timed(f"unlearn:{tag}", fp, out, work)
        return out, fp

    def _method_args(self, data_dir: Path) -> dict[str, Any]:
        """The method's settings, with the inputs it needs from the user filled from the benchmark
        when left empty: ``new_data`` (a non-member set from the training distribution, KGA's
        D_n) = the split's holdout file; ``terms`` (WHP's anchored-term dictionary) = the
        synthetic benchmark's ``forgetNN_terms.csv`` when the data folder has one (TOFU has none).
        The holdout set is also the non-member side of the MIA metrics, so such a method has seen
        (through an auxiliary model) what non-members look like."""
        args = dict(self.cfg.method_args)
        inputs = METHODS.meta[self.cfg.method].get("inputs", ())
        if "new_data" in inputs and not args.get("new_data"):
            files = tofu_split_files(data_dir, self.cfg.split)
            if "holdout" not in files:
                raise DataError(f"method '{self.cfg.method}' needs a non-member set and '{data_dir}' has no "
                                f"holdout file for {self.cfg.split}; pass method.new_data=FILE")
            args["new_data"] = str(files["holdout"])
        terms = data_dir / f"{self.cfg.split}_terms.csv"  # the synthetic benchmark's names -> fresh names
        if "terms" in {f.name for f in dataclasses.fields(METHODS.get(self.cfg.method))} \
                and not args.get("terms") and terms.is_file():
            args["terms"] = str(terms)
        return args

    def _forget_file(self, data_dir: Path) -> Path:
        """The forget split; for a method that prefers alternate answers (``dpo``: field
        ``alternate_key``) and a split without that column, a copy where each record's alternate
        is the answer of another forget record (:func:`with_swapped_alternates`). TOFU ships no
        alternates (AltPO writes them with an LLM) and its perturbed answers are what the truth
        ratio measures, so using them would leak the evaluation into training."""
        path = data_dir / f"{self.cfg.split}.json"
        key = self.cfg.method_args.get("alternate_key", getattr(METHODS.get(self.cfg.method), "alternate_key", None))
        rows = read_rows(path) if isinstance(key, str) else []
        if not rows or all(key in r for r in rows):
            return path
        out = self.out / "inputs" / f"{self.cfg.split}_{key}.json"
        if not out.is_file():
            from .report import write_json_atomic

            out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out, with_swapped_alternates(rows, key, seed=self.cfg.unlearn.seed))
        return out


def with_swapped_alternates(rows: list[dict[str, Any]], key: str, *, seed: int = 0) -> list[dict[str, Any]]:
    """Copies of ``rows`` whose ``key`` column holds the answer of another row (a seeded cycle over
    a shuffled order, skipping rows with the same answer): a stand-in for AltPO's LLM-written
    alternate answers when a benchmark has none. Rows whose answer every other row shares keep
    no alternate."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = [dict(r) for r in rows]
    for pos, i in enumerate(order):
        for step in range(1, len(order)):
            j = order[(pos + step) % len(order)]
            if rows[j].get("answer") != rows[i].get("answer"):
                out[i][key] = rows[j].get("answer")
                break
    return out


def _with_progress(tc: TrainConfig, progress: bool) -> TrainConfig:
    return TrainConfig(**{**asdict(tc), "progress": progress and tc.progress})


def _needs_data_file(data_dir: Path, name: str) -> Path:
    p = data_dir / name
    if not p.is_file():
        raise DataError(f"'{data_dir}' has no {name}; the TOFU protocol needs it")
    return p


def run_tofu_protocol(cfg: TofuProtocolConfig, *, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the TOFU protocol; return the combined results document of OUT."""
    t0 = time.perf_counter()
    p = Protocol(cfg, log, progress)
    log(f"TOFU protocol: {cfg.split} / {p.retain_split}, method {cfg.method} (tag '{p.tag}') -> {p.out}")
    data_dir, fp_data = p.step_data()
    base, fp_base = p.step_base(data_dir, fp_data)
    fp_target = p.step_finetune("target", base, _needs_data_file(data_dir, "full.json"), fp_base)
    fp_retain = p.step_finetune("retain", base, _needs_data_file(data_dir, f"{p.retain_split}.json"), fp_base)
    p.step_eval("retain", p.out / "retain", fp_retain, data_dir, None)
    p.step_eval("target", p.out / "target", fp_target, data_dir, "retain")
    unlearned, fp_u = p.step_unlearn(data_dir, fp_target)
    p.step_eval(p.tag, unlearned, fp_u, data_dir, "retain")
    doc = collect_results(p.out, cfg)
    headline = ("forget_prob", "retain_prob", "forget_truth_ratio", "forget_quality", "model_utility", "privleak")
    add_card_metrics(unlearned, {k: doc["models"][p.tag].get(k) for k in headline})
    log(f"protocol finished in {time.perf_counter() - t0:.0f}s -> {p.out / 'results.json'}, {p.out / 'report.html'}")
    return doc


def collect_results(out: Path, cfg: TofuProtocolConfig | None = None) -> dict[str, Any]:
    """Merge every ``OUT/eval/*.json`` (target, retain, each unlearning run) into OUT/results.json
    and OUT/report.html, with the training logs and the time of each step."""
    from .report import build_results, load_results, write_html, write_json_atomic

    state = json.loads((out / "protocol.json").read_text(encoding="utf-8"))["steps"]
    order = ["retain", "target"] + sorted(k.split(":", 1)[1] for k in state if k.startswith("eval:")
                                          and k not in ("eval:retain", "eval:target"))
    models, per_ex, training, splits = {}, {}, {}, {}
    for name in order:
        f = out / "eval" / f"{name}.json"
        if not f.is_file():
            continue
        doc = load_results(f)
        models[name], per_ex[name] = doc["models"][name], doc["per_example"].get(name, {})
        splits = doc.get("splits") or splits
        log_file = out / (f"unlearned_{name}" if name not in ("retain", "target") else name)
        log_file = log_file.with_name(log_file.name + ".train_log.jsonl")
        if log_file.is_file():
            training[name] = {"log": [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]}
    doc = build_results(models=models, metric_info=METRIC_INFO, per_example=per_ex, config=_shared_config(out, cfg, models),
                        command="unlearnkit bench tofu", splits=splits, training=training,
                        timing={k: v["seconds"] for k, v in state.items()})
    write_json_atomic(out / "results.json", doc)
    write_html(doc, out / "report.html")
    return doc


def _shared_config(out: Path, cfg: TofuProtocolConfig | None, models: dict) -> dict[str, Any]:
    """The protocol settings shared by every model of OUT, plus each unlearning run's own method,
    hyperparameters and training settings (read from its model card), under ``unlearning_runs``."""
    shared = {k: v for k, v in asdict(cfg).items() if k not in ("method", "method_args", "tag", "unlearn")} if cfg else {}
    runs = {}
    for name in models:
        card = out / f"unlearned_{name}" / "unlearnkit.json"
        if card.is_file():
            c = json.loads(card.read_text(encoding="utf-8")).get("config") or {}
            runs[name] = {"method": c.get("method"), "method_args": c.get("method_args"), "train": c.get("train")}
    return {**shared, "unlearning_runs": runs}


__all__ = ["TofuProtocolConfig", "run_tofu_protocol", "collect_results", "subset_tofu", "fingerprint"]
