"""Caches are keyed by the content of a model's weights: retrained to the same path, the cache misses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ragkit import model_identity as mi

from ._integration import import_or_unavailable

torch = import_or_unavailable("torch", "dense")
import_or_unavailable("transformers", "dense")
import_or_unavailable("sentence_transformers", "dense")

from ragkit.records import Hit, Query, Ranking  # noqa: E402

from ._tiny_models import tiny_bert  # noqa: E402
from ._tinylm import make_tiny_lm  # noqa: E402


def test_identity_follows_content_not_path_or_size(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"a": 1}')
    (m / "model.safetensors").write_bytes(b"\x00" * 64)
    (m / "notes.md").write_text("not part of the model")
    a = mi.model_identity(m)
    assert mi.model_identity(m) == a                                   # stable
    (m / "notes.md").write_text("changed")
    assert mi.model_identity(m) == a                                   # files that cannot change outputs
    (m / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)      # same size, new content
    b = mi.model_identity(m)
    assert b != a
    (m / "model.safetensors").write_bytes(b"\x00" * 64)                # back to the old content
    assert mi.model_identity(m) == a
    sub = m / "1_Pooling"
    sub.mkdir()
    (sub / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert mi.model_identity(m) != a                                   # sentence-transformers modules count
    assert mi.model_identity(None, name="hash-64") != mi.model_identity(None, name="hash-32")


def test_digest_cached_by_stat_across_processes(tmp_path, monkeypatch):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights" * 1000)
    first = mi.model_identity(f)
    store = json.loads(mi._store_path().read_text())
    assert any(k.startswith(str(f.resolve()) + "\x1f") for k in store)
    mi._MEMO.clear()                                                   # a new process: only the store is left

    def no_read(*a, **k):
        raise AssertionError("an unchanged file was hashed again")

    monkeypatch.setattr(mi, "open", no_read, raising=False)
    assert mi.model_identity(f) == first
    monkeypatch.undo()
    f.write_bytes(b"WEIGHTS" * 1000)                                   # rewritten: new mtime, rehashed
    assert mi.model_identity(f) != first
    store = json.loads(mi._store_path().read_text())
    assert sum(k.startswith(str(f.resolve()) + "\x1f") for k in store) == 1   # the old entry is dropped


def test_library_versions_are_part_of_the_identity(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    a = mi.model_identity(tmp_path)
    monkeypatch.setattr(mi, "library_versions", lambda: {"torch": "0.0-other", "transformers": "x",
                                                         "sentence-transformers": "y"})
    assert mi.model_identity(tmp_path) != a


def test_retrained_to_the_same_path_the_embedding_cache_misses(tmp_path):
    from ragkit.indexers._encoder import Encoder
    from ragkit.rerankers.train import train_reranker

    from .test_train import tiny_dataset

    base = tiny_bert(tmp_path / "base", head=False, seed=1)
    out = tmp_path / "ce"
    kw = dict(dataset=tiny_dataset(), model=str(base), split="all", negatives=1, epochs=1, batch_size=4,
              warmup=0.0, progress=False)
    train_reranker(str(out), lr=1e-3, seed=0, **kw)
    texts = ["the cat sat on the mat", "alpha beta gamma"]
    e1 = Encoder(str(out))
    v1 = e1.encode(texts)
    assert e1.stats == {"encoded": 2, "cached": 0}
    e2 = Encoder(str(out))
    assert np.array_equal(e2.encode(texts), v1) and e2.stats == {"encoded": 0, "cached": 2}  # unchanged: hit
    train_reranker(str(out), lr=5e-3, seed=1, resume=False, **kw)                          # same --output
    e3 = Encoder(str(out))
    v3 = e3.encode(texts)
    assert e3.stats == {"encoded": 2, "cached": 0}                                          # retrained: miss
    assert not np.allclose(v3, v1)
    assert np.allclose(v3, Encoder(str(out), cache=False).encode(texts), atol=1e-6)          # fresh, not stale


def test_rewritten_weights_miss_the_passage_kv_store(tmp_path):
    from ragkit.generators.hf import HFGenerator

    lm = tmp_path / "lm"
    make_tiny_lm(lm, seed=0)
    r = Ranking(Query("q", "where is paris ?"), (Hit("q", "d1", 1.0, 0, "paris is in france"),))
    kw = dict(model=str(lm), max_new_tokens=4, kv_reuse="plain", kv_store=str(tmp_path / "kv"))
    assert HFGenerator(**kw)([r])[0].meta["kv_blocks_computed"] >= 1
    assert HFGenerator(**kw)([r])[0].meta["kv_blocks_computed"] == 0      # same weights: the store serves it
    make_tiny_lm(lm, seed=1)                                                # retrained in place
    assert HFGenerator(**kw)([r])[0].meta["kv_blocks_computed"] >= 1      # new identity: recomputed
