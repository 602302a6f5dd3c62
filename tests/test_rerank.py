"""Reranker mechanics on tiny models created here (no downloaded weights)."""
from __future__ import annotations

import functools
import pickle

import pytest

from ._integration import import_or_unavailable

torch = import_or_unavailable("torch", "dense")
import_or_unavailable("transformers", "dense")
import_or_unavailable("tokenizers", "dense")

from ._tiny_models import tiny_bert, tiny_llama, tiny_t5  # noqa: E402

from ragkit.errors import ConfigError, ModelNotFoundError, PipelineError, StageInputError  # noqa: E402
from ragkit.pipeline import Pipeline  # noqa: E402
from ragkit.records import Hit, Query, Ranking  # noqa: E402
from ragkit.rerankers._base import round_score, score_sorted, sorted_batches  # noqa: E402
from ragkit.rerankers.cross_encoder import CrossEncoderReranker  # noqa: E402
from ragkit.rerankers.duot5 import DuoT5Reranker  # noqa: E402
from ragkit.rerankers.llm import LLMReranker  # noqa: E402
from ragkit.rerankers.monot5 import MonoT5Reranker  # noqa: E402
from ragkit.stage import QUERIES, RANKINGS, Stage  # noqa: E402

PASSAGES = [
    "the cat sat on the mat",
    "dogs chase cats in the park and the park is large",
    "a mat is a flat piece of fabric used on floors",
    "parks have trees grass and benches for visitors",
    "it was a sunny day",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau",
    "one",
]
QS = [Query("q1", "cat on the mat"), Query("q2", "what do dogs chase in the park ?")]


def rankings(passages=PASSAGES, qs=QS) -> list[Ranking]:
    return [Ranking(q, tuple(Hit(q.qid, f"d{i}", float(len(passages) - i), 0, p) for i, p in enumerate(passages)))
            for q in qs]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {"bert": str(tiny_bert(base / "bert")), "bert2": str(tiny_bert(base / "bert2", num_labels=2)),
            "embed": str(tiny_bert(base / "embed", head=False)), "t5": str(tiny_t5(base / "t5")),
            "t5_nowords": str(tiny_t5(base / "t5n", corpus="alpha beta gamma Query Document Relevant :")),
            "llama": str(tiny_llama(base / "llama"))}


def scores_of(out: list[Ranking]) -> dict[tuple[str, str], float]:
    return {(r.qid, h.doc_id): h.score for r in out for h in r.hits}


# -- shared machinery -------------------------------------------------------------------------------
def test_sorted_batches_restore_order():
    lengths = [5, 1, 9, 3, 9, 2, 7]
    enc = [{"input_ids": [i] + list(range(n - 1))} for i, n in enumerate(lengths)]  # all rows distinct
    seen_batches = []

    def fn(rows):
        seen_batches.append([len(r["input_ids"]) for r in rows])
        return [len(r["input_ids"]) * 10 for r in rows]

    assert score_sorted(enc, 3, fn) == [n * 10 for n in lengths]
    assert seen_batches[0] == [9, 9, 7]  # longest first, similar lengths together
    assert sorted(i for b in sorted_batches(lengths, 2) for i in b) == list(range(len(lengths)))


def test_identical_rows_scored_once_and_share_the_score():
    # a float32 forward pass is not batch-invariant (the score of a row can depend on its position
    # and neighbours in the last bits): identical inputs are scored once, so they always tie exactly
    enc = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [1, 2, 3]},
           {"input_ids": [1, 2, 3], "token_type_ids": [0, 1, 1]}]
    calls = []

    def fn(rows):
        calls.append(len(rows))
        return [0.1 * (len(calls) * 10 + j) for j in range(len(rows))]  # position-dependent, like a kernel

    out = score_sorted(enc, 2, fn)
    assert sum(calls) == 3 and out[0] == out[2] and len({out[0], out[1], out[3]}) == 3


def test_scores_rounded_to_documented_precision():
    assert round_score(-0.0040730853, 4) == round_score(-0.0040730843, 4) == -0.0041
    assert str(round_score(-0.00001, 4)) == "0.0"  # no negative zero
    assert round_score(1.23456789, 6) == 1.234568


# -- cross-encoder ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load(kind, path):
    import transformers

    return (transformers.AutoTokenizer.from_pretrained(path),
            getattr(transformers, kind).from_pretrained(path).eval())


def direct_bert(path, query, passage, max_length=512):
    tok, m = _load("AutoModelForSequenceClassification", path)
    enc = tok(query, passage, return_tensors="pt", truncation="only_second", max_length=max_length)
    with torch.no_grad():
        return m(**enc).logits[0]


def test_cross_encoder_batching_padding_invariant_and_matches_direct(models):
    ranks = rankings()
    outs = [scores_of(CrossEncoderReranker(model=models["bert"], batch_size=b, score_decimals=12)(ranks))
            for b in (1, 3, 64)]
    for o in outs[1:]:
        assert o.keys() == outs[0].keys()
        for k in o:
            assert o[k] == pytest.approx(outs[0][k], abs=1e-5)
    for q in QS:
        for i, p in enumerate(PASSAGES):
            assert outs[2][(q.qid, f"d{i}")] == pytest.approx(float(direct_bert(models["bert"], q.text, p)[0]), abs=1e-5)


def test_two_class_head_scores_log_p_relevant(models):
    out = scores_of(CrossEncoderReranker(model=models["bert2"], score_decimals=12)(rankings()))
    logits = direct_bert(models["bert2"], QS[0].text, PASSAGES[0])
    assert out[("q1", "d0")] == pytest.approx(float(torch.log_softmax(logits, -1)[1]), abs=1e-5)


def test_truncation_keeps_query_and_marks_hit(models):
    r = CrossEncoderReranker(model=models["bert"], max_length=24, query_max_tokens=8).setup()
    long_p = " ".join(["alpha beta gamma"] * 100)
    rows, cut = r.encode_pairs(["cat on the mat"], [long_p])
    ids = rows[0]["input_ids"]
    tok = r._tok
    assert len(ids) == 24 and cut == [True]
    q_ids = tok("cat on the mat", add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(q_ids)] == q_ids and ids[1 + len(q_ids)] == tok.sep_token_id and ids[-1] == tok.sep_token_id
    # a long query is cut to its budget, and the passage still gets the rest of the window
    long_q = " ".join(["delta"] * 40)
    rows, _ = r.encode_pairs([long_q], ["the cat sat on the mat"])
    ids = rows[0]["input_ids"]
    assert ids.index(tok.sep_token_id) == 1 + 8  # [CLS] + 8 query tokens, then [SEP]
    assert len(ids) == 1 + 8 + 1 + len(tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]) + 1
    assert rows[0]["token_type_ids"].count(0) == 8 + 2
    out = r([Ranking(QS[0], (Hit("q1", "long", 1.0, 0, long_p), Hit("q1", "short", 0.5, 0, "the cat")))])[0]
    meta = {h.doc_id: h.meta for h in out.hits}
    assert meta["long"].get("truncated") is True and "truncated" not in meta["short"]
    assert meta["short"]["first_stage_score"] == 0.5


def test_top_n_keep_rest_and_cut(models):
    ranks = rankings()
    kept = CrossEncoderReranker(model=models["bert"], top_n=3)(ranks)
    cut = CrossEncoderReranker(model=models["bert"], top_n=3, keep_rest=False)(ranks)
    for k, c, r in zip(kept, cut, ranks):
        assert len(k) == len(r) and len(c) == 3
        assert {h.doc_id for h in k.hits[:3]} == {h.doc_id for h in r.hits[:3]} == {h.doc_id for h in c.hits}
        assert [h.doc_id for h in k.hits[3:]] == [h.doc_id for h in r.hits[3:]]  # tail keeps its order
        assert [h.rank for h in k.hits] == list(range(len(r)))


def test_ties_broken_by_doc_id(models):
    q = QS[0]
    hits = tuple(Hit("q1", d, s, 0, "the cat sat on the mat") for d, s in (("z", 3.0), ("b", 2.0), ("m", 1.0)))
    out = CrossEncoderReranker(model=models["bert"])([Ranking(q, hits)])[0]
    assert [h.doc_id for h in out.hits] == ["b", "m", "z"]
    assert len({h.score for h in out.hits}) == 1
    # the default rounding (score_decimals=4) is applied to every reranked score
    out = CrossEncoderReranker(model=models["bert"])(rankings())
    assert all(h.score == round(h.score, 4) for r in out for h in r.hits)


def test_embedding_model_refused(models):
    with pytest.raises(ConfigError, match="sequence-classification head.*embedding model"):
        CrossEncoderReranker(model=models["embed"]).setup()


def test_missing_model_is_clear(tmp_path):
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker(model=str(tmp_path / "nope")).setup()


def test_hits_without_text(models):
    class NoTextRetriever(Stage):
        input_kind = QUERIES
        output_kind = RANKINGS

        def run(self, batch):
            return [Ranking(q, (Hit(q.qid, "d", 1.0, 0),)) for q in batch]

    with pytest.raises(PipelineError, match="needs `text`"):
        Pipeline([NoTextRetriever(), CrossEncoderReranker(model=models["bert"])])
    with pytest.raises(StageInputError, match="has no text"):
        CrossEncoderReranker(model=models["bert"])([Ranking(QS[0], (Hit("q1", "d", 1.0, 0),))])


def test_config_roundtrip_pickle_empty(models):
    r = CrossEncoderReranker(model=models["bert"], top_n=5, batch_size=4)
    assert pickle.loads(pickle.dumps(r)) == r
    from ragkit.retrievers.bm25 import BM25Retriever

    p = Pipeline([BM25Retriever(index="idx", text=True), r])  # a pipeline file must start with a retriever
    assert Pipeline.from_yaml(p.to_yaml()) == p
    assert r([]) == []
    with pytest.raises(ConfigError, match="query_max_tokens"):
        CrossEncoderReranker(model="x", max_length=32, query_max_tokens=30)


# -- monoT5 ----------------------------------------------------------------------------------------
def direct_monot5(path, query, doc):
    tok, m = _load("AutoModelForSeq2SeqLM", path)
    enc = tok(f"Query: {query} Document: {doc} Relevant:", return_tensors="pt")
    t, f = tok.convert_tokens_to_ids("true"), tok.convert_tokens_to_ids("false")
    with torch.no_grad():
        logits = m(**enc, decoder_input_ids=torch.tensor([[m.config.decoder_start_token_id]])).logits[0, 0]
    return float(torch.log_softmax(logits[[t, f]], -1)[0])


def test_monot5_equals_direct_and_batch_invariant(models):
    ranks = rankings()
    a = scores_of(MonoT5Reranker(model=models["t5"], batch_size=1, score_decimals=12)(ranks))
    b = scores_of(MonoT5Reranker(model=models["t5"], batch_size=5, score_decimals=12)(ranks))
    for q in QS:
        for i, p in enumerate(PASSAGES):
            want = direct_monot5(models["t5"], q.text, p)
            assert a[(q.qid, f"d{i}")] == pytest.approx(want, abs=1e-5)
            assert b[(q.qid, f"d{i}")] == pytest.approx(want, abs=1e-5)


def test_monot5_truncation_keeps_relevant_suffix(models):
    r = MonoT5Reranker(model=models["t5"], max_length=20, query_max_tokens=4).setup()
    rows, cut = r.encode([" ".join(["alpha"] * 10)], [" ".join(["beta"] * 200)])
    tok = r._tok
    toks = tok.convert_ids_to_tokens(rows[0]["input_ids"])
    assert len(toks) <= 20 and cut == [True]
    assert toks[:6] == ["Query", ":", "alpha", "alpha", "alpha", "alpha"] and toks[6] == "Document"
    assert toks[-3:] == ["Relevant", ":", "</s>"]


def test_monot5_vocab_without_target_tokens(models):
    with pytest.raises(ConfigError, match="true_token.*no single token"):
        MonoT5Reranker(model=models["t5_nowords"]).setup()
    with pytest.raises(ConfigError, match="not an encoder-decoder"):
        MonoT5Reranker(model=models["bert"]).setup()


def test_duot5_symmetric_sum(models):
    r = DuoT5Reranker(model=models["t5"], top_n=4, batch_size=3, score_decimals=12)
    ranks = rankings()
    out = r(ranks)
    p = r.preferences(QS[0].text, PASSAGES[:4])
    got = {h.doc_id: h.score for h in out[0].hits}
    for i in range(4):
        want = sum(p[(i, j)] + 1 - p[(j, i)] for j in range(4) if j != i)
        assert got[f"d{i}"] == pytest.approx(want, abs=1e-5)
    assert all(0 < v < 1 for v in p.values())
    assert len(out[0]) == len(PASSAGES)


# -- LLM pointwise ---------------------------------------------------------------------------------
def test_llm_equals_full_logits_and_batch_invariant(models):
    ranks = rankings()
    a = scores_of(LLMReranker(model=models["llama"], batch_size=1, top_n=50, score_decimals=12)(ranks))
    b = scores_of(LLMReranker(model=models["llama"], batch_size=6, top_n=50, score_decimals=12)(ranks))
    r = LLMReranker(model=models["llama"]).setup()
    tok, m = _load("AutoModelForCausalLM", models["llama"])
    y, n = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for q in QS:
        for i, p in enumerate(PASSAGES):
            enc = tok(r.render(q.text, p), return_tensors="pt")
            with torch.no_grad():
                logits = m(**enc).logits[0, -1]
            want = float(torch.log_softmax(logits[[y, n]], -1)[0])
            assert a[(q.qid, f"d{i}")] == pytest.approx(want, abs=1e-5)
            assert b[(q.qid, f"d{i}")] == pytest.approx(want, abs=1e-5)


def test_llm_bad_answer_word(models):
    with pytest.raises(ConfigError, match="yes_token"):
        LLMReranker(model=models["llama"], yes_token="Absolutely").setup()
