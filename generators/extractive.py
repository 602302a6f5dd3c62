"""``generator.extractive``: a model-free answer stage that returns the best-matching sentence.

A classic lexical baseline for question answering over retrieved passages (sentence
retrieval, as in early TREC QA systems): the top ``n`` passages are split into sentences,
each sentence is scored by the IDF-weighted overlap of its terms with the question's (IDF
computed over the sentences of those passages), ties broken by passage rank, and the best
sentence is the answer, citing its passage. It needs no weights, so the default pipeline
runs anywhere; ``generator.hf`` produces real generated answers.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter

from ragkit.records import Answer, Ranking
from ragkit.registry import register
from ragkit.stage import Generator, param

_WORD = re.compile(r"\w+", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_STOP = frozenset("""a an and are as at be by for from has have he her his how i in is it its of on or she that the
their them they this to was were what when where which who whom whose why will with you your did do does""".split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text.strip()) if s.strip()]


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@register("generator.extractive")
class ExtractiveGenerator(Generator):
    """Model-free answers: the passage sentence with the highest IDF-weighted overlap with the question."""

    n: int = param(3, ge=1, help="number of top passages searched for the answer sentence")
    max_chars: int = param(300, ge=10, help="answers longer than this are cut at a word boundary")



    def run(self, batch: list[Ranking]) -> list[Answer]:
        return [self._answer(r) for r in batch]

    def _answer(self, r: Ranking) -> Answer:
        t0 = time.perf_counter()
        cands = [(rank, h.doc_id, s) for rank, h in enumerate(r.hits[: self.n]) for s in sentences(h.text or "")]
        if not cands:
            return Answer(r.qid, "", (), {"generate": time.perf_counter() - t0}, ranking=r, query=r.query)
        df: Counter = Counter()
        sent_terms = []
        for _, _, s in cands:
            ts = set(_terms(s))
            sent_terms.append(ts)
            df.update(ts)
        n = len(cands)
        q = set(_terms(r.query.text))
        best = max(range(n), key=lambda i: (sum(math.log(1 + n / df[t]) for t in q & sent_terms[i]), -cands[i][0], -i))
        text = cands[best][2]
        if len(text) > self.max_chars:
            text = text[: self.max_chars].rsplit(" ", 1)[0] + " ..."
        return Answer(r.qid, text, (cands[best][1],), {"generate": time.perf_counter() - t0}, ranking=r, query=r.query)
