"""Passage-KV reuse serves a batch of rankings in one assembled forward (issue 12, item 7).

Every row of :meth:`KVReuseEngine.prefill_batch` must give what :meth:`KVReuseEngine.prefill` gives
for that prompt alone: next-token logits and the KV of every real position (fp32, tolerance as in
test_kv_reuse.py), for prompts of different lengths, with cached or uncached glue and with blend.
"""
from __future__ import annotations

import pytest

from ._integration import import_or_unavailable  # noqa: E402

torch = import_or_unavailable("torch", "llm")
transformers = import_or_unavailable("transformers", "llm")

from ragkit.kv import KVReuseEngine  # noqa: E402
from ragkit.kv.reuse import _cache_kv  # noqa: E402
from ragkit._hfcompat import cache_kw, output_cache  # noqa: E402

from ._tinylm import make_tiny_lm, rand_ids, tiny_llama  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def prompts(eng, cached_glue: bool):
    """Three prompts of different sizes: 2, 3 and 1 passages of various lengths, finals of 7, 3, 11 tokens."""
    out = []
    for q, (lens, nf) in enumerate((((20, 13), 7), ((9, 31, 5), 3), ((17,), 11))):
        ps = [rand_ids(n, 100 * q + n) for n in lens]
        glues = [rand_ids(2, 50 + 10 * q + i) for i in range(len(lens))]
        g = eng.encode_blocks(glues) if cached_glue else glues
        out.append((g, eng.encode_blocks(ps), rand_ids(nf, 900 + q)))
    return out


@pytest.mark.parametrize("mode, ratio", [("plain", 0.0), ("uncached-glue", 0.0), ("blend", 0.4), ("blend-all", 1.0)])
def test_batch_rows_equal_single_prompts(tiny, mode, ratio):
    eng = KVReuseEngine(tiny, None, rand_ids(6, 1))
    ps = prompts(eng, cached_glue=mode != "uncached-glue")
    singles = [eng.prefill(*p, recompute_ratio=ratio, select_layers=1) for p in ps]
    got = eng.prefill_batch(ps, recompute_ratio=ratio, select_layers=1, reserve=4)
    assert got.lengths == [s.length for s in singles]
    assert got.logits.shape[0] == 3
    M = max(s.length - len(p[2]) for s, p in zip(singles, ps))
    bk, bv = _cache_kv(got.cache)
    for b, (s, p) in enumerate(zip(singles, ps)):
        assert torch.allclose(got.logits[b], s.logits[0], atol=ATOL, rtol=0), (mode, b)
        assert got.recomputed[b] == s.recomputed
        N, F = s.length - len(p[2]), len(p[2])
        cols = list(range(M - N, M)) + list(range(M, M + F))      # the row's real columns, in position order
        sk, sv = _cache_kv(s.cache)
        for layer in range(len(sk)):
            assert torch.allclose(bk[layer][b][:, cols], sk[layer][0][:, :N + F], atol=ATOL, rtol=0), (mode, b, layer)
            assert torch.allclose(bv[layer][b][:, cols], sv[layer][0][:, :N + F], atol=ATOL, rtol=0), (mode, b, layer)
        assert int(got.attention_mask[b].sum()) == N + F and int(got.next_pos[b]) == N + F


def test_batched_decoding_continues_each_row_like_its_single_prompt(tiny):
    """Greedy next steps from the batch cache equal those from each single-prompt cache (logits compared
    at every step, feeding each row the same token, so no argmax decides the comparison)."""
    eng = KVReuseEngine(tiny, None, rand_ids(4, 2))
    ps = prompts(eng, cached_glue=True)
    singles = [eng.prefill(*p, reserve=4) for p in ps]
    got = eng.prefill_batch(ps, reserve=4)
    mask, pos, cache = got.attention_mask, got.next_pos.clone(), got.cache
    s_caches = [s.cache for s in singles]
    s_pos = [s.length for s in singles]
    for step in range(3):
        toks = torch.tensor([[3 + 7 * step + b] for b in range(3)])
        mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            out = tiny(input_ids=toks, position_ids=pos.unsqueeze(1), attention_mask=mask, **cache_kw(cache),
                       use_cache=True)
            cache = output_cache(out)
            for b in range(3):
                o = tiny(input_ids=toks[b:b + 1], position_ids=torch.tensor([[s_pos[b]]]),
                         **cache_kw(s_caches[b]), use_cache=True)
                s_caches[b] = output_cache(o)
                s_pos[b] += 1
                assert torch.allclose(out.logits[b, -1], o.logits[0, -1], atol=ATOL, rtol=0), (step, b)
        pos = pos + 1


def test_generator_batches_reuse_and_matches_one_at_a_time(tmp_path):
    from ragkit.generators.hf import HFGenerator
    from ragkit.records import Hit, Query, Ranking

    lm = make_tiny_lm(tmp_path / "lm")
    texts = ["george orwell wrote animal farm .", "paris is the capital of france .",
             "berlin is the capital of germany .", "the river in the city of paris"]
    qs = ["who wrote animal farm ?", "what is the capital of france ?", "capital city of germany ?"]
    rs = [Ranking(Query(f"q{i}", q), tuple(Hit(f"q{i}", f"d{j}", 5.0 - j, 0, texts[(i + j) % 4], f"c{j}")
                                            for j in range(1 + i)))
          for i, q in enumerate(qs)]
    for mode in ("plain", "blend"):
        kw = dict(model=str(lm), kv_reuse=mode, kv_store=str(tmp_path / "kv"), max_new_tokens=6,
                  **({"recompute_ratio": 0.5} if mode == "blend" else {}))
        one = HFGenerator(batch_size=1, **kw)(rs)
        many = HFGenerator(batch_size=8, **kw)(rs)
        assert [a.meta["prompt_tokens"] for a in many] == [a.meta["prompt_tokens"] for a in one]
        assert [a.text for a in many] == [a.text for a in one], mode
        assert all(a.meta["batch"] == 3 for a in many) and "batch" not in one[0].meta


@pytest.mark.parametrize("ratio", [0.0, 0.4])
def test_a_batch_runs_one_selection_pass_and_one_forward(tiny, ratio):
    """However many prompts: blend runs the first layer once (the selection pass over the whole batch)
    and every later layer once (one forward of all recomputed tokens and final blocks); plain runs
    each layer once."""
    eng = KVReuseEngine(tiny, None, rand_ids(6, 1))
    ps = prompts(eng, cached_glue=False)            # uncached glue: every prompt has tokens to recompute
    calls = [0] * len(tiny.model.layers)
    hooks = [lay.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, lay in enumerate(tiny.model.layers)]
    try:
        got = eng.prefill_batch(ps, recompute_ratio=ratio, select_layers=1)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [1, 1, 1]
    assert all(r for r in got.recomputed) and len({len(r) for r in got.recomputed}) > 1   # ragged R per prompt
    if ratio:
        assert all(st["recomputed_passage_tokens"] > 0 for st in got.stats)
