import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragkit import ConfigError, Hit, Query, Ranking
from ragkit.retrievers.fusion import RRF, RRFFusion, WeightedFusion
from ragkit.stage import QUERIES, RANKINGS, Stage, param


class Fixed(Stage):
    """Returns a fixed ranking (doc -> score) for every query."""

    scores: dict[str, float] = param({})
    input_kind = QUERIES
    output_kind = RANKINGS

    def provides(self):
        return frozenset({"doc_id", "score", "rank"})

    def run(self, batch):
        return [Ranking.from_scores(q, self.scores.items()) for q in batch]


Q = [Query("q1", "x")]


def test_rrf_matches_formula():
    a = Fixed(scores={"d1": 3.0, "d2": 2.0, "d3": 1.0})
    b = Fixed(scores={"d3": 9.0, "d1": 5.0})
    (r,) = RRF([a, b])(Q)
    expect = {"d1": 1 / 61 + 1 / 62, "d2": 1 / 62, "d3": 1 / 63 + 1 / 61}
    assert {h.doc_id: h.score for h in r.hits} == pytest.approx(expect)
    assert [h.doc_id for h in r.hits] == ["d1", "d3", "d2"]


def test_rrf_weights_and_k_and_cut():
    a = Fixed(scores={"d1": 3.0, "d2": 2.0})
    b = Fixed(scores={"d2": 9.0, "d1": 5.0})
    (r,) = RRFFusion(retrievers=[a, b], weights=[1.0, 3.0], rrf_k=0, k=1)(Q)
    assert [(h.doc_id, h.score) for h in r.hits] == [("d2", pytest.approx(0.5 + 3.0))]


def test_weighted_minmax_and_zscore():
    a = Fixed(scores={"d1": 10.0, "d2": 0.0, "d3": 5.0})
    b = Fixed(scores={"d2": 1.0, "d3": 0.0})
    (r,) = WeightedFusion(retrievers=[a, b], weights=[1.0, 2.0])(Q)
    assert {h.doc_id: h.score for h in r.hits} == pytest.approx({"d1": 1.0, "d2": 2.0, "d3": 0.5})
    (r,) = WeightedFusion(retrievers=[a], normalization="zscore")(Q)
    assert sum(h.score for h in r.hits) == pytest.approx(0.0)


def test_fusion_validation():
    with pytest.raises(ConfigError, match="'weights' has 1 values for 2 retrievers"):
        RRF([Fixed(), Fixed()], weights=[1.0])
    with pytest.raises(ConfigError, match="at least one retriever"):
        RRF([])


rankings = st.dictionaries(st.sampled_from([f"d{i}" for i in range(8)]), st.floats(-5, 5, allow_nan=False), max_size=8)


@settings(max_examples=50, deadline=None)
@given(st.lists(rankings, min_size=1, max_size=4), st.randoms())
def test_rrf_is_order_independent(score_maps, rnd):
    stages = [Fixed(scores=m) for m in score_maps]
    shuffled = stages[:]
    rnd.shuffle(shuffled)
    (r1,) = RRF(stages)(Q)
    (r2,) = RRF(shuffled)(Q)
    assert [h.doc_id for h in r1.hits] == [h.doc_id for h in r2.hits]
    assert [h.score for h in r1.hits] == pytest.approx([h.score for h in r2.hits])
