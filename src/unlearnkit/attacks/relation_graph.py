"""Relation-graph reconstruction: a read-out attack that rebuilds the graph of the forget set's entities
from the model's hidden representation of each entity name (issue 6 item 9), in the manner of MNEMON
(Shen et al. 2022, "Finding MNEMON: Reviving Memories of Node Embeddings", ACM CCS 2022,
arXiv:2204.06963).

MNEMON shows that a node-embedding matrix alone gives an adversary much of the graph's edges, first
by a k-nearest-neighbour (kNN) graph on cosine similarity, then by refining it with graph metric
learning. Here the "embedding" of an entity (a person of a TOFU-style forget set) is the model's hidden
state at the tokens of its name; two entities are related when they share a fact. If an unlearned
model still places related people close together, the forget set's structure is still readable from
its internals, even when the model no longer says the facts.

Reference implementation: none found (our notes, methods_b.md section 8: abstract verified, method
details UNVERIFIED, no official repository); this is the kNN first step only, written from the notes.

What ``run`` computes (one forward pass per entity; the input model is only read):
1. entities: one per record of ``forget_train + forget_eval``, from the record's ``extras[entity_key]``
   or, when that is missing and ``derive_entities`` is on, the longest run of capitalised words that
   the question and the answer share (:func:`derive_entity`; e.g. "Alia Ashbane" in "Where was Alia
   Ashbane born?" / "Alia Ashbane was born in Lisbon."). The heuristic (ASCII capitals) fits records
   that name their entity in both question and answer, as the synthetic benchmark's do; a TOFU record
   whose question does not name the author would get a place name instead, so give such data an
   ``entity`` column (``info["entities"]`` lists what was used);
2. the true graph: the pairs in the ``edges`` file, or (default) entities ``a`` and ``b`` are linked when
   a record of ``a`` and a record of ``b`` have the same answer once the entity's name is replaced by a
   placeholder (:func:`answer_key`: "{} was born in Lisbon." — they share a fact);
3. each entity's vector: ``hidden_states[layer]`` (0 = embeddings, i = output of decoder layer i;
   default ``"middle"`` = layer (L + 1) // 2 of L; ``"all"`` = every decoder layer's vector (not the
   embeddings), unit-normalised and concatenated, so the cosine is the mean of the per-layer cosines;
   measured on tiny models, the embeddings (``layer=0``) can be where the graph lives: with tied input /
   output embeddings, training questions whose answers are names pull related names together, and
   gradient ascent leaves that geometry — tests/test_attack_relation_graph.py), pooled (``pool``: mean, or the
   last token) over the name's tokens in the text ``prefix + name`` (default: the name alone);
4. scores (:func:`graph_scores`): ``graph_auc``, the ROC AUC of the cosine similarity of true edges
   against non-edges over all entity pairs; ``graph_f1``, the F1 of the directed kNN graph (each
   entity's ``k`` most similar entities are its predicted links) against the true links.

``baseline`` is chance, computed exactly from the true graph alone (model-independent,
:func:`chance_scores`): the expected scores when the entities are assigned to the vectors at random
(AUC 0.5; F1 ``4 m k / ((N - 1)(N k + 2 m))`` for N entities, m true edges, k neighbours). The audit's
recovery ``(run(unlearned) - chance) / (run(target) - chance)`` is then the share of the target's
readable graph structure the unlearned model keeps; the retain model's read-out is the honest floor
(entities whose names share tokens are close in any model).

Deviations from MNEMON (all stated):
- Only the kNN graph on cosine similarity; no graph metric learning refinement (UNVERIFIED details).
- The kNN graph is kept directed (each entity predicts exactly ``k`` links, N k arcs in all) so that
  the chance F1 is exact and independent of the model; a true edge counts as two arcs.
- The node embeddings are LLM hidden states of entity names, not graph embeddings; the "graph" is the
  shared-fact graph of the forget set (or a user-supplied one), not a social / citation graph.
- ``budget`` has no effect: the attack is one forward pass per entity.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..data.records import Example
from ..errors import ConfigError, DataError
from ..methods.base import check_choice
from ..registry import ATTACKS
from .base import Attack, AttackData, Attacked

POOLS = ("mean", "last")
LAYER_NAMES = ("middle", "all")
_WORD = r"[A-Z][\w\-]*(?:['’][\w\-]+)*"  # a word with an ASCII capital first letter (O'Brien, Al-Kuwaiti)
_CAP_RUN = re.compile(rf"{_WORD}(?:\s+{_WORD})*")  # runs of capitalised words


# ----------------------------------------------------------------------------------- graph maths
def cosine_matrix(emb: Tensor) -> Tensor:
    """(N, d) vectors -> (N, N) cosine similarities."""
    unit = torch.nn.functional.normalize(emb.double(), dim=1)  # (N, d)
    return unit @ unit.T  # (N, N)


def knn_arcs(sim: Tensor, k: int) -> Tensor:
    """(N, N) similarities -> (N, k) indices of each row's ``k`` most similar other rows (ties: lower index)."""
    s = sim.clone().double()  # (N, N)
    s.fill_diagonal_(float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices  # (N, N)
    return order[:, :k]  # (N, k)


def adjacency(n: int, edges: Sequence[tuple[int, int]]) -> Tensor:
    """A symmetric (N, N) boolean adjacency matrix of undirected ``edges`` (no self-loops)."""
    adj = torch.zeros(n, n, dtype=torch.bool)
    for a, b in edges:
        adj[a, b] = adj[b, a] = True
    return adj


def graph_scores(sim: Tensor, adj: Tensor, k: int) -> dict[str, float]:
    """``graph_f1`` of the directed kNN graph of ``sim`` against ``adj`` (true edges count both ways)
    and ``graph_auc``: ROC AUC of ``sim`` for edges vs non-edges over the N (N - 1) / 2 pairs."""
    from sklearn.metrics import roc_auc_score

    n = sim.shape[0]
    arcs = knn_arcs(sim, k)  # (N, k)
    tp = int(adj.gather(1, arcs).sum())  # predicted arcs i -> j with {i, j} a true edge
    n_true_arcs = int(adj.sum())  # 2 m
    f1 = 2 * tp / (n * k + n_true_arcs)
    iu = torch.triu_indices(n, n, offset=1)  # (2, P) the unordered pairs
    auc = roc_auc_score(adj[iu[0], iu[1]].numpy(), sim[iu[0], iu[1]].double().numpy())
    return {"graph_f1": float(f1), "graph_auc": float(auc)}


def chance_scores(n: int, m: int, k: int) -> dict[str, float]:
    """Expected :func:`graph_scores` when the N vectors are given to the entities in a uniformly random
    order: every predicted arc then hits one of the 2 m true arcs among the N (N - 1) with probability
    2 m / (N (N - 1)), so E[TP] = N k 2 m / (N (N - 1)) and E[F1] = 2 E[TP] / (N k + 2 m); AUC 0.5."""
    expected_tp = n * k * 2 * m / (n * (n - 1))
    return {"graph_f1": 2 * expected_tp / (n * k + 2 * m), "graph_auc": 0.5}


# ----------------------------------------------------------------------------------- entities and edges
def _spans(text: str) -> set[str]:
    """Every contiguous run of capitalised words in ``text`` (possessive 's removed)."""
    out = set()
    for run in _CAP_RUN.findall(text):
        words = [re.sub(r"(?:'s|’s)$", "", w) for w in run.split()]
        out.update(" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1))
    return out


def derive_entity(question: str | None, answer: str) -> str | None:
    """The longest run of capitalised words shared by ``question`` and ``answer`` (most words, then most
    characters, then alphabetical), or None. A heuristic for records that name their entity in both."""
    common = _spans(question or "") & _spans(answer)
    if not common:
        return None
    return min(common, key=lambda s: (-len(s.split()), -len(s), s))


def record_entities(records: Sequence[Example], entity_key: str, derive: bool) -> list[str]:
    """The entity of each record: ``extras[entity_key]``, else (``derive``) :func:`derive_entity`."""
    out = []
    for i, ex in enumerate(records):
        name = ex.extras.get(entity_key)
        if name is None and derive:
            name = derive_entity(ex.question, ex.answer)
        if not isinstance(name, str) or not name.strip():
            how = ("no run of capitalised words appears in both its question and answer, so none could be "
                   "derived" if derive else "derive_entities is off")
            raise DataError(f"forget record {i} (question {(ex.question or '')[:60]!r}) has no entity: its extras "
                            f"have no {entity_key!r} column and {how}. Add an {entity_key!r} column naming the "
                            "person / entity each record is about (or set entity_key to the column that does)")
        out.append(name.strip())
    return out


def answer_key(answer: str, entity: str) -> str:
    """The answer with the entity's name replaced by ``{}`` and whitespace collapsed: the shared fact."""
    return " ".join(answer.replace(entity, "{}").split())


def shared_answer_edges(records: Sequence[Example], entities: Sequence[str], names: Sequence[str]) -> set[tuple[int, int]]:
    """Pairs (i < j) of ``names`` indices whose records share an :func:`answer_key`."""
    index = {name: i for i, name in enumerate(names)}
    owners: dict[str, set[int]] = {}
    for ex, ent in zip(records, entities):
        owners.setdefault(answer_key(ex.answer, ent), set()).add(index[ent])
    return {(a, b) for group in owners.values() for a in group for b in group if a < b}


def _edge_rows(path: Path) -> list[tuple[Any, Any]]:
    """(source, target) pairs of a CSV (header ``source,target``) or JSON ([[a, b], ...] or [{source, target}])."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and not {"source", "target"} <= set(rows[0]):
            raise DataError(f"edges file '{path}' needs a header row 'source,target'; it has {list(rows[0])}")
        return [(r["source"], r["target"]) for r in rows]
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"edges file '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(rows, list):
        raise DataError(f"edges file '{path}' must hold a JSON list of pairs")
    return [(r.get("source"), r.get("target")) if isinstance(r, dict) else tuple(r) if isinstance(r, list)
            and len(r) == 2 else (None, None) for r in rows]


def read_edges(path: str, names: Sequence[str]) -> set[tuple[int, int]]:
    """The undirected edges (i < j indices of ``names``) listed in the file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"edges file '{p}' does not exist; give a CSV with a 'source,target' header or a JSON "
                        "list of [source, target] pairs naming forget entities")
    index = {name: i for i, name in enumerate(names)}
    edges = set()
    for row, (a, b) in enumerate(_edge_rows(p)):
        if a not in index or b not in index or a == b:
            raise DataError(f"edges file '{p}' row {row}: ({a!r}, {b!r}) must name two different entities of the "
                            f"forget set (known: {', '.join(list(names)[:10])}{'...' if len(names) > 10 else ''})")
        edges.add((min(index[a], index[b]), max(index[a], index[b])))
    return edges


# ----------------------------------------------------------------------------------- representations
def _name_positions(tokenizer: Any, prefix: str, name: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prefix + name`` (with the tokenizer's special tokens) and the positions of the name."""
    text, start = prefix + name, len(prefix)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = list(enc["input_ids"])
    if "offset_mapping" in enc:
        pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start and a < len(text)]
    else:  # slow tokenizer: the tokens after those of the prefix alone
        pos = list(range(len(tokenizer(prefix, add_special_tokens=True)["input_ids"]), len(ids)))
    if not pos:
        raise DataError(f"entity {name!r} has no tokens of its own after prefix {prefix!r}")
    return ids, pos


def resolve_layers(layer: int | str, n_states: int) -> list[int]:
    """Indices into ``hidden_states`` (0 = embeddings, n_states - 1 = last layer) that ``layer`` names."""
    if layer == "all":
        return list(range(1, n_states))
    if layer == "middle":
        return [n_states // 2]  # (n_layers + 1) // 2: layer 2 of 3, 16 of 32
    if not -n_states <= layer < n_states:
        raise ConfigError(f"layer={layer} is out of range: the model has {n_states - 1} decoder layers "
                          f"(0 = embeddings, {n_states - 1} = last; negative counts from the end)")
    return [layer % n_states]


@torch.no_grad()
def entity_vectors(model: Any, tokenizer: Any, names: Sequence[str], *, layer: int | str, pool: str,
                   prefix: str) -> tuple[Tensor, list[int]]:
    """(N, d) one vector per name (d x n_layers for ``layer="all"``: unit vectors per layer, concatenated,
    so the cosine is the mean of the per-layer cosines), and the hidden-state indices used."""
    device = next(model.parameters()).device
    rows, used = [], []
    for name in names:
        ids, pos = _name_positions(tokenizer, prefix, name)
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        used = resolve_layers(layer, len(out.hidden_states))
        per_layer = []
        for li in used:
            h = out.hidden_states[li][0, pos].float()  # (n_name_tokens, d)
            v = h.mean(0) if pool == "mean" else h[-1]  # (d,)
            per_layer.append(torch.nn.functional.normalize(v, dim=0) if len(used) > 1 else v)
        rows.append(torch.cat(per_layer).cpu())
    return torch.stack(rows), used  # (N, d * len(used))


# ----------------------------------------------------------------------------------- the attack
@ATTACKS.register(
    "relation_graph",
    paper="Shen et al. 2022, Finding MNEMON: Reviving Memories of Node Embeddings (ACM CCS 2022), arXiv:2204.06963",
    reference="none found (methods_b.md section 8); kNN-graph step written from the paper's description",
    cost="one forward pass per forget entity (no training); budget has no effect",
)
@dataclass(kw_only=True)
class RelationGraph(Attack):
    """Rebuild the forget entities' shared-fact graph from the kNN graph of their hidden states (read-out).

    ``run(...).scores``: ``graph_f1`` and ``graph_auc`` (see the module doc); ``baseline``: their chance values.
    """

    readout = True
    entity_key: str = "entity"  # record extras column naming each record's entity (toolkit choice)
    derive_entities: bool = True  # records without it: longest capitalised span in question and answer (heuristic)
    edges: str = ""  # CSV (source,target) / JSON pairs file of true edges; "" = shared-answer edges (module doc)
    layer: int | str = "middle"  # hidden_states index (0 = embeddings), "middle" or "all" (toolkit choice; the
    # factual-recall literature reads subjects at middle layers)
    pool: str = "mean"  # mean over the name's tokens (the "mean hidden state"); "last" = its last token
    prefix: str = ""  # text before the name (default: the name alone, a neutral prompt)
    k: int = 0  # neighbours per entity; 0 = the true graph's average degree 2m/N, rounded, at least 1

    def __post_init__(self) -> None:
        check_choice("pool", self.pool, POOLS)
        if isinstance(self.layer, bool) or not (isinstance(self.layer, int) or self.layer in LAYER_NAMES):
            raise ConfigError(f"layer={self.layer!r} must be an integer hidden-state index (0 = embeddings, "
                              "-1 = last layer), 'middle' or 'all'")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"k={self.k!r} must be an integer >= 1 (or 0 = the true graph's average degree)")
        if not isinstance(self.entity_key, str) or not self.entity_key:
            raise ConfigError("entity_key must name the records' entity column, e.g. 'entity'")

    def graph(self, data: AttackData) -> tuple[list[str], Tensor, int]:
        """(entity names, true (N, N) adjacency, k) of the forget records; DataError when not a usable graph."""
        records = [*data.forget_train, *data.forget_eval]
        ents = record_entities(records, self.entity_key, self.derive_entities)
        names = list(dict.fromkeys(ents))
        n = len(names)
        if n < 3:
            raise DataError(f"the relation-graph attack needs at least 3 forget entities, got {n} ({names}): use a "
                            f"forget set about several people, each record naming its one in extras[{self.entity_key!r}]")
        edges = read_edges(self.edges, names) if self.edges else shared_answer_edges(records, ents, names)
        m, pairs = len(edges), n * (n - 1) // 2
        if not 0 < m < pairs:
            raise DataError(f"the true graph of the {n} forget entities has {m} of {pairs} possible edges; it needs at "
                            "least one edge and one non-edge. "
                            + ("Fix the edges file" if self.edges else
                               ("No two entities share" if m == 0 else "Every two entities share")
                               + " an answer (after removing their names): give the relations in an edges file "
                               "(edges=path.csv)"))
        k = self.k or max(1, round(2 * m / n))
        if k > n - 1:
            raise ConfigError(f"k={k} is more than the {n - 1} other entities; use k <= {n - 1}")
        return names, adjacency(n, sorted(edges)), k

    def run(self, model: Any, tokenizer: Any, data: AttackData) -> Attacked:
        """The graph read-out of ``model`` (which is only read: eval mode is restored afterwards)."""
        names, adj, k = self.graph(data)
        was_training = model.training
        model.eval()
        try:
            emb, used = entity_vectors(model, tokenizer, names, layer=self.layer, pool=self.pool, prefix=self.prefix)
        finally:
            model.train(was_training)
        sim = cosine_matrix(emb)  # (N, N)
        knn = knn_arcs(sim, k)  # (N, k)
        info = {"entities": names, "n_entities": len(names), "n_true_edges": int(adj.sum()) // 2, "k": k,
                "hidden_states": used, "knn": {names[i]: [names[j] for j in row] for i, row in enumerate(knn.tolist())},
                "chance": chance_scores(len(names), int(adj.sum()) // 2, k), "budget": "no effect"}
        return Attacked(model, scores=graph_scores(sim, adj, k), info=info)

    def baseline(self, model: Any, tokenizer: Any, data: AttackData) -> dict[str, float]:
        """Chance: the expected scores with entities assigned to vectors at random (from the true graph alone)."""
        names, adj, k = self.graph(data)
        return chance_scores(len(names), int(adj.sum()) // 2, k)
