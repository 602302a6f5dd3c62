"""LangChain interop: a LangChain model as ragkit's generator; a ragkit pipeline as a LangChain
retriever and runnable. Tested with langchain-core's own fake models."""
from __future__ import annotations

import pytest

from ._integration import import_or_unavailable

import_or_unavailable("langchain_core", "langchain")

from langchain_core.language_models.fake import FakeListLLM  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402

from ragkit import Pipeline  # noqa: E402
from ragkit.errors import ConfigError, StageInputError  # noqa: E402
from ragkit.generators.langchain import LangChainGenerator, register_model, user_message  # noqa: E402
from ragkit.records import Chunk, Hit, Query, Ranking  # noqa: E402

CHUNKS = [Chunk("c1", "d1", "Paris is the capital of France.", 0, 31, {"title": "Paris"}),
          Chunk("c2", "d2", "Berlin is the capital of Germany.", 0, 33, {"title": "Berlin"}),
          Chunk("c3", "d3", "The Danube flows through Vienna.", 0, 32)]


def ranking(qid="q1", text="capital of France"):
    return Ranking(Query(qid, text), tuple(Hit(qid, c.doc_id, 3.0 - i, 0, c.text, c.chunk_id, c.meta)
                                          for i, c in enumerate(CHUNKS)))


@pytest.fixture
def bm25(tmp_path):
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.retrievers.bm25 import BM25Retriever

    BM25Indexer(path=str(tmp_path / "bm25"))(CHUNKS)
    return BM25Retriever(index=str(tmp_path / "bm25"), k=2, text=True)


def test_chat_model_generator_citations_and_prompt():
    chat = FakeListChatModel(responses=["Paris [1].", "Berlin [2][9]"])
    g = LangChainGenerator.wrap(chat, name="fake-chat", max_passages=2)
    a, b = g([ranking("a"), ranking("b", "capital of Germany")])
    assert (a.text, a.citations) == ("Paris [1].", ("d1",))
    assert (b.text, b.citations, b.meta["invalid_citations"]) == ("Berlin [2][9]", ("d2",), [9])
    assert a.ranking is not None and a.meta["llm_class"] == "FakeListChatModel"
    msg = user_message("q?", [("text one", "T1"), ("text two", None)])
    assert "[1] Title: T1\ntext one" in msg and "[2] text two" in msg and msg.index("[1]") < msg.index("q?")


def test_llm_generator_streams_to_callback():
    register_model("fake-llm", FakeListLLM(responses=["It is Paris [1]"]))
    pieces = []
    g = LangChainGenerator(model="fake-llm").set_stream_callback(lambda q, p: pieces.append((q, p)))
    a = g([ranking()])[0]
    assert a.text == "It is Paris [1]" and a.citations == ("d1",)
    assert "".join(p for _, p in pieces) == "It is Paris [1]" and {q for q, _ in pieces} == {"q1"}
    assert "ttft_s" in a.timings


def test_unregistered_model_and_missing_text_are_clear_errors():
    with pytest.raises(ConfigError, match="register_model"):
        LangChainGenerator(model="nobody-registered-this").setup()
    with pytest.raises(ConfigError, match="BaseChatModel"):
        register_model("x", object())
    g = LangChainGenerator.wrap(FakeListChatModel(responses=["x"]), name="fc2")
    with pytest.raises(StageInputError, match="text"):
        g([Ranking(Query("q", "x"), (Hit("q", "d", 1.0, 0),))])


def test_generator_yaml_roundtrip(bm25):
    register_model("fake-rt", FakeListChatModel(responses=["a"]))
    p = Pipeline([bm25, LangChainGenerator(model="fake-rt", stop=["\n"])])
    assert Pipeline.from_yaml(p.to_yaml()) == p


def test_pipeline_as_langchain_retriever(bm25):
    from langchain_core.retrievers import BaseRetriever

    from ragkit.langchain import as_retriever

    chat = FakeListChatModel(responses=["Paris [1]"])
    pipe = bm25 >> LangChainGenerator.wrap(chat, name="fc3")
    ret = as_retriever(pipe)                      # only the retrieval part runs
    assert isinstance(ret, BaseRetriever)
    docs = ret.invoke("capital of France")
    direct = bm25([Query("q0", "capital of France")])[0]
    assert [d.metadata["doc_id"] for d in docs] == [h.doc_id for h in direct.hits]
    assert docs[0].page_content == "Paris is the capital of France." and docs[0].metadata["title"] == "Paris"
    assert docs[0].metadata["rank"] == 0 and docs[0].metadata["score"] == pytest.approx(direct.hits[0].score)


def test_pipeline_as_runnable_in_a_chain(bm25):
    from langchain_core.runnables import Runnable, RunnableLambda

    from ragkit.langchain import as_runnable

    chat = FakeListChatModel(responses=["Paris [1]", "Berlin [1]"])
    run = as_runnable(bm25 >> LangChainGenerator.wrap(chat, name="fc4"))
    assert isinstance(run, Runnable)
    out = run.invoke("capital of France")
    assert out["answer"] == "Paris [1]" and out["citations"] == ["d1"]
    assert out["documents"][0].metadata["doc_id"] == "d1"
    chain = RunnableLambda(lambda q: {"question": q}) | run | RunnableLambda(lambda o: o["answer"].upper())
    assert chain.invoke("capital of Germany") == "BERLIN [1]"
    both = as_runnable(bm25).batch(["capital of France", {"query": "Danube"}])
    assert [o["documents"][0].metadata["doc_id"] for o in both] == ["d1", "d3"]
    with pytest.raises(StageInputError):
        run.invoke(42)
