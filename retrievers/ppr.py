"""``retriever.ppr``: HippoRAG 2-style personalized PageRank over an entity + passage graph.

Method (Gutiérrez et al., "From RAG to Memory: Non-Parametric Continual Learning for Large
Language Models" (HippoRAG 2), 2025):

- **Graph.** One node per entity and one per chunk (passage). Entity--entity edges are the index's
  relations (weight = relation weight); every entity is linked to the chunks it came from
  ("context" edges, weight 1) and, with ``title_links``, to the chunks whose title names it; entities whose vectors have cosine >= ``synonym_threshold`` are
  linked by synonymy edges (weight = cosine, at most ``synonym_neighbors`` per entity). Built once
  per loaded index.
- **Seeds.** (a) *Facts*: the query vector searches the relation table; each of the ``link_top_k``
  best relations (cosine >= ``cosine_threshold``) seeds its two end entities with its score divided
  by the number of chunks the entity occurs in (rarer entities weigh more), averaged over the facts
  naming it. (b) *Query entities*: the query's low-level keywords (spaCy entities / noun chunks, see
  ``retriever.lightrag``) each select their best entity; those add their cosine score, divided the
  same way (``seed``: ``facts``, ``entities`` or ``both``). (c) *Passages*: every chunk's dense score
  against the query, min-max normalised, times ``passage_node_weight``.
- **PPR.** ``p = (1 - damping) * s + damping * P^T p`` (``P`` row-normalised weights; ``damping`` is
  the probability of following an edge, 0.5 in HippoRAG 2), power iteration to 1e-10 (L1).
  Chunks are ranked by their PageRank mass.

With no entity or fact seed the ranking is the dense passage ranking, and the hit metadata says so.
"""
from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np

from ragkit.records import Query, Ranking
from ragkit.registry import register
from ragkit.stage import param

from ._graph import GraphRetrieverBase, entity_record, make_ranking, relation_record

_GRAPHS: dict[tuple, Any] = {}
_GLOCK = threading.Lock()


class PPRGraph:
    """The sparse transition matrix of the entity + passage graph of one GraphIndex."""

    def __init__(self, gi: Any, synonym_threshold: float, synonym_neighbors: int, title_links: bool = True) -> None:
        from scipy import sparse

        ents = list(gi.entities.keys) if len(gi.entities.keys) else sorted(gi.graph.nodes)
        chunks = list(gi.chunks.keys) if len(gi.chunks.keys) else sorted(gi.chunk_texts)
        self.ents, self.chunks = ents, chunks
        eidx = {n: i for i, n in enumerate(ents)}
        cidx = {c: len(ents) + i for i, c in enumerate(chunks)}
        self.eidx, self.cidx = eidx, cidx
        self.n = len(ents) + len(chunks)
        rows, cols, vals = [], [], []

        def add(i: int, j: int, w: float) -> None:
            rows.extend((i, j))
            cols.extend((j, i))
            vals.extend((w, w))

        g = gi.graph
        for a, b, attrs in g.edges(data=True):
            if a in eidx and b in eidx and a != b:
                add(eidx[a], eidx[b], float(attrs.get("weight", 1.0)))
        self.n_chunks_of = np.zeros(len(ents), dtype=np.float64)
        for n, attrs in g.nodes(data=True):
            if n not in eidx:
                continue
            src = [c for c in dict.fromkeys(attrs.get("source_ids", [])) if c in cidx]
            self.n_chunks_of[eidx[n]] = len(src)
            for c in src:
                add(eidx[n], cidx[c], 1.0)
        self.n_title_links = 0
        if title_links:   # a passage's title names the entity it is about (Wikipedia-style corpora)
            from ragkit.indexers._graph_store import normalize_name

            linked = {(r, c) for r, c in zip(rows, cols)}
            for cid, title in (getattr(gi, "chunk_titles", None) or {}).items():
                e = eidx.get(normalize_name(title))
                if e is not None and cid in cidx and (e, cidx[cid]) not in linked:
                    add(e, cidx[cid], 1.0)
                    self.n_chunks_of[e] += 1
                    self.n_title_links += 1
        self.n_synonyms = 0
        V = np.asarray(gi.entities.vectors, dtype=np.float32)
        if synonym_neighbors > 0 and len(ents) > 1 and V.shape[0] == len(ents):
            for start in range(0, len(ents), 1024):
                sims = V[start:start + 1024] @ V.T
                for r in range(sims.shape[0]):
                    i = start + r
                    sims[r, i] = -1.0
                    top = np.argpartition(-sims[r], min(synonym_neighbors, len(ents) - 1) - 1)[:synonym_neighbors]
                    for j in top:
                        s = float(sims[r, j])
                        if s >= synonym_threshold and j > i:
                            add(i, int(j), s)
                            self.n_synonyms += 1
        W = sparse.csr_matrix((vals, (rows, cols)), shape=(self.n, self.n), dtype=np.float64)
        W.sum_duplicates()
        self.W = W
        deg = np.asarray(W.sum(axis=1)).ravel()
        self.dangling = deg == 0
        inv = np.where(deg > 0, 1.0 / np.where(deg > 0, deg, 1.0), 0.0)
        self.PT = (sparse.diags(inv) @ W).T.tocsr()   # column-stochastic transpose of P

    def pagerank(self, seeds: np.ndarray, damping: float, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
        s = seeds / seeds.sum()
        p = s.copy()
        for _ in range(max_iter):
            nxt = damping * (self.PT @ p + p[self.dangling].sum() * s) + (1.0 - damping) * s
            if np.abs(nxt - p).sum() < tol:
                p = nxt
                break
            p = nxt
        return p


@register("retriever.ppr")
class PPRRetriever(GraphRetrieverBase):
    """HippoRAG 2-style personalized PageRank over entities and passages; passages ranked by PPR mass."""

    damping: float = param(0.5, gt=0, lt=1, help="probability of following an edge (HippoRAG 2: 0.5)")
    seed: Literal["facts", "entities", "both"] = param("both", help="entity seeds: from the query's best "
                                                                    "relations (facts), its keyword entities, or both")
    link_top_k: int = param(5, ge=1, help="facts (relations) that seed their end entities")
    passage_node_weight: float = param(0.05, ge=0, help="weight of the dense passage scores in the seed vector")
    cosine_threshold: float = param(0.2, ge=-1, le=1, help="lowest cosine similarity of a seeding match")
    synonym_threshold: float = param(0.8, ge=-1, le=1, help="cosine above which entities get a synonymy edge")
    synonym_neighbors: int = param(10, ge=0, help="most synonymy edges per entity (0 = none)")
    title_links: bool = param(True, help="link each passage to the entity its title names (if that entity exists)")
    context_entities: int = param(10, ge=0, help="top PPR entities listed in the graph context")

    def _setup(self) -> None:
        super()._setup()
        gi = self._gi
        key = (id(gi), self.synonym_threshold, self.synonym_neighbors, self.title_links)
        with _GLOCK:
            pg = _GRAPHS.get(key)
            if pg is None or pg[0] is not gi:
                pg = (gi, PPRGraph(gi, self.synonym_threshold, self.synonym_neighbors, self.title_links))
                _GRAPHS[key] = pg
        self._pg = pg[1]

    def retrieve(self, gi: Any, q: Query) -> Ranking:
        pg: PPRGraph = self._pg
        use_kw = self.seed in ("entities", "both")
        kw = self.keywords_of(q.text) if use_kw else None
        probes = list(kw.low) if kw is not None else []
        vecs = gi.encode([q.text] + probes)
        qv = vecs[0]
        n_ent = len(pg.ents)
        ent_sum = np.zeros(n_ent)
        ent_cnt = np.zeros(n_ent)
        facts: list[tuple[tuple[str, str], float]] = []

        def seed_entity(name: str, score: float) -> None:
            i = pg.eidx.get(name)
            if i is None:
                return
            ent_sum[i] += score / max(pg.n_chunks_of[i], 1.0)
            ent_cnt[i] += 1

        if self.seed in ("facts", "both"):
            facts = [(tuple(r), s) for r, s in gi.search_relations(qv[None], self.link_top_k)[0]
                     if s >= self.cosine_threshold]
            for (a, b), s in facts:
                seed_entity(a, s)
                seed_entity(b, s)
        matched: list[tuple[str, float]] = []
        if probes:
            for row in gi.search_entities(vecs[1:], 1):
                if row and row[0][1] >= self.cosine_threshold:
                    matched.append(row[0])
                    seed_entity(*row[0])
        ent_w = np.divide(ent_sum, ent_cnt, out=np.zeros_like(ent_sum), where=ent_cnt > 0)
        dense = np.asarray(gi.chunks.vectors, dtype=np.float32) @ np.asarray(qv, dtype=np.float32) \
            if len(pg.chunks) else np.zeros(0)
        fallback = None
        if ent_w.sum() <= 0:
            fallback = ("no query entity or fact matched the graph (cosine >= "
                        f"{self.cosine_threshold}); ranked passages by dense score")
            order = np.argsort(-dense, kind="stable")[: self.k]
            scored = [(pg.chunks[i], float(dense[i]), {"source": "vector"}) for i in order]
            top_ents: list[str] = []
        else:
            lo, hi = (float(dense.min()), float(dense.max())) if len(dense) else (0.0, 0.0)
            norm = (dense - lo) / (hi - lo) if hi > lo else np.ones_like(dense)
            seeds = np.concatenate([ent_w, norm * self.passage_node_weight])
            p = pg.pagerank(seeds, self.damping)
            pc = p[n_ent:]
            order = np.argsort(-pc, kind="stable")[: self.k]
            scored = [(pg.chunks[i], float(pc[i]), {"source": "ppr", "dense": float(dense[i])}) for i in order]
            top_ents = [pg.ents[i] for i in np.argsort(-p[:n_ent], kind="stable")[: self.context_entities]
                        if p[i] > 0]
        ctx = {"method": "ppr", "keywords": kw.as_dict() if kw is not None else {"low": [], "high": [], "source": "none"},
               "entities": [entity_record(gi, n) for n in top_ents],
               "relations": [relation_record(gi, a, b) for (a, b), _ in facts],
               "paths": [], "fallback": fallback,
               "seeds": {"facts": [[a, b, s] for (a, b), s in facts], "entities": [[n, s] for n, s in matched]}}
        return make_ranking(gi, q, scored, ctx, self.text, self.k)
