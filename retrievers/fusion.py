"""Fusion of several retrievers' rankings: reciprocal rank fusion and normalised score fusion.

- ``fusion.rrf`` (Cormack, Clarke & Büttcher, SIGIR 2009): score(d) = sum_r w_r / (k + rank_r(d)),
  with rank_r counted from 1 and k = 60 by default. Order-independent in its inputs.
- ``fusion.weighted``: each retriever's scores normalised per query (min-max or z-score), then
  summed with weights; a document missing from a ranking contributes nothing from it.

Both take the child retrievers as parameters, so a fused pipeline has a YAML form::

    - fusion.rrf:
        retrievers:
          - retriever.bm25: {index: idx/bm25, k: 100}
          - retriever.dense: {index: idx/dense, k: 100}
"""
from __future__ import annotations

import math

from typing import Literal

import numpy as np

from ragkit.errors import ConfigError
from ragkit.records import Hit, Query, Ranking
from ragkit.registry import register
from ragkit.stage import QUERIES, RANKINGS, Retriever, Stage, param


class _Fusion(Retriever):
    retrievers: list[Stage] = param(help="the retrievers (stages taking queries) whose rankings are fused")
    weights: list[float] | None = param(None, help="one weight per retriever (default: all 1)")
    k: int = param(100, ge=1, help="hits kept per query after fusion")

    def validate(self) -> None:
        if not self.retrievers:
            raise ConfigError(f"'{self.key}': parameter 'retrievers' needs at least one retriever.")
        for i, r in enumerate(self.retrievers):
            if r.input_kind != QUERIES or r.output_kind != RANKINGS:
                raise ConfigError(f"'{self.key}': parameter 'retrievers' item #{i + 1} '{r.key}' is not a "
                                  f"retriever (it takes {r.input_kind} and gives {r.output_kind}).")
        if self.weights is not None and len(self.weights) != len(self.retrievers):
            raise ConfigError(f"'{self.key}': parameter 'weights' has {len(self.weights)} values for "
                              f"{len(self.retrievers)} retrievers.")

    def provides(self) -> frozenset[str]:
        common = None
        for r in self.retrievers:
            common = r.provides() if common is None else common & r.provides()
        return frozenset(common or ())

    def _setup(self) -> None:
        for r in self.retrievers:
            r.bind_context(base_dir=self._base_dir, progress=self._progress)
            r.setup()

    def run(self, batch: list[Query]) -> list[Ranking]:
        per_retriever = [r(batch) for r in self.retrievers]
        weights = self.weights or [1.0] * len(self.retrievers)
        out = []
        for qi, q in enumerate(batch):
            # each document's contributions, summed with math.fsum (correctly rounded), so the fused score and
            # hence ties do not depend on the order of the retrievers
            parts: dict[tuple[str, str | None], list[float]] = {}
            first: dict[tuple[str, str | None], Hit] = {}
            for w, rankings in zip(weights, per_retriever):
                hits = rankings[qi].hits
                for h, s in zip(hits, self._contributions(hits)):
                    key = (h.doc_id, h.chunk_id)
                    parts.setdefault(key, []).append(w * s)
                    if key not in first or (first[key].text is None and h.text is not None):
                        first[key] = h
            hits = [Hit(q.qid, d, math.fsum(ps), 0, first[(d, c)].text, c, first[(d, c)].meta)
                    for (d, c), ps in parts.items()]
            out.append(Ranking(q, tuple(hits)).top(self.k))
        return out

    def _contributions(self, hits: tuple[Hit, ...]) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError


@register("fusion.rrf")
class RRFFusion(_Fusion):
    """Reciprocal rank fusion: sum of w / (rrf_k + rank) over retrievers (rank from 1)."""

    rrf_k: int = param(60, ge=0, help="the RRF constant k in 1 / (k + rank)")

    def _contributions(self, hits: tuple[Hit, ...]) -> list[float]:
        return [1.0 / (self.rrf_k + h.rank + 1) for h in hits]


@register("fusion.weighted")
class WeightedFusion(_Fusion):
    """Weighted sum of per-query normalised scores (min-max or z-score)."""

    normalization: Literal["minmax", "zscore"] = param("minmax", help="per-query score normalisation")

    def _contributions(self, hits: tuple[Hit, ...]) -> list[float]:
        if not hits:
            return []
        s = np.array([h.score for h in hits], dtype=np.float64)
        if self.normalization == "minmax":
            span = s.max() - s.min()
            return list((s - s.min()) / span) if span > 0 else [1.0] * len(s)
        sd = s.std()
        return list((s - s.mean()) / sd) if sd > 0 else [0.0] * len(s)



def RRF(retrievers: list[Stage], **kwargs) -> RRFFusion:
    """``RRF([BM25Retriever(...), DenseRetriever(...)], k=100)``: shorthand for ``RRFFusion``."""
    return RRFFusion(retrievers=list(retrievers), **kwargs)
