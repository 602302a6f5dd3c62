"""Index folders on disk: params JSON + arrays, written atomically, checked when loaded.

An index folder holds ``params.json`` (stage key, constructor args, ragkit version, content
hash of the input) and arrays. It is written into a temporary sibling folder and renamed into
place, so a crash never leaves a half-written index and an existing index survives a failed
rebuild.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import IndexArtifactError

PARAMS_FILE = "params.json"


def cache_dir() -> Path:
    """The one folder ragkit writes caches into (``$RAGKIT_CACHE``, else ``~/.cache/ragkit``)."""
    return Path(os.environ.get("RAGKIT_CACHE") or Path.home() / ".cache" / "ragkit")


def resolve_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """A relative path in a pipeline file is relative to that file's folder."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def content_hash(items: Any) -> str:
    """sha256 over an iterable of strings (or of tuples of strings)."""
    h = hashlib.sha256()
    for it in items:
        if isinstance(it, (tuple, list)):
            for x in it:
                h.update(str(x).encode("utf-8"))
                h.update(b"\x1f")
        else:
            h.update(str(it).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_params(folder: Path, params: Mapping[str, Any]) -> None:
    from . import __version__

    data = {"ragkit_version": __version__, **params}
    (folder / PARAMS_FILE).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def read_params(folder: str | Path, *, expect_key: str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    f = folder / PARAMS_FILE
    if not folder.exists():
        raise IndexArtifactError(f"{folder}: no index here. Build it first (`ragkit index PIPELINE.yaml`).")
    if not f.exists():
        raise IndexArtifactError(f"{folder}: not a ragkit index ({PARAMS_FILE} missing); rebuild it.")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexArtifactError(f"{f}: corrupt index parameters ({exc}); rebuild the index.") from None
    if expect_key is not None and data.get("stage") != expect_key:
        raise IndexArtifactError(f"{folder}: index was built by '{data.get('stage')}', expected '{expect_key}'.")
    return data


def check_params(folder: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raise IndexArtifactError listing every parameter that differs."""
    diffs = [f"{k}: index has {stored.get(k)!r}, pipeline asks for {v!r}"
             for k, v in wanted.items() if stored.get(k) != v]
    if diffs:
        raise IndexArtifactError(f"{folder}: index built with other parameters ({'; '.join(diffs)}). "
                                 f"Rebuild it with `ragkit index` or change the pipeline.")


def load_array(folder: Path, name: str, mmap: bool = False) -> np.ndarray:
    f = folder / name
    try:
        return np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexArtifactError(f"{f}: missing or corrupt index array ({exc}); rebuild the index.") from None


class DocStore:
    """Ids, texts and titles of indexed units: one UTF-8 blob + offsets, memory-mapped on load."""

    def __init__(self, ids: list[str], doc_ids: list[str], blob: Any, offsets: np.ndarray,
                 titles: list[str | None] | None = None) -> None:
        self.ids, self.doc_ids, self._blob, self._offsets = ids, doc_ids, blob, offsets
        self.titles = titles

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._blob[a:b]).decode("utf-8")

    def title(self, i: int) -> str | None:
        return self.titles[i] if self.titles else None

    @staticmethod
    def write(folder: Path, ids: list[str], doc_ids: list[str], texts: list[str],
              titles: list[str | None] | None = None) -> None:
        enc = [t.encode("utf-8") for t in texts]
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=offsets[1:])
        with open(folder / "texts.bin", "wb") as f:
            for e in enc:
                f.write(e)
        np.save(folder / "text_offsets.npy", offsets)
        meta = {"ids": ids, "doc_ids": doc_ids if doc_ids != ids else None,
                "titles": titles if titles and any(titles) else None}
        (folder / "docstore.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "DocStore":
        try:
            meta = json.loads((folder / "docstore.json").read_text(encoding="utf-8"))
            blob = np.memmap(folder / "texts.bin", dtype=np.uint8, mode="r") \
                if (folder / "texts.bin").stat().st_size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as exc:
            raise IndexArtifactError(f"{folder}: missing or corrupt document store ({exc}); rebuild the index.") from None
        offsets = load_array(folder, "text_offsets.npy")
        ids = meta["ids"]
        if len(offsets) != len(ids) + 1:
            raise IndexArtifactError(f"{folder}: document store is inconsistent ({len(ids)} ids, "
                                     f"{len(offsets) - 1} texts); rebuild the index.")
        return cls(ids, meta.get("doc_ids") or ids, blob, offsets, meta.get("titles"))


# -- sharded index folders ------------------------------------------------------------------------
#
# A sharded index is still one index folder, written with :func:`atomic_folder`: its top-level
# ``params.json`` (with ``"sharded": true``), the global data every shard shares (BM25: the
# vocabulary and global statistics), one sub-folder per shard and ``shards.json``, the manifest.
# Every shard folder carries ``shard.json`` naming the build it belongs to; the manifest is written
# last inside the temporary folder and the folder is renamed into place in one step, so all shards
# are committed together or not at all.

SHARDS_FILE = "shards.json"
SHARD_FILE = "shard.json"
SHARD_LAYOUT = "ragkit-shards"
SHARD_LAYOUT_VERSION = 1


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / SHARDS_FILE).exists()


def write_shard_manifest(folder: Path, stage: str, build_id: str, shards: list[Mapping[str, Any]],
                         extra: Mapping[str, Any] | None = None) -> None:
    """Write each shard's ``shard.json`` and the folder's manifest (call last, inside atomic_folder)."""
    from . import __version__

    for i, s in enumerate(shards):
        sdata = {"layout": SHARD_LAYOUT, "layout_version": SHARD_LAYOUT_VERSION, "build_id": build_id,
                 "stage": stage, "shard": i, "num_shards": len(shards), "count": s["count"]}
        (folder / s["name"] / SHARD_FILE).write_text(json.dumps(sdata, indent=2), encoding="utf-8")
    data = {"layout": SHARD_LAYOUT, "layout_version": SHARD_LAYOUT_VERSION, "ragkit_version": __version__,
            "stage": stage, "build_id": build_id, "num_shards": len(shards),
            "total": int(sum(s["count"] for s in shards)), "shards": [dict(s) for s in shards], **(extra or {})}
    (folder / SHARDS_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")


def read_shard_manifest(folder: str | Path, *, expect_stage: str | None = None,
                        expect_shards: int | None = None) -> dict[str, Any]:
    """Read and check a sharded index's manifest and every shard's ``shard.json``.

    Errors (IndexArtifactError) for: a layout this ragkit does not read, a shard folder missing or
    belonging to another build (shards mixed from different builds or ragkit versions), and a shard
    count other than ``expect_shards`` (a retriever told another layout)."""
    folder = Path(folder)
    f = folder / SHARDS_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexArtifactError(f"{folder}: not a sharded index ({SHARDS_FILE} missing).") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexArtifactError(f"{f}: corrupt shard manifest ({exc}); rebuild the index.") from None
    if not isinstance(data, dict) or data.get("layout") != SHARD_LAYOUT:
        raise IndexArtifactError(f"{f}: unknown shard layout {data.get('layout') if isinstance(data, dict) else data!r}"
                                 f"; expected '{SHARD_LAYOUT}'. Rebuild the index.")
    if data.get("layout_version") != SHARD_LAYOUT_VERSION:
        raise IndexArtifactError(f"{f}: shard layout version {data.get('layout_version')!r} (written by ragkit "
                                 f"{data.get('ragkit_version')}), this ragkit reads version {SHARD_LAYOUT_VERSION}. "
                                 f"Rebuild the index with this ragkit.")
    if expect_stage is not None and data.get("stage") != expect_stage:
        raise IndexArtifactError(f"{folder}: sharded index was built by '{data.get('stage')}', expected "
                                 f"'{expect_stage}'.")
    n = data.get("num_shards")
    shards = data.get("shards") or []
    if not isinstance(n, int) or n != len(shards) or n < 1:
        raise IndexArtifactError(f"{f}: manifest lists {len(shards)} shards but says num_shards={n!r}; rebuild.")
    if expect_shards is not None and expect_shards != n:
        raise IndexArtifactError(f"{folder}: the index has {n} shards, the retriever was told shards={expect_shards}. "
                                 f"Rebuild the index with {expect_shards} partitions or set shards: {n} "
                                 f"(or leave 'shards' unset to accept the index's layout).")
    for i, s in enumerate(shards):
        sf = folder / str(s.get("name")) / SHARD_FILE
        try:
            sd = json.loads(sf.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IndexArtifactError(f"{sf}: shard #{i} is missing or corrupt ({exc}); rebuild the index.") from None
        if sd.get("layout_version") != SHARD_LAYOUT_VERSION or sd.get("build_id") != data.get("build_id") \
                or sd.get("shard") != i or sd.get("count") != s.get("count"):
            raise IndexArtifactError(
                f"{sf}: shard #{i} does not belong to this index (shard build {sd.get('build_id')!r}, layout "
                f"version {sd.get('layout_version')!r}, position {sd.get('shard')!r}; the manifest says build "
                f"{data.get('build_id')!r}, version {SHARD_LAYOUT_VERSION}, position {i}). Shards from different "
                f"builds or ragkit versions cannot be mixed; rebuild the index.")
    return data
