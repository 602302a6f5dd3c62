"""The in-memory form of a graph index: the contract between ``indexer.graph`` and the graph retrievers.

``indexer.graph`` builds, persists and loads a :class:`GraphIndex`; ``retriever.lightrag``,
``retriever.pathrag`` and ``retriever.ppr`` read only what this module defines, so the two sides
can change their internals independently.

The graph is an undirected ``networkx.Graph`` (LightRAG's relations are undirected):

- node key: :func:`normalize_name` of the entity name; node attributes ``name`` (display form),
  ``entity_type`` (str), ``description`` (str), ``source_ids`` (list of chunk ids it came from);
- edge attributes ``keywords`` (list of str), ``description`` (str), ``weight`` (float, summed
  over mentions), ``source_ids`` (list of chunk ids).

``indexer.graph`` also sets ``descriptions`` (list of str: the de-duplicated description fragments,
in chunk order, that ``description`` joins with new lines or, past the summary thresholds, is an
LLM summary of) on nodes and edges; ``source_ids`` are in chunk insertion order. Relation
endpoints that no entity record names get ``entity_type`` ``"UNKNOWN"`` (as in LightRAG).

Three vector tables sit beside it, each built by one encoder (the index's): entities
("name + description"), relations ("keywords + source + target + description") and chunks.
Vectors are L2-normalised, so inner product is cosine similarity.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

_SPACE = re.compile(r"\s+")


def normalize_name(name: str) -> str:
    """The node key of an entity name: NFKC, surrounding quotes and spaces stripped, inner white
    space folded to one space, case folded. ``'"Super  Bowl 50 "'`` -> ``'super bowl 50'``."""
    s = unicodedata.normalize("NFKC", str(name)).strip().strip("\"'`").strip()
    return _SPACE.sub(" ", s).casefold()


@dataclass
class VectorTable:
    """Keys and their unit vectors; exact inner-product search (the persisted index may swap in FAISS)."""

    keys: list[Any]
    vectors: np.ndarray  # [n, dim] float32, rows L2-normalised

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[Any, float]]]:
        """Top ``k`` (key, score) per query row, score descending, ties by key order."""
        if len(self.keys) == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        scores = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        k = min(k, len(self.keys))
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([(self.keys[i], float(row[i])) for i in top])
        return out


class FastVectorTable(VectorTable):
    """:class:`VectorTable` with the same results (top ``k``, score descending, ties by key order)
    found by partial selection instead of a full sort: O(n) per query instead of O(n log n).
    ``load_graph_index`` returns these."""

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[Any, float]]]:
        n = len(self.keys)
        if n == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        scores = np.asarray(queries, dtype=np.float32) @ np.asarray(self.vectors).T
        k = min(k, n)
        out = []
        for row in scores:
            if k == n:
                top = np.argsort(-row, kind="stable")
            else:
                kth = np.partition(row, n - k)[n - k]            # the k-th largest score
                above = np.flatnonzero(row > kth)
                tied = np.flatnonzero(row == kth)[: k - len(above)]  # ties at the cut: lowest positions first
                cand = np.concatenate([above, tied])
                top = cand[np.lexsort((cand, -row[cand]))]
            out.append([(self.keys[i], float(row[i])) for i in top])
        return out


@dataclass
class GraphIndex:
    """A loaded graph index (see the module docstring for the attribute contract)."""

    graph: Any                      # networkx.Graph
    chunk_texts: dict[str, str]     # chunk_id -> text
    chunk_docs: dict[str, str]      # chunk_id -> doc_id
    encode: Callable[[Sequence[str]], np.ndarray]   # query texts -> unit vectors (the index's encoder)
    entities: VectorTable
    relations: VectorTable          # keys are (node_key_a, node_key_b) with a <= b
    chunks: VectorTable
    params: dict[str, Any] = field(default_factory=dict)   # the index's params.json (extractor, encoder, ...)
    chunk_titles: dict[str, str] = field(default_factory=dict)   # chunk_id -> title, where the chunk had one

    def search_entities(self, qvecs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        return self.entities.search(qvecs, k)

    def search_relations(self, qvecs: np.ndarray, k: int) -> list[list[tuple[tuple[str, str], float]]]:
        return self.relations.search(qvecs, k)

    def search_chunks(self, qvecs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        return self.chunks.search(qvecs, k)

    @staticmethod
    def entity_text(key: str, attrs: dict[str, Any]) -> str:
        return f"{attrs.get('name', key)}\n{attrs.get('description', '')}"

    @staticmethod
    def relation_text(a: str, b: str, attrs: dict[str, Any]) -> str:
        kw = ", ".join(attrs.get("keywords", []))
        return f"{kw}\t{a}\n{b}\n{attrs.get('description', '')}"

    @classmethod
    def from_parts(cls, graph: Any, chunk_texts: dict[str, str], chunk_docs: dict[str, str],
                   encode: Callable[[Sequence[str]], np.ndarray], params: dict[str, Any] | None = None) -> "GraphIndex":
        """Build the three vector tables by encoding the graph and chunks with ``encode``."""
        ekeys = sorted(graph.nodes)
        etexts = [cls.entity_text(n, graph.nodes[n]) for n in ekeys]
        rkeys = sorted(tuple(sorted((a, b))) for a, b in graph.edges)
        rtexts = [cls.relation_text(a, b, graph.edges[a, b]) for a, b in rkeys]
        ckeys = sorted(chunk_texts)
        ctexts = [chunk_texts[c] for c in ckeys]

        def table(keys: list[Any], texts: list[str]) -> VectorTable:
            if not keys:
                return VectorTable([], np.zeros((0, 1), dtype=np.float32))
            return VectorTable(keys, np.asarray(encode(texts), dtype=np.float32))

        return cls(graph, dict(chunk_texts), dict(chunk_docs), encode,
                   table(ekeys, etexts), table(rkeys, rtexts), table(ckeys, ctexts), dict(params or {}))
