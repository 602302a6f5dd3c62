"""Passage key/value states: the store, the reuse engine and the prompt layout they share.

A neutral package: it imports neither :mod:`ragkit.indexers` nor :mod:`ragkit.generators`, and both
are clients of its public API --

- ``indexer.kv`` precomputes passage blocks: :func:`open_engine` then :meth:`KVReuseEngine.precompute`;
- ``generator.hf`` (``kv_reuse: plain|blend``) serves prompts: :func:`open_engine`, then
  :meth:`KVReuseEngine.get_blocks` and :meth:`KVReuseEngine.prefill` (or :meth:`KVReuseEngine.prefill_batch`).

Modules: :mod:`ragkit.kv.prompt` (how a RAG prompt is cut into prefix, glue, passage blocks and a
final block), :mod:`ragkit.kv.store` (one safetensors file per block plus an in-memory LRU, keyed by
a namespace of model, tokenizer, prefix and dtype) and :mod:`ragkit.kv.reuse` (re-rotation,
assembly, CacheBlend). See docs/kv_reuse.md.

    >>> from ragkit.models import load_causal_lm                              # doctest: +SKIP
    >>> from ragkit.kv import PromptTemplate, open_engine, prefix_ids
    >>> tok, model, res = load_causal_lm("smollm2-135m-instruct", "cpu")
    >>> eng = open_engine(model, tok, res, prefix_ids(tok, PromptTemplate()))
    >>> eng.precompute([("  Title: Paris\\nParis is ...", tok(" Paris is ...")["input_ids"])])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .prompt import (PromptTemplate, Segments, block_text, build_segments, glue_text, ids_hash, parse_citations,
                     prefix_ids, tokenize)
from .reuse import KVReuseEngine, PrefillResult, check_supported, rotate_keys
from .store import STORE_DTYPES, KVStore, PassageKV, tokenizer_fingerprint

__all__ = ["KVReuseEngine", "KVStore", "PassageKV", "PrefillResult", "PromptTemplate", "Segments", "STORE_DTYPES",
           "block_text", "build_segments", "check_supported", "default_store_root", "glue_text", "ids_hash",
           "kv_namespace", "open_engine", "open_store", "parse_citations", "prefix_ids", "rotate_keys", "tokenize",
           "tokenizer_fingerprint"]


def kv_namespace(resolved: Any, tokenizer: Any, prefix: Sequence[int]) -> dict:
    """What a store entry depends on besides the passage text: the model (id and weights revision of a
    :class:`ragkit.models.ResolvedModel`), the tokenizer and the shared prefix."""
    return {"model_id": resolved.id, "revision": resolved.revision, "tokenizer": tokenizer_fingerprint(tokenizer),
            "prefix": ids_hash(list(prefix)), "prefix_tokens": len(prefix)}


def default_store_root() -> Path:
    """``<ragkit cache>/kv``: where ``indexer.kv`` and ``generator.hf`` meet when neither names a store."""
    from ragkit.artifacts import cache_dir

    return cache_dir() / "kv"


def open_store(model: Any, tokenizer: Any, resolved: Any, prefix: Sequence[int], *, store: str | Path = "",
               base_dir: str | Path | None = None, store_dtype: str = "auto", memory_mb: int = 1024,
               write: bool = True) -> KVStore:
    """The :class:`KVStore` namespace for this model, tokenizer and prefix under ``store`` (a folder,
    relative to ``base_dir``; empty = :func:`default_store_root`). ``store_dtype`` auto = the model's."""
    from ragkit.artifacts import resolve_path

    root = resolve_path(str(store), base_dir) if store else default_store_root()
    if store_dtype == "auto":
        store_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return KVStore(Path(root), kv_namespace(resolved, tokenizer, prefix), storage_dtype=store_dtype,
                   memory_bytes=int(memory_mb) << 20, write=write)


def open_engine(model: Any, tokenizer: Any, resolved: Any, prefix: Sequence[int], **store_args: Any) -> KVReuseEngine:
    """A :class:`KVReuseEngine` over :func:`open_store` (``store_args`` go there). Refuses models whose
    keys cannot be re-rotated exactly (:func:`check_supported`) with a ConfigError saying why."""
    return KVReuseEngine(model, open_store(model, tokenizer, resolved, prefix, **store_args), prefix)
