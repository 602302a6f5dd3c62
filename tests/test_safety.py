"""Issue 11, item 1: an indexer's ``path`` never destroys data ragkit did not write."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.artifacts import atomic_folder, check_target
from ragkit.cli import main
from ragkit.errors import ConfigError
from ragkit.indexers import BM25Indexer, DenseIndexer
from ragkit.records import Document

DOCS = [Document(f"d{i}", f"document number {i} about cats and dogs {i}") for i in range(12)]


def _corpus(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "small.jsonl"
    f.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": f"document {i} about cats {i}"}) + "\n"
                         for i in range(n)), encoding="utf-8")
    return f


def _pipe(folder: Path, index_path: str, corpus: str = "../small.jsonl", name: str = "self.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / name
    f.write_text(f"version: 1\ncorpus: {{path: {corpus}}}\nindex:\n  - indexer.bm25: {{path: {json.dumps(index_path)}}}\n"
                 f"pipeline:\n  - retriever.bm25: {{index: {json.dumps(index_path)}}}\n", encoding="utf-8")
    return f


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("path", [".", "", "./", "sub/.."])
def test_issue_repro_index_at_the_pipeline_folder_deletes_nothing(tmp_path, capsys, path):
    """The exact reproduction from the issue: exit 2, notes.txt and the pipeline file survive."""
    d = tmp_path / "d"
    _corpus(d)
    (d / "pipes").mkdir()
    (d / "pipes" / "notes.txt").write_text("precious\n")
    f = _pipe(d / "pipes", path)
    before = _snapshot(tmp_path)
    assert main(["index", str(f)]) == 2
    err = capsys.readouterr().err
    assert "path" in err and ("folder" in err) and "\n" == err[-1] and err.count("\n") == 1
    assert _snapshot(tmp_path) == before
    assert [p.name for p in (d / "pipes").iterdir() if p.name.startswith(".")] == []


def test_dot_and_empty_path_are_config_errors_at_validate(tmp_path, capsys):
    for p in (".", ""):
        f = _pipe(tmp_path, p, name=f"p{len(p)}.yaml")
        assert main(["validate", str(f)]) == 2
        assert "parameter 'path'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="folder of its own"):
        BM25Indexer(path=".")
    with pytest.raises(ConfigError, match="folder of its own"):
        DenseIndexer(path="", model="hash")


def test_pipeline_folder_by_another_name_is_refused(tmp_path):
    d = tmp_path / "d"
    _corpus(d)
    (d / "pipes").mkdir()
    (d / "pipes" / "notes.txt").write_text("precious\n")
    f = _pipe(d / "pipes", "../pipes")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match="the folder holding the pipeline file"):
        Pipeline.from_yaml(f).build_index(progress=False)
    assert _snapshot(tmp_path) == before


def test_corpus_folder_and_its_ancestors_are_refused(tmp_path):
    data = tmp_path / "d" / "data"
    _corpus(data)
    (tmp_path / "d" / "pipes").mkdir()
    for path in ("../data", "..", str(tmp_path)):
        f = _pipe(tmp_path / "d" / "pipes", path, corpus="../data/small.jsonl", name="p.yaml")
        before = _snapshot(tmp_path)
        with pytest.raises(ConfigError) as e:
            Pipeline.from_yaml(f).build_index(progress=False)
        assert "corpus" in str(e.value) or "pipeline file" in str(e.value)
        assert _snapshot(tmp_path) == before


def test_corpus_given_as_folder_is_protected(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("cats sit on mats")
    f = tmp_path / "p" / "p.yaml"
    f.parent.mkdir()
    f.write_text("version: 1\ncorpus: {path: ../data}\nindex:\n  - indexer.bm25: {path: ../data}\n"
                 "pipeline:\n  - retriever.bm25: {index: ../data}\n")
    with pytest.raises(ConfigError, match=r"it is the corpus"):
        Pipeline.from_yaml(f).build_index(progress=False)
    assert (data / "a.txt").read_text() == "cats sit on mats"


def test_a_path_naming_a_file_is_an_error_and_the_file_stays(tmp_path):
    target = tmp_path / "index.txt"
    target.write_text("not an index")
    with pytest.raises(ConfigError, match="is a file"):
        BM25Indexer(path=str(target))(DOCS)
    assert target.read_text() == "not an index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.txt"]  # no hidden .index.txt.old-PID


def test_a_folder_that_is_not_an_index_is_refused(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"not a ragkit index \(params.json missing\).*thesis.tex"):
        BM25Indexer(path=str(target))(DOCS)
    assert (target / "thesis.tex").read_text() == "years of work"
    (target / "params.json").write_text("[1, 2]")  # a params.json that is not an index's
    with pytest.raises(ConfigError, match="not a ragkit index's parameters"):
        BM25Indexer(path=str(target))(DOCS)
    assert (target / "thesis.tex").exists()


def test_an_index_of_another_kind_is_refused(tmp_path):
    target = tmp_path / "idx"
    DenseIndexer(path=str(target), model="hash")(DOCS)
    before = _snapshot(target)
    with pytest.raises(ConfigError, match="built by 'indexer.dense', not 'indexer.bm25'"):
        BM25Indexer(path=str(target))(DOCS)
    assert _snapshot(target) == before


def test_a_user_file_inside_an_index_folder_is_not_deleted(tmp_path):
    target = tmp_path / "idx"
    BM25Indexer(path=str(target))(DOCS)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt, which ragkit did not write"):
        BM25Indexer(path=str(target))(DOCS)
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    BM25Indexer(path=str(target))(DOCS)  # without it the rebuild goes ahead


def test_allowed_targets_new_empty_and_own_index(tmp_path):
    BM25Indexer(path=str(tmp_path / "new" / "deep"))(DOCS)
    (tmp_path / "empty").mkdir()
    BM25Indexer(path=str(tmp_path / "empty"))(DOCS)
    BM25Indexer(path=str(tmp_path / "empty"))(DOCS)  # a rebuild replaces its own index
    assert (tmp_path / "empty" / "params.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no litter


def test_home_cwd_and_protected_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="current working folder"):
        check_target(tmp_path, "indexer.bm25")
    with pytest.raises(ConfigError, match="home folder"):
        check_target(Path.home(), "indexer.bm25")
    with pytest.raises(ConfigError, match="is above"):
        check_target(tmp_path.parent, "indexer.bm25")
    with pytest.raises(ConfigError, match="protect"):
        check_target(tmp_path / "x", "indexer.bm25", protect=[tmp_path / "x" / "corpus.jsonl"])
    assert check_target(tmp_path / "x", "indexer.bm25") == (tmp_path / "x").resolve()


def test_a_symlinked_index_folder_is_replaced_at_its_target(tmp_path):
    real = tmp_path / "disk" / "bm25"
    BM25Indexer(path=str(real))(DOCS)
    link = tmp_path / "idx"
    os.symlink(real, link)
    BM25Indexer(path=str(link), k1=1.2)(DOCS)
    assert link.is_symlink() and json.loads((real / "params.json").read_text())["k1"] == 1.2


def test_atomic_folder_without_stage_takes_the_kind_from_the_new_params(tmp_path):
    target = tmp_path / "idx"
    DenseIndexer(path=str(target), model="hash")(DOCS)
    with pytest.raises(ConfigError, match="not 'indexer.bm25'"):
        with atomic_folder(target) as tmp:
            (tmp / "params.json").write_text(json.dumps({"stage": "indexer.bm25"}))
    assert json.loads((target / "params.json").read_text())["stage"] == "indexer.dense"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_index_folders_with_sub_folders_are_listed_and_verified(tmp_path):
    """A layout with sub-folders (e.g. one per shard): every file is checksummed, the folder can be
    rebuilt, and a damaged file in a sub-folder is detected."""
    from ragkit.artifacts import read_params, write_params
    from ragkit.errors import IndexArtifactError

    target = tmp_path / "idx"

    def write(n: int) -> None:
        with atomic_folder(target, "indexer.test") as tmp:
            for i in range(n):
                (tmp / f"shard-{i}").mkdir()
                (tmp / f"shard-{i}" / "data.npy").write_bytes(bytes(range(200)) * (i + 1))
            write_params(tmp, {"stage": "indexer.test"})

    write(2)
    p = read_params(target, expect_key="indexer.test")
    assert sorted(p["files"]) == ["shard-0/data.npy", "shard-1/data.npy"]
    write(3)  # a rebuild replaces it (its entries are all listed)
    f = target / "shard-2" / "data.npy"
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IndexArtifactError, match="shard-2/data.npy"):
        read_params(target, expect_key="indexer.test")
    (target / "shard-9").mkdir()
    with pytest.raises(ConfigError, match="shard-9, which ragkit did not write"):
        write(1)


def test_files_ragkit_writes_have_ordinary_permissions(tmp_path):
    """Atomic writes go through a temporary file; it must not keep mkstemp's private 0600 mode: an index
    (or adapter, or KV block) built by one account has the mode ``open(..., "w")`` would give it."""
    import stat

    from ragkit.artifacts import atomic_write_text, temp_file

    old = os.umask(0o022)
    try:
        want = 0o644
        atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == want
        fd, tmp = temp_file(tmp_path, ".x.")
        os.close(fd)
        assert stat.S_IMODE(os.stat(tmp).st_mode) == want
        BM25Indexer(path=str(tmp_path / "idx"))(DOCS)
        modes = {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "idx").rglob("*") if f.is_file()}
        assert modes == {want}, modes
        os.umask(0o077)            # a stricter umask is respected
        atomic_write_text(tmp_path / "b.json", "{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
