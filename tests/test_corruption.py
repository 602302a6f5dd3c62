"""Issue 11, item 2: corrupted or tampered index files are detected at load (or, for row numbers,
when a query reads them), always as an IndexArtifactError that names the file and says to rebuild."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragkit.artifacts import verify_files
from ragkit.errors import ConfigError, IndexArtifactError
from ragkit.indexers import BM25Indexer, DenseIndexer
from ragkit.indexers._faiss import DenseIndex
from ragkit.indexers.bm25 import BM25Index
from ragkit.records import Document
from ragkit.retrievers import BM25Retriever, DenseRetriever

DOCS = [Document(f"d{i:03d}", f"passage {i} about cats, dogs and mats {i % 5} " * 3) for i in range(60)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("built")
    BM25Indexer(path=str(root / "bm25"))(DOCS)
    DenseIndexer(path=str(root / "dense"), model="hash")(DOCS)
    return root


@pytest.fixture
def bm25(tmp_path, built) -> Path:
    shutil.copytree(built / "bm25", tmp_path / "bm25")
    return tmp_path / "bm25"


@pytest.fixture
def dense(tmp_path, built) -> Path:
    shutil.copytree(built / "dense", tmp_path / "dense")
    return tmp_path / "dense"


def load_bm25(path: Path, verify: str | None = None):
    idx = BM25Index.load(path, verify=verify)
    r = BM25Retriever(index=str(path), text=True)
    r.__dict__["_idx"] = idx
    from ragkit.indexers._tokenize import Tokenizer

    r.__dict__["_tok"] = Tokenizer(idx.tokenizer_config)
    r.__dict__["_ready"] = True
    return r.run([__import__("ragkit").Query("q", "cats dogs mats passage 3")])


def load_dense(path: Path, verify: str | None = None):
    idx = DenseIndex.load(path, verify=verify)
    q = np.random.default_rng(0).standard_normal((3, idx.dim)).astype(np.float32)
    scores, rows = idx.search(q, 10)
    return [idx.text(int(r)) for r in rows.ravel() if r >= 0]


def flip(f: Path, pos: int | None = None) -> None:
    b = bytearray(f.read_bytes())
    pos = len(b) // 2 if pos is None else pos
    b[pos] ^= 0x10
    f.write_bytes(bytes(b))


def expect(path: Path, name: str, loader, verify: str | None = None, match: str = "rebuild") -> None:
    with pytest.raises(IndexArtifactError) as e:
        loader(path, verify)
    msg = str(e.value)
    assert name in msg and "rebuild" in msg.lower() and match.lower() in msg.lower(), msg


# -- every file, each corruption class, fast mode (the default) --------------------------------------
BM25_FILES = ["data.npy", "indices.npy", "indptr.npy", "order.npy", "vocab.json", "docstore.json", "texts.bin",
              "text_offsets.npy"]
DENSE_FILES = ["index.faiss", "ids.npy", "deleted.npy", "docstore.json", "texts.bin", "text_offsets.npy"]


@pytest.mark.parametrize("name", BM25_FILES)
@pytest.mark.parametrize("how", ["truncate", "empty", "flip", "append", "delete"])
def test_bm25_each_file_each_corruption(bm25, name, how):
    _corrupt(bm25 / name, how)
    expect(bm25, name, load_bm25)


@pytest.mark.parametrize("name", DENSE_FILES)
@pytest.mark.parametrize("how", ["truncate", "empty", "flip", "append", "delete"])
def test_dense_each_file_each_corruption(dense, name, how):
    _corrupt(dense / name, how)
    expect(dense, name, load_dense)


def _corrupt(f: Path, how: str) -> None:
    if how == "truncate":
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "flip":
        flip(f)
    elif how == "append":
        f.write_bytes(f.read_bytes() + b"\0")
    else:
        f.unlink()


def test_edited_docstore_of_the_same_size_is_detected(bm25):
    meta = json.loads((bm25 / "docstore.json").read_text())
    meta["ids"][0], meta["ids"][1] = meta["ids"][1], meta["ids"][0]  # same bytes, other order
    (bm25 / "docstore.json").write_text(json.dumps(meta))
    expect(bm25, "docstore.json", load_bm25, match="checksum mismatch")


@pytest.mark.parametrize("bad", ["[1, 2]", "{}", '{"stage": "indexer.bm25"}', "not json", ""])
def test_bad_params_json(bm25, bad):
    (bm25 / "params.json").write_text(bad)
    expect(bm25, "params.json", load_bm25)


def test_edited_params_json_is_detected(bm25):
    p = json.loads((bm25 / "params.json").read_text())
    p["k1"] = 3.0
    (bm25 / "params.json").write_text(json.dumps(p))
    expect(bm25, "params.json", load_bm25, match="modified")


def test_full_mode_hashes_what_fast_mode_does_not_read(tmp_path, monkeypatch):
    path = tmp_path / "big"
    DenseIndexer(path=str(path), model="hash")(DOCS * 0 + [Document(f"x{i}", f"text {i} cats") for i in range(400)])
    f = path / "index.faiss"
    assert f.stat().st_size > 3 * (1 << 16)  # a byte in the middle lies outside the hashed head and tail
    flip(f)
    params = json.loads((path / "params.json").read_text())
    verify_files(path, params, "fast")  # not detected by the fast check (sizes + head/tail hashes)
    expect(path, "index.faiss", load_dense, verify="full", match="full check")
    monkeypatch.setenv("RAGKIT_VERIFY", "full")
    expect(path, "index.faiss", load_dense, match="full check")
    with pytest.raises(IndexArtifactError, match="index.faiss"):
        DenseRetriever(index=str(path)).setup()
    monkeypatch.setenv("RAGKIT_VERIFY", "slow")
    with pytest.raises(ConfigError, match="fast, full, off"):
        DenseIndex.load(path)


# -- structural checks that hold without checksums (verify off, or an index from an older ragkit) ----
def _save_array(f: Path, a: np.ndarray) -> None:
    np.save(f, a)


def test_structure_checked_without_checksums_bm25(bm25):
    good = {n: (bm25 / n).read_bytes() for n in BM25_FILES}

    def reset():
        for n, b in good.items():
            (bm25 / n).write_bytes(b)

    idx = np.load(bm25 / "indices.npy")
    idx[len(idx) // 2] = 10_000  # row id out of range: caught on the query that reads it
    _save_array(bm25 / "indices.npy", idx)
    expect(bm25, "indices.npy", load_bm25, verify="off", match="out of range")
    reset()
    texts = bytearray((bm25 / "texts.bin").read_bytes())
    texts[3] = 0xFF  # not UTF-8
    (bm25 / "texts.bin").write_bytes(bytes(texts))
    with pytest.raises(IndexArtifactError, match="texts.bin: passage #1 is not valid UTF-8"):
        BM25Index.load(bm25, verify="off").text(0)
    reset()
    (bm25 / "texts.bin").write_bytes(good["texts.bin"][:-10])
    expect(bm25, "text_offsets.npy", load_bm25, verify="off", match="truncated")
    reset()
    (bm25 / "data.npy").write_bytes(b"")
    expect(bm25, "data.npy", load_bm25, verify="off")
    reset()
    _save_array(bm25 / "order.npy", np.zeros(len(DOCS), np.int32))
    expect(bm25, "order.npy", load_bm25, verify="off", match="permutation")
    reset()
    ptr = np.load(bm25 / "indptr.npy")
    ptr[1] = ptr[-1]
    _save_array(bm25 / "indptr.npy", ptr)
    expect(bm25, "indptr.npy", load_bm25, verify="off", match="increasing")
    reset()
    _save_array(bm25 / "data.npy", np.load(bm25 / "data.npy").astype(np.float64))
    expect(bm25, "data.npy", load_bm25, verify="off", match="float64")
    reset()
    (bm25 / "vocab.json").write_text('{"a": 1}')
    expect(bm25, "vocab.json", load_bm25, verify="off")
    reset()
    (bm25 / "docstore.json").write_text('{"ids": [1, 2]}')
    expect(bm25, "docstore.json", load_bm25, verify="off")
    reset()
    load_bm25(bm25, "off")


def test_structure_checked_without_checksums_dense(dense):
    good = (dense / "ids.npy").read_bytes()
    ids = np.load(dense / "ids.npy")
    ids[[3, 4]] = ids[[4, 3]]
    _save_array(dense / "ids.npy", ids)
    expect(dense, "ids.npy", load_dense, verify="off", match="increasing")
    ids = np.load(dense / "ids.npy")
    ids.sort()
    ids[ids >= 50] += 1000  # ids the faiss index does not return: a label without a row
    _save_array(dense / "ids.npy", ids)
    expect(dense, "index.faiss", load_dense, verify="off", match="ids.npy does not hold")
    (dense / "ids.npy").write_bytes(good)
    (dense / "index.faiss").write_bytes(b"garbage")
    expect(dense, "index.faiss", load_dense, verify="off")


def test_cli_reports_corruption_as_one_line_exit_1(tmp_path, capsys):
    from ragkit.cli import main

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"doc_id": d.doc_id, "text": d.text}) + "\n" for d in DOCS))
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\ncorpus: {path: c.jsonl}\nindex:\n  - indexer.bm25: {path: idx}\n"
                 "pipeline:\n  - retriever.bm25: {index: idx, text: true}\n")
    assert main(["index", str(f), "-q"]) == 0
    (tmp_path / "idx" / "texts.bin").write_bytes((tmp_path / "idx" / "texts.bin").read_bytes()[:100])
    capsys.readouterr()
    assert main(["run", str(f), "cats"]) == 1
    err = capsys.readouterr().err
    assert "texts.bin" in err and "rebuild" in err.lower() and "unexpected" not in err and err.count("\n") == 1


@pytest.mark.parametrize("bad", [-1, 60, 10_000])
def test_row_numbers_are_checked_on_both_search_paths(bm25, bad):
    idx = BM25Index.load(bm25, verify="off", mmap=False)
    counts = np.diff(idx.indptr)
    rare, common = int(np.argmin(counts)), int(np.argmax(counts))
    assert counts[rare] * 8 < idx.num_docs <= counts[common] * 8  # one query per path
    for term in (rare, common):
        ind = idx.indices.copy()
        ind[idx.indptr[term]] = bad
        broken = BM25Index(**{**idx.__dict__, "indices": ind})
        with pytest.raises(IndexArtifactError, match="indices.npy: row number out of range"):
            broken.search([term], 10)
