"""Config dataclasses: from_dict, key=value overrides with type coercion, YAML I/O, build_method."""
from __future__ import annotations

import pytest

from unlearnkit.config import (
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    UnlearnConfig,
    apply_overrides,
    build_method,
    from_dict,
    load_yaml,
    save_yaml,
)
from unlearnkit.data.records import Keys
from unlearnkit.errors import ConfigError
from unlearnkit.models import LoraSettings
from unlearnkit.train import TrainConfig

OVERRIDES = [
    "train.lr=2e-5",
    "method.beta=0.2",
    "model.lora.r=8",
    "data.keys.question=prompt",
    "train.max_steps=null",
]


# ----------------------------------------------------------------------------- from_dict
def test_from_dict_builds_nested_configs():
    cfg = from_dict(
        UnlearnConfig,
        {
            "model": {"path": "m", "lora": {"r": 4, "alpha": 8}},
            "data": {"forget": "f.json", "keys": {"question": "prompt", "answer": "response"}},
            "method": "simnpo",
            "method_args": {"beta": 2.5},
            "train": {"lr": 1e-4, "epochs": 2, "max_steps": 10},
            "out": "o",
        },
    )
    assert isinstance(cfg.model, ModelConfig) and cfg.model.path == "m"
    assert isinstance(cfg.model.lora, LoraSettings) and (cfg.model.lora.r, cfg.model.lora.alpha) == (4, 8)
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.data.keys, Keys)
    assert cfg.data.keys == Keys(question="prompt", answer="response")
    assert cfg.data.forget == "f.json" and cfg.data.retain is None
    assert isinstance(cfg.train, TrainConfig)
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 10
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)  # int coerced to float
    assert cfg.method == "simnpo" and cfg.method_args == {"beta": 2.5}
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched defaults kept


def test_from_dict_empty_gives_defaults():
    assert from_dict(UnlearnConfig, None) == UnlearnConfig()
    assert from_dict(FinetuneConfig, {}) == FinetuneConfig()


def test_from_dict_unknown_nested_key_suggests():
    with pytest.raises(ConfigError, match=r"train\.lrr.*did you mean 'lr'"):
        from_dict(UnlearnConfig, {"train": {"lrr": 1e-5}})


def test_from_dict_unknown_top_level_key_suggests():
    with pytest.raises(ConfigError, match=r"'modle'.*did you mean 'model'"):
        from_dict(UnlearnConfig, {"modle": {"path": "x"}})


def test_from_dict_section_must_be_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict(UnlearnConfig, {"train": [1, 2]})


def test_from_dict_bad_value_type():
    with pytest.raises(ConfigError, match="train.batch_size"):
        from_dict(UnlearnConfig, {"train": {"batch_size": "eight"}})


def test_from_dict_reads_exponent_floats_written_without_dot():
    # YAML 1.1 (PyYAML) reads `lr: 1e-5` as the string '1e-5'
    cfg = from_dict(UnlearnConfig, {"train": {"lr": "1e-5"}})
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)


# ----------------------------------------------------------------------------- overrides
def test_apply_overrides_coerces_types():
    cfg = apply_overrides(UnlearnConfig(), list(OVERRIDES))
    assert cfg.train.lr == 2e-5 and type(cfg.train.lr) is float
    assert cfg.method_args == {"beta": 0.2}
    assert cfg.model.lora.r == 8 and type(cfg.model.lora.r) is int
    assert cfg.data.keys.question == "prompt"
    assert cfg.train.max_steps is None


def test_apply_overrides_more_types():
    cfg = apply_overrides(
        UnlearnConfig(),
        [
            "train.max_steps=7",
            "train.epochs=3",
            "train.progress=false",
            "data.keys.question=123",  # a str field keeps the raw text
            "data.keys.text=text",
            "data.forget=null",
            "train.stop_forget_prob=0.05",
            "method=npo",
        ],
    )
    assert cfg.train.max_steps == 7 and type(cfg.train.max_steps) is int
    assert cfg.train.epochs == 3.0 and type(cfg.train.epochs) is float
    assert cfg.train.progress is False
    assert cfg.data.keys.question == "123"
    assert cfg.data.keys.text == "text"
    assert cfg.data.forget is None
    assert cfg.train.stop_forget_prob == 0.05
    assert cfg.method == "npo"


def test_apply_overrides_returns_same_object():
    cfg = UnlearnConfig()
    assert apply_overrides(cfg, ["train.seed=3"]) is cfg and cfg.train.seed == 3


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.batch_size=abc", "train.batch_size.*number"),
        ("train.lr=true", "train.lr.*number"),
        ("train.batch_size=1.5", "train.batch_size.*integer"),
        ("train.progress=maybe", "train.progress.*true or false"),
        ("model.lora.r=[1, 2]", "model.lora.r"),
    ],
)
def test_apply_overrides_bad_values(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(UnlearnConfig(), [override])


def test_apply_overrides_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"train\.lrr.*did you mean 'lr'"):
        apply_overrides(UnlearnConfig(), ["train.lrr=1e-5"])
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        apply_overrides(UnlearnConfig(), ["trian.lr=1e-5"])


def test_apply_overrides_key_below_a_value_is_a_config_error():
    with pytest.raises(ConfigError, match="train.lr"):
        apply_overrides(UnlearnConfig(), ["train.lr.x=1"])


def test_apply_overrides_needs_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(UnlearnConfig(), ["train.lr"])


def test_method_override_on_a_config_without_method_args():
    with pytest.raises(ConfigError, match="method"):
        apply_overrides(FinetuneConfig(), ["method.beta=0.2"])


# ----------------------------------------------------------------------------- YAML
def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(UnlearnConfig(), list(OVERRIDES) + ["data.forget=f.json", "out=o"])
    path = tmp_path / "run.yaml"
    save_yaml(cfg, path, command="unlearnkit unlearn run.yaml")
    text = path.read_text()
    assert text.splitlines()[0] == "# unlearnkit unlearn run.yaml"
    back = load_yaml(UnlearnConfig, path)
    assert back == cfg
    assert type(back.train.lr) is float and back.train.max_steps is None


@pytest.mark.parametrize("cls", [FinetuneConfig, EvalConfig])
def test_yaml_round_trip_other_configs(tmp_path, cls):
    cfg = cls()
    save_yaml(cfg, tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").read_text().startswith("#")  # no command => no header
    assert load_yaml(cls, tmp_path / "c.yaml") == cfg


def test_load_yaml_hand_written_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  path: m\ntrain:\n  lr: 1e-5\n  batch_size: 4\nmethod_args:\n  beta: 0.1\n")
    cfg = load_yaml(UnlearnConfig, path)
    assert cfg.train.lr == 1e-5 and cfg.train.batch_size == 4 and cfg.model.path == "m"
    assert cfg.method_args == {"beta": 0.1}


def test_load_yaml_invalid(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n  lr: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(UnlearnConfig, path)


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(UnlearnConfig, tmp_path / "nope.yaml")


def test_load_yaml_unknown_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  lrr: 1.0e-5\n")
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_yaml(UnlearnConfig, path)


# ----------------------------------------------------------------------------- build_method
def test_build_method_with_args():
    m = build_method("npo", {"beta": 0.2})
    assert type(m).__name__ == "NPO" and m.beta == 0.2


def test_build_method_coerces_cli_strings():
    m = build_method("npo", {"beta": "2e-5"})
    assert m.beta == 2e-5 and type(m.beta) is float


def test_build_method_defaults():
    assert build_method("npo", {}).beta == pytest.approx(0.1)


def test_build_method_unknown_arg_suggests():
    with pytest.raises(ConfigError, match=r"method\.bata.*did you mean 'beta'"):
        build_method("npo", {"bata": 0.1})


def test_build_method_bad_arg_value():
    with pytest.raises(ConfigError, match="method.beta"):
        build_method("npo", {"beta": "high"})


def test_build_method_unknown_method_suggests():
    with pytest.raises(ConfigError, match=r"unknown method 'nop'.*did you mean 'npo'"):
        build_method("nop", {})
