"""Knowledge updating: ``unlearnkit update`` - F-Learning and its plain-finetuning baseline.

F-Learning, "forgetting before learning" (Ni et al. 2024, "Forgetting before Learning: Utilizing
Parametric Arithmetic for Knowledge Updating in Large Language Models", ACL 2024, arXiv 2311.08011;
no official code found): to replace old facts by new ones,

1. finetune a copy of the model on the OLD facts (prompt -> target_true): theta_old;
2. forget them by parametric subtraction: theta' = theta_0 - lambda * (theta_old - theta_0)
   (task-vector negation, :mod:`unlearnkit.methods.task_vector`; full weights or a LoRA delta);
3. finetune theta' on the NEW facts (prompt -> target_new).

``method="finetune"`` is the baseline: step 3 alone from theta_0, at the same budget.

Settings not verified in the paper (research notes ``methods_b.md`` §1) are options with stated
defaults: lambda (``scale``, default 1.0; the paper tunes it, the notes propose a sweep over
{0.1, 0.3, 0.5, 0.7, 1.0}), the learning rates / epochs of the two stages, the LoRA rank.

Evaluation before and after (``metrics/edit.py``): reliability, generality (paraphrases), locality
(unrelated prompts whose predictions must not change) and the rate at which the old answer still
beats the new one. Results go to ``OUT.results.json`` next to the saved model.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .data.edits import Edit, load_edits, new_examples, old_examples
from .data.format import Encoded, PromptTemplate, collate, encode
from .errors import ConfigError
from .metrics.edit import edit_generality, edit_locality, edit_old_answer_rate, edit_reliability
from .metrics.probes import ProbeSettings, _score, greedy_answers
from .train import TrainConfig, TrainResult

UPDATE_METHODS = ("flearning", "finetune")

EDIT_METRIC_INFO = {
    "reliability": {"higher_is_better": True, "version": 1, "description": "token accuracy of the new answers"},
    "generality": {"higher_is_better": True, "version": 1,
                   "description": "token accuracy of the new answers after paraphrased prompts"},
    "locality": {"higher_is_better": True, "version": 1,
                 "description": "share of unrelated-prompt predictions unchanged by the update"},
    "old_answer_rate": {"higher_is_better": False, "version": 1,
                        "description": "share of edits whose old answer is still more likely than the new one"},
}


@dataclass
class UpdateConfig:
    """``unlearnkit update``: replace the old answers of ``edits`` by the new ones."""

    model: ModelConfig = field(default_factory=ModelConfig)
    edits: str = ""  # knowledge-update records (data/edits.py: flat, CounterFact or zsRE layout)
    method: str = "flearning"  # flearning | finetune (the baseline: learn the new facts only)
    scale: float = 1.0  # lambda of theta_0 - lambda * delta_old; UNVERIFIED (tuned in the paper)
    delta: str = "full"  # forget stage: "full" finetuning or a "lora" delta (F-Learning's LoRA variant)
    forget: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=3.0))  # stage 1 (old facts)
    learn: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=3.0))  # stage 3 (new facts)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    max_length: int = 128
    max_new_tokens: int = 16  # greedy answer length for locality prompts given without an answer
    out: str = ""

    def validate(self) -> None:
        if self.method not in UPDATE_METHODS:
            raise ConfigError(f"method={self.method!r}; choose one of {', '.join(UPDATE_METHODS)}")
        if self.delta not in ("full", "lora"):
            raise ConfigError(f"delta={self.delta!r}; choose full or lora")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if not self.edits:
            raise ConfigError("edits is not set; pass --edits FILE (records with prompt / target_true / target_new)")


@dataclass
class EditProbe:
    """Per-item arrays of one model on a list of edits (what the edit metrics need)."""

    match_new: list[np.ndarray]  # N x (T_i,) token matches of target_new after the prompt
    logp_new: np.ndarray  # (N,) summed log p(target_new | prompt)
    logp_old: np.ndarray  # (N,) summed log p(target_true | prompt)
    match_para: list[np.ndarray]  # P x (T_j,) token matches of target_new after each paraphrase
    pred_loc: list[np.ndarray]  # L x (T_k,) argmax ids at each locality answer position


@torch.no_grad()
def argmax_predictions(model: Any, encs: list[Encoded], pad_id: int, batch_size: int = 32) -> list[np.ndarray]:
    """Per example (T_i,) argmax next-token ids at the answer positions (no EOS), teacher-forced."""
    out = []
    for start in range(0, len(encs), batch_size):
        chunk = encs[start : start + batch_size]
        b = collate(chunk, pad_id)
        pred = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)  # (B, T-1)
        for row, e in zip(pred, chunk):
            n, t = e.prompt_len, len(e.input_ids) - e.prompt_len - 1  # answer tokens without EOS
            out.append(row[n - 1 : n - 1 + t].numpy())
    return out


def locality_pairs(model: Any, tokenizer: Any, edits: list[Edit], cfg: UpdateConfig) -> list[tuple[str, str]]:
    """(prompt, answer) of every locality prompt; a missing answer is the model's own greedy one."""
    pairs = [(p, a) for e in edits for p, a in e.locality]
    missing = [i for i, (_, a) in enumerate(pairs) if a is None]
    if missing:
        s = ProbeSettings(max_new_tokens=cfg.max_new_tokens, progress=False)
        answers = greedy_answers(model, tokenizer, [pairs[i][0] for i in missing], cfg.template, s)
        for i, a in zip(missing, answers):
            pairs[i] = (pairs[i][0], a or tokenizer.eos_token)
    return [(p, a) for p, a in pairs if a]


def probe_edits(model: Any, tokenizer: Any, edits: list[Edit], loc: list[tuple[str, str]], cfg: UpdateConfig) -> EditProbe:
    """One teacher-forced pass per item kind: new / old answers, paraphrases, locality prompts."""
    def enc(pairs: list[tuple[str, str]]) -> list[Encoded]:
        return [encode(q, a, tokenizer, template=cfg.template, max_length=cfg.max_length) for q, a in pairs]

    model.eval()
    pad = tokenizer.pad_token_id
    new = _score(model, enc([(e.prompt, e.target_new) for e in edits]), pad, 32, True)
    old = _score(model, enc([(e.prompt, e.target_true) for e in edits]), pad, 32, True)
    paras = [(p, e.target_new) for e in edits for p in e.paraphrase_prompts]
    para = _score(model, enc(paras), pad, 32, True)["match"] if paras else []
    return EditProbe(match_new=new["match"], logp_new=np.array([lp.sum() for lp in new["logp"]]),
                     logp_old=np.array([lp.sum() for lp in old["logp"]]), match_para=para,
                     pred_loc=argmax_predictions(model, enc(loc), pad) if loc else [])


def edit_metrics(probe: EditProbe, before: EditProbe | None = None) -> dict[str, float | None]:
    """The edit metrics of one model (locality needs the model before the update)."""
    values = {"reliability": edit_reliability(token_match=probe.match_new).value,
              "old_answer_rate": edit_old_answer_rate(logp_old=probe.logp_old, logp_new=probe.logp_new).value,
              "generality": edit_generality(token_match=probe.match_para).value if probe.match_para else None,
              "locality": None}
    if before is not None and probe.pred_loc:
        values["locality"] = edit_locality(pred_before=before.pred_loc, pred_after=probe.pred_loc).value
    return values


def apply_update(model: Any, tokenizer: Any, edits: list[Edit], cfg: UpdateConfig, *, log_path: Any = None) -> Any:
    """Run the update in place (F-Learning's forget stage first when ``method="flearning"``);
    return the model (wrapped in LoRA when ``cfg.model.lora`` is set) and the two stages' results."""
    from .data.pair import build_paired
    from .methods.task_vector import TaskVector
    from .models import maybe_add_lora
    from .train import Finetune, run

    def paired(examples: list) -> Any:
        return build_paired(None, examples, [], tokenizer, template=cfg.template, max_length=cfg.max_length,
                            seed=cfg.learn.seed)

    stages: dict[str, TrainResult] = {}
    if cfg.method == "flearning":
        forget = TaskVector(scale=cfg.scale, delta=cfg.delta)
        stages["forget_old"] = forget.apply(model, paired(old_examples(edits)), cfg.forget, desc="update:old")
    model = maybe_add_lora(model, cfg.model.lora)
    stages["learn_new"] = run(model, Finetune(), paired(new_examples(edits)), cfg.learn, log_path=log_path,
                              desc="update:new")
    return model, stages


def run_update(cfg: UpdateConfig) -> dict[str, Any]:
    """Load, evaluate, update, evaluate again, save the model to ``cfg.out`` and the results next to it."""
    from .api import _check_out, _load
    from .models import save_model
    from .report import build_results, write_json_atomic

    cfg.validate()
    out = _check_out(cfg.out)
    edits = load_edits(cfg.edits)
    model, tok = _load(cfg.model)
    t0 = time.perf_counter()
    loc = locality_pairs(model, tok, edits, cfg)
    before = probe_edits(model, tok, edits, loc, cfg)
    model, stages = apply_update(model, tok, edits, cfg, log_path=out.with_name(out.name + ".train_log.jsonl"))
    after = probe_edits(model, tok, edits, loc, cfg)
    models = {"before": {"path": cfg.model.path, **edit_metrics(before)},
              cfg.method: {"path": str(out), **edit_metrics(after, before)}}
    doc = build_results(models=models, metric_info=EDIT_METRIC_INFO, config=asdict(cfg),
                        timing={"update_s": time.perf_counter() - t0},
                        training={k: {"steps": r.steps, "log": r.log} for k, r in stages.items()})
    card = {"title": f"Updated with unlearnkit ({cfg.method})", "base_model": cfg.model.path, "method": cfg.method,
            "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_model(model, tok, out, card=card)
    write_json_atomic(out.with_name(out.name + ".results.json"), doc)
    return doc
