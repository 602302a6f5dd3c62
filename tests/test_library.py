"""Embedding ragkit as a library: one loaded pipeline, many threads; incremental re-indexing."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from ragkit import Pipeline

REPO = Path(__file__).resolve().parents[1]


def _sample_pipeline(tmp_path: Path) -> Pipeline:
    text = (REPO / "pipelines" / "extractive.yaml").read_text()  # model-free
    text = text.replace("../data/", str(REPO / "data") + "/").replace("../.ragkit/indexes", str(tmp_path))
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return Pipeline.from_yaml(f)


def test_one_pipeline_many_threads(tmp_path):
    p = _sample_pipeline(tmp_path)
    p.build_index(progress=False)
    queries = [json.loads(x)["text"] for x in (REPO / "data/squad_sample/queries.jsonl").read_text().splitlines()[:40]]
    expected = [p.search(q) for q in queries]
    fresh = _sample_pipeline(tmp_path)  # not set up yet: threads race to load it
    results: list = [None] * len(queries)
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = fresh.search(queries[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [(a.text, a.citations, a.ranking.hits) for a in results] == \
           [(a.text, a.citations, a.ranking.hits) for a in expected]


BM25_ONLY = ("  - indexer.bm25: {path: idx}\n", "  - retriever.bm25: {index: idx, k: 5}\n")


def _folder_pipeline(tmp_path: Path, index: str = BM25_ONLY[0], query: str = BM25_ONLY[1]) -> tuple[Pipeline, Path]:
    """Three .txt files in docs/ and a pipeline over them with the given index and query stage lines."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, t in enumerate(["cats sit on mats", "dogs run in parks", "birds fly over trees"]):
        (docs / f"{i}.txt").write_text(t)
    f = tmp_path / "p.yaml"
    f.write_text(f"version: 1\ncorpus: {{path: docs}}\nindex:\n{index}pipeline:\n{query}")
    return Pipeline.from_yaml(f), docs


def test_reindex_changed_folder_processes_only_changes(tmp_path):
    p, docs = _folder_pipeline(tmp_path)
    first = p.build_index(progress=False)
    assert first["documents"] == 3
    again = p.build_index(progress=False)
    assert again["mode"] == "incremental" and again["unchanged"] == 3 and again["added"] == 0
    (docs / "1.txt").write_text("dogs swim in lakes")
    (docs / "3.txt").write_text("fish swim in the sea")
    (docs / "2.txt").unlink()
    upd = p.build_index(progress=False)
    assert (upd["added"], upd["changed"], upd["removed"], upd["unchanged"]) == (1, 1, 1, 1)
    fresh = Pipeline.from_yaml(tmp_path / "p.yaml")
    ids = {h.doc_id for h in fresh.search("swim dogs cats birds fish").hits}
    assert ids == {"0.txt", "1.txt", "3.txt"}
    assert fresh.search("parks run").hits == ()  # the old version of 1.txt is gone


def test_empty_corpus_is_an_error_and_keeps_old_index(tmp_path):
    import pytest

    from ragkit import StageInputError
    from ragkit.records import Document

    p, docs = _folder_pipeline(tmp_path)
    p.build_index(progress=False)
    before = sorted(x.name for x in (tmp_path / "idx").iterdir())
    with pytest.raises(StageInputError, match="empty corpus"):
        p.build_index([], progress=False)
    assert sorted(x.name for x in (tmp_path / "idx").iterdir()) == before
    assert p.build_index([Document("a", "zebras graze")], progress=False)["documents"] == 1


def test_pipeline_as_langchain_retriever_and_runnable(tmp_path):
    p, _ = _folder_pipeline(tmp_path)
    p.build_index(progress=False)
    docs = p.as_langchain_retriever().invoke("dogs parks")
    assert [d.metadata["doc_id"] for d in docs] == ["1.txt"]
    out = p.as_langchain_runnable().invoke({"question": "dogs parks"})
    assert [d.metadata["doc_id"] for d in out["documents"]] == ["1.txt"]


def test_incremental_dense_and_bm25_together(tmp_path):
    p, docs = _folder_pipeline(
        tmp_path, "  - indexer.bm25: {path: bm}\n  - indexer.dense: {path: de, model: hash}\n",
        "  - fusion.rrf:\n      retrievers:\n        - retriever.bm25: {index: bm}\n"
        "        - retriever.dense: {index: de}\n")
    f = tmp_path / "p.yaml"
    p.build_index(progress=False)
    (docs / "1.txt").write_text("whales swim in oceans")
    upd = p.build_index(progress=False)
    assert upd["mode"] == "incremental" and (upd["changed"], upd["unchanged"]) == (1, 2)
    fresh = Pipeline.from_yaml(f)
    assert fresh.search("whales oceans").hits[0].doc_id == "1.txt"
    from ragkit.retrievers.dense import DenseRetriever

    from ragkit.records import Query

    (ranking,) = DenseRetriever(index=str(tmp_path / "de"), k=10, text=True)([Query("q", "whales")])
    assert sorted((h.doc_id, h.text) for h in ranking.hits) == [
        ("0.txt", "cats sit on mats"), ("1.txt", "whales swim in oceans"), ("2.txt", "birds fly over trees")]
