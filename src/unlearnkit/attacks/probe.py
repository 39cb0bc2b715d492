"""Probing read-out attack: logit lens and per-layer linear probes read the forgotten answer out of
the hidden states, as a multiple-choice (MC) question among the record's perturbed answers.

If unlearning only suppressed the answer at the output, the intermediate layers may still prefer
the true answer over plausible false ones. Two read-outs test this, layer by layer:

- **logit lens** (nostalgebraist 2020, "interpreting GPT: the logit lens", LessWrong blog post, no
  arXiv; refined into the tuned lens by Belrose et al. 2023, arXiv:2303.08112): decode the hidden
  state of layer ``l`` with the model's own final norm and unembedding, ``lm_head(norm(h_l))``, and
  score each option by its mean answer-token log-prob under these logits. Łucki et al. 2024 ("An
  Adversarial Perspective on Machine Unlearning for AI Safety", arXiv:2409.18025) read WMDP answer
  preferences layer by layer this way (code checked, see below; which unlearned models and what
  they found with it is UNVERIFIED in our notes).
- **linear probes** (Alain & Bengio 2016, "Understanding intermediate layers using linear
  classifier probes", arXiv:1610.01644): a logistic-regression classifier per layer, trained to tell
  the true option from the perturbed ones from the hidden states. Guo et al. 2024 ("Mechanistic
  Unlearning", arXiv:2410.12949) train per-layer logistic-regression probes (``max_iter`` 1000, our
  code notes) and report that output-localized unlearning leaves the ground truth decodable in early
  layers (known to us only from a secondary summary: UNVERIFIED against the paper's text).

MC question of a record: options = the correct answer (its ``paraphrased_answer`` by default,
because TOFU writes the perturbed answers in the *paraphrased* answer's wording, so true and false
options differ only in the fact; ``correct="answer"`` uses the original answer) followed by its
``perturbed_answers``. A record is answered correctly when the correct option's score is strictly
higher than every perturbed option's (ties count as wrong). Scores: ``logit_lens_mc_accuracy`` and
``probe_mc_accuracy`` on ``forget_eval``, each at the layer chosen on ``forget_train`` only (no
test-set selection). :meth:`Probe.baseline` returns the model's own output MC accuracy (final-layer
logits) under both keys: the zero point of the recovery ratio.

Reference implementations: ``ethz-spylab/unlearning-vs-safety`` ``src/logit_lens/logit_lens_utils.py``
(``BlockOutputWrapper``: ``lm_head(model.model.norm(block_output))`` per decoder block, read at the
last position over the answer-letter tokens); ``magikarp01/mechanistic-unlearning`` probing
experiments (sklearn ``LogisticRegression``; our notes, /work/shared/research/methods_b.md §5).

Deviations (all stated):
- Both papers read a 4-letter MC prompt (A/B/C/D) at the last position. Here an option is scored as
  a full answer continuation (mean answer-token log-prob, TOFU's truth-ratio convention), so the
  attack applies to any QA forget set with perturbed answers and needs no letter format.
- Guo et al. train multinomial probes on the last-token residual of *maintain* (retain) entities
  over a fixed label set (4 sports) and apply them to the forget entities. Open QA has no fixed
  label set, so the probe here is binary, true-vs-perturbed option, on the mean hidden state over
  the option's answer tokens (:func:`option_features`; ``pool="last"``: the state at its final token, the
  end-of-sequence token that has read the whole answer), trained on ``forget_train`` records plus
  (``use_retain``) retain records that have perturbed answers; it ranks the options of a record by
  its decision score. Features are standardized (train statistics); classes are balanced (one true
  option vs several perturbed ones) — [PROPOSED], not in either paper.
- Layer choice: the papers report per-layer curves; an audit needs one number, so the layer is
  chosen on ``forget_train`` (lens: train MC accuracy; probe: ``cv_folds``-fold cross-validated MC
  accuracy over the probe's training records, ``cv_folds=0`` = train accuracy) and accuracy is
  reported on ``forget_eval``. Ties go to the later layer. Per-layer curves (train and eval) are in
  ``info``; the eval curves are for reading only, never for choosing.
- Layer ``l`` is ``hidden_states[l]`` of the HF model: 0 = the embeddings, ``L`` (the number of
  decoder layers) = the final normed state, whose lens is exactly the model's output logits. The
  final norm is not applied a second time there.
- A probe can also learn surface regularities of the options (which never needed the forgotten
  fact), so read it with the honest floor: the same attack on a model that never saw the forget set.
  On the toolkit's tiny synthetic benchmark the probe finds no signal beyond that floor, not even
  on the target model: with small value pools it learns which attribute values were true in its
  training records, and those values come back as false options of other records. The logit lens
  needs no training and does show the suppression-only forgetting there (tests/test_attack_probe.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.format import IGNORE, collate, encode
from ..data.records import Example
from ..errors import ConfigError, DataError, ModelError
from ..logprobs import mean_nll
from ..methods.base import check_choice
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

CORRECT = ("paraphrased", "answer")
POOLS = ("mean", "last")
KEYS = ("logit_lens_mc_accuracy", "probe_mc_accuracy")
# final norm of the decoder stack, per architecture (the lens applies it before lm_head)
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


# ------------------------------------------------------------------------------------ pure maths
def mc_accuracy(scores: Sequence[Sequence[float]] | Sequence[Tensor]) -> float:
    """Fraction of records whose option 0 (the correct one) scores strictly higher than every other
    option. ``scores``: one 1-D sequence per record (options may differ in number); ties are wrong."""
    if len(scores) == 0:
        raise DataError("no records to score: a multiple-choice accuracy needs at least one record")
    hits = [float(s[0]) > max(float(x) for x in s[1:]) for s in scores]
    return sum(hits) / len(hits)


def answer_logp(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) mean answer-token log-prob of each row. logits (B, T, V), labels (B, T) with -100 off-answer."""
    return -mean_nll(logits, labels)


def option_features(hidden: Tensor, labels: Tensor, pool: str = "mean") -> Tensor:
    """(B, H) features of each row's answer: ``mean`` = mean hidden state over the answer tokens (the
    positions whose label is not -100); ``last`` = the hidden state at the last answer token (the
    end-of-sequence token that closes it). hidden (B, T, H), labels (B, T)."""
    keep = labels != IGNORE  # (B, T)
    if pool == "last":
        last = (keep * torch.arange(keep.shape[1], device=keep.device)).argmax(1)  # (B,) last answer position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    mask = keep.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, H)


def best_layer(accuracy: dict[int, float]) -> int:
    """The layer with the highest accuracy; ties go to the later layer."""
    return max(accuracy, key=lambda layer: (accuracy[layer], layer))


def read_layers(n_states: int, n_read: int) -> list[int]:
    """``n_read`` hidden-state indices out of ``0..n_states-1``, evenly spaced, the last always included."""
    n = max(1, min(n_states, n_read))
    if n == 1:
        return [n_states - 1]
    return sorted({round(i * (n_states - 1) / (n - 1)) for i in range(n)})


# ------------------------------------------------------------------------------------ model I/O
def lens_modules(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(final norm, unembedding) of a HF causal LM: the logit lens is ``head(norm(h))``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    for path in _FINAL_NORMS:
        obj: Any = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, torch.nn.Module) and head is not None:
            return obj, head
    raise ModelError(f"the logit lens needs the final norm and the output embedding (lm_head) of "
                     f"{type(base).__name__}; supported: Llama-style (model.norm + lm_head), GPT-2 "
                     "(transformer.ln_f), GPT-NeoX (gpt_neox.final_layer_norm), OPT (model.decoder.final_layer_norm)")


def mc_options(ex: Example, correct: str) -> list[str]:
    """The record's options: correct answer first (paraphrased when ``correct='paraphrased'`` and the
    record has one, else the answer), then its perturbed answers."""
    first = ex.paraphrased_answer if correct == "paraphrased" and ex.paraphrased_answer else ex.answer
    return [first, *ex.perturbed_answers]


@dataclass
class Readout:
    """Per-record read-outs at each layer: ``lens[l][i]`` (K_i,) option log-probs, ``feats[l][i]``
    (K_i, H) option features. ``lens[final]`` is the model's output."""

    lens: dict[int, list[Tensor]] = field(default_factory=dict)
    feats: dict[int, list[np.ndarray]] = field(default_factory=dict)


@torch.no_grad()
def read_out(model: Any, tokenizer: Any, records: Sequence[Example], layers: Sequence[int], data: AttackData,
             correct: str, *, features: bool = True, pool: str = "mean") -> Readout:
    """One forward per record (its options as one batch) with hidden states; lens and features per layer."""
    norm, head = lens_modules(model)
    dev = next(model.parameters()).device
    out = Readout({lay: [] for lay in layers}, {lay: [] for lay in layers} if features else {})
    for ex in records:
        encs = [encode(ex.question, o, tokenizer, template=data.template, max_length=data.max_length)
                for o in mc_options(ex, correct)]
        batch = {k: v.to(dev) for k, v in collate(encs, tokenizer.pad_token_id).items()}
        res = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hs, last = res.hidden_states, len(res.hidden_states) - 1  # L + 1 states, (K, T, H) each
        for lay in layers:
            logits = res.logits if lay == last else head(norm(hs[lay]))  # (K, T, V); the last state is normed
            out.lens[lay].append(answer_logp(logits, batch["labels"]).cpu())
            if features:
                out.feats[lay].append(option_features(hs[lay].float(), batch["labels"], pool).cpu().numpy())
    return out


def n_states(model: Any) -> int:
    """Number of hidden states the model returns (decoder layers + 1)."""
    from ..models import decoder_layers

    return len(decoder_layers(model)) + 1


# ------------------------------------------------------------------------------------ probes
def _xy(feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate(feats)  # (sum K_i, H)
    y = np.concatenate([np.eye(1, len(f), 0, dtype=int)[0] for f in feats])  # 1 on each record's option 0
    return x, y


def fit_probe(feats: Sequence[np.ndarray], *, c: float, max_iter: int, seed: int) -> Any:
    """A standardized, class-balanced logistic regression, true (option 0) vs perturbed options."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _xy(feats)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced",
                                                               random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few records: near-separable, still ranks
        probe.fit(x, y)
    return probe


def probe_accuracy(probe: Any, feats: Sequence[np.ndarray]) -> float:
    """MC accuracy of the probe's decision scores on each record's options."""
    return mc_accuracy([probe.decision_function(f) for f in feats])


def cv_accuracy(feats: Sequence[np.ndarray], folds: int, *, c: float, max_iter: int, seed: int) -> float:
    """Record-level k-fold cross-validated MC accuracy (``folds < 2``: accuracy on the training records)."""
    if folds < 2:
        return probe_accuracy(fit_probe(feats, c=c, max_iter=max_iter, seed=seed), feats)
    from sklearn.model_selection import KFold

    hits = 0.0
    for tr, te in KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(len(feats))):
        probe = fit_probe([feats[i] for i in tr], c=c, max_iter=max_iter, seed=seed)
        hits += probe_accuracy(probe, [feats[i] for i in te]) * len(te)
    return hits / len(feats)


# ------------------------------------------------------------------------------------ the attack
@ATTACKS.register(
    "probe",
    paper="logit lens: nostalgebraist 2020 (no arXiv), tuned lens Belrose et al. 2023 arXiv:2303.08112; linear "
    "probes: Alain & Bengio 2016 arXiv:1610.01644; probing unlearned models: Łucki et al. 2024 arXiv:2409.18025, "
    "Guo et al. 2024 arXiv:2410.12949",
    reference="ethz-spylab/unlearning-vs-safety src/logit_lens/logit_lens_utils.py (lm_head(norm(h)) per block); "
    "magikarp01/mechanistic-unlearning probing experiments (sklearn LogisticRegression per layer)",
    cost="no training of the model: one forward pass with hidden states per record (its options batched) over "
    "forget_train + forget_eval (+ retain records with perturbed answers); per read layer one lm_head projection "
    "and cv_folds + 1 logistic-regression fits; budget scales the number of layers read (evenly spaced, the "
    "last always included; budget >= 1 reads every layer)",
)
@dataclass(kw_only=True)
class Probe(Attack):
    """Logit lens and linear probes: MC accuracy (true vs perturbed answers) read from hidden states.

    ``run`` returns the input model unchanged and ``scores`` = the lens and probe MC accuracies on
    ``forget_eval`` at layers chosen on ``forget_train``; ``baseline`` = the output MC accuracy.
    """

    readout = True

    correct: str = "paraphrased"  # paraphrased | answer: TOFU's perturbed answers reword the paraphrased answer
    use_retain: bool = True  # add retain records with perturbed answers to the probe's training set
    # (Guo et al. train their probes on maintain entities); retain records without them are skipped
    max_iter: int = 1000  # logistic-regression iterations; Guo et al. probes: max_iter 1000 (methods_b.md §5)
    c: float = 1.0  # inverse L2 strength; sklearn's default (the papers' value is not in our notes: UNVERIFIED)
    pool: str = "mean"  # probe features: mean | last hidden state over the option's answer tokens [PROPOSED]
    cv_folds: int = 5  # record-level folds for choosing the probe layer on train; 0 = train accuracy [PROPOSED]

    def __post_init__(self) -> None:
        check_choice("correct", self.correct, CORRECT)
        check_choice("pool", self.pool, POOLS)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ConfigError(f"max_iter must be a positive integer (1000 in Guo et al.), got {self.max_iter!r}")
        if not isinstance(self.c, (int, float)) or not self.c > 0:
            raise ConfigError(f"c must be > 0 (the inverse regularization strength; 1.0 = sklearn default), "
                              f"got {self.c!r}")
        if isinstance(self.cv_folds, bool) or not isinstance(self.cv_folds, int) or self.cv_folds < 0 \
                or self.cv_folds == 1:
            raise ConfigError(f"cv_folds must be 0 (choose the layer by train accuracy) or an integer >= 2, "
                              f"got {self.cv_folds!r}")

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """Read the forget answers out of ``model``'s hidden states; ``model`` is returned unmodified."""
        self._check(data)
        layers = read_layers(n_states(model), self.scaled(n_states(model)))
        retain = [ex for ex in data.retain if ex.perturbed_answers] if self.use_retain else []
        with _eval_mode(model):
            train = read_out(model, tokenizer, data.forget_train, layers, data, self.correct, pool=self.pool)
            test = read_out(model, tokenizer, data.forget_eval, layers, data, self.correct, pool=self.pool)
            extra = read_out(model, tokenizer, retain, layers, data, self.correct, pool=self.pool)
        lens_train = {lay: mc_accuracy(train.lens[lay]) for lay in layers}
        lens_eval = {lay: mc_accuracy(test.lens[lay]) for lay in layers}
        lens_at = best_layer(lens_train)
        probe_scores = self._probes(train, test, extra, layers, data.seed)
        probe_at = best_layer(probe_scores["select"])
        scores = {"logit_lens_mc_accuracy": lens_eval[lens_at], "probe_mc_accuracy": probe_scores["eval"][probe_at]}
        info = {"layers": layers, "lens_layer": lens_at, "probe_layer": probe_at,
                "output_mc_accuracy_eval": lens_eval[layers[-1]],
                "lens_mc_accuracy_train": _keyed(lens_train), "lens_mc_accuracy_eval": _keyed(lens_eval),
                "probe_mc_accuracy_select": _keyed(probe_scores["select"]),
                "probe_mc_accuracy_eval": _keyed(probe_scores["eval"]),
                "probe_train_records": len(data.forget_train) + len(retain), "correct_option": self.correct}
        return Attacked(model, scores=scores, info=info)

    def baseline(self, model: Any, tokenizer: Any, data: AttackData) -> dict[str, float]:
        """The model's own output MC accuracy on ``forget_eval`` (final-layer logits), under both keys."""
        self._check(data, need_train=False)
        last = n_states(model) - 1
        with _eval_mode(model):
            out = read_out(model, tokenizer, data.forget_eval, [last], data, self.correct, features=False)
        acc = mc_accuracy(out.lens[last])
        return dict.fromkeys(KEYS, acc)

    def _probes(self, train: Readout, test: Readout, extra: Readout, layers: list[int],
                seed: int) -> dict[str, dict[int, float]]:
        """Per layer: the selection accuracy on the training records and the eval accuracy of the probe
        fitted on all of them."""
        select, evals = {}, {}
        for lay in layers:
            fit_on = train.feats[lay] + extra.feats[lay]  # forget_train + usable retain records
            folds = min(self.cv_folds, len(fit_on)) if self.cv_folds else 0
            select[lay] = cv_accuracy(fit_on, folds, c=self.c, max_iter=self.max_iter, seed=seed)
            probe = fit_probe(fit_on, c=self.c, max_iter=self.max_iter, seed=seed)
            evals[lay] = probe_accuracy(probe, test.feats[lay])
        return {"select": select, "eval": evals}

    def _check(self, data: AttackData, *, need_train: bool = True) -> None:
        if not data.forget_eval:
            raise DataError("the probe attack needs forget records to measure on: AttackData.forget_eval is empty")
        if need_train and not data.forget_train:
            raise DataError("the probe attack chooses its layer and trains its probes on AttackData.forget_train, "
                            "which is empty; split the forget set (unlearnkit.attacks.relearn.split_forget)")
        for part in ("forget_train", "forget_eval") if need_train else ("forget_eval",):
            for i, ex in enumerate(getattr(data, part)):
                if not ex.perturbed_answers:
                    raise DataError(f"{part} record {i} (question {(ex.question or '')[:60]!r}) has no perturbed "
                                    "answers; the probe attack asks multiple-choice questions among the true and "
                                    "the perturbed answers: give every forget record a `perturbed_answer` list "
                                    "(TOFU's forgetNN_perturbed.json layout)")


def _keyed(acc: dict[int, float]) -> dict[str, float]:
    """JSON-friendly ``{"layer": accuracy}``."""
    return {str(k): v for k, v in acc.items()}


class _eval_mode:
    """Put the model in eval mode for the read-out and restore every module's training flag afterwards."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self.flags:
            m.training = flag
