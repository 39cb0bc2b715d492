"""Benign finetuning attack (Łucki et al. 2024): unrelated records bring forgotten knowledge back."""
from __future__ import annotations

import copy

import pytest

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.benign import Benign
from unlearnkit.audit import forget_probability
from unlearnkit.data.pair import build_paired
from unlearnkit.data.format import PromptTemplate
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.metrics.recovery import recovery_ratio
from unlearnkit.train import TrainConfig, run


def test_benign_finetuning_on_unrelated_records_recovers(learned_model, tiny_model, tiny_tokenizer, tiny_examples):
    forget, retain = tiny_examples
    unlearned = copy.deepcopy(learned_model)
    run(unlearned, GradAscent(), build_paired(None, forget, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=10, batch_size=8, lr=3e-3, weight_decay=0.0, progress=False, threads=1))
    prob = lambda m: forget_probability(m, tiny_tokenizer, forget, PromptTemplate(), 128)  # noqa: E731
    target, before = prob(learned_model), prob(unlearned)
    data = AttackData(forget_train=[], forget_eval=forget, retain=retain, max_length=128)
    attacked = Benign(n_samples=10, epochs=3, lr=3e-3).run(unlearned, tiny_tokenizer, data).model
    ratio = recovery_ratio(attacked=prob(attacked), unlearned=before, target=target).value
    print(f"target {target:.4f} unlearned {before:.4f} attacked {prob(attacked):.4f} ratio {ratio:.3f}")
    assert target > 3 * before and ratio > 0.05
    # control: the same finetuning of a model that never learned the forget set reaches far less, so
    # what comes back is hidden knowledge, not something the unrelated records taught
    never = prob(Benign(n_samples=10, epochs=3, lr=3e-3).run(tiny_model, tiny_tokenizer, data).model)
    print(f"never-learned model after the attack {never:.4f}")
    assert prob(attacked) > 2 * never


def test_benign_errors():
    with pytest.raises(ConfigError, match="scheduler"):
        Benign(scheduler="sometimes")
    with pytest.raises(ConfigError):
        Benign(n_samples=0)
    with pytest.raises(DataError, match="--retain"):
        Benign().run(None, None, AttackData(forget_train=[], forget_eval=[]))
    assert Benign(n_samples=10, epochs=3, batch_size=4).steps == 9
