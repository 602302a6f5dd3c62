"""Machinery shared by the rerankers: top-n selection, tail handling, batching, truncation.

A reranker rescores the top ``top_n`` hits of each incoming ranking. The hits below them are
either kept under the reranked ones (``keep_rest: true``, their order unchanged) or cut.
All (query, passage) pairs of a batch of rankings are scored together: they are tokenized once,
sorted by length so that a batch holds pairs of similar length (little padding), scored in
batches of ``batch_size`` and scattered back to their original positions. Padding never
changes a score (attention masks; checked by the tests to 1e-5).

Truncation (documented, never silent): the query keeps at most ``query_max_tokens`` tokens; the
passage is cut at the end so the whole input fits ``max_length`` tokens. A hit whose passage was
cut carries ``meta["truncated"] = True``.

Ties: :class:`ragkit.records.Ranking` orders hits by (score desc, doc_id asc, chunk_id asc), so
equal scores are broken by id, the same way on every run.

Reproducible scores (batch neighbours, CPUs): a float32 forward pass is not batch-invariant. The
matrix kernels (oneDNN/MKL on x86-64, cuBLAS on GPU) pick different blockings and reduction orders
for different batch shapes, row positions and instruction sets, so the same (query, passage) pair
can score -0.0040730843 in one row and -0.0040730853 in the next (seen on an AMD EPYC), and an
AVX-512 Intel CPU differs from an AVX2 AMD one in the last bits. Two rules make rankings independent
of that noise:

1. identical model inputs in one call are scored once and share that score exactly (``score_sorted``
   deduplicates the token rows before batching), so equal inputs always tie and the tie is broken
   by doc id;
2. every reranker score is rounded to ``score_decimals`` decimals (default 4, i.e. 1e-4 on a logit
   or log-probability) before ranking. Float32 noise across batch shapes and CPUs is ~1e-6 on these
   scores, so scores of the same input computed in different batches or on different CPUs agree
   after rounding, except in the rare case (probability about noise / 1e-4) that the value lies
   within that noise of a rounding boundary; differences below 1e-4 are not meaningful relevance
   differences, and ties are broken by doc id. Set ``score_decimals`` higher to keep more digits.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from ragkit.errors import ConfigError, ModelNotFoundError, StageInputError
from ragkit.models import transformers_folder
from ragkit.records import Hit, Ranking
from ragkit.stage import RANKINGS, Stage, param

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


# -- model resolution and loading: ragkit.models, the one module for it --------------------------
def resolve_model(name: str, base_dir: str | Path | None = None) -> str:
    """A model name -> a local transformers folder (GGUF dequantised once and cached), through
    :func:`ragkit.models.transformers_folder`; a name that does not resolve raises
    :class:`ModelNotFoundError` saying how to get it. Never falls back to another model."""
    return str(transformers_folder(name, base_dir=base_dir, role="a reranker").path)


def load_error(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(f"model '{name}' could not be loaded offline: {exc}. Give a local checkpoint "
                              f"folder, or make the hub id available in the local hub cache.")


# -- truncation ------------------------------------------------------------------------------------
def cut_tokens(tokenizer: Any, text: str, budget: int) -> tuple[str, bool]:
    """Cut ``text`` after its first ``budget`` tokens (no special tokens), at a character offset."""
    if budget <= 0:
        return "", bool(text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= budget:
        return text, False
    return text[: offs[budget - 1][1]], True


def cut_many(tokenizer: Any, texts: Sequence[str], budget: int) -> tuple[list[str], list[bool], list[int]]:
    """Batch version of :func:`cut_tokens`; also returns each text's token count after cutting."""
    if not texts:
        return [], [], []
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out, cut, lens = [], [], []
    for t, offs in zip(texts, enc["offset_mapping"]):
        if budget <= 0:
            out.append(""), cut.append(bool(t)), lens.append(0)
        elif len(offs) > budget:
            out.append(t[: offs[budget - 1][1]]), cut.append(True), lens.append(budget)
        else:
            out.append(t), cut.append(False), lens.append(len(offs))
    return out, cut, lens


# -- batching --------------------------------------------------------------------------------------
def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """Pad id lists into (ids, mask) int64 tensors."""
    import torch

    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        else:
            ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, n - len(r):] = 1
    return ids, mask


def _row_key(row: dict) -> tuple:
    return tuple((k, tuple(v)) for k, v in sorted(row.items()))


def score_sorted(encoded: Sequence[dict], batch_size: int, fn: Callable[[list[dict]], Sequence[float]]) -> list[float]:
    """Score encoded inputs in length-sorted batches; scores come back in the input order.

    Identical rows are scored once and share the score, so equal inputs score exactly the same
    whatever their batch neighbours (see the module docstring).
    """
    first: dict[tuple, int] = {}
    owner = [first.setdefault(_row_key(e), i) for i, e in enumerate(encoded)]
    uniq = sorted(first.values())
    scores = [0.0] * len(encoded)
    for idx in sorted_batches([len(encoded[u]["input_ids"]) for u in uniq], batch_size):
        rows = [uniq[i] for i in idx]
        out = fn([encoded[i] for i in rows])
        for i, s in zip(rows, out):
            scores[i] = float(s)
    return [scores[o] for o in owner]


def round_score(score: float, decimals: int) -> float:
    """``score`` rounded to ``decimals`` decimals (Python's correctly rounded ``round``; -0.0 -> 0.0)."""
    return round(float(score), decimals) + 0.0


def single_token_id(tokenizer: Any, word: str, what: str, key: str) -> int:
    """The id of the one vocabulary token for ``word`` (as written in text, or as a raw token)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return int(ids[0])
    tid = tokenizer.convert_tokens_to_ids(word)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
        return int(tid)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    raise ConfigError(f"'{key}': parameter '{what}' is {word!r}, but the model's vocabulary has no single token "
                      f"for it (it splits into {pieces}). Set '{what}' to a word that is one token in this "
                      f"vocabulary (the word the checkpoint was trained to emit).")


# -- the stage base --------------------------------------------------------------------------------
class RerankerBase(Stage):
    """Base of the rerankers: rescores the top ``top_n`` hits of each ranking."""

    top_n: int = param(100, ge=1, help="rerank this many top hits of each incoming ranking")
    keep_rest: bool = param(True, help="keep the hits below top_n under the reranked ones (true) or cut them (false)")
    batch_size: int = param(32, ge=1, help="pairs per forward pass (pairs are sorted by length first)")
    max_length: int = param(512, ge=16, help="token budget of one model input; longer passages are cut at the end")
    query_max_tokens: int = param(64, ge=1, help="the query keeps at most this many tokens")
    device: Device = param("auto", help="auto = cuda when available, else cpu")
    dtype: DType = param("auto", help="auto = bfloat16/float16 on GPU, float32 on CPU")
    score_decimals: int = param(4, ge=0, le=12, help="round scores to this many decimals before ranking, so float "
                                                     "noise of batch shapes and CPUs cannot reorder hits (ties: doc id)")

    input_kind = RANKINGS
    output_kind = RANKINGS

    def validate(self) -> None:
        if self.query_max_tokens >= self.max_length - 8:
            raise ConfigError(f"'{self.key}': parameter 'query_max_tokens' ({self.query_max_tokens}) must leave room "
                              f"for the passage within 'max_length' ({self.max_length}); lower it.")

    def needs(self) -> frozenset[str]:
        return frozenset({"text"})

    def provides(self) -> frozenset[str]:
        return frozenset({"text"})

    def _model_path(self) -> str:
        return resolve_model(self.model, self._base_dir)  # type: ignore[attr-defined]

    # subclasses implement: score a list of (query, passage) pairs -> (scores, truncated flags);
    # ``sizes`` gives how many consecutive pairs belong to each ranking (for pairwise rerankers)
    def score_pairs(self, queries: Sequence[str], passages: Sequence[str],
                    sizes: Sequence[int] | None = None) -> tuple[list[float], list[bool]]:
        raise NotImplementedError

    def run(self, batch: list[Ranking]) -> list[Ranking]:
        heads: list[list[Hit]] = []
        q_texts: list[str] = []
        p_texts: list[str] = []
        for r in batch:
            if not isinstance(r, Ranking):
                raise StageInputError(f"'{self.key}': expected Ranking records, got {type(r).__name__}")
            head = list(r.hits[: self.top_n])
            for h in head:
                if h.text is None or not isinstance(h.text, str):
                    raise StageInputError(
                        f"'{self.key}': hit doc_id={h.doc_id!r} (query {r.qid!r}, rank {h.rank}) has no text. "
                        f"Add `text: true` to the retriever or a text lookup stage before the reranker.")
                q_texts.append(r.query.text)
                p_texts.append(h.text)
            heads.append(head)
        sizes = [len(h) for h in heads]
        scores, cut = self.score_pairs(q_texts, p_texts, sizes) if p_texts else ([], [])
        out, j = [], 0
        for r, head in zip(batch, heads):
            new: list[Hit] = []
            for h in head:
                meta = dict(h.meta)
                meta["first_stage_score"] = h.score
                if cut[j]:
                    meta["truncated"] = True
                new.append(replace(h, score=round_score(scores[j], self.score_decimals), meta=meta))
                j += 1
            if self.keep_rest and len(r.hits) > len(head):
                floor = min((h.score for h in new), default=0.0)
                for i, h in enumerate(r.hits[len(head):]):
                    meta = dict(h.meta)
                    meta["first_stage_score"] = h.score
                    # below every reranked hit, in the incoming order
                    new.append(replace(h, score=floor - 1.0 - i, meta=meta))
            out.append(Ranking(r.query, tuple(new)))
        return out


def encode_template(tokenizer: Any, render: Callable[..., str], queries: Sequence[str],
                    passages: Sequence[Sequence[str]], max_length: int, query_budget: int,
                    add_special_tokens: bool = True) -> tuple[list[dict], list[bool]]:
    """Token ids of ``render(query, *passages)`` cut to ``max_length`` by cutting the passages.

    The query keeps at most ``query_budget`` tokens; the room left by the template and the
    query is shared equally by the passages of one input, each cut at its end (so the text
    after the passages, e.g. ``Relevant:``, is always kept). Returns id rows and, per input,
    whether a passage was cut.
    """
    uq = sorted(set(queries))
    cut_q, _, _ = cut_many(tokenizer, uq, query_budget)
    qmap = dict(zip(uq, cut_q))

    def ids_of(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    overhead = dict(zip(uq, (len(x) for x in ids_of([render(qmap[q], *([""] * len(passages[0]) if passages else []))
                                                        for q in uq]))))
    flat = sorted({p for ps in passages for p in ps})
    offsets = dict(zip(flat, tokenizer(flat, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]))

    def cut(p: str, budget: int) -> tuple[str, bool]:
        offs = offsets[p]
        if len(offs) <= budget:
            return p, False
        return (p[: offs[budget - 1][1]] if budget > 0 else ""), True

    texts, was_cut, budgets = [], [], []
    for q, ps in zip(queries, passages):
        budget = max(0, (max_length - overhead[q]) // max(len(ps), 1))
        cuts = [cut(p, budget) for p in ps]
        texts.append(render(qmap[q], *(c[0] for c in cuts)))
        was_cut.append(any(c[1] for c in cuts))
        budgets.append(budget)
    rows = ids_of(texts)
    for i, r in enumerate(rows):  # rare: tokens merge differently at the junctions; shave and retry
        tries = 0
        while len(r) > max_length and tries < 8:
            budgets[i] = max(0, budgets[i] - (len(r) - max_length) - 1)
            cuts = [cut(p, budgets[i]) for p in passages[i]]
            r = ids_of([render(qmap[queries[i]], *(c[0] for c in cuts))])[0]
            was_cut[i] = True
            tries += 1
        rows[i] = r[:max_length] if len(r) > max_length else r
    return [{"input_ids": r} for r in rows], was_cut
