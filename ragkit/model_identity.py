"""One identity for a model's weights, used by every cache keyed by a model.

A cache of embeddings or passage KV must miss when the weights change, even when they change in
place (``ragkit train-reranker --output same/folder`` run twice, a fine-tune saved over its base).
A model's name or path is therefore not enough. :func:`model_identity` is a sha256 over

- the content of every file in the model folder that can change its outputs: weights
  (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``), configuration and tokenizer files
  (``*.json``, ``*.model``, ``*.txt``, ``*.tiktoken``), including sentence-transformers module
  sub-folders (``1_Pooling/``, ...), by relative path;
- the versions of the libraries that change numerics (torch, transformers, sentence-transformers).

Hashing a 90 MB MiniLM takes ~0.2 s; it is done once per file content: the digest is cached in
memory and in ``cache_dir()/model_identity.json`` under the file's absolute path, size, mtime and
inode, so a file that is rewritten (new mtime) is hashed again and an unchanged one is not.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib import metadata
from pathlib import Path

#: file kinds that can change what a model computes
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken")
#: libraries whose version changes the numbers a model produces
NUMERIC_LIBS = ("torch", "transformers", "sentence-transformers")

_LOCK = threading.Lock()
_MEMO: dict[tuple, str] = {}


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`NUMERIC_LIBS` (``"-"`` when absent); no import needed."""
    out = {}
    for lib in NUMERIC_LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "-"
    return out


def _stat_key(f: Path) -> tuple:
    st = f.stat()
    return (str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _store_path() -> Path:
    from ragkit.artifacts import cache_dir

    return cache_dir() / "model_identity.json"


def _load_store() -> dict:
    try:
        data = json.loads(_store_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_store(data: dict) -> None:
    p = _store_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, p)
    except OSError:  # a read-only cache folder only costs re-hashing next time
        pass


def file_digest(f: Path, store: dict | None = None) -> str:
    """sha256 of a file's content, cached by (absolute path, size, mtime, inode)."""
    key = _stat_key(f)
    with _LOCK:
        hit = _MEMO.get(key)
    if hit is not None:
        return hit
    skey = "\x1f".join(map(str, key))
    if store is not None and skey in store:
        digest = store[skey]
    else:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if store is not None:
            for old in [k for k in store if k.startswith(key[0] + "\x1f")]:
                del store[old]   # the file's earlier contents
            store[skey] = digest
    with _LOCK:
        _MEMO[key] = digest
    return digest


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that can change its outputs, in a stable order."""
    out = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue   # .cache/, .git/ ...
        if f.is_file() and f.suffix.lower() in SUFFIXES:
            out.append(f)
    return out


def model_identity(path: str | os.PathLike | None, *, name: str = "") -> str:
    """A short content hash of a model: its weights/config/tokenizer files plus numeric library versions.

    ``path`` is a model folder or a single weights file (GGUF). ``None`` (a model without weights,
    such as the fake ``hash`` embedder) gives an identity from ``name`` and the library versions.
    """
    h = hashlib.sha256()
    for lib, ver in sorted(library_versions().items()):
        h.update(f"{lib}={ver}\x1f".encode())
    if path is None:
        h.update(f"name={name}".encode())
        return h.hexdigest()[:20]
    p = Path(path)
    files = [p] if p.is_file() else model_files(p)
    return _hash_files(h, p, files)


def _hash_files(h, p: Path, files: list[Path]) -> str:
    """Feed each file's relative name and content digest into ``h``; the short hex digest."""
    store = _load_store()
    before = dict(store)
    for f in files:
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        h.update(rel.encode() + b"\x1f" + file_digest(f, store).encode() + b"\x1e")
    if store != before:
        _save_store(store)
    return h.hexdigest()[:20]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_identity(path: str | os.PathLike) -> str:
    """A short content hash of a model's *weights* only (no configuration, tokenizer or library versions):
    what an adapter trained on this model must be applied to (:mod:`ragkit.adapters`)."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in model_files(p) if f.suffix.lower() in WEIGHT_SUFFIXES]
    return _hash_files(hashlib.sha256(), p, files)


__all__ = ["model_identity", "weights_identity", "model_files", "file_digest", "library_versions", "SUFFIXES", "NUMERIC_LIBS",
           "ModelCacheKey"]


class ModelCacheKey:
    """Mixin for a stage's model wrapper that holds ``self.resolved`` (a ragkit.models.ResolvedModel).

    Gives ``model_id`` (the resolved name) and ``cache_id``: the name plus :func:`model_identity` of
    the weights folder, computed once on first use. A wrapper whose weights live somewhere else than
    ``resolved.path`` (a GGUF file converted to a folder) overrides :meth:`_weights_folder`.
    """

    resolved: object
    _cache_id: str | None = None   # computed on first use

    @property
    def model_id(self) -> str:
        return self.resolved.id

    def _weights_folder(self):
        r = self.resolved
        return r.path if r.kind == "hf" else None

    @property
    def cache_id(self) -> str:
        """The model as a cache knows it: id plus a content hash of the weights."""
        cid = self._cache_id
        if cid is None:
            cid = f"{self.resolved.id}\x1f{model_identity(self._weights_folder(), name=self.resolved.id)}"
            self._cache_id = cid
        return cid
