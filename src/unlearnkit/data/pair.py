"""Forget-anchored batching: each step takes the next forget batch and the next retain batch,
with the retain set cycled (reshuffled each pass), as open-unlearning's ``ForgetRetainDataset``.

Pairing is deterministic for a seed. Under several processes (``accelerate launch``) each process
takes its own slice of every forget batch, so the global batch is the same as in one process.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .format import Encoded, PromptTemplate, collate, encode, encode_all
from .records import Example


@dataclass
class PairedData:
    """Tokenized forget views (one dict per forget example) and retain items.

    ``forget[i]`` maps view name -> Encoded (always has "forget"); ``ref_logp[view]`` is a (N,)
    tensor filled by the reference pre-pass for the views a method asks for. ``examples`` (the
    forget records, aligned with ``forget``), ``retain_examples``, ``tokenizer``, ``template`` and
    ``max_length`` record how the data were built, for methods whose ``prepare`` re-encodes them.
    """

    forget: list[dict[str, Encoded]]
    retain: list[Encoded]
    pad_id: int
    ref_logp: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    retain_examples: list[Example] = field(default_factory=list)
    tokenizer: Any = None
    template: PromptTemplate | None = None
    max_length: int = 512

    def __post_init__(self) -> None:
        if not self.forget:
            raise ValueError("the forget set is empty; nothing to unlearn")

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.forget) // batch_size)

    def batches(
        self, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        """Endless stream of {"forget": ..., <extra views>..., "retain": ...} batches; ``start``
        skips that many batches without building them (a resumed run continues where it stopped)."""
        for i, (idx, r_idx) in enumerate(self._batch_indices(batch_size, seed=seed, rank=rank, world=world)):
            if i < start:
                continue
            batch = self.forget_batch(idx)
            if r_idx:
                batch["retain"] = collate([self.retain[j] for j in r_idx], self.pad_id)
            yield batch

    def _batch_indices(self, batch_size: int, *, seed: int, rank: int, world: int) -> Iterator[tuple[list[int], list[int]]]:
        """Endless (forget indices, retain indices) of this process's slice of each global batch."""
        rng = random.Random(seed)
        retain_order: list[int] = []
        epoch = 0
        while True:
            order = list(range(len(self.forget)))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            epoch += 1
            for begin in range(0, len(order), batch_size):
                full = order[begin : begin + batch_size]
                r_full = []  # drawn for the whole global batch, then sliced like the forget one
                for _ in range(len(full) if self.retain else 0):
                    if not retain_order:
                        retain_order = list(range(len(self.retain)))
                        rng.shuffle(retain_order)
                    r_full.append(retain_order.pop())
                yield full[rank::world] or full[:1], r_full[rank::world] or r_full[:1]

    def forget_batch(self, idx: list[int]) -> dict[str, dict[str, torch.Tensor]]:
        """All views of the forget examples ``idx``, collated (with their ref_logp when computed)."""
        out = {}
        for view in self.forget[0]:
            out[view] = collate([self.forget[i][view] for i in idx], self.pad_id)
            if view in self.ref_logp:
                out[view]["ref_logp"] = self.ref_logp[view][idx]
        return out


def build_paired(
    method: Any, forget: list[Example], retain: list[Example], tokenizer: Any, *,
    template: PromptTemplate | None = None, max_length: int = 512, seed: int = 0,
) -> PairedData:
    """Encode each forget example's views ("forget" + ``method.extra_views``) and the retain set.

    The retain set is used only when the method has a retain term (``method.needs_retain``).
    """
    template = template or PromptTemplate()
    rng = random.Random(seed)
    base = encode_all([(e.question, e.answer) for e in forget], tokenizer, template=template,
                      max_length=max_length, what="records")
    items = []
    for ex, enc in zip(forget, base):
        views = {"forget": enc}
        extra = method.extra_views(ex, rng, retain) if method is not None else {}
        for view, (q, a) in extra.items():
            views[view] = encode(q, a, tokenizer, template=template, max_length=max_length)
        items.append(views)
    use_retain = method is None or method.needs_retain
    ret = encode_all([(e.question, e.answer) for e in retain], tokenizer, template=template,
                     max_length=max_length, what="retain records") if use_retain and retain else []
    return PairedData(items, ret, tokenizer.pad_token_id, examples=list(forget),
                      retain_examples=list(retain) if use_retain else [], tokenizer=tokenizer,
                      template=template, max_length=max_length)
