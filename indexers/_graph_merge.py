"""Merging per-chunk extractions into one undirected graph, as LightRAG does, and keeping it merged.

:class:`GraphState` holds the chunks (in insertion order), each chunk's parsed
:class:`~ragkit.indexers._graph_records.Extraction` and the ``networkx.Graph``. The graph is a pure
function of the current set of chunks: every node and edge is recomputed from the extractions of
the chunks that mention it, so an insert or a delete only recomputes the keys those chunks touch,
and the result equals a full rebuild over the same chunks (tested).

Merge rules (LightRAG's ``_merge_nodes_then_upsert`` / ``_merge_edges_then_upsert``):

- node key :func:`normalize_name` of the name; display ``name`` the most frequent surface form
  (ties: first seen); ``entity_type`` by majority (ties: first seen);
- descriptions de-duplicated in chunk order; when there are ``force_count`` or more, or they
  exceed ``max_tokens`` tokens, and an LLM is configured, they are summarised by it (map-reduce
  over groups of at most ``context_tokens`` tokens, as LightRAG's ``_handle_entity_relation_summary``),
  else joined with new lines; the fragments stay in ``descriptions``;
- a relation endpoint that no entity record names becomes a node of type ``UNKNOWN`` described by
  its relations (LightRAG does the same);
- relation key: the two node keys sorted (undirected); ``weight`` the sum over mentions,
  ``keywords`` the sorted union; ``source_ids`` (chunk ids, chunk order) on every node and edge.

Deviation from lightrag-hku, on purpose: descriptions are ordered by chunk order (LightRAG orders
by extraction timestamp in seconds, then by length, which is not reproducible across runs), and
node keys are case-folded (LightRAG keeps "Apple" and "APPLE" apart).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from ._graph_records import Extraction
from ._graph_store import normalize_name

Describer = Callable[[str, str, list[str]], str]   # (kind, name, fragments) -> description


def join_describer(kind: str, name: str, fragments: list[str]) -> str:
    return "\n".join(fragments)


class Summarizer:
    """LightRAG's description merge: join when short, else LLM summary (map-reduce)."""

    def __init__(self, llm: Any | None, *, force_count: int = 8, max_tokens: int = 1200,
                 context_tokens: int = 12000, summary_length: int = 600) -> None:
        self.llm = llm
        self.force_count, self.max_tokens = force_count, max_tokens
        self.context_tokens, self.summary_length = context_tokens, summary_length
        self.stats = {"summaries": 0}

    def _tokens(self, text: str) -> int:
        if self.llm is not None:
            return int(self.llm.chat.count_tokens(text))
        return len(text.split())

    def __call__(self, kind: str, name: str, fragments: list[str]) -> str:
        if len(fragments) <= 1 or self.llm is None:
            return "\n".join(fragments)
        current = list(fragments)
        while True:
            counts = [self._tokens(d) for d in current]
            total = sum(counts)
            if total <= self.context_tokens or len(current) <= 2:
                if len(current) < self.force_count and total < self.max_tokens:
                    return "\n".join(current)
                self.stats["summaries"] += 1
                return self.llm.summarize(kind, name, current, self.summary_length)
            groups: list[list[str]] = []
            group: list[str] = []
            size = 0
            for d, n in zip(current, counts):
                if group and size + n > self.context_tokens:
                    if len(group) == 1:   # at least two per group, so every round shrinks the list
                        groups.append(group + [d])
                        group, size = [], 0
                        continue
                    groups.append(group)
                    group, size = [d], n
                else:
                    group.append(d)
                    size += n
            if group:
                groups.append(group)
            nxt = []
            for g in groups:
                if len(g) == 1:
                    nxt.append(g[0])
                else:
                    self.stats["summaries"] += 1
                    nxt.append(self.llm.summarize(kind, name, g, self.summary_length))
            current = nxt


def _first_most_common(values: list[str]) -> str:
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


class GraphState:
    """Chunks, their extractions and the merged graph (see the module docstring)."""

    def __init__(self) -> None:
        import networkx as nx

        self.graph = nx.Graph()
        self.chunks: dict[str, tuple[str, str]] = {}        # chunk_id -> (doc_id, text), insertion order
        self.extractions: dict[str, Extraction] = {}
        self.seq: dict[str, int] = {}
        self._next = 0
        self.node_chunks: dict[str, set[str]] = {}
        self.edge_chunks: dict[tuple[str, str], set[str]] = {}
        self.dropped_empty_keys = 0

    # -- chunk bookkeeping --------------------------------------------------------------------
    @staticmethod
    def _keys(ex: Extraction) -> tuple[set[str], set[tuple[str, str]]]:
        nodes: set[str] = set()
        edges: set[tuple[str, str]] = set()
        for e in ex.entities:
            k = normalize_name(e["name"])
            if k:
                nodes.add(k)
        for r in ex.relations:
            a, b = normalize_name(r["source"]), normalize_name(r["target"])
            if a and b and a != b:
                nodes.update((a, b))
                edges.add((a, b) if a <= b else (b, a))
        return nodes, edges

    def add(self, chunk_id: str, doc_id: str, text: str, ex: Extraction) -> tuple[set[str], set[tuple[str, str]]]:
        if chunk_id in self.chunks:
            raise ValueError(f"chunk {chunk_id!r} is already in the graph")
        self.chunks[chunk_id] = (doc_id, text)
        self.extractions[chunk_id] = ex
        self.seq[chunk_id] = self._next
        self._next += 1
        nodes, edges = self._keys(ex)
        for k in nodes:
            self.node_chunks.setdefault(k, set()).add(chunk_id)
        for k in edges:
            self.edge_chunks.setdefault(k, set()).add(chunk_id)
        return nodes, edges

    def remove(self, chunk_id: str) -> tuple[set[str], set[tuple[str, str]]]:
        ex = self.extractions.pop(chunk_id)
        del self.chunks[chunk_id]
        del self.seq[chunk_id]
        nodes, edges = self._keys(ex)
        for k in nodes:
            s = self.node_chunks.get(k)
            if s is not None:
                s.discard(chunk_id)
                if not s:
                    del self.node_chunks[k]
        for k in edges:
            s = self.edge_chunks.get(k)
            if s is not None:
                s.discard(chunk_id)
                if not s:
                    del self.edge_chunks[k]
        return nodes, edges

    def _ordered(self, cids: Iterable[str]) -> list[str]:
        return sorted(cids, key=self.seq.__getitem__)

    # -- merge ----------------------------------------------------------------------------------
    def refresh(self, nodes: Iterable[str], edges: Iterable[tuple[str, str]], describe: Describer) -> None:
        """Recompute the given nodes and edges from the extractions of the chunks that mention them."""
        g = self.graph
        for k in sorted(set(nodes)):
            attrs = self._merge_node(k, describe)
            if attrs is None:
                if g.has_node(k):
                    g.remove_node(k)
            elif g.has_node(k):
                g.nodes[k].clear()
                g.nodes[k].update(attrs)
            else:
                g.add_node(k, **attrs)
        for a, b in sorted(set(edges)):
            attrs = self._merge_edge(a, b, describe)
            if attrs is None:
                if g.has_edge(a, b):
                    g.remove_edge(a, b)
            else:
                if not (g.has_node(a) and g.has_node(b)):  # pragma: no cover - endpoints always have mentions
                    continue
                if g.has_edge(a, b):
                    g.edges[a, b].clear()
                g.add_edge(a, b, **attrs)

    def _merge_node(self, key: str, describe: Describer) -> dict[str, Any] | None:
        cids = self._ordered(self.node_chunks.get(key, ()))
        recs = [(c, e) for c in cids for e in self.extractions[c].entities if normalize_name(e["name"]) == key]
        if recs:
            names = [e["name"] for _, e in recs]
            etype = _first_most_common([e["type"] for _, e in recs])
            frags = _dedup(e["description"] for _, e in recs)
            sources = _dedup(c for c, _ in recs)
        else:  # only named as a relation endpoint
            rel = [(c, r) for c in cids for r in self.extractions[c].relations
                   if key in (normalize_name(r["source"]), normalize_name(r["target"]))
                   and normalize_name(r["source"]) != normalize_name(r["target"])]
            if not rel:
                return None
            names = [r["source"] if normalize_name(r["source"]) == key else r["target"] for _, r in rel]
            etype = "UNKNOWN"
            frags = _dedup(r["description"] for _, r in rel)
            sources = _dedup(c for c, _ in rel)
        name = _first_most_common(names)
        return {"name": name, "entity_type": etype, "description": describe("Entity", name, frags),
                "descriptions": frags, "source_ids": sources}

    def _merge_edge(self, a: str, b: str, describe: Describer) -> dict[str, Any] | None:
        cids = self._ordered(self.edge_chunks.get((a, b), ()))
        recs = []
        for c in cids:
            for r in self.extractions[c].relations:
                x, y = normalize_name(r["source"]), normalize_name(r["target"])
                if (x, y) == (a, b) or (y, x) == (a, b):
                    recs.append((c, r))
        if not recs:
            return None
        frags = _dedup(r["description"] for _, r in recs)
        name = f"{self.graph.nodes[a].get('name', a) if a in self.graph else a} - " \
               f"{self.graph.nodes[b].get('name', b) if b in self.graph else b}"
        return {"keywords": sorted({k for _, r in recs for k in r.get("keywords", []) if k}),
                "description": describe("Relation", name, frags), "descriptions": frags,
                "weight": float(sum(float(r.get("weight", 1.0)) for _, r in recs)),
                "source_ids": _dedup(c for c, _ in recs)}

    # -- whole-state helpers --------------------------------------------------------------------
    def add_many(self, items: Iterable[tuple[str, str, str, Extraction]]) -> tuple[set[str], set[tuple[str, str]]]:
        nodes: set[str] = set()
        edges: set[tuple[str, str]] = set()
        for cid, doc, text, ex in items:
            n, e = self.add(cid, doc, text, ex)
            nodes |= n
            edges |= e
        return nodes, edges

    def remove_docs(self, doc_ids: Iterable[str]) -> tuple[set[str], set[tuple[str, str]], list[str]]:
        gone = set(doc_ids)
        cids = [c for c, (d, _) in self.chunks.items() if d in gone]
        nodes: set[str] = set()
        edges: set[tuple[str, str]] = set()
        for c in cids:
            n, e = self.remove(c)
            nodes |= n
            edges |= e
        return nodes, edges, cids
