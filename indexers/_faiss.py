"""FAISS index folders for dense retrieval: build, search, add/delete by id, atomic save, mmap load.

Vectors carry stable int64 ids, so ``add``/``delete`` work without a rebuild: ``IndexFlatIP``
(``flat``, exact inner product) and ``IndexHNSWFlat`` (``hnsw``) are wrapped in ``IndexIDMap2``;
``IndexIVFFlat`` (``ivf``) and ``IndexIVFPQ`` (``ivfpq``) store ids in their inverted lists
natively (an IDMap around IVF breaks on removal, because IVF does not renumber what is left). HNSW graphs cannot remove
nodes (faiss raises), so deleted HNSW ids are kept as tombstones and excluded *during* the graph
search with an ``IDSelectorNot`` (exact top-k among live vectors); when tombstones exceed a third
of the index the graph is rebuilt from its stored vectors (no re-encoding).

Folder: ``params.json`` (model id, dim, normalisation, prefixes, index type and its parameters,
content hash), ``index.faiss``, ``ids.npy`` (faiss id of each docstore row), ``deleted.npy``
(HNSW tombstones) and the :class:`ragkit.artifacts.DocStore` files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragkit._deps import require
from ragkit.artifacts import DocStore, artifact_errors, atomic_folder, content_hash, load_array, read_params, \
    write_params
from ragkit.errors import ConfigError, IndexArtifactError, MissingDependencyError, StageInputError

INDEX_FILE = "index.faiss"
TYPES = ("flat", "hnsw", "ivf", "ivfpq")


def _faiss():
    return require("faiss", "dense retrieval")


def auto_nlist(n: int) -> int:
    """4*sqrt(n) lists, but at least 39 training points per list (faiss's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(max(n, 1)))), n // 39 if n >= 39 else 1))


def new_index(kind: str, dim: int, spec: dict[str, Any], train: np.ndarray | None, key: str = "indexer.dense"):
    """A fresh, trained, id-carrying index of the given type."""
    faiss = _faiss()
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, int(spec["hnsw_m"]), metric)
        inner.hnsw.efConstruction = int(spec["ef_construction"])
        inner.hnsw.efSearch = int(spec["ef_search"])
    elif kind in ("ivf", "ivfpq"):
        nlist = int(spec["nlist"])
        n = 0 if train is None else len(train)
        if n < nlist:
            raise StageInputError(f"'{key}': nlist={nlist} needs at least {nlist} training vectors, but the corpus "
                                  f"has {n} chunks. Lower 'nlist' (0 = automatic) or use index_type: flat.")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            inner = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        else:
            m, bits = int(spec["pq_m"]), int(spec["pq_bits"])
            if dim % m:
                divisors = [d for d in range(1, min(dim, 96) + 1) if dim % d == 0]
                raise ConfigError(f"'{key}': parameter 'pq_m' is {m}, but it must divide the embedding dimension "
                                  f"{dim}. Valid: {', '.join(map(str, divisors))}.")
            if n < (1 << bits):
                raise StageInputError(f"'{key}': ivfpq with pq_bits={bits} needs at least {1 << bits} training "
                                      f"vectors, the corpus has {n}. Lower 'pq_bits' or use index_type: ivf.")
            inner = faiss.IndexIVFPQ(quantizer, dim, nlist, m, bits, metric)
        inner.nprobe = int(spec["nprobe"])
        inner.train(np.ascontiguousarray(train, dtype=np.float32))
        quantizer.this.disown()  # the index owns (and frees) its quantizer
        inner.own_fields = True
        return inner
    else:
        raise ConfigError(f"'{key}': parameter 'index_type' is {kind!r}; valid: {', '.join(TYPES)}.")
    return faiss.IndexIDMap2(inner)


def train_sample(vecs: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    if len(vecs) <= size:
        return vecs
    rng = np.random.default_rng(seed)
    return vecs[np.sort(rng.choice(len(vecs), size, replace=False))]


class DenseParams:
    """``kind`` and ``dim`` of a dense index (single, sharded, or searched on workers), from its params."""

    params: dict

    @property
    def kind(self) -> str:
        return self.params["index_type"]

    @property
    def dim(self) -> int:
        return int(self.params["dim"])


class DenseIndex(DenseParams):
    """An ID-mapped FAISS index plus its document store, in memory."""

    def __init__(self, index: Any, params: dict[str, Any], ids: np.ndarray, chunk_ids: list[str],
                 doc_ids: list[str], texts: Any, titles: list[str | None] | None = None,
                 deleted: np.ndarray | None = None) -> None:
        self.index = index
        self.params = params
        self.ids = np.asarray(ids, dtype=np.int64)
        self.chunk_ids = list(chunk_ids)
        self.doc_ids = list(doc_ids)
        self._texts = texts  # a list of str or a DocStore
        self.titles = titles
        self.deleted = np.zeros(0, np.int64) if deleted is None else np.asarray(deleted, np.int64)
        self._gpu = None
        self._selector = None
        self.folder: Path | None = None

    # -- basic properties ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, row: int) -> str:
        t = self._texts
        return t.text(row) if isinstance(t, DocStore) else t[row]

    def title(self, row: int) -> str | None:
        return self.titles[row] if self.titles else None

    def all_texts(self) -> list[str]:
        return [self.text(i) for i in range(len(self))]

    # -- create / load / save --------------------------------------------------------------------
    @classmethod
    def build(cls, vecs: np.ndarray, chunk_ids: list[str], doc_ids: list[str], texts: list[str],
              titles: list[str | None] | None, params: dict[str, Any], key: str = "indexer.dense") -> "DenseIndex":
        spec = dict(params)
        if spec["index_type"] in ("ivf", "ivfpq") and not spec.get("nlist"):
            spec["nlist"] = auto_nlist(len(vecs))
        if spec["index_type"] in ("ivf", "ivfpq") and spec.get("nprobe", 1) > spec["nlist"]:
            spec["nprobe"] = spec["nlist"]
        train = train_sample(vecs, int(spec.get("train_size", 100_000))) if spec["index_type"] in ("ivf", "ivfpq") else None
        index = new_index(spec["index_type"], vecs.shape[1], spec, train, key)
        ids = np.arange(len(vecs), dtype=np.int64)
        if len(vecs):
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)
        spec["next_id"] = int(len(vecs))
        return cls(index, spec, ids, chunk_ids, doc_ids, texts, titles)

    def save(self, folder: str | Path) -> None:
        """Write the whole folder atomically (temporary sibling folder, then one rename)."""
        faiss = _faiss()
        texts = self.all_texts()
        self.params["content_hash"] = content_hash(zip(self.chunk_ids, self.doc_ids, texts))
        self.params["count"] = len(self)
        with atomic_folder(folder, self.params.get("stage")) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            np.save(tmp / "ids.npy", self.ids)
            np.save(tmp / "deleted.npy", self.deleted)
            DocStore.write(tmp, self.chunk_ids, self.doc_ids, texts, self.titles)
            write_params(tmp, self.params)

    @classmethod
    def load(cls, folder: str | Path, *, expect_key: str = "indexer.dense", mmap: bool = False,
             verify: str | None = None) -> "DenseIndex":
        """Read an index folder, verified first (``verify``: fast, full or off; see
        :func:`ragkit.artifacts.verify_files`) so that faiss never parses a damaged header."""
        faiss = _faiss()
        folder = Path(folder)
        params = read_params(folder, expect_key=expect_key, verify=verify, required=("dim", "index_type"))
        f = folder / INDEX_FILE
        if not f.exists():
            raise IndexArtifactError(f"{f}: missing; rebuild the index.")
        try:
            if mmap:
                index = faiss.read_index(str(f), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            else:
                index = faiss.read_index(str(f))
        except (RuntimeError, MemoryError) as exc:
            raise IndexArtifactError(f"{f}: cannot read the faiss index ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                     f"rebuild the index.") from None
        with artifact_errors(folder, "dense index"):
            store = DocStore.load(folder)
            ids = load_array(folder, "ids.npy", dtype=np.int64)
            deleted = load_array(folder, "deleted.npy", dtype=np.int64) if (folder / "deleted.npy").exists() else None
            if len(ids) != len(store) or index.ntotal != len(ids) + (0 if deleted is None else len(deleted)):
                raise IndexArtifactError(f"{folder}: index is inconsistent ({index.ntotal} vectors, {len(ids)} ids, "
                                         f"{len(store)} texts); rebuild it.")
            if len(ids) and (int(ids[0]) < 0 or bool(np.any(np.diff(ids) <= 0))):
                raise IndexArtifactError(f"{folder / 'ids.npy'}: ids are not increasing and non-negative; the file "
                                         f"is corrupt. Rebuild the index.")
            if index.d != int(params.get("dim", -1)):
                raise IndexArtifactError(f"{folder}: faiss index has dimension {index.d}, params.json says "
                                         f"{params.get('dim')}; rebuild the index.")
            out = cls(index, params, ids, store.ids, store.doc_ids, store, store.titles, deleted)
        out.folder = folder
        return out

    # -- updates ---------------------------------------------------------------------------------
    def add(self, vecs: np.ndarray, chunk_ids: list[str], doc_ids: list[str], texts: list[str],
            titles: list[str | None] | None = None) -> None:
        if vecs.shape[1] != self.dim:
            raise IndexArtifactError(f"cannot add {vecs.shape[1]}-d vectors to a {self.dim}-d index; the encoder "
                                     f"differs from the one that built the index.")
        have = set(self.chunk_ids)
        dup = [c for c in chunk_ids if c in have]
        if dup:
            raise StageInputError(f"chunk id {dup[0]!r} is already in the index ({len(dup)} duplicates); "
                                  f"delete its document first or use update mode.")
        start = int(self.params.get("next_id", int(self.ids.max(initial=-1)) + 1))
        new_ids = np.arange(start, start + len(vecs), dtype=np.int64)
        self._materialize()
        if len(vecs):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), new_ids)
        self.ids = np.concatenate([self.ids, new_ids])
        self.chunk_ids += list(chunk_ids)
        self.doc_ids += list(doc_ids)
        self._texts += list(texts)
        if self.titles is not None or (titles and any(titles)):
            old = self.titles or [None] * (len(self.chunk_ids) - len(chunk_ids))
            self.titles = list(old) + list(titles or [None] * len(chunk_ids))
        self.params["next_id"] = start + len(vecs)
        self._gpu = None

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove every chunk of the given documents; returns how many were removed."""
        gone = set(doc_ids)
        rows = [i for i, d in enumerate(self.doc_ids) if d in gone]
        if not rows:
            return 0
        self._materialize()
        fids = self.ids[rows]
        if self.kind == "hnsw":
            self.deleted = np.union1d(self.deleted, fids).astype(np.int64)
        else:
            self.index.remove_ids(np.ascontiguousarray(fids, dtype=np.int64))
        keep = np.ones(len(self.ids), dtype=bool)
        keep[rows] = False
        self.ids = self.ids[keep]
        self.chunk_ids = [c for c, k in zip(self.chunk_ids, keep) if k]
        self.doc_ids = [c for c, k in zip(self.doc_ids, keep) if k]
        self._texts = [t for t, k in zip(self._texts, keep) if k]
        if self.titles:
            self.titles = [t for t, k in zip(self.titles, keep) if k]
        self._selector = None
        self._gpu = None
        if self.kind == "hnsw" and len(self.deleted) > max(len(self.ids), 1) / 2:
            self.compact()
        return len(rows)

    def _materialize(self) -> None:
        """Make texts a mutable list (a loaded index keeps them memory-mapped until an update)."""
        if isinstance(self._texts, DocStore):
            self._texts = self.all_texts()
            self.titles = list(self.titles) if self.titles else None

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(faiss ids in internal order, their stored vectors) — exact for flat/hnsw, decoded for ivf*."""
        faiss = _faiss()
        if self.kind in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(self.index)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return self.ids.copy(), np.vstack([ivf.reconstruct(int(i)) for i in self.ids]) if len(self.ids) \
                else np.zeros((0, self.dim), np.float32)
        inner = faiss.downcast_index(self.index.index)
        order = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return order, inner.reconstruct_n(0, self.index.ntotal)

    def compact(self) -> None:
        """Rebuild an HNSW graph without its tombstones (from stored vectors, no re-encoding)."""
        if self.kind != "hnsw" or not len(self.deleted):
            return
        order, vecs = self.vectors()
        live = ~np.isin(order, self.deleted)
        index = new_index("hnsw", self.dim, self.params, None)
        if live.any():
            index.add_with_ids(np.ascontiguousarray(vecs[live]), order[live])
        self.index = index
        self.deleted = np.zeros(0, np.int64)
        self._selector = None

    # -- search ----------------------------------------------------------------------------------
    def to_gpu(self) -> None:
        faiss = _faiss()
        if not hasattr(faiss, "StandardGpuResources"):
            raise MissingDependencyError(
                "device 'cuda' needs faiss with GPU support, but the installed faiss is CPU-only. Install the "
                "`gpu` extra (`pip install 'ragkit[gpu]'`, which brings faiss-gpu) or use device: cpu.")
        if faiss.get_num_gpus() < 1:
            raise MissingDependencyError("device 'cuda' asked for, but faiss sees no GPU; use device: cpu.")
        if self.kind == "hnsw":
            return  # faiss has no GPU HNSW; search stays on CPU
        res = faiss.StandardGpuResources()
        if self.kind in ("ivf", "ivfpq"):  # ids live in the inverted lists
            self._gpu = (res, faiss.index_cpu_to_gpu(res, 0, self.index), None)
        else:
            inner = faiss.downcast_index(self.index.index)
            self._gpu = (res, faiss.index_cpu_to_gpu(res, 0, inner), faiss.vector_to_array(self.index.id_map))

    def search(self, q: np.ndarray, k: int, *, nprobe: int = 0, ef_search: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, docstore rows; -1 = none) for each query vector."""
        faiss = _faiss()
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.shape[1] != self.dim:
            raise IndexArtifactError(f"query vectors have dimension {q.shape[1]}, the index {self.dim}: the index "
                                     f"was built with another encoder ({self.params.get('model_id')}).")
        k = max(1, min(k, len(self.ids))) if len(self.ids) else 1
        if self._gpu is not None:
            gpu_index, id_map = self._gpu[1], self._gpu[2]
            if nprobe and self.kind in ("ivf", "ivfpq"):
                gpu_index.nprobe = nprobe
            scores, internal = gpu_index.search(q, k)
            labels = internal if id_map is None else np.where(internal >= 0, id_map[np.maximum(internal, 0)], -1)
        else:
            params = None
            if self.kind == "hnsw":
                if len(self.deleted) and self._selector is None:
                    batch = faiss.IDSelectorBatch(self.deleted)
                    self._selector = (batch, faiss.IDSelectorNot(batch))
                kw = {"efSearch": int(ef_search or self.params.get("ef_search", 64))}
                if len(self.deleted):
                    kw["sel"] = self._selector[1]
                params = faiss.SearchParametersHNSW(**kw)
            elif self.kind in ("ivf", "ivfpq"):
                params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.params.get("nprobe", 1)))
            scores, labels = self.index.search(q, k, params=params)
        rows = np.searchsorted(self.ids, labels)
        found = (labels >= 0) & (rows < len(self.ids))
        found[found] = self.ids[rows[found]] == labels[found]
        if bool(np.any(found != (labels >= 0))):  # faiss returned an id the index does not hold
            where = self.folder / INDEX_FILE if self.folder else INDEX_FILE
            raise IndexArtifactError(f"{where}: the faiss index returned vector ids that ids.npy does not hold; "
                                     f"one of the two files is corrupt. Rebuild the index.")
        return scores, np.where(found, rows, -1)
