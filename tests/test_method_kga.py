"""kga: |KL(A_f || A*) on D_f - KL(A_n || A_D) on D_n| + alpha * KL(A_D || A*) on D_r."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.errors import ConfigError
from unlearnkit.logprobs import forward
from unlearnkit.methods.kga import KGA, kga_loss, supervised_kl
from unlearnkit.models import frozen_copy
from unlearnkit.train import Finetune, TrainConfig, forget_prob, run


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) of two explicit distributions, by the textbook formula."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def logits(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows: (T, V)."""
    return torch.tensor(rows).log()


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "progress": False, "threads": 1, **kw})


def test_supervised_kl_by_hand():
    # batch of 2, T = 3, V = 2; position t predicts label t+1, so the supervised positions are
    # row 0: t = 0, 1; row 1: t = 1 only (t = 0 is masked, however different the distributions)
    target = torch.stack([logits([.5, .5], [.9, .1], [.3, .7]), logits([.99, .01], [.25, .75], [.3, .7])])
    model = torch.stack([logits([.8, .2], [.5, .5], [.9, .1]), logits([.01, .99], [.5, .5], [.9, .1])])
    labels = torch.tensor([[-100, 1, 0], [-100, -100, 1]])
    per_pos = [kl([.5, .5], [.8, .2]), kl([.9, .1], [.5, .5]), kl([.25, .75], [.5, .5])]  # .2231 .3681 .1308
    seq = supervised_kl(model, target, labels, reduction="sequence").item()
    tok = supervised_kl(model, target, labels, reduction="token").item()
    assert seq == pytest.approx(sum(per_pos) / 2, rel=1e-5)  # 0.3610: summed over tokens and V, / B
    assert tok == pytest.approx(sum(per_pos) / 3, rel=1e-5)  # 0.2407: mean per supervised token
    # direction: KL(target || model), as F.kl_div(log p_model, log p_target, log_target=True)
    assert seq != pytest.approx(supervised_kl(target, model, labels, reduction="sequence").item(), rel=1e-3)


def test_kga_loss_by_hand_and_its_gradient():
    gap_forget = torch.tensor(1.0, requires_grad=True)
    gap_new = torch.tensor(2.5, requires_grad=True)
    retain = torch.tensor(0.5, requires_grad=True)
    loss = kga_loss(gap_forget=gap_forget, gap_new=gap_new, retain_kl=retain, retain_weight=0.3)
    assert loss.item() == pytest.approx(1.5 + 0.3 * 0.5)
    loss.backward()
    assert gap_forget.grad.item() == -1.0  # gap too small: minimising raises it (A* moves away from A_f)
    assert gap_new.grad is None  # the target gap is a constant
    assert retain.grad.item() == pytest.approx(0.3)


def test_loss_glue_on_explicit_tables(table_lm):
    a_star = table_lm(logits([.8, .2], [.5, .5], [.5, .5]))
    a_d = table_lm(logits([.5, .5], [.5, .5], [.5, .5]))
    a_f = table_lm(logits([.5, .5], [.9, .1], [.5, .5]))
    a_n = table_lm(logits([.6, .4], [.3, .7], [.5, .5]))
    view = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "labels": torch.tensor([[-100, 1, 1]])}  # positions 0 and 1 are supervised
    method = KGA(stop_value=1.0)
    method._forget_model, method._new_model = a_f, a_n
    method._new_batches = iter([{"forget": view}] * 2)
    out = method.loss(a_star, {"forget": view, "retain": view}, a_d)
    gap_f = kl([.5, .5], [.8, .2]) + kl([.9, .1], [.5, .5])  # KL(A_f || A*) = 0.5912
    gap_n = kl([.6, .4], [.5, .5]) + kl([.3, .7], [.5, .5])  # KL(A_n || A_D) = 0.1024
    ret = kl([.5, .5], [.8, .2])  # KL(A_D || A*) = 0.2231
    assert out.logs["gap_forget"] == pytest.approx(gap_f, rel=1e-5)
    assert out.logs["gap_new"] == pytest.approx(gap_n, rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(ret, rel=1e-5)
    assert out.logs["align_loss"] == pytest.approx(gap_f - gap_n, rel=1e-5)
    assert out.loss.item() == pytest.approx(gap_f - gap_n + 0.3 * ret, rel=1e-5)
    assert out.stop  # 0.489 <= stop_value 1.0
    method.stop_value = 0.0  # disabled
    assert not method.loss(a_star, {"forget": view, "retain": view}, a_d).stop


def test_prepare_trains_frozen_aux_models_that_learn_their_data(tiny_model, make_paired, method_inputs):
    method = KGA(new_data=method_inputs["new_data"])  # default aux_epochs, aux_lr = train.lr
    data = make_paired(method)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    method.prepare(tiny_model, data, cfg(max_steps=1))
    a_f, a_n = method._forget_model, method._new_model
    assert a_f is not tiny_model and a_n is not tiny_model and a_f is not a_n
    for aux in (a_f, a_n):
        assert not aux.training and not any(p.requires_grad for p in aux.parameters())
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())  # A* untouched
    assert all(p.requires_grad for p in tiny_model.parameters())
    p0 = forget_prob(tiny_model, data)
    assert forget_prob(a_f, data) > 1.2 * p0  # A_f learned D_f
    view = next(method._new_batches)["forget"]  # A_n learned D_n: lower NLL than A_D on it
    nll = lambda m: torch.nn.functional.cross_entropy(  # noqa: E731
        forward(m, view).logits[:, :-1].transpose(1, 2), view["labels"][:, 1:], ignore_index=-100).item()
    with torch.no_grad():
        assert nll(a_n) < nll(tiny_model) - 0.2
    method.teardown(tiny_model)
    assert method._forget_model is None and method._new_model is None and method._new_batches is None


def test_kga_steps_raise_the_forget_gap_toward_the_new_gap(tiny_model, make_paired, method_inputs):
    # A_D must know D_f for KGA to have something to do: finetune the random tiny model on D_f + D_r
    train_all = make_paired(None)
    train_all.forget += [{"forget": enc} for enc in train_all.retain]
    train_all.retain = []
    run(tiny_model, Finetune(), train_all, cfg(epochs=10, batch_size=8, lr=3e-3))
    ref = frozen_copy(tiny_model)
    method = KGA(new_data=method_inputs["new_data"], stop_value=0.0)
    data = make_paired(method)
    p_before = forget_prob(tiny_model, data)
    log = run(tiny_model, method, data, cfg(max_steps=10, scheduler="constant"), ref=ref).log
    first, last = log[0], log[-3:]
    assert first["gap_forget"] < first["gap_new"]  # A* == A_D is still close to A_f on D_f
    assert sum(r["gap_forget"] for r in last) / 3 > first["gap_forget"] + 1.0  # gap opened up ...
    assert sum(r["align_loss"] for r in last) / 3 < first["align_loss"] - 1.0  # ... toward gap_new
    assert forget_prob(tiny_model, data) < p_before  # D_f answers became less likely
    assert method._forget_model is None  # freed in teardown


def test_stops_once_aligned_and_loads_given_aux_models(tiny_model, tiny_model_dir, make_paired, method_inputs):
    method = KGA(new_data=method_inputs["new_data"], forget_model=str(tiny_model_dir),
                 new_model=str(tiny_model_dir), stop_value=1e6)  # loaded: no aux training
    data = make_paired(method)
    result = run(tiny_model, method, data, cfg(max_steps=5), ref=frozen_copy(tiny_model))
    assert result.steps == 1 and result.stopped_early
    assert result.log[0]["gap_new"] == pytest.approx(0.0, abs=1e-6)  # A_n = A_D: same weights
    assert result.log[0]["gap_forget"] == pytest.approx(0.0, abs=1e-6)  # A_f = A* before the step


def test_errors(tmp_path, tiny_model, make_paired):
    method = KGA()  # building without D_n is fine (configs, docs); training is not
    with pytest.raises(ConfigError, match=r"new_data=FILE.*never trained on"):
        method.prepare(tiny_model, make_paired(method), cfg())
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="new_data"):
        KGA(new_data=missing)
    for name in ("forget_model", "new_model", "base_model"):
        with pytest.raises(ConfigError, match=name):
            KGA(**{name: str(tmp_path / "no-model")})
    with pytest.raises(ConfigError, match="kl_reduction"):
        KGA(kl_reduction="mean")
    with pytest.raises(ConfigError, match="stop_value"):
        KGA(stop_value=-0.1)
    with pytest.raises(ConfigError, match="aux_epochs"):
        KGA(aux_epochs=0)
    with pytest.raises(ConfigError, match="aux_lr"):
        KGA(aux_lr=-1e-5)
    assert KGA(stop_value=0.0).needs_ref_model and KGA().needs_retain
    with pytest.raises(RuntimeError, match="prepare"):
        KGA().loss(tiny_model, {}, None)
