"""Small in-test stages shared by the core tests."""
from __future__ import annotations

from ragkit.records import Query, Ranking
from ragkit.stage import QUERIES, RANKINGS, Stage, param
from ragkit.testing import tokens

CORPUS = {
    "d1": "The cat sat on the mat.",
    "d2": "Dogs chase cats in the park.",
    "d3": "A mat is a flat piece of fabric.",
    "d4": "Parks have trees and grass.",
}


class ListRetriever(Stage):
    """Scores CORPUS documents by query-token overlap (an in-memory retriever for tests)."""

    k: int = param(10, ge=1)
    text: bool = param(False)
    docs: dict[str, str] = param(dict(CORPUS))
    input_kind = QUERIES
    output_kind = RANKINGS

    def provides(self) -> frozenset[str]:
        return frozenset({"doc_id", "score", "rank"} | ({"text"} if self.text else set()))

    def run(self, batch: list[Query]) -> list[Ranking]:
        out = []
        for q in batch:
            qt = set(tokens(q.text))
            items = [(d, float(len(qt & set(tokens(t))))) for d, t in self.docs.items()]
            r = Ranking.from_scores(q, [(d, s) for d, s in items if s > 0])
            if self.text:
                from dataclasses import replace
                r = Ranking(q, tuple(replace(h, text=self.docs[h.doc_id]) for h in r.hits))
            out.append(r.top(self.k))
        return out
