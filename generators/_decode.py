"""Token-by-token decoding shared by full prefill and passage-KV reuse.

Greedy or sampling (temperature, top-k, top-p, repetition penalty via the transformers logits
processors), stop at EOS ids or stop strings, stream text pieces to a callback. Works on a batch
(left-padded rows with a 2-D attention mask) or a single row coming from an assembled cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ragkit._deps import require
from ragkit._hfcompat import cache_kw, output_cache


@dataclass
class DecodeParams:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass
class Decoded:
    text: str
    token_ids: list[int]
    finish: str            # "eos" | "stop" | "length"
    ttft_s: float          # prefill + choosing the first token
    decode_s: float


def _processors(p: DecodeParams) -> Any:
    gen = require("transformers").generation.logits_process
    procs = gen.LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(gen.RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.do_sample:
        if p.temperature != 1.0:
            procs.append(gen.TemperatureLogitsWarper(p.temperature))
        if p.top_k > 0:
            procs.append(gen.TopKLogitsWarper(p.top_k))
        if p.top_p < 1.0:
            procs.append(gen.TopPLogitsWarper(p.top_p))
    return procs


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = None
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
    return (text, False) if cut is None else (text[:cut], True)


def decode(model: Any, tokenizer: Any, logits: Any, cache: Any, *, params: DecodeParams,
           eos_ids: Sequence[int], next_pos: Any, attention_mask: Any | None = None,
           on_token: Callable[[int, str], None] | None = None, t_start: float | None = None) -> list[Decoded]:
    """Continue generation from the prompt's last logits ``[B, V]`` and its cache.

    ``next_pos``: LongTensor [B] position id of the first generated token. ``attention_mask``:
    [B, prompt_len] (left padding) or None for unpadded rows. ``on_token(row, piece)`` gets text
    pieces as they become final (text that might start a stop string is held back).
    ``t_start``: when the prefill began (for time to first token).
    """
    torch = require("torch")
    t0 = t_start if t_start is not None else time.perf_counter()
    B = logits.shape[0]
    device = logits.device
    procs = _processors(params)
    gen = None
    if params.do_sample:
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed if params.seed is not None else torch.seed() % (2 ** 63))
    eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), device=device, dtype=torch.long)
    out_ids: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    finish = ["length"] * B
    texts = [""] * B
    emitted = [0] * B
    hold = max((len(s) for s in params.stop if s), default=1) - 1
    hist = torch.empty(B, 0, dtype=torch.long, device=device)
    pos = next_pos.clone().to(device)
    mask = attention_mask
    ttft = 0.0
    t_first = t0
    for step in range(params.max_new_tokens):
        scores = logits.float()
        if procs:
            scores = procs(hist, scores)
        if params.do_sample:
            probs = torch.softmax(scores, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            nxt = scores.argmax(dim=-1)
        if step == 0:
            t_first = time.perf_counter()
            ttft = t_first - t0
        for b in range(B):
            if done[b]:
                continue
            tok = int(nxt[b])
            if eos.numel() and tok in eos.tolist():
                done[b], finish[b] = True, "eos"
            else:
                out_ids[b].append(tok)
                full = tokenizer.decode(out_ids[b], skip_special_tokens=True)
                cut, stopped = _cut_at_stop(full, params.stop)
                texts[b] = cut
                if stopped:
                    done[b], finish[b] = True, "stop"
            if on_token is not None:
                upto = len(texts[b]) if done[b] else max(emitted[b], len(texts[b]) - hold)
                if texts[b].endswith("\ufffd") and not done[b]:
                    upto = min(upto, len(texts[b]) - 1)
                if upto > emitted[b]:
                    on_token(b, texts[b][emitted[b]:upto])
                    emitted[b] = upto
        if all(done) or step == params.max_new_tokens - 1:
            break
        hist = torch.cat([hist, nxt.unsqueeze(1)], dim=1)
        inp = nxt.unsqueeze(1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        with torch.no_grad():
            res = model(input_ids=inp, position_ids=pos.unsqueeze(1), attention_mask=mask,
                        **cache_kw(cache), use_cache=True)
        cache = output_cache(res)
        logits = res.logits[:, -1, :]
        pos = pos + 1
    if on_token is not None:
        for b in range(B):
            if len(texts[b]) > emitted[b]:
                on_token(b, texts[b][emitted[b]:])
    dec = time.perf_counter() - t_first
    return [Decoded(texts[b].strip(), out_ids[b], finish[b], ttft, dec) for b in range(B)]
