"""whp: labels = argmax(v_base(translated text) - alpha * relu(v_reinforced(original) - v_base)), then NLL."""
from __future__ import annotations

import copy
import dataclasses
import gc
import json
import weakref
from pathlib import Path

import pytest
import torch

import unlearnkit.methods.whp as whp
from unlearnkit.data.format import IGNORE, encode
from unlearnkit.data.pair import build_paired
from unlearnkit.data.records import Example
from unlearnkit.data.synthetic import generate_people
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.methods.base import nll
from unlearnkit.methods.whp import (WHP, Piece, align_rows, generic_logits, generic_views, load_terms, plan_all,
                                   translate)
from unlearnkit.train import Finetune, TrainConfig, forget_prob, run

EXAMPLE_TERMS = Path(__file__).parent / "data" / "whp_terms.json"
FORGET_NAME = generate_people(4, seed=0)[0].name  # person 0 = the forget set of conftest's tiny_examples
CFG = TrainConfig(lr=1e-2, batch_size=4, weight_decay=0.0, progress=False, threads=1)


@pytest.fixture
def name_terms(tmp_path):
    path = tmp_path / "terms.json"
    path.write_text(json.dumps({FORGET_NAME: "Jon Smith"}))
    return str(path)


# ----------------------------------------------------------------------------- the maths
def test_generic_logits_by_hand():
    v_base = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    v_reinf = torch.tensor([[1.0, 4.0, -2.0], [2.5, -1.0, 1.0]])
    # rises relu(v_reinf - v_base): [0, 2, 0] and [2, 0, 0]
    expected = torch.tensor([[1.0, 2.0 - 2.0, 0.0], [0.5 - 2.0, -1.0, 3.0]])
    torch.testing.assert_close(generic_logits(v_base, v_reinf, 1.0), expected)
    assert generic_logits(v_base, v_reinf, 1.0).argmax(-1).tolist() == [0, 2]  # row 0: the boosted token 1 loses
    half = torch.tensor([[1.0, 2.0 - 0.5, 0.0], [0.5 - 0.5, -1.0, 3.0]])  # alpha 0.25
    torch.testing.assert_close(generic_logits(v_base, v_reinf, 0.25), half)
    assert generic_logits(v_base, v_reinf, 0.25).argmax(-1).tolist() == [1, 2]  # a small alpha keeps the base choice
    torch.testing.assert_close(generic_logits(v_base, v_base - 1.0, 3.0), v_base)  # nothing rose: the baseline


# ----------------------------------------------------------------------------- anchored terms
def test_load_terms_formats(tmp_path):
    example = load_terms(str(EXAMPLE_TERMS))
    assert example["Harry"] == "Jon" and example["Harry Potter"] == "Jon Smith" and len(example) == 7
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"term": "Harry", "generic": "Jon"}, {"term": "Harry", "generic": "Jon"},
                                  {"generic": "Sarah", "term": " Hermione "}]))
    assert load_terms(str(listed)) == {"Harry": "Jon", "Hermione": "Sarah"}  # same pair twice is fine; stripped
    table = tmp_path / "terms.csv"
    table.write_text("term,generic\nHarry, Jon\n\nHogwarts,\"Mapleton, High\"\n")
    assert load_terms(str(table)) == {"Harry": "Jon", "Hogwarts": "Mapleton, High"}
    headless = tmp_path / "bare.csv"
    headless.write_text("Harry,Jon\n")
    assert load_terms(str(headless)) == {"Harry": "Jon"}


def test_substitution_is_whole_word_longest_first_and_consistent():
    terms = load_terms(str(EXAMPLE_TERMS))
    text = "Harry Potter met Harry at Hogwarts; Harrys and Harry's owl. Dr. Who? came, Hermione!"
    out, pieces = translate(text, terms)
    assert out == "Jon Smith met Jon at Mapleton High; Harrys and Jon's owl. Mr. X came, Sarah!"
    for pc in pieces:  # the pieces tile both texts: identical text or term -> its generic
        o, t = text[pc.o_start : pc.o_end], out[pc.t_start : pc.t_end]
        assert (o == t) if pc.same else (terms[o] == t)
    assert [text[p.o_start : p.o_end] for p in pieces if not p.same] == [
        "Harry Potter", "Harry", "Hogwarts", "Harry", "Dr. Who?", "Hermione"]
    assert pieces[0].o_start == 0 and pieces[-1].o_end == len(text) and pieces[-1].t_end == len(out)
    assert translate("Harryette Harry", {"Harry": "Jon"})[0] == "Harryette Jon"
    assert translate("Harry", {}) == ("Harry", [Piece(0, 5, 0, 5, True)])  # no terms: unchanged


@pytest.mark.parametrize(("name", "content", "match"), [
    ("empty.json", '{"": "Jon"}', "empty term"),
    ("blank.json", '{"Harry": "  "}', "empty term"),
    ("dup.json", '{"Harry": "Jon", "Harry": "Bob"}', "two generics"),
    ("dup.csv", "Harry,Jon\nHarry,Bob\n", "two generics"),
    ("dup_list.json", '[{"term": "Harry", "generic": "Jon"}, {"term": "Harry", "generic": "Bob"}]', "two generics"),
    ("bad.json", '{"Harry": "Jon"', "not valid JSON"),
    ("strings.json", '["Harry", "Jon"]', "expected a JSON object"),
    ("keys.json", '[{"term": "Harry"}]', "item 0: expected the keys"),
    ("number.json", '{"Harry": 3}', "must be strings"),
    ("none.json", "{}", "no terms"),
    ("wide.csv", "Harry,Jon,Bob\n", "line 1: expected 2 columns"),
])
def test_bad_term_files_raise_data_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_terms(str(path))


def test_a_missing_terms_file_is_a_config_error_naming_terms(tmp_path, make_paired, tiny_model):
    with pytest.raises(ConfigError, match="terms"):
        WHP(terms=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="terms"):
        load_terms(str(tmp_path / "nope.json"))
    path = tmp_path / "t.json"
    path.write_text('{"Harry": "Jon"}')
    method = WHP(terms=str(path))
    path.unlink()  # gone by the time training starts
    with pytest.raises(ConfigError, match="terms"):
        method.prepare(tiny_model, make_paired(method), CFG)
    for field, bad in (("alpha", 0.0), ("reinforce_epochs", 0.0), ("reinforce_lr", -1.0)):
        with pytest.raises(ConfigError, match=field):
            WHP(**{field: bad})


# ----------------------------------------------------------------------------- alignment
def test_align_rows_on_hand_made_offsets():
    # original "ab Harry cd": tokens "ab"(0-2) " Har"(2-6) "ry"(6-8) " cd"(8-11); anchor "Harry" = 3-8
    # translated "ab Jon cd": tokens "ab"(0-2) " Jon"(2-6) " cd"(6-9)
    pieces = [Piece(0, 3, 0, 3, True), Piece(3, 8, 3, 6, False), Piece(8, 11, 6, 9, True)]
    o_ends, t_ends = [0, 2, 6, 8, 11], [0, 2, 6, 9]  # a BOS (0-0) first
    rows, lost = align_rows(o_ends, t_ends, pieces, [2, 3, 4])  # labels " Har", "ry", " cd"
    assert rows == [(2, 1, 1), (4, 3, 2)] and lost == 0  # "ry" (context ends inside the term) is dropped
    # a translation whose tokens merge across the term's end: "ab Jon cd" as "ab", " Jo", "n cd"
    rows, lost = align_rows(o_ends, [0, 2, 5, 9], pieces, [2, 3, 4])
    assert rows == [(2, 1, 1)] and lost == 1  # " cd" cannot be aligned: counted, not guessed


def _base_rows(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)


def test_generic_view_is_aligned_with_the_translated_text(tiny_model, make_paired, tiny_tokenizer, name_terms):
    data = make_paired(WHP())
    plans = plan_all(data, load_terms(name_terms))
    torch.manual_seed(0)
    reinforced = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in reinforced.parameters():
            p.add_(0.05 * torch.randn_like(p))
    views = generic_views(tiny_model, reinforced, data, plans, alpha=1.0, batch_size=4)
    near_base = generic_views(tiny_model, reinforced, data, plans, alpha=1e-9, batch_size=4)
    n_dropped = 0
    for ex, item, view, small in zip(data.examples, data.forget, views, near_base):
        enc = item["forget"]
        trans = encode(ex.question.replace(FORGET_NAME, "Jon Smith"), ex.answer.replace(FORGET_NAME, "Jon Smith"),
                       tiny_tokenizer, max_length=128)
        prompt = f"Question: {ex.question}\nAnswer:\n"
        at = ex.answer.index(FORGET_NAME)
        cut = at - 1 if at and ex.answer[at - 1] == " " else at  # the space belongs to the name's first token
        j_first = len(tiny_tokenizer(prompt + ex.answer[:cut]).input_ids)  # first token of the name
        j_after = len(tiny_tokenizer(prompt + ex.answer[: at + len(FORGET_NAME)]).input_ids)  # token after it
        shift_before = trans.prompt_len - enc.prompt_len
        shift_after = len(trans.input_ids) - len(enc.input_ids)
        base_t, reinf_o = _base_rows(tiny_model, trans.input_ids), _base_rows(reinforced, enc.input_ids)
        expected = [IGNORE] * enc.prompt_len
        for j in range(enc.prompt_len, len(enc.input_ids)):
            if j_first < j < j_after:
                expected.append(IGNORE)  # inside the name, not its first token
                continue
            jt = j + (shift_before if j <= j_first else shift_after)
            v, r = base_t[jt - 1], reinf_o[j - 1]
            expected.append(int(torch.argmax(v - torch.clamp(r - v, min=0.0))))
        assert view.input_ids == enc.input_ids and view.labels == expected
        assert small.labels[j_first] == int(base_t[j_first + shift_before - 1].argmax())  # baseline's generic choice
        n_dropped += j_after - j_first - 1
    assert n_dropped >= len(data.forget)  # every name spans >= 2 tokens here, so the -100 rule was exercised


def test_without_terms_the_labels_are_the_generic_argmax_on_the_original(tiny_model, make_paired):
    data = make_paired(WHP())
    plans = plan_all(data, {})
    views = generic_views(tiny_model, tiny_model, data, plans, alpha=1.0, batch_size=4)  # reinforced == base
    for item, view in zip(data.forget, views):
        enc = item["forget"]
        pred = _base_rows(tiny_model, enc.input_ids).argmax(-1).tolist()
        assert view.labels == [IGNORE if lab == IGNORE else pred[j - 1] for j, lab in enumerate(enc.labels)]


def test_unprovable_alignment_is_dropped_with_a_warning(tiny_tokenizer, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"born": '"born"'}))  # the closing quote merges with the "." that follows
    ex = Example("Where was Morwyn born?", "Morwyn was born.")
    data = build_paired(WHP(), [ex], [], tiny_tokenizer, max_length=128)
    enc = data.forget[0]["forget"]
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc.input_ids[enc.prompt_len :])
    assert tokens[-3:] == ["Ġborn", ".", "</s>"]  # translated: ... 'Ġ"', 'born', '".' (no token ends after the quote)
    with pytest.warns(UserWarning, match="1 answer tokens in 1 of 1 forget examples could not be aligned"):
        (plan,) = plan_all(data, load_terms(str(path)))
    dot = len(enc.input_ids) - 2
    assert plan.lost == 1 and [j for j, _, _ in plan.rows] == [j for j in range(enc.prompt_len, dot + 2) if j != dot]


def test_terms_absent_from_the_forget_set_warn(make_paired, tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"Hogwarts": "school"}')
    with pytest.warns(UserWarning, match="none of the 1 anchored terms occurs in the forget set"):
        plans = plan_all(make_paired(WHP()), load_terms(str(path)))
    assert all(p.lost == 0 and p.rows for p in plans)


# ----------------------------------------------------------------------------- behaviour
def test_prepare_adds_the_view_keeps_the_model_and_frees_the_reinforced_copy(tiny_model, make_paired, monkeypatch):
    method = WHP(reinforce_epochs=2.0, reinforce_lr=1e-2)
    data = make_paired(method)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    seen = []
    real = whp.reinforce

    def spy(model, data, cfg, **kw):
        aux = real(model, data, cfg, **kw)
        seen.append((weakref.ref(aux), forget_prob(aux, data), forget_prob(model, data)))
        return aux

    monkeypatch.setattr(whp, "reinforce", spy)
    method.prepare(tiny_model, data, CFG)
    gc.collect()
    (aux_ref, p_reinforced, p_base), = seen
    assert aux_ref() is None  # the reinforced model was freed
    assert p_reinforced > p_base  # it was trained further on the forget set
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())  # the baseline untouched
    assert all(item["generic"].input_ids == item["forget"].input_ids for item in data.forget)
    assert method.n_generic == sum(sum(lab != IGNORE for lab in it["forget"].labels) for it in data.forget)
    batch = next(data.batches(4, seed=0))
    out = method.loss(tiny_model, batch, None)
    assert out.logs["forget_loss"] == pytest.approx(nll(tiny_model, batch["generic"]).item(), rel=1e-6)
    assert out.logs["retain_loss"] == 0.0 and not method.needs_retain  # the paper has no retain term
    del batch["generic"]
    with pytest.raises(RuntimeError, match="prepare"):
        method.loss(tiny_model, batch, None)


def test_unlearning_lowers_the_forget_probability(tiny_model, make_paired, name_terms):
    data = make_paired(WHP())
    run(tiny_model, Finetune(), data, dataclasses.replace(CFG, max_steps=80))  # the model learns the forget set
    before = forget_prob(tiny_model, data)
    after = {}
    for terms in (name_terms, ""):
        model, fresh = copy.deepcopy(tiny_model), make_paired(WHP())
        method = WHP(terms=terms, reinforce_epochs=2.0, reinforce_lr=1e-2)
        result = run(model, method, fresh, dataclasses.replace(CFG, max_steps=20))
        assert result.log[-1]["forget_loss"] < result.log[0]["forget_loss"]  # it fits the generic labels
        after[terms] = forget_prob(model, fresh)
    assert after[name_terms] < 0.3 * before, (before, after)  # ~0.55 -> ~0.09
    # the paper's ablation: without the anchored-term translation the labels of a model that knows the
    # answers stay mostly the answers themselves, and the forget set is not forgotten (here ~0.62)
    assert after[name_terms] < 0.5 * after[""], after
