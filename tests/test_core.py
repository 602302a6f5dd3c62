import pickle
import threading

import pytest

from ragkit import ConfigError, Hit, Pipeline, PipelineError, Query, Ranking, StageInputError
from ragkit.generators.extractive import ExtractiveGenerator
from ragkit.stages_core import Cutoff
from ragkit.testing import EchoGenerator, OverlapReranker

from .helpers import ListRetriever


def test_ranking_orders_by_score_then_doc_id_and_reassigns_ranks():
    q = Query("q", "x")
    r = Ranking(q, (Hit("q", "b", 1.0, 5), Hit("q", "a", 1.0, 0), Hit("q", "c", 2.0, 9)))
    assert [h.doc_id for h in r.hits] == ["c", "a", "b"]
    assert [h.rank for h in r.hits] == [0, 1, 2]
    assert r.top(2).hits == r.hits[:2]


def test_stage_params_validated_with_names():
    with pytest.raises(ConfigError, match="parameter 'k' is 0, out of range: must be >= 1"):
        Cutoff(k=0)
    with pytest.raises(ConfigError, match="parameter 'k' must be int, got str"):
        Cutoff(k="3")
    with pytest.raises(TypeError):
        Cutoff(3)  # keyword-only


def test_stage_print_compare_pickle():
    s = ListRetriever(k=3, text=True)
    assert repr(s) == "ListRetriever(k=3, text=True)"
    assert s == ListRetriever(k=3, text=True) and s != ListRetriever(k=4, text=True)
    s.setup()
    s._model = object()  # loaded state is not pickled
    t = pickle.loads(pickle.dumps(s))
    assert t == s and "_model" not in t.__dict__


def test_operators_build_flat_pipeline():
    p = ListRetriever(text=True) >> OverlapReranker() % 2 >> EchoGenerator()
    assert [type(s).__name__ for s in p.stages] == ["ListRetriever", "OverlapReranker", "Cutoff", "EchoGenerator"]
    assert p.stages[2] == Cutoff(k=2)
    assert (ListRetriever() % 2).stages[-1].k == 2


def test_needs_checked_at_build_before_loading():
    with pytest.raises(PipelineError, match=r"needs `text` on hits; upstream provides .*Add `text: true`"):
        ListRetriever(text=False) >> OverlapReranker()
    ListRetriever(text=True) >> OverlapReranker()  # fine


def test_kinds_checked():
    with pytest.raises(PipelineError, match="takes rankings but the stage before it gives answers"):
        ListRetriever(text=True) >> EchoGenerator() >> Cutoff(k=1)


def test_run_end_to_end_and_query_forms():
    p = ListRetriever(text=True) >> OverlapReranker() % 2 >> EchoGenerator()
    (a,) = p.run("cat on a mat")
    assert a.citations == ("d1",) and a.text == "The cat sat on the mat."
    assert len(a.ranking.hits) == 2
    assert p.search("cat mat").citations == ("d1",)
    with pytest.raises(StageInputError, match="empty query"):
        p.run(["  "])


def test_empty_batch_gives_empty_result():
    for s in (ListRetriever(), OverlapReranker(), Cutoff(), EchoGenerator(), ExtractiveGenerator()):
        assert s([]) == []


def test_setup_twice_and_threads():
    p = ListRetriever(text=True) >> OverlapReranker() % 3
    p.setup(); p.setup()
    queries = [f"cat mat park {i}" for i in range(8)] + ["dogs park trees"] * 8
    expected = [p.run([q])[0] for q in queries]
    results = [None] * len(queries)

    def work(i):
        results[i] = p.run([queries[i]])[0]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r.hits for r in results] == [r.hits for r in expected]


def test_extractive_generator_picks_matching_sentence():
    q = Query("q", "What color is the sky on Mars?")
    r = Ranking(q, (Hit("q", "d1", 2.0, 0, "Mars is red. The sky on Mars is butterscotch in color. It is cold."),
                    Hit("q", "d2", 1.0, 1, "Earth's sky is blue.")))
    (a,) = ExtractiveGenerator()([r])
    assert a.text == "The sky on Mars is butterscotch in color." and a.citations == ("d1",)


def test_top_level_exports_resolve():
    import ragkit

    missing = [n for n in ragkit.__all__ if n != "__version__" and getattr(ragkit, n, None) is None]
    assert missing == []
    with pytest.raises(AttributeError):
        ragkit.NoSuchThing
