"""Step throughput of our loop vs a bare PyTorch loop, and NPO vs GA cost (issue 2, part 10).

Each measurement runs in its own subprocess (so peak RSS is per configuration), on the same tiny
Llama model, the same forget/retain batches (synthetic benchmark, batch 16) and AdamW. Printed:
  ours/bare tokens/s for grad_diff and npo       target >= 0.90
  NPO step time / GA step time                   target <= 1.15 (reference log-probs pre-computed)
  NPO peak RSS / GA peak RSS                     target <= 1.10 (no second model resident)
Run: python bench/step_throughput.py [--steps 40] [--threads 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 5
# kind -> (method, hyperparameters). "npo_forget_only" isolates the cost of NPO's reference term
# against plain gradient ascent (both run one forward/backward on the forget batch only).
KINDS = {
    "bare_grad_diff": ("grad_diff", {}), "ours_grad_diff": ("grad_diff", {}),
    "bare_npo": ("npo", {}), "ours_npo": ("npo", {}),
    "ours_grad_ascent": ("grad_ascent", {}), "ours_npo_forget_only": ("npo", {"retain_loss": "none"}),
}


def _setup(tmp: Path):
    from unlearnkit.data.records import load_examples
    from unlearnkit.data.synthetic import corpus_text, write_tofu_layout
    from unlearnkit.models import TinyModelSpec, build_tiny_model, load_model, load_tokenizer

    write_tofu_layout(tmp / "data", n_people=40, seed=0)
    rows = [json.loads(l) for f in ("full.json", "forget10_perturbed.json") for l in (tmp / "data" / f).read_text().splitlines()]
    build_tiny_model(corpus_text(rows), tmp / "m", TinyModelSpec(hidden_size=256, intermediate_size=512, num_hidden_layers=4))
    forget, retain = load_examples(tmp / "data/forget10.json"), load_examples(tmp / "data/retain90.json")
    return load_model(tmp / "m"), load_tokenizer(tmp / "m"), forget, retain


def _tokens(batch) -> int:
    return int(sum(int(v["attention_mask"].sum()) for v in batch.values()))


def worker(kind: str, steps: int) -> dict:
    import torch

    from unlearnkit.config import build_method
    from unlearnkit.data.pair import build_paired
    from unlearnkit.logprobs import batch_nll, sequence_logp
    from unlearnkit.train import TrainConfig, reference_prepass, run

    with tempfile.TemporaryDirectory() as d:
        model, tok, forget, retain = _setup(Path(d))
        name, args = KINDS[kind]
        method = build_method(name, args)
        data = build_paired(method, forget, retain, tok)
        batches = data.batches(16, seed=0)
        first = next(data.batches(16, seed=0))
        views = ("forget", "retain") if method.needs_retain else ("forget",)
        tok_per_step = _tokens({k: v for k, v in first.items() if k in views})
        if kind.startswith("ours"):
            cfg = TrainConfig(lr=1e-5, max_steps=steps + WARMUP, batch_size=16, progress=False, threads=torch.get_num_threads())
            res = run(model, method, data, cfg)
            times = [r["step_s"] for r in res.log[WARMUP:]]
        else:  # bare PyTorch: the same maths written inline, no framework
            if name == "npo":
                reference_prepass(model, data, ("forget",))
                batches = data.batches(16, seed=0)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
            model.train()
            times = []
            for i in range(steps + WARMUP):
                b = next(batches)
                t = time.perf_counter()
                f, r = b["forget"], b["retain"]
                out_f = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
                if name == "npo":
                    lp = sequence_logp(out_f, f["labels"])
                    forget_loss = -2 / 0.1 * torch.nn.functional.logsigmoid(-0.1 * (lp - f["ref_logp"])).mean()
                else:
                    forget_loss = -batch_nll(out_f, f["labels"])
                out_r = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
                loss = forget_loss + batch_nll(out_r, r["labels"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= WARMUP:
                    times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    return {"kind": kind, "step_s": step_s, "tokens_per_s": tok_per_step / step_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads or 1)
        print(json.dumps(worker(a.worker, a.steps)))
        return
    from unlearnkit.runtime import free_cores

    threads = a.threads or free_cores()
    res: dict[str, dict] = {}
    for rep in range(a.repeats):  # interleaved repeats; keep each kind's fastest median (least noise)
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(a.steps), "--threads", str(threads)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if out.returncode:
                sys.exit(f"{kind} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[{rep + 1}/{a.repeats}] {kind:22s} step {r['step_s'] * 1000:7.1f} ms  {r['tokens_per_s']:8.0f} tok/s  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
            if kind not in res or r["step_s"] < res[kind]["step_s"]:
                res[kind] = r
    ratio = lambda a_, b_, k: res[a_][k] / res[b_][k]  # noqa: E731
    print(f"\nthreads={threads}, steps={a.steps}, repeats={a.repeats} (best median step time after {WARMUP} warm-up steps)")
    print(f"grad_diff ours/bare tokens/s : {ratio('ours_grad_diff', 'bare_grad_diff', 'tokens_per_s'):.3f}  (target >= 0.90)")
    print(f"npo       ours/bare tokens/s : {ratio('ours_npo', 'bare_npo', 'tokens_per_s'):.3f}  (target >= 0.90)")
    print(f"NPO / GA step time           : {ratio('ours_npo_forget_only', 'ours_grad_ascent', 'step_s'):.3f}  (target <= 1.15; both forget-only)")
    print(f"NPO / GA peak RSS            : {ratio('ours_npo_forget_only', 'ours_grad_ascent', 'peak_rss_mb'):.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
