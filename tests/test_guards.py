"""Divergence guards: NaN is logged and stops the run at once; loss blow-up, retain-probability
floor and gibberish guards trip, roll back to the last checkpoint, write why, exit non-zero."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.errors import ConfigError, TrainingDiverged
from unlearnkit.guards import is_gibberish, jsonable_terms, nonfinite
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.methods.grad_diff import GradDiff
from unlearnkit.train import TrainConfig, run


@pytest.mark.parametrize("text, babble", [
    ("Paris is the capital of France.", False),
    ("Born in 1931 in Oslo.", False),
    ("", True),
    ("the the the the the", True),
    ("%% ## 12 !! ?? 7", True),
    ("It rains. It rains. It rains. It rains.", True),
])
def test_is_gibberish(text, babble):
    assert is_gibberish(text) is babble


def test_nonfinite_terms_are_named_and_kept_as_strings():
    record = {"step": 3, "loss": float("nan"), "kl": float("-inf"), "lr": 1e-3}
    assert nonfinite({k: v for k, v in record.items() if isinstance(v, float)}) == ["loss", "kl"]
    assert json.loads(json.dumps(jsonable_terms(record))) == {"step": 3, "loss": "nan", "kl": "-inf", "lr": 1e-3}


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"lr": 5e-2, "batch_size": 4, "max_steps": 30, "progress": False, "threads": 1,
                          "weight_decay": 0.0, "scheduler": "constant", "checkpoint_dir": str(tmp_path / "ckpt"), **kw})


def test_loss_blowup_rolls_back_to_the_last_checkpoint(tiny_model, make_paired, tmp_path):
    """Gradient ascent at a high lr: -NLL runs off; the guard stops it, the model is put back to the
    newest checkpoint's weights, divergence.json says why."""
    with pytest.raises(TrainingDiverged, match=r"loss blow-up at step (\d+).*rolled back to the weights of") as exc:
        run(tiny_model, GradAscent(), make_paired(), _cfg(tmp_path, guard_loss_blowup=3.0, checkpoint_every=1))
    doc = json.loads((tmp_path / "ckpt" / "divergence.json").read_text())
    tripped = int(exc.value.args[0].split("at step ")[1].split(":")[0])
    assert doc["step"] == tripped and doc["why"].startswith("loss blow-up")
    assert doc["rolled_back_to"].endswith(f"step-{tripped - 1:08d}")  # the step before: checked before saving
    saved = load_file(f"{doc['rolled_back_to']}/model.safetensors")
    state = tiny_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert abs(doc["record"]["loss"]) > 3.0 * 1e-3


def test_retain_prob_floor_trips(tiny_model, make_paired, tmp_path):
    with pytest.raises(TrainingDiverged, match="retain probability .* fell below guard_retain_prob_floor=0.9"):
        run(tiny_model, GradDiff(retain_weight=1e-3), make_paired(GradDiff()),
            _cfg(tmp_path, guard_retain_prob_floor=0.9, eval_every=1))
    doc = json.loads((tmp_path / "ckpt" / "divergence.json").read_text())
    assert doc["record"]["retain_prob"] > 0 and doc["rolled_back_to"] is None  # no checkpoints were kept


def test_gibberish_guard_trips_on_a_babbling_model(tiny_model, make_paired, tmp_path):
    # the random tiny model answers nothing (EOS at once): every answer counts as gibberish
    with pytest.raises(TrainingDiverged, match=r"100% of the greedy answers .* at step 1"):
        run(tiny_model, GradDiff(), make_paired(GradDiff()), _cfg(tmp_path, guard_gibberish_rate=0.5, lr=1e-5, eval_every=1))


def test_guard_settings_are_checked(tiny_model, tiny_tokenizer, tiny_examples, tmp_path):
    from unlearnkit.data.pair import build_paired

    with pytest.raises(ConfigError, match="guard_retain_prob_floor=1.5 must be in"):
        _cfg(tmp_path, guard_retain_prob_floor=1.5).validate()
    with pytest.raises(ConfigError, match="guard_loss_blowup=0.5"):
        _cfg(tmp_path, guard_loss_blowup=0.5).validate()
    with pytest.raises(ConfigError, match="watch the retain set"):
        run(tiny_model, GradAscent(), build_paired(None, tiny_examples[0], [], tiny_tokenizer),
            _cfg(tmp_path, guard_gibberish_rate=0.5))
    with pytest.raises(ConfigError, match="need train.checkpoint_dir"):
        TrainConfig(checkpoint_every=5).validate()


def test_guards_quiet_on_a_gentle_run(tiny_model, make_paired, tmp_path):
    model = copy.deepcopy(tiny_model)
    res = run(model, GradDiff(), make_paired(GradDiff()),
              _cfg(tmp_path, lr=1e-4, max_steps=4, guard_loss_blowup=10.0, guard_retain_prob_floor=0.5, eval_every=2))
    assert res.steps == 4 and "retain_prob" in res.log[1] and not (tmp_path / "ckpt" / "divergence.json").exists()


def test_nan_is_logged_and_the_cli_exits_3(tiny_model_dir, tiny_examples, tmp_path, monkeypatch):
    from tests.test_train import NaNAfter
    from unlearnkit import api
    from unlearnkit.cli import main

    forget, _ = tiny_examples
    f = tmp_path / "forget.jsonl"
    f.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in forget))
    monkeypatch.setattr(api, "build_method", lambda name, args: NaNAfter(at=3))
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(f), "--method", "grad_ascent",
                 "--out", str(out), "--no-progress", "train.max_steps=5", "train.threads=1"])
    assert code == 3 and not out.exists()
    log = [json.loads(line) for line in (tmp_path / "out.train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["loss"] == "nan"  # the bad step is in the log
    assert "non-finite at step 3" in json.loads((tmp_path / "out.checkpoints" / "divergence.json").read_text())["why"]
