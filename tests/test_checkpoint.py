"""Checkpoints: atomic and verified (storage), and a run killed mid-way (a real SIGKILL of a
subprocess, also during a save) resumes to bit-identical weights on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit import checkpoint as ckpt
from unlearnkit.cli import main
from unlearnkit.errors import ConfigError
from unlearnkit.methods.npo import NPO
from unlearnkit.storage import MANIFEST, staged_dir, verify_manifest
from unlearnkit.train import TrainConfig, run


# ------------------------------------------------------------------------------------- storage
def test_staged_dir_writes_a_manifest_and_replaces_atomically(tmp_path):
    out = tmp_path / "model"
    with staged_dir(out) as stage:
        (stage / "a.bin").write_bytes(b"first")
        assert not out.exists()  # nothing visible until the stage is complete
    assert verify_manifest(out) is None and (out / "a.bin").read_bytes() == b"first"
    with staged_dir(out) as stage:
        (stage / "b.bin").write_bytes(b"second")
    assert sorted(p.name for p in out.iterdir()) == ["b.bin", MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no stage or old copy left behind


def test_staged_dir_error_keeps_the_previous_output(tmp_path):
    out = tmp_path / "model"
    with staged_dir(out) as stage:
        (stage / "a.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "a.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    assert (out / "a.bin").read_bytes() == b"good" and verify_manifest(out) is None
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "a.bin").write_bytes(b"flipped"), "sha256 mismatch"),
    (lambda d: (d / "a.bin").unlink(), "missing file a.bin"),
    (lambda d: (d / "extra.bin").write_bytes(b"x"), "unlisted file extra.bin"),
    (lambda d: (d / MANIFEST).unlink(), "no manifest.json"),
    (lambda d: (d / MANIFEST).write_text("{not json"), "unreadable manifest.json"),
])
def test_verify_manifest_names_the_damage(tmp_path, damage, reason):
    with staged_dir(tmp_path / "d") as stage:
        (stage / "a.bin").write_bytes(b"content")
    damage(tmp_path / "d")
    assert reason in verify_manifest(tmp_path / "d")


def test_saved_model_has_a_verifying_manifest_after_card_metrics(tiny_model, tiny_tokenizer, tmp_path):
    from unlearnkit.models import add_card_metrics, save_model

    out = save_model(tiny_model, tiny_tokenizer, tmp_path / "m", card={"title": "t", "method": "npo"})
    add_card_metrics(out, {"forget_prob": 0.5})  # rewrites README.md / unlearnkit.json in place
    assert verify_manifest(out) is None
    assert "model.safetensors" in json.loads((out / MANIFEST).read_text())["sha256"]


# ------------------------------------------------------------------------------------- in process
def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"lr": 3e-3, "batch_size": 4, "max_steps": 7, "progress": False, "threads": 1,
                          "checkpoint_dir": str(tmp_path / "ckpt"), **kw})


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(Exception):
    pass


def test_resume_in_process_is_bit_identical_and_keeps_the_log(tiny_model, _tiny_model_pristine, make_paired,
                                                               tmp_path, monkeypatch):
    """NPO (reference log-probs cached in the checkpoint) + a retain stream + AdamW + a linear
    schedule: stop after step 5 (checkpoints at 2 and 4), resume, compare with 7 straight steps."""
    import copy

    straight = copy.deepcopy(_tiny_model_pristine)
    full = run(straight, NPO(), make_paired(NPO()), _cfg(tmp_path / "a"))
    import unlearnkit.train as train

    real_step = train._one_step

    def stop_at_5(*args):
        if args[-1] == 5:
            raise Interrupt
        return real_step(*args)

    monkeypatch.setattr(train, "_one_step", stop_at_5)
    with pytest.raises(Interrupt):
        run(tiny_model, NPO(), make_paired(NPO()), _cfg(tmp_path, checkpoint_every=2))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000002", "step-00000004"]
    monkeypatch.setattr(train, "_one_step", real_step)
    fresh = copy.deepcopy(_tiny_model_pristine)
    resumed = run(fresh, NPO(), make_paired(NPO()), _cfg(tmp_path, checkpoint_every=2, resume=True))
    assert _same(_weights(fresh), _weights(straight))
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]  # steps 1-4 from the checkpoint
    assert resumed.steps == full.steps == 7


def test_resume_refuses_other_settings(tiny_model, _tiny_model_pristine, make_paired, tmp_path):
    import copy

    run(tiny_model, NPO(), make_paired(NPO()), _cfg(tmp_path, checkpoint_every=2, max_steps=3))
    with pytest.raises(ConfigError, match=r"train.lr: 0.003 -> 0.001.*delete"):
        run(copy.deepcopy(_tiny_model_pristine), NPO(), make_paired(NPO()),
            _cfg(tmp_path, max_steps=3, lr=1e-3, resume=True))
    with pytest.raises(ConfigError, match="method_args.beta"):
        run(copy.deepcopy(_tiny_model_pristine), NPO(beta=0.5), make_paired(NPO()),
            _cfg(tmp_path, max_steps=3, resume=True))


def test_resume_skips_a_corrupted_checkpoint(tiny_model, _tiny_model_pristine, make_paired, tmp_path):
    import copy

    run(tiny_model, NPO(), make_paired(NPO()), _cfg(tmp_path, checkpoint_every=2, max_steps=5))
    newest = tmp_path / "ckpt" / "step-00000004"
    raw = bytearray((newest / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the last weight
    (newest / "model.safetensors").write_bytes(bytes(raw))
    path, skipped = ckpt.latest_checkpoint(tmp_path / "ckpt")
    assert path.name == "step-00000002"
    assert skipped == [(newest, "model.safetensors: sha256 mismatch (corrupted)")]
    with pytest.warns(UserWarning, match=r"skipped checkpoint .*step-00000004: model.safetensors: sha256 mismatch"):
        res = run(copy.deepcopy(_tiny_model_pristine), NPO(), make_paired(NPO()),
                  _cfg(tmp_path, checkpoint_every=2, max_steps=5, resume=True))
    assert res.steps == 5 and [r["step"] for r in res.log] == [1, 2, 3, 4, 5]


def test_resume_without_checkpoints_starts_from_step_0(tiny_model, make_paired, tmp_path, capsys):
    res = run(tiny_model, NPO(), make_paired(NPO()), _cfg(tmp_path, max_steps=2, resume=True, progress=True))
    assert res.steps == 2 and "no verified checkpoint" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- SIGKILL
KILLER = """
import os, signal, sys
import unlearnkit.checkpoint as ckpt, unlearnkit.train as train
from unlearnkit.cli import main
where, at = sys.argv[1], int(sys.argv[2])
if where == "step":  # killed while computing step `at` (after the checkpoints before it)
    real = train._one_step
    def step(*a):
        if a[-1] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a)
    train._one_step = step
else:  # killed inside the save of checkpoint `at`, after its weights are written
    import torch
    real_save = torch.save
    def save(obj, path, *a, **k):
        if f"step-{at:08d}" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *a, **k)
    ckpt.torch.save = save
sys.exit(main(sys.argv[3:]))
"""


def _args(model_dir: Path, qa_files: list[Path], out: Path) -> list[str]:
    return ["unlearn", "--model", str(model_dir), "--forget", str(qa_files[0]), "--retain", str(qa_files[1]),
            "--method", "npo", "--out", str(out), "--no-progress", "--checkpoint-every", "2",
            "train.max_steps=7", "train.batch_size=4", "train.lr=3e-3", "train.threads=1"]


@pytest.fixture
def straight_run(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "straight"
    assert main(_args(tiny_model_dir, qa_files, out)) == 0
    assert not Path(f"{out}.checkpoints").exists()  # removed once the output is saved
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("where, at, expect_ckpts", [("step", 6, ["step-00000002", "step-00000004"]),
                                                      ("save", 4, ["step-00000002"])])
def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, qa_files, tmp_path, straight_run, where, at,
                                              expect_ckpts):
    out = tmp_path / f"killed-{where}"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), where, str(at), *_args(tiny_model_dir, qa_files, out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed
    root = Path(f"{out}.checkpoints")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == expect_ckpts
    assert not out.exists()  # no output from a killed run
    assert main(_args(tiny_model_dir, qa_files, out) + ["--resume"]) == 0
    resumed = load_file(out / "model.safetensors")
    assert resumed.keys() == straight_run.keys()
    assert all(torch.equal(resumed[k], straight_run[k]) for k in resumed)
    log = [json.loads(line) for line in Path(f"{out}.train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 8))
    assert not root.exists() and verify_manifest(out) is None
