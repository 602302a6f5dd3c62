"""BM25 retrieval (``retriever.bm25``) over an ``indexer.bm25`` folder.

The index stores bm25s' precomputed score matrix (see :mod:`ragkit.indexers.bm25` for the
variants and the exact formulas). A query is tokenized with the index's own tokenizer, its
known terms' columns are summed, and the top ``k`` indexed units come back as hits with
``doc_id`` (the source document) and ``chunk_id``. Ties are broken by ``doc_id`` (then
``chunk_id``), also when choosing which tied units make the cut at rank ``k`` -- bm25s'
own ``retrieve`` picks among those arbitrarily. Only units holding a query term with a positive
weight are hits (bm25s' ``retrieve`` fills ``k`` with zero-score documents): a query with no
known terms gets an empty ranking, and ``k`` larger than the corpus is fine.

Scoring parameters (``k1``, ``b``, ``delta``, ``method``) and tokenizer options default to
``None``, meaning "as the index was built"; any value given must equal the index's, or
loading fails with an IndexArtifactError naming every difference.

A sharded index (``ragkit index --cluster``, see :mod:`ragkit.indexers._bm25_shards`) opens the
same way: every shard is searched and the top ``k`` merged, exactly as one index ranks and scores.

After ``setup()`` the retriever only reads (memory-mapped) arrays, so one instance can serve
several threads at once.
"""
from __future__ import annotations

from typing import Any, Literal

from ragkit.artifacts import check_params, resolve_path
from ragkit.errors import IndexArtifactError
from ragkit.records import Hit, Query, Ranking
from ragkit.registry import register
from ragkit.stage import Retriever, param

from ragkit.indexers._tokenize import Tokenizer
from ragkit.indexers.bm25 import KEY as INDEX_KEY
from ragkit.indexers._bm25_shards import load_bm25
from ragkit.indexers.bm25 import BM25Index, Method, validate_pattern

_SCORING = ("k1", "b", "delta", "method")
_TOKENIZER = ("lowercase", "stopwords", "stemmer", "token_pattern")


@register("retriever.bm25")
class BM25Retriever(Retriever):
    """BM25 retrieval from an indexer.bm25 folder (bm25s score matrix, memory-mapped)."""

    index: str = param(help="folder written by indexer.bm25")
    k: int = param(100, ge=1, help="hits returned per query")
    text: bool = param(False, help="put each passage's text (and title in meta) on its hit")
    mmap: bool = param(True, help="memory-map the index arrays instead of reading them into RAM")
    k1: float | None = param(None, ge=0, help="must equal the index's k1 (default: as built)")
    b: float | None = param(None, ge=0, le=1, help="must equal the index's b (default: as built)")
    delta: float | None = param(None, ge=0, help="must equal the index's delta (default: as built)")
    method: Method | None = param(None, help="must equal the index's BM25 variant (default: as built)")
    lowercase: bool | None = param(None, help="must equal the index's tokenizer setting (default: as built)")
    stopwords: Literal["en", "en_plus", "none"] | None = param(None, help="must equal the index's (default: as built)")
    stemmer: Literal["porter", "english", "none"] | None = param(None, help="must equal the index's "
                                                                             "(default: as built)")
    token_pattern: str | None = param(None, help="must equal the index's (default: as built)")
    shards: int | None = param(None, ge=1, help="expected shard count of the index (default: whatever it was "
                                               "built with; a different count is an error)")

    def validate(self) -> None:
        if self.token_pattern is not None:
            validate_pattern(self.key, self.token_pattern)


    def wanted_params(self) -> dict[str, Any]:
        """The parameters given explicitly, in the index's params.json layout."""
        out: dict[str, Any] = {n: getattr(self, n) for n in _SCORING if getattr(self, n) is not None}
        tok = {n: getattr(self, n) for n in _TOKENIZER if getattr(self, n) is not None}
        return out | {f"tokenizer.{n}": v for n, v in tok.items()}

    def _setup(self) -> None:
        folder = resolve_path(self.index, self._base_dir)
        idx = load_bm25(folder, mmap=self.mmap, expect_shards=self.shards)
        stored = {n: idx.params.get(n) for n in _SCORING}
        stored |= {f"tokenizer.{n}": v for n, v in idx.params.get("tokenizer", {}).items()}
        check_params(folder, stored, self.wanted_params())
        if self.text and not idx.params.get("store_text", True):
            raise IndexArtifactError(f"{folder}: the index was built with store_text: false, so `text: true` "
                                     f"has no texts to give; rebuild it with store_text: true or drop text: true.")
        self._idx = idx
        self._tok = Tokenizer(idx.tokenizer_config)

    def search_ids(self, text: str) -> tuple[Any, Any]:
        """Rows and scores of one query text (after setup)."""
        idx: BM25Index = self._idx
        return idx.search(self._tok.encode_query(text, idx.vocab_ids), self.k)

    def run(self, batch: list[Query]) -> list[Ranking]:
        idx: BM25Index = self._idx
        tok: Tokenizer = self._tok
        vocab, ids, doc_ids, k, with_text = idx.vocab_ids, idx.ids, idx.doc_ids, self.k, self.text
        out = []
        for q in batch:
            rows, scores = idx.search(tok.encode_query(q.text or "", vocab), k)
            qid = q.qid
            if with_text:
                hits = []
                for rank, (r, s) in enumerate(zip(rows.tolist(), scores.tolist())):
                    title = idx.title(r)
                    hits.append(Hit(qid, doc_ids[r], s, rank, idx.text(r), ids[r], {"title": title} if title else {}))
            else:
                hits = [Hit(qid, doc_ids[r], s, rank, None, ids[r])
                        for rank, (r, s) in enumerate(zip(rows.tolist(), scores.tolist()))]
            out.append(Ranking(q, tuple(hits)))
        return out
