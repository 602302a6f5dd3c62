"""``generator.hf``: answer with any transformers causal LM, optionally reusing passage KV states.

Prompts follow :mod:`ragkit.kv.prompt` (chat template when the model has one, numbered passages with
titles, the question last); answers carry citations (the doc ids of the passages cited as
``[n]``) and timings (``prefill_s`` = time to first token, ``decode_s``, ``tokens_per_s``).

``kv_reuse`` selects how the prompt is prefilled:

- ``none``: one ordinary forward pass over the whole prompt (rows of a batch left-padded together);
- ``plain``: passage blocks' KV from the store (computed once, each after the shared prefix only),
  re-rotated to their offsets, then the final block is prefilled (Block-Attention / TurboRAG
  without fine-tuning);
- ``blend``: as ``plain``, plus CacheBlend selective recomputation of the ``recompute_ratio``
  share of passage tokens whose KV deviates most from full attention (measured on layer
  ``select_layers``).

Missing store entries are computed and written at query time; ``indexer.kv`` fills the store at
indexing time. See docs/kv_reuse.md.

Attention-level methods (ACT, found-in-the-middle, attention sorting, the attention guard, the
parallel-encoding fixes for reuse) are options too; they run through one attention hook
(``_attention.py``, ``_attnrun.py``), one prompt at a time. See docs/attention.md.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Literal

from ragkit._hfcompat import output_cache
from ragkit.errors import ConfigError, StageInputError
from ragkit.records import Answer, Ranking
from ragkit.registry import register
from ragkit.stage import Generator, param

from ragkit.kv.prompt import PromptTemplate, build_segments, glue_text, parse_citations, prefix_ids

TokenCallback = Callable[[str, str], None]   # (qid, text piece)


@register("generator.hf")
class HFGenerator(Generator):
    """Generate answers with a transformers causal LM (optionally with passage-KV reuse)."""

    model: str = param("smollm2-135m-instruct", help="short name, local folder or cached hub id")
    adapter: str = param("", help="LoRA adapter merged into the model at load: a shipped short name "
                                  "(smollm2-rag) or a folder from `ragkit train-generator` (empty = none)")
    device: Literal["auto", "cpu", "cuda"] = param("auto", help="where to run the model")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = param(
        "auto", help="model dtype (auto: float32 on CPU, bfloat16/float16 on CUDA)")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = param(
        "auto", help="attention kernel (auto: flash attention on CUDA when installed, else sdpa)")
    max_new_tokens: int = param(64, ge=1, help="most tokens generated per answer")
    do_sample: bool = param(False, help="sample instead of greedy decoding")
    temperature: float = param(1.0, gt=0, help="sampling temperature")
    top_k: int = param(0, ge=0, help="sample from the k most likely tokens (0 = off)")
    top_p: float = param(1.0, gt=0, le=1, help="nucleus sampling mass")
    repetition_penalty: float = param(1.0, gt=0, help="penalty for repeating generated tokens (1 = off)")
    seed: int = param(-1, help="random seed for sampling (-1 = random)")
    stop: list[str] = param([], help="stop generating at any of these strings (not included)")
    batch_size: int = param(8, ge=1, help="prompts per forward pass (every kv_reuse mode)")
    max_passages: int = param(10, ge=0, help="use at most this many top hits as passages")
    max_passage_tokens: int = param(512, ge=0, help="cut each passage to this many tokens (0 = no cut)")
    system_prompt: str = param("", help="system message (empty = the built-in instructions)")
    instruction: str = param("", help="instruction after the question (empty = built-in)")
    chat_template: bool = param(True, help="use the tokenizer's chat template when it has one")
    kv_reuse: Literal["none", "plain", "blend"] = param("none", help="passage-KV reuse mode")
    recompute_ratio: float = param(0.15, ge=0, le=1, help="blend: share of passage tokens recomputed")
    select_layers: int = param(1, ge=1, help="blend: measure KV deviation on this layer")
    kv_store: str = param("", help="passage KV store folder (empty = <cache>/kv)")
    kv_store_dtype: Literal["auto", "float32", "float16", "bfloat16"] = param(
        "auto", help="dtype of stored passage KV (auto = model dtype)")
    kv_memory_mb: int = param(1024, ge=0, help="in-memory LRU of passage KV, in MiB")
    kv_write: bool = param(True, help="write passage KV computed at query time to disk")
    cache_glue: bool = param(True, help="reuse: cache the passage-number tokens '[i]' as blocks too "
                                        "(false: compute them with full attention at query time)")
    stream: bool = param(False, help="print answer tokens to stdout as they are generated")
    # attention-level methods (generators/_attention.py, _attnrun.py; docs/attention.md)
    act_heads: list[str] = param([], help="ACT attention calibration on these heads ('layer:head', 'layer:*', '*'; "
                                          "empty = off)")
    act_tau: float = param(0.1, gt=0, help="ACT: a column is a sink when its mean attention exceeds tau")
    act_beta: float = param(0.4, ge=0, le=1, help="ACT: sink columns are scaled by beta")
    fim: bool = param(False, help="found-in-the-middle: rescale passages' attention toward calibrated relevance")
    fim_temperature: float = param(0.02, gt=0, help="found-in-the-middle: t in softmax(relevance / t)")
    fim_layers: str = param("auto", help="found-in-the-middle: layers rescaled ('auto' = later half, 'a-b', 'a,b')")
    fim_mix: float = param(1.0, ge=0, le=1, help="found-in-the-middle: share of the way each passage's mass moves "
                                                 "to its target (1 = the paper's full rescaling)")
    fim_bias: Literal["dummy", "swap"] = param(
        "dummy", help="positional bias: one prefill with the dummy at every position, or one per position")
    fim_dummy: str = param("", help="found-in-the-middle: content-free dummy passage text (empty = 'N/A')")
    attention_sort_rounds: int = param(0, ge=0, help="attention sorting: at most this many rounds (0 = off)")
    guard: Literal["off", "flag", "drop"] = param("off", help="attention guard against prompt injection")
    guard_heads: list[str] = param([], help="attention guard: important heads ('layer:head', '*')")
    guard_threshold: float = param(0.5, ge=0, help="attention guard: flag when the focus score (or the probe's "
                                                   "P(benign)) is below this")
    guard_probe: str = param("", help="attention guard: a head-focus probe file (bench_attention.py guard "
                                      "--probe-out) used instead of the mean over guard_heads")
    guard_max_drops: int = param(1, ge=0, help="attention guard, drop mode: drop at most this many passages")
    kv_temperature: float = param(1.0, gt=0, help="kv_reuse: APE temperature on the parallel blocks' logits")
    kv_scale: float = param(1.0, gt=0, help="kv_reuse: APE scale on the parallel blocks' attention weights")
    kv_top_blocks: int = param(0, ge=0, help="kv_reuse: selective attention to the top-k passage blocks (0 = off)")
    kv_fix_layers: str = param("all", help="kv_reuse fixes: layers ('all', 'auto' = later half, 'a-b', 'a,b')")
    graph_context: bool = param(True, help="show the entities/relations/paths graph retrievers put on the hits "
                                           "(between the passages and the question)")
    max_graph_context_tokens: int = param(1024, ge=0, help="token budget of the graph context (0 = no limit)")

    _callback = None    # set_stream_callback(); kept across setup()
    _tok = None
    _template = None
    _act_heads = None   # parsed attention-method heads (generators/_attnrun.setup); None = no method
    _guard_heads = None
    _guard_probe = None  # generators/_attnrun.GuardProbe when guard_probe is set
    _fim_layers = None
    _kv_layers = None




    def validate(self) -> None:
        if self.do_sample is False and (self.top_k or self.top_p < 1.0 or self.temperature != 1.0):
            raise ConfigError(f"'{self.key}': temperature/top_k/top_p only apply with do_sample: true "
                              "(parameter 'do_sample').")
        if self.kv_reuse != "none" and self.attn_implementation == "flash_attention_2":
            raise ConfigError(f"'{self.key}': kv_reuse '{self.kv_reuse}' needs custom 4-D attention masks, which "
                              "flash attention does not take; use attn_implementation: sdpa (or auto).")
        if self.kv_reuse == "plain" and self.recompute_ratio not in (0.0, 0.15):
            raise ConfigError(f"'{self.key}': parameter 'recompute_ratio' is {self.recompute_ratio} but "
                              "kv_reuse is 'plain' (r = 0); use kv_reuse: blend to recompute tokens.")
        from . import _attnrun

        _attnrun.validate(self)

    # -- setup -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        from ragkit.models import load_causal_lm

        attn = self.attn_implementation
        if attn == "auto" and self.kv_reuse != "none":
            attn = "sdpa"      # reuse passes custom 4-D masks (flash attention takes none)
        tok, model, res = load_causal_lm(self.model, self.device, self.dtype, attn, what="generator.hf",
                                         base_dir=self._base_dir, adapter=self.adapter)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._tok, self._model, self._resolved = tok, model, res
        self._template = self.prompt_template()
        self._prefix = prefix_ids(tok, self._template)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos.append(tok.eos_token_id)
        self._eos = sorted(set(eos))
        self._model_lock = threading.Lock()
        self._engine = self._make_engine() if self.kv_reuse != "none" else None
        from . import _attnrun

        if _attnrun.wants_attention(self):
            _attnrun.setup(self)

    def _make_engine(self) -> Any:
        from ragkit.kv import open_engine

        return open_engine(self._model, self._tok, self._resolved, self._prefix, store=self.kv_store,
                           base_dir=self._base_dir, store_dtype=self.kv_store_dtype, memory_mb=self.kv_memory_mb,
                           write=self.kv_write)

    def set_stream_callback(self, fn: TokenCallback | None) -> "HFGenerator":
        """Call ``fn(qid, piece)`` with each piece of answer text as it is generated."""
        self._callback = fn
        return self

    # -- running ---------------------------------------------------------------------------------
    def _decode_params(self) -> Any:
        from ._decode import DecodeParams

        return DecodeParams(self.max_new_tokens, self.do_sample, self.temperature, self.top_k, self.top_p,
                            self.repetition_penalty, tuple(self.stop), None if self.seed < 0 else self.seed)

    def _passages(self, r: Ranking) -> list[Any]:
        hits = list(r.hits[: self.max_passages])
        for h in hits:
            if h.text is None:
                raise StageInputError(f"'{self.key}': hit {h.key!r} of query {r.qid!r} has no text. Add "
                                      "`text: true` to the retriever or a lookup stage before the generator.")
        return hits

    def _callback_for(self, qids: list[str]) -> Any:
        cb = self._callback
        if cb is None and self.stream:
            def cb(qid: str, piece: str) -> None:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if cb is None:
            return None
        return lambda row, piece: cb(qids[row], piece)

    def run(self, batch: list[Ranking]) -> list[Answer]:
        for r in batch:
            if not isinstance(r, Ranking):
                raise StageInputError(f"'{self.key}' takes rankings, got {type(r).__name__}")
        out: list[Answer] = []
        if self._act_heads is not None:     # attention methods: one prompt at a time
            from . import _attnrun

            return [_attnrun.run_one(self, r) for r in batch]
        if self.kv_reuse == "none":
            for i in range(0, len(batch), self.batch_size):
                out += self._run_full(batch[i: i + self.batch_size])
        else:
            for i in range(0, len(batch), self.batch_size):
                part = batch[i: i + self.batch_size]
                out += [self._run_reuse(part[0])] if len(part) == 1 else self._run_reuse_batch(part)
        return out

    def prompt_template(self) -> PromptTemplate:
        """The prompt template these parameters give (also used by ``ragkit train-generator``)."""
        return PromptTemplate(system=self.system_prompt or PromptTemplate.system,
                              instruction=self.instruction or PromptTemplate.instruction,
                              use_chat_template=self.chat_template)

    def prompt_segments(self, tokenizer: Any, question: str, passages: list[tuple[str, str | None]],
                        prefix: list[int] | None = None, context: str = "") -> Any:
        """The prompt segments of ``question`` over ``passages`` [(text, title)] exactly as this generator
        builds them (``ragkit train-generator`` trains on these, so training and serving cannot drift)."""
        template = self._template if self._tok is tokenizer and self._template is not None else self.prompt_template()
        if prefix is None:
            prefix = prefix_ids(tokenizer, template)
        return build_segments(tokenizer, template, question, passages, self.max_passage_tokens, prefix=prefix,
                              context=context)

    def _segments(self, r: Ranking, hits: list[Any]) -> Any:
        return self.prompt_segments(self._tok, r.query.text,
                                    [(h.text, h.meta.get("title") if h.meta else None) for h in hits],
                                    prefix=self._prefix, context=self.graph_context_text(hits))

    def graph_context_text(self, hits: list[Any]) -> str:
        """The rendered graph context of ``hits`` (empty when they carry none or graph_context is off)."""
        if not self.graph_context:
            return ""
        from ragkit.retrievers._graph import contexts_of, render_graph_context

        ctxs = contexts_of(hits)
        if not ctxs:
            return ""
        tok = self._tok
        count = (lambda t: len(tok(t, add_special_tokens=False)["input_ids"])) if tok is not None else None
        budget = self.max_graph_context_tokens
        parts = []
        for c in ctxs:
            text = render_graph_context(c, budget, count) if count else render_graph_context(c)
            if text:
                parts.append(text)
                if budget:
                    budget = max(budget - count(text), 0)
                    if budget == 0:
                        break
        return "\n".join(parts)

    def _run_full(self, batch: list[Ranking]) -> list[Answer]:
        import torch

        from ._decode import decode

        model = self._model
        dev = next(model.parameters()).device
        hits = [self._passages(r) for r in batch]
        rows = [self._segments(r, h).ids() for r, h in zip(batch, hits)]
        T = max(len(x) for x in rows)
        pad = self._tok.pad_token_id
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, x in enumerate(rows):
            ids[i, T - len(x):] = torch.tensor(x)
            mask[i, T - len(x):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cb = self._callback_for([r.qid for r in batch])
        with self._model_lock, torch.no_grad():
            t0 = time.perf_counter()
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            dec = decode(model, self._tok, res.logits[:, -1, :], output_cache(res), params=self._decode_params(),
                         eos_ids=self._eos, next_pos=pos[:, -1] + 1, attention_mask=mask, on_token=cb, t_start=t0)
        return [self._answer(r, h, o, len(x), {}) for r, h, o, x in zip(batch, hits, dec, rows)]

    def _run_reuse(self, r: Ranking) -> Answer:
        import torch

        from ._decode import decode

        eng = self._engine
        hits = self._passages(r)
        seg = self._segments(r, hits)
        cb = self._callback_for([r.qid])
        with self._model_lock, torch.no_grad():
            t0 = time.perf_counter()
            entries, computed = eng.get_blocks(seg.block_texts, seg.blocks)
            glues: list[Any] = seg.glues
            if self.cache_glue:
                glues, g_computed = eng.get_blocks([glue_text(i + 1) for i in range(len(seg.glues))], seg.glues)
                computed += g_computed
            t_kv = time.perf_counter() - t0
            ratio = self.recompute_ratio if self.kv_reuse == "blend" else 0.0
            pre = eng.prefill(glues, entries, seg.final, recompute_ratio=ratio, select_layers=self.select_layers,
                              reserve=self.max_new_tokens)
            nxt = torch.tensor([pre.length], device=pre.logits.device)
            dec = decode(self._model, self._tok, pre.logits, pre.cache, params=self._decode_params(),
                         eos_ids=self._eos, next_pos=nxt, on_token=cb, t_start=t0)
        extra = {"kv_load_s": t_kv, "kv_blocks_computed": computed, **pre.stats}
        return self._answer(r, hits, dec[0], pre.length, extra)

    def _run_reuse_batch(self, batch: list[Ranking]) -> list[Answer]:
        """Several rankings served together: blocks from the store, one batched prefill of the final
        blocks over the assembled caches (:meth:`ragkit.kv.KVReuseEngine.prefill_batch`), batched decoding."""
        import torch

        from ._decode import decode

        eng = self._engine
        hits = [self._passages(r) for r in batch]
        segs = [self._segments(r, h) for r, h in zip(batch, hits)]
        cb = self._callback_for([r.qid for r in batch])
        with self._model_lock, torch.no_grad():
            t0 = time.perf_counter()
            prompts, computed = [], []
            for seg in segs:
                entries, n = eng.get_blocks(seg.block_texts, seg.blocks)
                glues: list[Any] = seg.glues
                if self.cache_glue:
                    glues, g = eng.get_blocks([glue_text(i + 1) for i in range(len(seg.glues))], seg.glues)
                    n += g
                prompts.append((glues, entries, seg.final))
                computed.append(n)
            t_kv = time.perf_counter() - t0
            ratio = self.recompute_ratio if self.kv_reuse == "blend" else 0.0
            pre = eng.prefill_batch(prompts, recompute_ratio=ratio, select_layers=self.select_layers,
                                    reserve=self.max_new_tokens)
            dec = decode(self._model, self._tok, pre.logits, pre.cache, params=self._decode_params(),
                         eos_ids=self._eos, next_pos=pre.next_pos, attention_mask=pre.attention_mask,
                         on_token=cb, t_start=t0)
        return [self._answer(r, h, o, n_prompt, {"kv_load_s": t_kv, "kv_blocks_computed": c, **st})
                for r, h, o, n_prompt, c, st in zip(batch, hits, dec, pre.lengths, computed, pre.stats)]

    def _answer(self, r: Ranking, hits: list[Any], o: Any, n_prompt: int, extra: dict) -> Answer:
        nums, bad = parse_citations(o.text, len(hits))
        cites = []
        for n in nums:
            doc = hits[n - 1].doc_id
            if doc not in cites:
                cites.append(doc)
        n_gen = len(o.token_ids)
        timings = {"prefill_s": o.ttft_s, "ttft_s": o.ttft_s, "decode_s": o.decode_s,
                   "generate_s": o.ttft_s + o.decode_s,
                   "tokens_per_s": (n_gen - 1) / o.decode_s if n_gen > 1 and o.decode_s > 0 else 0.0}
        for k in ("retrieval_s", "retrieval"):
            v = (r.hits[0].meta or {}).get(k) if r.hits else None
            if isinstance(v, (int, float)):
                timings["retrieval_s"] = float(v)
        meta = {"model": self.model, "prompt_tokens": n_prompt, "new_tokens": n_gen, "finish": o.finish,
                "kv_reuse": self.kv_reuse, "cited_numbers": nums}
        if bad:
            meta["invalid_citations"] = bad
        meta.update({k: v for k, v in extra.items() if not k.endswith("_s")})
        timings.update({k: float(v) for k, v in extra.items() if k.endswith("_s")})
        return Answer(r.qid, o.text, tuple(cites), timings, meta, ranking=r, query=r.query)
