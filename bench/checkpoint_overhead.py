"""Cost of the trustworthy-run machinery (issue 8): checkpoints and divergence guards vs a plain run.

The same NPO run (tiny Llama, hidden 256 x 4 layers, synthetic benchmark, batch 16) three ways,
interleaved and repeated; printed as ratios of wall time against the plain run of the same repeat:
  checkpoint every 10 steps (weights + AdamW state + RNG + manifest, fsynced) / plain
  guards (loss blow-up every step, retain-probability floor every 10 steps) / plain
and the size and write + verify time of one checkpoint. With --model DIR, one checkpoint of that
model is also written and verified (e.g. SmolLM2-135M: the size a real run pays per checkpoint).
Run: python bench/checkpoint_overhead.py [--steps 40] [--repeats 2] [--threads 2] [--model DIR]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "plain": {},
    "checkpoints": {"checkpoint_every": 10},
    "guards": {"guard_loss_blowup": 100.0, "guard_retain_prob_floor": 0.01, "eval_every": 10},
}


def _setup(tmp: Path):
    from unlearnkit.data.records import load_examples
    from unlearnkit.data.synthetic import corpus_text, write_tofu_layout
    from unlearnkit.models import build_tiny_model, load_model, load_tokenizer, TinyModelSpec

    write_tofu_layout(tmp / "data", n_people=40, seed=0)
    rows = [json.loads(line) for line in (tmp / "data" / "full.json").read_text().splitlines()]
    build_tiny_model(corpus_text(rows), tmp / "m", TinyModelSpec(hidden_size=256, intermediate_size=512, num_hidden_layers=4))
    return (load_model(tmp / "m"), load_tokenizer(tmp / "m"), load_examples(tmp / "data/forget10.json"),
            load_examples(tmp / "data/retain90.json"))


def _run(model, tok, forget, retain, steps: int, threads: int, extra: dict, ckpt_dir: Path) -> float:
    from unlearnkit.data.pair import build_paired
    from unlearnkit.methods.npo import NPO
    from unlearnkit.train import run, TrainConfig

    method = NPO()
    data = build_paired(method, forget, retain, tok, max_length=128)
    cfg = TrainConfig(lr=1e-4, max_steps=steps, batch_size=16, progress=False, threads=threads,
                      checkpoint_dir=str(ckpt_dir), **extra)
    started = time.perf_counter()
    run(copy.deepcopy(model), method, data, cfg)
    return time.perf_counter() - started


def _one_checkpoint(model, root: Path) -> tuple[float, float, float]:
    """(seconds to write, seconds to verify, MB) of one checkpoint of ``model`` with a full AdamW state."""
    import torch

    from unlearnkit import checkpoint as ckpt
    from unlearnkit.data.pair import PairedData

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for p in model.parameters():  # a real state: exp_avg / exp_avg_sq for every weight
        p.grad = torch.zeros_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = PairedData(forget=[{}], retain=[], pad_id=0)
    t0 = time.perf_counter()
    path = ckpt.save_checkpoint(root, 1, model=model, optimizer=opt, scheduler=sched, data=data, signature={},
                                micro_batches=1, ref_key=None, log=[])
    t1 = time.perf_counter()
    found, _ = ckpt.latest_checkpoint(root)
    t2 = time.perf_counter()
    assert found == path
    return t1 - t0, t2 - t1, sum(f.stat().st_size for f in path.iterdir()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="also write + verify one checkpoint of this model directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, tok, forget, retain = _setup(tmp)
        times: dict[str, list[float]] = {k: [] for k in SETTINGS}
        for r in range(args.repeats):
            for name, extra in SETTINGS.items():
                times[name].append(_run(model, tok, forget, retain, args.steps, args.threads, extra, tmp / f"c{r}{name}"))
        for name in ("checkpoints", "guards"):
            ratios = [t / p for t, p in zip(times[name], times["plain"])]
            print(f"{name}/plain wall time: {statistics.median(ratios):.3f} (per repeat: "
                  f"{', '.join(f'{x:.3f}' for x in ratios)}; plain {statistics.median(times['plain']):.1f} s "
                  f"for {args.steps} steps)")
        write, verify, mb = _one_checkpoint(copy.deepcopy(model), tmp / "one")
        print(f"one checkpoint of the bench model: {mb:.1f} MB, write {write:.2f} s, verify {verify:.2f} s")
        if args.model:
            from unlearnkit.models import load_model

            write, verify, mb = _one_checkpoint(load_model(args.model), tmp / "real")
            print(f"one checkpoint of {args.model}: {mb:.0f} MB, write {write:.1f} s, verify {verify:.1f} s")


if __name__ == "__main__":
    main()
