"""``indexer.kv``: precompute the passage KV store for ``generator.hf`` with ``kv_reuse``.

A client of :mod:`ragkit.kv` (as ``generator.hf`` is): it loads the model with
:func:`ragkit.models.load_causal_lm` and opens the same store namespace with :func:`ragkit.kv.open_engine`.
Each chunk becomes one passage block (``" Title: <title>\\n<text>"``, as the generator formats it),
encoded on its own after the shared prefix of the generator's prompt, in batches, and written to
the store (safetensors, one file per block). Blocks already in the store are skipped, so the stage
is incremental. The generator finds these entries only when its model, prompt (system prompt,
chat template), ``max_passage_tokens`` and store dtype match; other settings make a separate
namespace in the same store folder. The passage-number blocks ``"\\n[i]"`` for i up to
``max_rank`` are stored too (the generator caches them as blocks of their own). Chunks pass
through unchanged.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from ragkit.records import Chunk
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param


@register("indexer.kv")
class KVIndexer(Stage):
    """Precompute passage key/value states (one block per chunk) into the passage KV store."""

    model: str = param("smollm2-135m-instruct", help="causal LM (must match the generator's)")
    adapter: str = param("", help="LoRA adapter merged into the model (must match the generator's; empty = none)")
    store: str = param("", help="store folder (empty = <cache>/kv, the generator's default)")
    device: Literal["auto", "cpu", "cuda"] = param("auto", help="where to run the model")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = param("auto", help="model dtype")
    store_dtype: Literal["auto", "float32", "float16", "bfloat16"] = param(
        "auto", help="dtype of stored KV (auto = model dtype)")
    batch_size: int = param(8, ge=1, help="passages per forward pass")
    max_passage_tokens: int = param(512, ge=0, help="cut each passage to this many tokens (as the generator)")
    system_prompt: str = param("", help="system message (must match the generator's)")
    chat_template: bool = param(True, help="use the chat template (must match the generator's)")
    max_rank: int = param(20, ge=0, help="also store the passage-number blocks '[1]'..'[max_rank]'")

    input_kind = CHUNKS
    output_kind = CHUNKS

    def _setup(self) -> None:
        from ragkit.kv import PromptTemplate, open_engine, prefix_ids
        from ragkit.models import load_causal_lm

        # the same model, prompt prefix and store namespace as generator.hf with these settings
        tok, model, res = load_causal_lm(self.model, self.device, self.dtype, "sdpa", base_dir=self._base_dir,
                                         what=f"'{self.key}'", adapter=self.adapter)
        template = PromptTemplate(system=self.system_prompt or PromptTemplate.system,
                                  use_chat_template=self.chat_template)
        self._tok = tok
        self._engine = open_engine(model, tok, res, prefix_ids(tok, template), store=self.store,
                                   base_dir=self._base_dir, store_dtype=self.store_dtype, memory_mb=0, write=True)

    @property
    def kv_store(self) -> Any:
        """The underlying :class:`ragkit.kv.KVStore` (after setup)."""
        return self.setup()._engine.store

    def run(self, batch: list[Chunk]) -> list[Chunk]:
        import sys

        from tqdm.auto import tqdm

        from ragkit.kv import block_text, glue_text, tokenize

        tok, eng = self._tok, self._engine
        store = eng.store
        todo: dict[str, list[int]] = {}
        for c in batch:
            bt = block_text(c.text, (c.meta or {}).get("title"))
            if not bt or bt in todo or bt in store:
                continue
            ids = tokenize(tok, bt)
            if self.max_passage_tokens and len(ids) > self.max_passage_tokens:
                ids = ids[: self.max_passage_tokens]
            if ids:
                todo[bt] = ids
        for i in range(1, self.max_rank + 1):
            g = glue_text(i)
            if g not in store:
                todo[g] = tokenize(tok, g)
        # similar lengths together: less padding per batch
        items = sorted(todo.items(), key=lambda kv: len(kv[1]))
        show = self._progress if self._progress is not None else sys.stderr.isatty()
        bar = tqdm(total=len(items), desc="passage KV", unit="passage", disable=not show)
        t0 = time.perf_counter()
        eng.precompute(items, self.batch_size, on_batch=bar.update)
        bar.close()
        self._last_stats = {"computed": len(items), "skipped": len(batch) + self.max_rank - len(items),
                            "seconds": time.perf_counter() - t0, "store": str(store.folder)}
        return list(batch)

    def store_folder(self) -> Path:
        return self.kv_store.folder
