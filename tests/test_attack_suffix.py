"""Adversarial suffix attack (GCG / DUA): one universal suffix optimized on some forget questions."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.suffix import Suffix, allowed_tokens, find_span, sample_candidates, suffix_text, token_gradients
from unlearnkit.audit import forget_probability
from unlearnkit.data.format import IGNORE, PromptTemplate
from unlearnkit.data.records import Example
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.recovery import recovery_ratio

W_E = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]  # (V=3, d=2) embedding rows
HEAD = [[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]]  # (d=2, V=3): logits = embedding @ HEAD


class EmbLM(torch.nn.Module):
    """logits[b, t] = embedding[b, t] @ HEAD: a model whose one-hot gradient is easy to work out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(3, 2)
        self.emb.weight.data = torch.tensor(W_E)
        self.head = torch.nn.Parameter(torch.tensor(HEAD))

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(logits=e @ self.head)


def test_one_hot_gradient_by_hand():
    # sequence [0, s, 2] with the suffix s = token 1 at position 1; the only answer token is the last one,
    # predicted from position 1: loss = -log softmax(W_E[1] @ HEAD)[2]
    model = EmbLM()
    batch = {"input_ids": torch.tensor([[0, 1, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([[IGNORE, IGNORE, 2]])}
    grad = token_gradients(model, batch, [1], torch.tensor([1]))
    # by hand: logits = [0, 1, 1]; p = softmax; dL/dlogits = p - onehot(2); dL/de = HEAD @ (p - y);
    # dL/d one_hot[0, v] = W_E[v] . dL/de
    logits = [0.0, 1.0, 1.0]
    z = sum(math.exp(v) for v in logits)
    d_logits = [math.exp(v) / z - (1.0 if i == 2 else 0.0) for i, v in enumerate(logits)]
    d_e = [sum(HEAD[k][j] * d_logits[j] for j in range(3)) for k in range(2)]
    expected = [sum(W_E[v][k] * d_e[k] for k in range(2)) for v in range(3)]
    assert grad.shape == (1, 3)
    assert torch.allclose(grad[0], torch.tensor(expected), atol=1e-6)
    # the gradient goes to the one-hot matrix only: no parameter .grad, requires_grad as it was
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_candidate_sampling_by_hand():
    suffix = torch.tensor([5, 5, 5, 5])
    grad = torch.tensor([[0.0, -3.0, -2.0, -1.0, 4.0, 0.5],  # most negative: 1, 2 (then 3)
                         [-9.0, 1.0, 2.0, -4.0, -5.0, 0.0],  # 0 is not allowed -> 4, 3
                         [1.0, 1.0, 1.0, 1.0, 1.0, -1.0],  # 5, then a tie among 1..4: 5 is one of the top 2
                         [0.0, 0.0, -1.0, -2.0, 0.0, -7.0]])  # 5, 3
    allowed = torch.tensor([False, True, True, True, True, True])
    cands = sample_candidates(suffix, grad, allowed, 2, 8, torch.Generator().manual_seed(0))
    tops = [{1, 2}, {4, 3}, {5}, {5, 3}]
    assert cands.shape == (8, 4)
    for c, row in enumerate(cands.tolist()):
        pos = c * 4 // 8  # positions evenly spread: 0, 0, 1, 1, 2, 2, 3, 3
        assert [t for i, t in enumerate(row) if i != pos] == [5, 5, 5]  # exactly one position changes
        assert row[pos] in tops[pos] or (pos == 2 and row[pos] in {1, 2, 3, 4})
    assert not (cands == 0).any()  # the disallowed token is never proposed


def test_find_span_accepts_only_an_exact_unambiguous_insertion():
    base = [1, 7, 8, 9]  # BOS, question, tail
    assert find_span(base, [1, 7, 3, 4, 8, 9], [3, 4]) == 2
    assert find_span(base, [1, 7, 3, 5, 8, 9], [3, 4]) is None  # the suffix re-tokenized differently
    assert find_span(base, [1, 6, 4, 8, 9], [3, 4]) is None  # merged with the question's last token
    assert find_span([1, 7, 7, 9], [1, 7, 7, 7, 9], [7]) is None  # could sit at 1, 2 or 3: ambiguous


def test_suffix_text_and_allowed_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok(" ! !", add_special_tokens=False).input_ids
    assert suffix_text(tok, ids) == " ! !"  # the leading space of the first token is kept
    ok = allowed_tokens(tok, len(tok) + 5)
    assert not ok[tok.all_special_ids].any() and not ok[len(tok):].any()
    assert not ok[tok("\n", add_special_tokens=False).input_ids].any() and ok[ids].all()


def test_suffix_lowers_the_training_loss_and_raises_held_out_forget_probability(unlearned, learned_model, tiny_model,
                                                                              tiny_tokenizer, tiny_examples):
    forget = tiny_examples[0]
    data = AttackData(forget_train=forget[:4], forget_eval=forget[4:], max_length=128)
    prob = lambda m, exs: forget_probability(m, tiny_tokenizer, exs, PromptTemplate(), 128)  # noqa: E731
    attack = Suffix(steps=20, candidates=48)
    before = {n: p.detach().clone() for n, p in unlearned.named_parameters()}
    out = attack.run(unlearned, tiny_tokenizer, data)
    assert out.model is unlearned and all(torch.equal(p, before[n]) for n, p in unlearned.named_parameters())
    assert [e.question for e in out.examples] == [e.question + out.info["suffix"] for e in data.forget_eval]
    info = out.info
    assert json.loads(json.dumps(info)) == info and info["eval_retokenized"] == 4  # held-out suffix = optimized ids
    target, base, attacked = prob(learned_model, forget[4:]), prob(unlearned, forget[4:]), prob(unlearned, out.examples)
    ratio = recovery_ratio(attacked=attacked, unlearned=base, target=target).value
    print(f"\nsuffix {info['suffix']!r}: train loss no suffix {info['loss_before']:.3f} init {info['loss_init']:.3f} "
          f"optimized {info['loss_after']:.3f}\nheld-out forget prob: target {target:.4f} unlearned {base:.4f} "
          f"attacked {attacked:.4f} (x{attacked / base:.2f}) ratio {ratio:.3f}")
    # the optimization works on what it optimizes: the training questions' answers get likelier
    assert info["loss_after"] < info["loss_init"] - 0.2 and info["loss_after"] < info["loss_before"] - 0.2
    # ... and the same suffix transfers to the held-out questions (weakly on this tiny model: see the ratio)
    assert attacked > 1.3 * base and ratio > 0
    # control: the model that never learned the forget set gains (almost) nothing from its own best suffix
    never = attack.run(tiny_model, tiny_tokenizer, data)
    gain_never = prob(tiny_model, never.examples) / prob(tiny_model, forget[4:])
    print(f"never-learned model: train loss {never.info['loss_init']:.3f} -> {never.info['loss_after']:.3f}, "
          f"held-out prob x{gain_never:.2f}")
    assert attacked / base > gain_never + 0.1


def test_suffix_is_seeded(tiny_model, tiny_tokenizer, tiny_examples):
    forget = tiny_examples[0]
    data = AttackData(forget_train=forget[:2], forget_eval=forget[2:3], max_length=128, seed=3)
    a, b = (Suffix(steps=2, candidates=8).run(tiny_model, tiny_tokenizer, data).info for _ in range(2))
    assert a["suffix_ids"] == b["suffix_ids"] and a["steps"] == 2 and len(a["suffix_ids"]) == 20
    assert Suffix(budget=0.5).scaled(Suffix().steps) == 15


def test_suffix_errors(tiny_model, tiny_tokenizer, tiny_examples):
    with pytest.raises(DataError, match="forget_train is empty"):
        Suffix().run(tiny_model, tiny_tokenizer, AttackData(forget_train=[], forget_eval=tiny_examples[0]))
    with pytest.raises(DataError, match=r"forget_eval\[0\] has no question"):
        Suffix().run(tiny_model, tiny_tokenizer, AttackData(forget_train=tiny_examples[0][:1],
                                                            forget_eval=[Example(None, "some text")]))
    for bad in ({"budget": 0}, {"n_tokens": 0}, {"steps": 0}, {"topk": -1}, {"candidates": 0}, {"init": " "}):
        with pytest.raises(ConfigError):
            Suffix(**bad)
