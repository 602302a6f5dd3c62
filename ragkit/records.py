"""The record types every stage speaks: frozen dataclasses, one vocabulary everywhere."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping



@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def title(self) -> str | None:
        return self.meta.get("title")


@dataclass(frozen=True)
class Chunk:
    """A span ``text == document.text[start:end]`` of one document."""

    chunk_id: str
    doc_id: str
    text: str
    start: int
    end: int
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Query:
    qid: str
    text: str


@dataclass(frozen=True, init=False)
class Hit:
    """One retrieved item. ``rank`` counts from 0; ``chunk_id`` is set when chunks were indexed."""

    qid: str
    doc_id: str
    score: float
    rank: int
    text: str | None = None
    chunk_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __init__(self, qid: str, doc_id: str, score: float, rank: int, text: str | None = None,
                 chunk_id: str | None = None, meta: Mapping[str, Any] | None = None) -> None:
        # hand-written: retrievers build many hits, and a frozen dataclass's generated
        # __init__ (one object.__setattr__ per field) costs several times more
        d = self.__dict__
        d["qid"], d["doc_id"], d["score"], d["rank"] = qid, doc_id, score, rank
        d["text"], d["chunk_id"], d["meta"] = text, chunk_id, {} if meta is None else meta

    @property
    def title(self) -> str | None:
        return self.meta.get("title")

    @property
    def key(self) -> str:
        """The id of the indexed unit (chunk id, else doc id)."""
        return self.chunk_id if self.chunk_id is not None else self.doc_id


def as_chunks(items: Iterable[Document | Chunk]) -> list[Chunk]:
    """Chunks as they are; each Document as one chunk spanning its whole text (what indexers index)."""
    return [Chunk(d.doc_id, d.doc_id, d.text, 0, len(d.text), d.meta) if isinstance(d, Document) else d
            for d in items]


def _order(h: Hit) -> tuple:
    return (-h.score, h.doc_id, h.chunk_id or "")


@dataclass(frozen=True)
class Ranking:
    """The hits of one query, always ordered by (score desc, doc_id asc) with ranks 0..n-1."""

    query: Query
    hits: tuple[Hit, ...] = ()

    def __post_init__(self) -> None:
        hits, qid = self.hits, self.query.qid
        keys = [(-h.score, h.doc_id, h.chunk_id or "") for h in hits]
        in_order = all(a <= b for a, b in zip(keys, keys[1:]))
        if not in_order:
            hits = tuple(sorted(hits, key=_order))
        if any(h.rank != i or h.qid != qid for i, h in enumerate(hits)):
            hits = tuple(Hit(qid, h.doc_id, h.score, i, h.text, h.chunk_id, h.meta) for i, h in enumerate(hits))
        elif not isinstance(hits, tuple):
            hits = tuple(hits)
        object.__setattr__(self, "hits", hits)

    @property
    def qid(self) -> str:
        return self.query.qid

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def top(self, k: int) -> "Ranking":
        return Ranking(self.query, self.hits[:k])

    @classmethod
    def from_scores(cls, query: Query, items: Iterable[tuple[str, float]], **hit_fields) -> "Ranking":
        return cls(query, tuple(Hit(query.qid, d, float(s), 0, **hit_fields) for d, s in items))


@dataclass(frozen=True)
class Answer:
    """A generated answer; ``citations`` are the doc ids it used; ``ranking`` is its context."""

    qid: str
    text: str
    citations: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    ranking: Ranking | None = field(default=None, compare=False)
    query: Query | None = None

