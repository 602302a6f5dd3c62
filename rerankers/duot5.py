"""duoT5 pairwise reranker (Pradeep et al., "The Expando-Mono-Duo Design Pattern for Text
Ranking with Pretrained Sequence-to-Sequence Models", 2021).

For every ordered pair (d_i, d_j) of the top ``top_n`` hits, a T5 model reads
``Query: {q} Document0: {d_i} Document1: {d_j} Relevant:`` and p_ij = P(true | true or false)
at the first decoder step is the probability that d_i is more relevant than d_j. Scores are
aggregated with the paper's symmetric sum, s_i = sum_{j != i} (p_ij + (1 - p_ji)). The cost is
n(n-1) model calls per query, so ``top_n`` defaults to 10 (use it after monoT5). The room left by
the template and the query is shared equally by the two documents.
"""
from __future__ import annotations

from typing import Sequence

from ragkit.errors import ConfigError
from ragkit.registry import register
from ragkit.stage import param

from ._base import RerankerBase, encode_template, score_sorted
from .monot5 import load_seq2seq, true_false_logprob

DUOT5_TEMPLATE = "Query: {query} Document0: {doc0} Document1: {doc1} Relevant:"


@register("reranker.duot5")
class DuoT5Reranker(RerankerBase):
    """duoT5: pairwise preferences p(d_i > d_j) aggregated by symmetric sum."""

    model: str = param(help="duoT5-style checkpoint (local folder or hub id), e.g. castorini/duot5-base-msmarco")
    top_n: int = param(10, ge=2, help="rerank this many top hits (n(n-1) model calls per query)")
    true_token: str = param("true", help="the word the checkpoint emits when Document0 is more relevant")
    false_token: str = param("false", help="the word the checkpoint emits otherwise")
    template: str = param(DUOT5_TEMPLATE, help="prompt with {query}, {doc0} and {doc1}")

    def validate(self) -> None:
        super().validate()
        for f in ("{query}", "{doc0}", "{doc1}"):
            if f not in self.template:
                raise ConfigError(f"'{self.key}': parameter 'template' must contain {f}; got {self.template!r}")

    def _setup(self) -> None:
        load_seq2seq(self)

    def _forward(self, rows: list[dict]) -> list[float]:
        return true_false_logprob(self, rows).exp().tolist()

    def preferences(self, query: str, passages: Sequence[str]) -> dict[tuple[int, int], float]:
        """p_ij for every ordered pair i != j of ``passages``."""
        self.setup()
        pairs = [(i, j) for i in range(len(passages)) for j in range(len(passages)) if i != j]
        rows, _ = encode_template(self._tok,
                                  lambda q, a, b: self.template.format(query=q, doc0=a, doc1=b),
                                  [query] * len(pairs), [(passages[i], passages[j]) for i, j in pairs],
                                  self.max_length, self.query_max_tokens)
        return dict(zip(pairs, score_sorted(rows, self.batch_size, self._forward)))

    def score_pairs(self, queries: Sequence[str], passages: Sequence[str],
                    sizes: Sequence[int] | None = None) -> tuple[list[float], list[bool]]:
        if sizes is None:
            sizes = [len(queries)] if queries else []
        scores: list[float] = []
        cut: list[bool] = []
        i = 0
        for n in sizes:
            group = list(passages[i:i + n])
            p = self.preferences(queries[i], group) if n > 1 else {}
            for a in range(n):
                scores.append(sum(p[(a, b)] + (1.0 - p[(b, a)]) for b in range(n) if b != a))
            _, c = encode_template(self._tok,
                                   lambda q, a, b: self.template.format(query=q, doc0=a, doc1=b),
                                   [queries[i]] * n, [(g, g) for g in group], self.max_length, self.query_max_tokens)
            cut.extend(c)
            i += n
        return scores, cut
