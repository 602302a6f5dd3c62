"""One attention hook for attention-level methods: read and rewrite post-softmax attention.

:func:`install_hook` registers an attention function through transformers' ``AttentionInterface``
(with the mask function of the kernel it wraps, see /work/shared/docs/DEPENDENCIES.md) and switches
the model to it. Every call goes to the wrapped kernel (``sdpa``, ``eager``, ``flash_attention_2``
or passage-KV reuse's ``ragkit_sdpa``) unless an :class:`AttentionContext` is active (a context
variable set around a prefill and its decode steps) and it touches that layer. So with no method
active the logits are bit-identical to the plain generator (tests/test_attention.py).

What the hook does in a layer that a method touches:

- *Readers* (found-in-the-middle relevance, attention sorting, the attention guard,
  ``reranker.attention``, entropy measurement) need a few rows only: the last prompt position or the
  rows of the final block (question and instructions). The wrapped kernel computes the layer's
  output as usual; the hook additionally computes just those rows' probabilities from the queries
  and keys (``softmax(q k^T * scale)`` over the keys each row may see): O(rows x keys) per head, no
  full attention matrix. Works with any kernel.
- *Row rewriters* (found-in-the-middle intervention, the parallel-encoding fixes) change the
  attention of the final block's rows and of decode steps only. The kernel computes every row; the
  hook recomputes the target rows eagerly (logits, softmax, rewrite, times V) and writes them over the
  kernel's output. Cost: O(F x T) per head and layer for F final rows over T keys (a decode step
  is one row).
- *Full rewriters* (ACT) need every row's probabilities (its sink test sums whole columns), so the
  hook materialises the layer's full ``[heads, T, T]`` attention (eager attention: T^2 memory and
  time per head; ~70 MB per layer in float32 for SmolLM2 at 1.4k tokens) on the layers they touch.
  They are refused with ``flash_attention_2``, whose kernel never exposes probabilities.

Positions come from the ``position_ids`` the decoder layer passes to the attention function; a key's
index in the cache is its position (batch size 1: the attention methods run one prompt at a time).

Only decoder-only models whose attention modules call the registered attention function with the
Llama calling convention are served: the Llama (SmolLM2), Qwen2 and Mistral families
(:data:`SUPPORTED_FAMILIES`); :func:`check_family` refuses the rest naming those.
"""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ragkit._deps import require
from ragkit.errors import ConfigError

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
_ACTIVE: contextvars.ContextVar["AttentionContext | None"] = contextvars.ContextVar("ragkit_attention", default=None)
_HOOK_PREFIX = "ragkit_attn__"


def check_family(model: Any, what: str = "attention methods") -> None:
    """Raise ConfigError naming the supported families when the hook cannot serve ``model``."""
    cfg = model.config
    mt = str(getattr(cfg, "model_type", "?"))
    if getattr(cfg, "is_encoder_decoder", False) or mt not in SUPPORTED_FAMILIES:
        raise ConfigError(f"{what}: model family '{mt}' ({type(model).__name__}) is not served by the attention "
                          f"hook; supported families: {', '.join(SUPPORTED_FAMILIES)} (decoder-only, Llama-style "
                          "attention modules such as SmolLM2). Remove the attention options or use such a model.")


def parse_heads(specs: Sequence[str], n_layers: int, n_heads: int, what: str = "heads") -> dict[int, list[int]]:
    """``["12:3", "14:*", "*"]`` -> {layer: [heads]}; layers/heads may be negative (from the end)."""
    out: dict[int, set[int]] = {}
    for s in specs:
        s = str(s).strip()
        if s == "*":
            for li in range(n_layers):
                out.setdefault(li, set()).update(range(n_heads))
            continue
        li_s, sep, h_s = s.partition(":")
        try:
            li = int(li_s)
            heads = list(range(n_heads)) if (not sep or h_s.strip() == "*") else [int(h_s)]
        except ValueError:
            raise ConfigError(f"{what}: head spec {s!r} must look like 'layer:head', 'layer:*' or '*'") from None
        li = li + n_layers if li < 0 else li
        if not 0 <= li < n_layers:
            raise ConfigError(f"{what}: layer {li_s} in {s!r} is out of range (model has {n_layers} layers)")
        for h in heads:
            h2 = h + n_heads if h < 0 else h
            if not 0 <= h2 < n_heads:
                raise ConfigError(f"{what}: head {h} in {s!r} is out of range (model has {n_heads} heads per layer)")
            out.setdefault(li, set()).add(h2)
    return {k: sorted(v) for k, v in sorted(out.items())}


def parse_layers(spec: str, n_layers: int, what: str = "layers") -> list[int]:
    """``"auto"`` (later half), ``"a-b"`` (inclusive) or ``"a,b,c"`` -> layer indices."""
    spec = str(spec).strip()
    if spec in ("", "auto"):
        return list(range(n_layers // 2, n_layers))
    if spec == "all":
        return list(range(n_layers))
    try:
        if "-" in spec.lstrip("-")[1:] or (spec.count("-") == 1 and not spec.startswith("-")):
            a, b = spec.split("-", 1)
            out = list(range(int(a), int(b) + 1))
        else:
            out = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {spec!r} must be 'auto', 'all', 'a-b' or a comma list of layer numbers") from None
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise ConfigError(f"{what}: {spec!r} names layers outside 0..{n_layers - 1}")
    return out


# -- methods ------------------------------------------------------------------------------------------
class Reader:
    """Records, per layer, the attention of chosen rows (prefill only), averaged over those rows.

    ``rows``: ``"last"`` (the last prompt position) or ``"final"`` (every row of the final block).
    ``record[layer]``: ``[heads, keys]`` float32. With ``entropy`` also the mean entropy (nats) of
    the last row's distribution per head: ``entropy[layer]`` ``[heads]``.
    """

    needs = "rows"

    def __init__(self, rows: str = "last", layers: Iterable[int] | None = None, entropy: bool = False) -> None:
        self.rows = rows
        self.layers = None if layers is None else set(layers)
        self.want_entropy = entropy
        self.record: dict[int, Any] = {}
        self.entropy: dict[int, Any] = {}

    def touches(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def take(self, layer: int, probs: Any, qpos: Any, ctx: "AttentionContext") -> None:
        """``probs`` [heads, rows, keys] of the rows the context designated (already post-rewrite)."""
        if layer in self.record:
            return       # decode steps: only the prompt's prefill is recorded
        p = probs.float()
        if self.rows == "last":
            p = p[:, -1:]
        self.record[layer] = p.mean(dim=1)
        if self.want_entropy:
            last = probs[:, -1].float()
            self.entropy[layer] = -(last * last.clamp_min(1e-30).log()).sum(-1)

    def mean_over(self, heads: dict[int, list[int]] | None = None) -> Any:
        """Mean over layers and heads (or over the given {layer: heads}) -> [keys]."""
        torch = require("torch")
        rows = []
        for li, rec in sorted(self.record.items()):
            if heads is None:
                rows.append(rec)
            elif li in heads:
                rows.append(rec[heads[li]])
        if not rows:
            raise ValueError("no attention recorded on the requested layers")
        return torch.cat(rows, dim=0).mean(dim=0)


class ACT:
    """Attention calibration (Yu et al. 2024, "Unveiling and harnessing hidden attention sinks").

    Per chosen head and forward pass: s_j = sum_i A[i, j] / #rows that can see j (= q - j for a
    prefill from position 0); columns with s_j > tau are sinks, except position 0 (the first sink,
    BOS), which is left alone. Sink columns are scaled by ``beta``; the removed mass is added to the
    row's other tokens (neither sink nor position 0) in proportion to their attention, so each row
    still sums to 1. A row with no such mass is left unchanged (no NaN). Decode steps (one row)
    reuse the sinks found in the prompt's prefill for that head, so their rows also sum to 1.
    """

    needs = "full"

    def __init__(self, heads: dict[int, list[int]], tau: float = 0.1, beta: float = 0.4) -> None:
        self.heads, self.tau, self.beta = heads, tau, beta
        self.sinks: dict[int, Any] = {}   # layer -> [n_heads_chosen, T_prompt] bool
        self.n_sinks = 0

    def touches(self, layer: int) -> bool:
        return layer in self.heads

    def apply(self, layer: int, probs: Any, logits: Any, qpos: Any, ctx: "AttentionContext") -> Any:
        torch = require("torch")
        hs = self.heads[layer]
        A = probs[:, hs]                                      # [B, h, q, T]
        T = A.shape[-1]
        if A.shape[-2] > 1 or layer not in self.sinks:
            key = torch.arange(T, device=A.device)
            seen = (qpos.view(-1, 1) >= key.view(1, -1)).sum(0).clamp_min(1)   # rows that see each key
            s = A.sum(dim=-2) / seen                          # [B, h, T]
            sink = s > self.tau
            sink[..., 0] = False                              # the first sink (BOS) is exempt
            self.sinks[layer] = sink
            self.n_sinks += int(sink.sum())
        else:
            sink = self.sinks[layer]
            if sink.shape[-1] < T:                            # decoded tokens are never sinks
                sink = torch.nn.functional.pad(sink, (0, T - sink.shape[-1]), value=False)
        sink = sink.unsqueeze(-2)                             # [B, h, 1, T]
        recv = ~sink
        recv[..., 0] = False
        removed = (A * sink).sum(-1, keepdim=True) * (1.0 - self.beta)
        rmass = (A * recv).sum(-1, keepdim=True)
        ok = rmass > 0
        gain = torch.where(ok, removed / torch.where(ok, rmass, torch.ones_like(rmass)), torch.zeros_like(rmass))
        new = torch.where(sink, A * self.beta, A + A * recv * gain)
        new = torch.where(ok, new, A)                         # nothing to receive the mass: unchanged
        probs = probs.clone()
        probs[:, hs] = new
        return probs


class DocMassRescale:
    """Found-in-the-middle intervention (Hsieh et al. 2024): on the chosen layers, every head, the
    final block's rows and decode steps get each document's attention mass rescaled toward
    ``softmax(relevance / t)`` times the row's total document mass (total unchanged, other keys
    untouched; inside a document the tokens keep their relative weights). ``mix`` < 1 moves each mass
    only that share of the way: (1 - mix) * its own mass + mix * its target (1 = the paper's rescaling)."""

    needs = "rows"

    def __init__(self, layers: Iterable[int], relevance: Sequence[float], temperature: float, mix: float = 1.0) -> None:
        torch = require("torch")
        self.layers = set(layers)
        self.mix = float(mix)
        self.target = torch.softmax(torch.tensor(list(relevance), dtype=torch.float64) / temperature, 0).float()

    def touches(self, layer: int) -> bool:
        return layer in self.layers

    def apply(self, layer: int, probs: Any, logits: Any, qpos: Any, ctx: "AttentionContext") -> Any:
        torch = require("torch")
        probs = probs.clone()
        masses = torch.stack([probs[..., a:b].sum(-1) for a, b in ctx.doc_spans], dim=-1)   # [B, H, r, K]
        total = masses.sum(-1, keepdim=True)
        want = total * self.target.to(probs.device)
        if self.mix != 1.0:
            want = (1.0 - self.mix) * masses + self.mix * want
        factor = torch.where(masses > 0, want / masses.clamp_min(1e-30), torch.ones_like(masses))
        for k, (a, b) in enumerate(ctx.doc_spans):
            probs[..., a:b] *= factor[..., k:k + 1]
        return probs


class ParallelFix:
    """Training-free fixes for attention over independently encoded (parallel) passage blocks.

    For the final block's rows and decode steps, on every layer (or the chosen ones): APE (Yang et al.
    2025) -- the keys of the parallel blocks (positions ``ctx.context_span``) get logits divided by a
    temperature ``T`` and their exp-weights multiplied by a scale ``S`` before normalising over all
    keys (shared prefix and final block unchanged); and the selective attention of "Attention Entropy
    is a Key Factor" (Zhang et al. 2024) -- each row and head keeps only its ``top_blocks`` passage
    blocks with the most attention (the others get 0), renormalised.
    """

    needs = "rows"

    def __init__(self, temperature: float = 1.0, scale: float = 1.0, top_blocks: int = 0,
                 layers: Iterable[int] | None = None) -> None:
        self.temperature, self.scale, self.top_blocks = temperature, scale, top_blocks
        self.layers = None if layers is None else set(layers)

    def touches(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def apply(self, layer: int, probs: Any, logits: Any, qpos: Any, ctx: "AttentionContext") -> Any:
        torch = require("torch")
        a, b = ctx.context_span
        if b <= a:
            return probs
        if self.temperature != 1.0 or self.scale != 1.0:
            lg = logits.clone()
            lg[..., a:b] = lg[..., a:b] / self.temperature + math.log(self.scale)
            probs = torch.softmax(lg, dim=-1)
        if self.top_blocks and len(ctx.doc_spans) > self.top_blocks:
            masses = torch.stack([probs[..., s:e].sum(-1) for s, e in ctx.doc_spans], dim=-1)
            keep = torch.zeros_like(masses, dtype=torch.bool)
            keep.scatter_(-1, masses.topk(self.top_blocks, dim=-1).indices, True)
            probs = probs.clone()
            for k, (s, e) in enumerate(ctx.doc_spans):
                probs[..., s:e] *= keep[..., k:k + 1]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        return probs


# -- the context and the hook --------------------------------------------------------------------------
@dataclass
class AttentionContext:
    """What the hook does for one prompt (its prefill and decode steps).

    ``final_start``: position of the first token of the final block (rows at or after it -- the
    final block and decoded tokens -- are the "rows" readers and row rewriters see).
    ``doc_spans``: [start, end) positions of each passage block; ``context_span``: [start, end) of
    all independently encoded blocks (passages and cached glue) for the parallel-encoding fixes.
    """

    final_start: int
    doc_spans: list[tuple[int, int]] = field(default_factory=list)
    context_span: tuple[int, int] = (0, 0)
    readers: list[Reader] = field(default_factory=list)
    rewriters: list[Any] = field(default_factory=list)

    def layer_work(self, layer: int) -> tuple[list[Reader], list[Any], bool]:
        rd = [r for r in self.readers if r.touches(layer) and layer not in r.record]   # prefill only
        rw = [w for w in self.rewriters if w.touches(layer)]
        return rd, rw, any(w.needs == "full" for w in rw)


class active:
    """``with active(ctx): ...`` -- the hook applies ``ctx`` to every forward pass inside."""

    def __init__(self, ctx: AttentionContext | None) -> None:
        self.ctx, self.token = ctx, None

    def __enter__(self) -> AttentionContext | None:
        self.token = _ACTIVE.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.reset(self.token)


def _visible(qpos: Any, T: int, mask: Any, q: int) -> Any:
    """[B or 1, 1, q, T] bool: key j visible to the row at position p iff j <= p (and the mask allows)."""
    torch = require("torch")
    key = torch.arange(T, device=qpos.device)
    allowed = (key.view(1, 1, 1, T) <= qpos.view(-1, 1, q, 1))
    if mask is not None and mask.dim() == 4:
        m = mask[..., -q:, :T] if mask.shape[-2] >= q else mask[..., :T]
        allowed = allowed & (m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2)
    return allowed


def _rows_eager(query: Any, key: Any, value: Any, allowed: Any, scaling: float) -> tuple[Any, Any]:
    """(logits, probs) [B, H, q, T] in float32 for the given query rows; grouped KV heads read in place."""
    torch = require("torch")
    B, H, q, D = query.shape
    Hk, T = key.shape[1], key.shape[2]
    # query head h reads KV head h // groups: fold each group's rows together instead of copying K
    qg = query.float().reshape(B, Hk, (H // Hk) * q, D)
    logits = torch.matmul(qg, key.float().transpose(-1, -2)).reshape(B, H, q, T) * scaling
    logits = logits.masked_fill(~allowed, float("-inf"))
    return logits, torch.softmax(logits, dim=-1)


def _times_v(probs: Any, value: Any) -> Any:
    torch = require("torch")
    B, H, q, T = probs.shape
    Hk = value.shape[1]
    out = torch.matmul(probs.reshape(B, Hk, (H // Hk) * q, T), value.float())
    return out.reshape(B, H, q, value.shape[-1])          # [B, H, q, D]


def _make_hook(base_name: str) -> Any:
    torch = require("torch")
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def hooked(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
               scaling: float | None = None, **kw: Any) -> tuple[Any, Any]:
        base = ALL_ATTENTION_FUNCTIONS[base_name] if base_name != "eager" else _eager()
        ctx = _ACTIVE.get()
        layer = getattr(module, "layer_idx", None)
        if ctx is None or layer is None:
            return base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
        readers, writers, full = ctx.layer_work(layer)
        if not readers and not writers:
            return base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
        B, H, q, D = query.shape
        T = key.shape[2]
        scale = scaling if scaling is not None else D ** -0.5
        pid = kw.get("position_ids")
        qpos = pid.reshape(-1)[-q:] if pid is not None and pid.numel() >= q else torch.arange(T - q, T, device=query.device)
        qpos = qpos.to(query.device)
        rows = qpos >= ctx.final_start
        every_row = bool(rows.all())
        if full or (writers and every_row):
            # full rewriters need every row; and when every row is rewritten anyway (the final block over
            # reused passages, a decode step) the kernel's output would be overwritten whole: skip it
            allowed = _visible(qpos, T, attention_mask, q)
            logits, probs = _rows_eager(query, key, value, allowed, scale)
            for w in writers:
                if w.needs == "full" or every_row:
                    probs = w.apply(layer, probs, logits, qpos, ctx)
                elif bool(rows.any()):
                    sub = w.apply(layer, probs[:, :, rows], logits[:, :, rows], qpos[rows], ctx)
                    probs = probs.clone()
                    probs[:, :, rows] = sub
            if bool(rows.any()):
                for r in readers:
                    r.take(layer, probs[0] if every_row else probs[0][:, rows], qpos[rows], ctx)
            out = _times_v(probs, value).to(query.dtype)
            return out.transpose(1, 2).contiguous(), None
        tgt = rows.nonzero().view(-1)
        out, w_ = base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
        if tgt.numel() == 0:
            return out, w_
        if not writers and all(r.rows == "last" for r in readers):
            tgt = tgt[-1:]                                    # only the last row is needed
        qs = query[:, :, tgt]
        allowed = _visible(qpos[tgt], T, None, len(tgt))
        logits, probs = _rows_eager(qs, key, value, allowed, scale)
        if writers:
            for w in writers:
                probs = w.apply(layer, probs, logits, qpos[tgt], ctx)
            new = _times_v(probs, value).to(out.dtype).transpose(1, 2)       # [B, rows, H, D]
            out = out.clone()
            out[:, tgt] = new
        for r in readers:
            r.take(layer, probs[0], qpos[tgt], ctx)
        return out, w_

    return hooked


def _eager() -> Any:
    from transformers.models.llama.modeling_llama import eager_attention_forward
    return eager_attention_forward


def install_hook(model: Any, what: str = "attention methods") -> str:
    """Wrap the model's current attention kernel in the hook (idempotent); returns the hook's name."""
    check_family(model, what)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    cur = getattr(model.config, "_attn_implementation", None) or "eager"
    if cur.startswith(_HOOK_PREFIX):
        return cur
    name = _HOOK_PREFIX + cur
    AttentionInterface.register(name, _make_hook(cur))
    try:
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[cur]
    except KeyError:
        from transformers.masking_utils import sdpa_mask
        mask_fn = sdpa_mask
    AttentionMaskInterface.register(name, mask_fn)
    model.set_attn_implementation(name)
    return name


def hooked_base(model: Any) -> str:
    """The kernel the hook wraps (or the current kernel when no hook is installed)."""
    cur = getattr(model.config, "_attn_implementation", None) or "eager"
    return cur[len(_HOOK_PREFIX):] if cur.startswith(_HOOK_PREFIX) else cur


def entropy_of(reader: Reader) -> float:
    """Mean over recorded layers and heads of the last row's attention entropy (nats)."""
    vals = [float(v.mean()) for v in reader.entropy.values()]
    return sum(vals) / len(vals) if vals else float("nan")
