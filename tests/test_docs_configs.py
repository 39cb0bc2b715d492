"""Derived files stay true: configs/*.yaml load and build; docs/*.md match the registries."""
from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.audit import AuditConfig
from unlearnkit.demo import DemoConfig
from unlearnkit.config import EvalConfig, FinetuneConfig, UnlearnConfig, build_method, load_yaml
from unlearnkit.docs import attacks_markdown, methods_markdown, metrics_markdown
from unlearnkit.protocol import TofuProtocolConfig
from unlearnkit.real_demo import RealDemoConfig
from unlearnkit.update import UpdateConfig

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"unlearn": UnlearnConfig, "finetune": FinetuneConfig, "eval": EvalConfig, "demo": DemoConfig, "bench": TofuProtocolConfig,
         "update": UpdateConfig, "audit": AuditConfig, "demo-real": RealDemoConfig}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_file_loads(path):
    head = path.read_text().splitlines()[0]
    assert head.startswith("# unlearnkit "), "each config starts with the command that runs it"
    cfg = load_yaml(KINDS[head.split()[2]], path)
    if isinstance(cfg, DemoConfig):
        assert cfg == DemoConfig(), "configs/demo.yaml must stay equal to the demo defaults"
    if isinstance(cfg, (UnlearnConfig, DemoConfig, TofuProtocolConfig)):
        build_method(cfg.method, cfg.method_args)  # hyperparameters are valid for the method
    if isinstance(cfg, (UpdateConfig, AuditConfig)):
        cfg.validate()


def test_docs_are_generated_from_the_registry():
    assert (ROOT / "docs" / "methods.md").read_text() == methods_markdown(), "run: python -m unlearnkit.docs"
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown(), "run: python -m unlearnkit.docs"
    assert (ROOT / "docs" / "attacks.md").read_text() == attacks_markdown(), "run: python -m unlearnkit.docs"
