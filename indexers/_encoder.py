"""Text encoder for dense retrieval: batched, prefixed, normalised, cached on disk.

:class:`Encoder` wraps a sentence-transformers model (short name, local path, cached hub id) or the
fake ``hash`` embedder. Embeddings are cached under ``cache_dir()/embeddings/<namespace>/`` keyed by
sha256 of (model id, prefix, normalisation, text), so re-indexing unchanged text costs nothing.

The cache is append-only shards: ``<n>.npy`` (float32 vectors) and ``<n>.keys.npy`` (uint8 [N, 32]
digests). A shard becomes visible only when its keys file is renamed into place (after its
vectors), so a killed process never leaves a half-visible shard. The in-memory index (digest ->
shard, row) is rebuilt from the keys files, vectors are read memory-mapped.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragkit._deps import require
from ragkit.model_identity import ModelCacheKey
from ragkit.artifacts import cache_dir, temp_file
from ragkit.errors import ConfigError
from ragkit.models import ResolvedModel, pick_device, resolve_model


def text_keys(model_id: str, prefix: str, normalize: bool, texts: Sequence[str]) -> np.ndarray:
    """sha256 digests of (model id, prefix, normalisation, text) as uint8 [N, 32]."""
    head = hashlib.sha256()
    head.update(model_id.encode("utf-8") + b"\x1f" + prefix.encode("utf-8") + b"\x1f" + (b"1" if normalize else b"0") + b"\x1f")
    out = np.empty((len(texts), 32), dtype=np.uint8)
    for i, t in enumerate(texts):
        h = head.copy()
        h.update(t.encode("utf-8"))
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


class EmbeddingCache:
    """Append-only on-disk store of vectors keyed by 32-byte digests (one folder per namespace)."""

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: dict[int, np.ndarray] = {}
        self._lock = self._locks.setdefault(str(self.folder), threading.Lock())
        self._scan()

    def _scan(self) -> None:
        if not self.folder.is_dir():
            return
        for f in sorted(self.folder.glob("*.keys.npy")):
            sid = int(f.name.split(".")[0])
            if sid in self._shards:
                continue
            try:
                keys = np.load(f, allow_pickle=False)
                vecs = np.load(self.folder / f"{sid}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                continue  # a damaged shard is ignored (its texts are simply re-encoded)
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(vecs) != len(keys):
                continue
            self._shards[sid] = vecs
            for row, k in enumerate(keys):
                self._index.setdefault(k.tobytes(), (sid, row))

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (vectors [N, dim] with found rows filled, found mask [N])."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            loc = self._index.get(k.tobytes())
            if loc is not None:
                out[i] = self._shards[loc[0]][loc[1]]
                found[i] = True
        return out, found

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        if len(keys) == 0:
            return
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._scan()  # pick up shards written by other processes
            sid = max(self._shards, default=-1) + 1
            while (self.folder / f"{sid}.npy").exists() or (self.folder / f"{sid}.keys.npy").exists():
                sid += 1
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            _atomic_save(self.folder / f"{sid}.npy", vecs)
            _atomic_save(self.folder / f"{sid}.keys.npy", np.ascontiguousarray(keys, dtype=np.uint8))
            self._shards[sid] = vecs
            for row, k in enumerate(keys):
                self._index.setdefault(k.tobytes(), (sid, row))


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    fd, tmp = temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Encoder(ModelCacheKey):
    """Batched text encoder with query/document prefixes, normalisation, fp16 on GPU and a disk cache."""

    def __init__(self, model: str = "minilm", *, device: str = "cpu", batch_size: int = 64,
                 normalize: bool = True, query_prefix: str = "", doc_prefix: str = "",
                 max_length: int | None = None, cache: bool = True, fp16: bool | None = None,
                 base_dir: str | Path | None = None, backend: str = "torch") -> None:
        from ._onnx import BACKENDS

        if backend not in BACKENDS:
            raise ConfigError(f"encoder backend {backend!r}; valid: {', '.join(BACKENDS)}.")
        if backend != "torch" and device != "cpu":
            raise ConfigError(f"backend {backend!r} runs on the CPU (ONNX Runtime); use device: cpu or backend: torch.")
        self.backend = backend
        self.resolved: ResolvedModel = resolve_model(model, base_dir=base_dir)
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.doc_prefix = doc_prefix
        self.max_length = max_length
        self.use_cache = cache
        self.fp16 = (device == "cuda") if fp16 is None else fp16
        self.stats = {"encoded": 0, "cached": 0}
        self._model: Any = None
        self._cache: EmbeddingCache | None = None
        self._load()


    def _load(self) -> None:
        r = self.resolved
        if r.kind == "hash":
            from ragkit.testing import HashEmbedder

            self._model = HashEmbedder(dim=r.dim or 256)
            self.dim = self._model.dim
            return
        if r.kind != "hf":
            raise ConfigError(f"model '{self.model_name}' is a {r.kind} model ({r.file}); dense retrieval needs "
                              f"a sentence-transformers / transformers encoder folder (e.g. 'minilm').")
        pick_device(self.device, "dense encoding")   # an unavailable GPU is a clear error, never a fallback
        if self.backend != "torch":
            from ._onnx import OnnxEncoderModel, thread_count

            self._model = OnnxEncoderModel(Path(r.path), quantize=self.backend == "onnx-int8",
                                           max_length=self.max_length, threads=thread_count())
            self.dim = self._model.dim
            return
        st = require("sentence_transformers", "dense encoding")
        self._model = st.SentenceTransformer(str(r.path), device=self.device, local_files_only=True)
        if self.max_length is not None:
            self._model.max_seq_length = self.max_length
        if self.fp16 and self.device == "cuda":
            self._model.half()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def _namespace_cache(self) -> EmbeddingCache:
        if self._cache is None:
            tag = f"{self.cache_id}\x1f{self.dim}\x1f{int(self.fp16)}" + ("" if self.backend == "torch" else f"\x1f{self.backend}")
            ns = hashlib.sha256(tag.encode()).hexdigest()[:20]
            self._cache = EmbeddingCache(cache_dir() / "embeddings" / ns, self.dim)
        return self._cache

    def _raw_encode(self, texts: list[str], progress: bool) -> np.ndarray:
        if self.resolved.kind == "hash":
            return self._model.encode(texts, normalize=self.normalize)
        if self.backend != "torch":
            return self._model.encode(texts, batch_size=self.batch_size, normalize=self.normalize)
        vecs = self._model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress,
                                  convert_to_numpy=True, normalize_embeddings=self.normalize)
        return np.asarray(vecs, dtype=np.float32)

    def encode(self, texts: Sequence[str], *, prefix: str = "", progress: bool | None = False,
               cache: bool | None = None) -> np.ndarray:
        """Encode ``prefix + text`` for each text; float32 [N, dim]."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        use_cache = self.use_cache if cache is None else cache
        full = [prefix + t for t in texts] if prefix else texts
        if not use_cache:
            self.stats["encoded"] += len(full)
            return self._raw_encode(full, bool(progress))
        c = self._namespace_cache()
        keys = text_keys(self.cache_id, prefix, self.normalize, texts)
        out, found = c.lookup(keys)
        missing = np.flatnonzero(~found)
        self.stats["cached"] += int(found.sum())
        if len(missing):
            # identical texts inside one call are encoded once
            uniq: dict[bytes, int] = {}
            first = []
            for i in missing:
                k = keys[i].tobytes()
                if k not in uniq:
                    uniq[k] = len(first)
                    first.append(int(i))
            vecs = self._raw_encode([full[i] for i in first], bool(progress))
            self.stats["encoded"] += len(first)
            for i in missing:
                out[i] = vecs[uniq[keys[i].tobytes()]]
            c.add(keys[first], vecs)
        return out

    def encode_documents(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        return self.encode(texts, prefix=self.doc_prefix, progress=progress)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, prefix=self.query_prefix, progress=False, cache=False)


def show_progress(stage: Any) -> bool:
    """The stage's ``_progress`` setting; None means: only when stderr is a terminal."""
    import sys

    p = stage._progress
    if p is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(p)
