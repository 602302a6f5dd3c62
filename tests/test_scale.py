"""Sharded indexes (exact merged search, manifest checks) and the Dask executor (ragkit.distributed).

The Dask tests run a LocalCluster bound to 127.0.0.1 (the network blocker allows loopback only);
they are in the slow tier because starting worker processes takes seconds.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from ._integration import import_or_unavailable

from ragkit.config import ExecutorSpec
from ragkit.errors import ConfigError, IndexArtifactError, ModelNotFoundError
from ragkit.eval.datasets import load_dataset
from ragkit.indexers.bm25 import BM25Indexer
from ragkit.indexers.chunkers import *  # noqa: F401,F403  (registers the chunkers)
from ragkit.indexers.dense import DenseIndexer
from ragkit.pipeline import Pipeline
from ragkit.records import Chunk, Document, Query
from ragkit.retrievers.bm25 import BM25Retriever
from ragkit.retrievers.dense import DenseRetriever
from ragkit.stage import CHUNKS, Stage, param

REPO = Path(__file__).resolve().parents[1]


def sample():
    ds = load_dataset(str(REPO / "data" / "squad_sample"))
    return [d for d in ds.corpus if d.text.strip()], ds.queries


def build(tmp: Path, name: str, docs, executor=None, partitions=None, method="lucene", index_type="flat"):
    p = Pipeline([BM25Retriever(index=str(tmp / name / "bm25"))],
                 index=[BM25Indexer(path=str(tmp / name / "bm25"), method=method),
                        DenseIndexer(path=str(tmp / name / "dense"), model="hash", index_type=index_type)])
    return p.build_index(docs, executor=executor, partitions=partitions, progress=False)


def rankings(retriever_cls, folder: Path, queries, k=20, **kw):
    out = Pipeline([retriever_cls(index=str(folder), k=k, **kw)]).run(queries)
    return [[(h.doc_id, h.chunk_id, h.score) for h in r.hits] for r in out]


def assert_same(a, b, tol=0.0):
    """Same scores rank by rank; same units above the cut. Units tied (within tol) with the last
    hit may differ: FAISS picks among vectors tied at the k-th score by its own order."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for hx, hy in zip(x, y):
            assert abs(hx[2] - hy[2]) <= tol
        if not x:
            continue
        last = min(x[-1][2], y[-1][2])
        assert [h[:2] for h in x if h[2] > last + tol] == [h[:2] for h in y if h[2] > last + tol]
        if tol == 0.0:  # BM25: ties are broken by doc_id in both, so everything is identical
            assert x == y


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_bm25_shards_equal_single_index(tmp_path, method):
    docs, queries = sample()
    build(tmp_path, "single", docs, method=method)
    stats = build(tmp_path, "sharded", docs, executor="serial", partitions=3, method=method)
    assert stats["shards"] == 3 and stats["mode"] == "sharded"
    assert (tmp_path / "sharded" / "bm25" / "shards.json").exists()
    single = rankings(BM25Retriever, tmp_path / "single" / "bm25", queries, k=50)
    sharded = rankings(BM25Retriever, tmp_path / "sharded" / "bm25", queries, k=50)
    assert sum(map(len, single)) > 0
    assert_same(single, sharded)  # identical ids, order and scores (global statistics)


def test_dense_flat_shards_equal_single_index(tmp_path):
    docs, queries = sample()
    build(tmp_path, "single", docs)
    build(tmp_path, "sharded", docs, executor="serial", partitions=4)
    single = rankings(DenseRetriever, tmp_path / "single" / "dense", queries, k=10)
    sharded = rankings(DenseRetriever, tmp_path / "sharded" / "dense", queries, k=10)
    assert_same(single, sharded, tol=1e-5)


def test_sharded_text_and_titles(tmp_path):
    words = "zero one two three four five six seven eight".split()
    docs = [Document(f"d{i}", f"alpha beta text {w}", {"title": f"T{i}"}) for i, w in enumerate(words)]
    build(tmp_path, "s", docs, executor="serial", partitions=2)
    r = Pipeline([BM25Retriever(index=str(tmp_path / "s" / "bm25"), text=True, k=3)]).search("seven")
    assert r.hits[0].doc_id == "d7" and r.hits[0].text == "alpha beta text seven" and r.hits[0].title == "T7"
    r = Pipeline([DenseRetriever(index=str(tmp_path / "s" / "dense"), text=True, k=3)]).search("seven")
    assert len(r.hits) == 3 and all(h.text.startswith("alpha beta") for h in r.hits)


def test_layout_errors(tmp_path):
    docs, queries = sample()
    build(tmp_path, "one", docs)
    build(tmp_path, "s3", docs, executor="serial", partitions=3)
    build(tmp_path, "s2", docs, executor="serial", partitions=2)
    with pytest.raises(IndexArtifactError, match="has 3 shards, the retriever was told shards=2"):
        Pipeline([BM25Retriever(index=str(tmp_path / "s3" / "bm25"), shards=2)]).setup()
    with pytest.raises(IndexArtifactError, match="single .unsharded. index, the retriever was told shards=4"):
        Pipeline([DenseRetriever(index=str(tmp_path / "one" / "dense"), shards=4)]).setup()
    Pipeline([BM25Retriever(index=str(tmp_path / "s3" / "bm25"), shards=3)]).setup()  # the right count is fine
    # a shard copied in from another build: refused, naming the shard
    import shutil

    target = tmp_path / "s3" / "bm25" / "shard-00001"
    shutil.rmtree(target)
    shutil.copytree(tmp_path / "s2" / "bm25" / "shard-00001", target)
    with pytest.raises(IndexArtifactError, match="shard #1 does not belong to this index|truncated or modified"):
        Pipeline([BM25Retriever(index=str(tmp_path / "s3" / "bm25"))]).setup()
    # a manifest from another layout version (another ragkit)
    man = tmp_path / "s2" / "dense" / "shards.json"
    data = json.loads(man.read_text())
    data["layout_version"] = 99
    man.write_text(json.dumps(data))
    with pytest.raises(IndexArtifactError, match="shard layout version 99"):
        Pipeline([DenseRetriever(index=str(tmp_path / "s2" / "dense"))]).setup()


def test_search_shards_through_shard_workers_in_process(tmp_path):
    """cluster: serial runs the search-on-workers code (shard placement, per-shard answers, client merge)
    in this process: identical to the local sharded search and, for BM25, to the single index."""
    docs, queries = sample()
    build(tmp_path, "one", docs)
    build(tmp_path, "s3", docs, executor="serial", partitions=3)
    for cls, folder in ((BM25Retriever, "bm25"), (DenseRetriever, "dense")):
        local = rankings(cls, tmp_path / "s3" / folder, queries, k=30)
        assert sum(map(len, local)) > 0
        assert rankings(cls, tmp_path / "s3" / folder, queries, k=30, cluster="serial") == local
    assert rankings(BM25Retriever, tmp_path / "one" / "bm25", queries, k=30) == \
        rankings(BM25Retriever, tmp_path / "s3" / "bm25", queries, k=30, cluster="serial")
    a = Pipeline([BM25Retriever(index=str(tmp_path / "s3" / "bm25"), k=5, text=True)]).run(queries[:3])
    b = Pipeline([BM25Retriever(index=str(tmp_path / "s3" / "bm25"), k=5, text=True, cluster="serial")]).run(queries[:3])
    assert [[(h.doc_id, h.text, h.meta) for h in r.hits] for r in a] == \
        [[(h.doc_id, h.text, h.meta) for h in r.hits] for r in b]
    with pytest.raises(IndexArtifactError, match="this is a single index"):
        Pipeline([BM25Retriever(index=str(tmp_path / "one" / "bm25"), cluster="serial")]).setup()
    with pytest.raises(IndexArtifactError, match="this is a single index"):
        Pipeline([DenseRetriever(index=str(tmp_path / "one" / "dense"), cluster="serial")]).setup()
    with pytest.raises(IndexArtifactError, match="has 3 shards, the retriever was told shards=2"):
        Pipeline([DenseRetriever(index=str(tmp_path / "s3" / "dense"), cluster="serial", shards=2)]).setup()
    with pytest.raises(ConfigError, match="search shards on workers"):
        BM25Retriever(index="x", cluster="http://nowhere")
    # a worker that reads another build of the folder than the client's manifest names (a stale copy)
    from ragkit.shard_search import _open

    with pytest.raises(IndexArtifactError, match="sees another version of the index folder"):
        _open("bm25", str(tmp_path / "s3" / "bm25"), "shard-00000", "another-build", 1, True)
    with pytest.raises(IndexArtifactError, match="at the same path"):
        _open("dense", str(tmp_path / "elsewhere"), "shard-00000", "b", 1, False)


def test_executor_yaml_round_trip_and_bad_cluster():
    text = """version: 1
index:
  - indexer.bm25: {path: idx}
pipeline:
  - retriever.bm25: {index: idx}
executor: {cluster: "local:2", partitions: 4}
"""
    p = Pipeline.from_yaml(text)
    assert p.executor == ExecutorSpec(cluster="local:2", partitions=4)
    assert Pipeline.from_yaml(p.to_yaml()) == p
    with pytest.raises(ConfigError, match=r"'cluster' is 'locl:2'; valid: serial"):
        Pipeline.from_yaml(text.replace("local:2", "locl:2"))


def test_cli_cluster_flag_validated(capsys):
    from ragkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["index", "x.yaml", "--cluster", "http://nowhere"])
    assert exc.value.code == 2
    assert "not a cluster" in capsys.readouterr().err


def test_unreachable_scheduler_fails_fast(tmp_path):
    import_or_unavailable("distributed", "dask", module_level=False)
    from ragkit.distributed import ClusterError

    docs, _ = sample()
    t0 = time.monotonic()
    p = Pipeline([BM25Retriever(index=str(tmp_path / "b"))], index=[BM25Indexer(path=str(tmp_path / "b"))])
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        p.build_index(docs, executor=ExecutorSpec(cluster="tcp://127.0.0.1:9", connect_timeout=1), progress=False)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "b").exists()


def test_unreachable_scheduler_reported_before_the_corpus_is_read(tmp_path, monkeypatch, capsys):
    import_or_unavailable("distributed", "dask", module_level=False)
    import ragkit.ingest
    from ragkit.cli import main
    from ragkit.distributed import ClusterError

    def no_read(*a, **k):
        raise AssertionError("the corpus was read before the scheduler was reached")

    monkeypatch.setattr(ragkit.ingest, "read_corpus", no_read)
    monkeypatch.setattr(ragkit.ingest, "read_documents", no_read)
    (tmp_path / "c.jsonl").write_text('{"doc_id": "a", "text": "alpha"}\n')
    (tmp_path / "p.yaml").write_text("""version: 1
corpus: {path: c.jsonl}
index:
  - indexer.bm25: {path: idx}
pipeline:
  - retriever.bm25: {index: idx}
executor: {cluster: "tcp://127.0.0.1:9", connect_timeout: 1}
""")
    p = Pipeline.from_yaml(tmp_path / "p.yaml")
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        p.build_index(progress=False)  # the corpus: section
    for argv in (["index", str(tmp_path / "p.yaml"), "-q"],
                 ["index", str(tmp_path / "p.yaml"), "--corpus", str(tmp_path / "c.jsonl"), "-q"]):
        assert main(argv) != 0
        assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "idx").exists()


def test_address_that_is_not_a_dask_scheduler(tmp_path):
    """Something listens at the address but answers garbage (an HTTP server, a proxy): a clear ClusterError,
    at once, not a hang or a MemoryError from a garbage length header."""
    import_or_unavailable("distributed", "dask", module_level=False)
    import socket
    import threading

    from ragkit.distributed import ClusterError

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def answer():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 8)
            conn.close()

    th = threading.Thread(target=answer, daemon=True)
    th.start()
    try:
        port = srv.getsockname()[1]
        p = Pipeline([BM25Retriever(index=str(tmp_path / "b"))], index=[BM25Indexer(path=str(tmp_path / "b"))])
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
            p.build_index([Document("a", "alpha")], executor=ExecutorSpec(cluster=f"tcp://127.0.0.1:{port}",
                                                                          connect_timeout=3), progress=False)
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "b").exists()
    finally:
        stop.set()
        th.join()
        srv.close()


def test_sharded_build_refuses_unshardable_indexer(tmp_path):
    from ragkit.indexers.kv import KVIndexer

    p = Pipeline([BM25Retriever(index=str(tmp_path / "b"))], index=[BM25Indexer(path=str(tmp_path / "b")),
                                                                  KVIndexer()])
    with pytest.raises(ConfigError, match="cannot build a sharded index yet"):
        p.build_index([Document("a", "text")], executor="serial", progress=False)


# -- on a Dask LocalCluster ------------------------------------------------------------------------------

class KillWorker(Stage):
    """Test stage (not registered): SIGKILLs its own (worker) process on a given document, once or always."""

    key = "test.kill_worker"

    marker: str = param("", help="file created before the first kill; when it exists the stage passes (once)")
    doc_id: str = param("", help="the document whose partition kills its worker")
    input_kind = CHUNKS
    output_kind = CHUNKS

    def run(self, batch):
        if any(c.doc_id == self.doc_id for c in batch):
            if not self.marker or not os.path.exists(self.marker):
                if self.marker:
                    Path(self.marker).write_text("killed once")
                os.kill(os.getpid(), signal.SIGKILL)
        return batch


@pytest.fixture(scope="module")
def client():
    distributed = import_or_unavailable("distributed", "dask", module_level=False)
    import logging

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, worker_dashboard_address=None,
                                       silence_logs=logging.ERROR)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_dask_index_equals_serial_and_loads_model_once_per_worker(tmp_path, client):
    from ragkit.distributed import Executor, worker_counts

    docs, queries = sample()
    build(tmp_path, "serial", docs, executor="serial", partitions=6)
    ex = Executor(client, partitions=6)
    stats = build(tmp_path, "dask", docs, executor=ex)
    assert stats["shards"] == 6 and stats["workers"] == 2
    for cls, k, tol in ((BM25Retriever, "bm25", 0.0), (DenseRetriever, "dense", 1e-5)):
        assert_same(rankings(cls, tmp_path / "serial" / k, queries), rankings(cls, tmp_path / "dask" / k, queries), tol)
    counts = worker_counts(ex)
    assert len(counts) == 2
    assert all(c["encoders"] <= 1 for c in counts.values())  # 6 partitions, one encoder per worker process
    assert sum(c["encoders"] for c in counts.values()) >= 1


@pytest.mark.slow
def test_dask_killed_worker_is_retried(tmp_path, client):
    from ragkit.distributed import Executor

    docs, queries = sample()
    build(tmp_path, "serial", docs, executor="serial", partitions=2)
    p = Pipeline([BM25Retriever(index=str(tmp_path / "dask" / "bm25"))],
                 index=[KillWorker(marker=str(tmp_path / "killed"), doc_id=docs[-1].doc_id),
                        BM25Indexer(path=str(tmp_path / "dask" / "bm25"))])
    p.build_index(docs, executor=Executor(client, partitions=2), progress=False)
    assert (tmp_path / "killed").exists()  # a worker really died mid-index
    assert_same(rankings(BM25Retriever, tmp_path / "serial" / "bm25", queries),
                rankings(BM25Retriever, tmp_path / "dask" / "bm25", queries))
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_dask_worker_dying_every_time_fails_cleanly(tmp_path, client):
    from ragkit.distributed import ClusterError, Executor

    docs, queries = sample()
    folder = tmp_path / "idx"
    p0 = Pipeline([BM25Retriever(index=str(folder))], index=[BM25Indexer(path=str(folder))])
    p0.build_index(docs[:5], progress=False)
    before = rankings(BM25Retriever, folder, queries[:5])
    p = Pipeline([BM25Retriever(index=str(folder))],
                 index=[KillWorker(doc_id=docs[-1].doc_id), BM25Indexer(path=str(folder))])
    with pytest.raises(ClusterError, match="a worker died"):
        p.build_index(docs, executor=Executor(client, partitions=2), progress=False)
    assert rankings(BM25Retriever, folder, queries[:5]) == before  # the previous index is intact
    assert not any(x.name.startswith(".idx.tmp") for x in tmp_path.iterdir())
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_dask_worker_without_model_is_named(tmp_path, client):
    from ragkit.distributed import Executor

    p = Pipeline([DenseRetriever(index=str(tmp_path / "d"))],
                 index=[DenseIndexer(path=str(tmp_path / "d"), model=str(tmp_path / "no-such-model"))])
    with pytest.raises(ModelNotFoundError, match=r"worker tcp://127\.0\.0\.1:\d+ \(pid \d+\), partition 1"):
        p.build_index([Document("a", "some text")], executor=Executor(client), progress=False)
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_dask_eval_same_results_file(tmp_path, client):
    from ragkit.distributed import Executor, worker_counts
    from ragkit.eval import evaluate

    docs, _ = sample()
    build(tmp_path, "i", docs)
    pipes = {"bm25": Pipeline([BM25Retriever(index=str(tmp_path / "i" / "bm25"), k=20)]),
             "dense": Pipeline([DenseRetriever(index=str(tmp_path / "i" / "dense"), k=20)])}
    ds = str(REPO / "data" / "squad_sample")
    evaluate(pipes, ds, batch_size=4, save=tmp_path / "local.json", progress=False)
    ex = Executor(client)
    evaluate(pipes, ds, batch_size=4, save=tmp_path / "cluster.json", progress=False, executor=ex)

    def comparable(f):
        d = json.loads(f.read_text())
        for name in d["per_query"]:
            d["per_query"][name].pop("latency_ms")
        d.pop("latency")
        d["info"].pop("time")
        return d

    assert comparable(tmp_path / "local.json") == comparable(tmp_path / "cluster.json")
    assert all(c["pipelines"] <= 2 for c in worker_counts(ex).values())  # each pipeline loaded once per worker


def test_incremental_update_per_shard(tmp_path):
    from ragkit.config import CorpusSpec

    docs, queries = sample()
    docs = docs[:120]

    def write(ds):
        (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": d.doc_id, "text": d.text}) + "\n"
                                                       for d in ds))

    def pipe(name):
        return Pipeline([BM25Retriever(index=str(tmp_path / name / "bm25"))],
                        index=[BM25Indexer(path=str(tmp_path / name / "bm25")),
                               DenseIndexer(path=str(tmp_path / name / "dense"), model="hash")],
                        corpus=CorpusSpec(path=str(tmp_path / "corpus.jsonl")))

    write(docs)
    pipe("sh").build_index(executor="serial", partitions=3, progress=False)
    # change one document, remove one, add one; then rebuild incrementally (no executor)
    changed = Document(docs[5].doc_id, docs[5].text + " extra words about hypersonic flow")
    new_docs = [changed if d.doc_id == changed.doc_id else d for d in docs if d.doc_id != docs[50].doc_id]
    new_docs.append(Document("added-1", "a brand new passage about libraries and catalogues"))
    write(new_docs)
    stats = pipe("sh").build_index(progress=False)
    assert stats["mode"] == "incremental" and stats["added"] == 1 and stats["changed"] == 1 and stats["removed"] == 1
    man = json.loads((tmp_path / "sh" / "bm25" / "shards.json").read_text())
    assert man["num_shards"] == 3 and man["total"] == len(new_docs)
    pipe("fresh").build_index(incremental=False, progress=False)  # single index over the new corpus
    assert_same(rankings(BM25Retriever, tmp_path / "fresh" / "bm25", queries, k=30),
                rankings(BM25Retriever, tmp_path / "sh" / "bm25", queries, k=30))
    assert_same(rankings(DenseRetriever, tmp_path / "fresh" / "dense", queries, k=10),
                rankings(DenseRetriever, tmp_path / "sh" / "dense", queries, k=10), tol=1e-5)


@pytest.mark.slow
def test_local_cluster_stays_on_loopback():
    import_or_unavailable("distributed", "dask", module_level=False)
    from ragkit.distributed import open_executor

    with open_executor("local:1") as ex:
        info = ex.client.scheduler_info(n_workers=-1)
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        sched = ex.client.cluster.scheduler
        assert all(sock.getsockname()[0] == "127.0.0.1" for sock in sched.http_server._sockets.values())


@pytest.mark.slow
def test_cli_index_and_eval_with_cluster(tmp_path, capsys):
    from ragkit.cli import main

    data = REPO / "data" / "squad_sample"
    (tmp_path / "p.yaml").write_text(f"""version: 1
name: sq
corpus: {{path: {data / 'corpus.jsonl'}}}
index:
  - indexer.bm25: {{path: idx}}
pipeline:
  - retriever.bm25: {{index: idx, k: 20}}
eval: {{dataset: {data}, metrics: [nDCG@10]}}
""")
    assert main(["index", str(tmp_path / "p.yaml"), "--cluster", "local:2", "--partitions", "3", "--json", "-q"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["shards"] == 3 and stats["workers"] == 2 and stats["executor"] == "local:2"
    assert json.loads((tmp_path / "idx" / "shards.json").read_text())["num_shards"] == 3
    assert main(["eval", str(tmp_path / "p.yaml"), "--cluster", "local:2", "-q", "--save", str(tmp_path / "c.json")]) == 0
    assert main(["eval", str(tmp_path / "p.yaml"), "-q", "--save", str(tmp_path / "l.json")]) == 0
    c, l = (json.loads((tmp_path / f).read_text()) for f in ("c.json", "l.json"))
    assert c["summary"] == l["summary"] and c["per_query"]["sq"]["nDCG@10"] == l["per_query"]["sq"]["nDCG@10"]


def assert_same_up_to_ties(a, b, tol):
    """Scores equal rank by rank (within tol) and every unit of one ranking in the other with the same
    score, except units tied (within tol) with the last score, where the cut may pick either."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        assert all(abs(hx[2] - hy[2]) <= tol for hx, hy in zip(x, y))
        if not x:
            continue
        last = min(x[-1][2], y[-1][2])
        sx, sy = ({h[:2]: h[2] for h in r} for r in (x, y))
        for u, sc in [*sx.items(), *sy.items()]:
            if sc > last + tol:
                assert u in sx and u in sy and abs(sx[u] - sy[u]) <= tol


@pytest.mark.slow
def test_search_shards_on_workers_equals_local_search(tmp_path, client):
    """Shards searched on the LocalCluster's workers (127.0.0.1): each shard loaded once per worker,
    rankings and scores identical to the local sharded search (and BM25 to the single index)."""
    from ragkit.shard_search import shard_loads

    docs, queries = sample()
    build(tmp_path, "one", docs)
    build(tmp_path, "s3", docs, executor="serial", partitions=3)
    addr = client.scheduler.address
    assert addr.startswith("tcp://127.0.0.1:")
    before = shard_loads(client)
    for cls, folder in ((BM25Retriever, "bm25"), (DenseRetriever, "dense")):
        local = rankings(cls, tmp_path / "s3" / folder, queries, k=30)
        pipe = Pipeline([cls(index=str(tmp_path / "s3" / folder), k=30, cluster=addr)])
        half = len(queries) // 2
        out = pipe.run(queries[:half]) + pipe.run(queries[half:])  # two query batches, shards loaded once
        got = [[(h.doc_id, h.chunk_id, h.score) for h in r.hits] for r in out]
        if cls is BM25Retriever:  # float64 sums of stored float32 contributions: identical in any process
            assert got == local == rankings(BM25Retriever, tmp_path / "one" / "bm25", queries, k=30)
        else:  # FAISS's BLAS path differs with the worker's thread count: equal up to float noise and ties
            assert_same_up_to_ties(got, local, tol=1e-5)
    loads = {w: n - before.get(w, 0) for w, n in shard_loads(client).items()}
    assert sum(loads.values()) == 6  # 3 BM25 + 3 dense shards, each loaded by one worker, once
    assert len(loads) == 2 and all(n > 0 for n in loads.values())  # spread over both workers
