"""``indexer.mha``: Multi-Head RAG index (Besta et al. 2024): one FAISS index per attention head.

One forward pass per chunk captures the chosen layer's per-head attention outputs (input of the
attention output projection; see :mod:`ragkit.indexers._mha_embed`); head i's vectors go into
``head_<i>.faiss`` (exact inner product, cosine when ``normalize``), and the head importance
scores a_i (mean norm), b_i (mean pairwise cosine distance, on a sample) and s_i = a_i * b_i are
stored in ``params.json`` for ``retriever.mha``'s voting. Embeddings are cached on disk keyed by
(model, layer, pooling, prefix, text).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np

from ragkit.artifacts import DocStore, atomic_folder, check_path_param, cache_dir, content_hash, resolve_path, write_params
from ragkit.errors import StageInputError
from ragkit.records import Chunk
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param

from .dense import check_texts

STAGE_KEY = "indexer.mha"


def head_file(i: int) -> str:
    return f"head_{i:03d}.faiss"


@register(STAGE_KEY)
class MHAIndexer(Stage):
    """Multi-Head RAG index: per-head attention embeddings of one layer, one FAISS index per head."""

    path: str = param(help="index folder to write, replaced atomically (relative to the pipeline file)")
    model: str = param("minilm", help="transformers model: short name (minilm, smollm2-135m-instruct), path, cached hub id")
    layer: int = param(-1, help="which layer's attention to embed with (-1 = last, as in the paper)")
    pooling: Literal["auto", "mean", "last"] = param("auto", help="auto: last token for decoders, mean for encoders")
    normalize: bool = param(True, help="search each head by cosine (normalised inner product)")
    doc_prefix: str = param("", help="prepended to passages")
    query_prefix: str = param("", help="prepended to queries")
    max_length: int = param(256, ge=1, help="truncate inputs to this many tokens")
    batch_size: int = param(16, ge=1, help="texts per forward pass")
    device: Literal["cpu", "cuda"] = param("cpu", help="torch device")
    sample: int = param(1000, ge=2, help="texts sampled to estimate each head's mean pairwise cosine distance b_i")
    seed: int = param(0, help="seed of that sample")
    cache: bool = param(True, help="cache per-head embeddings on disk")

    input_kind = CHUNKS
    output_kind = CHUNKS
    _emb = None        # the MultiHeadEmbedder, loaded on first use

    def validate(self) -> None:
        check_path_param(self.key, self.path)

    def embedder(self):
        emb = self._emb
        if emb is None:
            from ._mha_embed import MultiHeadEmbedder

            emb = MultiHeadEmbedder(self.model, layer=self.layer, pooling=self.pooling, device=self.device,
                                    batch_size=self.batch_size, max_length=self.max_length,
                                    base_dir=self._base_dir)
            self._emb = emb
        return emb

    def _setup(self) -> None:
        self.embedder()

    def embed(self, texts: list[str], prefix: str, progress: bool = False) -> np.ndarray:
        """[N, heads, head_dim] per-head embeddings, through the on-disk cache."""
        from ._encoder import EmbeddingCache, text_keys

        emb = self.embedder()
        full = [prefix + t for t in texts]
        if not self.cache:
            return emb.encode(full, progress=progress)
        H, d = emb.num_heads, emb.head_dim
        mid = f"mha\x1f{emb.cache_id}\x1f{emb.layer}\x1f{emb.pooling}\x1f{self.max_length}"
        ns = hashlib.sha256(mid.encode()).hexdigest()[:20]
        cache = EmbeddingCache(cache_dir() / "embeddings" / ns, H * d)
        keys = text_keys(mid, prefix, False, texts)
        flat, found = cache.lookup(keys)
        miss = np.flatnonzero(~found)
        if len(miss):
            new = emb.encode([full[i] for i in miss], progress=progress).reshape(len(miss), H * d)
            flat[miss] = new
            cache.add(keys[miss], new)
        return flat.reshape(len(texts), H, d)

    def run(self, batch: list[Chunk]) -> list[Chunk]:
        from ragkit._deps import require

        from ._encoder import show_progress
        from ._mha_embed import head_importance

        faiss = require("faiss", "multi-head retrieval")
        check_texts(batch, STAGE_KEY)
        ids = [c.chunk_id for c in batch]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise StageInputError(f"'{STAGE_KEY}': duplicate chunk_id {dup!r}.")
        emb = self.embedder()
        texts = [c.text for c in batch]
        embs = self.embed(texts, self.doc_prefix, progress=show_progress(self))
        a, b, s = head_importance(embs, self.sample, self.seed)
        params = {"stage": STAGE_KEY, "model": self.model, "model_id": emb.model_id, "layer": emb.layer,
                  "num_layers": emb.num_layers, "module": emb.module_name, "pooling": emb.pooling,
                  "decoder": emb.decoder, "num_heads": emb.num_heads, "head_dim": emb.head_dim,
                  "normalize": self.normalize, "doc_prefix": self.doc_prefix, "query_prefix": self.query_prefix,
                  "max_length": self.max_length, "count": len(batch),
                  "importance": {"a": a.tolist(), "b": b.tolist(), "s": s.tolist(), "sample": self.sample,
                                 "seed": self.seed},
                  "content_hash": content_hash(zip(ids, (c.doc_id for c in batch), texts))}
        folder = resolve_path(self.path, self._base_dir)
        with atomic_folder(folder, STAGE_KEY) as tmp:
            for i in range(emb.num_heads):
                x = np.ascontiguousarray(embs[:, i, :], dtype=np.float32)
                if self.normalize:
                    faiss.normalize_L2(x)
                idx = faiss.IndexFlatIP(emb.head_dim)
                idx.add(x)
                faiss.write_index(idx, str(tmp / head_file(i)))
            DocStore.write(tmp, ids, [c.doc_id for c in batch], texts, [c.meta.get("title") for c in batch])
            write_params(tmp, params)
        return batch

    def index_folder(self) -> Path:
        """The folder this indexer writes (Pipeline.build_index checks it before building)."""
        return resolve_path(self.path, self._base_dir)
