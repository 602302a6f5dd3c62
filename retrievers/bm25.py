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
With ``cluster:`` the shards are searched on a Dask cluster's workers instead, each loaded once per
worker, for an index larger than this machine's memory (:mod:`ragkit.shard_search`); same results.

After ``setup()`` the retriever only reads (memory-mapped) arrays, so one instance can serve
several threads at once.
"""
from __future__ import annotations

from typing import Any, Literal

from ragkit.artifacts import check_params, resolve_path
from ragkit.errors import IndexArtifactError
from ragkit.records import Hit, Query, Ranking
from ragkit.registry import register
from ragkit.shard_search import check_remote
from ragkit.stage import Retriever, param

from ragkit.indexers._tokenize import Tokenizer, TokenizerConfig
from ragkit.indexers.bm25 import KEY as INDEX_KEY
from ragkit.indexers._bm25_shards import load_bm25
from ragkit.indexers.bm25 import BM25Index, Method, validate_pattern

_SCORING = ("k1", "b", "delta", "method")
_TOKENIZER = ("lowercase", "stopwords", "stemmer", "token_pattern")


@register("retriever.bm25")
class BM25Retriever(Retriever):
    """BM25 retrieval from an indexer.bm25 folder (bm25s score matrix, memory-mapped)."""

    _remote = None

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
    cluster: str | None = param(None, help="search a sharded index's shards on the workers of this Dask cluster "
                                           "(tcp://HOST:PORT, local[:N]); each worker loads its shards once and "
                                           "must read the index folder at the same path")

    def validate(self) -> None:
        if self.token_pattern is not None:
            validate_pattern(self.key, self.token_pattern)
        check_remote(self.cluster, self.key)


    def wanted_params(self) -> dict[str, Any]:
        """The parameters given explicitly, in the index's params.json layout."""
        out: dict[str, Any] = {n: getattr(self, n) for n in _SCORING if getattr(self, n) is not None}
        tok = {n: getattr(self, n) for n in _TOKENIZER if getattr(self, n) is not None}
        return out | {f"tokenizer.{n}": v for n, v in tok.items()}

    def _setup(self) -> None:
        folder = resolve_path(self.index, self._base_dir)
        self._remote = None
        if self.cluster:
            return self._setup_remote(folder)
        idx = load_bm25(folder, mmap=self.mmap, expect_shards=self.shards)
        stored = {n: idx.params.get(n) for n in _SCORING}
        stored |= {f"tokenizer.{n}": v for n, v in idx.params.get("tokenizer", {}).items()}
        check_params(folder, stored, self.wanted_params())
        if self.text and not idx.params.get("store_text", True):
            raise IndexArtifactError(f"{folder}: the index was built with store_text: false, so `text: true` "
                                     f"has no texts to give; rebuild it with store_text: true or drop text: true.")
        self._idx = idx
        self._tok = Tokenizer(idx.tokenizer_config)

    def _setup_remote(self, folder: Any) -> None:
        """Shards searched on the cluster's workers; here only the vocabulary and the manifest."""
        from ragkit.artifacts import is_sharded
        from ragkit.indexers._bm25_shards import load_head
        from ragkit.shard_search import ShardWorkers

        if not is_sharded(folder):
            raise IndexArtifactError(f"{folder}: 'cluster' searches the shards of a sharded index on workers; this "
                                     f"is a single index. Build it with `ragkit index --cluster ...` or drop 'cluster'.")
        params, vocab, manifest = load_head(folder, self.shards)
        stored = {n: params.get(n) for n in _SCORING}
        stored |= {f"tokenizer.{n}": v for n, v in params.get("tokenizer", {}).items()}
        check_params(folder, stored, self.wanted_params())
        if self.text and not params.get("store_text", True):
            raise IndexArtifactError(f"{folder}: the index was built with store_text: false, so `text: true` "
                                     f"has no texts to give; rebuild it with store_text: true or drop text: true.")
        self._vocab_ids = {t: i for i, t in enumerate(vocab)}
        self._tok = Tokenizer(TokenizerConfig.from_dict(params["tokenizer"]))
        self._remote = ShardWorkers(self.cluster, folder, "bm25", manifest, mmap=self.mmap)

    def _run_remote(self, batch: list[Query]) -> list[Ranking]:
        terms = [self._tok.encode_query(q.text or "", self._vocab_ids) for q in batch]
        merged = self._remote.search(terms, self.k, with_text=self.text)
        return [Ranking(q, tuple(Hit(q.qid, d, s, rank, t if self.text else None, c,
                                     {"title": ti} if self.text and ti else {})
                                 for rank, (s, d, c, t, ti) in enumerate(m)))
                for q, m in zip(batch, merged)]

    def search_ids(self, text: str) -> tuple[Any, Any]:
        """Rows and scores of one query text (after setup)."""
        idx: BM25Index = self._idx
        return idx.search(self._tok.encode_query(text, idx.vocab_ids), self.k)

    def run(self, batch: list[Query]) -> list[Ranking]:
        if self._remote is not None:
            return self._run_remote(batch)
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
