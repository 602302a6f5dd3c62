"""Search a sharded index's shards on Dask workers (``cluster:`` on ``retriever.bm25`` / ``retriever.dense``).

For an index that does not fit one machine's memory. The client keeps only what it needs to form the
queries and merge the answers: the manifest, the parameters, and BM25's global vocabulary (to tokenize)
or the dense query encoder. Every shard is loaded **once per worker** that serves it (shard *i* is placed
on worker *i* mod W, from the index folder, which the workers must read at the same path: shared storage,
or a copy of the folder at that path on each machine), and each query batch goes to every shard's worker
as one task. A shard answers each query with its top k by (score desc, doc_id, chunk_id) -- the ids (and
the texts when asked) travel back, never the shard -- and the client merges the candidates by the same
key. That is what searching the same shards in process gives: identical for BM25 (whose shards carry
global statistics, so it also equals the single index); for flat dense up to float noise, since FAISS's
BLAS path depends on the worker process's thread count (tested).

A worker that dies is replaced by any other: the search task is rescheduled there and loads the shard
first. A worker that reads another build of the folder than the client's manifest names (shards from
different builds, a stale copy) fails with an :class:`~ragkit.errors.IndexArtifactError` naming it.
"""
from __future__ import annotations

import contextlib
import json
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, IndexArtifactError

_SHARDS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
SHARD_LOADS = {"count": 0}  # shards loaded by this process (read by tests through Client.run)


def _where() -> str:
    from .distributed import _worker_tag

    return _worker_tag()


def _open(kind: str, folder: str, name: str, build_id: str, count: int, mmap: bool) -> Any:
    from .artifacts import SHARD_FILE

    d = Path(folder) / name
    try:
        sd = json.loads((d / SHARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexArtifactError(f"{_where()}: cannot read shard {d} ({exc}). Searching shards on workers needs "
                                 f"the index folder readable by every worker at the same path (shared storage, "
                                 f"or a copy at that path).") from None
    if sd.get("build_id") != build_id or sd.get("count") != count:
        raise IndexArtifactError(f"{_where()}: {d} belongs to build {sd.get('build_id')!r} ({sd.get('count')} units); "
                                 f"the client's manifest names build {build_id!r} ({count} units). This worker sees "
                                 f"another version of the index folder; give every worker the same copy.")
    entry = {"name": name, "count": count}
    if kind == "bm25":
        from ragkit.indexers._bm25_shards import load_head, load_nonocc, load_shard

        params, vocab, _ = load_head(Path(folder))
        return load_shard(Path(folder), entry, params, vocab, {t: i for i, t in enumerate(vocab)},
                          load_nonocc(Path(folder), params, mmap), mmap)
    from ragkit.indexers._faiss import DenseIndex

    return DenseIndex.load(d, expect_key="indexer.dense", mmap=mmap)


def _shard(kind: str, folder: str, name: str, build_id: str, count: int, mmap: bool) -> Any:
    """The shard, loaded by this process once and kept for every later query batch."""
    key = (kind, folder, name, build_id, mmap)
    with _LOCK:
        sh = _SHARDS.get(key)
        if sh is None:
            sh = _open(kind, folder, name, build_id, count, mmap)
            _SHARDS[key] = sh
            SHARD_LOADS["count"] += 1
    return sh


def _load(kind: str, folder: str, name: str, build_id: str, count: int, mmap: bool) -> int:
    _shard(kind, folder, name, build_id, count, mmap)
    return count


def _answers(sh: Any, kind: str, rows: list, scores: list, with_text: bool) -> list[tuple]:
    ids = sh.ids if kind == "bm25" else sh.chunk_ids
    out = []
    for r, s in zip(rows, scores):
        out.append((s, sh.doc_ids[r], ids[r], sh.text(r) if with_text else None, sh.title(r)))
    return out


def _search(kind: str, folder: str, name: str, build_id: str, count: int, mmap: bool, queries: Any, k: int,
            with_text: bool, opts: dict) -> list[list[tuple]]:
    """On a worker: one shard's top ``k`` for every query, as (score, doc_id, chunk_id, text, title)."""
    sh = _shard(kind, folder, name, build_id, count, mmap)
    if kind == "bm25":
        out = []
        for term_ids in queries:
            rows, scores = sh.search(term_ids, k)
            out.append(_answers(sh, kind, rows.tolist(), scores.tolist(), with_text))
        return out
    if len(sh) == 0:
        return [[] for _ in range(len(queries))]
    scores, rows = sh.search(np.asarray(queries, dtype=np.float32), k, **opts)
    return [_answers(sh, kind, r[r >= 0].tolist(), s[r >= 0].tolist(), with_text) for s, r in zip(scores, rows)]


def merge(per_shard: Sequence[list[tuple]], k: int) -> list[tuple]:
    """The ``k`` best answers of all shards by (score desc, doc_id, chunk_id): the order of every ranking."""
    cand = [a for answers in per_shard for a in answers]
    cand.sort(key=lambda a: (-a[0], a[1], a[2] or ""))
    return cand[:k]


class ShardWorkers:
    """A sharded index folder served by the workers of a Dask cluster (``cluster``: ``local[:N]``,
    ``tcp://HOST:PORT`` or ``serial`` for the same code in this process)."""

    def __init__(self, cluster: str, folder: Path, kind: str, manifest: dict, *, mmap: bool) -> None:
        from .distributed import open_executor

        self.kind, self.folder, self.mmap = kind, str(Path(folder).resolve()), mmap
        self.build_id, self.shards = manifest["build_id"], [(s["name"], int(s["count"])) for s in manifest["shards"]]
        stack = contextlib.ExitStack()
        self._ex = stack.enter_context(open_executor(cluster))
        self._close = weakref.finalize(self, stack.close)
        try:
            workers = self.worker_addresses()
            self.placement = {name: workers[i % len(workers)] if workers else None
                              for i, (name, _) in enumerate(self.shards)}
            # load every shard on its worker now, so a missing folder or a stale copy fails at setup
            self._ex.gather([self._submit(name, _load, kind, self.folder, name, self.build_id, count, mmap)
                             for name, count in self.shards])
        except BaseException:
            self.close()
            raise

    def worker_addresses(self) -> list[str]:
        if self._ex.client is None:
            return []
        return sorted(self._ex.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _submit(self, name: str, fn: Any, *args: Any) -> Any:
        where = self.placement.get(name)
        if where is None:
            return self._ex.submit(fn, *args)
        # the shard's own worker; another one if that worker is gone (it then loads the shard first)
        return self._ex.client.submit(fn, *args, workers=[where], allow_other_workers=True, pure=False)

    def search(self, queries: list, k: int, *, with_text: bool = False, opts: dict | None = None) -> list[list[tuple]]:
        """Per query: the merged top ``k`` as (score, doc_id, chunk_id, text, title)."""
        if not queries:
            return []
        futs = [self._submit(name, _search, self.kind, self.folder, name, self.build_id, count, self.mmap, queries,
                             k, with_text, opts or {}) for name, count in self.shards]
        per = self._ex.gather(futs)
        return [merge([p[q] for p in per], k) for q in range(len(queries))]

    def close(self) -> None:
        self._close()


def check_remote(cluster: str | None, key: str) -> None:
    if cluster:
        from .distributed import check_cluster

        try:
            check_cluster(cluster, key)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("parameter 'cluster'", "parameter 'cluster' (search shards on "
                                                                       "workers)")) from None


def shard_loads(executor_or_client: Any) -> dict:
    """Per worker: how many shards its process has loaded (for tests)."""
    client = getattr(executor_or_client, "client", executor_or_client)
    return client.run(_loads_here)


def _loads_here() -> int:
    return SHARD_LOADS["count"]


__all__ = ["ShardWorkers", "merge", "shard_loads"]
