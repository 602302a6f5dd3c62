"""Index and evaluate on a Dask cluster (``pip install 'ragkit[dask]'``), or in partitions in process.

Where the work runs is an *executor*:

- ``serial``: no Dask; the same partitioned (sharded) build, run in this process one partition after
  another. Useful to build a sharded index on one machine and as the reference the cluster runs are
  tested against.
- ``local`` / ``local:N``: a Dask ``LocalCluster`` of N worker processes (default: one per CPU), one
  thread each, bound to 127.0.0.1 with no dashboard; it is started for the job and closed after it.
- ``tcp://HOST:PORT``: an existing Dask scheduler (``dask scheduler`` + ``dask worker`` on the
  machines). ragkit only connects to the address given.
- a ``distributed.Client`` passed from Python.

**Indexing** (``Pipeline.build_index(executor=...)``, ``ragkit index --cluster``): the documents are
split into contiguous partitions (a multiple of the worker count, at most 50,000 documents each, unless
``partitions`` says otherwise). Every
partition runs on a worker through the index stages: chunkers, then each indexer's *map* step
(BM25 tokenization and counts, dense encoding with the model loaded once per worker process). The
indexers reduce the small per-partition statistics on the client (BM25: global document frequencies
and average length), each partition builds its shard on its worker with those global statistics and
writes the shard folder into the client's temporary index folder when it can see it (same machine or
shared storage; else the shard travels back), and the client writes the manifest and renames every index
folder into place, atomically. Nothing becomes visible before every partition has succeeded: a partition whose worker dies is recomputed by Dask on another
worker (its intermediate results are re-derived from the inputs); if that keeps failing the job stops
with a :class:`ClusterError` and the previous index folders are untouched.

**Evaluation** (``evaluate(..., executor=...)``, ``ragkit eval --cluster``): the queries are split in
batches across workers; each worker loads a pipeline once (kept for later tasks) and the results come
back in query order, so the metrics and per-query values equal a local run's.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import ConfigError, MissingDependencyError, RagkitError

PARTITION_ITEMS = 50_000  # default partition size bound (documents), see Executor.n_partitions
CLUSTER_RE = re.compile(r"^(serial|local(:[1-9][0-9]*)?|(tcp|tls)://[^\s/:]+:[0-9]{1,5})$")
CLUSTER_HELP = ("serial (in this process), local or local:N (Dask LocalCluster of N worker processes on "
                "127.0.0.1), tcp://HOST:PORT (an existing Dask scheduler)")


class ClusterError(RagkitError):
    """The cluster cannot be reached, or a partition failed on it."""


def check_cluster(value: str, where: str = "executor") -> None:
    if not isinstance(value, str) or not CLUSTER_RE.match(value):
        raise ConfigError(f"'{where}': parameter 'cluster' is {value!r}; valid: {CLUSTER_HELP}.")


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError("running on a Dask cluster needs dask and distributed: "
                                     "pip install 'ragkit[dask]' (or cluster: serial).") from None
    return distributed


class Executor:
    """Runs partition tasks: in process (``client is None``) or on a Dask client."""

    def __init__(self, client: Any = None, *, partitions: int = 0, retries: int = 0, label: str = "serial") -> None:
        self.client, self.partitions, self.retries = client, partitions, retries
        self.label = label if client is None or label != "serial" else "client"

    @property
    def workers(self) -> int:
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def n_partitions(self, n_items: int) -> int:
        """``partitions`` if set; else a multiple of the worker count with at most PARTITION_ITEMS items each:
        several partitions per worker let the next one's transfer overlap the current one's work and keep each
        task's memory small (BM25, 105k passages, 1 worker, one run each under load: 8.35 s with 1 partition,
        7.35 s with 3; benchmarks/results/scale_overhead_profile.md)."""
        if self.partitions:
            want = self.partitions
        else:
            w = self.workers
            want = w * max(1, -(-n_items // (w * PARTITION_ITEMS)))
        return max(1, min(want, n_items))

    def submit(self, fn: Any, *args: Any) -> Any:
        if self.client is None:
            return _Done(fn(*(a.value if isinstance(a, _Done) else a for a in args)))
        return self.client.submit(fn, *args, pure=False, retries=self.retries)

    def gather(self, futures: list) -> list:
        if self.client is None:
            return [f.value for f in futures]
        distributed = _require_distributed()
        import asyncio

        from distributed.client import FutureCancelledError

        try:
            return self.client.gather(futures)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)  # nothing keeps running (or writing) after a failure
            if not isinstance(exc, (distributed.KilledWorker, FutureCancelledError, asyncio.CancelledError)):
                raise
            what = str(exc.args[0]) if exc.args else "a task"
            raise ClusterError(f"a worker died (or was lost) while running {what} and the task failed on every retry (Dask "
                               f"gives up after distributed.scheduler.allowed-failures); nothing was written, the "
                               f"previous index, if any, is intact. Check the workers' memory and logs.") from None

    def scatter(self, value: Any) -> Any:
        if self.client is None:
            return value
        return self.client.scatter(value, broadcast=True)


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value


@contextlib.contextmanager
def open_executor(spec: Any = None, *, partitions: int | None = None) -> Iterator[Executor]:
    """An :class:`Executor` from a spec: an ExecutorSpec, a cluster string, a ``distributed.Client``."""
    from .config import ExecutorSpec

    if isinstance(spec, Executor):
        yield spec
        return
    if isinstance(spec, str):
        check_cluster(spec, "cluster")
        spec = ExecutorSpec(cluster=spec)
    if spec is None:
        spec = ExecutorSpec(cluster="serial")
    if not isinstance(spec, ExecutorSpec):  # a distributed.Client (or something that quacks like one)
        if not hasattr(spec, "submit") or not hasattr(spec, "scheduler_info"):
            raise ConfigError(f"executor: expected 'serial', 'local[:N]', 'tcp://HOST:PORT', an ExecutorSpec or a "
                              f"distributed.Client; got {type(spec).__name__}.")
        yield Executor(spec, partitions=partitions or 0, label=f"client {getattr(spec, 'scheduler', '')}")
        return
    parts = spec.partitions if partitions is None else partitions
    if spec.cluster == "serial":
        yield Executor(None, partitions=parts or 1, label="serial")
        return
    distributed = _require_distributed()
    import logging

    if spec.cluster.startswith("local"):
        n = int(spec.cluster.split(":")[1]) if ":" in spec.cluster else (os.cpu_count() or 1)
        import dask

        # no dashboard, so no use for the workers' statistical profiler: it samples every thread's stack
        # every 10 ms, taking the GIL from the task (measured: pure-Python BM25 tokenization ran ~1.5x slower
        # on a worker than in process with it on; benchmarks/results/scale_overhead_profile.md)
        # and glibc's own (dynamic) malloc trim threshold instead of Dask's 64 KiB, which returns freed memory
        # to the OS so eagerly that allocation-heavy tasks page-fault it back in (BM25 at 105k passages: map +
        # build 8.6 s -> 7.4 s on the worker); a job's workers live for that job only
        environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.worker.profile.enabled": False,
                              "distributed.nanny.pre-spawn-environ": environ}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=spec.threads_per_worker,
                                               processes=True, host="127.0.0.1", dashboard_address=None,
                                               worker_dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                yield Executor(client, partitions=parts, retries=spec.retries, label=f"local:{n}")
        finally:
            cluster.close()
        return
    t0 = time.monotonic()
    # built in two steps so that a client whose connection failed can be closed at once; left to the garbage
    # collector it waits 2 x connect_timeout in Client.__del__ before the process can exit
    client = distributed.Client.__new__(distributed.Client)
    try:
        client.__init__(spec.cluster, timeout=spec.connect_timeout, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - whatever the address answered, the user needs the same advice
        with contextlib.suppress(Exception):
            client.close(timeout=1)
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if isinstance(exc, (OSError, TimeoutError)):
            why = msg or type(exc).__name__
        else:  # something listens there, but it does not speak Dask's protocol (seen: a garbage length header)
            why = f"the address answered but not as a Dask scheduler: {type(exc).__name__}: {msg[:120]}"
        raise ClusterError(f"cannot reach the Dask scheduler at {spec.cluster} (gave up after "
                           f"{time.monotonic() - t0:.1f} s: {why})."
                           f" Start it with `dask scheduler` (and `dask worker {spec.cluster}` on each machine), check "
                           f"the address, or use --cluster local[:N].") from None
    try:
        yield Executor(client, partitions=parts, retries=spec.retries, label=spec.cluster)
    finally:
        client.close()


# -- distributed indexing -----------------------------------------------------------------------------

def _worker_tag() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address} (pid {os.getpid()})"
    except (ImportError, ValueError):
        return f"this process (pid {os.getpid()})"


PROBE_FILE = ".ragkit-shared-probe"


def _pack(docs: list, ship: bool) -> Any:
    """A partition as it travels to a worker: one pickled bytes object of columns (ids, texts, metas).

    Bytes cross the scheduler without being unpickled and re-pickled on the way, and columns of plain
    strings pickle ~3x faster than Document objects. In process (``ship`` false) the list itself."""
    from .records import Document

    if not ship or not all(type(d) is Document for d in docs):
        return pickle.dumps(docs, protocol=5) if ship else docs
    return pickle.dumps(("columns", [d.doc_id for d in docs], [d.text for d in docs], [d.meta for d in docs]),
                        protocol=5)


def _unpack(docs: Any) -> list:
    if not isinstance(docs, bytes):
        return list(docs)
    obj = pickle.loads(docs)
    if isinstance(obj, tuple) and obj and obj[0] == "columns":
        from .records import Document

        return [Document(i, t, m) for i, t, m in zip(obj[1], obj[2], obj[3])]
    return list(obj)


def _map_partition(stages: list, docs: Any, base_dir: Any, part: int) -> dict:
    """On a worker: chunk the partition and run each indexer's map step. Partials stay here."""
    from .errors import ModelNotFoundError
    from .records import as_chunks
    from .stage import CHUNKS

    t0 = time.perf_counter()
    batch: list = _unpack(docs)
    del docs
    out: dict = {"partials": {}, "summaries": {}, "docs": len(batch)}
    for i, s in enumerate(stages):
        s.bind_context(base_dir=base_dir, progress=False)
        if s.input_kind == CHUNKS:
            batch = as_chunks(batch)
        if callable(getattr(s, "shard_map", None)):
            if not batch:
                continue
            try:
                out["partials"][i], out["summaries"][i] = s.shard_map(batch, base_dir)
            except (ModelNotFoundError, MissingDependencyError) as exc:
                raise type(exc)(f"{_worker_tag()}, partition {part + 1}, index stage #{i + 1} '{s.key}': "
                                f"{exc}") from None
        else:
            batch = s(batch)
    out["chunks"] = len(batch)
    out["compute_s"] = time.perf_counter() - t0
    return out


def _summaries(mapped: dict) -> dict:
    return {"summaries": mapped["summaries"], "docs": mapped["docs"], "chunks": mapped["chunks"],
            "compute_s": mapped["compute_s"]}


def _sees(target: tuple | None) -> bool:
    """Whether this process sees the client's temporary index folder (shared storage): its probe file."""
    if target is None:
        return False
    try:
        return (Path(target[0]) / PROBE_FILE).read_text(encoding="utf-8") == target[1]
    except OSError:
        return False


def _build_partition(stages: list, mapped: dict, part_args: dict, globs: dict, base_dir: Any,
                     targets: dict | None = None) -> dict:
    """On a worker: build this partition's shard of every index. Where the worker sees the client's
    temporary folder (same machine or shared storage) it writes the shard folder there itself and only
    a small record goes back; otherwise the shard's arrays and texts go back for the client to write."""
    t0 = time.perf_counter()
    out: dict = {}
    for i, arg in part_args.items():
        stages[i].bind_context(base_dir=base_dir)
        payload = stages[i].shard_build(mapped["partials"][i], arg, globs[i], base_dir)
        target = (targets or {}).get(i)
        if _sees(target):
            d = Path(target[0]) / target[2]
            if d.exists():  # left by an earlier attempt of this task (a worker died while writing)
                import shutil

                shutil.rmtree(d)
            payload = stages[i].shard_save(d, payload)
        out[i] = payload
    out["compute_s"] = time.perf_counter() - t0
    return out


def shardable(stages: Sequence[Any]) -> list[int]:
    """Positions of the index stages that can build shards; raises for indexers that cannot."""
    pos = []
    for i, s in enumerate(stages):
        if callable(getattr(s, "shard_map", None)):
            pos.append(i)
        elif callable(getattr(s, "index_folder", None)) or str(s.key).startswith("indexer."):
            raise ConfigError(f"index stage #{i + 1} '{s.key}' cannot build a sharded index yet; index it without "
                              f"an executor (no --cluster / executor: section).")
    if not pos:
        raise ConfigError("the pipeline's index stages have no indexer that builds shards "
                          "(indexer.bm25 and indexer.dense do).")
    return pos


def build_index(stages: list, documents: list, executor: Executor, *, base_dir: Any = None,
                progress: bool | None = None) -> dict:
    """Partition ``documents``, run the index stages on the executor, write every index as shards."""
    import secrets

    from .artifacts import atomic_folder, shard_name
    from .errors import StageInputError

    idx_pos = shardable(stages)
    if not documents:
        raise StageInputError("empty corpus: no documents to index (nothing was written)")
    t0 = time.perf_counter()
    n_parts = executor.n_partitions(len(documents))
    bounds = [len(documents) * p // n_parts for p in range(n_parts + 1)]
    ship = executor.client is not None
    # stages, documents and global statistics travel inside the tasks (not scattered): the scheduler keeps
    # them, so a partition whose worker dies can be recomputed anywhere; the documents as one bytes object
    stages_ref = list(stages)
    mapped = [executor.submit(_map_partition, stages_ref, _pack(documents[bounds[p]:bounds[p + 1]], ship), base_dir, p)
              for p in range(n_parts)]
    sums = executor.gather([executor.submit(_summaries, m) for m in mapped])
    t_map = time.perf_counter() - t0
    globs, args = {}, {}
    for i in idx_pos:
        have = [p for p in range(n_parts) if i in sums[p]["summaries"]]
        if not have:
            raise StageInputError(f"index stage #{i + 1} '{stages[i].key}': no chunks reached it; nothing to index.")
        g, per = stages[i].shard_reduce([sums[p]["summaries"][i] for p in have])
        globs[i] = g
        args[i] = dict(zip(have, per))
    globs_ref = {i: {k: v for k, v in g.items() if not str(k).startswith("client_")} for i, g in globs.items()}
    with contextlib.ExitStack() as stack:
        # every index's temporary folder first: workers that see it (same machine or shared storage; a probe
        # file tells) write their shard folders into it; nothing is visible before the atomic rename
        tmps, targets = {}, {}
        token = secrets.token_hex(8)
        for i in idx_pos:
            stages[i].bind_context(base_dir=base_dir)
            tmps[i] = stack.enter_context(atomic_folder(stages[i].index_folder()))
            (tmps[i] / PROBE_FILE).write_text(token, encoding="utf-8")
            targets[i] = {p: (str(tmps[i]), token, shard_name(n)) for n, p in enumerate(args[i])}
        built = [executor.submit(_build_partition, stages_ref, mapped[p],
                                 {i: args[i][p] for i in idx_pos if p in args[i]}, globs_ref, base_dir,
                                 {i: targets[i][p] for i in idx_pos if p in args[i]})
                 for p in range(n_parts)]
        payloads = executor.gather(built)
        t_build = time.perf_counter() - t0 - t_map
        shipped = 0
        for i in idx_pos:  # every partition succeeded: now write, each folder in one atomic rename
            s = stages[i]
            (tmps[i] / PROBE_FILE).unlink()
            got = [payloads[p][i] for p in args[i]]
            shipped += sum(not x.get("saved") for x in got)
            s.shard_write(tmps[i], got, globs[i])
    stats = {"documents": len(documents), "chunks": sum(x["chunks"] for x in sums), "mode": "sharded",
             "executor": executor.label, "workers": executor.workers, "shards": n_parts,
             "map_s": round(t_map, 4), "build_s": round(t_build, 4),
             "write_s": round(time.perf_counter() - t0 - t_map - t_build, 4),
             "map_compute_s": round(max(x["compute_s"] for x in sums), 4),
             "build_compute_s": round(max(x["compute_s"] for x in payloads), 4),
             "shards_written_by_workers": sum(len(args[i]) for i in idx_pos) - shipped}
    return stats


# -- distributed evaluation ----------------------------------------------------------------------------

_PIPES: dict[str, Any] = {}
_PIPES_LOCK = threading.Lock()
PIPELINE_LOADS = {"count": 0}


def _pipeline_key(pipe: Any) -> str:
    try:
        body = pipe.to_yaml()
    except Exception:  # noqa: BLE001 - a Python-built pipeline YAML cannot hold
        body = repr(pipe)
    return hashlib.sha256(f"{body}\x1f{pipe.base_dir}".encode()).hexdigest()


def _run_batches(key: str, pipe_bytes: bytes, batches: list) -> list:
    """On a worker: the pipeline (loaded once per worker process), run over some query batches."""
    with _PIPES_LOCK:
        pipe = _PIPES.get(key)
        setup_s = 0.0
        if pipe is None:
            pipe = pickle.loads(pipe_bytes)
            t0 = time.perf_counter()
            pipe.setup()
            setup_s = time.perf_counter() - t0
            _PIPES[key] = pipe
            PIPELINE_LOADS["count"] += 1
    out = []
    for batch in batches:
        res, times = pipe.run_timed(batch)
        out.append((res, times))
    return [setup_s, out]


def run_query_batches(pipe: Any, batches: list, executor: Executor) -> tuple[list, float]:
    """Run ``batches`` of queries with ``pipe`` across the executor; results in batch order."""
    key = _pipeline_key(pipe)
    blob = pickle.dumps(pipe)
    n = executor.n_partitions(len(batches)) if executor.client is not None else 1
    groups = [batches[len(batches) * p // n: len(batches) * (p + 1) // n] for p in range(n)]
    ref = executor.scatter(blob) if executor.client is not None else blob
    futs = [executor.submit(_run_batches, key, ref, g) for g in groups if g]
    done = executor.gather(futs)
    return [x for _, o in done for x in o], max((s for s, _ in done), default=0.0)


def worker_counts(executor: Executor) -> dict:
    """Per worker: encoders and pipelines loaded by its process (for tests and the benchmark)."""
    def counts() -> dict:
        from ragkit.indexers._dense_shards import LOADS

        return {"encoders": LOADS["count"], "pipelines": PIPELINE_LOADS["count"], "pid": os.getpid()}

    if executor.client is None:
        return {"local": counts()}
    return executor.client.run(counts)


__all__ = ["ClusterError", "Executor", "open_executor", "build_index", "run_query_batches", "check_cluster"]
