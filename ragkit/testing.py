"""Deterministic fakes so every pipeline runs end to end in milliseconds without weights.

- :class:`HashEmbedder`: a feature-hashing bag-of-words embedder (``model: hash`` wherever an
  encoder name is accepted); same text, same unit vector; shared words raise cosine.
- ``reranker.overlap``: scores a hit by the share of query tokens found in its text.
- ``generator.echo``: answers with the first sentence of the top passage and cites it.
"""
from __future__ import annotations

import hashlib
import re
import time

import numpy as np

from .records import Answer, Hit, Ranking
from .registry import register
from .stage import RANKINGS, Generator, Stage, param

_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class HashEmbedder:
    """Feature-hashing embedder: L2-normalised bag of hashed unigrams (and bigrams)."""

    name = "hash"

    def __init__(self, dim: int = 256, bigrams: bool = True) -> None:
        self.dim = dim
        self.bigrams = bigrams

    def _index(self, tok: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def encode(self, texts: list[str], batch_size: int = 64, normalize: bool = True, **_: object) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            toks = tokens(t)
            feats = toks + ([a + " " + b for a, b in zip(toks, toks[1:])] if self.bigrams else [])
            for f in feats:
                j, sign = self._index(f)
                out[i, j] += sign
        if normalize:
            n = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(n == 0, 1.0, n)
        return out

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim


@register("reranker.overlap")
class OverlapReranker(Stage):
    """Fake reranker: share of query tokens that occur in the hit text (for tests)."""

    input_kind = RANKINGS
    output_kind = RANKINGS

    def needs(self) -> frozenset[str]:
        return frozenset({"text"})

    def run(self, batch: list[Ranking]) -> list[Ranking]:
        out = []
        for r in batch:
            q = set(tokens(r.query.text))
            hits = []
            for h in r.hits:
                t = set(tokens(h.text or ""))
                s = len(q & t) / max(len(q), 1)
                hits.append(Hit(h.qid, h.doc_id, s, 0, h.text, h.chunk_id, h.meta))
            out.append(Ranking(r.query, tuple(hits)))
        return out


@register("generator.echo")
class EchoGenerator(Generator):
    """Fake generator: the first sentence of the top passage, citing it."""

    max_chars: int = param(200, ge=1, help="cut the echoed sentence to this many characters")

    def run(self, batch: list[Ranking]) -> list[Answer]:
        out = []
        for r in batch:
            t0 = time.perf_counter()
            if not r.hits:
                text, cites = "", ()
            else:
                top = r.hits[0]
                text = re.split(r"(?<=[.!?])\s", (top.text or "").strip(), maxsplit=1)[0][: self.max_chars]
                cites = (top.doc_id,)
            out.append(Answer(r.qid, text, cites, {"generate": time.perf_counter() - t0}, ranking=r, query=r.query))
        return out
