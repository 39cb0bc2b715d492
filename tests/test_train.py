"""The training loop: learning works, NaN stops the run with nothing saved, early stopping, logs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from unlearnkit import api
from unlearnkit.config import DataConfig, FinetuneConfig, ModelConfig, UnlearnConfig
from unlearnkit.errors import TrainingDiverged
from unlearnkit.methods.base import LossOutput, Method
from unlearnkit.train import Finetune, TrainConfig, forget_prob, run, total_steps


@dataclass
class NaNAfter(Method):
    """A method whose loss turns NaN at a given step (to exercise the guard)."""

    at: int = 2
    calls: int = 0

    @property
    def needs_retain(self) -> bool:
        return False

    def loss(self, model, batch, ref):
        self.calls += 1
        out = model(input_ids=batch["forget"]["input_ids"]).logits.mean()
        return LossOutput(out * float("nan") if self.calls >= self.at else out, {"x": 1.0})


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 3e-3, "batch_size": 8, "progress": False, "threads": 1, **kw})


def test_finetune_raises_answer_probability(tiny_model, make_paired):
    data = make_paired()
    before = forget_prob(tiny_model, data)
    res = run(tiny_model, Finetune(), data, _cfg(max_steps=25))
    assert res.steps == 25 and len(res.log) == 25
    assert {"loss", "nll", "lr", "step_s"} <= set(res.log[0])
    assert forget_prob(tiny_model, data) > 3 * before


def test_nan_loss_stops_with_clear_error(tiny_model, make_paired):
    with pytest.raises(TrainingDiverged, match="non-finite at step 2"):
        run(tiny_model, NaNAfter(at=2), make_paired(), _cfg(max_steps=5))


def test_nan_in_unlearn_leaves_no_model(tiny_model_dir, tiny_examples, tmp_path, monkeypatch):
    forget, retain = tiny_examples
    f = tmp_path / "forget.jsonl"
    f.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in forget))
    monkeypatch.setattr(api, "build_method", lambda name, args: NaNAfter(at=1))
    cfg = UnlearnConfig(model=ModelConfig(path=str(tiny_model_dir)), data=DataConfig(forget=str(f)),
                        method="grad_ascent", train=_cfg(max_steps=3), out=str(tmp_path / "out"))
    with pytest.raises(TrainingDiverged):
        api.unlearn(cfg)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_early_stop_at_forget_probability(tiny_model, make_paired):
    from unlearnkit.config import build_method

    data = make_paired()
    run(tiny_model, Finetune(), data, _cfg(max_steps=30))
    start = forget_prob(tiny_model, data)
    res = run(tiny_model, build_method("grad_ascent", {}), data,
              _cfg(lr=1e-3, max_steps=200, stop_forget_prob=start / 2, eval_every=1))
    assert res.stopped_early and res.stop_reason == "forget_prob" and res.steps < 200
    assert forget_prob(tiny_model, data) <= start / 2
    assert res.log[-1]["forget_prob"] <= start / 2
    assert all("forget_prob" in r for r in res.log)  # eval_every=1: checked (and logged) every step


def test_grad_accumulation_and_schedule(make_paired):
    data = make_paired()  # 8 forget examples
    assert total_steps(_cfg(epochs=2, batch_size=4, grad_accum=2), data) == 2
    assert total_steps(_cfg(epochs=1.5, batch_size=4), data) == 3
    model = torch.nn.Linear(1, 1)  # a model with no trainable parameters is refused
    model.requires_grad_(False)
    from unlearnkit.errors import ConfigError

    with pytest.raises(ConfigError, match="no trainable parameters"):
        run(model, Finetune(), data, _cfg(max_steps=1))


def test_finetune_api_writes_model_and_log(tiny_model_dir, tiny_examples, tmp_path):
    forget, _ = tiny_examples
    f = tmp_path / "data.json"
    f.write_text(json.dumps([{"question": e.question, "answer": e.answer} for e in forget]))
    out = tmp_path / "ft"
    res = api.finetune(FinetuneConfig(model=ModelConfig(path=str(tiny_model_dir)), data=DataConfig(train=str(f)),
                                      train=_cfg(max_steps=3), out=str(out)))
    assert res.steps == 3
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    log = Path(str(out) + ".train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]


def test_schedule_steps_once_per_update(tiny_model, make_paired):
    """Linear decay over 4 updates of 2 micro-batches each: lr goes 3/4, 2/4, 1/4, 0 of the peak."""
    res = run(tiny_model, Finetune(), make_paired(), _cfg(lr=1e-3, max_steps=4, batch_size=4, grad_accum=2))
    assert [round(r["lr"] / 1e-3, 6) for r in res.log] == [0.75, 0.5, 0.25, 0.0]


def test_memorization_curve_callback(tiny_model, make_paired, tmp_path):
    """Tirumala M(f) of the anchor set is logged at step 0, every k steps and at the end; it rises
    while finetuning, and step 0 equals a manual teacher-forced count over all supervised tokens."""
    data = make_paired()
    b = data.forget_batch(list(range(len(data.forget))))["forget"]
    with torch.no_grad():
        pred = tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
    lab = b["labels"][:, 1:]
    manual = float(((pred == lab) & (lab != -100)).sum() / (lab != -100).sum())
    log = tmp_path / "log.jsonl"
    res = run(tiny_model, Finetune(), data, _cfg(max_steps=25, track_em_every=10), log_path=log)
    curve = [(r["step"], r["em"]) for r in res.log if "em" in r]
    assert [s for s, _ in curve] == [0, 10, 20, 25]
    assert curve[0][1] == pytest.approx(manual, abs=1e-9)
    assert curve[-1][1] > curve[0][1] + 0.2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()][:2] == [0, 1]
    with pytest.raises(Exception, match="track_em_every"):
        _cfg(track_em_every=-1).validate()


@dataclass(kw_only=True)
class _StopsAtThree(Method):
    """Finetune NLL that asks the loop to stop at its third call (a method's own stopping rule)."""

    calls: int = 0
    prepared: int = 0

    def prepare(self, model, data, cfg) -> None:
        self.prepared += 1
        assert data.examples and data.tokenizer is not None and len(data.examples) == len(data.forget)

    def loss(self, model, batch, ref) -> LossOutput:
        self.calls += 1
        out = Finetune().loss(model, batch, ref)
        return LossOutput(out.loss, out.logs, stop=self.calls >= 3)


def test_loss_output_stop_ends_the_run_and_prepare_runs_first(tiny_model, make_paired):
    method = _StopsAtThree()
    data = make_paired()
    res = run(tiny_model, method, data, TrainConfig(max_steps=10, batch_size=4, progress=False, threads=1))
    assert method.prepared == 1 and res.steps == 3 and res.stopped_early and res.stop_reason == "method"
    assert all("_stop" not in rec for rec in res.log)


def test_run_method_calls_apply_of_procedure_methods(tiny_model, make_paired):
    from unlearnkit.methods.base import Procedure
    from unlearnkit.train import TrainResult, run_method

    @dataclass(kw_only=True)
    class Halve(Procedure):
        def apply(self, model, data, cfg, *, ref=None, log_path=None, desc="train"):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)
            return TrainResult(steps=0)

    before = next(tiny_model.parameters()).detach().clone()
    res = run_method(tiny_model, Halve(), make_paired(), TrainConfig(max_steps=1, progress=False, threads=1))
    assert res.steps == 0 and torch.allclose(next(tiny_model.parameters()), before * 0.5)
    with pytest.raises(TypeError, match="procedure method"):
        Halve().loss(tiny_model, {}, None)
