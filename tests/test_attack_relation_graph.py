"""Relation-graph reconstruction (MNEMON-style read-out, issue 6 item 9): the kNN graph of entity vectors."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from unlearnkit.attacks.base import AttackData
from unlearnkit.attacks.relation_graph import (
    RelationGraph,
    adjacency,
    chance_scores,
    cosine_matrix,
    derive_entity,
    entity_vectors,
    graph_scores,
    knn_arcs,
)
from unlearnkit.data.pair import build_paired
from unlearnkit.data.records import Example
from unlearnkit.data.synthetic import generate_people, person_qa
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.metrics.recovery import recovery_ratio
from unlearnkit.models import load_model
from unlearnkit.train import Finetune, TrainConfig, run

# four points in the plane: 0 and 1 close, 2 and 3 close, 1 nearer to 3 than to 2
POINTS = [(1.0, 0.0), (1.0, 0.2), (0.0, 1.0), (0.3, 1.0)]


def test_knn_graph_f1_auc_and_chance_by_hand():
    emb = torch.tensor(POINTS)
    cos = np.array([[np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for b in POINTS] for a in POINTS])
    sim = cosine_matrix(emb)
    assert np.allclose(sim.numpy(), cos)
    # nearest other point of each: 0->1, 1->0, 2->3, 3->2; two nearest: 0->1,3  1->0,3  2->3,1  3->2,1
    assert knn_arcs(sim, 1).tolist() == [[1], [0], [3], [2]]
    assert knn_arcs(sim, 2).tolist() == [[1, 3], [0, 3], [3, 1], [2, 1]]
    adj = adjacency(4, [(0, 1), (1, 3)])  # true arcs: 0<->1, 1<->3 (4 arcs)
    # k=1: hits 0->1, 1->0 -> TP 2 of 4 predicted, 4 true: F1 = 2*2 / (4 + 4)
    # AUC: edges have cos 0.981 and 0.470; non-edges 0 (0,2), 0.287 (0,3), 0.196 (1,2), 0.958 (2,3):
    # 0.981 beats all 4, 0.470 beats 3 -> 7 / 8
    assert graph_scores(sim, adj, 1) == pytest.approx({"graph_f1": 0.5, "graph_auc": 7 / 8})
    # k=2: hits 0->1, 1->0, 1->3, 3->1 -> TP 4 of 8 predicted: F1 = 2*4 / (8 + 4)
    assert graph_scores(sim, adj, 2)["graph_f1"] == pytest.approx(2 / 3)
    # chance = the mean over all 24 assignments of entities to vectors (brute force)
    for k in (1, 2):
        perms = list(itertools.permutations(range(4)))
        scores = [graph_scores(sim[list(p)][:, list(p)], adj, k) for p in perms]
        mean = {key: sum(s[key] for s in scores) / len(perms) for key in scores[0]}
        assert chance_scores(4, 2, k) == pytest.approx(mean)
    assert chance_scores(4, 2, 1)["graph_f1"] == pytest.approx(1 / 3)  # E[TP] = 4 * 4/12, F1 = 2 E[TP] / 8


def test_entities_and_shared_answer_edges():
    assert derive_entity("Where was Alia Ashbane born?", "Alia Ashbane was born in Lisbon, Portugal.") == "Alia Ashbane"
    assert derive_entity("What was the job of Alia Ashbane's father?", "The father of Alia Ashbane was a baker.") \
        == "Alia Ashbane"
    assert derive_entity("Does Alia Ashbane sing?", "Yes, Alia Ashbane does.") == "Alia Ashbane"
    assert derive_entity("where?", "nowhere.") is None
    assert derive_entity("Where was Sean O'Brien born?", "Sean O'Brien's home is Cork.") == "Sean O'Brien"
    recs = [Example("Where was Ann Lee born?", "Ann Lee was born in Oslo."),
            Example("Where was Bo Kim born?", "Bo Kim was born in Oslo."),
            Example("Where was Cy Day born?", "Cy Day was born in Lima."),
            Example("q", "Cy Day likes tea.", extras={"entity": "Cy Day"}),
            Example("q", "Dee Fox likes tea.", extras={"entity": "Dee Fox"})]
    names, adj, k = RelationGraph().graph(AttackData(forget_train=recs[:3], forget_eval=recs[3:]))
    assert names == ["Ann Lee", "Bo Kim", "Cy Day", "Dee Fox"]
    assert adj.nonzero().tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]] and k == 1  # round(2 * 2 / 4)


# ----------------------------------------------------------------------------- behaviour on a tiny model
SHARED = ("birthplace", "profession", "genre", "father_job", "mother_job")  # facts a group has in common


@pytest.fixture(scope="module")
def people_forget() -> list[Example]:
    """9 synthetic people in 3 groups of 3; a group's members share 5 of their 8 facts."""
    people = generate_people(9, seed=7)
    grouped = [dataclasses.replace(p, **{a: getattr(people[i - i % 3], a) for a in SHARED})
               for i, p in enumerate(people)]
    return [Example(r["question"], r["answer"], extras={"entity": p.name})
            for i, p in enumerate(grouped) for r in person_qa(p, 8, rng=random.Random(i))]


@pytest.fixture(scope="module")
def graph_models(tiny_model_dir, tiny_tokenizer, people_forget):
    """(never trained, target = finetuned on the people, unlearned = target after 10 gradient-ascent steps)."""
    never = load_model(tiny_model_dir)
    target = copy.deepcopy(never)
    cfg = dict(weight_decay=0.0, progress=False, threads=1)
    run(target, Finetune(), build_paired(None, people_forget, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=100, batch_size=16, lr=1e-2, **cfg))
    unlearned = copy.deepcopy(target)
    run(unlearned, GradAscent(), build_paired(None, people_forget, [], tiny_tokenizer, max_length=128),
        TrainConfig(max_steps=10, batch_size=8, lr=3e-3, **cfg))
    for m in (never, target, unlearned):
        m.eval()
    return never, target, unlearned


def test_relation_graph_read_out_on_tiny_models(graph_models, tiny_tokenizer, people_forget):
    never, target, unlearned = graph_models
    data = AttackData(forget_train=people_forget[:40], forget_eval=people_forget[40:], max_length=128)
    attack = RelationGraph()
    chance = attack.baseline(target, tiny_tokenizer, data)
    assert chance == pytest.approx({"graph_f1": 0.25, "graph_auc": 0.5})  # N 9, m 9 (3 triangles), k 2
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    target.train()
    outs = {name: attack.run(m, tiny_tokenizer, data) for name, m in
            (("target", target), ("unlearned", unlearned), ("never", never))}
    assert target.training and all(torch.equal(p, before[n]) for n, p in target.named_parameters())
    target.eval()
    out = outs["target"]
    assert out.model is target and out.info["n_entities"] == 9 and out.info["n_true_edges"] == 9
    assert out.info["hidden_states"] == [2] and len(out.info["knn"]) == 9
    assert json.loads(json.dumps(out.info)) == out.info  # JSON-serialisable for the audit report
    for key in ("graph_f1", "graph_auc"):
        vals = {name: o.scores[key] for name, o in outs.items()}
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in vals.values())
        ratio = recovery_ratio(attacked=vals["unlearned"], unlearned=chance[key], target=vals["target"]).value
        print(f"{key}: chance {chance[key]:.3f} target {vals['target']:.3f} unlearned {vals['unlearned']:.3f} "
              f"never-trained {vals['never']:.3f} recovery {ratio}")
    # NOT asserted: that the target's graph beats chance. On this 3-layer, 32-wide model (and on a 4-layer,
    # 128-wide one trained to answer probability 0.98) the name vectors do not encode which people share
    # facts: target AUC 0.41-0.62 at every layer / pooling tried, no better than the never-trained model.


def test_graph_defined_by_the_model_is_read_back_exactly(graph_models, tiny_tokenizer, people_forget, tmp_path):
    """End-to-end invariant: a true graph made of the target's own most similar pairs has AUC 1 on the target."""
    never, target, unlearned = graph_models
    names = list(dict.fromkeys(ex.extras["entity"] for ex in people_forget))
    emb, _ = entity_vectors(target, tiny_tokenizer, names, layer="middle", pool="mean", prefix="")
    sim = cosine_matrix(emb)
    iu = torch.triu_indices(9, 9, offset=1)
    top = sim[iu[0], iu[1]].argsort(descending=True)[:9]  # the 9 most similar pairs
    path = tmp_path / "edges.json"
    path.write_text(json.dumps([[names[iu[0, t]], names[iu[1, t]]] for t in top.tolist()]))
    data = AttackData(forget_train=people_forget, forget_eval=[], max_length=128)
    attack = RelationGraph(edges=str(path))
    scores = {n: attack.run(m, tiny_tokenizer, data).scores for n, m in (("target", target), ("unl", unlearned))}
    print("graph of the target's own top pairs:", scores)
    assert scores["target"]["graph_auc"] == pytest.approx(1.0)
    assert scores["unl"]["graph_auc"] < 1.0  # unlearning moved the name vectors
    csv_path = tmp_path / "edges.csv"
    csv_path.write_text("source,target\n" + "".join(f"{names[iu[0, t]]},{names[iu[1, t]]}\n" for t in top.tolist()))
    assert RelationGraph(edges=str(csv_path)).run(target, tiny_tokenizer, data).scores == scores["target"]
    # "all" layers: unit vectors per layer concatenated -> cosine = mean of the per-layer cosines
    allv, used = entity_vectors(target, tiny_tokenizer, names[:3], layer="all", pool="last", prefix="About ")
    per = [cosine_matrix(entity_vectors(target, tiny_tokenizer, names[:3], layer=i, pool="last", prefix="About ")[0])
           for i in used]
    assert used == [1, 2, 3] and torch.allclose(cosine_matrix(allv), sum(per) / 3)
    with pytest.raises(ConfigError, match="layer=7"):
        RelationGraph(layer=7).run(target, tiny_tokenizer, data)


# ----------------------------------------------------------------------------- errors
def test_relation_graph_errors(tiny_forget_tofu, tmp_path):
    for bad in (dict(pool="max"), dict(layer="top"), dict(layer=True), dict(k=-1), dict(k=1.5), dict(entity_key="")):
        with pytest.raises(ConfigError):
            RelationGraph(**bad)
    one_person = AttackData(forget_train=tiny_forget_tofu[:4], forget_eval=tiny_forget_tofu[4:])
    with pytest.raises(DataError, match="at least 3 forget entities"):
        RelationGraph().baseline(None, None, one_person)
    nameless = AttackData(forget_train=[Example("where?", "here.")], forget_eval=[])
    with pytest.raises(DataError, match="record 0 .*'entity'"):
        RelationGraph().run(None, None, nameless)
    with pytest.raises(DataError, match="derive_entities is off"):
        RelationGraph(derive_entities=False).run(None, None, one_person)
    recs = [Example("q", f"{n} likes {f}.", extras={"entity": n}) for n, f in (("Ann", "tea"), ("Bo", "jam"), ("Cy", "ham"))]
    unlinked = AttackData(forget_train=recs, forget_eval=[])
    with pytest.raises(DataError, match="edges file"):
        RelationGraph().run(None, None, unlinked)  # nothing shared -> no edges
    same = AttackData(forget_train=[dataclasses.replace(r, answer=f"{r.extras['entity']} likes tea.") for r in recs],
                      forget_eval=[])
    with pytest.raises(DataError, match="Every two entities share"):
        RelationGraph().run(None, None, same)  # complete graph: no non-edge for the AUC
    path = tmp_path / "e.json"
    path.write_text(json.dumps([["Ann", "Bo"], ["Bo", "Zed"]]))
    with pytest.raises(DataError, match="row 1"):
        RelationGraph(edges=str(path)).run(None, None, unlinked)
    path.write_text(json.dumps([["Ann", "Bo"], ["Bo", "Cy"], ["Ann", "Cy"]]))
    with pytest.raises(DataError, match="3 of 3 possible edges"):
        RelationGraph(edges=str(path)).run(None, None, unlinked)
    with pytest.raises(DataError, match="does not exist"):
        RelationGraph(edges=str(tmp_path / "missing.csv")).run(None, None, unlinked)
    (tmp_path / "bad.csv").write_text("a,b\nAnn,Bo\n")
    with pytest.raises(DataError, match="source,target"):
        RelationGraph(edges=str(tmp_path / "bad.csv")).run(None, None, unlinked)
    path.write_text(json.dumps([["Ann", "Bo"]]))
    with pytest.raises(ConfigError, match="k=3"):
        RelationGraph(edges=str(path), k=3).run(None, None, unlinked)
    assert RelationGraph(edges=str(path)).baseline(None, None, unlinked) == pytest.approx(chance_scores(3, 1, 1))


# ----------------------------------------------------------------------------- a setting that does recover
# Where the read-out DOES find the graph, and gradient ascent does not remove it: the people are the
# *answers* ("Who works as a locksmith?" -> "Kaelen Nordane works as a locksmith."), 12 people in 4
# groups of 3 sharing 5 facts, so each shared question has three right answers, and a tokenizer built
# on these records (2 tokens per name, as names are in a real vocabulary; with the 400-token test
# tokenizer a name is ~11 character-level pieces shared by all names and nothing is readable). The
# model's input and output embeddings are tied, so predicting a name after the shared questions pulls
# the embeddings of a group's names together; the read-out is at layer 0 (the embedding layer).
# Measured (printed with -s; 1-layer tiny Llama, 300 steps): answer probability target 0.923 ->
# unlearned 0.0018 (30 GA steps at lr 3e-3; never-trained 0.0016), but graph AUC target 0.935 /
# unlearned 0.946 / never-trained 0.688 (chance 0.5), F1 0.833 / 0.833 / 0.417 (chance 0.182):
# recovery ratio ~1.0. A 3-layer model needs ~600 steps for the same (AUC 0.93, F1 0.75); the middle
# layer does not carry the graph in either (AUC ~0.5-0.7, like the never-trained model). People seed 7
# gives a clean graph (4 triangles); with seeds 3 / 11 groups also share single facts by chance (21 / 30
# shared-answer edges) and the read-out is weaker (AUC 0.63), on the 4 group triangles AUC target
# 0.85 / 0.71, unlearned 0.85 / 0.72, never-trained 0.50 / 0.40: unlearned ~ target holds throughout.
@pytest.fixture(scope="module")
def who_records() -> list[Example]:
    people = generate_people(12, seed=7)
    grouped = [dataclasses.replace(p, **{a: getattr(people[i - i % 3], a) for a in SHARED})
               for i, p in enumerate(people)]

    def who(answer: str, name: str) -> str:  # "Kaelen Nordane works as a locksmith." -> "Who works as a locksmith?"
        q = answer.replace(name, "Who").rstrip(".") + "?"
        return q.replace("The father of Who", "Whose father").replace("The mother of Who", "Whose mother")

    return [Example(who(r["answer"], p.name), r["answer"], extras={"entity": p.name})
            for i, p in enumerate(grouped) for r in person_qa(p, 8, rng=random.Random(i))]


@pytest.fixture(scope="module")
def who_models(tmp_path_factory, who_records):
    """(tokenizer, never trained, target, unlearned) on a 1-layer tiny Llama whose tokenizer knows the names."""
    from unlearnkit.models import TinyModelSpec, build_tiny_model, load_tokenizer

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=600)
    path = build_tiny_model([t for ex in who_records for t in (f"Question: {ex.question}\nAnswer:\n", ex.answer)],
                            tmp_path_factory.mktemp("who") / "model", spec)
    tok = load_tokenizer(path)
    never, target = load_model(path), load_model(path)
    cfg = dict(weight_decay=0.0, progress=False, threads=1)
    data = build_paired(None, who_records, [], tok, max_length=128)
    run(target, Finetune(), data, TrainConfig(max_steps=300, batch_size=16, lr=1e-2, scheduler="constant", **cfg))
    unlearned = copy.deepcopy(target)
    run(unlearned, GradAscent(), data, TrainConfig(max_steps=30, batch_size=8, lr=3e-3, **cfg))
    for m in (never, target, unlearned):
        m.eval()
    return tok, never, target, unlearned


def test_relation_graph_survives_gradient_ascent_when_names_are_answers(who_models, who_records):
    from unlearnkit.audit import forget_probability
    from unlearnkit.data.format import PromptTemplate

    tok, never, target, unlearned = who_models
    assert all(len(tok(ex.extras["entity"], add_special_tokens=False).input_ids) == 2 for ex in who_records)
    prob = {n: forget_probability(m, tok, who_records, PromptTemplate(), 128)
            for n, m in (("target", target), ("unlearned", unlearned), ("never", never))}
    data = AttackData(forget_train=who_records, forget_eval=[], max_length=128)
    attack = RelationGraph(layer=0)
    chance = attack.baseline(target, tok, data)
    assert chance == pytest.approx({"graph_f1": 2 / 11, "graph_auc": 0.5})  # N 12, m 12 (4 triangles), k 2
    scores = {n: attack.run(m, tok, data).scores for n, m in (("target", target), ("unlearned", unlearned),
                                                               ("never", never))}
    ratio = {key: recovery_ratio(attacked=scores["unlearned"][key], unlearned=chance[key],
                                 target=scores["target"][key]).value for key in chance}
    print(f"answer prob {prob} | " + " | ".join(
        f"{key}: chance {chance[key]:.3f} target {scores['target'][key]:.3f} unlearned {scores['unlearned'][key]:.3f} "
        f"never-trained {scores['never'][key]:.3f} recovery {ratio[key]:.2f}" for key in chance))
    assert prob["unlearned"] < 0.01 < 0.5 < prob["target"]  # the answers are gone ...
    assert scores["target"]["graph_auc"] > 0.85 and scores["target"]["graph_f1"] > 0.6  # the target encodes the graph
    assert scores["unlearned"]["graph_auc"] > 0.85 and ratio["graph_f1"] > 0.8  # ... but its structure is still there
    for key in chance:  # and it is learned structure: the never-trained model reads much less
        assert scores["unlearned"][key] - scores["never"][key] > 0.15
