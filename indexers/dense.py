"""``indexer.dense``: encode chunks with a sentence-transformers model into a FAISS index folder.

Index types: ``flat`` (exact inner product; with ``normalize: true`` that is cosine), ``hnsw``
(``hnsw_m``, ``ef_construction``, ``ef_search``), ``ivf`` and ``ivfpq`` (``nlist``, ``nprobe``,
``pq_m``, ``pq_bits``; trained on a sample of ``train_size`` vectors). Embeddings are cached on
disk (see :mod:`ragkit.indexers._encoder`), so rebuilding over unchanged text only re-runs FAISS.

``update: true`` updates an existing index in place of a rebuild: the chunks of every document in
the batch replace that document's old chunks (delete by doc_id + add), other documents stay. The
folder is rewritten atomically either way; a killed process leaves the old index intact. Added
vectors of an IVF index go to its existing lists (the coarse quantizer is not retrained); rebuild
after large changes. HNSW deletions are tombstones until the graph is rebuilt (see ``_faiss``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from ragkit.artifacts import check_path_param, resolve_path
from ragkit.errors import ConfigError, IndexArtifactError, StageInputError
from ragkit.records import Chunk
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param

STAGE_KEY = "indexer.dense"


def check_texts(batch: list, key: str) -> None:
    for i, c in enumerate(batch):
        if not isinstance(c, Chunk):
            raise StageInputError(f"'{key}': record #{i + 1} is a {type(c).__name__}, expected a Chunk.")
        if not c.text or not c.text.strip():
            raise StageInputError(f"'{key}': record #{i + 1} (chunk_id {c.chunk_id!r}, doc_id {c.doc_id!r}) has "
                                  f"empty text; drop it or fix the document before indexing.")


@register(STAGE_KEY)
class DenseIndexer(Stage):
    """Dense (embedding) index: sentence-transformers encoder + FAISS (flat, HNSW, IVF, IVF-PQ)."""

    path: str = param(help="index folder to write, replaced atomically (relative to the pipeline file)")
    model: str = param("minilm", help="encoder: short name (minilm), local path, cached hub id, or hash")
    index_type: Literal["flat", "hnsw", "ivf", "ivfpq"] = param("flat", help="FAISS index type")
    normalize: bool = param(True, help="L2-normalise embeddings (inner product = cosine)")
    query_prefix: str = param("", help="prepended to queries (e5/bge-style models, e.g. 'query: ')")
    doc_prefix: str = param("", help="prepended to passages (e.g. 'passage: ')")
    batch_size: int = param(64, ge=1, help="texts per encoder batch")
    max_length: int | None = param(None, ge=1, help="truncate inputs to this many tokens (default: model's)")
    device: Literal["cpu", "cuda"] = param("cpu", help="encoder and FAISS device (cuda: fp16, faiss-gpu)")
    cache: bool = param(True, help="cache embeddings on disk keyed by (model, prefix, normalisation, text)")
    hnsw_m: int = param(32, ge=2, le=512, help="HNSW: neighbours per node (M)")
    ef_construction: int = param(200, ge=1, le=1 << 20, help="HNSW: candidate list size while building")
    ef_search: int = param(64, ge=1, le=1 << 20, help="HNSW: default candidate list size while searching")
    nlist: int = param(0, ge=0, help="IVF: number of lists (0 = about 4*sqrt(n), at least 39 points per list)")
    nprobe: int = param(8, ge=1, help="IVF: default lists visited per query")
    pq_m: int = param(16, ge=1, help="IVF-PQ: sub-quantizers (must divide the dimension)")
    pq_bits: int = param(8, ge=1, le=16, help="IVF-PQ: bits per sub-quantizer code")
    train_size: int = param(100_000, ge=1, help="IVF: vectors sampled to train the coarse quantizer / PQ")
    update: bool = param(False, help="update an existing index (replace chunks of the given doc_ids) instead of rebuilding")
    backend: Literal["torch", "onnx", "onnx-int8"] = param("torch", help="encoder runtime: torch (float32), onnx "
                                                           "(ONNX Runtime, float32) or onnx-int8 (dynamic int8 "
                                                           "quantization); recorded in the index")

    input_kind = CHUNKS
    output_kind = CHUNKS
    _encoder = None    # the Encoder, loaded on first use

    def validate(self) -> None:
        check_path_param(self.key, self.path)
        if self.index_type in ("ivf", "ivfpq") and self.nlist and self.nprobe > self.nlist:
            raise ConfigError(f"'{STAGE_KEY}': parameter 'nprobe' is {self.nprobe}, larger than nlist={self.nlist}; "
                              f"nprobe must be <= nlist.")

    def folder(self) -> Path:
        return resolve_path(self.path, self._base_dir)

    def encoder(self):
        enc = self._encoder
        if enc is None:
            from ._encoder import Encoder

            enc = Encoder(self.model, device=self.device, batch_size=self.batch_size, normalize=self.normalize,
                          query_prefix=self.query_prefix, doc_prefix=self.doc_prefix, max_length=self.max_length,
                          cache=self.cache, base_dir=self._base_dir, backend=self.backend)
            self._encoder = enc
        return enc

    def _setup(self) -> None:
        self.encoder()

    def index_params(self, dim: int) -> dict:
        enc = self.encoder()
        return {"stage": STAGE_KEY, "model": self.model, "model_id": enc.model_id, "dim": dim,
                "normalize": self.normalize, "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix,
                "max_length": self.max_length, "index_type": self.index_type, "metric": "inner_product",
                "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "nlist": self.nlist, "nprobe": self.nprobe, "pq_m": self.pq_m, "pq_bits": self.pq_bits,
                "train_size": self.train_size, "backend": self.backend}

    def run(self, batch: list[Chunk]) -> list[Chunk]:
        from ._encoder import show_progress
        from ._faiss import DenseIndex

        check_texts(batch, STAGE_KEY)
        seen: set[str] = set()
        for i, c in enumerate(batch):
            if c.chunk_id in seen:
                raise StageInputError(f"'{STAGE_KEY}': record #{i + 1}: duplicate chunk_id {c.chunk_id!r}.")
            seen.add(c.chunk_id)
        enc = self.encoder()
        vecs = enc.encode_documents([c.text for c in batch], progress=show_progress(self))
        chunk_ids = [c.chunk_id for c in batch]
        doc_ids = [c.doc_id for c in batch]
        texts = [c.text for c in batch]
        titles = [c.meta.get("title") for c in batch]
        folder = self.folder()
        from ragkit.artifacts import is_sharded

        if self.update and is_sharded(folder):
            from ._dense_shards import update_sharded

            update_sharded(self, folder, batch, [])
            return batch
        if self.update and (folder / "params.json").exists():
            idx = DenseIndex.load(folder, expect_key=STAGE_KEY)
            self._check_compatible(folder, idx.params, enc.dim)
            idx.delete(sorted(set(doc_ids)))
            idx.add(vecs, chunk_ids, doc_ids, texts, titles)
        else:
            idx = DenseIndex.build(vecs, chunk_ids, doc_ids, texts, titles, self.index_params(enc.dim), STAGE_KEY)
        idx.save(folder)
        self._last = idx
        return batch

    # -- sharded build (ragkit.distributed): encode on workers, one FAISS index per shard ----------------
    def shard_map(self, chunks: list[Chunk], base_dir=None) -> tuple[dict, dict]:
        from ._dense_shards import shard_map

        return shard_map(self, chunks, base_dir)

    def shard_reduce(self, summaries: list[dict]) -> tuple[dict, list]:
        from ._dense_shards import shard_reduce

        return shard_reduce(summaries), [None] * len(summaries)

    def shard_build(self, partial: dict, part_arg, glob: dict, base_dir=None) -> dict:
        from ._dense_shards import shard_build

        return shard_build(self, partial, glob)

    def shard_save(self, folder: Path, payload: dict) -> dict:
        from ._dense_shards import shard_save

        return shard_save(folder, payload)

    def shard_write(self, tmp: Path, payloads: list[dict], glob: dict) -> None:
        from ._dense_shards import index_params, shard_write

        shard_write(tmp, payloads, glob, index_params(self, glob))

    def _check_compatible(self, folder: Path, stored: dict, dim: int) -> None:
        wanted = {k: v for k, v in self.index_params(dim).items()
                  if k in ("model_id", "dim", "normalize", "doc_prefix", "index_type")}
        wanted["backend"] = self.backend
        stored = {**stored, "backend": stored.get("backend", "torch")}
        diffs = [f"{k}: index has {stored.get(k)!r}, pipeline asks for {v!r}" for k, v in wanted.items()
                 if stored.get(k) != v]
        if diffs:
            raise IndexArtifactError(f"{folder}: cannot update an index built with other parameters "
                                     f"({'; '.join(diffs)}). Rebuild it (update: false).")

    def index_folder(self) -> Path:
        """The folder this indexer writes (for Pipeline's incremental rebuilds)."""
        return self.folder()

    def update_index(self, chunks: list[Chunk], removed_doc_ids: list[str]) -> None:
        """Incremental rebuild: drop ``removed_doc_ids``, add (encode) only ``chunks``, one atomic write."""
        from ._faiss import DenseIndex

        folder = self.folder()
        from ragkit.artifacts import is_sharded

        if is_sharded(folder):
            from ._dense_shards import update_sharded

            return update_sharded(self, folder, list(chunks), list(removed_doc_ids))
        idx = DenseIndex.load(folder, expect_key=STAGE_KEY)
        enc = self.encoder()
        self._check_compatible(folder, idx.params, enc.dim)
        idx.delete(sorted(set(removed_doc_ids) | {c.doc_id for c in chunks}))
        if chunks:
            from ._encoder import show_progress

            check_texts(chunks, STAGE_KEY)
            vecs = enc.encode_documents([c.text for c in chunks], progress=show_progress(self))
            idx.add(vecs, [c.chunk_id for c in chunks], [c.doc_id for c in chunks], [c.text for c in chunks],
                    [c.meta.get("title") for c in chunks])
        idx.save(folder)

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of ``doc_ids`` from the existing index folder (atomic rewrite)."""
        from ._faiss import DenseIndex

        folder = self.folder()
        idx = DenseIndex.load(folder, expect_key=STAGE_KEY)
        n = idx.delete(list(doc_ids))
        if n:
            idx.save(folder)
        return n
