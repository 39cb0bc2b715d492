"""DEPN: detect and edit privacy neurons (``unlearnkit depn``), adapted to causal LMs.

Wu et al. 2023, "DEPN: Detecting and Editing Privacy Neurons in Pretrained Language Models", EMNLP 2023,
arXiv 2310.20138. Reference code (BERT masked LM only): flamewei123/DEPN ``src/1_calculate_attribution.py``
(detector: integrated gradients over FFN activations), ``src/2_filter_privacy_neurons.py`` (per-secret
filter ``convert_to_triplet_ig`` and batch counting), ``src/3_edit_privacy_neurons.py`` (editor: zero the
output-projection column of each chosen neuron, ``Counter.most_common(erase_kn_num)``). Spec: research notes
``methods_a.md`` §6.

1. **Detector.** For each token x_t of a secret (the tokens of the record's ``secret`` string inside its
   answer), attribute P(x_t | x_<t) to the MLP intermediate activations w^l at position t-1 (the position
   that predicts x_t), one layer at a time (other layers run normally), by integrated gradients with a
   left Riemann sum: Att_i = w_i / m * sum_{j=0}^{m-1} dP(x_t | (j/m) w^l) / dw_i, m = ``ig_steps``.
   Attributions are summed over the secret's tokens (DEPN's "bag").
2. **Per-secret filter.** Keep neurons with Att >= ``threshold_ratio`` x max (``convert_to_triplet_ig``).
3. **Aggregator.** Count each (layer, neuron) over the secrets; keep the ``erase_num`` most frequent.
4. **Editor.** Zero the output-projection column of each neuron (Llama ``mlp.down_proj.weight[:, k]``,
   GPT-2 ``mlp.c_proj.weight[k, :]``), exactly the same as zeroing activation k at every position.

Deviations from the reference (all documented options or consequences of the causal-LM adaptation):

* Causal LM instead of masked LM: the activation is taken at position t-1 (not at a [MASK] token), and
  the "bag" of single-masked texts becomes the teacher-forced secret tokens of one answer.
* Hook point: the INPUT of the output projection (Llama: act(gate) * up; GPT-2: act(c_fc(x))) - the
  FFN "intermediate activation" of the paper.
* DEPN's ``mode_ratio_bag`` auto-adjusted frequency threshold is not reproduced; only the editor's
  ``most_common(erase_kn_num)`` rule is (the one that decides which neurons are edited). Ties in the count
  are broken by (layer, neuron) order so the result is deterministic.
* For NAME / RANDOM secrets the reference editor writes the [UNK] embedding into the column; we always
  zero (the paper's text: "setting their activations to zero").
* A secret whose attributions are all <= 0 contributes no neuron (the reference would keep every neuron
  when max <= 0, since Att >= 0.1 x max then holds trivially for many negative values).
* Metrics: secret-token probability and MRR from teacher-forced p(secret token | prefix) (the paper's MRR
  definition, not the reference code's digit comparison), exposure with the digit-wise rank of
  ``get_memorization.py`` (``metrics.exposure.exposure_digitwise``) or, when the secret's digits are not
  one token each, the sampled-candidate rank (``exposure_exact``); perplexity on the non-secret records
  (or on the non-secret answer tokens when every record holds a secret) instead of DEPN's Enron split.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.format import Encoded, PromptTemplate, encode, render_prompt
from .data.records import Example, load_examples
from .data.spans import Span, spans_from_example
from .errors import ConfigError, DataError
from .metrics.exposure import exposure_digitwise, exposure_exact
from .metrics.secret_probes import candidate_space_size, digit_ranks, random_candidates, secret_scores
from .metrics.sensitive_probes import answer_span_mask
from .models import decoder_layers

Neuron = tuple[int, int]  # (layer, neuron index)

DEPN_METRIC_INFO = {
    "secret_prob": {"higher_is_better": False, "version": 1,
                    "description": "mean teacher-forced p(secret token | prefix), mean over secrets"},
    "secret_mrr": {"higher_is_better": False, "version": 1,
                   "description": "mean reciprocal rank of the secret tokens among the vocabulary, mean over secrets"},
    "exposure": {"higher_is_better": False, "version": 1,
                 "description": "Carlini et al. 2019 exposure of the `secret` strings (digit-wise rank as DEPN)"},
    "perplexity": {"higher_is_better": False, "version": 1,
                   "description": "perplexity of the non-secret records' answers (or of the non-secret answer tokens)"},
}


@dataclass
class DepnConfig:
    """``unlearnkit depn``: find the neurons that hold the records' secrets and zero them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    records: str = ""  # QA records; the secret is the `secret` column, `sensitive` strings, or the whole answer
    out: str = ""  # the edited model directory; results go to OUT.results.json
    ig_steps: int = 20  # m of the Riemann sum = batch_size x num_batch = 20 x 1 (DEPN 1_run_detector.sh)
    threshold_ratio: float = 0.1  # keep Att >= ratio x max per secret (DEPN convert_to_triplet_ig comment)
    erase_num: int = 20  # z, the most frequent neurons edited; DEPN README: 10-200 (phones / names), 200-500 (text)
    max_length: int = 128
    template: PromptTemplate = field(default_factory=PromptTemplate)
    secret_key: str = "secret"  # column holding the secret string (must occur in the answer)
    exposure_candidates: int = 1000  # sampled candidates when the digit-wise rank is not possible

    def validate(self) -> None:
        if not self.records:
            raise ConfigError("records is not set; pass --records FILE (question/answer records with a secret)")
        for name in ("ig_steps", "erase_num", "max_length", "exposure_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.threshold_ratio <= 1.0:
            raise ConfigError(f"threshold_ratio must be in [0, 1] (a fraction of the max attribution), "
                              f"got {self.threshold_ratio}")


# --------------------------------------------------------------------------------------- pure maths
def integrated_gradients(fn: Callable[[Tensor], Tensor], w: Tensor, *, steps: int) -> Tensor:
    """Left-Riemann integrated gradients of a scalar function at ``w`` from the zero baseline.

    ``fn`` maps a batch of inputs (m, n) to outputs (m,), row by row (rows must not interact).
    Returns (n,) Att_i = w_i / m * sum_{j=0}^{m-1} dfn/dx_i at x = (j/m) w  (DEPN eq. 2, m = ``steps``).
    """
    alphas = torch.arange(steps, dtype=w.dtype, device=w.device) / steps  # (m,) 0, 1/m, ..., (m-1)/m
    scaled = (alphas[:, None] * w.detach()[None, :]).requires_grad_(True)  # (m, n)
    (grad,) = torch.autograd.grad(fn(scaled).sum(), scaled)  # (m, n): row j = gradient at (j/m) w
    return w.detach() * grad.sum(0) / steps  # (n,)


def select_neurons(atts: Tensor, ratio: float) -> set[Neuron]:
    """Neurons of one secret with Att >= ratio x max (DEPN ``convert_to_triplet_ig``).

    ``atts`` (L, I): attributions per layer and neuron. A secret whose max is <= 0 gives no neuron.
    """
    top = float(atts.max())
    if top <= 0:
        return set()
    layer, neuron = torch.nonzero(atts >= ratio * top, as_tuple=True)
    return set(zip(layer.tolist(), neuron.tolist()))


def aggregate(per_secret: Sequence[set[Neuron]], z: int) -> list[tuple[int, int, int]]:
    """The ``z`` neurons found for the most secrets, as (layer, neuron, count) (DEPN ``most_common``).

    Sorted by count (descending), ties by (layer, neuron) so the result does not depend on set order.
    """
    counts = Counter(n for found in per_secret for n in found)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(layer, neuron, count) for (layer, neuron), count in ranked[:z]]


# --------------------------------------------------------------------------------------- model glue
def mlp_out_proj(model: Any, layer: int) -> tuple[torch.nn.Module, bool]:
    """(output projection of layer ``layer``'s MLP, whether its weight is (out, in) like nn.Linear).

    Llama / Mistral / Qwen: ``mlp.down_proj`` (nn.Linear, weight (H, I)); GPT-2: ``mlp.c_proj`` (Conv1D,
    weight (I, H)). Its input is the intermediate activation DEPN attributes and edits.
    """
    block = decoder_layers(model)[layer]
    mlp = getattr(block, "mlp", None)
    if isinstance(getattr(mlp, "down_proj", None), torch.nn.Linear):
        return mlp.down_proj, True
    proj = getattr(mlp, "c_proj", None)
    if proj is not None and type(proj).__name__ == "Conv1D":
        return proj, False
    raise ConfigError(f"DEPN needs an MLP output projection (mlp.down_proj, as in Llama / Mistral / Qwen, or GPT-2's "
                      f"mlp.c_proj); {type(model).__name__} layer {layer} has none. Use a supported architecture.")


def _activations(model: Any, input_ids: Tensor, position: int) -> list[Tensor]:
    """Per layer, the (I,) input of the MLP output projection at ``position`` (one unmodified forward)."""
    acts: list[Tensor] = []
    hooks = [mlp_out_proj(model, i)[0].register_forward_pre_hook(
        lambda _m, inp: acts.append(inp[0][0, position].detach())) for i in range(len(decoder_layers(model)))]
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for h in hooks:
            h.remove()
    return acts


def _token_prob_fn(model: Any, input_ids: Tensor, layer: int, position: int, target: int) -> Callable[[Tensor], Tensor]:
    """x (m, I) -> (m,) P(target | prefix) when layer ``layer``'s activation at ``position`` is set to x."""
    proj, _ = mlp_out_proj(model, layer)

    def fn(x: Tensor) -> Tensor:
        def replace(_m: Any, inp: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            h = inp[0].clone()  # (m, T, I)
            h[:, position] = x.to(h.dtype)  # other positions and layers stay normal
            return (h, *inp[1:])

        handle = proj.register_forward_pre_hook(replace)
        try:
            logits = model(input_ids=input_ids.expand(x.shape[0], -1)).logits[:, position]  # (m, V)
        finally:
            handle.remove()
        return torch.softmax(logits.float(), -1)[:, target]  # (m,)

    return fn


def secret_attributions(model: Any, input_ids: list[int], positions: Sequence[int], *, steps: int) -> Tensor:
    """(L, I) DEPN attributions of the secret tokens at ``positions`` (indices into ``input_ids``), summed.

    Token at p is predicted at p-1; the sequence is cut after p-1 (a causal LM never looks ahead).
    """
    n_layers = len(decoder_layers(model))
    per_token = []
    for p in positions:
        ids = torch.tensor([input_ids[:p]])  # (1, p): prefix x_<t
        acts = _activations(model, ids, p - 1)
        rows = [integrated_gradients(_token_prob_fn(model, ids, layer, p - 1, input_ids[p]), acts[layer], steps=steps)
                for layer in range(n_layers)]
        per_token.append(torch.stack(rows))  # (L, I)
    return torch.stack(per_token).sum(0)  # (L, I): summed over the secret's tokens (DEPN's bag)


def secret_spans(examples: Sequence[Example], key: str) -> list[list[Span]]:
    """Character spans of each record's secret on its answer; [] = a non-secret record.

    ``extras[key]`` (a string that must occur in the answer), else ``sensitive`` / ``sensitive_spans``
    annotations; when no record has either, every whole answer is the secret.
    """
    if not examples:
        raise DataError("the records file has no records; DEPN needs question/answer records holding secrets")
    out: list[list[Span]] = []
    for i, ex in enumerate(examples, 1):
        secret = ex.extras.get(key)
        if isinstance(secret, str) and secret.strip():
            start = ex.answer.find(secret)
            if start < 0:
                raise DataError(f"record {i} (question {(ex.question or '')[:60]!r}): its {key} {secret!r} does not "
                                f"occur in its answer {ex.answer[:80]!r}; fix the record or the {key} column")
            out.append([(start, start + len(secret))])
        else:
            out.append(spans_from_example(ex))
    if not any(out):
        return [[(0, len(ex.answer))] for ex in examples]
    return out


def secret_positions(enc: Encoded, example: Example, spans: Sequence[Span], tokenizer: Any,
                     template: PromptTemplate, *, index: int) -> list[int]:
    """Indices into ``enc.input_ids`` of the answer tokens overlapping ``spans`` (at least one)."""
    mask = answer_span_mask(enc, example, spans, tokenizer, template)  # (T,) over the answer tokens
    positions = [enc.prompt_len + int(j) for j in np.flatnonzero(mask)]
    if not positions:
        raise DataError(f"record {index}: its secret has no token left after truncation to max_length; "
                        "raise max_length")
    return positions


def _encode(example: Example, tokenizer: Any, cfg: DepnConfig) -> Encoded:
    return encode(example.question, example.answer, tokenizer, template=cfg.template, max_length=cfg.max_length)


def detect(model: Any, tokenizer: Any, examples: Sequence[Example], cfg: DepnConfig) -> list[tuple[int, int, int]]:
    """DEPN detector + aggregator: the ``cfg.erase_num`` most frequent privacy neurons (layer, neuron, count)."""
    spans = secret_spans(examples, cfg.secret_key)
    mlp_out_proj(model, 0)  # a clear ConfigError before any work on an unsupported architecture
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # gradients are taken w.r.t. the activations only
    try:
        found = []
        # disable=None: the bar shows only on a terminal
        for i, (ex, sp) in enumerate(tqdm(list(zip(examples, spans)), desc="depn:detect", disable=None, leave=False), 1):
            if sp:
                enc = _encode(ex, tokenizer, cfg)
                pos = secret_positions(enc, ex, sp, tokenizer, cfg.template, index=i)
                atts = secret_attributions(model, enc.input_ids, pos, steps=cfg.ig_steps)  # (L, I)
                found.append(select_neurons(atts, cfg.threshold_ratio))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return aggregate(found, cfg.erase_num)


@torch.no_grad()
def edit(model: Any, neurons: Sequence[Sequence[int]]) -> Any:
    """DEPN editor: zero the output-projection weights of each (layer, neuron, ...) in place.

    Equivalent to zeroing the activation at every position (the projection's bias is untouched).
    """
    for layer, neuron, *_ in neurons:
        proj, out_in = mlp_out_proj(model, layer)
        if out_in:
            proj.weight[:, neuron] = 0.0  # nn.Linear (H, I): column k reads activation k
        else:
            proj.weight[neuron, :] = 0.0  # GPT-2 Conv1D (I, H): row k reads activation k
    return model


def layer_histogram(neurons: Sequence[Sequence[int]]) -> dict[int, int]:
    """{layer: number of edited neurons in it}, layers in order."""
    return dict(sorted(Counter(int(n[0]) for n in neurons).items()))


# --------------------------------------------------------------------------------------- metrics
def _secret_exposure(model: Any, tokenizer: Any, ex: Example, secret: str, cfg: DepnConfig,
                     rng: np.random.Generator) -> float | None:
    """Digit-wise exposure (DEPN) of ``secret`` after the prompt and the answer text before it; sampled
    candidates when its digits are not one token each; None when neither applies."""
    prefix = render_prompt(ex.question, tokenizer, cfg.template) + ex.answer[: ex.answer.find(secret)]
    try:
        return exposure_digitwise(digit_ranks=digit_ranks(model, tokenizer, prefix, secret))
    except ValueError:
        pass
    try:
        cands = random_candidates(secret, cfg.exposure_candidates, rng)
        scores = secret_scores(model, tokenizer, prefix, [secret, *cands])
        return exposure_exact(secret_score=scores[0], candidate_scores=scores[1:],
                              space_size=candidate_space_size(secret))
    except ValueError:
        return None


def reciprocal_rank(scores: Tensor, target: int) -> float:
    """1 / rank of ``target`` among ``scores`` (V,), rank = 1 + the number of strictly higher scores
    (ties favour the secret): one term of DEPN's MRR (the paper's definition, not the code's)."""
    return 1.0 / (1 + int((scores > scores[target]).sum()))


@torch.no_grad()
def _token_stats(model: Any, enc: Encoded, positions: set[int]) -> tuple[list[float], list[float], list[float]]:
    """(secret-token probs, secret-token 1/rank, NLLs of the other answer tokens) of one record."""
    logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits, -1)
    probs, rr, other = [], [], []
    for p in range(enc.prompt_len, len(enc.input_ids)):
        y = enc.input_ids[p]
        if p in positions:
            probs.append(float(logp[p - 1, y].exp()))
            rr.append(reciprocal_rank(logits[p - 1], y))
        else:
            other.append(float(-logp[p - 1, y]))
    return probs, rr, other


def measure(model: Any, tokenizer: Any, examples: Sequence[Example], spans: Sequence[Sequence[Span]],
            cfg: DepnConfig) -> tuple[dict[str, float | None], dict[str, list]]:
    """Secret probability / MRR / exposure over the secret records and perplexity elsewhere."""
    model.eval()
    rng = np.random.default_rng(0)  # the same candidates before and after the edit
    per: dict[str, list] = {"secret_prob": [], "secret_mrr": [], "exposure": []}
    nll_records: list[float] = []
    nll_tokens: list[float] = []
    for i, (ex, sp) in enumerate(zip(examples, spans), 1):
        enc = _encode(ex, tokenizer, cfg)
        pos = set(secret_positions(enc, ex, sp, tokenizer, cfg.template, index=i)) if sp else set()
        probs, rr, other = _token_stats(model, enc, pos)
        if not sp:
            nll_records += other
            continue
        nll_tokens += other
        per["secret_prob"].append(float(np.mean(probs)))
        per["secret_mrr"].append(float(np.mean(rr)))
        secret = ex.extras.get(cfg.secret_key)
        if isinstance(secret, str) and secret.strip():
            per["exposure"].append(_secret_exposure(model, tokenizer, ex, secret, cfg, rng))
    nll = nll_records or nll_tokens
    exps = [e for e in per["exposure"] if e is not None]
    values = {"secret_prob": float(np.mean(per["secret_prob"])), "secret_mrr": float(np.mean(per["secret_mrr"])),
              "exposure": float(np.mean(exps)) if exps else None,
              "perplexity": math.exp(float(np.mean(nll))) if nll else None}
    return values, per


# --------------------------------------------------------------------------------------- pipeline
def run_depn(cfg: DepnConfig) -> dict[str, Any]:
    """Load, measure, detect, edit, measure again; save the model to ``cfg.out`` and OUT.results.json."""
    from .api import _check_out, _load
    from .models import save_model
    from .report import build_results, write_json_atomic

    cfg.validate()
    out = _check_out(cfg.out)
    examples = load_examples(cfg.records)
    spans = secret_spans(examples, cfg.secret_key)
    model, tok = _load(cfg.model)
    mlp_out_proj(model, 0)
    t0 = time.perf_counter()
    before, per_before = measure(model, tok, examples, spans, cfg)
    t1 = time.perf_counter()
    neurons = detect(model, tok, examples, cfg)
    t2 = time.perf_counter()
    if not neurons:
        warnings.warn("DEPN found no privacy neuron (all attributions <= 0); the model is saved unchanged",
                      stacklevel=2)
    edit(model, neurons)
    after, per_after = measure(model, tok, examples, spans, cfg)
    n_secret = sum(bool(s) for s in spans)
    ppl_on = "non-secret records" if n_secret < len(examples) else "non-secret answer tokens"
    config = {**asdict(cfg), "perplexity_on": ppl_on, "neurons": [list(n) for n in neurons],
              "layer_histogram": layer_histogram(neurons)}
    doc = build_results(
        models={"before": {"path": cfg.model.path, **before}, "depn": {"path": str(out), **after}},
        metric_info=DEPN_METRIC_INFO, per_example={"before": per_before, "depn": per_after}, config=config,
        splits={"secret_records": n_secret, "other_records": len(examples) - n_secret},
        timing={"measure_s": t1 - t0, "detect_s": t2 - t1, "total_s": time.perf_counter() - t0})
    card = {"title": "Privacy neurons edited with unlearnkit (DEPN)", "base_model": cfg.model.path, "method": "depn",
            "config": config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_model(model, tok, out, card=card)
    write_json_atomic(out.with_name(out.name + ".results.json"), doc)
    return doc
