"""``retriever.pathrag``: PathRAG's flow-pruned relational paths over an ``indexer.graph`` index.

Method (Chen et al., "PathRAG: Pruning Graph-based Retrieval Augmented Generation with Relational
Paths", 2025):

1. **Node retrieval.** The query's low-level keywords (see ``retriever.lightrag``) select the
   ``top_k`` most similar entities (cosine >= ``cosine_threshold``).
2. **Paths.** For every pair of those entities, all simple paths of at most ``max_hops`` (<= 3)
   edges between them are enumerated (the start is the pair's better-ranked entity).
3. **Flow-based pruning.** Resource flows from the start: ``S(start) = 1`` and a node at hop ``d``
   receives ``alpha * S(u) / |N(u)|`` from each predecessor ``u`` at hop ``d-1``, where ``N(u)`` are
   ``u``'s successors on this pair's paths. A node whose resource is below ``theta`` stops
   propagating, so a path through it is pruned. A path's **reliability** is the mean flow over its
   edges (the flow of edge ``u -> v`` is ``alpha * S(u) / |N(u)|``).
4. **Prompt.** The ``top_paths`` most reliable paths (over all pairs, one per node sequence) are
   rendered as text -- each node's name, type and description, each edge's keywords and
   description -- and listed in ``graph_context["paths"]`` in *ascending* reliability, so the most
   reliable path sits last, next to the question.

Hits are chunks: first those cited by the kept paths' edges (by summed reliability), then the
top entities' chunks (LightRAG's weighted pick), then -- when the query has high-level keywords --
the chunks of the relations they match; a query without high-level keywords simply skips that part
(the reference code returns a failure for such queries, and rejects its own default mode).
A query matching no entity falls back to chunk vector search and says so in the metadata.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from ragkit.records import Query, Ranking
from ragkit.registry import register
from ragkit.stage import param

from ._graph import (GraphRetrieverBase, entity_record, make_ranking, rank_scores, relation_line, relation_record,
                     truncate_by_tokens)
from .lightrag import _round_robin, _weighted_polling


def paths_between(g: Any, s: str, t: str, max_hops: int) -> list[tuple[str, ...]]:
    """All simple paths s -> t of at most ``max_hops`` edges (1 <= max_hops <= 3), in a fixed order."""
    out: list[tuple[str, ...]] = []
    ns = g.adj[s]
    if t in ns:
        out.append((s, t))
    if max_hops >= 2:
        nt = g.adj[t]
        for x in sorted(set(ns) & set(nt) - {s, t}):
            out.append((s, x, t))
        if max_hops >= 3:
            for x in sorted(set(ns) - {s, t}):
                for y in sorted(set(g.adj[x]) & set(nt) - {s, t, x}):
                    out.append((s, x, y, t))
    return out


def flow_reliability(paths: list[tuple[str, ...]], alpha: float, theta: float) -> list[tuple[tuple[str, ...], float]]:
    """(path, reliability) for the paths of one pair that survive pruning (see the module docstring)."""
    if not paths:
        return []
    follow: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        for u, v in zip(p, p[1:]):
            follow[u].add(v)
    start = paths[0][0]
    resource: list[dict[str, float]] = [{start: 1.0}]
    flow: list[dict[tuple[str, str], float]] = []
    depth = max(len(p) for p in paths) - 1
    for d in range(1, depth + 1):
        nxt: dict[str, float] = defaultdict(float)
        fl: dict[tuple[str, str], float] = {}
        for u, r in resource[d - 1].items():
            if d > 1 and r < theta:
                continue  # pruned: too little resource reached u
            outs = follow.get(u, ())
            for v in outs:
                f = alpha * r / len(outs)
                fl[(u, v)] = f
                nxt[v] += f
        resource.append(dict(nxt))
        flow.append(fl)
    out = []
    for p in paths:
        flows = []
        for i, (u, v) in enumerate(zip(p, p[1:])):
            f = flow[i].get((u, v))
            if f is None:
                break
            flows.append(f)
        if len(flows) == len(p) - 1:
            out.append((p, sum(flows) / len(flows)))
    return out


def pair_paths(g: Any, s: str, t: str, max_hops: int, alpha: float, theta: float
               ) -> list[tuple[tuple[str, ...], float]]:
    """``flow_reliability(paths_between(g, s, t, max_hops), alpha, theta)`` without enumerating paths
    that pruning would drop: the first hop gives each successor ``alpha / |N(s)|``, so when that is
    below ``theta`` only the direct edge can survive, and only ``|N(s)|`` (the neighbours of ``s``
    that reach ``t`` within ``max_hops``) is needed -- hub entities stay cheap."""
    if s == t:
        return []
    ns, nt = g.adj[s], g.adj[t]
    succ = 0
    for x in ns:
        if x == t:
            succ += 1
        elif max_hops >= 2 and x in nt:
            succ += 1
        elif max_hops >= 3 and not set(g.adj[x]).isdisjoint(set(nt) - {s, t, x}):
            succ += 1
    if succ == 0:
        return []
    if alpha / succ < theta:   # every first-hop node is pruned: only s -> t can remain
        return [((s, t), alpha / succ)] if t in ns else []
    return flow_reliability(paths_between(g, s, t, max_hops), alpha, theta)


def path_text(gi: Any, path: tuple[str, ...]) -> str:
    g = gi.graph

    def node(n: str) -> str:
        a = g.nodes[n]
        t = f" ({a.get('entity_type')})" if a.get("entity_type") else ""
        desc = a.get("description", "")
        return f"{a.get('name', n)}{t}" + (f" [{desc}]" if desc else "")

    parts = [node(path[0])]
    for u, v in zip(path, path[1:]):
        e = g.edges[u, v]
        kw = ", ".join(e.get("keywords", []))
        desc = e.get("description", "")
        label = "; ".join(x for x in (kw, desc) if x)
        parts.append(f" --({label})--> " + node(v))
    return "".join(parts)


@register("retriever.pathrag")
class PathRAGRetriever(GraphRetrieverBase):
    """PathRAG: entity pairs' paths (<= 3 hops), flow-based pruning, most reliable path last."""

    top_k: int = param(20, ge=1, help="entities retrieved for the query (the path end points)")
    max_hops: int = param(3, ge=1, le=3, help="longest path, in edges")
    alpha: float = param(0.8, gt=0, le=1, help="flow decay per hop")
    theta: float = param(0.3, ge=0, help="pruning threshold: a node with less resource stops the flow")
    top_paths: int = param(15, ge=1, help="most reliable paths kept for the prompt")
    cosine_threshold: float = param(0.2, ge=-1, le=1, help="lowest cosine similarity a vector match may have")
    related_chunk_number: int = param(5, ge=1, help="chunk quota of the first entity (weight pick)")
    max_path_tokens: int = param(4000, ge=0, help="token budget of the rendered paths")
    max_total_tokens: int = param(30000, ge=1, help="budget of paths + chunks")

    def retrieve(self, gi: Any, q: Query) -> Ranking:
        count = self._count
        g = gi.graph
        kw = self.keywords_of(q.text)
        notes = [kw.note] if kw.note else []
        ll = ", ".join(kw.low) or q.text
        if not kw.low:
            notes.append("no low-level keywords: the query text searched the entities")
        texts = [q.text, ll] + ([", ".join(kw.high)] if kw.high else [])
        vecs = gi.encode(texts)
        qv, llv = vecs[0], vecs[1]
        nodes = [n for n, s in gi.search_entities(llv[None], self.top_k)[0] if s >= self.cosine_threshold]
        scored_paths: dict[tuple[str, ...], float] = {}
        for i, s in enumerate(nodes):
            for t in nodes[i + 1:]:
                for p, rel in pair_paths(g, s, t, self.max_hops, self.alpha, self.theta):
                    key = p if p[0] <= p[-1] else p[::-1]
                    if rel > scored_paths.get(key, -1.0):
                        scored_paths[key] = rel
        ranked = sorted(scored_paths.items(), key=lambda x: (-x[1], x[0]))[: self.top_paths]
        texts_p = [path_text(gi, p) for p, _ in ranked]
        keep = truncate_by_tokens(list(range(len(ranked))), lambda i: texts_p[i], self.max_path_tokens, count)
        ranked = [ranked[i] for i in keep]
        paths = [{"nodes": [g.nodes[n].get("name", n) for n in p], "reliability": rel, "text": path_text(gi, p)}
                 for p, rel in ranked][::-1]   # most reliable last
        if len(nodes) < 2:
            notes.append("fewer than two query entities matched: no paths")
        elif not ranked:
            notes.append("no path of <= %d hops survived pruning between the query entities" % self.max_hops)

        # chunks: path edges (by summed reliability), top entities, high-level relations
        path_score: dict[str, float] = defaultdict(float)
        for p, rel in ranked:
            for u, v in zip(p, p[1:]):
                for c in g.edges[u, v].get("source_ids", []):
                    if c in gi.chunk_texts:
                        path_score[c] += rel
        path_chunks = sorted(path_score, key=lambda c: (-path_score[c], c))
        occurrence: dict[str, int] = defaultdict(int)
        per_entity: list[list[str]] = []
        for n in nodes:
            mine = []
            for c in g.nodes[n].get("source_ids", []):
                if c in gi.chunk_texts:
                    occurrence[c] += 1
                    if occurrence[c] == 1:
                        mine.append(c)
            per_entity.append(mine)
        per_entity = [sorted(m, key=lambda c: -occurrence[c]) for m in per_entity if m]
        ent_chunks = _weighted_polling(per_entity, self.related_chunk_number) if per_entity else []
        hl_relations: list[tuple[str, str]] = []
        rel_chunks: list[str] = []
        if kw.high:
            hl_relations = [tuple(r) for r, s in gi.search_relations(vecs[2][None], self.top_k)[0]
                            if s >= self.cosine_threshold]
            per_rel = [[c for c in g.edges[a, b].get("source_ids", []) if c in gi.chunk_texts] for a, b in hl_relations]
            per_rel = [m for m in per_rel if m]
            rel_chunks = _weighted_polling(per_rel, self.related_chunk_number) if per_rel else []
        else:
            notes.append("no high-level keywords: the relation search was skipped")
        fallback = None
        vector: list[str] = []
        if not nodes and not hl_relations:
            fallback = ("no entity or relation of the graph matched the query keywords (cosine >= "
                        f"{self.cosine_threshold}); fell back to chunk vector search")
            vector = [c for c, _ in gi.search_chunks(qv[None], max(self.k, 20))[0]]
        why: dict[str, dict[str, Any]] = {}
        for c in path_chunks:
            why.setdefault(c, {"source": "path", "reliability": path_score[c]})
        for c in ent_chunks:
            why.setdefault(c, {"source": "entity"})
        for c in rel_chunks:
            why.setdefault(c, {"source": "relation"})
        for c in vector:
            why.setdefault(c, {"source": "vector"})
        merged = list(dict.fromkeys(path_chunks + _round_robin(ent_chunks, rel_chunks) + vector))
        used = count(q.text) + sum(count(p["text"]) + 1 for p in paths)
        merged = truncate_by_tokens(merged, lambda c: gi.chunk_texts.get(c, ""), max(self.max_total_tokens - used, 0),
                                    count)
        ctx = {"method": "pathrag", "keywords": kw.as_dict(),
               "entities": [entity_record(gi, n) for n in nodes[:10]],
               "relations": [relation_record(gi, a, b) for a, b in hl_relations[:10]],
               "paths": paths, "fallback": fallback}
        if notes:
            ctx["notes"] = notes
        ctx["relations"] = [r for r in ctx["relations"] if relation_line(r)]
        return make_ranking(gi, q, [(c, s, why[c]) for c, s in rank_scores(merged)], ctx, self.text, self.k)
