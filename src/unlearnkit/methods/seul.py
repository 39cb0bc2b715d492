"""SeUL: selective (span-level) unlearning (Wang, Zeng, Guo, Wong, Gottlob 2024, "Selective
Forgetting: Advancing Machine Unlearning Techniques and Evaluation in Language Models",
arXiv 2402.05813).

``L_SeUL = (1 / |S|) * sum_{t in S} log p_theta(x_t | x_<t)``: gradient ascent on the *sensitive
span* tokens S of the forget answers only (minus their mean NLL), no loss on the other tokens, plus
an optional retain term. The SeUL metrics are ``s_ma`` / ``s_el`` (``metrics/sensitive.py``).

Reference implementation: none; no official code was found. The spans come from the annotation
component ``unlearnkit.annotate`` (record annotations, regex annotators, or online from the model's
token likelihoods; also ``unlearnkit annotate`` on the command line) and are mapped to tokens with
``metrics.sensitive_probes.answer_span_mask``, the same mapping the S-MA / S-EL probes use. The spec is ``shared/research/methods_a.md`` §5, whose loss
formula is reconstructed from the abstract (UNVERIFIED).

Deviations and unverified choices (all configurable):
- Span sources (``spans``): ``records`` (the record's ``sensitive_spans`` offsets / ``sensitive``
  strings on the answer), ``regex`` (email / phone / date / digit runs), their union
  ``records+regex`` (the default: annotated records keep their annotations and unannotated ones
  still get their PII-like strings; use ``records`` for the annotations alone), or ``online``.
  The paper's offline two-stage LLM annotation is not reproduced; annotate with an LLM yourself
  and pass the result as a ``sensitive`` column.
- ``online``: each answer token is scored by the initial model's p(x_t | x_<t) (computed once in
  ``prepare``) and the top ``online_fraction`` of each answer is kept, by ``online_rule``. The
  abstract only says "language probability scores": the rule (highest = most memorised, lowest =
  most surprising) and the fraction are UNVERIFIED. Adjacent selected tokens form one span.
- Normalisation: the mean over the span tokens of the whole batch (HF-style, as the GA of Jang et
  al. that SeUL builds on); records without a span token contribute nothing.
- Retain term: none by default, following Jang et al.'s GA loop (arXiv 2210.01504) that SeUL
  extends; ``retain_loss=nll|kl`` adds one (``base.retain_term``).
- Jang et al.'s stopping on EL/MA thresholds is a loop setting (``train.stop_forget_prob``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..annotate import annotate, check_settings
from ..data.format import IGNORE, Encoded, PromptTemplate
from ..data.spans import token_runs
from ..errors import DataError
from ..logprobs import forward, token_logp
from ..metrics.sensitive_probes import answer_span_mask
from ..registry import METHODS
from .base import RETAIN_KINDS, LossOutput, Method, check_choice, check_positive, combine, retain_term

log = logging.getLogger(__name__)

def seul_loss(logp: Tensor, span_mask: Tensor) -> Tensor:
    """Mean log-prob of the span tokens (minimising it is gradient ascent on their NLL).

    logp: (B, T-1) token log-probs, span_mask: (B, T-1) bool -> scalar; 0 when no token is a span.
    """
    return (logp * span_mask).sum() / span_mask.sum().clamp_min(1)  # normalised by |S| of the batch


def span_view(enc: Encoded, answer_mask: np.ndarray) -> Encoded:
    """``enc`` with labels kept only on the answer tokens marked in ``answer_mask`` (T,) (answer
    tokens without EOS, as ``answer_span_mask`` returns) and -100 everywhere else."""
    labels = [IGNORE] * len(enc.input_ids)
    n = enc.prompt_len
    for j in np.flatnonzero(answer_mask):
        labels[n + j] = enc.input_ids[n + j]
    return Encoded(list(enc.input_ids), labels, enc.truncated)


@METHODS.register(
    "seul",
    paper="Wang, Zeng, Guo, Wong, Gottlob 2024, Selective Forgetting: Advancing Machine Unlearning "
    "Techniques and Evaluation in Language Models, arXiv:2402.05813",
    reference="no official code; spans as in unlearnkit.data.spans",
    kind="loss",
)
@dataclass(kw_only=True)
class SeUL(Method):
    """Gradient ascent on the sensitive-span tokens of the forget answers only (span-level unlearning)."""

    spans: str = "records+regex"  # records | regex | online | records+regex; toolkit default (see docstring)
    regex_kinds: str = "email,phone,date,digits"  # data.spans.REGEX_PATTERNS kinds, comma-separated
    online_fraction: float = 0.2  # top-k% of answer tokens per record for spans=online; UNVERIFIED (abstract)
    online_rule: str = "highest"  # highest (most memorised) | lowest (most surprising); UNVERIFIED
    forget_weight: float = 1.0  # weight of L_SeUL (the paper has a single loss)
    retain_weight: float = 1.0  # weight of the optional retain term
    retain_loss: str = "none"  # none: Jang et al.'s GA loop (arXiv 2210.01504) that SeUL builds on

    def __post_init__(self) -> None:
        check_settings(self.spans, self.kinds, self.online_fraction, self.online_rule)
        check_choice("retain_loss", self.retain_loss, RETAIN_KINDS)
        check_positive(forget_weight=self.forget_weight, retain_weight=self.retain_weight)
        self.span_tokens = self.span_records = self.n_spans = 0  # counts filled by prepare (logs)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.regex_kinds.split(",") if k.strip())

    def answer_masks(self, model: Any, data: Any, cfg: Any) -> list[np.ndarray]:
        """(T_i,) bool span mask over the answer tokens (no EOS) of every forget example: the spans
        of :func:`unlearnkit.annotate.annotate` mapped to tokens as the S-MA probe does."""
        encs = [views["forget"] for views in data.forget]
        if len(data.examples) != len(encs):
            raise DataError("SeUL needs the forget records (data.examples) to find their spans; build the "
                            "data with unlearnkit.data.pair.build_paired")
        template = data.template or PromptTemplate()
        spans = annotate(data.examples, source=self.spans, kinds=self.kinds, model=model, tokenizer=data.tokenizer,
                         template=template, fraction=self.online_fraction, rule=self.online_rule, encoded=encs)
        try:
            return [answer_span_mask(enc, ex, sp, data.tokenizer, template)
                    for enc, ex, sp in zip(encs, data.examples, spans)]
        except ValueError as err:
            raise DataError(f"cannot map the sensitive spans to tokens: {err}; or use spans=online") from None

    def prepare(self, model: Any, data: Any, cfg: Any) -> None:
        """Add the "span" view: the forget input ids with labels only on the sensitive-span tokens."""
        masks = self.answer_masks(model, data, cfg)
        self.span_tokens = int(sum(m.sum() for m in masks))  # for logs: total selected tokens
        self.span_records = int(sum(bool(m.any()) for m in masks))
        self.n_spans = sum(len(token_runs(m)) for m in masks)  # adjacent selected tokens = one span
        if not self.span_tokens:
            raise DataError(f"no sensitive spans found in the {len(masks)} forget records with spans={self.spans!r}: "
                            "add a 'sensitive' (strings) or 'sensitive_spans' (answer offsets) column, "
                            "or use spans=regex / spans=online")
        for views, mask in zip(data.forget, masks):
            views["span"] = span_view(views["forget"], mask)
        log.info("SeUL: %d span tokens in %d spans, %d of %d forget records (spans=%s)", self.span_tokens,
                 self.n_spans, self.span_records, len(masks), self.spans)

    def loss(self, model: Any, batch: dict[str, dict[str, Tensor]], ref: Any | None) -> LossOutput:
        if "span" not in batch:
            raise RuntimeError("batch has no 'span' view; train with unlearnkit.train.run, which calls SeUL.prepare")
        view = batch["span"]
        logp, mask = token_logp(forward(model, view).logits, view["labels"])  # (B, T-1) each
        forget = seul_loss(logp, mask)
        retain = retain_term(model, ref, batch.get("retain"), self.retain_loss)
        out = combine(forget, retain, forget_weight=self.forget_weight, retain_weight=self.retain_weight)
        out.logs["span_tokens"] = float(mask.sum())  # this batch's |S|; 0 = a step without forgetting
        return out
