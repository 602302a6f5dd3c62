"""Sharded dense (FAISS) indexes: encode per partition on workers, one FAISS index per shard, exact merge.

Build steps (run by :mod:`ragkit.distributed`, on Dask workers or in process):

1. **map** (worker): encode the partition's chunks. The encoder is loaded once per worker process and
   kept for later tasks (:func:`worker_encoder`); the embedding cache works as in a local build.
2. **reduce** (client): check that every worker used the same model (id and dimension) and that chunk
   ids are unique across partitions.
3. **build** (worker): a FAISS index of the configured type over the partition's vectors, serialised.

Each shard folder is a complete ``indexer.dense`` folder (``index.faiss``, ids, DocStore,
``params.json``) plus ``shard.json``; the top folder has ``params.json`` (``"sharded": true``) and the
manifest ``shards.json``. A ``flat`` shard search is exact, so the merge of every shard's top-k by
(score desc, doc_id, chunk_id) is the single flat index's top-k. HNSW and IVF shards are each
approximate; their recall against flat is measured in ``benchmarks/bench_scale.py``.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragkit.artifacts import read_params, read_shard_manifest, shard_name, write_params, write_shard_manifest
from ragkit.errors import IndexArtifactError, StageInputError
from ragkit.records import Chunk

from ._faiss import DenseParams

KEY = "indexer.dense"
_ENCODERS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
LOADS = {"count": 0}  # encoders loaded by this process (read by tests through Client.run)


def worker_encoder(stage: Any, base_dir: Any) -> Any:
    """The stage's encoder, loaded once per process and reused by every later task there."""
    from ._encoder import Encoder

    key = (stage.model, stage.device, stage.batch_size, stage.normalize, stage.query_prefix, stage.doc_prefix,
           stage.max_length, stage.cache, str(base_dir), getattr(stage, "backend", "torch"))
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            kw = {"backend": stage.backend} if getattr(stage, "backend", "torch") != "torch" else {}
            enc = Encoder(stage.model, device=stage.device, batch_size=stage.batch_size, normalize=stage.normalize,
                          query_prefix=stage.query_prefix, doc_prefix=stage.doc_prefix, max_length=stage.max_length,
                          cache=stage.cache, base_dir=base_dir, **kw)
            _ENCODERS[key] = enc
            LOADS["count"] += 1
    return enc


def shard_map(stage: Any, chunks: Sequence[Chunk], base_dir: Any) -> tuple[dict, dict]:
    from .dense import check_texts

    check_texts(list(chunks), KEY)
    enc = worker_encoder(stage, base_dir)
    vecs = enc.encode_documents([c.text for c in chunks], progress=False)
    partial = {"vecs": vecs, "ids": [c.chunk_id for c in chunks], "doc_ids": [c.doc_id for c in chunks],
               "texts": [c.text for c in chunks], "titles": [(c.meta or {}).get("title") for c in chunks]}
    return partial, {"ids": partial["ids"], "dim": enc.dim, "model_id": enc.model_id}


def shard_reduce(summaries: list[dict]) -> dict:
    seen: dict[str, tuple[int, int]] = {}
    for p, s in enumerate(summaries):
        for j, cid in enumerate(s["ids"]):
            prev = seen.setdefault(cid, (p, j))
            if prev != (p, j):
                raise StageInputError(f"'{KEY}': duplicate chunk_id {cid!r} (record #{j + 1} of partition {p + 1}, "
                                      f"first seen as record #{prev[1] + 1} of partition {prev[0] + 1}).")
    models = sorted({(s["model_id"], s["dim"]) for s in summaries})
    if len(models) > 1:
        raise IndexArtifactError(f"'{KEY}': workers encoded with different models {models}; every worker must "
                                 f"resolve the model to the same files.")
    return {"model_id": models[0][0], "dim": models[0][1], "n": len(seen)}


def shard_build(stage: Any, partial: dict, glob: dict) -> dict:
    from ._faiss import DenseIndex, _faiss

    params = index_params(stage, glob)
    idx = DenseIndex.build(partial["vecs"], partial["ids"], partial["doc_ids"], partial["texts"], partial["titles"],
                           params, KEY)
    blob = _faiss().serialize_index(idx.index)
    return {"faiss": np.asarray(blob), "params": idx.params, "ids": idx.ids, "chunk_ids": partial["ids"],
            "doc_ids": partial["doc_ids"], "texts": partial["texts"], "titles": partial["titles"]}


def index_params(stage: Any, glob: dict) -> dict:
    out = {"stage": KEY, "model": stage.model, "model_id": glob["model_id"], "dim": glob["dim"],
           "normalize": stage.normalize, "query_prefix": stage.query_prefix, "doc_prefix": stage.doc_prefix,
           "max_length": stage.max_length, "index_type": stage.index_type, "metric": "inner_product",
           "hnsw_m": stage.hnsw_m, "ef_construction": stage.ef_construction, "ef_search": stage.ef_search,
           "nlist": stage.nlist, "nprobe": stage.nprobe, "pq_m": stage.pq_m, "pq_bits": stage.pq_bits,
           "train_size": stage.train_size}
    out["backend"] = getattr(stage, "backend", "torch")
    return out


def shard_save(d: Path, p: dict) -> dict:
    """Write one shard folder (on the worker that built it where it sees the temporary folder)."""
    from ._faiss import DenseIndex, _faiss

    titles = p["titles"] if any(t for t in p["titles"]) else None
    idx = DenseIndex(_faiss().deserialize_index(p["faiss"]), dict(p["params"]), p["ids"], p["chunk_ids"],
                     p["doc_ids"], list(p["texts"]), titles)
    if not d.parent.is_dir():  # the temporary folder is gone: the build was abandoned
        raise IndexArtifactError(f"{d.parent}: temporary index folder missing; the build was abandoned.")
    idx.save(d)
    return {"saved": True, "name": d.name, "count": len(p["ids"]), "content_hash": idx.params["content_hash"],
            "nlist": int(p["params"].get("nlist") or 0), "nprobe": int(p["params"].get("nprobe") or 0)}


def shard_write(tmp: Path, payloads: list[dict], glob: dict, params: dict) -> None:
    """The sharded folder in ``tmp``: each payload a built shard or the record of one a worker saved."""
    from ragkit.artifacts import content_hash

    recs = [p if p.get("saved") else shard_save(tmp / shard_name(i), p) for i, p in enumerate(payloads)]
    shards = []
    for i, rec in enumerate(recs):
        if rec["name"] != shard_name(i) or not (tmp / rec["name"]).is_dir():
            raise IndexArtifactError(f"{tmp}: shard #{i} was not written where expected ({rec['name']}).")
        shards.append({k: rec[k] for k in ("name", "count", "content_hash")})
    if params.get("index_type") in ("ivf", "ivfpq"):  # lists per shard (auto nlist follows the shard size)
        params = {**params, "nlist": min(r["nlist"] for r in recs), "nprobe": min(r["nprobe"] for r in recs)}
    write_params(tmp, {**params, "sharded": True, "num_shards": len(shards), "count": glob["n"],
                       "content_hash": content_hash(s["content_hash"] for s in shards)})
    write_shard_manifest(tmp, KEY, uuid.uuid4().hex, shards)


class ShardedDenseIndex(DenseParams):
    """The shards of a sharded dense folder, searched one after another and merged exactly."""

    def __init__(self, params: dict, shards: list, manifest: dict) -> None:
        self.params, self.shards, self.manifest = params, shards, manifest
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.chunk_ids = [x for s in shards for x in s.chunk_ids]
        self.doc_ids = [x for s in shards for x in s.doc_ids]


    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, row: int) -> tuple[Any, int]:
        s = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.shards[s], row - int(self.offsets[s])

    def text(self, row: int) -> str:
        sh, r = self._locate(row)
        return sh.text(r)

    def title(self, row: int) -> str | None:
        sh, r = self._locate(row)
        return sh.title(r)

    def to_gpu(self) -> None:
        for s in self.shards:
            s.to_gpu()

    def search(self, q: np.ndarray, k: int, *, nprobe: int = 0, ef_search: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global rows; -1 = none) per query: each shard's top-k merged exactly."""
        from ._bm25_shards import merge_topk

        per = []
        for off, sh in zip(self.offsets, self.shards):
            if len(sh) == 0:
                continue
            s, r = sh.search(q, k, nprobe=nprobe, ef_search=ef_search)
            per.append((s, np.where(r >= 0, r + off, -1)))
        kk = max(1, min(k, len(self)))
        scores = np.full((len(q), kk), -np.inf, dtype=np.float32)
        rows = np.full((len(q), kk), -1, dtype=np.int64)
        for i in range(len(q)):
            rr = np.concatenate([r[i] for _, r in per]) if per else np.zeros(0, np.int64)
            ss = np.concatenate([s[i] for s, _ in per]) if per else np.zeros(0, np.float32)
            ok = rr >= 0
            mr, ms = merge_topk(rr[ok], ss[ok].astype(np.float64), self.doc_ids, self.chunk_ids, kk)
            rows[i, :len(mr)] = mr
            scores[i, :len(ms)] = ms
        return scores, rows

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = False, expect_shards: int | None = None) -> "ShardedDenseIndex":
        from ._faiss import DenseIndex

        folder = Path(folder)
        params = read_params(folder, expect_key=KEY)
        manifest = read_shard_manifest(folder, expect_stage=KEY, expect_shards=expect_shards)
        shards = []
        for s in manifest["shards"]:
            sh = DenseIndex.load(folder / s["name"], expect_key=KEY, mmap=mmap)
            if sh.dim != int(params["dim"]) or sh.params.get("model_id") != params.get("model_id"):
                raise IndexArtifactError(f"{folder / s['name']}: shard built with model {sh.params.get('model_id')!r} "
                                         f"({sh.dim}-d), the index says {params.get('model_id')!r} "
                                         f"({params.get('dim')}-d); rebuild the index.")
            shards.append(sh)
        return cls(params, shards, manifest)


def load_dense(folder: str | Path, *, mmap: bool = False, expect_shards: int | None = None) -> Any:
    """A dense index folder, single or sharded (a folder of shards is just an index)."""
    from ragkit.artifacts import is_sharded

    from ._faiss import DenseIndex

    if is_sharded(folder):
        return ShardedDenseIndex.load(folder, mmap=mmap, expect_shards=expect_shards)
    if expect_shards not in (None, 1):
        raise IndexArtifactError(f"{folder}: the index is a single (unsharded) index, the retriever was told "
                                 f"shards={expect_shards}. Rebuild it with {expect_shards} partitions "
                                 f"(`ragkit index --cluster ... --partitions {expect_shards}`) or drop 'shards'.")
    return DenseIndex.load(folder, expect_key=KEY, mmap=mmap)


def update_sharded(stage: Any, folder: Path, chunks: list, removed_doc_ids: list) -> None:
    """Incremental update of a sharded dense folder, shard by shard: the removed/changed documents are
    deleted from the shards holding them, only the new chunks are encoded and added to the smallest
    shard; the folder is rewritten atomically with a new manifest."""
    from ragkit.artifacts import atomic_folder

    idx = ShardedDenseIndex.load(folder)
    enc = stage.encoder()
    stage._check_compatible(folder, idx.params, enc.dim)
    gone = sorted(set(removed_doc_ids) | {c.doc_id for c in chunks})
    for sh in idx.shards:
        sh.delete(gone)
    if chunks:
        from ._encoder import show_progress
        from .dense import check_texts

        check_texts(chunks, KEY)
        vecs = enc.encode_documents([c.text for c in chunks], progress=show_progress(stage))
        min(idx.shards, key=len).add(vecs, [c.chunk_id for c in chunks], [c.doc_id for c in chunks],
                                     [c.text for c in chunks], [(c.meta or {}).get("title") for c in chunks])
    shards = []
    with atomic_folder(folder) as tmp:
        for i, sh in enumerate(idx.shards):
            sh.save(tmp / shard_name(i))
            shards.append({"name": shard_name(i), "count": len(sh), "content_hash": sh.params["content_hash"]})
        from ragkit.artifacts import content_hash

        params = {k: v for k, v in idx.params.items() if k != "ragkit_version"}
        write_params(tmp, {**params, "count": sum(s["count"] for s in shards),
                           "content_hash": content_hash(s["content_hash"] for s in shards)})
        write_shard_manifest(tmp, KEY, uuid.uuid4().hex, shards)
