"""``retriever.lightrag``: LightRAG's dual-level retrieval over an ``indexer.graph`` index.

Method (Guo et al., "LightRAG: Simple and Fast Retrieval-Augmented Generation", 2024; the search,
truncate, merge stages follow lightrag-hku 1.5):

1. **Keywords.** The query is split into *low-level* keywords (entities, names) and *high-level*
   keywords (themes) -- by an LLM with a JSON prompt when ``llm`` is set (or ``set_keyword_llm``),
   else offline: spaCy entities and noun chunks, else a capitalisation heuristic
   (see :mod:`._graph`).
2. **Search.** ``local``: the low-level keywords (joined by ``", "``) are embedded and the ``top_k``
   most similar entities (cosine >= ``cosine_threshold``) are taken in similarity order; their
   relations are collected and ranked by edge degree (degree of both ends) and weight.
   ``global``: the high-level keywords search the relation table; the relations keep similarity
   order and their end entities follow in that order. ``hybrid``: both, merged round-robin (local
   first). ``mix``: hybrid plus a vector search over chunks. ``naive``: only the chunk vector search.
3. **Truncate.** Entities and relations are cut to ``max_entity_tokens`` / ``max_relation_tokens``.
4. **Chunks.** The kept entities' source chunks, and then the kept relations' source chunks not
   already taken, are picked by ``chunk_pick``: ``weight`` (each item's chunks ordered by how many
   selected items cite them, a linearly decreasing quota from ``related_chunk_number`` for the first
   item to 1 for the last) or ``vector`` (those candidate chunks ranked by similarity to the query).
   Vector, entity and relation chunks are merged round-robin and cut to what is left of
   ``max_total_tokens`` after the entity and relation context; the first ``k`` are the hits.

A query whose keywords match no entity or relation falls back to the chunk vector search and says
so in ``hit.meta["graph_context"]["fallback"]``. Token counts use ``tokenizer`` (a Hugging Face
tokenizer) or, by default, a word-and-punctuation count.
"""
from __future__ import annotations

from typing import Any, Literal

from ragkit.records import Query, Ranking
from ragkit.registry import register
from ragkit.stage import param

from ._graph import (GraphRetrieverBase, Keywords, entity_line, entity_record, make_ranking, rank_scores,
                     relation_line, relation_record, truncate_by_tokens)

Mode = Literal["local", "global", "hybrid", "mix", "naive"]


@register("retriever.lightrag")
class LightRAGRetriever(GraphRetrieverBase):
    """LightRAG dual-level graph retrieval (local, global, hybrid, mix, naive) over an indexer.graph index."""

    mode: Mode = param("hybrid", help="local: entities first; global: relations first; hybrid: both; "
                                      "mix: hybrid + chunk vector search; naive: chunk vector search only")
    top_k: int = param(40, ge=1, help="entities (local) / relations (global) taken from the vector search")
    chunk_top_k: int = param(20, ge=1, help="chunks taken from the chunk vector search (mix, naive)")
    cosine_threshold: float = param(0.2, ge=-1, le=1, help="lowest cosine similarity a vector match may have")
    related_chunk_number: int = param(5, ge=1, help="chunk quota of the first entity/relation (weight pick)")
    chunk_pick: Literal["weight", "vector"] = param("weight", help="how entity/relation chunks are chosen")
    max_entity_tokens: int = param(6000, ge=0, help="token budget of the entity context")
    max_relation_tokens: int = param(8000, ge=0, help="token budget of the relation context")
    max_total_tokens: int = param(30000, ge=1, help="budget of entities + relations + chunks")

    # -- one query -------------------------------------------------------------------------------
    def retrieve(self, gi: Any, q: Query) -> Ranking:
        count = self._count
        mode = self.mode
        kw = self.keywords_of(q.text) if mode != "naive" else Keywords(source="none")
        notes = [kw.note] if kw.note else []
        ll, hl = ", ".join(kw.low), ", ".join(kw.high)
        if mode in ("local", "hybrid", "mix") and not ll:
            ll = q.text
            notes.append("no low-level keywords: the query text searched the entities")
        if mode in ("global", "hybrid", "mix") and not hl:
            hl = q.text
            notes.append("no high-level keywords: the query text searched the relations")
        texts = [q.text, ll, hl]
        qv, llv, hlv = gi.encode(texts)

        local_e: list[str] = []
        local_r: list[tuple[str, str]] = []
        global_r: list[tuple[str, str]] = []
        global_e: list[str] = []
        if mode in ("local", "hybrid", "mix"):
            local_e = [n for n, s in gi.search_entities(llv[None], self.top_k)[0] if s >= self.cosine_threshold]
            local_r = self._edges_of(gi, local_e)
        if mode in ("global", "hybrid", "mix"):
            global_r = [tuple(r) for r, s in gi.search_relations(hlv[None], self.top_k)[0]
                        if s >= self.cosine_threshold]
            seen: set[str] = set()
            for a, b in global_r:
                for n in (a, b):
                    if n not in seen:
                        seen.add(n)
                        global_e.append(n)
        entities = _round_robin(local_e, global_e)
        relations = _round_robin(local_r, global_r)
        e_recs = [entity_record(gi, n) for n in entities]
        r_recs = [relation_record(gi, a, b) for a, b in relations]
        e_keep = truncate_by_tokens(list(range(len(e_recs))), lambda i: entity_line(e_recs[i]),
                                    self.max_entity_tokens, count)
        r_keep = truncate_by_tokens(list(range(len(r_recs))), lambda i: relation_line(r_recs[i]),
                                    self.max_relation_tokens, count)
        entities = [entities[i] for i in e_keep]
        relations = [relations[i] for i in r_keep]
        e_recs = [e_recs[i] for i in e_keep]
        r_recs = [r_recs[i] for i in r_keep]

        fallback = None
        vector: list[str] = []
        if mode in ("mix", "naive"):
            vector = [c for c, s in gi.search_chunks(qv[None], self.chunk_top_k)[0] if s >= self.cosine_threshold]
        if mode != "naive" and not entities and not relations:
            fallback = ("no entity or relation of the graph matched the query keywords (cosine >= "
                        f"{self.cosine_threshold}); fell back to chunk vector search")
            vector = [c for c, s in gi.search_chunks(qv[None], self.chunk_top_k)[0]]
        ent_chunks = self._pick_chunks(gi, [gi.graph.nodes[n].get("source_ids", []) for n in entities], set(), qv)
        rel_chunks = self._pick_chunks(gi, [gi.graph.edges[a, b].get("source_ids", []) for a, b in relations],
                                       set(ent_chunks), qv)
        why: dict[str, dict[str, Any]] = {}
        for c in vector:
            why.setdefault(c, {"source": "vector"})
        for c in ent_chunks:
            why.setdefault(c, {"source": "entity"})
        for c in rel_chunks:
            why.setdefault(c, {"source": "relation"})
        merged = _round_robin(vector, ent_chunks, rel_chunks)
        # chunks get what the entity and relation context leave of the total budget
        ctx = {"method": f"lightrag/{mode}", "keywords": kw.as_dict(), "entities": e_recs, "relations": r_recs,
               "paths": [], "fallback": fallback}
        if notes:
            ctx["notes"] = notes
        used = count(q.text) + sum(count(entity_line(e)) + 1 for e in e_recs) + \
            sum(count(relation_line(r)) + 1 for r in r_recs)
        merged = truncate_by_tokens(merged, lambda c: gi.chunk_texts.get(c, ""), max(self.max_total_tokens - used, 0),
                                    count)
        cited = _citing_entities(gi, entities, merged)
        scored = [(c, s, {**why[c], "entities": cited.get(c, [])}) for c, s in rank_scores(merged)]
        return make_ranking(gi, q, scored, ctx, self.text, self.k)

    @staticmethod
    def _edges_of(gi: Any, nodes: list[str]) -> list[tuple[str, str]]:
        g = gi.graph
        edges, seen = [], set()
        for n in nodes:
            for a, b in g.edges(n):
                e = (a, b) if a <= b else (b, a)
                if e not in seen:
                    seen.add(e)
                    edges.append(e)
        # edge degree (both ends' degrees) then weight, descending; stable for ties
        return sorted(edges, key=lambda e: (-(g.degree(e[0]) + g.degree(e[1])),
                                            -float(g.edges[e].get("weight", 1.0))))

    def _pick_chunks(self, gi: Any, sources: list[list[str]], exclude: set[str], qv: Any) -> list[str]:
        """Chunks of the items (entities or relations, in importance order): see the module docstring."""
        occurrence: dict[str, int] = {}
        per_item: list[list[str]] = []
        for src in sources:
            mine = []
            for c in src:
                if c in exclude or c not in gi.chunk_texts:
                    continue
                occurrence[c] = occurrence.get(c, 0) + 1
                if occurrence[c] == 1:
                    mine.append(c)
            per_item.append(mine)
        per_item = [sorted(m, key=lambda c: -occurrence[c]) for m in per_item]
        items = [m for m in per_item if m]
        if not items:
            return []
        if self.chunk_pick == "vector":
            import numpy as np

            cands = list(dict.fromkeys(c for m in items for c in m))
            n = max(1, int(self.related_chunk_number * len(items) / 2))
            rows = {c: i for i, c in enumerate(gi.chunks.keys)}
            sims = gi.chunks.vectors[[rows[c] for c in cands]] @ np.asarray(qv, dtype=np.float32)
            order = np.argsort(-sims, kind="stable")[:n]
            return [cands[i] for i in order]
        return _weighted_polling(items, self.related_chunk_number)


def _weighted_polling(items: list[list[str]], max_per_item: int, min_per_item: int = 1) -> list[str]:
    """A quota falling linearly from ``max_per_item`` (first item) to ``min_per_item`` (last); quota an
    item cannot use goes, one chunk at a time, to the first item that still has chunks left."""
    n = len(items)
    if n == 1:
        return items[0][:max_per_item]
    quota = [int(round(max_per_item - (i / (n - 1)) * (max_per_item - min_per_item))) for i in range(n)]
    used = [min(q, len(m)) for q, m in zip(quota, items)]
    out = [c for m, u in zip(items, used) for c in m[:u]]
    spare = sum(q - u for q, u in zip(quota, used))
    for _ in range(spare):
        for i, m in enumerate(items):
            if used[i] < len(m):
                out.append(m[used[i]])
                used[i] += 1
                break
        else:
            break
    return list(dict.fromkeys(out))


def _round_robin(*lists: list[Any]) -> list[Any]:
    out, seen = [], set()
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x) and x[i] not in seen:
                seen.add(x[i])
                out.append(x[i])
    return out


def _citing_entities(gi: Any, entities: list[str], chunks: list[str]) -> dict[str, list[str]]:
    want = set(chunks)
    out: dict[str, list[str]] = {}
    for n in entities:
        for c in gi.graph.nodes[n].get("source_ids", []):
            if c in want:
                out.setdefault(c, []).append(gi.graph.nodes[n].get("name", n))
    return out
