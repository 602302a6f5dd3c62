"""indexer.bm25 / retriever.bm25: differential tests (rank_bm25, bm25s, the published formulas),
tie-breaking, the index folder (round trip, params check, corruption, atomic rebuild), inputs."""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragkit import Pipeline
from ragkit.errors import ConfigError, IndexArtifactError, StageInputError
from ragkit.indexers._tokenize import Tokenizer, TokenizerConfig
from ragkit.indexers.bm25 import BM25Index, BM25Indexer
from ragkit.records import Chunk, Document, Query
from ragkit.retrievers.bm25 import BM25Retriever

# no query term below occurs in more than half of these documents (so rank_bm25's epsilon floor
# for negative idf never applies)
CORPUS = [
    "The boundary layer on a flat plate in supersonic flow",
    "Heat transfer in the laminar boundary layer of a cone",
    "Wing flutter at transonic speeds and the effect of sweep",
    "Library classification schemes and subject indexing",
    "Information retrieval evaluation with relevance judgements",
    "Shock waves and boundary layer interaction near a wing",
    "Indexing vocabularies for information retrieval systems",
    "Buckling of thin cylindrical shells under axial compression",
    "Citation analysis of scientific journals and libraries",
    "Slender body theory for supersonic wing and body combinations",
    "Pressure distribution on a delta wing at high incidence",
    "Automatic indexing by word frequency counts",
]
QUERIES = ["supersonic wing flow", "boundary layer heat transfer", "information retrieval indexing",
           "library citation journals", "shells buckling compression wing"]


def docs(texts=CORPUS):
    return [Document(f"d{i:02d}", t, {"title": f"T{i}"}) for i, t in enumerate(texts)]


def build(tmp_path: Path, name="idx", documents=None, **kw) -> str:
    path = str(tmp_path / name)
    BM25Indexer(path=path, **kw)(documents if documents is not None else docs())
    return path


def terms_of(texts, cfg=TokenizerConfig()):
    tok = Tokenizer(cfg)
    return [tok.terms(t) for t in texts]


# -- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_steps():
    text = "The Flows over WINGS, and a wing's flow-field"
    assert Tokenizer(TokenizerConfig(stemmer="none", stopwords="none")).terms(text) == \
        ["the", "flows", "over", "wings", "and", "wing", "flow", "field"]
    assert Tokenizer(TokenizerConfig(stemmer="none", stopwords="en")).terms(text) == \
        ["flows", "over", "wings", "wing", "flow", "field"]
    assert Tokenizer(TokenizerConfig(stemmer="porter", stopwords="en_plus")).terms(text) == \
        ["flow", "wing", "wing", "flow", "field"]
    assert Tokenizer(TokenizerConfig(lowercase=False, stemmer="none", stopwords="none")).terms("Wing wing")[0] == "Wing"
    assert Tokenizer(TokenizerConfig(token_pattern=r"\S+", stemmer="none", stopwords="none")).terms("a-b c") == ["a-b", "c"]


@pytest.mark.parametrize("cfg", [TokenizerConfig(), TokenizerConfig(stemmer="english", stopwords="none"),
                                 TokenizerConfig(stemmer="none", lowercase=False)])
def test_encode_corpus_matches_terms(cfg):
    tok = Tokenizer(cfg)
    ids, vocab = tok.encode_corpus(CORPUS)
    assert len(vocab) == len(set(vocab))
    assert [[vocab[i] for i in d] for d in ids] == terms_of(CORPUS, cfg)
    v = {t: i for i, t in enumerate(vocab)}
    assert tok.encode_query("wing zzzunknown flows", v) == [v[t] for t in tok.terms("wing flows") if t in v]


# -- differential tests -----------------------------------------------------------------------


def all_scores(path: str, query: str) -> dict[str, float]:
    r = BM25Retriever(index=path, k=1000)
    return {h.doc_id: h.score for h in r([Query("q", query)])[0].hits}


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0)])
def test_robertson_matches_rank_bm25_okapi(tmp_path, k1, b):
    """bm25s 'robertson' = rank_bm25 BM25Okapi / (k1 + 1) when no idf is negative."""
    from rank_bm25 import BM25Okapi

    path = build(tmp_path, method="robertson", k1=k1, b=b)
    ref = BM25Okapi(terms_of(CORPUS), k1=k1, b=b, epsilon=0.25)
    assert min(ref.idf.values()) > 0  # the corpus the comparison is valid on
    for q in QUERIES:
        want = ref.get_scores(Tokenizer().terms(q))
        got = all_scores(path, q)
        assert got, q
        for i, s in enumerate(want):
            if s > 0:
                assert math.isclose(got[f"d{i:02d}"] * (k1 + 1), s, rel_tol=1e-6, abs_tol=1e-6), (q, i)
            else:
                assert f"d{i:02d}" not in got


def test_bm25plus_matches_rank_bm25(tmp_path):
    """(rank_bm25's BM25L multiplies by an extra tf, unlike Lv & Zhai's BM25L, so bm25l is
    checked against the published formula below instead.)"""
    from rank_bm25 import BM25Plus

    path = build(tmp_path, method="bm25+", k1=1.3, b=0.7, delta=0.6)
    ref = BM25Plus(terms_of(CORPUS), k1=1.3, b=0.7, delta=0.6)
    for q in QUERIES:
        want = ref.get_scores(Tokenizer().terms(q))
        got = all_scores(path, q)
        assert got
        for d, s in got.items():
            assert math.isclose(s, want[int(d[1:])], rel_tol=1e-6, abs_tol=1e-6), (q, d)


def formula_scores(texts, query, method, k1, b, delta):
    """The variants as written in Kamphuis et al. (ECIR 2020), in float64."""
    tdocs = terms_of(texts)
    n = len(tdocs)
    avg = sum(map(len, tdocs)) / n
    out = np.zeros(n)
    for t in Tokenizer().terms(query):
        df = sum(t in d for d in tdocs)
        if df == 0:
            continue
        idf = {"robertson": max(0.0, math.log((n - df + .5) / (df + .5))),
               "lucene": math.log(1 + (n - df + .5) / (df + .5)), "atire": math.log(n / df),
               "bm25l": math.log((n + 1) / (df + .5)), "bm25+": math.log((n + 1) / df)}[method]
        for i, d in enumerate(tdocs):
            tf, L = d.count(t), 1 - b + b * len(d) / avg
            tfc = {"robertson": tf / (k1 * L + tf), "lucene": tf / (k1 * L + tf),
                   "atire": tf * (k1 + 1) / (k1 * L + tf),
                   "bm25l": (k1 + 1) * (tf / L + delta) / (k1 + tf / L + delta),
                   "bm25+": tf * (k1 + 1) / (k1 * L + tf) + delta}[method]
            out[i] += idf * tfc
    return out


@pytest.mark.parametrize("method", ["robertson", "lucene", "atire", "bm25l", "bm25+"])
def test_every_variant_matches_its_formula(tmp_path, method):
    texts = CORPUS + ["wing wing wing boundary", "boundary layer boundary layer flow flow flow"]
    path = build(tmp_path, documents=docs(texts), method=method, k1=1.1, b=0.6, delta=0.4)
    for q in QUERIES + ["boundary layer flow wing"]:
        want = formula_scores(texts, q, method, 1.1, 0.6, 0.4)
        got = all_scores(path, q)
        for d, s in got.items():
            assert math.isclose(s, want[int(d[1:])], rel_tol=1e-6, abs_tol=1e-6), (method, q, d)
        # every document holding a query term with positive weight is a hit
        assert len(got) == sum(1 for i in range(len(texts)) if f"d{i:02d}" in got)


def test_scores_equal_bm25s_engine(tmp_path):
    import bm25s

    tok = Tokenizer()
    ids, vocab = tok.encode_corpus(CORPUS)
    eng = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    eng.index((ids, {t: i for i, t in enumerate(vocab)}), show_progress=False)
    path = build(tmp_path, method="lucene", k1=1.2, b=0.75)
    v = {t: i for i, t in enumerate(vocab)}
    for q in QUERIES:
        want = eng.get_scores([v[t] for t in tok.terms(q) if t in v])
        for d, s in all_scores(path, q).items():
            assert math.isclose(s, float(want[int(d[1:])]), rel_tol=1e-6)
        res = eng.retrieve([[t for t in tok.terms(q) if t in v]], k=3, show_progress=False)
        got = BM25Retriever(index=path, k=3)([Query("q", q)])[0]
        # bm25s also returns non-matching documents with score 0 to fill k; ragkit does not
        assert np.allclose([h.score for h in got.hits], res.scores[0][res.scores[0] > 0], rtol=1e-6)
        for h, i, sc in zip(got.hits, res.documents[0], res.scores[0]):
            if np.sum(want == sc) == 1:  # bm25s breaks ties arbitrarily; compare untied ranks only
                assert h.doc_id == f"d{i:02d}"


# -- ordering and ties ------------------------------------------------------------------------


def test_ties_break_by_doc_id(tmp_path):
    # identical texts under ids given in shuffled order: equal scores, so order is by doc_id
    texts = ["wing flutter"] * 6 + ["wing"] * 3 + ["unrelated text here"] * 3
    ids = ["m", "c", "x", "a", "q", "f", "z", "b", "k", "y", "e", "g"]
    path = build(tmp_path, documents=[Document(i, t) for i, t in zip(ids, texts)])
    for k, want in [(2, ["a", "c"]), (6, ["a", "c", "f", "m", "q", "x"]), (7, ["a", "c", "f", "m", "q", "x", "b"]),
                    (100, ["a", "c", "f", "m", "q", "x", "b", "k", "z"])]:
        r = BM25Retriever(index=path, k=k)([Query("q", "wing flutter")])[0]
        assert [h.doc_id for h in r.hits] == want
        assert [h.rank for h in r.hits] == list(range(len(want)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["wing flow", "flow", "wing", "layer flow wing", "flow flow",
                                 "plate", "layer"]), min_size=1, max_size=25),
       st.integers(1, 30), st.randoms(use_true_random=False))
def test_top_k_is_prefix_of_full_order(tmp_path_factory, texts, k, rnd):
    ids = [f"id{i:03d}" for i in range(len(texts))]
    rnd.shuffle(ids)
    path = build(tmp_path_factory.mktemp("p"), documents=[Document(i, t) for i, t in zip(ids, texts)],
                 stopwords="none")
    full = BM25Retriever(index=path, k=1000)([Query("q", "wing flow layer")])[0].hits
    assert [(-h.score, h.doc_id) for h in full] == sorted((-h.score, h.doc_id) for h in full)
    top = BM25Retriever(index=path, k=k)([Query("q", "wing flow layer")])[0].hits
    assert [(h.doc_id, h.score) for h in top] == [(h.doc_id, h.score) for h in full[:k]]


def test_dense_and_sparse_paths_agree(tmp_path):
    # many postings per query -> dense accumulator; few -> candidate rows only
    texts = [f"common word {'rare' if i % 50 == 0 else 'other'} {i}" for i in range(400)]
    path = build(tmp_path, documents=docs(texts), stopwords="none")
    idx = BM25Index.load(path)
    tok = Tokenizer(idx.tokenizer_config)
    for q in ["common rare", "rare", "word other"]:
        ids = tok.encode_query(q, idx.vocab_ids)
        rows, scores = idx.search(ids, 1000)
        dense = np.zeros(idx.num_docs)
        for t in ids:
            s, e = idx.indptr[t], idx.indptr[t + 1]
            np.add.at(dense, idx.indices[s:e], idx.data[s:e].astype(np.float64))
        assert set(rows.tolist()) == set(np.flatnonzero(dense > 0).tolist())
        assert np.allclose(scores, dense[rows], rtol=1e-12)


# -- retriever behaviour ----------------------------------------------------------------------


def test_hits_carry_doc_and_chunk_ids_text_and_titles(tmp_path):
    chunks = [Chunk("a#0", "a", "supersonic wing flow", 0, 20, {"title": "A"}),
              Chunk("a#1", "a", "boundary layer", 21, 35, {"title": "A"}),
              Chunk("b#0", "b", "wing flutter", 0, 12)]
    path = str(tmp_path / "c")
    BM25Indexer(path=path)(chunks)
    r = BM25Retriever(index=path, text=True)([Query("q1", "wing")])[0]
    assert {(h.doc_id, h.chunk_id) for h in r.hits} == {("a", "a#0"), ("b", "b#0")}
    by = {h.chunk_id: h for h in r.hits}
    assert by["a#0"].text == "supersonic wing flow" and by["a#0"].title == "A"
    assert by["b#0"].text == "wing flutter" and by["b#0"].title is None
    plain = BM25Retriever(index=path)([Query("q1", "wing")])[0]
    assert all(h.text is None for h in plain.hits)
    assert BM25Retriever(index=path, text=True).provides() >= {"text"}
    assert "text" not in BM25Retriever(index=path).provides()


def test_empty_and_unknown_queries_and_large_k(tmp_path):
    path = build(tmp_path)
    r = BM25Retriever(index=path, k=10_000)
    out = r([Query("a", ""), Query("b", "the of and"), Query("c", "zzzz qqqq"), Query("d", "wing")])
    assert [len(x.hits) for x in out[:3]] == [0, 0, 0]
    assert len(out[3].hits) == sum("wing" in t.lower() for t in CORPUS)
    assert r([]) == []


def test_thread_safe_after_setup(tmp_path):
    path = build(tmp_path)
    r = BM25Retriever(index=path, k=5, text=True).setup()
    queries = [Query(str(i), QUERIES[i % len(QUERIES)] + (" wing" if i % 3 else "")) for i in range(60)]
    want = r(queries)
    results: list = [None] * 4

    def work(j):
        results[j] = [r([q])[0] for q in queries]

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(res == want for res in results)


def test_pipeline_yaml_round_trip_and_build(tmp_path):
    p = Pipeline.from_yaml(f"""
version: 1
index:
  - indexer.bm25: {{path: {tmp_path / 'y'}, k1: 0.9, b: 0.4, method: bm25+}}
pipeline:
  - retriever.bm25: {{index: {tmp_path / 'y'}, k: 3, text: true}}
""")
    assert Pipeline.from_yaml(p.to_yaml()) == p
    p.build_index(docs(), progress=False)
    out = p.run(["supersonic wing"])
    assert out[0].hits[0].doc_id == "d09" and len(out[0].hits) == 3
    params = json.loads((tmp_path / "y" / "params.json").read_text())
    assert params["stage"] == "indexer.bm25" and params["method"] == "bm25+" and params["k1"] == 0.9
    assert params["num_docs"] == len(CORPUS) and params["content_hash"]


def test_config_errors():
    with pytest.raises(ConfigError, match="method"):
        BM25Indexer(path="x", method="okapi")
    with pytest.raises(ConfigError, match="token_pattern"):
        BM25Indexer(path="x", token_pattern="(")
    with pytest.raises(ConfigError, match="'b'"):
        BM25Retriever(index="x", b=1.5)


# -- inputs -----------------------------------------------------------------------------------


def test_bad_corpora(tmp_path):
    ix = BM25Indexer(path=str(tmp_path / "e"))
    with pytest.raises(StageInputError, match="empty"):
        ix.run([])
    dup = [Chunk("x", "d1", "wing", 0, 4), Chunk("y", "d1", "flow", 5, 9), Chunk("x", "d2", "plate", 0, 5)]
    with pytest.raises(StageInputError, match=r"duplicate chunk id 'x' at record #3 \(first seen at record #1\)"):
        ix(dup)
    with pytest.raises(StageInputError, match="record #1 is a Query"):
        ix([Query("q", "x")])
    with pytest.raises(StageInputError, match="nothing to index"):
        ix([Document("d", "the a of")])
    assert not (tmp_path / "e").exists()


# -- the index folder -------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [True, False])
def test_saved_index_round_trip(tmp_path, mmap):
    stage = BM25Indexer(path=str(tmp_path / "r"), method="bm25l")
    built = stage.build(docs())
    built.save(stage.path)
    loaded = BM25Index.load(stage.path, mmap=mmap)
    assert isinstance(loaded.data.base, np.memmap) == mmap  # a view of the file mapping, or in RAM
    for name in ("data", "indices", "indptr", "order", "nonoccurrence"):
        assert np.array_equal(getattr(built, name), getattr(loaded, name))
    written = {"ragkit_version", "files", "params_sha256"}  # what write_params adds
    assert loaded.vocab == built.vocab and loaded.ids == built.ids
    assert {k: v for k, v in loaded.params.items() if k not in written} == built.params
    assert set(loaded.params["files"]) == {f.name for f in (tmp_path / "r").iterdir()} - {"params.json"}
    tok = Tokenizer(built.tokenizer_config)
    for q in QUERIES:
        a = built.search(tok.encode_query(q, built.vocab_ids), 5)
        b = loaded.search(tok.encode_query(q, loaded.vocab_ids), 5)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert [loaded.text(i) for i in range(3)] == CORPUS[:3]


def test_params_mismatch_names_what_differs(tmp_path):
    path = build(tmp_path, k1=0.9, stemmer="english")
    BM25Retriever(index=path, k1=0.9, b=0.75, stemmer="english").setup()  # matching values are fine
    with pytest.raises(IndexArtifactError) as e:
        BM25Retriever(index=path, k1=1.2, method="robertson", stemmer="porter").setup()
    msg = str(e.value)
    assert path in msg and "k1: index has 0.9" in msg and "method: index has 'lucene'" in msg
    assert "tokenizer.stemmer: index has 'english'" in msg
    no_text = build(tmp_path, "nt", store_text=False)
    BM25Retriever(index=no_text).setup()
    with pytest.raises(IndexArtifactError, match="store_text"):
        BM25Retriever(index=no_text, text=True).setup()


def test_wrong_kind_of_folder(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "params.json").write_text(json.dumps({"stage": "indexer.dense"}))
    with pytest.raises(IndexArtifactError, match="indexer.dense"):
        BM25Retriever(index=str(tmp_path / "other")).setup()


@pytest.mark.parametrize("damage", ["missing_folder", "no_params", "bad_params", "no_data", "bad_indices",
                                    "short_order", "bad_vocab", "no_docstore"])
def test_corrupt_folder_is_a_clear_error(tmp_path, damage):
    path = Path(build(tmp_path))
    if damage == "missing_folder":
        path = tmp_path / "nowhere"
    elif damage == "no_params":
        (path / "params.json").unlink()
    elif damage == "bad_params":
        (path / "params.json").write_text("{not json")
    elif damage == "no_data":
        (path / "data.npy").unlink()
    elif damage == "bad_indices":
        (path / "indices.npy").write_bytes(b"garbage")
    elif damage == "short_order":
        np.save(path / "order.npy", np.arange(3, dtype=np.int32))
    elif damage == "bad_vocab":
        (path / "vocab.json").write_text("[1, 2")
    elif damage == "no_docstore":
        (path / "docstore.json").unlink()
    with pytest.raises(IndexArtifactError) as e:
        BM25Retriever(index=str(path)).setup()
    msg = str(e.value)
    assert str(path) in msg, msg
    assert "rebuild" in msg.lower() or "Build it first" in msg, msg


def test_failed_rebuild_leaves_old_index(tmp_path, monkeypatch):
    path = build(tmp_path)
    before = BM25Retriever(index=path, k=3)([Query("q", "supersonic wing")])
    import ragkit.indexers.bm25 as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod.DocStore, "write", staticmethod(boom))
    with pytest.raises(OSError, match="disk full"):
        BM25Indexer(path=path, k1=0.5)(docs(["entirely different corpus text"] * 3))
    monkeypatch.undo()
    after = BM25Retriever(index=path, k=3)([Query("q", "supersonic wing")])
    assert after == before and json.loads((Path(path) / "params.json").read_text())["k1"] == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left behind
    # a successful rebuild replaces it
    BM25Indexer(path=path, k1=0.5)(docs(["entirely different corpus text"] * 3))
    assert BM25Retriever(index=path)([Query("q", "supersonic wing")])[0].hits == ()


def test_empty_texts_among_others_are_indexed(tmp_path):
    path = build(tmp_path, documents=[Document("a", ""), Document("b", "wing flow"), Document("c", "the of")])
    idx = BM25Index.load(path)
    assert idx.num_docs == 3 and idx.params["num_terms"] == 2
    assert [h.doc_id for h in BM25Retriever(index=path)([Query("q", "wing")])[0].hits] == ["b"]


def test_update_index_equals_full_rebuild(tmp_path):
    path = build(tmp_path)
    changed = Document("d03", "Library catalogues of supersonic wing reports", {"title": "new"})
    added = Document("x1", "Boundary layer transition on a swept wing")
    BM25Indexer(path=path).update_index([changed, added], ["d03", "d05"])  # d03 changed, d05 removed
    want_docs = [d for d in docs() if d.doc_id not in ("d03", "d05")] + [changed, added]
    full = build(tmp_path, "full", documents=want_docs)
    for q in QUERIES + ["catalogues swept"]:
        a = BM25Retriever(index=path, text=True)([Query("q", q)])[0]
        b = BM25Retriever(index=full, text=True)([Query("q", q)])[0]
        assert [(h.doc_id, h.score, h.text, h.title) for h in a.hits] == \
            [(h.doc_id, h.score, h.text, h.title) for h in b.hits]
    assert BM25Indexer(path=path).index_folder() == Path(path)
    no_text = build(tmp_path, "nt", store_text=False)
    with pytest.raises(IndexArtifactError, match="store_text"):
        BM25Indexer(path=no_text).update_index([added], [])
