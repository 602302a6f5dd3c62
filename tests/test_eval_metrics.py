"""IR metrics (hand-computed and against ir-measures) and SQuAD-style answer metrics."""
from __future__ import annotations

import math
import random

import ir_measures
import pytest

from ragkit.errors import ConfigError
from ragkit.eval.metrics import (answer_score, contains_answer, exact_match, ir_per_query, normalize_answer,
                                 parse_metric, parse_metrics, run_from_hits, token_f1)
from ragkit.records import Hit, Query, Ranking


def ranking(qid: str, items: list[tuple[str, float]], chunks: list[str] | None = None) -> Ranking:
    q = Query(qid, "q")
    return Ranking(q, tuple(Hit(qid, d, s, 0, chunk_id=(chunks[i] if chunks else None))
                            for i, (d, s) in enumerate(items)))


def values(names, qrels, rankings):
    run = {r.qid: run_from_hits(r.hits) for r in rankings}
    return ir_per_query(parse_metrics(names), qrels, run)


# -- hand-computed ------------------------------------------------------------------------------


def test_hand_computed_toy_ranking():
    # order: b (grade 0), a (grade 2), c (grade 1), d (unjudged)
    r = ranking("1", [("b", 4.0), ("a", 3.0), ("c", 2.0), ("d", 1.0)])
    v = values(["RR@10", "AP", "P@2", "R@2", "R@3", "nDCG@10", "P@4"], {"1": {"a": 2, "b": 0, "c": 1}}, [r])
    assert v["RR@10"]["1"] == pytest.approx(1 / 2)
    assert v["AP"]["1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert v["P@2"]["1"] == pytest.approx(1 / 2)
    assert v["R@2"]["1"] == pytest.approx(1 / 2)
    assert v["R@3"]["1"] == pytest.approx(1.0)
    assert v["P@4"]["1"] == pytest.approx(2 / 4)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)  # trec_eval nDCG: linear gains
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert v["nDCG@10"]["1"] == pytest.approx(dcg / idcg)


def test_aliases_mrr_and_map():
    r = ranking("1", [("x", 3.0), ("a", 2.0), ("y", 1.0), ("c", 0.5)])
    qrels = {"1": {"a": 1, "c": 1}}
    alias, canonical = values(["MRR@10", "MAP"], qrels, [r]), values(["RR@10", "AP"], qrels, [r])
    assert alias["MRR@10"]["1"] == canonical["RR@10"]["1"] == pytest.approx(0.5)
    assert alias["MAP"]["1"] == canonical["AP"]["1"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert str(parse_metric("MRR@10").measure) == "RR@10"
    assert str(parse_metric("MAP").measure) == "AP"


def test_max_passage_dedupes_chunks_of_one_document():
    # d1 appears twice (two chunks): it counts once, at its best position
    r = ranking("1", [("d1", 0.9), ("d2", 0.8), ("d1", 0.7), ("d3", 0.6)], chunks=["d1#0", "d2#0", "d1#1", "d3#0"])
    assert list(run_from_hits(r.hits)) == ["d1", "d2", "d3"]
    v = values(["RR@10", "P@3"], {"1": {"d3": 1}}, [r])
    assert v["RR@10"]["1"] == pytest.approx(1 / 3)
    assert v["P@3"]["1"] == pytest.approx(1 / 3)


def test_ties_are_scored_in_ranking_order():
    # Ranking orders ties by doc_id ascending; trec_eval alone would put 'b' first
    r = ranking("1", [("b", 1.0), ("a", 1.0)])
    assert [h.doc_id for h in r.hits] == ["a", "b"]
    assert values(["RR@10"], {"1": {"a": 1}}, [r])["RR@10"]["1"] == 1.0


def test_empty_or_missing_ranking_scores_zero():
    v = ir_per_query(parse_metrics(["nDCG@10", "RR@10", "AP", "R@5"]), {"1": {"a": 1}, "2": {"b": 1}},
                     {"1": {}, })
    for name in ("nDCG@10", "RR@10", "AP", "R@5"):
        assert v[name] == {"1": 0.0, "2": 0.0}


def test_agrees_with_ir_measures_on_a_random_run():
    rnd = random.Random(7)
    docs = [f"d{i}" for i in range(40)]
    qrels, run, rankings = {}, {}, []
    for q in range(25):
        qid = f"q{q}"
        qrels[qid] = {d: rnd.choice([0, 1, 1, 2, 3]) for d in rnd.sample(docs, 8)}
        scores = rnd.sample(range(1000), 30)  # distinct scores: no ties
        items = [(d, float(s)) for d, s in zip(rnd.sample(docs, 30), scores)]
        run[qid] = dict(items)
        rankings.append(ranking(qid, items))
    names = ["nDCG@10", "nDCG", "RR@10", "RR", "AP", "P@5", "R@10", "R@100", "Success@3", "P(rel=2)@5", "AP(rel=2)"]
    ours = values(names, qrels, rankings)
    theirs = {}
    for m in ir_measures.iter_calc([ir_measures.parse_measure(n) for n in names], qrels, run):
        theirs.setdefault(str(m.measure), {})[m.query_id] = m.value
    for n in names:
        key = str(ir_measures.parse_measure(n))
        assert set(ours[n]) == set(theirs[key])
        for qid in ours[n]:
            assert ours[n][qid] == pytest.approx(theirs[key][qid]), (n, qid)


def test_unknown_metric_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="nDCG@10"):
        parse_metric("nDGC@10")
    with pytest.raises(ConfigError):
        parse_metric("")


def test_parse_metrics_dedupes_and_splits_strings():
    ms = parse_metrics("nDCG@10, AP EM")
    assert [m.name for m in ms] == ["nDCG@10", "AP", "EM"]
    assert [m.kind for m in ms] == ["ir", "ir", "answer"]
    assert [m.name for m in parse_metrics(["AP", "MAP", "em", "EM"])] == ["AP", "em"]


# -- answer metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, norm", [
    ("The Cat!", "cat"),
    ("An  apple, the pie.", "apple pie"),
    ("Denver Broncos", "denver broncos"),
    ("a-b", "ab"),
    ("theater", "theater"),  # articles only as whole words
    ("  Santa   Clara\n", "santa clara"),
])
def test_squad_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_and_f1_examples():
    assert exact_match("The Denver Broncos!", "denver broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # pred [cat, sat] vs gold [cat, sat, on, mat]: P = 1, R = 1/2
    assert token_f1("the cat sat", "A cat sat on the mat") == pytest.approx(2 / 3)
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts clipped
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "cat") == 0.0
    assert token_f1("", "the") == 1.0  # both normalise to nothing


def test_max_over_gold_answers():
    golds = ["Denver Broncos", "the Broncos", "Broncos"]
    assert answer_score("EM", "broncos", golds) == 1.0
    assert answer_score("F1", "Denver", golds) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert answer_score("F1", "x", []) == 0.0


def test_em_in_containment():
    assert contains_answer("It was won by the Denver Broncos in 2016.", "Denver Broncos") == 1.0
    assert contains_answer("Broncos", "Denver Broncos") == 0.0
    assert answer_score("EM-in", "The answer is Santa Clara, California.", ["Levi's Stadium", "Santa Clara"]) == 1.0
    assert answer_score("em_in", "no idea", ["Santa Clara"]) == 0.0


# -- properties -------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(alphabet=st.sampled_from(list("abc the,.!AN ")), max_size=25)


@settings(max_examples=200, deadline=None)
@given(_text, _text)
def test_answer_metric_invariants(pred, gold):
    assert normalize_answer(normalize_answer(pred)) == normalize_answer(pred)
    em, f1, em_in = exact_match(pred, gold), token_f1(pred, gold), contains_answer(pred, gold)
    assert 0.0 <= f1 <= 1.0
    assert token_f1(gold, pred) == pytest.approx(f1)  # F1 is symmetric
    if em == 1.0:
        assert f1 == 1.0 and em_in == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 100)), min_size=1, max_size=20))
def test_duplicate_chunks_never_change_ir_metrics(items):
    # a ranking with repeated doc ids scores like the same ranking with only first occurrences
    hits = [(d, float(s)) for d, s in items]
    full = ranking("1", hits, chunks=[f"{d}#{i}" for i, (d, _) in enumerate(hits)])
    seen, firsts = set(), []
    for h in full.hits:
        if h.doc_id not in seen:
            seen.add(h.doc_id)
            firsts.append((h.doc_id, h.score))
    qrels = {"1": {"a": 2, "c": 1, "h": 1}}
    names = ["nDCG@5", "AP", "RR", "P@3", "R@4"]
    assert values(names, qrels, [full]) == values(names, qrels, [ranking("1", firsts)])
