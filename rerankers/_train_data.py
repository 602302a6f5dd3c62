"""Training data for rerankers: (query, positive) pairs, BM25-mined hard negatives, splits.

- Data comes from a :class:`ragkit.eval.datasets.Dataset` (``load_dataset("squad")``, any
  built-in name, or a generic folder with corpus.jsonl / queries.jsonl / qrels.tsv).
- Deterministic held-out split (:func:`split_qids`): queries are grouped by the title of their
  first relevant document (for SQuAD: the Wikipedia article), groups are numbered in the order
  they first appear, and every ``holdout_every``-th group (numbers holdout_every-1, 2*holdout_every-1,
  ...) is held out. Training never sees a held-out query *or a question about the same article*.
  Documents without titles fall back to one group per query.
- Hard negatives (:func:`mine_negatives`): ragkit's BM25 (``indexer.bm25``'s index builder and
  tokenizer with that stage's defaults) top ``depth`` documents of each query, minus its relevant
  ones (topped up with seeded random documents when BM25 matches fewer); each epoch samples
  ``negatives`` of them with a seeded generator.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from ragkit.errors import DataError
from ragkit.records import Hit, Query, Ranking


@dataclass(frozen=True)
class TrainQuery:
    qid: str
    text: str
    positives: tuple[str, ...]     # doc ids judged relevant (grade > 0)
    candidates: tuple[str, ...]    # BM25-mined hard negative doc ids, best first


def load(dataset: Any, data_dir: str | None = None):
    from ragkit.eval.datasets import load_dataset

    return load_dataset(dataset, data_dir=data_dir)


def query_groups(ds: Any) -> dict[str, str]:
    """qid -> group key (title of the first relevant document, else the qid)."""
    titles = {d.doc_id: (d.meta.get("title") if d.meta else None) for d in ds.corpus}
    out = {}
    for q in ds.queries:
        rel = [d for d, g in ds.qrels.get(q.qid, {}).items() if g > 0]
        t = titles.get(rel[0]) if rel else None
        out[q.qid] = f"title:{t}" if t else f"qid:{q.qid}"
    return out


def split_qids(ds: Any, holdout_every: int = 6) -> tuple[list[str], list[str]]:
    """(train qids, held-out qids) of the judged queries; see the module docstring."""
    if holdout_every < 2:
        raise DataError(f"holdout_every must be >= 2, got {holdout_every}")
    groups = query_groups(ds)
    number: dict[str, int] = {}
    train, held = [], []
    for qid in ds.judged_qids():
        g = groups[qid]
        number.setdefault(g, len(number))
        (held if number[g] % holdout_every == holdout_every - 1 else train).append(qid)
    return train, held


class BM25:
    """ragkit's own BM25 (:func:`ragkit.indexers.bm25.build_index`, in memory) over a corpus, with the
    defaults of the ``indexer.bm25`` stage (lucene, k1 1.5, b 0.75, NLTK stopwords, Porter stemmer):
    training negatives are mined by the same BM25 and tokenizer a pipeline retrieves with."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]) -> None:
        from ragkit.indexers._tokenize import Tokenizer
        from ragkit.indexers.bm25 import BM25Indexer, build_index
        from ragkit.records import Chunk

        self.doc_ids = list(doc_ids)
        d = {p.name: p.default for p in BM25Indexer.params_info()}
        cfg = BM25Indexer(path="-").tokenizer_config
        chunks = [Chunk(i, i, t, 0, len(t)) for i, t in zip(self.doc_ids, texts)]
        self.index = build_index(chunks, k1=d["k1"], b=d["b"], delta=d["delta"], method=d["method"],
                                 tokenizer=cfg, store_text=False, progress=False)
        self.tokenizer = Tokenizer(cfg)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, (doc id, score) of its top ``k`` documents with a positive score."""
        idx, out = self.index, []
        for q in queries:
            rows, scores = idx.search(self.tokenizer.encode_query(q, idx.vocab_ids), k)
            out.append([(idx.doc_ids[int(r)], float(s)) for r, s in zip(rows.tolist(), scores.tolist()) if s > 0])
        return out


def bm25_rankings(ds: Any, qids: Sequence[str], k: int = 100, bm25: BM25 | None = None) -> list[Ranking]:
    """BM25 top-k Rankings (with passage text on hits) for the given queries."""
    texts = {d.doc_id: d.text for d in ds.corpus}
    bm25 = bm25 or BM25(list(texts), list(texts.values()))
    qmap = {q.qid: q for q in ds.queries}
    qs = [qmap[q] for q in qids]
    res = bm25.search([q.text for q in qs], k)
    return [Ranking(Query(q.qid, q.text), tuple(Hit(q.qid, d, s, 0, texts[d]) for d, s in row))
            for q, row in zip(qs, res)]


def mine_negatives(ds: Any, qids: Sequence[str], depth: int = 20, bm25: BM25 | None = None) -> list[TrainQuery]:
    """One :class:`TrainQuery` per judged qid, with BM25 top-``depth`` non-relevant doc ids."""
    if not ds.corpus:
        raise DataError(f"dataset {ds.name!r} has no corpus to mine negatives from.")
    texts = {d.doc_id: d.text for d in ds.corpus}
    bm25 = bm25 or BM25(list(texts), list(texts.values()))
    qmap = {q.qid: q for q in ds.queries}
    qs = [qmap[q] for q in qids]
    res = bm25.search([q.text for q in qs], depth + 8)
    out = []
    for q, row in zip(qs, res):
        pos = tuple(sorted(d for d, g in ds.qrels.get(q.qid, {}).items() if g > 0 and d in texts))
        if not pos:
            continue
        cands = tuple(d for d, _ in row if d not in pos)[:depth]
        if len(cands) < depth:  # few lexical matches: top up with seeded random documents
            rng = random.Random(q.qid)
            have = set(cands) | set(pos)
            pool = [d for d in texts if d not in have]
            cands += tuple(rng.sample(pool, min(depth - len(cands), len(pool))))
        out.append(TrainQuery(q.qid, q.text, pos, cands))
    return out


def epoch_examples(queries: Sequence[TrainQuery], negatives: int, seed: int, epoch: int) -> list[tuple[str, str, int]]:
    """(qid, doc_id, label) triples for one epoch: every positive, plus ``negatives`` sampled
    hard negatives per query, shuffled. Deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    ex = []
    for q in queries:
        for p in q.positives:
            ex.append((q.qid, p, 1))
        k = min(negatives, len(q.candidates))
        for d in rng.sample(list(q.candidates), k):
            ex.append((q.qid, d, 0))
    rng.shuffle(ex)
    return ex


def length_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 50) -> list[list[int]]:
    """Batches of similar length: pools of ``pool`` batches are sorted by length and cut into
    batches, then the batches are shuffled (seeded) so lengths do not trend over an epoch."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    out = []
    size = batch_size * pool
    for s in range(0, len(idx), size):
        chunk = sorted(idx[s: s + size], key=lambda i: (lengths[i], i))
        out.extend(chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out
