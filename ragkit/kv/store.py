"""Passage key/value store: one safetensors file per passage block, plus an in-memory LRU.

An entry holds, for one passage block computed after the shared prefix, the key and value
states of every layer (``keys``/``values``: ``[layers, kv_heads, tokens, head_dim]``), the
block's token ids and ``start``, the absolute position of its first token when it was computed
(keys are stored *after* rotary encoding at positions ``start..start+n-1``; the reuse path
re-rotates them exactly by ``target - start``).

Entries are keyed by sha256 of (model id + revision, tokenizer fingerprint, prefix hash, storage
dtype) -- the *namespace* -- and the sha256 of the passage block text. Files live under
``<root>/<namespace[:20]>/<key[:2]>/<key>.safetensors``; ``<root>/<namespace[:20]>/namespace.json``
records what the namespace stands for. Files are written to a temporary name and renamed, so a
crash never leaves a half entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ragkit._deps import require
from ragkit.errors import IndexArtifactError

STORE_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class PassageKV:
    """KV states of one passage block."""

    ids: Any        # LongTensor [n]
    keys: Any       # [layers, kv_heads, n, head_dim]
    values: Any     # same shape
    start: int      # absolute position of the first token when computed

    @property
    def n_tokens(self) -> int:
        return int(self.keys.shape[-2])

    @property
    def nbytes(self) -> int:
        return int(self.keys.numel() * self.keys.element_size() * 2 + self.ids.numel() * 8)

    def to(self, device: Any = None, dtype: Any = None) -> "PassageKV":
        return PassageKV(self.ids.to(device) if device is not None else self.ids,
                         self.keys.to(device=device, dtype=dtype), self.values.to(device=device, dtype=dtype),
                         self.start)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def namespace_key(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (fast tokenizers) or of its vocabulary."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab()
        for k in sorted(vocab):
            h.update(f"{k}\x1f{vocab[k]}\x1e".encode("utf-8"))
    return h.hexdigest()[:32]


class KVStore:
    """Disk store (safetensors) + in-memory LRU bounded in bytes. Thread-safe."""

    def __init__(self, root: str | Path, namespace: Mapping[str, Any], *, storage_dtype: str = "float32",
                 memory_bytes: int = 1 << 30, write: bool = True) -> None:
        if storage_dtype not in STORE_DTYPES[1:]:
            raise ValueError(f"storage_dtype must be one of {STORE_DTYPES[1:]}, got {storage_dtype!r}")
        self.root = Path(root)
        self.storage_dtype = storage_dtype
        self.namespace = {**namespace, "storage_dtype": storage_dtype}
        self.ns = namespace_key(self.namespace)
        self.folder = self.root / self.ns[:20]
        self.memory_bytes = int(memory_bytes)
        self.write_enabled = write
        self._lru: OrderedDict[str, PassageKV] = OrderedDict()
        self._lru_bytes = 0
        self._lock = threading.RLock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "writes": 0}

    # -- keys and files ----------------------------------------------------------------------------
    def key(self, block_text: str) -> str:
        return hashlib.sha256(f"{self.ns}\x1f{text_hash(block_text)}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _write_namespace(self) -> None:
        f = self.folder / "namespace.json"
        if not f.exists():
            from ragkit.artifacts import atomic_write_text

            atomic_write_text(f, json.dumps(self.namespace, indent=2, sort_keys=True))

    # -- memory LRU ------------------------------------------------------------------------------
    def _remember(self, key: str, kv: PassageKV) -> None:
        if kv.nbytes > self.memory_bytes:
            return
        with self._lock:
            old = self._lru.pop(key, None)
            if old is not None:
                self._lru_bytes -= old.nbytes
            self._lru[key] = kv
            self._lru_bytes += kv.nbytes
            while self._lru_bytes > self.memory_bytes and self._lru:
                _, ev = self._lru.popitem(last=False)
                self._lru_bytes -= ev.nbytes

    @property
    def memory_used(self) -> int:
        return self._lru_bytes

    def clear_memory(self) -> None:
        with self._lock:
            self._lru.clear()
            self._lru_bytes = 0

    # -- get / put -------------------------------------------------------------------------------
    def get(self, block_text: str, *, device: Any = None, dtype: Any = None) -> PassageKV | None:
        """The entry for a block (memory, else disk), cast to ``dtype`` on ``device``; None if absent."""
        key = self.key(block_text)
        with self._lock:
            kv = self._lru.get(key)
            if kv is not None:
                self._lru.move_to_end(key)
                self.stats["memory_hits"] += 1
        if kv is None:
            f = self.path(key)
            if not f.exists():
                with self._lock:
                    self.stats["misses"] += 1
                return None
            kv = self._load(f, device)
            with self._lock:
                self.stats["disk_hits"] += 1
            self._remember(key, kv)
        return kv.to(device, dtype) if (device is not None or dtype is not None) else kv

    def _load(self, f: Path, device: Any) -> PassageKV:
        st = require("safetensors.torch", "the passage KV store")
        try:
            with open(f, "rb") as fh:
                data = fh.read()
            tensors = st.load(data)
            meta = _read_meta(data)
            kv = PassageKV(tensors["ids"], tensors["keys"], tensors["values"], int(meta["start"]))
        except Exception as exc:
            raise IndexArtifactError(f"{f}: corrupt passage KV entry ({exc}); delete it (it is rebuilt "
                                     "on the next use) or rebuild the store with the index.kv stage.") from None
        if device is not None:
            kv = kv.to(device)
        return kv

    def put(self, block_text: str, kv: PassageKV) -> PassageKV:
        """Store an entry (cast to the storage dtype); returns the stored form."""
        torch = require("torch", "the passage KV store", extra="llm")
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.storage_dtype]
        stored = PassageKV(kv.ids.detach().to("cpu", torch.int64).contiguous(),
                           kv.keys.detach().to("cpu", dt).contiguous(),
                           kv.values.detach().to("cpu", dt).contiguous(), int(kv.start))
        key = self.key(block_text)
        if self.write_enabled:
            st = require("safetensors.torch", "the passage KV store")
            self._write_namespace()
            f = self.path(key)
            f.parent.mkdir(parents=True, exist_ok=True)
            from ragkit.artifacts import temp_file

            fd, tmp = temp_file(f.parent, f".{f.name}.")
            os.close(fd)
            try:
                st.save_file({"ids": stored.ids, "keys": stored.keys, "values": stored.values}, tmp,
                             metadata={"start": str(stored.start), "text_sha256": text_hash(block_text),
                                       "namespace": self.ns})
                os.replace(tmp, f)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            with self._lock:
                self.stats["writes"] += 1
        self._remember(key, stored)
        return stored

    def __contains__(self, block_text: str) -> bool:
        key = self.key(block_text)
        return key in self._lru or self.path(key).exists()

    def disk_bytes(self) -> int:
        if not self.folder.exists():
            return 0
        return sum(f.stat().st_size for f in self.folder.rglob("*.safetensors"))


def _read_meta(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__", {})
