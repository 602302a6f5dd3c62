"""Metrics: IR measures through ir-measures, and answer metrics (EM, token F1, EM-in).

IR metrics take any name ir-measures parses (``nDCG@10``, ``RR@10``/``MRR@10``, ``R@100``,
``AP``/``MAP``, ``P@10``, ``Success@5``, ``P(rel=2)@5``, ...). A ranking is scored in its own
order: hits are de-duplicated by ``doc_id`` keeping the first (best) occurrence, so a document
scores as its best chunk (max-passage), and the run handed to ir-measures gives rank ``r`` the
score ``-r`` so ties never reorder it.

Answer metrics compare a predicted string with every gold answer after SQuAD normalisation
(lower case, no punctuation, no articles ``a/an/the``, single spaces) and keep the best:
``EM`` exact match, ``F1`` token-overlap F1, ``EM-in`` whether a normalised gold answer occurs
inside the normalised prediction (substring, as FlashRAG's ``sub_em``), the usual score for long generated answers.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, did_you_mean

DEFAULT_IR = ("nDCG@10", "RR@10", "R@100", "AP", "P@10")
DEFAULT_ANSWER = ("EM", "F1", "EM-in")
_ANSWER_ALIASES = {"em": "EM", "exact_match": "EM", "exactmatch": "EM", "f1": "F1", "em-in": "EM-in",
                   "em_in": "EM-in", "emin": "EM-in", "contains": "EM-in"}
_COMMON = ["nDCG@10", "RR@10", "MRR@10", "R@100", "AP", "MAP", "P@10", "Success@10", "EM", "F1", "EM-in"]


@dataclass(frozen=True)
class Metric:
    """A parsed metric: ``name`` as the user wrote it, ``kind`` "ir" or "answer", ``measure`` the
    ir-measures object (IR) or the canonical answer-metric name."""

    name: str
    kind: str
    measure: Any

    def __str__(self) -> str:
        return self.name


def parse_metric(name: str) -> Metric:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"metric names must be non-empty strings, got {name!r}")
    name = name.strip()
    answer = _ANSWER_ALIASES.get(name.lower())
    if answer:
        return Metric(name, "answer", answer)
    import ir_measures

    try:
        measure = ir_measures.parse_measure(name)
    except (NameError, ValueError, SyntaxError, TypeError, AttributeError) as exc:
        raise ConfigError(f"unknown metric {name!r} ({exc}). Use an ir-measures name (e.g. "
                          f"{', '.join(DEFAULT_IR)}) or one of EM, F1, EM-in.{did_you_mean(name, _COMMON)}") from None
    return Metric(name, "ir", measure)


def parse_metrics(names: Iterable[str] | str) -> list[Metric]:
    if isinstance(names, str):
        names = [n for n in re.split(r"[,\s]+", names) if n]
    out, seen = [], set()
    for n in names:
        m = parse_metric(n)
        key = (m.kind, str(m.measure))
        if key not in seen:
            seen.add(key)
            out.append(m)
    if not out:
        raise ConfigError("no metrics given")
    return out


# -------------------------------------------------------------------------------------------------
# IR metrics


def run_from_hits(hits: Iterable[Any]) -> dict[str, float]:
    """``{doc_id: score}`` for one ranking: first occurrence of each doc id, score = -position."""
    out: dict[str, float] = {}
    for h in hits:
        did = h.doc_id if not isinstance(h, str) else h
        if did not in out:
            out[did] = -float(len(out))
    return out


def ir_per_query(metrics: Sequence[Metric], qrels: Mapping[str, Mapping[str, int]],
                 run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric name: {qid: value}}`` for every qid of ``qrels`` (a query missing from ``run``
    scores as an empty ranking)."""
    import ir_measures

    ir = [m for m in metrics if m.kind == "ir"]
    out: dict[str, dict[str, float]] = {m.name: {} for m in ir}
    if not ir or not qrels:
        return out
    qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
    run = {q: dict(run.get(q, {})) for q in qrels}
    by_measure: dict[str, list[str]] = {}
    for m in ir:
        by_measure.setdefault(str(m.measure), []).append(m.name)
    try:
        results = list(ir_measures.iter_calc([m.measure for m in ir], qrels, run))
    except (ValueError, KeyError, NameError, RuntimeError) as exc:
        raise ConfigError(f"ir-measures cannot compute {', '.join(m.name for m in ir)}: {exc}") from None
    for r in results:
        for name in by_measure.get(str(r.measure), ()):
            out[name][r.query_id] = float(r.value)
    # a query with an empty ranking may be skipped by the provider; every measure is 0 for it
    for name in out:
        for q in qrels:
            out[name].setdefault(q, 0.0)
    return out


# -------------------------------------------------------------------------------------------------
# answer metrics (SQuAD normalisation)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation, drop articles, collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, gold: str) -> float:
    """1.0 when the normalised gold answer is a substring of the normalised prediction."""
    p, g = normalize_answer(prediction), normalize_answer(gold)
    if not g:
        return float(not p)
    return float(g in p)


_ANSWER_FNS = {"EM": exact_match, "F1": token_f1, "EM-in": contains_answer}


def answer_score(metric: str, prediction: str, golds: Sequence[str]) -> float:
    """The best score of ``prediction`` over the gold answers (0.0 when there are none). Passage citations
    (``[1]``, ``[1, 2]``) are removed from the prediction first: they point at sources, they are not part
    of the answer (``"Denver Broncos [2]"`` is an exact match of ``"Denver Broncos"``)."""
    from ragkit.kv.prompt import strip_citations

    fn = _ANSWER_FNS[_ANSWER_ALIASES.get(metric.lower(), metric)]
    prediction = strip_citations(prediction or "")
    return max((fn(prediction, g) for g in golds), default=0.0)


def answer_per_query(metrics: Sequence[Metric], predictions: Mapping[str, str],
                     answers: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """``{metric name: {qid: value}}`` for every qid of ``answers`` (no prediction = empty string)."""
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        if m.kind != "answer":
            continue
        out[m.name] = {q: answer_score(m.measure, predictions.get(q, ""), golds) for q, golds in answers.items()}
    return out


__all__ = ["Metric", "parse_metric", "parse_metrics", "run_from_hits", "ir_per_query", "normalize_answer",
           "exact_match", "token_f1", "contains_answer", "answer_score", "answer_per_query",
           "DEFAULT_IR", "DEFAULT_ANSWER"]
