"""Block-attention passage-KV reuse with exact RoPE re-rotation and CacheBlend selective recompute.

Assembly of one prompt (segments from :mod:`ragkit.kv.prompt`) at query time:

1. the shared prefix KV (computed once per model and prompt template);
2. for each retrieved passage in ranked order: its glue tokens (``[i]``, rank-dependent, never
   cached) and the passage block's cached KV, whose keys are re-rotated from the positions they
   were computed at (right after the prefix) to their actual offset: a rotation by
   ``delta = offset - start`` in every 2-d RoPE plane, exact because RoPE rotations compose;
3. *recomputation* of a set R of tokens with full attention over everything before them: the glue
   tokens always, plus -- in ``blend`` mode (CacheBlend, Yao et al. 2024) -- the fraction ``r`` of
   passage tokens whose key/value states deviate most from full attention. The deviation is
   measured on layer ``select_layers`` (the first layer whose KV depends on context): the first
   ``select_layers`` layers are run with full causal attention over the whole sequence and the
   resulting KV of that layer is compared with the reused KV (squared L2 over heads, K and V);
   that pass leaves the exact KV of layers 0..select_layers in the cache for every position;
4. the final block (question + instructions + generation prompt) is prefilled with full
   attention over everything, and decoding continues normally.

Steps 3 and 4 run as one forward pass of the R tokens and the final block at their real positions
over a cache that holds the assembled KV of all earlier positions; in every layer the fresh KV is
written over the stale entries (and after them for the final block) before attention, and a 4-D
mask lets each forwarded token see the positions up to its own, so it attends to the fresh KV of
earlier forwarded tokens and to the reused KV of the rest. After a selection pass it starts at
layer ``select_layers``; in the last layer the recomputed tokens only get their K/V.

A batch of prompts runs the same way (:meth:`KVReuseEngine.prefill_batch`; a single prompt is a batch
of one): the assembled prompts are left-padded to a common length, the final blocks start at a common
column, and one selection pass and one forward pass serve the whole batch under per-row masks.

Only decoder-only RoPE models whose attention applies ``rotate_half`` rotary embeddings to the full
head dimension with a static frequency table, with standard transformers caches and without
sliding-window layers, are served (Llama, Qwen2, Mistral families; SmolLM2 is Llama);
:func:`check_supported` refuses the rest with the reason.
"""
from __future__ import annotations

import contextvars
import math
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

from ragkit._deps import require
from ragkit._hfcompat import cache_kw, output_cache
from ragkit.errors import ConfigError
from .store import KVStore, PassageKV

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


# -- model checks and RoPE ----------------------------------------------------------------------
def _rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def check_supported(model: Any) -> None:
    """Raise ConfigError (saying why) when passage-KV reuse cannot serve this model exactly."""
    cfg = model.config
    name = f"{type(model).__name__} ({getattr(cfg, 'model_type', '?')})"
    if getattr(cfg, "is_encoder_decoder", False):
        raise ConfigError(f"kv_reuse: {name} is an encoder-decoder model; passage-KV reuse needs a "
                          "decoder-only RoPE model (Llama, Qwen2, Mistral families). Use kv_reuse: none.")
    try:
        base = model.get_decoder()
        layers, rotary = base.layers, base.rotary_emb
        attn0 = layers[0].self_attn
    except (AttributeError, IndexError, TypeError):
        raise ConfigError(f"kv_reuse: {name} has no rotary position embedding with the standard "
                          "transformers layout (model.layers[i].self_attn, model.rotary_emb); it cannot "
                          "be served by passage-KV reuse. Use kv_reuse: none.") from None
    mod = sys.modules.get(type(attn0).__module__)
    if mod is None or not hasattr(mod, "rotate_half") or not hasattr(mod, "apply_rotary_pos_emb"):
        raise ConfigError(f"kv_reuse: {name} does not use half-rotation RoPE; its keys cannot be "
                          "re-rotated exactly. Use kv_reuse: none.")
    rtype = _rope_type(cfg)
    if rtype not in STATIC_ROPE_TYPES:
        raise ConfigError(f"kv_reuse: {name} uses rope_type '{rtype}', whose frequencies depend on the "
                          f"sequence length, so cached keys cannot be re-rotated exactly. Supported: "
                          f"{', '.join(STATIC_ROPE_TYPES)}. Use kv_reuse: none.")
    head_dim = getattr(attn0, "head_dim", None)
    if head_dim is None or rotary.inv_freq.numel() * 2 != head_dim:
        raise ConfigError(f"kv_reuse: {name} applies RoPE to part of the head dimension (partial rotary); "
                          "not supported. Use kv_reuse: none.")
    types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in types):
        raise ConfigError(f"kv_reuse: {name} has non-full attention layers ({sorted(set(types))}); "
                          "passage-KV reuse needs full attention in every layer. Use kv_reuse: none.")
    odd = [a for a in ("final_logit_softcapping", "attn_logit_softcapping", "logit_scale", "logits_scaling",
                       "embedding_multiplier", "scale_emb")
           if getattr(cfg, a, None) not in (None, 1, 1.0)]
    if odd or str(getattr(cfg, "model_type", "")).startswith("gemma"):
        raise ConfigError(f"kv_reuse: {name} scales embeddings or logits ({', '.join(odd) or 'Gemma family'}); "
                          "the reuse path runs the decoder layers itself and supports the Llama, Qwen2 and "
                          "Mistral families only. Use kv_reuse: none.")
    if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
        raise ConfigError(f"kv_reuse: {name} uses sliding-window attention; not supported. Use kv_reuse: none.")


def rotate_keys(keys: Any, delta: int, inv_freq: Any) -> Any:
    """Rotate post-RoPE keys ``[..., T, head_dim]`` by ``delta`` positions (exact RoPE composition).

    The angles are computed in float64 and applied in the keys' dtype (float32 math for half types).
    """
    torch = require("torch")
    if delta == 0:
        return keys
    ang = float(delta) * inv_freq.detach().to("cpu", torch.float64)
    emb = torch.cat([ang, ang])
    work = torch.float32 if keys.dtype in (torch.float16, torch.bfloat16) else keys.dtype
    cos = emb.cos().to(keys.device, work)
    sin = emb.sin().to(keys.device, work)
    k = keys.to(work)
    half = k.shape[-1] // 2
    rot = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rot * sin).to(keys.dtype)


def rotate_keys_into(dst: Any, keys: Any, delta: int, inv_freq: Any) -> None:
    """``dst[...] = rotate_keys(keys, delta)`` without temporaries the size of ``keys`` (float32 keys).

    Half-rotation RoPE with angle a_j: (x1, x2) -> (x1 cos a - x2 sin a, x2 cos a + x1 sin a).
    """
    torch = require("torch")
    if delta == 0:
        dst.copy_(keys)
        return
    if keys.dtype != torch.float32:
        dst.copy_(rotate_keys(keys, delta, inv_freq))
        return
    ang = float(delta) * inv_freq.detach().to("cpu", torch.float64)
    cos = ang.cos().to(keys.device, torch.float32)
    sin = ang.sin().to(keys.device, torch.float32)
    half = keys.shape[-1] // 2
    x1, x2 = keys[..., :half], keys[..., half:]
    torch.mul(x1, cos, out=dst[..., :half])
    dst[..., :half].addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=dst[..., half:])
    dst[..., half:].addcmul_(x1, sin)


_GROW_LAYER: Any = None


def _grow_layer_class() -> Any:
    """A transformers ``DynamicLayer`` that appends in place into a preallocated buffer.

    ``DynamicLayer.update`` concatenates (copies the whole layer) on every call; an assembled prompt
    cache of a few thousand tokens would be copied once for the final block and again for every
    decoded token. This layer keeps ``keys``/``values`` as views of a buffer with spare room and
    writes new states into it, growing the buffer by 1.5x when full. If something else replaced
    ``keys`` (crop, batch selection), it starts a new buffer. With ``scatter_at`` set (the blend
    path's recompute pass), an update writes the new states at those positions of the buffer
    instead of appending (``scatter_at``: a ``[B, rows]`` tensor of buffer columns, one row per batch
    element), and the layer then holds the first ``scatter_len`` columns.
    """
    global _GROW_LAYER
    if _GROW_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowLayer(DynamicLayer):
            kbuf: Any = None
            vbuf: Any = None
            scatter_at: Any = None      # positions for the next update's states (blend recompute pass)
            scatter_len: int = 0

            def adopt(self, kbuf: Any, vbuf: Any, n: int) -> None:
                self.dtype, self.device = kbuf.dtype, kbuf.device
                self.kbuf, self.vbuf = kbuf, vbuf
                self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]
                self.is_initialized = True

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                if self.scatter_at is not None:   # fresh states go to their columns ([B, rows]), in place
                    T = self.scatter_len
                    for b in range(self.scatter_at.shape[0]):
                        self.kbuf[b].index_copy_(1, self.scatter_at[b], key_states[b])
                        self.vbuf[b].index_copy_(1, self.scatter_at[b], value_states[b])
                    self.keys, self.values = self.kbuf[:, :, :T], self.vbuf[:, :, :T]
                    return self.keys, self.values
                n = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
                m = key_states.shape[-2]
                kb = self.kbuf
                ours = (kb is not None and n > 0 and self.keys.data_ptr() == kb.data_ptr()
                        and self.values.data_ptr() == self.vbuf.data_ptr() and kb.shape[:2] == key_states.shape[:2])
                if not ours or n + m > kb.shape[-2]:
                    cap = max(n + m + 16, int((n + m) * 1.5))
                    shape = (*key_states.shape[:2], cap, key_states.shape[-1])
                    kb, vb = key_states.new_empty(shape), value_states.new_empty(shape)
                    if n:
                        kb[:, :, :n] = self.keys
                        vb[:, :, :n] = self.values
                    self.kbuf, self.vbuf = kb, vb
                self.kbuf[:, :, n:n + m] = key_states
                self.vbuf[:, :, n:n + m] = value_states
                self.keys, self.values = self.kbuf[:, :, :n + m], self.vbuf[:, :, :n + m]
                return self.keys, self.values

        _GROW_LAYER = GrowLayer
    return _GROW_LAYER


def _buffer_cache(model: Any, kbufs: Sequence[Any], vbufs: Sequence[Any], n: int) -> Any:
    """A DynamicCache whose layers hold the first ``n`` positions of the given per-layer
    ``[1, H, capacity, D]`` buffers and append into the rest in place."""
    transformers = require("transformers")
    cache = transformers.DynamicCache(config=model.config)
    cls = _grow_layer_class()
    for i, (k, v) in enumerate(zip(kbufs, vbufs)):
        lay = cls()
        lay.adopt(k, v, n)
        cache.layers[i] = lay
    return cache


_GQA_ATTENTION = "ragkit_sdpa"
ROW_CHUNKS, ROW_CHUNK_MIN = 8, 32       # blend recompute pass: at most this many row chunks of at least this many rows
# blend recompute pass: the number of query rows; (row start, row end, keys every row sees, key end) per
# chunk of rows; the number of query heads per KV head; each chunk's mask over keys [seen, end) with its
# rows repeated once per query head of a group (rows folded per KV head). See _recompute_and_final
_ACTIVE_ROW_CHUNKS: contextvars.ContextVar[tuple[int, list[tuple[int, int, int, int]], int, list[Any]] | None] = (
    contextvars.ContextVar("ragkit_row_chunks", default=None))


def use_gqa_sdpa(model: Any) -> None:
    """On CPU, let SDPA read grouped KV heads directly when a mask is given.

    transformers' ``sdpa`` attention expands grouped-query KV heads (``repeat_kv``, a copy of the
    whole cache per layer) whenever an attention mask is passed -- which is always the case when a
    final block is prefilled over an assembled cache. PyTorch's CPU SDPA accepts ``enable_gqa``
    together with a mask, with identical results, so for CPU models using ``sdpa`` this registers
    an attention function that does that (and otherwise defers to transformers' own).

    The same function serves the blend path's recompute pass (queries at scattered positions, a
    mask that lets each see the keys at positions up to its own): given row chunks in
    ``_ACTIVE_ROW_CHUNKS``, each chunk of query rows attends only to the key prefix its mask can reach,
    which halves the attention work of that pass compared with one call over the whole key range.
    """
    torch = require("torch")
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or next(model.parameters()).device.type != "cpu":
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # returns (out, lse)

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, is_causal: bool | None = None, **kw: Any) -> tuple[Any, None]:
        groups = getattr(module, "num_key_value_groups", 1)
        transformers_own = (attention_mask is None or query.device.type != "cpu"
                            or kw.get("position_bias") is not None or kw.get("softcap") is not None)
        chunks = _ACTIVE_ROW_CHUNKS.get()
        if not transformers_own and chunks is not None and query.shape[2] == chunks[0] and groups == chunks[2]:
            # the query heads that share a KV head are folded into rows: [1, H_kv, groups * rows, D]
            B, Hq, m, D = query.shape
            out = query.new_empty(B, m, Hq, D)
            for (a, b, s, ke), fmask in zip(chunks[1], chunks[3]):
                qf = query[:, :, a:b].reshape(B, Hq // groups, groups * (b - a), D)
                if flash is not None and dropout == 0:
                    # keys < s are visible to every row of the chunk: no mask there; the rest under the
                    # chunk's mask; the two parts merged by their log-sum-exp (exact)
                    o, l1 = flash(qf, key[:, :, :s], value[:, :, :s], scale=scaling)
                    if ke > s:
                        o2, l2 = flash(qf, key[:, :, s:ke], value[:, :, s:ke], attn_mask=fmask, scale=scaling)
                        w2 = torch.sigmoid(l2 - l1).unsqueeze(-1)           # share of the masked part
                        o = torch.lerp(o.float(), o2.float(), w2)
                else:
                    o = torch.nn.functional.scaled_dot_product_attention(
                        qf, key[:, :, :ke], value[:, :, :ke], attn_mask=torch.nn.functional.pad(fmask, (s, 0)),
                        dropout_p=dropout, scale=scaling)
                out[:, a:b] = o.view(B, Hq, b - a, D).transpose(1, 2)
            return out, None
        if transformers_own or groups == 1 or query.shape[2] == 1:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kw)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(_GQA_ATTENTION, attention)
    AttentionMaskInterface.register(_GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(_GQA_ATTENTION)


def _new_cache(model: Any, keys: Sequence[Any], values: Sequence[Any]) -> Any:
    """A DynamicCache holding the given per-layer [B, H, T, D] tensors."""
    transformers = require("transformers")
    cache = transformers.DynamicCache(config=model.config)
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k[:, :, :0], v[:, :, :0], i)      # initialise the layer, then hand it the tensors
        cache.layers[i].keys, cache.layers[i].values = k, v
    return cache


def prefix_cache(model: Any, cache: Any, n: int) -> Any:
    """A new DynamicCache holding the first ``n`` positions of ``cache`` (views: ``cache`` is not
    modified, and what is appended to the new one does not reach it)."""
    ks, vs = _cache_kv(cache)
    return _new_cache(model, [k[:, :, :n] for k in ks], [v[:, :, :n] for v in vs])


def _cache_kv(cache: Any) -> tuple[list[Any], list[Any]]:
    if hasattr(cache, "layers"):
        return [lay.keys for lay in cache.layers], [lay.values for lay in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)  # pragma: no cover - older transformers


@dataclass
class PrefillResult:
    logits: Any                 # [1, vocab] next-token logits after the final block
    cache: Any                  # DynamicCache of the whole prompt
    length: int                 # prompt length in tokens
    stats: dict = field(default_factory=dict)
    recomputed: list = field(default_factory=list)   # positions (< the final block) recomputed


@dataclass
class BatchPrefill:
    logits: Any                 # [B, vocab] next-token logits after each prompt's final block
    cache: Any                  # DynamicCache of the batch (left-padded assembled parts, right-padded finals)
    attention_mask: Any         # [B, columns] 1 where a row has a real token (continue it while decoding)
    next_pos: Any               # LongTensor [B]: position id of each row's first generated token
    lengths: list               # prompt length of each row in tokens
    stats: list                 # per-row stats (as PrefillResult.stats)
    recomputed: list            # per-row recomputed positions


class KVReuseEngine:
    """Computes passage blocks after a shared prefix, stores them, and assembles prompts."""

    def __init__(self, model: Any, store: KVStore | None, prefix: Sequence[int]) -> None:
        check_supported(model)
        use_gqa_sdpa(model)
        self.model = model
        self.store = store
        self.base = model.get_decoder()
        self.inv_freq = self.base.rotary_emb.inv_freq
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.prefix = list(prefix)
        self._prefix_kv: tuple[list[Any], list[Any]] | None = None
        self._spare: tuple[Any, Any, Any] | None = None   # (K buffer, V buffer, weakref to the cache using them)

    # -- prefix and blocks ---------------------------------------------------------------------------
    def prefix_kv(self) -> tuple[list[Any], list[Any]]:
        """Per-layer [1, H, P, D] KV of the shared prefix (empty tensors when there is no prefix)."""
        torch = require("torch")
        if self._prefix_kv is None:
            if self.prefix:
                with torch.no_grad():
                    out = self.model(torch.tensor([self.prefix], device=self.device), use_cache=True,
                                     logits_to_keep=1)
                self._prefix_kv = tuple(list(x) for x in _cache_kv(output_cache(out)))  # type: ignore
            else:
                cfg = self.model.config
                n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
                hd = self.base.layers[0].self_attn.head_dim
                empty = torch.zeros(1, n_kv, 0, hd, device=self.device, dtype=self.dtype)
                self._prefix_kv = ([empty] * len(self.base.layers), [empty] * len(self.base.layers))
        return self._prefix_kv  # type: ignore[return-value]

    def encode_blocks(self, blocks: Sequence[Sequence[int]]) -> list[PassageKV]:
        """KV of each block computed on its own after the shared prefix (one right-padded batch)."""
        torch = require("torch")
        if not blocks:
            return []
        pk, pv = self.prefix_kv()
        P = len(self.prefix)
        B, T = len(blocks), max(len(b) for b in blocks)
        if T == 0:
            raise ValueError("empty passage block")
        ids = torch.zeros(B, T, dtype=torch.long, device=self.device)
        mask = torch.zeros(B, P + T, dtype=torch.long, device=self.device)
        mask[:, :P] = 1
        for i, b in enumerate(blocks):
            ids[i, : len(b)] = torch.tensor(list(b), dtype=torch.long)
            mask[i, P: P + len(b)] = 1
        cache = _new_cache(self.model, [k.expand(B, -1, -1, -1).contiguous() for k in pk],
                           [v.expand(B, -1, -1, -1).contiguous() for v in pv])
        pos = torch.arange(P, P + T, device=self.device).unsqueeze(0).expand(B, -1)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kw(cache),
                             use_cache=True, logits_to_keep=1)
        ks, vs = _cache_kv(output_cache(out))
        res = []
        for i, b in enumerate(blocks):
            n = len(b)
            res.append(PassageKV(torch.tensor(list(b), dtype=torch.long),
                                 torch.stack([k[i, :, P:P + n] for k in ks]),
                                 torch.stack([v[i, :, P:P + n] for v in vs]), P))
        return res

    def get_blocks(self, texts: Sequence[str], blocks: Sequence[Sequence[int]], batch_size: int = 8
                   ) -> tuple[list[PassageKV], int]:
        """Cached KV of each block (computing and storing missing ones). Returns (entries, n computed)."""
        out: list[PassageKV | None] = []
        missing = []
        for i, (t, b) in enumerate(zip(texts, blocks)):
            kv = self.store.get(t, device=self.device, dtype=self.dtype) if self.store is not None else None
            if kv is not None and (kv.start != len(self.prefix) or kv.ids.tolist() != list(b)):
                kv = None  # a stale entry (other prefix length or tokenisation): recompute
            out.append(kv)
            if kv is None:
                missing.append(i)
        for j in range(0, len(missing), batch_size):
            idx = missing[j: j + batch_size]
            fresh = self.encode_blocks([blocks[i] for i in idx])
            for i, kv in zip(idx, fresh):
                if self.store is not None:
                    kv = self.store.put(texts[i], kv).to(self.device, self.dtype)
                out[i] = kv
        return out, len(missing)  # type: ignore[return-value]

    def precompute(self, items: Sequence[tuple[str, Sequence[int]]], batch_size: int = 8,
                   on_batch: Any = None) -> int:
        """Compute and store the blocks ``(block text, token ids)`` not yet in the store, ``batch_size``
        per forward pass (give them sorted by length for little padding); ``on_batch(n)`` after each
        batch. Returns how many were computed."""
        if self.store is None:
            raise ConfigError("KVReuseEngine.precompute needs a store (open the engine with ragkit.kv.open_engine).")
        todo = [(t, list(b)) for t, b in items if b and t not in self.store]
        for i in range(0, len(todo), batch_size):
            part = todo[i: i + batch_size]
            for (t, _), kv in zip(part, self.encode_blocks([b for _, b in part])):
                self.store.put(t, kv)
            if on_batch is not None:
                on_batch(len(part))
        return len(todo)

    # -- assembly ------------------------------------------------------------------------------------
    def prefill(self, glues: Sequence[Any], entries: Sequence[PassageKV], final: Sequence[int],
                *, recompute_ratio: float = 0.0, select_layers: int = 1, reserve: int = 0) -> PrefillResult:
        """Assemble prefix + (glue, cached block)* and prefill the rest for one prompt; see the module
        docstring. It is :meth:`prefill_batch` of a batch of one (one code path).

        A glue item is either token ids (computed fresh with full attention, with the final block)
        or a cached :class:`PassageKV` block of its own (placed like a passage; in ``blend`` mode
        its tokens are candidates for recomputation like passage tokens). ``reserve``: room for that
        many tokens after the prompt (the tokens to be decoded), so decoding appends in place.
        """
        b = self.prefill_batch([(glues, entries, final)], recompute_ratio=recompute_ratio,
                               select_layers=select_layers, reserve=reserve)
        return PrefillResult(b.logits, b.cache, b.lengths[0], b.stats[0], b.recomputed[0])

    def _layout(self, glues: Sequence[Any], entries: Sequence[Any]) -> tuple[list[int], list[int], list[int],
                                                                            list[int], list[tuple], int]:
        """Where everything of one prompt goes: (token ids of positions < N, positions always recomputed
        (uncached glue), positions of cached passage tokens, positions of cached glue blocks,
        [(offset, cached entry or None, length)], N)."""
        ids: list[int] = list(self.prefix)
        recompute: list[int] = []          # positions always recomputed (uncached glue)
        passage_pos: list[int] = []        # positions of cached passage tokens
        glue_pos: list[int] = []           # positions of cached glue blocks (selectable in blend)
        layout: list[tuple[int, PassageKV | None, int]] = []   # (offset, cached entry or None, length)
        pos = len(self.prefix)
        for g, e in zip(glues, entries):
            for item, into in ((g, glue_pos), (e, passage_pos)):
                if isinstance(item, PassageKV):
                    layout.append((pos, item, item.n_tokens))
                    into += range(pos, pos + item.n_tokens)
                    ids += item.ids.tolist()
                    pos += item.n_tokens
                elif item:                 # uncached glue tokens: zeros now, recomputed below
                    layout.append((pos, None, len(item)))
                    recompute += range(pos, pos + len(item))
                    ids += list(item)
                    pos += len(item)
        return ids, recompute, passage_pos, glue_pos, layout, pos

    def _write_assembled(self, K: Any, V: Any, layout: Sequence[tuple]) -> None:
        """Write the prefix and the (re-rotated) cached blocks of one prompt into ``K``/``V``
        ``[layers, H, >= N, D]`` (position p at index p); uncached glue positions get zeros."""
        pk, pv = self.prefix_kv()
        P = len(self.prefix)
        for layer in range(len(pk)):
            K[layer, :, :P] = pk[layer][0]
            V[layer, :, :P] = pv[layer][0]
        for off, e, n in layout:
            if e is None:
                K[:, :, off:off + n] = 0
                V[:, :, off:off + n] = 0
            else:
                rotate_keys_into(K[:, :, off:off + n], e.keys, off - e.start, self.inv_freq)
                V[:, :, off:off + n] = e.values

    def prefill_batch(self, prompts: Sequence[tuple[Sequence[Any], Sequence[PassageKV], Sequence[int]]], *,
                      recompute_ratio: float = 0.0, select_layers: int = 1, reserve: int = 0) -> "BatchPrefill":
        """Assemble several prompts ``(glues, entries, final)`` into one left-padded batch cache and
        prefill them together; the result continues with batched decoding.

        Layout: with N_b the assembled length of prompt b and M = max N_b, prompt b's position p sits
        in column ``o_b + p`` with ``o_b = M - N_b`` (columns before it are padding, masked and never
        seen); every final block starts at column M (right-padded to the longest final block, the
        padding masked) and decoded tokens follow. Position ids are the real positions, so each row
        computes what that prompt computes alone (the tests check logits and caches to 1e-4 against
        batches of one, and batches of one against full prefill).

        Work per batch, whatever its size: at most one *selection pass* (``blend``: the first
        ``select_layers`` layers over every column of every prompt under a per-row causal mask; each
        prompt then takes its own top-r tokens by KV deviation) and one *forward pass* of every
        prompt's recomputed tokens (uncached glue, blend's selection) together with its final block:
        the rows of prompt b are its R_b (padded to the longest R) then its final block (padded to the
        longest), each row seeing the columns of its own prompt up to its own position. In ``plain``
        mode with cached glue (the default) R is empty and that pass is the final blocks only.
        """
        torch = require("torch")
        t0 = time.perf_counter()
        if not prompts:
            raise ValueError("prefill_batch needs at least one prompt")
        pk, _ = self.prefix_kv()
        L, H, D = len(pk), pk[0].shape[1], pk[0].shape[-1]
        lays = [self._layout(g, e) for g, e, _ in prompts]
        finals = [list(f) for _, _, f in prompts]
        if any(not f for f in finals):
            raise ValueError("every prompt needs a non-empty final block")
        Ns = [lay[5] for lay in lays]
        M, Fm, B = max(Ns), max(len(f) for f in finals), len(prompts)
        T = M + Fm
        # column T is scratch for padded recompute rows (decoding writes its first token over it)
        Kall, Vall = self._buffers((L, B, H, T + max(1, reserve), D))
        offs = [M - N for N in Ns]
        for b, lay in enumerate(lays):
            Kall[:, b, :, :offs[b]].zero_()       # padding columns must hold no NaN garbage (they are masked)
            Vall[:, b, :, :offs[b]].zero_()
            self._write_assembled(Kall[:, b, :, offs[b]:], Vall[:, b, :, offs[b]:], lay[4])
        stats: list[dict[str, Any]] = [{"prompt_tokens": N + len(f), "passage_tokens": len(lay[2])}
                                       for N, f, lay in zip(Ns, finals, lays)]
        t_asm = time.perf_counter() - t0
        sels: list[list[int]] = [[] for _ in prompts]
        cache = _buffer_cache(self.model, list(Kall), list(Vall), M)
        self._spare = (self._spare[0], self._spare[1], weakref.ref(cache)) if self._spare else None
        start: tuple[int, Any] | None = None      # (layer, hidden states of every column entering it)
        with torch.no_grad():
            if recompute_ratio > 0:
                t1 = time.perf_counter()
                n_sel = [min(len(lay[2]), math.ceil(recompute_ratio * len(lay[2]))) for lay in lays]
                cands: list[list[int] | None] = []
                for b, lay in enumerate(lays):
                    passage_pos, glue_pos = lay[2], lay[3]
                    if passage_pos and n_sel[b] >= len(passage_pos):
                        sels[b] = list(passage_pos) + glue_pos       # everything cached is recomputed
                    cands.append(passage_pos + glue_pos if passage_pos and n_sel[b] < len(passage_pos) else None)
                if any(c is not None for c in cands):
                    devs, start = self._select_pass(cache, [lay[0] + f for lay, f in zip(lays, finals)], offs, cands,
                                                    select_layers)
                    for b, (c, dev) in enumerate(zip(cands, devs)):
                        if c is not None:
                            sels[b] = sorted(c[i] for i in torch.topk(dev, n_sel[b]).indices.tolist())
                    t_sel = time.perf_counter() - t1
                    for b, lay in enumerate(lays):
                        if lay[2]:
                            stats[b]["select_s"] = t_sel / B
            Rs = [sorted(set(lay[1]) | set(s)) for lay, s in zip(lays, sels)]
            t2 = time.perf_counter()
            logits = self._forward_rows(cache, [lay[0] for lay in lays], Rs, Ns, finals, offs, start)
        t_fwd = time.perf_counter() - t2
        for st, R, s in zip(stats, Rs, sels):
            st["recomputed_tokens"] = len(R)
            st["recomputed_passage_tokens"] = len(s)
            st["assemble_s"] = t_asm / B
            st["forward_s"] = t_fwd
            if B > 1:
                st["batch"] = B
        mask = torch.zeros(B, T, dtype=torch.long, device=self.device)
        for b, (o, f) in enumerate(zip(offs, finals)):
            mask[b, o:M + len(f)] = 1
        lengths = [N + len(f) for N, f in zip(Ns, finals)]
        return BatchPrefill(logits, cache, mask, torch.tensor(lengths, device=self.device), lengths, stats, Rs)

    def _buffers(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Key and value buffers of ``shape`` for one prompt's cache.

        The previous prompt's buffers are handed out again (as views) once the cache built on them
        has been garbage-collected and they are large enough: fresh memory of this size is paged in
        on first touch, which costs tens of milliseconds per prompt of a few thousand tokens. So an
        engine holds on to buffers for its longest prompt so far (46 KB per token for SmolLM2 in
        float32, 0.4 GB at 8k tokens).
        """
        torch = require("torch")
        sp = self._spare
        if sp is not None and sp[2] is not None and sp[2]() is None and sp[0].shape[:3] == shape[:3] \
                and shape[3] <= sp[0].shape[3] and sp[0].shape[4] == shape[4]:
            K, V = sp[0], sp[1]
        else:
            self._spare = None          # drop the old ones before allocating
            big = (*shape[:3], shape[3] + shape[3] // 4, shape[4])   # room for the next, slightly longer prompt
            K = torch.empty(big, device=self.device, dtype=self.dtype)
            V = torch.empty(big, device=self.device, dtype=self.dtype)
        self._spare = (K, V, None)
        return K[:, :, :, :shape[3]], V[:, :, :, :shape[3]]

    def _kv_of(self, layer: Any, h: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        """Key (after RoPE) and value states ``[1, H_kv, n, D]`` that ``layer`` computes from its input ``h``."""
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        shape = (*h.shape[:-1], -1, attn.head_dim)
        k = attn.k_proj(x).view(shape)
        if getattr(attn, "k_norm", None) is not None:     # Qwen3-style per-head key norm, before RoPE
            k = attn.k_norm(k)
        k = k.transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        _, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(k, k, cos, sin)
        return k, v

    def _select_pass(self, cache: Any, rows: Sequence[list[int]], offs: Sequence[int],
                     cands: Sequence[list[int] | None], select_layers: int) -> tuple[list[Any], Any]:
        """CacheBlend's selection for a batch: the first ``li = select_layers`` layers run with full
        causal attention over every prompt (``rows[b]``: its token ids, assembled positions then final
        block, placed from column ``offs[b]``; the mask keeps each row inside its own prompt), and
        layer ``li``'s key/value states of every position are computed from their output. Returns, per
        prompt, the squared L2 deviation per candidate position ``cands[b]`` (None: not needed) between
        those and the reused states (over heads, K and V), and ``(li, hidden states entering layer li)``
        ``[B, columns, hidden]`` for the forward pass to start from.

        The fresh states of layers 0..li are exact for every position, so they replace the reused
        ones in the cache: after this pass the first li + 1 layers hold exactly the full-attention KV.
        """
        torch = require("torch")
        layers = self.base.layers
        li = max(1, min(select_layers, len(layers) - 1))
        B, T = len(rows), max(o + len(r) for o, r in zip(offs, rows))
        dev_ = self.device
        ids = torch.zeros(B, T, dtype=torch.long, device=dev_)
        pos = torch.zeros(B, T, dtype=torch.long, device=dev_)
        valid = torch.zeros(B, T, dtype=torch.bool, device=dev_)
        for b, (r, o) in enumerate(zip(rows, offs)):
            ids[b, o:o + len(r)] = torch.tensor(r, dtype=torch.long)
            pos[b, o:] = torch.arange(T - o)
            valid[b, o:o + len(r)] = True
        col = torch.arange(T, device=dev_)
        h = self.base.embed_tokens(ids)
        if B == 1:     # no padding: the model's own causal mask (None for SDPA: nothing T x T is built)
            from transformers.masking_utils import create_causal_mask

            mask = create_causal_mask(config=self.model.config, inputs_embeds=h, attention_mask=None,
                                      **cache_kw(None), position_ids=pos)
        else:
            # key k visible to the row in column q iff k <= q and k is a real column of that prompt; every
            # row sees itself, so padding rows (whose output nobody reads) have no empty softmax
            allowed = ((col.view(1, 1, T) <= col.view(1, T, 1)) & valid.unsqueeze(1)) | torch.eye(
                T, dtype=torch.bool, device=dev_)
            mask = torch.zeros(B, 1, T, T, dtype=self.dtype, device=dev_)
            mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(self.dtype).min)
        pe = self.base.rotary_emb(h, pos)
        cols = col.unsqueeze(0).expand(B, T)
        for lay in cache.layers[:li]:
            lay.scatter_at, lay.scatter_len = cols, T
        try:   # causal attention over the fresh states (written over the reused ones)
            for layer in layers[:li]:
                h = layer(h, attention_mask=mask, position_ids=pos, **cache_kw(cache), use_cache=True,
                          position_embeddings=pe)
                h = h[0] if isinstance(h, tuple) else h
        finally:
            for lay in cache.layers[:li]:
                lay.scatter_at = None
        k, v = self._kv_of(layers[li], h, *pe)
        gl = cache.layers[li]
        devs: list[Any] = []
        for b, cand in enumerate(cands):
            if cand is None:
                devs.append(None)
                continue
            p = torch.tensor(cand, device=dev_) + offs[b]
            devs.append((k[b][:, p] - gl.kbuf[b][:, p]).float().pow(2).sum(dim=(0, 2))
                        + (v[b][:, p] - gl.vbuf[b][:, p]).float().pow(2).sum(dim=(0, 2)))
        gl.kbuf[:, :, :T] = k
        gl.vbuf[:, :, :T] = v
        return devs, (li, h)

    def _forward_rows(self, cache: Any, ids: Sequence[list[int]], Rs: Sequence[list[int]], Ns: Sequence[int],
                      finals: Sequence[list[int]], offs: Sequence[int], start: tuple[int, Any] | None = None) -> Any:
        """One pass over every prompt's recomputed positions ``Rs[b]`` (< N_b) and its final block
        (N_b..N_b+F_b-1); returns the next-token logits ``[B, vocab]`` after each final block.

        The cache holds the assembled KV of every prompt (position p of prompt b in column
        ``offs[b] + p``; stale or zero at R) in per-layer buffers with room for the final blocks (from
        column M = max N) and one scratch column after them. Rows: prompt b's R then its final block,
        padded to the longest R and the longest final block. In every layer the fresh KV of the
        forwarded rows is written at their columns (over the stale copies of R; at M.. for the final
        block; padded R rows into the scratch column) before attention, and a mask lets each row see its
        own prompt's columns up to its own position: the fresh KV of earlier forwarded tokens and the
        reused KV of the rest. Afterwards the cache is exactly each prompt's, ready for decoding. For a
        batch of one on CPU the query rows (sorted by position) are cut into chunks that each attend
        only to the key prefix they can see.

        ``start = (li, h)`` (from :meth:`_select_pass`): layers < li are already exact for every
        position, so the pass starts at layer li from the rows of ``h``. In the last layer the R rows
        only need their key/value states (nothing reads their output), so only the final blocks run it.
        """
        torch = require("torch")
        dev_ = self.device
        B, M, Fm = len(Rs), max(Ns), max(len(f) for f in finals)
        Rm = max(len(R) for R in Rs)
        m, T = Rm + Fm, M + Fm
        tok = torch.zeros(B, m, dtype=torch.long, device=dev_)
        pos = torch.zeros(B, m, dtype=torch.long, device=dev_)
        cols = torch.full((B, m), T, dtype=torch.long, device=dev_)      # T: the scratch column
        for b, (R, N, fin, o) in enumerate(zip(Rs, Ns, finals, offs)):
            if R:
                tok[b, :len(R)] = torch.tensor([ids[b][p] for p in R], dtype=torch.long)
                pos[b, :len(R)] = torch.tensor(R, dtype=torch.long)
                cols[b, :len(R)] = pos[b, :len(R)] + o
            tok[b, Rm:Rm + len(fin)] = torch.tensor(fin, dtype=torch.long)
            pos[b, Rm:] = torch.arange(N, N + Fm)
            cols[b, Rm:] = torch.arange(M, T)
        key = torch.arange(T, device=dev_)
        lo = torch.tensor(offs, device=dev_).view(B, 1, 1)
        allowed = (key.view(1, 1, T) >= lo) & (key.view(1, 1, T) <= cols.unsqueeze(2))
        mask = torch.zeros(B, 1, m, T, dtype=self.dtype, device=dev_)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(self.dtype).min)
        if start is None:
            first, h = 0, self.base.embed_tokens(tok)
        else:
            first = start[0]
            h = start[1][torch.arange(B, device=dev_).unsqueeze(1), cols.clamp(max=T - 1)]
        cos, sin = self.base.rotary_emb(h, pos)
        layers = self.base.layers
        token = None
        if B == 1:     # rows ascending by position: chunks of rows, each over the key prefix it can see
            positions = cols[0].tolist()
            rows = max(ROW_CHUNK_MIN, math.ceil(m / ROW_CHUNKS))
            chunks = [(a, min(a + rows, m), positions[a] + 1, positions[min(a + rows, m) - 1] + 1)
                      for a in range(0, m, rows)]
            groups = getattr(layers[0].self_attn, "num_key_value_groups", 1)
            # the part of each chunk's mask past the keys all its rows see, rows repeated per query head of a group
            fmasks = [mask[..., a:b, s:ke].repeat(1, 1, groups, 1) for a, b, s, ke in chunks]
            token = _ACTIVE_ROW_CHUNKS.set((m, chunks, groups, fmasks))
        for lay in cache.layers:
            lay.scatter_at, lay.scatter_len = cols, T
        last = torch.tensor([Rm + len(f) - 1 for f in finals], device=dev_)
        try:
            for i in range(first, len(layers)):
                if i == len(layers) - 1 and Rm and i > first:   # last layer: K/V of R, then the final rows only
                    k, v = self._kv_of(layers[i], h[:, :Rm], cos[:, :Rm], sin[:, :Rm])
                    gl = cache.layers[i]
                    for b in range(B):
                        gl.kbuf[b].index_copy_(1, cols[b, :Rm], k[b])
                        gl.vbuf[b].index_copy_(1, cols[b, :Rm], v[b])
                    cols = gl.scatter_at = cols[:, Rm:]
                    h, cos, sin, mask, pos = h[:, Rm:], cos[:, Rm:], sin[:, Rm:], mask[:, :, Rm:], pos[:, Rm:]
                    last = last - Rm
                h = layers[i](h, attention_mask=mask, position_ids=pos, **cache_kw(cache),
                              use_cache=True, position_embeddings=(cos, sin))
                h = h[0] if isinstance(h, tuple) else h
        finally:
            if token is not None:
                _ACTIVE_ROW_CHUNKS.reset(token)
            for lay in cache.layers:
                lay.scatter_at = None
                lay.keys, lay.values = lay.kbuf[:, :, :T], lay.vbuf[:, :, :T]
        return self.model.lm_head(self.base.norm(h[torch.arange(B, device=dev_), last]))

    def full_prefill(self, ids: Sequence[int]) -> PrefillResult:
        """Reference: one ordinary forward pass over the whole prompt."""
        torch = require("torch")
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True,
                             logits_to_keep=1)
        return PrefillResult(out.logits[:, -1, :], output_cache(out), len(ids), {})
