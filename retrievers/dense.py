"""``retriever.dense``: encode queries with the index's encoder and search its FAISS index.

The encoder, normalisation and query prefix come from the index folder's ``params.json``; giving
``model`` checks that it is the model the index was built with (else IndexArtifactError). ``nprobe``
(IVF) and ``ef_search`` (HNSW) override the index's defaults per query; ``mmap: true`` memory-maps
the FAISS index and texts instead of reading them into memory. A sharded index (``ragkit index
--cluster``) opens the same way; its shards' top-k are merged by (score, doc_id, chunk_id), which for
``flat`` shards is exactly the single flat index's result. With ``cluster:`` the shards are searched on
a Dask cluster's workers (each loaded once per worker; :mod:`ragkit.shard_search`), same results.
"""
from __future__ import annotations

from typing import Literal

from ragkit.artifacts import resolve_path
from ragkit.indexers._faiss import DenseParams
from ragkit.errors import ConfigError, IndexArtifactError
from ragkit.records import Hit, Query, Ranking
from ragkit.registry import register
from ragkit.shard_search import check_remote
from ragkit.stage import Retriever, param

INDEX_KEY = "indexer.dense"


def hits_from_rows(q: Query, scores, rows, idx, with_text: bool) -> Ranking:
    hits = []
    for s, r in zip(scores, rows):
        if r < 0:
            continue
        r = int(r)
        title = idx.title(r)
        hits.append(Hit(q.qid, idx.doc_ids[r], float(s), 0, idx.text(r) if with_text else None,
                        idx.chunk_ids[r], {"title": title} if title else {}))
    return Ranking(q, tuple(hits))


class _RemoteHead(DenseParams):
    """What the client of a sharded index searched on workers holds: params and manifest, no vectors."""

    def __init__(self, params: dict, manifest: dict) -> None:
        self.params, self.manifest = params, manifest

    @classmethod
    def open(cls, folder, expect_shards):
        from ragkit.artifacts import is_sharded, read_params, read_shard_manifest

        if not is_sharded(folder):
            raise IndexArtifactError(f"{folder}: 'cluster' searches the shards of a sharded index on workers; this "
                                     f"is a single index. Build it with `ragkit index --cluster ...` or drop 'cluster'.")
        return cls(read_params(folder, expect_key=INDEX_KEY),
                   read_shard_manifest(folder, expect_stage=INDEX_KEY, expect_shards=expect_shards))

    def __len__(self) -> int:
        return int(self.manifest["total"])


@register("retriever.dense")
class DenseRetriever(Retriever):
    """Dense retrieval over an `indexer.dense` FAISS index (flat, HNSW, IVF, IVF-PQ)."""

    index: str = param(help="index folder written by indexer.dense")
    k: int = param(10, ge=1, help="hits per query")
    text: bool = param(False, help="put the passage text on each hit")
    model: str = param("", help="encoder; empty = the index's model (a different model is an error)")
    nprobe: int = param(0, ge=0, help="IVF: lists visited per query (0 = index default); must be <= nlist")
    ef_search: int = param(0, ge=0, le=1 << 20, help="HNSW: candidate list size (0 = index default)")
    device: Literal["cpu", "cuda"] = param("cpu", help="encoder and FAISS device")
    mmap: bool = param(False, help="memory-map the FAISS index and texts")
    batch_size: int = param(64, ge=1, help="queries per encoder batch")
    backend: Literal["", "torch", "onnx", "onnx-int8"] = param("", help="query encoder runtime (empty = the "
                                                                    "backend that built the index)")
    shards: int | None = param(None, ge=1, help="expected shard count of the index (default: whatever it was "
                                               "built with; a different count is an error)")
    cluster: str | None = param(None, help="search a sharded index's shards on the workers of this Dask cluster "
                                           "(tcp://HOST:PORT, local[:N]); each worker loads its shards once and "
                                           "must read the index folder at the same path")

    _remote = None

    def validate(self) -> None:
        check_remote(self.cluster, self.key)



    def _setup(self) -> None:
        from ragkit.indexers._encoder import Encoder
        from ragkit.indexers._dense_shards import load_dense
        from ragkit.models import resolve_model

        base = self._base_dir
        folder = resolve_path(self.index, base)
        self._remote = None
        if self.cluster:
            idx = _RemoteHead.open(folder, self.shards)
        else:
            idx = load_dense(folder, mmap=self.mmap, expect_shards=self.shards)
        p = idx.params
        if idx.kind in ("ivf", "ivfpq") and self.nprobe > int(p["nlist"]):
            raise ConfigError(f"'retriever.dense': parameter 'nprobe' is {self.nprobe}, larger than the index's "
                              f"nlist={p['nlist']} ({folder}); nprobe must be <= nlist.")
        stored_id = p.get("model_id", "")
        if self.model:
            rid = resolve_model(self.model, base_dir=base).id
            if rid != stored_id:
                raise IndexArtifactError(f"{folder}: index was built with model {stored_id!r}, the retriever asks "
                                         f"for {self.model!r} ({rid}). Rebuild the index with this model or drop "
                                         f"'model' from the retriever.")
            name = self.model
        else:
            name = stored_id[5:] if stored_id.startswith("path:") else p.get("model", stored_id)
        enc = Encoder(name, device=self.device, batch_size=self.batch_size, normalize=bool(p.get("normalize", True)),
                      query_prefix=p.get("query_prefix", ""), doc_prefix=p.get("doc_prefix", ""),
                      max_length=p.get("max_length"), cache=False, base_dir=base,
                      backend=self.backend or p.get("backend", "torch"))
        if enc.model_id != stored_id:
            raise IndexArtifactError(f"{folder}: index was built with model {stored_id!r}, but {name!r} resolves "
                                     f"to {enc.model_id!r} here. Rebuild the index.")
        if enc.dim != idx.dim:
            raise IndexArtifactError(f"{folder}: dimension mismatch: index vectors are {idx.dim}-d, encoder "
                                     f"{enc.model_id!r} gives {enc.dim}-d. Rebuild the index with this encoder.")
        if self.cluster:
            from ragkit.shard_search import ShardWorkers

            self._remote = ShardWorkers(self.cluster, folder, "dense", idx.manifest, mmap=self.mmap)
        elif self.device == "cuda":
            idx.to_gpu()
        self._idx = idx
        self._enc = enc

    def run(self, batch: list[Query]) -> list[Ranking]:
        idx, enc = self._idx, self._enc
        if len(idx) == 0:
            return [Ranking(q) for q in batch]
        qv = enc.encode_queries([q.text for q in batch])
        if self._remote is not None:
            merged = self._remote.search(list(qv), self.k, with_text=self.text,
                                         opts={"nprobe": self.nprobe, "ef_search": self.ef_search})
            return [Ranking(q, tuple(Hit(q.qid, d, s, 0, t if self.text else None, c, {"title": ti} if ti else {})
                                     for s, d, c, t, ti in m)) for q, m in zip(batch, merged)]
        scores, rows = idx.search(qv, self.k, nprobe=self.nprobe, ef_search=self.ef_search)
        return [hits_from_rows(q, s, r, idx, self.text) for q, s, r in zip(batch, scores, rows)]
