"""Attention-level generation for ``generator.hf``: how the methods of :mod:`._attention` are run.

One prompt at a time (``batch_size`` does not apply when an attention method is on), on the full
prefill path and on the passage-KV reuse path alike:

1. *attention sorting* (``attention_sort_rounds`` T > 0; Peysakhovich & Lerer 2023): prefill,
   score each passage by the attention the last prompt position gives its tokens (mean over layers
   and heads), reorder ascending so the most attended passage is last; repeat up to T rounds, stop
   when the order no longer changes;
2. *attention guard* (``guard: flag|drop``; Attention Tracker, Hung et al. 2024, implemented from
   the paper): the focus score -- the last prompt position's attention to the instruction tokens
   (system message, question and instruction, found from the tokenizer's offsets), mean over the
   important heads -- below ``guard_threshold`` flags the prompt; ``drop`` removes the passage that
   the important heads attend to most and checks again (at most ``guard_max_drops`` times);
3. *found in the middle* (``fim: true``; Hsieh et al. 2024): calibrated relevance of passage k =
   its attention mass from the final block's rows minus that of a content-free dummy document at
   the same position (one extra prefill with the dummy at every position, or ``fim_bias: swap``: one
   prefill per position with only that passage replaced), then generation with
   :class:`._attention.DocMassRescale` on ``fim_layers`` at temperature ``fim_temperature``; the
   rescaling touches only the final block's rows, so the generation pass reruns just the final block
   over the relevance pass's keys and values (``prefill(..., reuse=)``; full prefill path);
4. ACT (``act_heads``) and the parallel-encoding fixes (``kv_temperature``, ``kv_scale``,
   ``kv_top_blocks``) rewrite attention in every prefill and decode step of the prompt.

When a read pass used the same rewriters as the generation pass and the passages did not change,
its prefill is the generation prefill (no extra cost: e.g. ``guard: flag`` alone reads the focus
score off the answer's own prefill).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ragkit.errors import ConfigError
from ragkit._hfcompat import cache_kw, output_cache

from ._attention import (ACT, AttentionContext, DocMassRescale, ParallelFix, Reader, active, check_family,
                         hooked_base, install_hook, parse_heads, parse_layers)
from ragkit.kv.prompt import Segments, glue_text, tokenize

DEFAULT_DUMMY = "N/A"


def wants_attention(g: Any) -> bool:
    return bool(g.act_heads or g.fim or g.attention_sort_rounds or g.guard != "off" or kv_fix_on(g))


def kv_fix_on(g: Any) -> bool:
    return g.kv_temperature != 1.0 or g.kv_scale != 1.0 or g.kv_top_blocks > 0


def validate(g: Any) -> None:
    """Parameter combinations the attention methods refuse (ConfigError naming the parameter)."""
    if kv_fix_on(g) and g.kv_reuse == "none":
        raise ConfigError(f"'{g.key}': kv_temperature/kv_scale/kv_top_blocks are fixes for independently encoded "
                          "passage blocks; they need kv_reuse: plain or blend (parameter 'kv_reuse').")
    if g.act_heads and g.attn_implementation == "flash_attention_2":
        raise ConfigError(f"'{g.key}': act_heads needs materialised attention probabilities (its sink test sums "
                          "whole columns), which flash_attention_2 never exposes; use attn_implementation: sdpa "
                          "or eager.")
    if g.fim_temperature <= 0 or g.kv_temperature <= 0 or g.kv_scale <= 0:
        raise ConfigError(f"'{g.key}': fim_temperature, kv_temperature and kv_scale must be > 0.")
    if g.guard != "off" and not (g.guard_heads or g.guard_probe):
        raise ConfigError(f"'{g.key}': guard: {g.guard} needs guard_heads (the important heads, 'layer:head' or "
                          "'*' for all) or guard_probe (a probe file); select them with "
                          "`python benchmarks/bench_attention.py guard`.")
    if g.guard_probe and g.guard_heads:
        raise ConfigError(f"'{g.key}': guard_probe and guard_heads are two rules for the same score; give one.")


def setup(g: Any) -> None:
    """Install the hook on the generator's model and parse head/layer lists (after the model loaded)."""
    model = g._model
    check_family(model, f"'{g.key}'")
    install_hook(model, f"'{g.key}'")
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    g._act_heads = parse_heads(g.act_heads, L, H, f"'{g.key}': act_heads") if g.act_heads else {}
    g._guard_heads = parse_heads(g.guard_heads, L, H, f"'{g.key}': guard_heads") if g.guard_heads else {}
    g._guard_probe = None
    if g.guard_probe and g.guard != "off":
        from ragkit.artifacts import resolve_path
        g._guard_probe = GuardProbe.load(resolve_path(g.guard_probe, g._base_dir), L, H, f"'{g.key}': guard_probe")
        g._guard_heads = g._guard_probe.drop_heads
    g._fim_layers = parse_layers(g.fim_layers, L, f"'{g.key}': fim_layers")
    g._kv_layers = None if g.kv_fix_layers in ("", "all") else parse_layers(g.kv_fix_layers, L, f"'{g.key}': kv_fix_layers")


# -- spans -------------------------------------------------------------------------------------------
def layout(seg: Segments) -> tuple[list[tuple[int, int]], tuple[int, int], int]:
    """(passage block spans, span of all passage blocks and glue, start of the final block)."""
    pos = len(seg.prefix)
    spans = []
    for g, b in zip(seg.glues, seg.blocks):
        pos += len(g)
        spans.append((pos, pos + len(b)))
        pos += len(b)
    return spans, (len(seg.prefix), pos), pos


def _overlap(offsets: Sequence[tuple[int, int]], a: int, b: int) -> list[int]:
    return [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]


def instruction_positions(g: Any, seg: Segments, question: str) -> list[int]:
    """Positions of the instruction tokens (system message; question and instruction in the final
    block), from the tokenizer's character offsets of the prefix and final texts."""
    tok, tmpl = g._tok, g._template
    out: list[int] = []
    pre_text = tmpl.prefix_text(tok)
    enc = tok(pre_text, add_special_tokens=False, return_offsets_mapping=True)
    n_bos = len(seg.prefix) - len(enc["input_ids"])
    if list(enc["input_ids"]) != seg.prefix[n_bos:]:
        raise ConfigError(f"'{g.key}': the tokenizer's offsets do not match the prompt's prefix tokens; the "
                          "attention guard cannot locate the instruction.")
    if tmpl.system:
        a = pre_text.find(tmpl.system)
        if a >= 0:
            out += [n_bos + i for i in _overlap(enc["offset_mapping"], a, a + len(tmpl.system))]
    fin_text = tmpl.final_text(tok, question)
    enc = tok(fin_text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(seg.final):
        raise ConfigError(f"'{g.key}': the tokenizer's offsets do not match the final block's tokens.")
    start = layout(seg)[2]
    for piece in (question.strip(), tmpl.instruction):
        if not piece:
            continue
        a = fin_text.find(piece)
        if a >= 0:
            out += [start + i for i in _overlap(enc["offset_mapping"], a, a + len(piece))]
    return sorted(set(out))


# -- one prefill -------------------------------------------------------------------------------------
@dataclass
class Prefill:
    logits: Any
    cache: Any
    length: int
    seg: Segments
    ctx: AttentionContext
    stats: dict = field(default_factory=dict)
    full: bool = False          # a full prefill of the prompt's tokens (not assembled from passage KV)


def base_rewriters(g: Any) -> list[Any]:
    """Fresh per prompt (ACT keeps the prompt's sinks for its decode steps)."""
    rw: list[Any] = []
    if g._act_heads:
        rw.append(ACT(g._act_heads, g.act_tau, g.act_beta))
    if kv_fix_on(g):
        rw.append(ParallelFix(g.kv_temperature, g.kv_scale, g.kv_top_blocks, g._kv_layers))
    return rw


def _rows_only(rewriters: Sequence[Any]) -> bool:
    return all(w.needs == "rows" for w in rewriters)


def prefill(g: Any, question: str, passages: Sequence[tuple[str, str | None]], readers: Sequence[Reader] = (),
            rewriters: Sequence[Any] = (), reuse: Prefill | None = None) -> Prefill:
    """Prefill the prompt for ``passages`` [(text, title)] under an attention context.

    ``reuse``: an earlier full prefill of the same passages. Readers and row rewriters (found in the
    middle, the parallel fixes) see and change only the final block's rows, so when neither pass has a
    full rewriter (ACT) every position before the final block has the same keys and values in both:
    those are taken from ``reuse`` and only the final block is run (its cache is not modified)."""
    import torch

    from ragkit.kv.prompt import build_segments
    seg = build_segments(g._tok, g._template, question, list(passages), g.max_passage_tokens, prefix=g._prefix)
    spans, ctx_span, fstart = layout(seg)
    ctx = AttentionContext(fstart, spans, ctx_span, list(readers), list(rewriters))
    model = g._model
    dev = next(model.parameters()).device
    stats: dict[str, Any] = {}
    with active(ctx), torch.no_grad():
        eng = g._engine
        if eng is None:
            ids = seg.ids()
            if (reuse is not None and reuse.full and reuse.ctx.final_start == fstart
                    and _rows_only(rewriters) and _rows_only(reuse.ctx.rewriters) and reuse.seg.ids()[:fstart] == ids[:fstart]):
                from ragkit.kv.reuse import prefix_cache
                cache = prefix_cache(model, reuse.cache, fstart)
                out = model(input_ids=torch.tensor([ids[fstart:]], device=dev), use_cache=True, logits_to_keep=1,
                            position_ids=torch.arange(fstart, len(ids), device=dev).view(1, -1), **cache_kw(cache))
                stats["prefix_reused_tokens"] = fstart
                return Prefill(out.logits[:, -1, :], output_cache(out), len(ids), seg, ctx, stats, full=True)
            out = model(input_ids=torch.tensor([ids], device=dev), use_cache=True, logits_to_keep=1)
            return Prefill(out.logits[:, -1, :], output_cache(out), len(ids), seg, ctx, stats, full=True)
        entries, computed = eng.get_blocks(seg.block_texts, seg.blocks)
        glues: list[Any] = seg.glues
        if g.cache_glue:
            glues, gc = eng.get_blocks([glue_text(i + 1) for i in range(len(seg.glues))], seg.glues)
            computed += gc
        ratio = g.recompute_ratio if g.kv_reuse == "blend" else 0.0
        pre = eng.prefill(glues, entries, seg.final, recompute_ratio=ratio, select_layers=g.select_layers,
                          reserve=g.max_new_tokens)
        stats.update(pre.stats)
        stats["kv_blocks_computed"] = computed
        return Prefill(pre.logits, pre.cache, pre.length, seg, ctx, stats)


def passage_scores(reader: Reader, spans: Sequence[tuple[int, int]], heads: dict[int, list[int]] | None = None) -> list[float]:
    vec = reader.mean_over(heads)
    return [float(vec[a:b].sum()) for a, b in spans]


def _pairs(hits: Sequence[Any]) -> list[tuple[str, str | None]]:
    return [(h.text, h.meta.get("title") if h.meta else None) for h in hits]


def dummy_passages(g: Any, seg: Segments, dummy: str) -> list[tuple[str, None]]:
    """A content-free dummy for each passage: ``dummy`` repeated to about the passage's token count
    (attention mass grows with a passage's length, so the bias is measured at the same length)."""
    tok = g._tok
    per = max(1, len(tokenize(tok, " " + dummy.strip())))
    return [(" ".join([dummy.strip()] * max(1, round(len(b) / per))), None) for b in seg.blocks]


def attention_relevance(g: Any, question: str, hits: Sequence[Any], *, calibrated: bool = True, bias: str = "dummy",
                        dummy: str = DEFAULT_DUMMY, rewriters: Sequence[Any] = (),
                        layers: Sequence[int] | None = None) -> tuple[list[float], dict]:
    """Found-in-the-middle relevance of each passage (mean over layers and heads of the attention
    mass the final block's rows give it), calibrated by a dummy document at the same position."""
    rd = Reader("final", layers=layers)
    pf = prefill(g, question, _pairs(hits), [rd], rewriters)
    raw = passage_scores(rd, pf.ctx.doc_spans)
    info: dict[str, Any] = {"vanilla": raw, "prefill": pf}
    if not calibrated:
        return raw, info
    dums = dummy_passages(g, pf.seg, dummy)
    if bias == "swap":      # one prefill per position with only that passage replaced by the dummy
        base = []
        for k in range(len(hits)):
            rdk = Reader("final", layers=layers)
            pairs = _pairs(hits)
            pairs[k] = dums[k]
            pk = prefill(g, question, pairs, [rdk], rewriters)
            base.append(passage_scores(rdk, pk.ctx.doc_spans)[k])
    else:                   # one prefill with a dummy at every position
        rdd = Reader("final", layers=layers)
        pd = prefill(g, question, dums, [rdd], rewriters)
        base = passage_scores(rdd, pd.ctx.doc_spans)
    info["bias"] = base
    return [a - b for a, b in zip(raw, base)], info


# -- one answer --------------------------------------------------------------------------------------
def run_one(g: Any, r: Any) -> Any:
    import torch

    from ._decode import decode
    hits = list(g._passages(r))
    q = r.query.text
    cb = g._callback_for([r.qid])
    meta: dict[str, Any] = {}
    gh = g._guard_heads or {}
    n_prefills = 0

    def guard_reader() -> list[Reader]:        # a probe reads every layer's heads, the mean rule only its heads
        layers = None if g._guard_probe is not None else gh.keys()
        return [Reader("last", layers=layers)] if g.guard != "off" else []

    with g._model_lock, torch.no_grad():
        t0 = time.perf_counter()
        rewriters = base_rewriters(g)
        ready: tuple[Prefill, list[Reader]] | None = None   # a prefill of the current passages and rewriters
        reuse: Prefill | None = None                        # a full prefill the last pass can rerun only the final block over
        # 1. attention sorting
        if g.attention_sort_rounds and len(hits) > 1:
            rounds = 0
            for _ in range(g.attention_sort_rounds):
                rd, grd = Reader("last"), guard_reader()
                pf = prefill(g, q, _pairs(hits), [rd, *grd], rewriters)
                n_prefills += 1
                rounds += 1
                sc = passage_scores(rd, pf.ctx.doc_spans)
                order = sorted(range(len(hits)), key=lambda i: (sc[i], -i))   # ascending: most attended last
                if order == list(range(len(hits))):
                    ready = (pf, grd)
                    break
                hits = [hits[i] for i in order]
                rewriters = base_rewriters(g)
            meta["attention_sort_rounds"] = rounds
            meta["attention_order"] = [h.doc_id for h in hits]
        # 2. attention guard, drop mode: check, drop the passage the important heads attend to most, check again
        if g.guard == "drop":
            dropped: list[str] = []
            while True:
                if ready is None:
                    grd = guard_reader()
                    ready = (prefill(g, q, _pairs(hits), grd, rewriters), grd)
                    n_prefills += 1
                pf, grd = ready
                focus = focus_score(g, grd[0], pf, q, gh)
                if focus >= g.guard_threshold or len(dropped) >= g.guard_max_drops or len(hits) <= 1:
                    break
                vec = grd[0].mean_over(gh)
                worst = max(range(len(hits)), key=lambda i: float(vec[slice(*pf.ctx.doc_spans[i])].sum()))
                dropped.append(hits[worst].doc_id)
                hits = hits[:worst] + hits[worst + 1:]
                ready, rewriters = None, base_rewriters(g)
            meta["guard"] = {"focus": focus, "flagged": bool(focus < g.guard_threshold), "dropped": dropped}
        # 3. found in the middle
        if g.fim and hits:
            rel, info = attention_relevance(g, q, hits, calibrated=True, bias=g.fim_bias,
                                            dummy=g.fim_dummy or DEFAULT_DUMMY, rewriters=base_rewriters(g))
            n_prefills += 2 if g.fim_bias == "dummy" else 1 + len(hits)
            meta["fim_relevance"] = rel
            rewriters = base_rewriters(g) + [DocMassRescale(g._fim_layers, rel, g.fim_temperature, g.fim_mix)]
            ready, reuse = None, info["prefill"]     # the relevance pass's prompt: only its final block reruns
        if ready is None:
            grd = guard_reader() if "guard" not in meta else []
            ready = (prefill(g, q, _pairs(hits), grd, rewriters, reuse=reuse), grd)
            n_prefills += 1
        pf, grd = ready
        if grd and "guard" not in meta:
            focus = focus_score(g, grd[0], pf, q, gh)
            meta["guard"] = {"focus": focus, "flagged": bool(focus < g.guard_threshold), "dropped": []}
        nxt = torch.tensor([pf.length], device=pf.logits.device)
        with active(pf.ctx):
            dec = decode(g._model, g._tok, pf.logits, pf.cache, params=g._decode_params(), eos_ids=g._eos,
                         next_pos=nxt, on_token=cb, t_start=t0)
    meta["prefills"] = n_prefills
    for w in pf.ctx.rewriters:
        if isinstance(w, ACT):
            meta["act_sinks"] = w.n_sinks
    meta.update(pf.stats)
    meta["attention_hook"] = hooked_base(g._model)
    return g._answer(r, hits, dec[0], pf.length, meta)


def focus_score(g: Any, reader: Reader, pf: Prefill, question: str, heads: dict[int, list[int]]) -> float:
    """Attention Tracker's focus score: the last position's attention to the instruction tokens,
    summed over those tokens, averaged over the important heads; with a guard probe, the probe's
    P(benign) of every head's focus score instead."""
    pos = instruction_positions(g, pf.seg, question)
    if g._guard_probe is not None:
        return g._guard_probe.p_benign(focus_matrix(reader, pos))
    vec = reader.mean_over(heads)
    return float(vec[pos].sum()) if pos else 0.0


def focus_matrix(reader: Reader, pos: Sequence[int]) -> Any:
    """[layers recorded, heads]: each head's attention from the last prompt position to ``pos``."""
    import torch

    idx = torch.tensor(list(pos), dtype=torch.long)
    return torch.stack([reader.record[li][:, idx].sum(-1) for li in sorted(reader.record)])


def head_focus(g: Any, question: str, hits: Sequence[Any]) -> Any:
    """[layers, heads] attention of the last prompt position to the instruction tokens (for head selection)."""
    rd = Reader("last")
    pf = prefill(g, question, _pairs(hits), [rd], base_rewriters(g))
    return focus_matrix(rd, instruction_positions(g, pf.seg, question))


@dataclass
class GuardProbe:
    """A logistic probe over every head's focus score (a learned alternative to averaging the important
    heads): P(benign) = sigmoid(sum(weights * (focus - mean) / std) + intercept). Fitted by
    ``benchmarks/bench_attention.py guard --probe-out FILE`` on calibration prompts; ``drop_heads``
    are the heads with the largest positive weights (drop mode removes the passage they attend to most)."""

    weights: Any
    mean: Any
    std: Any
    intercept: float
    drop_heads: dict[int, list[int]]

    FORMAT = "ragkit-guard-probe/1"

    @classmethod
    def load(cls, path: Any, layers: int, heads: int, where: str) -> "GuardProbe":
        import json

        import torch

        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{where}: no probe file at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: {path} is not a readable JSON probe file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            raise ConfigError(f"{where}: {path}: field 'format' must be {cls.FORMAT!r} "
                              f"(got {d.get('format') if isinstance(d, dict) else type(d).__name__!r})")
        mats = {}
        for k in ("weights", "mean", "std"):
            try:
                m = torch.tensor(d[k], dtype=torch.float32)
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{where}: {path}: field {k!r} must be a [layers][heads] list of numbers") from None
            if tuple(m.shape) != (layers, heads):
                raise ConfigError(f"{where}: {path}: field {k!r} has shape {list(m.shape)}; this model has "
                                  f"{layers} layers x {heads} heads (was the probe fitted on another model? "
                                  f"its 'model' field: {d.get('model', '?')!r})")
            mats[k] = m
        if not bool((mats["std"] > 0).all()):
            raise ConfigError(f"{where}: {path}: field 'std' must be > 0 everywhere")
        try:
            intercept = float(d["intercept"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: {path}: field 'intercept' must be a number") from None
        drop = parse_heads([str(h) for h in d.get("drop_heads") or ["*"]], layers, heads, f"{where}: {path}: drop_heads")
        return cls(mats["weights"], mats["mean"], mats["std"], intercept, drop)

    def p_benign(self, focus: Any) -> float:
        import torch

        z = ((focus.float().cpu() - self.mean) / self.std * self.weights).sum() + self.intercept
        return float(torch.sigmoid(z))


def select_guard_heads(benign: Any, attack: Any, k: float = 1.0) -> list[str]:
    """Attention Tracker's important heads: (mu_benign - k sd_benign) - (mu_attack + k sd_attack) > 0,
    per head, over focus matrices [n, layers, heads]."""
    score = (benign.mean(0) - k * benign.std(0)) - (attack.mean(0) + k * attack.std(0))
    return [f"{li}:{h}" for li, h in (score > 0).nonzero().tolist()]


__all__ = ["wants_attention", "validate", "setup", "run_one", "attention_relevance", "prefill", "Reader",
           "instruction_positions", "focus_score", "focus_matrix", "head_focus", "select_guard_heads", "GuardProbe",
           "tokenize"]
