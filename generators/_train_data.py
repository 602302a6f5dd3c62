"""RAG training examples for ``ragkit train-generator``.

From a :class:`ragkit.eval.datasets.Dataset` with answers and qrels (``squad``, ``nq-open`` or a
generic folder), one example per question: the question, ``k`` passages -- the gold passage and
``k - 1`` hard negatives mined by ragkit's own BM25 (:func:`ragkit.rerankers._train_data.mine_negatives`:
the ``indexer.bm25`` defaults and tokenizer) -- with the gold passage at a seeded random position, and
the target ``"<answer> [n]"`` (the first gold answer, cited by the gold passage's number), followed by
the end-of-turn token. Examples whose gold answer no longer appears in the gold passage once it is cut
to ``max_passage_tokens`` are skipped (the target would not be supported by the prompt).

Splits are by question: :func:`ragkit.rerankers._train_data.split_qids` (question groups by the title
of their gold document; every ``holdout_every``-th group held out). Held-out questions, and for
SQuAD the questions of the paragraphs in ragkit's bundled demo sample (``data/squad_sample``, scored
by ``ragkit demo``), never reach training; the gold passages of held-out questions are not used as
negatives either. ``dev_every``: every n-th remaining group is a dev set (loss only).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ragkit.errors import DataError


@dataclass(frozen=True)
class RAGExample:
    dataset: str
    qid: str
    question: str
    passages: tuple[tuple[str, str, str | None], ...]   # (doc_id, text, title) in prompt order
    gold_pos: int                                       # 0-based position of the gold passage
    answer: str

    @property
    def target(self) -> str:
        return f"{self.answer} [{self.gold_pos + 1}]"


def parse_range(value: str | int, what: str) -> tuple[int, int]:
    """``"4"`` or ``4`` -> (4, 4); ``"3-5"`` -> (3, 5)."""
    s = str(value).strip()
    m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", s)
    if not m:
        raise DataError(f"train-generator: {what} is {value!r}; give a number or a range like 3-5.")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if a < 1 or b < a:
        raise DataError(f"train-generator: {what} is {value!r}; it needs 1 <= low <= high.")
    return a, b


def demo_paragraphs() -> set[str]:
    """Texts of the paragraphs of ragkit's bundled demo sample (kept out of SQuAD training)."""
    from ragkit.eval.datasets import bundled_dir, read_corpus_jsonl

    f = bundled_dir() / "squad_sample" / "corpus.jsonl"
    return {d.text.strip() for d in read_corpus_jsonl(f)} if f.exists() else set()


def split(ds: Any, holdout_every: int, dev_every: int) -> dict[str, list[str]]:
    """{"train", "dev", "heldout", "excluded"} qids of a dataset's answered, judged questions."""
    from ragkit.rerankers._train_data import query_groups, split_qids

    answered = set(ds.answered_qids())
    if not answered:
        raise DataError(f"dataset {ds.name!r} has no gold answers (answers.jsonl in a generic folder, "
                        f"{{\"qid\": ..., \"answers\": [...]}} per line); train-generator needs a target answer per "
                        f"question. Use a dataset with answers (squad, nq-open) or add answers.jsonl.")
    if not ds.judged_qids():
        raise DataError(f"dataset {ds.name!r} has no qrels (a gold passage per question); train-generator needs "
                        f"the passage each answer comes from. Add qrels.tsv or use squad / nq-open.")
    train_q, held = split_qids(ds, holdout_every)
    excluded: list[str] = []
    if ds.name.startswith("squad"):
        demo = demo_paragraphs()
        texts = {d.doc_id: d.text.strip() for d in ds.corpus}
        keep = []
        for q in train_q:
            rel = [d for d, g in ds.qrels.get(q, {}).items() if g > 0]
            (excluded if any(texts.get(d) in demo for d in rel) else keep).append(q)
        train_q = keep
    groups = query_groups(ds)
    number: dict[str, int] = {}
    train, dev = [], []
    for q in train_q:
        if q not in answered:
            continue
        g = number.setdefault(groups[q], len(number))
        (dev if dev_every and g % dev_every == dev_every - 1 else train).append(q)
    return {"train": train, "dev": dev, "heldout": [q for q in held if q in answered], "excluded": excluded}


def build_examples(ds: Any, qids: Sequence[str], *, passages: tuple[int, int], depth: int, seed: int,
                   avoid_docs: set[str] = frozenset(), fits: Any = None) -> tuple[list[RAGExample], int]:
    """Examples for ``qids`` (see the module docstring); ``fits(example) -> bool`` filters out examples
    whose answer is cut from the gold passage. Returns (examples, number skipped)."""
    from ragkit.rerankers._train_data import BM25, mine_negatives

    if not qids:
        return [], 0
    docs = {d.doc_id: d for d in ds.corpus}
    pool = [d for d in docs if d not in avoid_docs]
    bm25 = BM25(pool, [docs[d].text for d in pool])
    mined = mine_negatives(ds, list(qids), depth=depth, bm25=bm25)
    rng = random.Random(seed)
    out, skipped = [], 0
    for tq in mined:
        answers = ds.answers.get(tq.qid) or []
        if not answers:
            skipped += 1
            continue
        k = rng.randint(*passages)
        negs = [d for d in tq.candidates if d not in avoid_docs]
        negs = rng.sample(negs, min(k - 1, len(negs)))
        pos = rng.randint(0, len(negs))
        order = negs[:pos] + [tq.positives[0]] + negs[pos:]
        title = lambda d: (docs[d].meta or {}).get("title")  # noqa: E731
        ex = RAGExample(ds.name, tq.qid, tq.text, tuple((d, docs[d].text, title(d)) for d in order), pos,
                        str(answers[0]).strip())
        if fits is not None and not fits(ex):
            skipped += 1
            continue
        out.append(ex)
    return out, skipped


def answer_in(answer: str, text: str) -> bool:
    from ragkit.eval.metrics import normalize_answer

    a = normalize_answer(answer)
    return bool(a) and a in normalize_answer(text)


def load(dataset: Any, data_dir: str | Path | None = None) -> Any:
    from ragkit.eval.datasets import load_dataset

    return load_dataset(dataset, data_dir=data_dir)


__all__ = ["RAGExample", "build_examples", "split", "parse_range", "answer_in", "load", "demo_paragraphs"]
