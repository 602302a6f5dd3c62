"""retriever.langchain: LangChain vector stores / retrievers as ragkit retrievers, evaluated next to retriever.dense."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from ragkit.errors import ConfigError, StageInputError  # noqa: E402
from ragkit.eval import evaluate  # noqa: E402
from ragkit.eval.datasets import load_dataset  # noqa: E402
from ragkit.indexers.dense import DenseIndexer  # noqa: E402
from ragkit.pipeline import Pipeline  # noqa: E402
from ragkit.records import Query  # noqa: E402
from ragkit.retrievers.dense import DenseRetriever  # noqa: E402
from ragkit.retrievers.langchain import LangChainRetriever, RagkitEmbeddings, add_documents, register_store  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "squad_sample"


@pytest.fixture(scope="module")
def sample():
    ds = load_dataset(str(DATA))
    return ds, [d for d in ds.corpus if d.text.strip()]


def _compare_with_dense(tmp_path, sample, store, name):
    ds, docs = sample
    add_documents(store, docs)
    register_store(name, store)
    DenseIndexer(path=str(tmp_path / "dense"), model="hash")(docs)
    dense = Pipeline([DenseRetriever(index=str(tmp_path / "dense"), k=10)], name="dense")
    lc = Pipeline([LangChainRetriever(store=name, k=10)], name=name)
    a, b = dense.run(ds.queries[:20]), lc.run(ds.queries[:20])
    for x, y in zip(a, b):  # same vectors, same cosine: same scores rank by rank, same units above ties
        assert len(x.hits) == len(y.hits) == 10
        for hx, hy in zip(x.hits, y.hits):
            assert hx.score == pytest.approx(hy.score, abs=1e-5)
        cut = x.hits[-1].score + 1e-5
        assert [h.doc_id for h in x.hits if h.score > cut] == [h.doc_id for h in y.hits if h.score > cut]
    res = evaluate([dense, lc], ds, ["nDCG@10", "R@10"], significance=None, progress=False, max_queries=60)
    assert res.summary[name]["nDCG@10"] == pytest.approx(res.summary["dense"]["nDCG@10"], abs=0.01)
    return res


def test_in_memory_vector_store_matches_dense(tmp_path, sample):
    _compare_with_dense(tmp_path, sample, InMemoryVectorStore(RagkitEmbeddings("hash")), "lc-memory")


@pytest.mark.slow
def test_qdrant_local_mode_matches_dense(tmp_path, sample):
    pytest.importorskip("langchain_qdrant")
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient
    from qdrant_client.http.models import Distance, VectorParams

    emb = RagkitEmbeddings("hash")
    client = QdrantClient(path=str(tmp_path / "qdrant"))  # embedded local mode: no server, no network
    client.create_collection("sample", vectors_config=VectorParams(size=len(emb.embed_query("x")),
                                                                   distance=Distance.COSINE))
    store = QdrantVectorStore(client=client, collection_name="sample", embedding=emb)
    try:
        _compare_with_dense(tmp_path, sample, store, "lc-qdrant")
    finally:
        client.close()


def test_base_retriever_text_titles_and_rank_scores(sample):
    _, docs = sample
    store = InMemoryVectorStore(RagkitEmbeddings("hash"))
    add_documents(store, docs[:30])
    register_store("lc-ret", store.as_retriever(search_kwargs={"k": 4}))
    r = Pipeline([LangChainRetriever(store="lc-ret", k=3, text=True)]).search(docs[5].text)
    assert len(r.hits) == 3
    assert r.hits[0].doc_id == docs[5].doc_id and r.hits[0].text == docs[5].text
    assert [h.score for h in r.hits] == [1.0, 0.5, pytest.approx(1 / 3)]  # no store score: 1/(1+rank)


def test_errors(sample):
    with pytest.raises(ConfigError, match="expected a langchain-core VectorStore or BaseRetriever"):
        register_store("bad", object())
    with pytest.raises(ConfigError, match="no LangChain store is registered under that name"):
        Pipeline([LangChainRetriever(store="nope")]).setup()
    store = InMemoryVectorStore(RagkitEmbeddings("hash"))
    store.add_documents([LCDocument(page_content="some text here", metadata={"source": "x"})])
    store.store[next(iter(store.store))]["id"] = None  # a store giving documents without ids
    register_store("no-ids", store)
    with pytest.raises(StageInputError, match=r"without metadata 'doc_id' and without an id \(metadata fields: source\)"):
        Pipeline([LangChainRetriever(store="no-ids")]).run([Query("q1", "text")])
    # with id_field pointing at the field it has, it works
    r = Pipeline([LangChainRetriever(store="no-ids", id_field="source")]).run([Query("q1", "text")])
    assert r[0].hits[0].doc_id == "x"
