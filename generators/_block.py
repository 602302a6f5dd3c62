"""Block-Attention training forward: the computation passage-KV ``plain`` reuse performs, differentiable.

Block-Attention (Sun et al., 2024) fine-tunes a model on the attention pattern it is served with:
each retrieved passage is a *block* that attends to the shared prefix and to itself only, and the
final block (question, instruction, answer) attends to everything. ``generator.hf`` with
``kv_reuse: plain`` (and the default ``cache_glue: true``) serves a prompt

    prefix | glue(1) block(1) | glue(2) block(2) | ... | final

like this (``ragkit/kv/reuse.py``):

- the prefix is prefilled with causal attention at positions ``0..P-1``;
- every glue (``"\\n[i]"``) and every passage block is computed on its own after the prefix KV, at
  positions ``P..P+n-1`` -- the *compute positions* of its tokens;
- each block's keys are re-rotated by ``offset - P`` to the block's real place in the prompt (its
  values keep what they were computed as);
- the final block runs at its real positions ``N..`` over the assembled cache with causal attention.

With a shared prefix no single forward pass with one position id per token reproduces this (a block
token's attention to the prefix uses its compute position, the final block's attention to it the
re-rotated one), so :func:`block_forward` runs exactly these steps with gradients: one forward of the
prefix, one batched forward of all glue and passage blocks over the prefix KV, a differentiable
re-rotation (:func:`ragkit.kv.reuse.rotate_keys`) and assembly, and one forward of the final block
plus the answer tokens over the assembled cache. The logits it returns are those the served model
computes (``tests/test_train_generator.py`` checks them against :class:`~ragkit.kv.KVReuseEngine`).

:func:`block_layout` describes the same pattern token by token (block of each token, its real and
compute position, and the attention mask of who sees whom); it is the specification the forward
implements and what the tests check it against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ragkit._deps import require
from ragkit._hfcompat import cache_kw, output_cache

PREFIX, FINAL = -1, -2


@dataclass
class BlockLayout:
    """Per token of ``prefix | (glue, block)* | final + answer``: ``block`` (-1 prefix, -2 final/answer,
    else the index of its glue or passage block, numbered in prompt order), ``real`` (position in the
    prompt) and ``compute`` (the position its key/value states are computed at)."""

    ids: list[int]
    block: list[int]
    real: list[int]
    compute: list[int]

    def mask(self) -> Any:
        """Boolean ``[T, T]``: query row t may attend key column s. Causal, plus: a glue or passage
        token sees the prefix and its own block only; prefix and final/answer tokens see everything
        before them."""
        torch = require("torch")
        b = torch.tensor(self.block)
        T = len(self.block)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        inside = b.unsqueeze(1) >= 0
        same = (b.unsqueeze(1) == b.unsqueeze(0)) | (b.unsqueeze(0) == PREFIX)
        return causal & (~inside | same)


def block_layout(prefix: Sequence[int], glues: Sequence[Sequence[int]], blocks: Sequence[Sequence[int]],
                 final: Sequence[int], answer: Sequence[int] = ()) -> BlockLayout:
    """The :class:`BlockLayout` of one prompt (segments as :func:`ragkit.kv.prompt.build_segments` gives them),
    with the glues cached as blocks of their own (``cache_glue: true``, the generator's default)."""
    P = len(prefix)
    ids, blk, real, comp = list(prefix), [PREFIX] * P, list(range(P)), list(range(P))
    k = 0
    for g, p in zip(glues, blocks):
        for piece in (g, p):
            if not piece:
                continue
            n0 = len(ids)
            ids += list(piece)
            blk += [k] * len(piece)
            real += range(n0, n0 + len(piece))
            comp += range(P, P + len(piece))
            k += 1
    tail = list(final) + list(answer)
    n0 = len(ids)
    ids += tail
    blk += [FINAL] * len(tail)
    real += range(n0, n0 + len(tail))
    comp += range(n0, n0 + len(tail))
    return BlockLayout(ids, blk, real, comp)


def _batch_blocks(model: Any, base: Any, pk: list[Any], pv: list[Any], pieces: list[list[int]]) -> list[tuple[list[Any], list[Any]]]:
    """Per piece, per-layer ([1, H, n, D] keys, values) computed after the prefix KV at compute positions."""
    torch = require("torch")
    from ragkit.kv.reuse import _new_cache

    if not pieces:
        return []
    dev = pk[0].device
    P = pk[0].shape[-2]
    B, T = len(pieces), max(len(p) for p in pieces)
    ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    mask = torch.zeros(B, P + T, dtype=torch.long, device=dev)
    mask[:, :P] = 1
    for i, p in enumerate(pieces):
        ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
        mask[i, P:P + len(p)] = 1
    cache = _new_cache(model, [k.expand(B, -1, -1, -1) for k in pk], [v.expand(B, -1, -1, -1) for v in pv])
    pos = torch.arange(P, P + T, device=dev).unsqueeze(0).expand(B, -1)
    out = base(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kw(cache), use_cache=True)
    c = output_cache(out)
    ks = [lay.keys for lay in c.layers]
    vs = [lay.values for lay in c.layers]
    return [([k[i:i + 1, :, P:P + len(p)] for k in ks], [v[i:i + 1, :, P:P + len(p)] for v in vs])
            for i, p in enumerate(pieces)]


def block_forward(model: Any, prefix: Sequence[int], glues: Sequence[Sequence[int]], blocks: Sequence[Sequence[int]],
                  final: Sequence[int], answer: Sequence[int] = ()) -> Any:
    """Logits ``[1, len(final) + len(answer), vocab]`` of the final block and the answer tokens under
    the block pattern with passage-KV reuse positions (see the module docstring); differentiable.

    Row ``i`` predicts the token after position ``N + i`` (N = assembled length), so the last final
    row equals the next-token logits of ``KVReuseEngine.prefill`` in ``plain`` mode with cached glue.
    """
    torch = require("torch")
    from ragkit.kv.reuse import _new_cache, rotate_keys

    base = model.get_decoder()
    dev = next(model.parameters()).device
    inv = base.rotary_emb.inv_freq
    P = len(prefix)
    if P:
        out = base(input_ids=torch.tensor([list(prefix)], device=dev), use_cache=True)
        c = output_cache(out)
        pk = [lay.keys for lay in c.layers]
        pv = [lay.values for lay in c.layers]
    else:
        cfg = model.config
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = base.layers[0].self_attn.head_dim
        e = torch.zeros(1, n_kv, 0, hd, device=dev, dtype=next(model.parameters()).dtype)
        pk, pv = [e] * len(base.layers), [e] * len(base.layers)
    order = [list(x) for g, b in zip(glues, blocks) for x in (g, b) if x]
    # glues (a few tokens) and passages (up to max_passage_tokens) in two batches: little padding
    short = [i for i, x in enumerate(order) if len(x) <= 8]
    long_ = [i for i, x in enumerate(order) if len(x) > 8]
    kv: dict[int, tuple[list[Any], list[Any]]] = {}
    for idx in (short, long_):
        for i, r in zip(idx, _batch_blocks(model, base, pk, pv, [order[i] for i in idx])):
            kv[i] = r
    L = len(pk)
    Ks: list[list[Any]] = [[pk[layer]] for layer in range(L)]
    Vs: list[list[Any]] = [[pv[layer]] for layer in range(L)]
    off = P
    for i, piece in enumerate(order):
        k, v = kv[i]
        for layer in range(L):
            Ks[layer].append(rotate_keys(k[layer], off - P, inv))
            Vs[layer].append(v[layer])
        off += len(piece)
    N = off
    cache = _new_cache(model, [torch.cat(x, dim=-2) for x in Ks], [torch.cat(x, dim=-2) for x in Vs])
    tail = list(final) + list(answer)
    out = model(input_ids=torch.tensor([tail], device=dev),
                position_ids=torch.arange(N, N + len(tail), device=dev).unsqueeze(0), **cache_kw(cache),
                use_cache=True)
    return out.logits


def full_forward(model: Any, ids: Sequence[int]) -> Any:
    """Logits ``[1, T, vocab]`` of an ordinary causal forward pass (the full-attention examples)."""
    torch = require("torch")
    dev = next(model.parameters()).device
    return model(input_ids=torch.tensor([list(ids)], device=dev), use_cache=False).logits


__all__ = ["BlockLayout", "block_layout", "block_forward", "full_forward", "PREFIX", "FINAL"]
