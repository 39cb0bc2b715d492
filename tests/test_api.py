"""The public Python API: lazy exports, and the README's example runs as written."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import unlearnkit as uk
from unlearnkit.data.synthetic import write_tofu_layout

README = Path(__file__).resolve().parents[1] / "README.md"


def test_lazy_exports():
    assert uk.__version__ and "npo" in uk.METHODS.names() and "truth_ratio" in uk.METRICS.names()
    assert uk.UnlearnConfig().method == "npo"
    with pytest.raises(AttributeError):
        uk.no_such_thing  # noqa: B018


def test_readme_python_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    """Execute the README's Python block in a folder holding the files it names."""
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    write_tofu_layout(tmp_path / "tofu", n_people=10, facts_per_person=3, forget_percents=(10,))
    for name in ("forget10.json", "retain90.json"):
        shutil.copy(tmp_path / "tofu" / name, tmp_path / name)
    shutil.copytree(tiny_model_dir, tmp_path / "target")
    ref = uk.EvalConfig(data_dir="tofu", forget_split="forget10", out="retain_results.json")
    ref.model.path, ref.probe.max_new_tokens = "target", 4
    uk.evaluate(ref)
    code = code.replace("cfg.train.lr, cfg.train.max_steps = 1e-4, 150", "cfg.train.lr, cfg.train.max_steps = 1e-4, 3")
    code = code.replace('ev.model.path = "unlearned/"', 'ev.model.path = "unlearned/"; ev.probe.max_new_tokens = 4')
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "unlearned" / "model.safetensors").is_file()
