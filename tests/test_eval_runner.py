"""evaluate() end to end with small in-memory stages and ragkit.testing fakes."""
from __future__ import annotations

import json

import ir_measures
import numpy as np
import pytest

from ragkit.errors import ConfigError, DataError
from ragkit.eval import Dataset, EvalResult, evaluate
from ragkit.pipeline import Pipeline
from ragkit.records import Document, Hit, Query, Ranking
from ragkit import registry
from ragkit.stage import QUERIES, RANKINGS, Stage, param
from ragkit.testing import EchoGenerator, OverlapReranker, tokens

CORPUS = [
    Document("d1", "Paris is the capital of France. It lies on the Seine.", {"title": "Paris"}),
    Document("d2", "Berlin is the capital of Germany. It lies on the Spree.", {"title": "Berlin"}),
    Document("d3", "Bananas are yellow. They grow in warm places.", {"title": "Banana"}),
    Document("d4", "The Seine flows through Paris to the sea.", {"title": "Seine"}),
    Document("d5", "Rome is the capital of Italy.", {"title": "Rome"}),
    Document("d6", "Lemons are yellow and sour.", {"title": "Lemon"}),
]
QUERIES_ = [Query("q1", "capital of France"), Query("q2", "what colour are bananas"),
            Query("q3", "capital of Germany"), Query("q4", "river through Paris"),
            Query("q5", "capital of Italy"), Query("q6", "no judgements for this one")]
QRELS = {"q1": {"d1": 2, "d4": 1}, "q2": {"d3": 1}, "q3": {"d2": 1}, "q4": {"d4": 2, "d1": 1},
         "q5": {"d5": 1, "d2": 0}}
ANSWERS = {"q1": ["Paris"], "q2": ["yellow"], "q3": ["Berlin"], "q4": ["the Seine"], "q5": ["Rome"]}
TEXT = {d.doc_id: d.text for d in CORPUS}


class ToyOverlapRetriever(Stage):
    """Test retriever: scores documents by shared query tokens (or the reverse order)."""

    key = "retriever.evaltest"  # registered only while a test of this module runs (see the fixture)
    k: int = param(10, ge=1, help="hits kept")
    reverse: bool = param(False, help="rank the worst matches first")
    chunked: bool = param(False, help="return every document twice, as two chunks")
    input_kind = QUERIES
    output_kind = RANKINGS

    def provides(self) -> frozenset[str]:
        return frozenset({"text"})

    def run(self, batch: list[Query]) -> list[Ranking]:
        out = []
        for q in batch:
            qt = set(tokens(q.text))
            hits = []
            for d in CORPUS:
                s = len(qt & set(tokens(d.text))) / len(qt)
                s = -s if self.reverse else s
                hits.append(Hit(q.qid, d.doc_id, s, 0, d.text, chunk_id=f"{d.doc_id}#0"))
                if self.chunked:
                    hits.append(Hit(q.qid, d.doc_id, s - 0.5, 0, d.text, chunk_id=f"{d.doc_id}#1"))
            out.append(Ranking(q, tuple(hits)).top(self.k))
        return out


class _Exploding(ToyOverlapRetriever):
    """Fails when run: evaluate must reject bad arguments before running anything."""

    def run(self, batch):
        raise AssertionError("the pipeline ran")


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """Register the toy retriever for YAML round trips without leaking it into other test modules."""
    registry.keys()  # load the built-ins first
    monkeypatch.setitem(registry._REGISTRY, ToyOverlapRetriever.key, ToyOverlapRetriever)


@pytest.fixture
def ds() -> Dataset:
    return Dataset("toy", list(CORPUS), list(QUERIES_), {q: dict(r) for q, r in QRELS.items()},
                   {q: list(a) for q, a in ANSWERS.items()})


def good() -> Pipeline:
    return Pipeline([ToyOverlapRetriever()], name="good")


def bad() -> Pipeline:
    return Pipeline([ToyOverlapRetriever(reverse=True)], name="bad")


def test_ir_metrics_match_ir_measures_and_means(ds):
    res = evaluate(good(), ds, ["nDCG@10", "RR@10", "AP", "P@1"], progress=False)
    assert res.pipelines == ["good"] and res.metrics == ["nDCG@10", "RR@10", "AP", "P@1"]
    assert res.queries["ir"] == 5  # q6 has no qrels: not evaluated
    rankings = ToyOverlapRetriever()(QUERIES_[:5])
    run = {r.qid: {h.doc_id: -float(h.rank) for h in r.hits} for r in rankings}
    for m in ir_measures.iter_calc([ir_measures.parse_measure(n) for n in res.metrics], QRELS, run):
        assert res.per_query["good"][str(m.measure)][m.query_id] == pytest.approx(m.value)
    for name in res.metrics:
        assert res.summary["good"][name] == pytest.approx(np.mean(list(res.per_query["good"][name].values())))
    assert res.summary["good"]["P@1"] == pytest.approx(1.0)  # every query's best match is relevant
    assert set(res.per_query["good"]["latency_ms"]) == {"q1", "q2", "q3", "q4", "q5"}
    lat = res.latency["good"]
    assert lat["p50_ms"] <= lat["p95_ms"] and set(lat["stages_ms"]) == {"retriever.evaltest"}


def test_chunk_rankings_are_scored_per_document(ds):
    doc_level = evaluate(good(), ds, ["nDCG@10", "AP", "R@3"], progress=False)
    chunked = evaluate(Pipeline([ToyOverlapRetriever(chunked=True)], name="good"), ds, ["nDCG@10", "AP", "R@3"],
                       progress=False)
    assert chunked.summary == doc_level.summary


def test_significance_and_table_markers(ds):
    ds.queries.extend(Query(f"x{i}", f"capital of France {i}") for i in range(20))
    ds.qrels.update({f"x{i}": {"d1": 1} for i in range(20)})
    res = evaluate([bad(), good()], ds, ["RR@10", "P@1"], significance="both", progress=False)
    assert res.baseline == "bad" and res.test == "both"
    sig = res.significance["good"]["RR@10"]
    assert sig["delta"] > 0.5 and sig["ttest"] < 0.01 and sig["randomization"] < 0.01 and sig["n"] == 25
    table = res.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["pipeline", "RR@10", "P@1"] and "p50 ms" in lines[0] and "p95 ms" in lines[0]
    good_row = next(line for line in lines if line.startswith("good"))
    assert f"{res.summary['good']['RR@10']:.4f}**" in good_row
    assert next(line for line in lines if line.startswith("bad")).startswith("bad (baseline)")
    assert "p < 0.01 vs baseline 'bad'" in table
    # same pipeline twice: p = 1, no marker
    same = evaluate({"a": good(), "b": good()}, ds, ["RR@10"], significance="randomization", progress=False)
    assert same.significance["b"]["RR@10"]["randomization"] == 1.0 and same.marker("b", "RR@10") == ""


def test_answer_pipeline_gets_ir_and_answer_metrics(ds):
    rag = Pipeline([ToyOverlapRetriever(k=3), EchoGenerator()], name="echo")
    res = evaluate([good(), rag], ds, progress=False)
    assert res.metrics == ["nDCG@10", "RR@10", "R@100", "AP", "P@10", "EM", "F1", "EM-in"]
    assert res.summary["good"]["EM"] is None and res.summary["echo"]["nDCG@10"] is not None
    # the echo answer is the top passage's first sentence, e.g. "Paris is the capital of France."
    assert res.per_query["echo"]["EM-in"]["q1"] == 1.0 and res.per_query["echo"]["EM"]["q1"] == 0.0
    assert res.per_query["echo"]["F1"]["q1"] == pytest.approx(2 * (1 / 5) * 1 / (1 / 5 + 1))
    assert res.queries == {"ir": 5, "answer": 5, "run": 5}
    assert "EM" not in res.significance["echo"]  # no baseline values to pair with
    row = next(line for line in res.table().splitlines() if line.startswith("good"))
    assert " - " in row + " "


def test_batching_and_max_queries(ds):
    one = evaluate(good(), ds, ["AP", "nDCG@10"], progress=False)
    three = evaluate(good(), ds, ["AP", "nDCG@10"], batch_size=3, progress=False)
    assert {m: three.per_query["good"][m] for m in ("AP", "nDCG@10")} == \
        {m: one.per_query["good"][m] for m in ("AP", "nDCG@10")}
    few = evaluate(good(), ds, ["AP"], max_queries=2, progress=False)
    assert list(few.per_query["good"]["AP"]) == ["q1", "q2"] and few.queries["ir"] == 2


def test_json_round_trip_and_save(ds, tmp_path):
    res = evaluate([good(), bad()], ds, ["RR@10", "AP"], significance="ttest", progress=False,
                   save=tmp_path / "out" / "result.json")
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["summary"]["good"]["AP"] == pytest.approx(res.summary["good"]["AP"])
    assert "retriever.evaltest" in data["info"]["pipelines"]["good"]
    back = EvalResult.load(tmp_path / "out" / "result.json")
    assert back.summary == json.loads(res.to_json())["summary"] and back.table() == res.table()
    res.save(tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text().startswith("| pipeline | RR@10 | AP |")


def test_unnamed_pipelines_get_distinct_names(ds):
    res = evaluate([ToyOverlapRetriever(), Pipeline([ToyOverlapRetriever(k=2)])], ds, ["AP"],
                   significance=None, progress=False)
    assert res.pipelines == ["retriever.evaltest", "retriever.evaltest (2)"] and res.significance == {}


def test_dataset_by_name_and_by_folder(ds, tmp_path):
    folder = ds.save(tmp_path / "toyset")
    res = evaluate(good(), str(folder), ["AP"], progress=False)
    assert res.dataset == "toyset" and res.queries["ir"] == 5
    res = evaluate(Pipeline([ToyOverlapRetriever(), OverlapReranker()], name="rr"), "squad-sample", ["RR@10"],
                   max_queries=3, progress=False)
    assert res.dataset == "squad-sample" and len(res.per_query["rr"]["RR@10"]) == 3


def test_errors(ds):
    with pytest.raises(ConfigError, match="Did you mean 'good'"):
        evaluate([good(), bad()], ds, ["AP"], baseline="goood", progress=False)
    with pytest.raises(ConfigError, match="generator"):
        evaluate(good(), ds, ["EM"], progress=False)
    with pytest.raises(ConfigError, match="significance"):
        evaluate(good(), ds, ["AP"], significance="wilcoxon", progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(good(), ds, ["AP"], batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(good(), ds, ["nDCG@ten"], progress=False)
    with pytest.raises(ConfigError, match="alpha_nDCG@10"):  # parses, but no installed provider computes it
        evaluate(Pipeline([_Exploding()]), ds, ["alpha_nDCG@10"], progress=False)
    no_qrels = Dataset("plain", list(CORPUS), list(QUERIES_))
    with pytest.raises(DataError, match="no qrels"):
        evaluate(good(), no_qrels, ["AP"], progress=False)
    with pytest.raises(DataError, match="no relevance judgements"):
        evaluate(good(), no_qrels, progress=False)
    with pytest.raises(ConfigError, match="no dataset given"):
        evaluate(good(), progress=False)


def test_dataset_and_metrics_from_the_pipeline_eval_section(ds, tmp_path):
    ds.save(tmp_path / "toyset")
    (tmp_path / "p.yaml").write_text(
        "version: 1\nname: fromyaml\npipeline:\n  - retriever.evaltest: {k: 3}\n"
        "eval:\n  dataset: toyset\n  metrics: [AP, P@1]\n")
    p = Pipeline.from_yaml(tmp_path / "p.yaml")
    res = evaluate(p, progress=False)
    assert res.dataset == "toyset" and res.metrics == ["AP", "P@1"] and res.pipelines == ["fromyaml"]
