"""``retriever.langchain``: any langchain-core ``VectorStore`` or ``BaseRetriever`` as a ragkit retriever.

Many users keep their vectors in a database that LangChain already talks to (Qdrant, pgvector,
Chroma, Elasticsearch, ...). The store object cannot live in a YAML file, so, as for
``generator.langchain``, it is registered from Python under a name and the stage holds that name::

    from ragkit.retrievers.langchain import LangChainRetriever, register_store, add_documents
    store = QdrantVectorStore.from_texts([...], embedding, location=":memory:", collection_name="c")
    register_store("qdrant", store)
    pipe = LangChainRetriever(store="qdrant", k=10) >> ...          # YAML: retriever.langchain: {store: qdrant}

Each LangChain document becomes a :class:`~ragkit.records.Hit`:

- ``doc_id`` from ``metadata[id_field]`` (default ``doc_id``), else the document's ``id``; a document
  with neither is an error naming the query, the rank and the metadata fields it has;
- ``chunk_id`` from ``metadata[chunk_field]`` (default ``chunk_id``) when present;
- ``score``: a ``VectorStore`` is searched with ``similarity_search_with_score`` and its score kept
  (``score: similarity``, higher is better, e.g. cosine for InMemoryVectorStore and Qdrant); stores whose
  score is a distance take ``score: distance`` (negated so that higher is better), and
  ``score: relevance`` asks the store for its normalised relevance (0..1). A ``BaseRetriever`` gives no
  score: ``metadata["score"]`` is used when it is a number, otherwise ``1 / (1 + rank)`` keeps its order.
- ``text: true`` puts ``page_content`` on the hit (and ``metadata["title"]`` in its meta).

:func:`add_documents` loads ragkit documents or chunks into a store with the metadata above, and
:class:`RagkitEmbeddings` exposes ragkit's dense encoder (``minilm``, ``hash``, any local
sentence-transformers folder) as LangChain ``Embeddings``, so a store can be compared with
``retriever.dense`` on the same vectors (``benchmarks/bench_scale.py``).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Literal

from ragkit._deps import require
from ragkit._named import NamedObjects
from ragkit.errors import ConfigError, StageInputError
from ragkit.records import Chunk, Document, Hit, Query, Ranking, as_chunks
from ragkit.registry import register
from ragkit.stage import Retriever, param

_STORES = NamedObjects("LangChain store", "ragkit.retrievers.langchain.register_store(name, store)")


def register_store(name: str, store: Any) -> Any:
    """Make a langchain-core VectorStore or BaseRetriever available to ``retriever.langchain`` as ``name``."""
    require("langchain_core", "retriever.langchain")
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.vectorstores import VectorStore

    if not isinstance(store, (VectorStore, BaseRetriever)):
        raise ConfigError(f"register_store('{name}'): expected a langchain-core VectorStore or BaseRetriever, got "
                          f"{type(store).__name__}.")
    return _STORES.add(name, store)


def registered_stores() -> list[str]:
    return _STORES.names()


def add_documents(store: Any, records: Iterable[Document | Chunk], *, batch_size: int = 256) -> int:
    """Add ragkit documents/chunks to a VectorStore with ``doc_id``, ``chunk_id`` (and ``title``) metadata."""
    chunks = as_chunks(list(records))
    for i in range(0, len(chunks), batch_size):
        part = chunks[i:i + batch_size]
        metas = [{"doc_id": c.doc_id, "chunk_id": c.chunk_id,
                  **({"title": c.meta["title"]} if (c.meta or {}).get("title") else {})} for c in part]
        store.add_texts([c.text for c in part], metadatas=metas)
    return len(chunks)


class RagkitEmbeddings:
    """ragkit's dense encoder as LangChain ``Embeddings`` (built lazily so the class needs langchain only on use)."""

    def __new__(cls, model: str = "minilm", **encoder_kw: Any) -> Any:
        require("langchain_core", "RagkitEmbeddings")
        from langchain_core.embeddings import Embeddings

        from ragkit.indexers._encoder import Encoder

        class _Emb(Embeddings):
            def __init__(self) -> None:
                self.encoder = Encoder(model, **encoder_kw)

            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return self.encoder.encode_documents(texts).tolist()

            def embed_query(self, text: str) -> list[float]:
                return self.encoder.encode_queries([text])[0].tolist()

        return _Emb()


@register("retriever.langchain")
class LangChainRetriever(Retriever):
    """Retrieve with a langchain-core VectorStore or BaseRetriever registered from Python."""

    store: str = param(help="name given to register_store() for the LangChain vector store / retriever")
    k: int = param(10, ge=1, help="hits per query (VectorStore: k; a BaseRetriever's own k applies, cut to this)")
    text: bool = param(False, help="put page_content on each hit (and metadata title in its meta)")
    id_field: str = param("doc_id", help="metadata field holding the document id (else the document's id)")
    chunk_field: str = param("chunk_id", help="metadata field holding the chunk id (optional)")
    score: Literal["similarity", "distance", "relevance"] = param(
        "similarity", help="VectorStore scores: similarity (higher is better), distance (lower is better, "
                           "negated), relevance (the store's 0..1 relevance)")
    max_concurrency: int = param(4, ge=1, help="queries searched in parallel")

    _store = None   # the registered LangChain store, set in _setup()

    def _setup(self) -> None:
        require("langchain_core", "retriever.langchain")
        self._store = _STORES.lookup(self.store, self.key, "store")

    def _search(self, q: Query) -> list[tuple[Any, float | None]]:
        from langchain_core.vectorstores import VectorStore

        store = self._store
        if isinstance(store, VectorStore):
            if self.score == "relevance":
                return list(store.similarity_search_with_relevance_scores(q.text, k=self.k))
            pairs = store.similarity_search_with_score(q.text, k=self.k)
            return [(d, -float(s) if self.score == "distance" else float(s)) for d, s in pairs]
        return [(d, None) for d in store.invoke(q.text)[: self.k]]

    def _ranking(self, q: Query, found: list[tuple[Any, float | None]]) -> Ranking:
        hits = []
        for rank, (d, s) in enumerate(found):
            meta = d.metadata or {}
            doc_id = meta.get(self.id_field, getattr(d, "id", None))
            if doc_id is None or doc_id == "":
                raise StageInputError(f"'{self.key}': store {self.store!r} returned, for query {q.qid!r} at rank "
                                      f"{rank + 1}, a document without metadata '{self.id_field}' and without an id "
                                      f"(metadata fields: {', '.join(map(str, meta)) or 'none'}). Set id_field, or "
                                      f"add the documents with ragkit.retrievers.langchain.add_documents.")
            if s is None:
                ms = meta.get("score")
                s = float(ms) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else 1.0 / (1 + rank)
            chunk = meta.get(self.chunk_field)
            title = meta.get("title")
            hits.append(Hit(q.qid, str(doc_id), float(s), rank, d.page_content if self.text else None,
                            str(chunk) if chunk is not None else None, {"title": title} if title else {}))
        return Ranking(q, tuple(hits))

    def run(self, batch: list[Query]) -> list[Ranking]:
        if len(batch) <= 1 or self.max_concurrency == 1:
            return [self._ranking(q, self._search(q)) for q in batch]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batch))) as pool:
            found = list(pool.map(self._search, batch))
        return [self._ranking(q, f) for q, f in zip(batch, found)]
