"""Issue 11, item 3: a build killed while it replaces an index, litter of dead writers, and a
pipeline whose indexes were built from different corpora."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.artifacts import _owner_tag, recover
from ragkit.cli import main
from ragkit.errors import IndexArtifactError
from ragkit.indexers import BM25Indexer
from ragkit.indexers.bm25 import BM25Index
from ragkit.records import Document


def docs(n: int, tag: str = "") -> list[Document]:
    return [Document(f"d{i}", f"document {i} {tag} about cats and dogs number {i}") for i in range(n)]


def _killed(code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself at an artifacts crash point."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


KILL_AT = """
import os, signal
import ragkit.artifacts as a
a.USE_EXCHANGE = {exchange}
def crash(point):
    if point == {point!r}:
        os.kill(os.getpid(), signal.SIGKILL)
a._crash_point = crash
from ragkit.indexers import BM25Indexer
from ragkit.records import Document
BM25Indexer(path="idx")([Document(f"d{{i}}", f"new text {{i}} cats") for i in range(30)])
"""


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


SLOW = pytest.mark.slow  # each trial starts a Python process (about 1.5 s); the fast tier keeps the key ones


@pytest.mark.parametrize("exchange,point", [(False, "between-renames"), (True, "after-swap"),
                                            pytest.param(False, "after-swap", marks=SLOW),
                                            pytest.param(False, "before-swap", marks=SLOW),
                                            pytest.param(True, "before-swap", marks=SLOW)])
def test_a_build_killed_while_replacing_the_index_is_recovered_at_load(tmp_path, exchange, point):
    BM25Indexer(path=str(tmp_path / "idx"))(docs(10))
    _killed(KILL_AT.format(exchange=exchange, point=point), tmp_path)
    if point == "between-renames":  # the window: nothing at path, old index beside it
        assert not (tmp_path / "idx").exists()
    assert _litter(tmp_path)  # the dead writer left folders behind
    idx = BM25Index.load(tmp_path / "idx")  # load rolls back / cleans up
    assert idx.num_docs == (30 if point == "after-swap" else 10)
    assert _litter(tmp_path) == []


@pytest.mark.parametrize("exchange", [False, pytest.param(True, marks=SLOW)])
def test_the_next_build_recovers_and_cleans_up(tmp_path, exchange):
    BM25Indexer(path=str(tmp_path / "idx"))(docs(10))
    _killed(KILL_AT.format(exchange=exchange, point="between-renames" if not exchange else "after-swap"), tmp_path)
    BM25Indexer(path=str(tmp_path / "idx"))(docs(12))
    assert BM25Index.load(tmp_path / "idx").num_docs == 12
    assert _litter(tmp_path) == []


def test_litter_of_dead_writers_is_removed_and_live_writers_are_left_alone(tmp_path):
    BM25Indexer(path=str(tmp_path / "idx"))(docs(5))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = {
        f".idx.tmp-{dead_pid}-123-ab12": True,       # dead writer, this format
        f".idx.old-{dead_pid}": True,                # dead writer, old format (.NAME.old-PID)
        f".idx.tmp-{_owner_tag()}": False,           # this very process: alive
        f".idx.tmp-{os.getppid()}-1-ffff": True,     # live PID, but another start time: PID reused
        ".idx.tmp-k3j4h5g6": False,                  # older ragkit without a PID: left alone (warning)
        ".other.tmp-1-1-aa": False,                  # another folder's litter
        "notes": False,                              # not litter at all
    }
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "data.npy").write_bytes(b"x" * 1000)
    BM25Indexer(path=str(tmp_path / "idx"))(docs(6))
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"idx"} | {n for n, gone in names.items() if not gone}


def test_recover_restores_the_newest_previous_index_only_when_path_is_missing(tmp_path):
    BM25Indexer(path=str(tmp_path / "a"))(docs(3))
    os.rename(tmp_path / "a", tmp_path / ".idx.old-999999999-1-aaaa")
    BM25Indexer(path=str(tmp_path / "b"))(docs(4))
    os.rename(tmp_path / "b", tmp_path / ".idx.old-999999998-1-bbbb")
    os.utime(tmp_path / ".idx.old-999999999-1-aaaa", (1, 1))  # older
    done = recover(tmp_path / "idx")
    assert any("restored" in d for d in done)
    assert BM25Index.load(tmp_path / "idx").num_docs == 4 and _litter(tmp_path) == []


PIPE = """version: 1
corpus: {path: corpus.jsonl, id_field: id}
index:
  - indexer.bm25: {path: indexes/bm25}
  - indexer.dense: {path: indexes/dense, model: hash}
pipeline:
  - fusion.rrf:
      retrievers:
        - retriever.bm25: {index: indexes/bm25, k: 10}
        - retriever.dense: {index: indexes/dense, k: 10}
"""


def _write_corpus(f: Path, n: int) -> None:
    f.write_text("".join(json.dumps({"id": f"d{i}", "text": f"passage {i} on cats and dogs {i % 7}"}) + "\n"
                         for i in range(n)), encoding="utf-8")


def test_a_pipeline_killed_between_its_indexers_refuses_to_serve_mixed_indexes(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(PIPE)
    _write_corpus(tmp_path / "corpus.jsonl", 50)
    assert main(["index", str(f), "-q"]) == 0
    b1 = json.loads((tmp_path / "indexes" / "bm25" / "params.json").read_text())["corpus"]
    d1 = json.loads((tmp_path / "indexes" / "dense" / "params.json").read_text())["corpus"]
    assert b1 == d1 and b1["documents"] == 50
    _write_corpus(tmp_path / "corpus.jsonl", 312)
    _killed("""
        import os, signal
        from ragkit.indexers.dense import DenseIndexer
        DenseIndexer.run = lambda self, batch: os.kill(os.getpid(), signal.SIGKILL)
        DenseIndexer.update_index = lambda self, *a: os.kill(os.getpid(), signal.SIGKILL)
        from ragkit import Pipeline
        Pipeline.from_yaml("p.yaml").build_index(progress=False)
    """, tmp_path)
    b2 = json.loads((tmp_path / "indexes" / "bm25" / "params.json").read_text())["corpus"]
    assert b2["documents"] == 312  # the new BM25 index beside the old dense one
    capsys.readouterr()
    assert main(["run", str(f), "cats"]) == 1
    err = capsys.readouterr().err
    assert "built from different corpora" in err and "312 documents" in err and "50 documents" in err
    with pytest.raises(IndexArtifactError, match="different corpora"):
        Pipeline.from_yaml(f).run("cats")
    assert main(["index", str(f), "-q"]) == 0  # the manifests differ: a full rebuild of both
    out = Pipeline.from_yaml(f).search("cats and dogs")
    assert len(out.hits) == 20  # 10 from each retriever, fused
    d3 = json.loads((tmp_path / "indexes" / "dense" / "params.json").read_text())["corpus"]
    assert d3["documents"] == 312


def test_incremental_builds_keep_the_corpus_record_in_step(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PIPE)
    _write_corpus(tmp_path / "corpus.jsonl", 20)
    p = Pipeline.from_yaml(f)
    p.build_index(progress=False)
    _write_corpus(tmp_path / "corpus.jsonl", 25)
    stats = Pipeline.from_yaml(f).build_index(progress=False)
    assert stats["mode"] == "incremental" and stats["added"] == 5
    ids = {json.loads((tmp_path / "indexes" / k / "params.json").read_text())["corpus"]["id"] for k in ("bm25", "dense")}
    assert len(ids) == 1
    Pipeline.from_yaml(f).run("cats")  # agree: no error


def test_indexes_built_without_a_corpus_record_are_not_compared(tmp_path):
    BM25Indexer(path=str(tmp_path / "a"))(docs(5))
    BM25Indexer(path=str(tmp_path / "b"))(docs(9))
    from ragkit.retrievers import BM25Retriever
    from ragkit.retrievers.fusion import RRFFusion as RRF

    Pipeline([RRF(retrievers=[BM25Retriever(index=str(tmp_path / "a")), BM25Retriever(index=str(tmp_path / "b"))])]).run("cats")
    # documents given to build_index directly are recorded too
    for name, n in (("a", 5), ("b", 9)):
        Pipeline([BM25Retriever(index=str(tmp_path / name))], index=[BM25Indexer(path=str(tmp_path / name))]) \
            .build_index(docs(n))
    with pytest.raises(IndexArtifactError, match="different corpora"):
        Pipeline([RRF(retrievers=[BM25Retriever(index=str(tmp_path / "a")),
                                  BM25Retriever(index=str(tmp_path / "b"))])]).run("cats")


def test_agreement_check_sees_an_index_rolled_back_at_load(tmp_path):
    """A two-indexer pipeline whose dense swap was killed between its renames: the dense index is
    rolled back to the old corpus at load, and the pipeline then refuses the mix."""
    f = tmp_path / "p.yaml"
    f.write_text(PIPE)
    _write_corpus(tmp_path / "corpus.jsonl", 20)
    assert main(["index", str(f), "-q"]) == 0
    _write_corpus(tmp_path / "corpus.jsonl", 30)
    _killed("""
        import os, signal
        import ragkit.artifacts as a
        a.USE_EXCHANGE = False
        def crash(point):
            if point == "between-renames" and "dense" in str(os.listdir("indexes")):
                if not os.path.exists("indexes/dense"):
                    os.kill(os.getpid(), signal.SIGKILL)
        a._crash_point = crash
        from ragkit import Pipeline
        Pipeline.from_yaml("p.yaml").build_index(progress=False)
    """, tmp_path)
    assert not (tmp_path / "indexes" / "dense").exists()
    with pytest.raises(IndexArtifactError, match="different corpora"):
        Pipeline.from_yaml(f).run("cats")
    assert (tmp_path / "indexes" / "dense" / "params.json").exists() and _litter(tmp_path / "indexes") == []


def test_temporary_folders_of_older_ragkit_versions(tmp_path):
    """``.NAME.tmp-XXXXXXXX`` (tempfile.mkdtemp, no PID) from before this version: removed once
    untouched for an hour and holding only index files; otherwise left, with a warning."""
    BM25Indexer(path=str(tmp_path / "idx"))(docs(5))
    old = time.time() - 2 * 3600

    def make(name: str, files: list[str], age: float | None = old) -> Path:
        f = tmp_path / name
        f.mkdir()
        for n in files:
            (f / n).write_bytes(b"x")
            if age:
                os.utime(f / n, (age, age))
        if age:
            os.utime(f, (age, age))
        return f

    make(".idx.tmp-abcd1234", ["data.npy", "indices.npy", "params.json"])  # removed
    make(".idx.tmp-efgh5678", [])                                          # removed (empty)
    make(".idx.tmp-ijkl9012", ["data.npy", "notes.txt"])                   # kept: a file ragkit does not write
    make(".idx.tmp-mnop3456", ["data.npy"], age=None)                      # kept: changed within the hour
    BM25Indexer(path=str(tmp_path / "idx"))(docs(6))
    assert _litter(tmp_path) == [".idx.tmp-ijkl9012", ".idx.tmp-mnop3456"]
