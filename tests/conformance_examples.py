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


def _fusion(name: str, tmp: Path):
    from ragkit.retrievers import fusion
    from ragkit.retrievers.bm25 import BM25Retriever

    idx = _bm25_index(tmp)
    return getattr(fusion, name)(retrievers=[BM25Retriever(index=idx, k=3, text=True),
                                            BM25Retriever(index=idx, k=2, text=True)], k=3)
