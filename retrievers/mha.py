"""``retriever.mha``: Multi-Head RAG retrieval (Besta et al. 2024) by importance-weighted head voting.

The query is embedded like the chunks (same model, layer, pooling; one vector per head). Each head
i retrieves its top-c chunks from its own index; the chunk at rank p (p = 0 for the best) of head
i receives s_i * 2^(-p) votes, where s_i = a_i * b_i is the head's importance; chunks are ranked by
their summed votes and the top k returned (hit score = summed votes).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from ragkit.artifacts import DocStore, artifact_errors, read_params, resolve_path
from ragkit.errors import IndexArtifactError
from ragkit.records import Hit, Query, Ranking
from ragkit.registry import register
from ragkit.stage import Retriever, param

INDEX_KEY = "indexer.mha"


def vote(head_rows: Sequence[Sequence[int]], importance: Sequence[float]) -> dict[int, float]:
    """MRAG voting: head i's rank-p item gets importance[i] * 2**-p; returns item -> summed votes."""
    votes: dict[int, float] = {}
    for rows, s_i in zip(head_rows, importance):
        p = 0
        for r in rows:
            if r < 0:
                continue
            votes[int(r)] = votes.get(int(r), 0.0) + float(s_i) * 2.0 ** (-p)
            p += 1
    return votes


@register("retriever.mha")
class MHARetriever(Retriever):
    """Multi-Head RAG: per-head search over an `indexer.mha` index, importance-weighted voting."""

    index: str = param(help="index folder written by indexer.mha")
    k: int = param(10, ge=1, help="chunks returned per query")
    c: int = param(0, ge=0, help="chunks each head retrieves before voting (0 = same as k)")
    text: bool = param(False, help="put the passage text on each hit")
    importance: Literal["paper", "uniform"] = param("paper", help="head weights: paper (s_i = a_i*b_i) or uniform (1)")
    device: Literal["cpu", "cuda"] = param("cpu", help="torch device for the query forward pass")
    batch_size: int = param(16, ge=1, help="queries per forward pass")



    def _setup(self) -> None:
        from ragkit._deps import require
        from ragkit.indexers._mha_embed import MultiHeadEmbedder
        from ragkit.indexers.mha import head_file

        faiss = require("faiss", "multi-head retrieval")
        base = self._base_dir
        folder = resolve_path(self.index, base)
        p = read_params(folder, expect_key=INDEX_KEY, required=("model", "model_id", "layer", "pooling", "max_length",
                                                                "num_heads", "head_dim", "count", "importance"))
        with artifact_errors(folder / "params.json", "multi-head index parameters"):
            name = p["model_id"][5:] if p["model_id"].startswith("path:") else p["model"]
            layer, pooling, max_length = int(p["layer"]), str(p["pooling"]), int(p["max_length"])
            s = np.asarray(p["importance"]["s"], dtype=np.float64)
            if s.shape != (int(p["num_heads"]),) or not np.all(np.isfinite(s)):
                raise ValueError(f"{len(s)} head importance scores for {p['num_heads']} heads")
        emb = MultiHeadEmbedder(name, layer=layer, pooling=pooling, device=self.device,
                                batch_size=self.batch_size, max_length=max_length, base_dir=base)
        if emb.model_id != p["model_id"]:
            raise IndexArtifactError(f"{folder}: index was built with model {p['model_id']!r}, but {name!r} "
                                     f"resolves to {emb.model_id!r} here. Rebuild the index.")
        if (emb.num_heads, emb.head_dim) != (int(p["num_heads"]), int(p["head_dim"])):
            raise IndexArtifactError(f"{folder}: index has {p['num_heads']} heads x {p['head_dim']} dims, the "
                                     f"model gives {emb.num_heads} x {emb.head_dim}. Rebuild the index.")
        heads = []
        for i in range(emb.num_heads):
            f = folder / head_file(i)
            try:
                idx = faiss.read_index(str(f))
            except (RuntimeError, MemoryError):
                raise IndexArtifactError(f"{f}: missing or corrupt head index; rebuild the index.") from None
            if idx.d != emb.head_dim or idx.ntotal != int(p["count"]):
                raise IndexArtifactError(f"{f}: head index has {idx.ntotal} x {idx.d}, expected "
                                         f"{p['count']} x {emb.head_dim}; rebuild the index.")
            heads.append(idx)
        self._p = p
        self._emb = emb
        self._heads = heads
        self._s = s if self.importance == "paper" else np.ones_like(s)
        store = DocStore.load(folder)
        if len(store) != int(p["count"]):
            raise IndexArtifactError(f"{folder}: document store holds {len(store)} passages, the head indexes "
                                     f"{p['count']}; rebuild the index.")
        self._store = store

    def head_rankings(self, batch: list[Query], c: int) -> list[list[np.ndarray]]:
        """Per query, per head: the top-c docstore rows."""
        from ragkit._deps import require

        faiss = require("faiss", "multi-head retrieval")
        p, emb = self._p, self._emb
        q = emb.encode([p.get("query_prefix", "") + x.text for x in batch])  # [B, H, d]
        out: list[list[np.ndarray]] = [[] for _ in batch]
        for i, idx in enumerate(self._heads):
            x = np.ascontiguousarray(q[:, i, :], dtype=np.float32)
            if p.get("normalize", True):
                faiss.normalize_L2(x)
            _, rows = idx.search(x, min(c, idx.ntotal))
            for j in range(len(batch)):
                out[j].append(rows[j])
        return out

    def run(self, batch: list[Query]) -> list[Ranking]:
        store: DocStore = self._store
        if len(store) == 0:
            return [Ranking(q) for q in batch]
        c = self.c or self.k
        out = []
        for q, per_head in zip(batch, self.head_rankings(batch, c)):
            votes = vote(per_head, self._s)
            top = sorted(votes.items(), key=lambda t: (-t[1], store.doc_ids[t[0]], store.ids[t[0]]))[: self.k]
            hits = []
            for r, v in top:
                title = store.title(r)
                hits.append(Hit(q.qid, store.doc_ids[r], v, 0, store.text(r) if self.text else None, store.ids[r],
                                {"title": title} if title else {}))
            out.append(Ranking(q, tuple(hits)))
        return out
