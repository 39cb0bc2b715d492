"""--deterministic: two separate processes running unlearn -> eval give identical metrics and
weights, and the results record the environment (subprocesses: the mode is process-wide)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

SCRIPT = """
import sys
from unlearnkit.cli import main
model, forget, retain, data_dir, out = sys.argv[1:6]
assert main(["unlearn", "--deterministic", "--model", model, "--forget", forget, "--retain", retain,
             "--method", "npo", "--out", f"{out}/model", "--no-progress", "train.max_steps=3",
             "train.batch_size=4", "train.lr=3e-3"]) == 0
assert main(["eval", "--deterministic", "--model", f"{out}/model", "--data-dir", data_dir,
             "--forget-split", "forget10", "--out", f"{out}/results.json", "--no-progress",
             "probe.max_new_tokens=8"]) == 0
"""


def _run(tmp_path, name, tiny_model_dir, files, data_dir):
    out = tmp_path / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNLEARNKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(files[0]), str(files[1]),
                           str(data_dir), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text()), load_file(out / "model" / "model.safetensors")


def test_two_deterministic_runs_are_identical(tiny_model_dir, tmp_path, qa_files):
    from unlearnkit.data.synthetic import write_tofu_layout

    files = qa_files
    data_dir = tmp_path / "tofu"
    write_tofu_layout(data_dir, n_people=10, facts_per_person=3, forget_percents=(10,))
    (doc_a, w_a), (doc_b, w_b) = (_run(tmp_path, n, tiny_model_dir, files, data_dir) for n in ("a", "b"))
    assert all(w_a[k].equal(w_b[k]) for k in w_a)
    assert doc_a["models"] == {**doc_b["models"], "model": {**doc_b["models"]["model"],
                                                             "path": doc_a["models"]["model"]["path"]}}
    assert doc_a["per_example"] == doc_b["per_example"]
    env = doc_a["environment"]
    assert env["deterministic"] is True and env["deterministic_algorithms"] is True
    assert env["torch_threads"] == 1 and env["env"]["UNLEARNKIT_THREADS"] == "1"
    assert env["packages"]["torch"] and env["python"]


def test_deterministic_threads_ignore_the_load(monkeypatch):
    """Without an explicit count, deterministic mode uses every core, not the currently free ones
    (the thread count changes the order of float reductions)."""
    import torch

    from unlearnkit import runtime

    before = torch.get_num_threads()
    monkeypatch.delenv("UNLEARNKIT_THREADS", raising=False)
    monkeypatch.setattr(runtime, "free_cores", lambda: 1)
    monkeypatch.setattr(runtime, "_all_cores", lambda: 3)
    try:
        assert runtime.set_threads(None) == 1
        monkeypatch.setattr(runtime, "_DETERMINISTIC", True)
        assert runtime.set_threads(None) == 3 and runtime.set_threads(2) == 2
    finally:
        torch.set_num_threads(before)
