"""retriever.lightrag / retriever.pathrag / retriever.ppr over a hand-made GraphIndex (tests/_graph_fixture.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ragkit.errors import ConfigError, IndexArtifactError
from ragkit.records import Query
from ragkit.retrievers._graph import (KeywordExtractor, parse_llm_keywords, register_graph_index, regex_tokens, render_graph_context,
                                      simple_keywords)
from ragkit.retrievers.lightrag import LightRAGRetriever, _weighted_polling
from ragkit.retrievers.pathrag import PathRAGRetriever, flow_reliability, paths_between
from ragkit.retrievers.ppr import PPRGraph, PPRRetriever

from ._graph_fixture import make_graph_index

pytest.importorskip("networkx")


@pytest.fixture(scope="module")
def gi():
    g = make_graph_index()
    register_graph_index("fixture", g)
    return g


def _kw_llm(low, high):
    import json

    def fn(prompt: str) -> str:
        return "Sure: " + json.dumps({"high_level_keywords": high, "low_level_keywords": low})
    return fn


def test_local_mode_follows_lightrag(gi):
    r = LightRAGRetriever(index="fixture", mode="local", top_k=1, cosine_threshold=0.0).setup()
    r.set_keyword_llm(_kw_llm(["Alice Smith"], ["birthplace"]))
    rk = r([Query("q", "Where was Alice Smith born?")])[0]
    ctx = rk.hits[0].meta["graph_context"]
    assert [e["name"] for e in ctx["entities"]] == ["Alice Smith"]
    # relations of the entity ranked by edge degree (deg(alice)+deg(paris)=5 > alice+sorbonne=4)
    assert [(x["source"], x["target"]) for x in ctx["relations"]] == [("Alice Smith", "Paris"),
                                                                      ("Alice Smith", "Sorbonne")]
    assert [h.chunk_id for h in rk.hits] == ["a#0"] and rk.hits[0].doc_id == "A"
    assert ctx["keywords"]["source"] == "llm" and ctx["fallback"] is None
    assert rk.hits[0].meta["graph"] == {"source": "entity", "entities": ["Alice Smith"]}


def test_global_mode_relations_then_their_entities_and_chunks(gi):
    r = LightRAGRetriever(index="fixture", mode="global", top_k=1, cosine_threshold=0.0).setup()
    r.set_keyword_llm(_kw_llm(["x"], ["France borders Germany"]))
    rk = r([Query("q", "Which countries border each other?")])[0]
    ctx = rk.hits[0].meta["graph_context"]
    assert [(x["source"], x["target"]) for x in ctx["relations"]] == [("France", "Germany")]
    assert [e["name"] for e in ctx["entities"]] == ["France", "Germany"]
    # France's chunks by how many selected entities cite them: e#0 (France, Germany) before b#0 (France)
    assert [h.chunk_id for h in rk.hits] == ["e#0", "b#0"]


def test_hybrid_and_mix_merge_round_robin(gi):
    llm = _kw_llm(["Alice Smith"], ["France borders Germany"])
    hy = LightRAGRetriever(index="fixture", mode="hybrid", top_k=1, cosine_threshold=0.0).setup().set_keyword_llm(llm)
    rk = hy([Query("q", "?")])[0]
    ctx = rk.hits[0].meta["graph_context"]
    assert [e["name"] for e in ctx["entities"]] == ["Alice Smith", "France", "Germany"]
    assert [h.chunk_id for h in rk.hits][:2] == ["a#0", "e#0"]
    mix = LightRAGRetriever(index="fixture", mode="mix", top_k=1, chunk_top_k=1,
                            cosine_threshold=0.0).setup().set_keyword_llm(llm)
    rk = mix([Query("q", "Bob Jones engineer Acme Corp Berlin")])[0]
    assert rk.hits[0].chunk_id == "c#0" and rk.hits[0].meta["graph"]["source"] == "vector"
    naive = LightRAGRetriever(index="fixture", mode="naive", k=2).setup()
    rk = naive([Query("q", "Bob Jones engineer Acme Corp Berlin")])[0]
    assert rk.hits[0].chunk_id == "c#0" and rk.hits[0].meta["graph_context"]["entities"] == []


def test_weighted_polling_linear_quota():
    items = [["a", "b", "c", "d"], ["e", "f", "g"], ["h"]]
    # quotas 3, 2, 1 -> a b c | e f | h
    assert _weighted_polling(items, 3) == ["a", "b", "c", "e", "f", "h"]
    # unused quota of a short item goes to the first item with chunks left
    assert _weighted_polling([["a"], ["b", "c", "d"], ["e", "f"]], 3) == ["a", "b", "c", "e", "d", "f"]


def test_token_budgets_cut_entities_relations_and_chunks(gi):
    r = LightRAGRetriever(index="fixture", mode="hybrid", cosine_threshold=0.0, max_entity_tokens=16,
                          max_relation_tokens=0, keywords="simple").setup()
    ctx = r([Query("q", "Alice Smith Paris")])[0].hits[0].meta["graph_context"]
    assert 1 <= len(ctx["entities"]) <= 2 and ctx["relations"] == []
    tiny = LightRAGRetriever(index="fixture", mode="naive", max_total_tokens=20).setup()
    assert len(tiny([Query("q", "Alice Smith Paris")])[0].hits) == 1


def test_no_entity_match_falls_back_and_says_so(gi):
    for r in (LightRAGRetriever(index="fixture", mode="local", cosine_threshold=0.99, keywords="simple"),
              PathRAGRetriever(index="fixture", cosine_threshold=0.99, keywords="simple"),
              PPRRetriever(index="fixture", cosine_threshold=0.99, keywords="simple")):
        rk = r.setup()([Query("q", "zzqx wvut")])[0]
        assert len(rk.hits) > 0
        assert "fell back" in rk.hits[0].meta["graph_context"]["fallback"] or \
            "dense" in rk.hits[0].meta["graph_context"]["fallback"]


def test_non_english_and_empty_queries_do_not_crash(gi):
    for r in (LightRAGRetriever(index="fixture", mode="hybrid", keywords="simple"),
              PathRAGRetriever(index="fixture", keywords="simple"), PPRRetriever(index="fixture", keywords="simple")):
        out = r.setup()([Query("a", "Wo wurde Alice Smith geboren? 東京はどこですか"), Query("b", "")])
        assert len(out) == 2


def test_keyword_extraction_llm_and_fallbacks():
    kw = parse_llm_keywords('blah {"high_level_keywords": ["history"], "low_level_keywords": ["Paris", ""]} tail')
    assert kw.low == ["Paris"] and kw.high == ["history"] and kw.source == "llm"
    assert parse_llm_keywords("no json here") is None
    ex = KeywordExtractor("auto", lambda p: "I cannot help")
    got = ex("Where was Marie Curie born?")
    assert got.source in ("spacy", "simple") and "not the JSON" in got.note
    s = simple_keywords('Who directed "Blade Runner" and where was Ridley Scott born?')
    assert "Blade Runner" in s.low and "Ridley Scott" in s.low and s.high
    with pytest.raises(ConfigError, match="needs an LLM"):
        KeywordExtractor("llm", None)("x")


def test_langchain_chat_model_as_keyword_llm(gi):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    fake = FakeListChatModel(responses=['{"high_level_keywords": [], "low_level_keywords": ["Bob Jones"]}'] * 4)
    r = PathRAGRetriever(index="fixture", cosine_threshold=0.0, top_k=2).setup().set_keyword_llm(fake)
    rk = r([Query("q", "Who is Bob Jones?")])[0]
    ctx = rk.hits[0].meta["graph_context"]
    # no high-level keywords: handled (the reference implementation returns a failure here)
    assert ctx["keywords"] == {"low": ["Bob Jones"], "high": [], "source": "llm"}
    assert any("high-level" in n for n in ctx["notes"])
    assert ctx["entities"][0]["name"] == "Bob Jones"


def test_paths_between_enumerates_up_to_three_hops(gi):
    g = gi.graph
    assert paths_between(g, "alice smith", "france", 3) == [("alice smith", "paris", "france"),
                                                           ("alice smith", "sorbonne", "paris", "france")]
    assert paths_between(g, "alice smith", "france", 2) == [("alice smith", "paris", "france")]
    assert paths_between(g, "alice smith", "germany", 3) == [("alice smith", "paris", "france", "germany")]


def test_flow_pruning_and_reliability():
    paths = [("s", "t"), ("s", "a", "t"), ("s", "b", "c", "t")]
    # theta 0.3: every first-hop node gets 0.8/3 < 0.3 and stops: only the direct edge survives
    got = flow_reliability(paths, 0.8, 0.3)
    assert [p for p, _ in got] == [("s", "t")] and got[0][1] == pytest.approx(0.8 / 3)
    got = dict(flow_reliability(paths, 0.8, 0.2))
    f1 = 0.8 / 3
    assert got[("s", "a", "t")] == pytest.approx((f1 + 0.8 * f1) / 2)
    assert got[("s", "b", "c", "t")] == pytest.approx((f1 + 0.8 * f1 + 0.8 * 0.8 * f1) / 3)


def test_pathrag_context_most_reliable_last(gi):
    r = PathRAGRetriever(index="fixture", cosine_threshold=0.0, top_k=8, theta=0.0, text=True).setup()
    r.set_keyword_llm(_kw_llm(["Alice Smith", "France"], ["capital"]))
    rk = r([Query("q", "Which country is Alice Smith's birthplace the capital of?")])[0]
    paths = rk.hits[0].meta["graph_context"]["paths"]
    rel = [p["reliability"] for p in paths]
    assert len(paths) > 1 and rel == sorted(rel)
    assert rk.hits[0].meta["graph"]["source"] == "path"
    text = render_graph_context(rk.hits[0].meta["graph_context"])
    assert text.index("Reasoning paths") > text.index("Entities:")
    assert text.rstrip().endswith(paths[-1]["text"])
    # a budget keeps the most reliable path first
    short = render_graph_context(rk.hits[0].meta["graph_context"], budget=regex_tokens(paths[-1]["text"]) + 4)
    assert paths[-1]["text"] in short and paths[0]["text"] not in short


def test_ppr_matches_networkx_pagerank(gi):
    import networkx as nx

    pg = PPRGraph(gi, 0.8, 10)
    rng = np.random.default_rng(0)
    seeds = np.zeros(pg.n)
    seeds[[0, 3, pg.n - 1]] = rng.random(3) + 0.1
    G = nx.from_scipy_sparse_array(pg.W)
    ref = nx.pagerank(G, alpha=0.5, personalization={i: float(s) for i, s in enumerate(seeds) if s > 0},
                      weight="weight", tol=1e-12, max_iter=500)
    ours = pg.pagerank(seeds, 0.5)
    assert np.allclose(ours, [ref[i] for i in range(pg.n)], atol=1e-8)
    assert ours.sum() == pytest.approx(1.0)


def test_ppr_ranks_passages_by_mass_from_query_entities(gi):
    r = PPRRetriever(index="fixture", seed="entities", passage_node_weight=0.0, k=6).setup()
    r.set_keyword_llm(_kw_llm(["Bob Jones"], []))
    rk = r([Query("q", "Bob Jones")])[0]
    ids = [h.chunk_id for h in rk.hits]
    assert ids[0] == "c#0"                                  # the only chunk Bob Jones occurs in
    assert ids.index("d#0") < ids.index("a#0")              # Acme Corp's other chunk before unrelated ones
    ctx = rk.hits[0].meta["graph_context"]
    assert ctx["seeds"]["entities"][0][0] == "bob jones" and ctx["fallback"] is None
    scores = [h.score for h in rk.hits]
    assert scores == sorted(scores, reverse=True) and all(h.meta["graph"]["source"] == "ppr" for h in rk.hits)


def test_context_survives_cutoff_fusion_and_reranker(gi):
    from ragkit.retrievers.fusion import RRFFusion
    from ragkit.testing import OverlapReranker

    lr = LightRAGRetriever(index="fixture", mode="hybrid", keywords="simple", text=True, cosine_threshold=0.0)
    pp = PPRRetriever(index="fixture", keywords="simple", text=True)
    pipe = RRFFusion(retrievers=[lr, pp], k=4) >> OverlapReranker() % 2
    rk = pipe.search("Where was Alice Smith born?")
    assert len(rk.hits) == 2
    assert all("graph_context" in h.meta for h in rk.hits)


def test_index_mismatch_is_a_clear_error(gi):
    with pytest.raises(IndexArtifactError, match="encoder|model"):
        LightRAGRetriever(index="fixture", model="minilm").setup()
    with pytest.raises(IndexArtifactError, match="extractor"):
        PPRRetriever(index="fixture", extractor="llm").setup()
    LightRAGRetriever(index="fixture", model="hash", extractor="spacy").setup()


def test_empty_graph_index():
    import networkx as nx

    from ragkit.indexers._graph_store import GraphIndex
    from ragkit.testing import HashEmbedder

    empty = GraphIndex.from_parts(nx.Graph(), {}, {}, lambda t: HashEmbedder().encode(list(t)))
    register_graph_index("empty", empty)
    for r in (LightRAGRetriever(index="empty", keywords="simple"), PathRAGRetriever(index="empty", keywords="simple"),
              PPRRetriever(index="empty", keywords="simple")):
        assert r.setup()([Query("q", "anything")])[0].hits == ()


def test_generator_prompt_renders_graph_context(gi):
    from ragkit.kv.prompt import PromptTemplate, build_segments

    class Tok:
        chat_template = None
        bos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    r = PathRAGRetriever(index="fixture", cosine_threshold=0.0, theta=0.0, text=True).setup()
    r.set_keyword_llm(_kw_llm(["Alice Smith", "France"], ["capital"]))
    rk = r([Query("q", "Which country?")])[0]
    from ragkit.generators.hf import HFGenerator

    gen = HFGenerator(max_graph_context_tokens=0)
    gen.__dict__["_tok"] = Tok()
    ctx = gen.graph_context_text(list(rk.hits))
    seg = build_segments(Tok(), PromptTemplate(use_chat_template=False), "Which country?",
                         [(h.text, None) for h in rk.hits], context=ctx)
    text = "".join(chr(i) for i in seg.ids())
    paths = rk.hits[0].meta["graph_context"]["paths"]
    assert "Knowledge graph:" in text and text.index(paths[-1]["text"]) < text.index("Question: Which country?")
    assert text.index("[1]") < text.index("Knowledge graph:")
    assert HFGenerator(graph_context=False).graph_context_text(list(rk.hits)) == ""


@pytest.fixture(scope="module")
def spacy_index(tmp_path_factory):
    pytest.importorskip("spacy")
    from ragkit.indexers.graph import GraphIndexer
    from ragkit.records import Chunk

    from ._graph_fixture import CHUNKS

    path = tmp_path_factory.mktemp("gidx") / "graph"
    GraphIndexer(path=str(path), model="hash")([Chunk(c, d, t, 0, len(t)) for c, (d, t) in CHUNKS.items()])
    return str(path)


@pytest.mark.parametrize("make", [lambda p: LightRAGRetriever(index=p, mode="local", k=3),
                                  lambda p: PathRAGRetriever(index=p, k=3),
                                  lambda p: PPRRetriever(index=p, k=3)], ids=["lightrag", "pathrag", "ppr"])
def test_real_spacy_index_end_to_end(spacy_index, make):
    rk = make(spacy_index).setup()([Query("q", "Where was Alice Smith born?")])[0]
    assert "a#0" in [h.chunk_id for h in rk.hits] and all(h.doc_id for h in rk.hits)
    assert rk.hits[0].meta["graph_context"]["keywords"]["source"] in ("spacy", "simple")


def test_real_index_encoder_or_extractor_mismatch(spacy_index):
    with pytest.raises(IndexArtifactError, match="hash|encoder"):
        LightRAGRetriever(index=spacy_index, model="minilm").setup()
    with pytest.raises(IndexArtifactError, match="extractor"):
        PathRAGRetriever(index=spacy_index, extractor="llm").setup()


def test_pair_paths_equals_full_enumeration_then_pruning():
    import networkx as nx

    from ragkit.retrievers.pathrag import pair_paths

    g = nx.gnm_random_graph(40, 120, seed=3)
    g = nx.relabel_nodes(g, {i: f"n{i:02d}" for i in g.nodes})
    nodes = sorted(g.nodes)
    for alpha, theta in ((0.8, 0.3), (0.8, 0.1), (0.9, 0.45)):
        for s in nodes[:8]:
            for t in nodes[8:16]:
                full = flow_reliability(paths_between(g, s, t, 3), alpha, theta)
                fast = pair_paths(g, s, t, 3, alpha, theta)
                assert [p for p, _ in fast] == [p for p, _ in full]
                assert [r for _, r in fast] == pytest.approx([r for _, r in full])
