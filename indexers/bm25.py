"""BM25 index builder (``indexer.bm25``) on bm25s, and the on-disk format its retriever reads.

bm25s (Lù, 2024) precomputes, for every (term, document) pair, the BM25 contribution
``idf(t) * tfc(tf, |d|)`` and stores it in a sparse term-major (CSC) matrix; a query's score
for a document is then the sum of that document's entries in the query terms' columns. The
variants (``method``) follow Kamphuis et al., "Which BM25 do you mean?" (ECIR 2020):

=========== ================================= =======================================
method      idf(t)                            tfc(tf, |d|), L = 1 - b + b |d| / avgdl
=========== ================================= =======================================
robertson   log((N - df + .5)/(df + .5)),     tf / (k1 L + tf)
            floored at 0 (see below)
lucene      log(1 + (N - df + .5)/(df + .5))  tf / (k1 L + tf)
atire       log(N / df)                       tf (k1 + 1) / (k1 L + tf)
bm25l       log((N + 1)/(df + .5))            (k1 + 1)(c + delta)/(k1 + c + delta), c = tf/L
bm25+       log((N + 1)/df)                   tf (k1 + 1)/(k1 L + tf) + delta
=========== ================================= =======================================

For ``bm25l`` and ``bm25+`` a document without the term still scores ``idf * tfc(0)``; bm25s
stores ``tfc(tf) - tfc(0)`` in the matrix and adds the per-term constant back at query time.

Differences from rank_bm25 (the reference the tests compare against):

- ``BM25Okapi`` scores ``idf * tf (k1 + 1) / (k1 L + tf)`` with the Robertson idf
  ``log((N - df + .5)/(df + .5))``; bm25s ``robertson`` leaves out the constant factor
  ``(k1 + 1)`` (same ranking) and floors a negative idf (a term in more than half the
  documents) at 0, where rank_bm25 uses ``epsilon * mean(idf)`` (epsilon = 0.25). On a corpus
  without negative idf, ``robertson * (k1 + 1) == BM25Okapi`` (tested to 1e-6).
- ``BM25Plus`` equals bm25s ``bm25+`` exactly (tested). rank_bm25's ``BM25L`` multiplies by an
  extra ``tf``, unlike Lv & Zhai (2011); bm25s ``bm25l`` follows the paper (tested against the
  formula above).
- Note ``bm25l`` with (k1, delta) ranks exactly like ``lucene`` with k1 + delta: same idf, and
  its tf part minus tfc(0) is proportional to ``c / (k1 + delta + c)``.

Index folder (written atomically, so a failed rebuild leaves the old index in place)::

    params.json            stage key, k1, b, delta, method, tokenizer, content hash, counts
    data.npy               float32 [nnz] score contributions, term-major
    indices.npy            int32 [nnz] row (indexed unit) of each contribution
    indptr.npy             int64 [V + 1] column starts
    nonoccurrence.npy      float32 [V] (bm25l / bm25+ only)
    vocab.json             the V terms, term id = position
    order.npy              int32 [n] rank of each unit in (doc_id, chunk_id) order (tie-break)
    docstore.json, texts.bin, text_offsets.npy   ids, doc ids, titles, texts (DocStore)
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ragkit.artifacts import DocStore, artifact_errors, atomic_folder, check_path_param, check_rows, content_hash, load_array, \
    read_params, resolve_path, write_params
from ragkit.errors import ConfigError, IndexArtifactError, StageInputError
from ragkit.records import Chunk, Document, as_chunks
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param

from ._tokenize import DEFAULT_PATTERN, Tokenizer, TokenizerConfig

KEY = "indexer.bm25"
FORMAT = 1
Method = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
ARRAYS = ("data.npy", "indices.npy", "indptr.npy", "order.npy")
DTYPES = (np.float32, np.int32, np.int64, np.int32)


@dataclass
class BM25Index:
    """A BM25 index in memory (built, or loaded from a folder, possibly memory-mapped)."""

    params: dict[str, Any]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    nonoccurrence: np.ndarray | None
    vocab: list[str]
    order: np.ndarray
    ids: list[str]
    doc_ids: list[str]
    texts: list[str] | None = None
    titles: list[str | None] | None = None
    docstore: DocStore | None = None
    vocab_ids: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None

    def __post_init__(self) -> None:
        if not self.vocab_ids:
            self.vocab_ids = {t: i for i, t in enumerate(self.vocab)}

    @property
    def num_docs(self) -> int:
        return len(self.ids)

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_dict(self.params["tokenizer"])

    def search(self, term_ids: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for a query given as term ids (repeats count): ``(rows, scores)``.

        A row is a hit when its summed contributions are positive, i.e. it holds at least one
        query term with a positive weight. Order: score descending, then (doc_id, chunk_id)
        ascending, also when choosing among rows tied at the k-th score. Scores are the bm25s
        sums (float32 contributions added in float64). Reads the arrays only: thread-safe.
        """
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        if not len(term_ids) or k < 1:
            return empty
        terms = np.asarray(term_ids, dtype=np.int64)
        spans = list(zip(self.indptr[terms].tolist(), self.indptr[terms + 1].tolist()))
        total = sum(e - s for s, e in spans)
        if total == 0:
            return empty
        idx = np.concatenate([self.indices[s:e] for s, e in spans])
        w = np.concatenate([self.data[s:e] for s, e in spans])
        n = self.num_docs
        # row numbers come from indices.npy: both paths check them against [0, n) for free (a sorted
        # unique array's ends; bincount's length and its refusal of negatives)
        if total * 8 < n:  # few postings: work on the candidate rows only
            rows, inv = np.unique(idx, return_inverse=True)
            if rows[0] < 0 or rows[-1] >= n:
                self._bad_rows(n)
            scores = np.bincount(inv, weights=w, minlength=len(rows))
            pos = scores > 0
            rows, scores = rows[pos], scores[pos]
        else:  # many postings: one dense accumulator is cheaper than sorting them
            try:
                dense = np.bincount(idx, weights=w, minlength=n)
            except ValueError:
                self._bad_rows(n)
            if len(dense) != n:
                self._bad_rows(n)
            rows = np.flatnonzero(dense > 0)
            scores = dense[rows]
        if self.nonoccurrence is not None:  # bm25l / bm25+: the tfc(0) part every document gets
            scores = scores + float(np.sum(self.nonoccurrence[terms], dtype=np.float64))
        m = len(rows)
        if m > k:
            thr = np.partition(scores, m - k)[m - k]  # the k-th largest score
            above = np.flatnonzero(scores > thr)
            tied = np.flatnonzero(scores == thr)
            need = k - len(above)
            if len(tied) > need:
                tied = tied[np.argsort(self.order[rows[tied]], kind="stable")[:need]]
            sel = np.concatenate([above, tied])
            rows, scores = rows[sel], scores[sel]
        o = np.lexsort((self.order[rows], -scores))
        return rows[o].astype(np.int64), scores[o]

    def _bad_rows(self, n: int) -> None:
        check_rows(self.folder or Path("."), "indices.npy", np.array([-1]), n)

    def text(self, row: int) -> str | None:
        if self.texts is not None:
            return self.texts[row]
        if self.docstore is not None and self.params.get("store_text", True):
            return self.docstore.text(row)
        return None

    def title(self, row: int) -> str | None:
        return self.titles[row] if self.titles else None

    def save(self, folder: str | Path) -> None:
        """Write the index folder atomically (replacing an older index only on success)."""
        folder = Path(folder)
        with atomic_folder(folder, KEY) as tmp:
            np.save(tmp / "data.npy", self.data)
            np.save(tmp / "indices.npy", self.indices)
            np.save(tmp / "indptr.npy", self.indptr)
            np.save(tmp / "order.npy", self.order)
            if self.nonoccurrence is not None:
                np.save(tmp / "nonoccurrence.npy", self.nonoccurrence)
            (tmp / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
            store_text = self.params.get("store_text", True) and self.texts is not None
            DocStore.write(tmp, self.ids, self.doc_ids, self.texts if store_text else [""] * len(self.ids),
                           self.titles)
            write_params(tmp, self.params)

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True, verify: str | None = None) -> "BM25Index":
        """Read an index folder; errors name the file and say to rebuild.

        ``verify``: ``fast`` (default, or ``$RAGKIT_VERIFY``), ``full`` or ``off`` (see
        :func:`ragkit.artifacts.verify_files`). Structure is checked either way: dtypes, lengths,
        column pointers, the tie-break permutation and text offsets (row numbers in
        ``indices.npy`` are checked per query, on the postings each query reads).
        """
        folder = Path(folder)
        params = read_params(folder, expect_key=KEY, verify=verify,
                             required=("format", "method", "num_docs", "vocab_size", "nnz", "tokenizer"))
        with artifact_errors(folder, "BM25 index"):
            return cls._load(folder, params, mmap)

    @classmethod
    def _load(cls, folder: Path, params: dict[str, Any], mmap: bool) -> "BM25Index":
        if params.get("format") != FORMAT:
            raise IndexArtifactError(f"{folder}: BM25 index format {params.get('format')!r}, this ragkit reads "
                                     f"format {FORMAT}; rebuild the index.")
        if not isinstance(params["tokenizer"], dict) or not all(isinstance(params[k], int) and params[k] >= 0
                                                                for k in ("num_docs", "vocab_size", "nnz")):
            raise IndexArtifactError(f"{folder / 'params.json'}: corrupt BM25 parameters (tokenizer or counts); "
                                     f"rebuild the index.")
        TokenizerConfig.from_dict(params["tokenizer"])
        arrays = [_plain(load_array(folder, a, mmap=mmap, dtype=dt)) for a, dt in zip(ARRAYS, DTYPES)]
        nonocc = _plain(load_array(folder, "nonoccurrence.npy", mmap=mmap, dtype=np.float32)) \
            if params["method"] in ("bm25l", "bm25+") else None
        vf = folder / "vocab.json"
        try:
            vocab = json.loads(vf.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IndexArtifactError(f"{vf}: missing or corrupt ({exc}); rebuild the index.") from None
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise IndexArtifactError(f"{vf}: corrupt vocabulary (expected a list of terms); rebuild the index.")
        store = DocStore.load(folder)
        data, indices, indptr, order = arrays
        n, v, nnz = params.get("num_docs"), params.get("vocab_size"), params.get("nnz")
        problems = []
        if len(store) != n or len(order) != n:
            problems.append(f"{len(store)} ids and {len(order)} order entries for {n} documents")
        if len(vocab) != v or len(indptr) != v + 1 or (nonocc is not None and len(nonocc) != v):
            problems.append(f"{len(vocab)} terms and {len(indptr)} column pointers for a vocabulary of {v}")
        if len(data) != nnz or len(indices) != nnz or (len(indptr) and int(indptr[-1]) != nnz):
            problems.append(f"{len(data)} scores / {len(indices)} rows for {nnz} entries")
        if problems:
            raise IndexArtifactError(f"{folder}: corrupt BM25 index ({'; '.join(problems)}); rebuild the index.")
        if len(indptr) and (int(indptr[0]) != 0 or bool(np.any(np.diff(indptr) < 0))):
            raise IndexArtifactError(f"{folder / 'indptr.npy'}: column pointers are not increasing from 0; the "
                                     f"file is corrupt. Rebuild the index.")
        if n and (int(order.min()) < 0 or int(order.max()) >= n or np.bincount(order, minlength=n).max() != 1):
            raise IndexArtifactError(f"{folder / 'order.npy'}: not a permutation of the {n} rows; the file is "
                                     f"corrupt. Rebuild the index.")
        return cls(params, data, indices, indptr, nonocc, vocab, order, store.ids, store.doc_ids,
                   titles=store.titles, docstore=store, folder=folder)


def _plain(a: np.ndarray) -> np.ndarray:
    """A memory map as a plain ndarray view of the same mapping (np.memmap's Python-level
    __getitem__ costs microseconds per slice on the query path)."""
    return a.view(np.ndarray) if isinstance(a, np.memmap) else a


def build_index(chunks: Sequence[Chunk], *, k1: float, b: float, delta: float, method: str,
                tokenizer: TokenizerConfig, store_text: bool = True, progress: bool | None = None) -> BM25Index:
    """Tokenize ``chunks`` and build their BM25 score matrix with bm25s."""
    _check_chunks(chunks)
    show = sys.stderr.isatty() if progress is None else progress
    tok = Tokenizer(tokenizer)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), desc="BM25 tokenize", unit="chunk")
    try:
        docs, vocab = tok.encode_corpus((c.text for c in chunks), progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not vocab:
        raise StageInputError(f"{KEY}: none of the {len(chunks)} chunks has a single term under the tokenizer "
                              f"{tokenizer.to_dict()}; nothing to index.")
    n_terms = sum(map(len, docs))
    import bm25s

    engine = bm25s.BM25(k1=k1, b=b, delta=delta, method=method, dtype="float32", int_dtype="int32")
    engine.index((docs, {t: i for i, t in enumerate(vocab)}), create_empty_token=False, show_progress=show)
    del docs
    sc = engine.scores
    ids = [c.chunk_id for c in chunks]
    doc_ids = [c.doc_id for c in chunks]
    order = np.empty(len(ids), dtype=np.int32)
    order[sorted(range(len(ids)), key=lambda i: (doc_ids[i], ids[i]))] = np.arange(len(ids), dtype=np.int32)
    titles = [(c.meta or {}).get("title") for c in chunks]
    params = {
        "stage": KEY, "format": FORMAT, "k1": k1, "b": b, "delta": delta, "method": method,
        "tokenizer": tokenizer.to_dict(), "store_text": store_text, "engine": f"bm25s {bm25s.__version__}",
        "content_hash": content_hash((c.chunk_id, c.doc_id, c.text) for c in chunks),
        "num_docs": len(ids), "vocab_size": len(vocab), "nnz": int(len(sc["data"])),
        "num_terms": n_terms, "avg_doc_len": n_terms / len(ids),
    }
    return BM25Index(params, np.ascontiguousarray(sc["data"], dtype=np.float32),
                     np.ascontiguousarray(sc["indices"], dtype=np.int32),
                     np.ascontiguousarray(sc["indptr"], dtype=np.int64),
                     None if engine.nonoccurrence_array is None else np.asarray(engine.nonoccurrence_array,
                                                                                dtype=np.float32),
                     vocab, order, ids, doc_ids, texts=[c.text for c in chunks] if store_text else None,
                     titles=titles if any(t for t in titles) else None)


def _check_chunks(chunks: Sequence[Chunk]) -> None:
    if not chunks:
        raise StageInputError(f"{KEY}: the corpus is empty (0 chunks); give at least one document.")
    seen: dict[str, int] = {}
    for i, c in enumerate(chunks):
        if not isinstance(c, Chunk):
            raise StageInputError(f"{KEY}: record #{i + 1} is a {type(c).__name__}, expected a Chunk or Document.")
        if not isinstance(c.text, str):
            raise StageInputError(f"{KEY}: chunk #{i + 1} (id {c.chunk_id!r}) has no text "
                                  f"({type(c.text).__name__}).")
        j = seen.setdefault(c.chunk_id, i)
        if j != i:
            raise StageInputError(f"{KEY}: duplicate chunk id {c.chunk_id!r} at record #{i + 1} "
                                  f"(first seen at record #{j + 1}); ids must be unique.")


@register(KEY)
class BM25Indexer(Stage):
    """BM25 index (bm25s engine): tokenizes chunks and writes a sparse score matrix folder.

    The defaults (lucene variant, k1 1.5, b 0.75, NLTK English stopwords, Porter stemmer) had
    the best mean nDCG@10 over Cranfield and CISI in ``benchmarks/bench_bm25_quality.py``
    (results in ``benchmarks/results/bm25_quality.md``).
    """

    path: str = param(help="index folder to write (replaced atomically)")
    k1: float = param(1.5, ge=0, help="term-frequency saturation")
    b: float = param(0.75, ge=0, le=1, help="document-length normalisation")
    delta: float = param(0.5, ge=0, help="lower-bound shift of bm25l and bm25+ (ignored by the others)")
    method: Method = param("lucene", help="BM25 variant (Kamphuis et al. 2020), as in bm25s")
    lowercase: bool = param(True, help="lowercase text before splitting")
    stopwords: Literal["en", "en_plus", "none"] = param("en_plus", help="stopword list removed before stemming: "
                                                         "en_plus (NLTK, 179 words), en (33), none")
    stemmer: Literal["porter", "english", "none"] = param("porter", help="PyStemmer algorithm: porter, "
                                                                          "english (Snowball), none")
    token_pattern: str = param(DEFAULT_PATTERN, help="regular expression that finds the words")
    store_text: bool = param(True, help="keep the texts in the index (needed by retriever `text: true`)")
    input_kind = CHUNKS
    output_kind = CHUNKS

    def validate(self) -> None:
        check_path_param(self.key, self.path)
        validate_pattern(self.key, self.token_pattern)

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(self.lowercase, self.stopwords, self.stemmer, self.token_pattern)

    def folder(self) -> Path:
        return resolve_path(self.path, self._base_dir)

    def build(self, batch: Sequence[Chunk | Document]) -> BM25Index:
        """Build the index in memory (no writing)."""
        return build_index(as_chunks(batch), k1=self.k1, b=self.b, delta=self.delta, method=self.method,
                           tokenizer=self.tokenizer_config, store_text=self.store_text,
                           progress=self._progress)

    def index_folder(self) -> Path:
        """The folder this indexer writes (Pipeline.build_index keeps its corpus manifest there)."""
        return self.folder()

    def update_index(self, chunks: Sequence[Chunk | Document], removed_doc_ids: Sequence[str]) -> None:
        """Apply a corpus change: drop every stored chunk of ``removed_doc_ids`` (removed and
        changed documents), add ``chunks``, and write the index again, atomically.

        BM25's idf and average length depend on the whole corpus, so every score is recomputed,
        from the stored texts plus the new chunks: no file is read or chunked again, and the
        index equals a full rebuild over the new corpus. Needs an index built with store_text.
        """
        folder = self.folder()
        from ragkit.artifacts import is_sharded

        if is_sharded(folder):
            from ._bm25_shards import update_sharded

            return update_sharded(self, folder, chunks, removed_doc_ids)
        old = BM25Index.load(folder, mmap=True)
        if not old.params.get("store_text", True):
            raise IndexArtifactError(f"{folder}: the index was built with store_text: false, so it cannot be "
                                     f"updated in place; rebuild it from the whole corpus.")
        new = as_chunks(chunks)
        gone = set(removed_doc_ids)
        kept = []
        for i, (cid, did) in enumerate(zip(old.ids, old.doc_ids)):
            if did not in gone:
                text, title = old.text(i) or "", old.title(i)
                kept.append(Chunk(cid, did, text, 0, len(text), {"title": title} if title else {}))
        self.build(kept + new).save(folder)

    # -- sharded build (ragkit.distributed): map on workers, reduce here, build on workers, write here --
    def shard_map(self, chunks: Sequence[Chunk], base_dir: Any = None) -> tuple[dict, dict]:
        from ._bm25_shards import shard_map

        return shard_map(chunks, self.tokenizer_config)

    def shard_reduce(self, summaries: list[dict]) -> tuple[dict, list]:
        from ._bm25_shards import shard_reduce

        glob = shard_reduce(summaries, k1=self.k1, b=self.b, delta=self.delta, method=self.method)
        return glob, glob.pop("remaps")

    def shard_build(self, partial: dict, part_arg: Any, glob: dict, base_dir: Any = None) -> dict:
        from ._bm25_shards import shard_build

        return shard_build(partial, part_arg, glob)

    def shard_save(self, folder: Path, payload: dict) -> dict:
        from ._bm25_shards import shard_save

        return shard_save(folder, payload, self.store_text)

    def shard_write(self, tmp: Path, payloads: list[dict], glob: dict) -> None:
        import bm25s

        from ._bm25_shards import shard_write

        params = {"stage": KEY, "format": FORMAT, "k1": self.k1, "b": self.b, "delta": self.delta,
                  "method": self.method, "tokenizer": self.tokenizer_config.to_dict(), "store_text": self.store_text,
                  "engine": f"bm25s {bm25s.__version__}"}
        shard_write(tmp, payloads, glob, params, self.store_text)

    def run(self, batch: list[Chunk]) -> list[Chunk]:
        """Build and write the index; the chunks pass through. (``stage([])`` returns ``[]`` as
        every stage does; ``run([])`` and :meth:`build` raise StageInputError on an empty corpus.)"""
        self.build(batch).save(self.folder())
        return batch


def validate_pattern(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"'{key}': parameter 'token_pattern' is not a valid regular expression "
                          f"({exc}): {pattern!r}") from None
