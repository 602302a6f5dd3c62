"""Sharded BM25 with global statistics: build in partitions (on Dask workers or in process), search exactly.

BM25's idf needs the document frequency of every term over the *whole* corpus and its length
normalisation needs the corpus' average length, so a shard scored with its own statistics would rank
differently from one index. The build therefore runs in three steps:

1. **map** (per partition, on a worker): tokenize the partition's chunks, count each term's document
   frequency and the partition's total length. Only these statistics (local vocabulary, df, counts,
   chunk ids) travel to the client; the tokenized texts stay on the worker.
2. **reduce** (client): merge vocabularies into one global vocabulary, add the document frequencies,
   take ``N`` and the average length over all partitions, and compute the global idf (and the
   ``bm25l``/``bm25+`` non-occurrence constants) with bm25s' own functions.
3. **build** (per partition, on a worker): map local term ids to global ids and compute the shard's
   score contributions with bm25s' own scorer, given the *global* idf and average length.

Every contribution is then the same float32 number the single index stores, and a query's score for a
unit is the same float64 sum in the same (query-term) order, so searching the shards and merging their
top-k by (score desc, doc_id, chunk_id) returns exactly the single index's ranking and scores
(tested). On disk::

    params.json      stage indexer.bm25, "sharded": true, the scoring/tokenizer parameters, totals
    vocab.json       the global vocabulary (term id = position), shared by every shard
    nonoccurrence.npy  (bm25l / bm25+) global per-term constants
    shards.json      the manifest (ragkit.artifacts), written last
    shard-00000/     data.npy indices.npy indptr.npy (over the global vocabulary) order.npy, the
                     shard's DocStore and shard.json
"""
from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragkit.artifacts import (DocStore, load_array, read_params, read_shard_manifest, shard_name,
                              write_params, write_shard_manifest)
from ragkit.errors import IndexArtifactError, StageInputError
from ragkit.records import Chunk

from ._tokenize import Tokenizer, TokenizerConfig

KEY = "indexer.bm25"


def shard_map(chunks: Sequence[Chunk], tokenizer: TokenizerConfig) -> tuple[dict, dict]:
    """Tokenize one partition. Returns ``(partial, summary)``: the partial stays on the worker,
    the summary (vocabulary, document frequencies, counts, ids) goes to the client."""
    from .bm25 import _check_chunks

    _check_chunks(chunks)
    docs, vocab = Tokenizer(tokenizer).encode_corpus(c.text for c in chunks)
    lens = [len(d) for d in docs]
    df = np.bincount(np.fromiter(itertools.chain.from_iterable(set(d) for d in docs), dtype=np.int64),
                     minlength=len(vocab)).astype(np.int64)
    # the token ids as one int32 buffer + offsets (4 B per token instead of ~36 B in Python lists)
    flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int32, count=sum(lens))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    del docs
    partial = {"tokens": flat, "offsets": offsets, "pairs": int(df.sum()), "ids": [c.chunk_id for c in chunks],
               "doc_ids": [c.doc_id for c in chunks], "texts": [c.text for c in chunks],
               "titles": [(c.meta or {}).get("title") for c in chunks]}
    summary = {"vocab": vocab, "df": df, "n": len(chunks), "total_len": int(sum(lens)),
               "ids": partial["ids"]}
    return partial, summary


def shard_reduce(summaries: list[dict], *, k1: float, b: float, delta: float, method: str) -> dict:
    """Global vocabulary, document frequencies, N, average length and idf from every partition."""
    from bm25s.scoring import _build_idf_array, _build_nonoccurrence_array, _select_idf_scorer, _select_tfc_scorer

    seen: dict[str, tuple[int, int]] = {}
    for p, s in enumerate(summaries):
        for j, cid in enumerate(s["ids"]):
            prev = seen.setdefault(cid, (p, j))
            if prev != (p, j):
                raise StageInputError(f"{KEY}: duplicate chunk id {cid!r} (record #{j + 1} of partition {p + 1}, "
                                      f"first seen as record #{prev[1] + 1} of partition {prev[0] + 1}); ids "
                                      f"must be unique.")
    gvocab: dict[str, int] = {}
    for s in summaries:
        for t in s["vocab"]:
            gvocab.setdefault(t, len(gvocab))
    n = sum(s["n"] for s in summaries)
    if not gvocab:
        raise StageInputError(f"{KEY}: none of the {n} chunks has a single term under the tokenizer; "
                              f"nothing to index.")
    df = np.zeros(len(gvocab), dtype=np.int64)
    remaps = []
    for s in summaries:
        r = np.fromiter((gvocab[t] for t in s["vocab"]), dtype=np.int64, count=len(s["vocab"]))
        df[r] += s["df"]
        remaps.append(r)
    total = sum(s["total_len"] for s in summaries)
    # np.mean over the int lengths, as bm25s computes it: an exact integer sum divided once
    avgdl = np.float64(total) / np.float64(n)
    dfs = dict(enumerate(df.tolist()))
    idf = _build_idf_array(doc_frequencies=dfs, n_docs=n, compute_idf_fn=_select_idf_scorer(method), dtype="float32")
    nonocc = None
    if method in ("bm25l", "bm25+"):
        nonocc = _build_nonoccurrence_array(doc_frequencies=dfs, n_docs=n, compute_idf_fn=_select_idf_scorer(method),
                                            calculate_tfc_fn=_select_tfc_scorer(method), l_d=avgdl, l_avg=avgdl,
                                            k1=k1, b=b, delta=delta, dtype="float32")
    # keys starting with "client_" stay on the client (ragkit.distributed ships the rest to the workers)
    return {"client_vocab": list(gvocab), "vocab_size": len(gvocab), "remaps": remaps, "idf": idf, "nonocc": nonocc,
            "avgdl": avgdl, "n": n,
            "num_terms": int(total), "k1": k1, "b": b, "delta": delta, "method": method}


def _csc(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, n_cols: int) -> tuple:
    """Column-compressed arrays of a sparse matrix given as unique (row, col, value) triples: the entries
    sorted by column, then row -- the canonical layout bm25s' own index build writes (its builders are
    private and differ between releases, so ragkit keeps its own)."""
    indptr = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n_cols), out=indptr[1:])
    order = np.lexsort((rows, cols))
    return data[order], rows[order], indptr


def shard_build(partial: dict, remap: np.ndarray, glob: dict) -> dict:
    """Score one partition's chunks with the global statistics (bm25s' scorer); arrays for one shard."""
    from bm25s.scoring import _build_scores_and_indices_for_matrix

    g = remap.astype(np.int64)[partial["tokens"]].tolist()
    off = partial["offsets"].tolist()
    docs = [g[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    del g
    n, v = len(docs), int(glob["vocab_size"])
    scores, rows, cols = _build_scores_and_indices_for_matrix(
        corpus_token_ids=docs, idf_array=glob["idf"], avg_doc_len=glob["avgdl"],
        doc_frequencies={0: partial["pairs"]}, k1=glob["k1"], b=glob["b"], delta=glob["delta"],
        nonoccurrence_array=glob["nonocc"], method=glob["method"], dtype="float32", int_dtype="int32",
        show_progress=False)
    data, indices, indptr = _csc(np.asarray(scores), np.asarray(rows), np.asarray(cols), v)
    ids, doc_ids = partial["ids"], partial["doc_ids"]
    order = np.empty(n, dtype=np.int32)
    order[sorted(range(n), key=lambda i: (doc_ids[i], ids[i]))] = np.arange(n, dtype=np.int32)
    return {"data": np.ascontiguousarray(data, dtype=np.float32), "indices": np.ascontiguousarray(indices, np.int32),
            "indptr": np.ascontiguousarray(indptr, dtype=np.int64), "order": order, "ids": ids, "doc_ids": doc_ids,
            "texts": partial["texts"], "titles": partial["titles"]}


def shard_save(d: Path, p: dict, store_text: bool) -> dict:
    """Write one shard folder (arrays + document store; on the worker that built it where it sees the
    temporary folder); returns the small record :func:`shard_write` needs."""
    from ragkit.artifacts import content_hash

    d.mkdir()  # not parents: the temporary folder is gone if the build was abandoned
    for name in ("data", "indices", "indptr", "order"):
        np.save(d / f"{name}.npy", p[name])
    titles = p["titles"] if any(t for t in p["titles"]) else None
    DocStore.write(d, p["ids"], p["doc_ids"], p["texts"] if store_text else [""] * len(p["ids"]), titles)
    h = content_hash(zip(p["ids"], p["doc_ids"], p["texts"]))
    return {"saved": True, "name": d.name, "count": len(p["ids"]), "nnz": int(len(p["data"])), "content_hash": h}


def shard_write(tmp: Path, payloads: list[dict], glob: dict, params: dict, store_text: bool) -> None:
    """Write the sharded index into ``tmp`` (a folder from atomic_folder); the manifest last. Each
    payload is a built shard, or the record of a shard a worker already saved (``"saved"``)."""
    from ragkit.artifacts import content_hash

    shards = []
    for i, p in enumerate(payloads):
        rec = p if p.get("saved") else shard_save(tmp / shard_name(i), p, store_text)
        if rec["name"] != shard_name(i) or not (tmp / rec["name"]).is_dir():
            raise IndexArtifactError(f"{tmp}: shard #{i} was not written where expected ({rec['name']}).")
        shards.append({k: rec[k] for k in ("name", "count", "nnz", "content_hash")})
    (tmp / "vocab.json").write_text(json.dumps(glob["client_vocab"], ensure_ascii=False), encoding="utf-8")
    if glob["nonocc"] is not None:
        np.save(tmp / "nonoccurrence.npy", np.asarray(glob["nonocc"], dtype=np.float32))
    full = {**params, "sharded": True, "num_shards": len(shards), "num_docs": glob["n"],
            "vocab_size": glob["vocab_size"], "nnz": int(sum(s["nnz"] for s in shards)),
            "num_terms": glob["num_terms"], "avg_doc_len": float(glob["avgdl"]),
            "content_hash": content_hash(s["content_hash"] for s in shards)}
    write_params(tmp, full)
    write_shard_manifest(tmp, KEY, uuid.uuid4().hex, shards)


class ShardedBM25Index:
    """A sharded BM25 folder in memory: the shards (BM25Index objects over the global vocabulary)
    searched one after another and merged exactly. Same reading interface as BM25Index."""

    def __init__(self, params: dict, shards: list, vocab: list[str], manifest: dict) -> None:
        self.params, self.shards, self.vocab, self.manifest = params, shards, vocab, manifest
        self.vocab_ids = shards[0].vocab_ids if shards else {t: i for i, t in enumerate(vocab)}
        self.offsets = np.cumsum([0] + [s.num_docs for s in shards])
        self.ids = [x for s in shards for x in s.ids]
        self.doc_ids = [x for s in shards for x in s.doc_ids]

    @property
    def num_docs(self) -> int:
        return int(self.offsets[-1])

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_dict(self.params["tokenizer"])

    def _locate(self, row: int) -> tuple[Any, int]:
        s = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.shards[s], row - int(self.offsets[s])

    def text(self, row: int) -> str | None:
        sh, r = self._locate(row)
        return sh.text(r)

    def title(self, row: int) -> str | None:
        sh, r = self._locate(row)
        return sh.title(r)

    def search(self, term_ids: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (global rows, scores): each shard's top ``k``, merged by (score desc, doc_id, chunk_id)."""
        rows_all, scores_all = [], []
        for off, sh in zip(self.offsets, self.shards):
            r, s = sh.search(term_ids, k)
            rows_all.append(r + off)
            scores_all.append(s)
        return merge_topk(np.concatenate(rows_all), np.concatenate(scores_all), self.doc_ids, self.ids, k)

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True, expect_shards: int | None = None) -> "ShardedBM25Index":
        folder = Path(folder)
        params, vocab, manifest = load_head(folder, expect_shards)
        nonocc = load_nonocc(folder, params, mmap)
        vocab_ids = {t: i for i, t in enumerate(vocab)}
        shards = [load_shard(folder, s, params, vocab, vocab_ids, nonocc, mmap) for s in manifest["shards"]]
        return cls(params, shards, vocab, manifest)


def load_head(folder: Path, expect_shards: int | None = None) -> tuple[dict, list[str], dict]:
    """What every reader of a sharded BM25 folder needs first: params, global vocabulary, checked manifest."""
    from .bm25 import FORMAT

    params = read_params(folder, expect_key=KEY)
    if params.get("format") != FORMAT:
        raise IndexArtifactError(f"{folder}: BM25 index format {params.get('format')!r}, this ragkit reads "
                                 f"format {FORMAT}; rebuild the index.")
    manifest = read_shard_manifest(folder, expect_stage=KEY, expect_shards=expect_shards)
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexArtifactError(f"{folder}: missing or corrupt vocab.json ({exc}); rebuild the index.") from None
    return params, vocab, manifest


def load_nonocc(folder: Path, params: dict, mmap: bool) -> Any:
    from .bm25 import _plain

    return _plain(load_array(folder, "nonoccurrence.npy", mmap=mmap)) if params["method"] in ("bm25l", "bm25+") \
        else None


def load_shard(folder: Path, s: dict, params: dict, vocab: list[str], vocab_ids: dict, nonocc: Any,
               mmap: bool) -> Any:
    """One shard (the manifest's entry ``s``) as a BM25Index over the global vocabulary."""
    from .bm25 import BM25Index, _plain

    d = folder / s["name"]
    data, indices, indptr, order = (_plain(load_array(d, f"{a}.npy", mmap=mmap))
                                    for a in ("data", "indices", "indptr", "order"))
    store = DocStore.load(d)
    if len(indptr) != len(vocab) + 1 or len(order) != len(store) or len(store) != s["count"] \
            or len(data) != len(indices) or int(indptr[-1]) != len(data):
        raise IndexArtifactError(f"{d}: corrupt BM25 shard ({len(store)} texts, {len(order)} order entries "
                                 f"for {s['count']} units; {len(indptr)} column pointers for a vocabulary of "
                                 f"{len(vocab)}); rebuild the index.")
    return BM25Index(params, data, indices, indptr, nonocc, vocab, order, store.ids, store.doc_ids,
                     titles=store.titles, docstore=store, vocab_ids=vocab_ids)


def merge_topk(rows: np.ndarray, scores: np.ndarray, doc_ids: Sequence[str], ids: Sequence[str],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of several shards' candidates by (score desc, doc_id asc, chunk_id asc)."""
    if not len(rows):
        return rows.astype(np.int64), scores
    sl = scores.tolist()
    rl = rows.tolist()
    order = sorted(range(len(rl)), key=lambda i: (-sl[i], doc_ids[rl[i]], ids[rl[i]] or ""))[:k]
    return np.asarray([rl[i] for i in order], dtype=np.int64), np.asarray([sl[i] for i in order], dtype=np.float64)


def load_bm25(folder: str | Path, *, mmap: bool = True, expect_shards: int | None = None) -> Any:
    """A BM25 index folder, single or sharded (a folder of shards is just an index)."""
    from ragkit.artifacts import is_sharded

    from .bm25 import BM25Index

    if is_sharded(folder):
        return ShardedBM25Index.load(folder, mmap=mmap, expect_shards=expect_shards)
    if expect_shards not in (None, 1):
        raise IndexArtifactError(f"{folder}: the index is a single (unsharded) index, the retriever was told "
                                 f"shards={expect_shards}. Rebuild it with {expect_shards} partitions "
                                 f"(`ragkit index --cluster ... --partitions {expect_shards}`) or drop 'shards'.")
    return BM25Index.load(folder, mmap=mmap)


def update_sharded(stage: Any, folder: Path, chunks: Sequence[Chunk], removed_doc_ids: Sequence[str]) -> None:
    """Incremental update of a sharded BM25 folder, shard by shard: each shard keeps its stored chunks
    minus the removed/changed documents, the new chunks go to the smallest shard, and every shard is
    re-scored with the new global statistics (BM25's idf and average length change with any edit), from
    stored texts, without re-reading or re-chunking files. Equals a sharded build over those partitions."""
    from ragkit.artifacts import atomic_folder
    from ragkit.records import as_chunks

    old = ShardedBM25Index.load(folder, mmap=True)
    if not old.params.get("store_text", True):
        raise IndexArtifactError(f"{folder}: the index was built with store_text: false, so it cannot be updated "
                                 f"in place; rebuild it from the whole corpus.")
    new = as_chunks(list(chunks))
    gone = set(removed_doc_ids) | {c.doc_id for c in new}
    parts: list[list[Chunk]] = []
    for sh in old.shards:
        kept = []
        for i, (cid, did) in enumerate(zip(sh.ids, sh.doc_ids)):
            if did not in gone:
                text, title = sh.text(i) or "", sh.title(i)
                kept.append(Chunk(cid, did, text, 0, len(text), {"title": title} if title else {}))
        parts.append(kept)
    if new:
        min(parts, key=len).extend(new)
    parts = [p for p in parts if p]
    if not parts:
        raise StageInputError(f"{KEY}: the update leaves {folder} without any chunk; nothing to index.")
    maps = [stage.shard_map(p) for p in parts]
    glob, remaps = stage.shard_reduce([m[1] for m in maps])
    payloads = [stage.shard_build(m[0], r, glob) for m, r in zip(maps, remaps)]
    with atomic_folder(folder) as tmp:
        stage.shard_write(tmp, payloads, glob)
