"""One small working example (stage, input batch) per registered stage, for the conformance test.

Every key in the registry must have an entry here: a new stage without one fails the
conformance test until it is added.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ragkit.records import Chunk, Document, Hit, Query, Ranking

DOCS = [
    Document("d1", "The cat sat on the mat. It was a sunny day.", {"title": "Cats"}),
    Document("d2", "Dogs chase cats in the park. The park is large.", {"title": "Dogs"}),
    Document("d3", "A mat is a flat piece of fabric used on floors.", {"title": "Mats"}),
    Document("d4", "Parks have trees, grass and benches for visitors.", {"title": "Parks"}),
]
QUERIES = [Query("q1", "cat on the mat"), Query("q2", "dogs in the park")]


def rankings() -> list[Ranking]:
    out = []
    for q in QUERIES:
        hits = tuple(Hit(q.qid, d.doc_id, float(len(d.text) % 7), 0, d.text, d.doc_id, {"title": d.title}) for d in DOCS)
        out.append(Ranking(q, hits))
    return out


def chunks() -> list[Chunk]:
    return [Chunk(d.doc_id, d.doc_id, d.text, 0, len(d.text), d.meta) for d in DOCS]


def _bm25_index(tmp: Path) -> str:
    from ragkit.indexers.bm25 import BM25Indexer

    path = str(tmp / "bm25")
    BM25Indexer(path=path)(chunks())
    return path


def _chunker(name: str, **kw):
    from ragkit.indexers import chunkers

    return getattr(chunkers, name)(**kw)


EXAMPLES: dict[str, Callable[[Path], tuple]] = {
    "chunker.fixed": lambda tmp: (_chunker("FixedChunker", size=4, overlap=1), DOCS),
    "chunker.sentence": lambda tmp: (_chunker("SentenceChunker", max_tokens=8, overlap_sentences=1), DOCS),
    "chunker.recursive": lambda tmp: (_chunker("RecursiveChunker", chunk_size=24, chunk_overlap=6), DOCS),
    "ranking.cutoff": lambda tmp: (__import__("ragkit.stages_core").stages_core.Cutoff(k=2), rankings()),
    "reranker.overlap": lambda tmp: (__import__("ragkit.testing").testing.OverlapReranker(), rankings()),
    "generator.echo": lambda tmp: (__import__("ragkit.testing").testing.EchoGenerator(), rankings()),
    "generator.extractive": lambda tmp: (
        __import__("ragkit.generators.extractive").generators.extractive.ExtractiveGenerator(), rankings()),
    "indexer.bm25": lambda tmp: (__import__("ragkit.indexers.bm25").indexers.bm25.BM25Indexer(path=str(tmp / "i")),
                                 chunks()),
    "retriever.bm25": lambda tmp: (
        __import__("ragkit.retrievers.bm25").retrievers.bm25.BM25Retriever(index=_bm25_index(tmp), k=3, text=True),
        QUERIES),
    "fusion.rrf": lambda tmp: (_fusion("RRFFusion", tmp), QUERIES),
    "fusion.weighted": lambda tmp: (_fusion("WeightedFusion", tmp), QUERIES),
}


_MODELS: dict[str, Path] = {}


def tiny(kind: str, tmp: Path) -> str:
    """Tiny random models made once per test session (tests/_tiny_models.py, tests/_tinylm.py)."""
    if kind not in _MODELS:
        from . import _tiny_models, _tinylm

        folder = tmp / f"tiny-{kind}"
        make = {"bert": lambda: _tiny_models.tiny_bert(folder), "bert-encoder": lambda: _tiny_models.tiny_bert(folder, head=False),
                "t5": lambda: _tiny_models.tiny_t5(folder), "lm": lambda: _tinylm.make_tiny_lm(folder)}[kind]
        _MODELS[kind] = make()
    return str(_MODELS[kind])


def _dense_index(tmp: Path) -> str:
    from ragkit.indexers.dense import DenseIndexer

    path = str(tmp / "dense")
    DenseIndexer(path=path, model="hash")(chunks())
    return path


def _mha_index(tmp: Path) -> str:
    from ragkit.indexers.mha import MHAIndexer

    path = str(tmp / "mha")
    MHAIndexer(path=path, model=tiny("bert-encoder", tmp), sample=4)(chunks())
    return path


def _langchain(tmp: Path):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from ragkit.generators.langchain import LangChainGenerator, register_model

    register_model("conformance-fake", FakeListChatModel(responses=["Cats sit on mats [1]."] * 100))
    return LangChainGenerator(model="conformance-fake")


def _lc_store(tmp: Path):
    from langchain_core.vectorstores import InMemoryVectorStore

    from ragkit.retrievers.langchain import LangChainRetriever, RagkitEmbeddings, add_documents, register_store

    store = InMemoryVectorStore(RagkitEmbeddings("hash"))
    add_documents(store, DOCS)
    register_store("conformance-store", store)
    return LangChainRetriever(store="conformance-store", k=3, text=True)


def _stage(module: str, cls: str, **kw):
    import importlib

    return getattr(importlib.import_module(module), cls)(**kw)


EXAMPLES.update({
    "indexer.dense": lambda tmp: (_stage("ragkit.indexers.dense", "DenseIndexer", path=str(tmp / "d"), model="hash"),
                                  chunks()),
    "retriever.dense": lambda tmp: (_stage("ragkit.retrievers.dense", "DenseRetriever", index=_dense_index(tmp), k=3,
                                           text=True), QUERIES),
    "indexer.graph": lambda tmp: (_stage("ragkit.indexers.graph", "GraphIndexer", path=str(tmp / "g"), model="hash"),
                                  chunks()),
    "indexer.mha": lambda tmp: (_stage("ragkit.indexers.mha", "MHAIndexer", path=str(tmp / "m"),
                                       model=tiny("bert-encoder", tmp), sample=4), chunks()),
    "retriever.mha": lambda tmp: (_stage("ragkit.retrievers.mha", "MHARetriever", index=_mha_index(tmp), k=3,
                                         text=True), QUERIES),
    "reranker.cross_encoder": lambda tmp: (_stage("ragkit.rerankers.cross_encoder", "CrossEncoderReranker",
                                                  model=tiny("bert", tmp)), rankings()),
    "reranker.monot5": lambda tmp: (_stage("ragkit.rerankers.monot5", "MonoT5Reranker", model=tiny("t5", tmp)),
                                    rankings()),
    "reranker.duot5": lambda tmp: (_stage("ragkit.rerankers.duot5", "DuoT5Reranker", model=tiny("t5", tmp), top_n=3),
                                   rankings()),
    "reranker.llm": lambda tmp: (_stage("ragkit.rerankers.llm", "LLMReranker", model=tiny("lm", tmp), top_n=3,
                                        yes_token="one", no_token="two"), rankings()),
    "reranker.attention": lambda tmp: (_stage("ragkit.rerankers.attention", "AttentionReranker", model=tiny("lm", tmp),
                                              top_n=3, device="cpu"), rankings()),
    "generator.hf": lambda tmp: (_stage("ragkit.generators.hf", "HFGenerator", model=tiny("lm", tmp), max_new_tokens=4,
                                        device="cpu"), rankings()),
    "indexer.kv": lambda tmp: (_stage("ragkit.indexers.kv", "KVIndexer", model=tiny("lm", tmp), store=str(tmp / "kv"),
                                      device="cpu", max_rank=2), chunks()),
    "generator.langchain": lambda tmp: (_langchain(tmp), rankings()),
    "retriever.langchain": lambda tmp: (_lc_store(tmp), QUERIES),
})


def _fusion(name: str, tmp: Path):
    from ragkit.retrievers import fusion
    from ragkit.retrievers.bm25 import BM25Retriever

    idx = _bm25_index(tmp)
    return getattr(fusion, name)(retrievers=[BM25Retriever(index=idx, k=3, text=True),
                                            BM25Retriever(index=idx, k=2, text=True)], k=3)


def _graph(cls: str, module: str, tmp: Path, **kw):
    """A graph retriever over an indexer.graph folder (spaCy extractor, hash encoder) of DOCS."""
    from ragkit.indexers.graph import GraphIndexer

    path = tmp / "graph"
    if not path.exists():
        GraphIndexer(path=str(path), model="hash")(chunks())
    return _stage(module, cls, index=str(path), k=3, text=True, keywords="simple", **kw)


EXAMPLES.update({
    "retriever.lightrag": lambda tmp: (_graph("LightRAGRetriever", "ragkit.retrievers.lightrag", tmp, mode="hybrid"),
                                       QUERIES),
    "retriever.pathrag": lambda tmp: (_graph("PathRAGRetriever", "ragkit.retrievers.pathrag", tmp), QUERIES),
    "retriever.ppr": lambda tmp: (_graph("PPRRetriever", "ragkit.retrievers.ppr", tmp), QUERIES),
})
