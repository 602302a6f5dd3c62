"""Passage-KV reuse: exactness against full attention (fp32), store, indexer, refusals.

(1) one passage: reuse == full prefill; (2) re-rotation by d == encoding at offset d;
(3) no shared prefix, several passages: reuse == one forward pass with a block 4-D mask and the real
position ids; (4) recompute ratio 1 == full prefill. Tiny random Llama here (fast); the same on
SmolLM2 in the model-marked tests at the end.
"""
from __future__ import annotations

import math

import pytest

from ._integration import import_or_unavailable

torch = import_or_unavailable("torch", "llm")
transformers = import_or_unavailable("transformers", "llm")

from ragkit._hfcompat import cache_kw, output_cache  # noqa: E402
from ragkit.errors import ConfigError, IndexArtifactError  # noqa: E402
from ragkit.kv.reuse import (KVReuseEngine, _buffer_cache, _cache_kv, check_supported, rotate_keys,  # noqa: E402
                                       rotate_keys_into)
from ragkit.kv.store import KVStore, PassageKV  # noqa: E402

from ._tinylm import make_tiny_lm, rand_ids, tiny_llama  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def block_reference(model, pieces, blocks_mask):
    """One forward pass with a custom 4-D mask: tokens of a passage block attend only to their block
    (and to the prefix, piece kind 'prefix'); every other token attends causally to everything."""
    ids, owner = [], []
    for kind, toks in pieces:
        ids += toks
        owner += [kind] * len(toks)
    n = len(ids)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for i in range(n):
        if isinstance(owner[i], int):     # a passage block
            allowed[i] &= torch.tensor([o == owner[i] or o == "prefix" for o in owner])
    mask = torch.zeros(1, 1, n, n).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=mask, position_ids=torch.arange(n)[None],
                    use_cache=True)
    return out.logits[:, -1], output_cache(out)


def test_1_single_passage_equals_full_prefill(tiny):
    prefix, p, fin = rand_ids(6, 1), rand_ids(30, 2), rand_ids(8, 3)
    eng = KVReuseEngine(tiny, None, prefix)
    got = eng.prefill([[]], eng.encode_blocks([p]), fin)
    ref = eng.full_prefill(prefix + p + fin)
    assert torch.allclose(got.logits, ref.logits, atol=ATOL, rtol=0)
    for a, b in zip(_cache_kv(got.cache)[0], _cache_kv(ref.cache)[0]):
        assert torch.allclose(a, b, atol=ATOL, rtol=0)


def test_gqa_attention_with_mask_equals_transformers_sdpa():
    """The engine's CPU attention (SDPA reading grouped KV heads, mask given) = transformers' sdpa."""
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    eng_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_dict())).eval()
    eng_model.load_state_dict(ref.state_dict())
    KVReuseEngine(eng_model, None, [1, 2])
    assert eng_model.config._attn_implementation == "ragkit_sdpa" and ref.config._attn_implementation == "sdpa"
    n = 12
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    allowed[5:8, :5] = False                                   # a block that does not see what precedes it
    mask = torch.zeros(1, 1, n, n).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    ids = torch.tensor([rand_ids(n, 9)]) % 50
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, position_ids=torch.arange(n)[None]).logits
        b = eng_model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(n)[None]).logits
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_rotate_keys_into_equals_rotate_keys(tiny):
    k = torch.randn(3, 2, 7, 16)
    inv = tiny.get_decoder().rotary_emb.inv_freq[:8]
    for d in (0, 5, 1000):
        dst = torch.empty(3, 2, 10, 16)[:, :, 2:9]             # a strided destination, as in assembly
        rotate_keys_into(dst, k, d, inv)
        assert torch.allclose(dst, rotate_keys(k, d, inv), atol=1e-6, rtol=0)


def test_decoding_appends_in_place_and_matches_full_prefill(tiny):
    """The assembled cache has room for the decoded tokens: decoding writes into it (no copy of the
    whole cache per token) and gives the same logits as decoding after a full prefill."""
    prefix, p, fin = rand_ids(6, 1), rand_ids(30, 2), rand_ids(8, 3)
    eng = KVReuseEngine(tiny, None, prefix)
    got = eng.prefill([[]], eng.encode_blocks([p]), fin, reserve=4)
    ref = eng.full_prefill(prefix + p + fin)
    ptr = _cache_kv(got.cache)[0][0].data_ptr()
    n = got.length
    for step, tok in enumerate(rand_ids(4, 5)):
        pos = torch.tensor([[n + step]])
        with torch.no_grad():
            a = tiny(input_ids=torch.tensor([[tok]]), position_ids=pos, **cache_kw(got.cache), use_cache=True).logits
            b = tiny(input_ids=torch.tensor([[tok]]), position_ids=pos, **cache_kw(ref.cache), use_cache=True).logits
        assert torch.allclose(a, b, atol=ATOL, rtol=0)
    keys = _cache_kv(got.cache)[0][0]
    assert keys.shape[-2] == n + 4 and keys.data_ptr() == ptr


@pytest.mark.parametrize("d", [1, 37, 100])
def test_2_rerotation_equals_encoding_at_offset(tiny, d):
    p = rand_ids(25, 4)
    x = torch.tensor([p])

    def kv_at(start):
        with torch.no_grad():
            o = tiny(input_ids=x, position_ids=torch.arange(start, start + len(p))[None], use_cache=True)
        return _cache_kv(o.past_key_values)

    (k0, v0), (kd, vd) = kv_at(0), kv_at(d)
    inv = tiny.model.rotary_emb.inv_freq
    for a, b in zip(k0, kd):
        assert torch.allclose(rotate_keys(a, d, inv), b, atol=ATOL, rtol=0)
        assert not torch.allclose(a, b, atol=ATOL, rtol=0)      # the rotation did something
    for a, b in zip(v0, vd):
        assert torch.allclose(a, b, atol=ATOL, rtol=0)


def test_3_several_passages_equal_block_mask_forward(tiny):
    ps = [rand_ids(n, 10 + n) for n in (20, 13, 27)]
    glues = [rand_ids(2, 50 + i) for i in range(3)]
    fin = rand_ids(7, 60)
    eng = KVReuseEngine(tiny, None, [])
    got = eng.prefill(glues, eng.encode_blocks(ps), fin)
    pieces = []
    for i, (g, p) in enumerate(zip(glues, ps)):
        pieces += [("glue", g), (i, p)]
    ref_logits, ref_cache = block_reference(tiny, pieces + [("final", fin)], None)
    assert torch.allclose(got.logits, ref_logits, atol=ATOL, rtol=0)
    for a, b in zip(_cache_kv(got.cache)[0], _cache_kv(ref_cache)[0]):
        assert torch.allclose(a, b, atol=ATOL, rtol=0)
    # and it is not the same as full attention (the blocks did not see each other)
    full = eng.full_prefill([t for _, toks in pieces for t in toks] + fin)
    assert not torch.allclose(got.logits, full.logits, atol=ATOL, rtol=0)


def test_cached_block_is_reused_across_queries_and_offsets(tiny):
    """One cached entry serves prompts where the passage sits at different offsets."""
    prefix, p, q = rand_ids(5, 70), rand_ids(18, 71), rand_ids(9, 74)
    eng = KVReuseEngine(tiny, None, [])
    e_p, e_q = eng.encode_blocks([p, q])
    fin = rand_ids(6, 72)
    a = eng.prefill([[], []], [e_p, e_q], fin)
    b = eng.prefill([[], []], [e_q, e_p], fin)
    ref_a, _ = block_reference(tiny, [(0, p), (1, q), ("final", fin)], None)
    ref_b, _ = block_reference(tiny, [(0, q), (1, p), ("final", fin)], None)
    assert torch.allclose(a.logits, ref_a, atol=ATOL, rtol=0) and torch.allclose(b.logits, ref_b, atol=ATOL, rtol=0)
    assert not torch.allclose(a.logits, b.logits, atol=ATOL, rtol=0)


def test_4_full_recompute_equals_full_prefill(tiny):
    prefix = rand_ids(6, 80)
    ps = [rand_ids(n, 81 + n) for n in (16, 22, 9)]
    glues = [rand_ids(2, 90 + i) for i in range(3)]
    fin = rand_ids(5, 99)
    eng = KVReuseEngine(tiny, None, prefix)
    entries = eng.encode_blocks(ps)
    ids = prefix + [t for g, p in zip(glues, ps) for t in g + p] + fin
    ref = eng.full_prefill(ids)
    got = eng.prefill(glues, entries, fin, recompute_ratio=1.0)
    assert got.stats["recomputed_passage_tokens"] == sum(map(len, ps))
    assert torch.allclose(got.logits, ref.logits, atol=ATOL, rtol=0)
    for a, b in zip(_cache_kv(got.cache)[0], _cache_kv(ref.cache)[0]):
        assert torch.allclose(a, b, atol=ATOL, rtol=0)
    # partial recompute sits between plain reuse and full prefill, and recomputes ceil(r * n) tokens
    plain = eng.prefill(glues, entries, fin, recompute_ratio=0.0)
    half = eng.prefill(glues, entries, fin, recompute_ratio=0.5)
    assert half.stats["recomputed_passage_tokens"] == math.ceil(0.5 * sum(map(len, ps)))
    err = lambda r: (r.logits - ref.logits).abs().max().item()  # noqa: E731
    assert err(half) < err(plain)


def test_blend_chunked_attention_equals_one_masked_call(tiny):
    """The blend recompute pass on CPU cuts its query rows into chunks that each see only the key
    prefix their mask reaches; eager attention over the whole mask must give the same result."""
    prefix = rand_ids(5, 40)
    ps = [rand_ids(60, 41 + i) for i in range(3)]
    glues = [rand_ids(2, 50 + i) for i in range(3)]
    fin = rand_ids(5, 59)
    eng = KVReuseEngine(tiny, None, prefix)
    entries = eng.encode_blocks(ps)
    got = eng.prefill(glues, entries, fin, recompute_ratio=0.5)
    assert got.stats["recomputed_tokens"] + len(fin) > 64   # more than two chunks of 32 rows
    impl = tiny.config._attn_implementation
    tiny.set_attn_implementation("eager")
    try:
        ref = eng.prefill(glues, entries, fin, recompute_ratio=0.5)
    finally:
        tiny.set_attn_implementation(impl)
    assert torch.allclose(got.logits, ref.logits, atol=ATOL, rtol=0)
    for a, b in zip(_cache_kv(got.cache)[0] + _cache_kv(got.cache)[1], _cache_kv(ref.cache)[0] + _cache_kv(ref.cache)[1]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=0)


def test_blend_selects_the_most_deviating_tokens(tiny):
    """The tokens chosen at r are the top-r by KV deviation on the selection layer."""
    prefix = rand_ids(4, 5)
    ps = [rand_ids(12, 6), rand_ids(12, 7)]
    eng = KVReuseEngine(tiny, None, prefix)
    entries = eng.encode_blocks(ps)
    glues = [[], []]
    res = eng.prefill(glues, entries, rand_ids(3, 8), recompute_ratio=0.25)
    assert res.stats["recomputed_passage_tokens"] == 6
    # the first passage saw the same context as in full attention: zero deviation, never chosen first
    ids = prefix + ps[0] + ps[1]
    K, V = [], []
    pk, pv = eng.prefix_kv()
    for layer in range(3):
        K.append(torch.cat([pk[layer], entries[0].keys[layer][None],
                            rotate_keys(entries[1].keys[layer], 12, eng.inv_freq)[None]], dim=2))
        V.append(torch.cat([pv[layer], entries[0].values[layer][None], entries[1].values[layer][None]], dim=2))
    cache = _buffer_cache(tiny, [k.clone() for k in K], [v.clone() for v in V], len(ids))
    with torch.no_grad():
        devs, (li, h) = eng._select_pass(cache, [ids], [0], [list(range(4, 28))], 1)
    dev = devs[0]
    assert li == 1 and h.shape == (1, 28, 64)
    assert dev[:12].max().item() < 1e-8 and dev[12:].min().item() > 0
    # and the selection pass leaves layers 0 and 1 holding the full-attention KV of every position
    full = _cache_kv(eng.full_prefill(ids).cache)
    for layer in (0, 1):
        assert torch.allclose(cache.layers[layer].keys, full[0][layer], atol=ATOL, rtol=0)
        assert torch.allclose(cache.layers[layer].values, full[1][layer], atol=ATOL, rtol=0)
    assert not torch.allclose(cache.layers[2].values[:, :, 16:], full[1][2][:, :, 16:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("li", [1, 2])
def test_blend_recompute_starts_after_the_selection_layers(tiny, li):
    """Blend's recompute pass starts at layer li from the selection pass's hidden states and runs
    the last layer for the final block only: the same logits and cache as a pass from layer 0 over
    a cache whose layers 0..li hold the full-attention KV and whose other layers hold the reused KV."""
    prefix = rand_ids(5, 60)
    ps = [rand_ids(n, 61 + n) for n in (20, 14, 25)]
    glues = [[], [], []]
    fin = rand_ids(4, 69)
    eng = KVReuseEngine(tiny, None, prefix)
    entries = eng.encode_blocks(ps)
    ids = prefix + ps[0] + ps[1] + ps[2]
    N = len(ids)
    got = eng.prefill(glues, entries, fin, recompute_ratio=0.3, select_layers=li)
    assert len(got.recomputed) == math.ceil(0.3 * 59)
    full = _cache_kv(eng.full_prefill(ids).cache)
    plain = _cache_kv(eng.prefill(glues, entries, fin).cache)
    kb, vb = [], []
    for layer in range(3):
        src = full if layer <= li else plain
        kb.append(torch.cat([src[0][layer][:, :, :N], torch.zeros(1, 2, len(fin), 16)], dim=2))
        vb.append(torch.cat([src[1][layer][:, :, :N], torch.zeros(1, 2, len(fin), 16)], dim=2))
    cache = _buffer_cache(tiny, kb, vb, N)
    with torch.no_grad():
        logits = eng._forward_rows(cache, [ids], [got.recomputed], [N], [fin], [0])
    assert torch.allclose(got.logits, logits, atol=ATOL, rtol=0)
    for a, b in zip(_cache_kv(got.cache)[0] + _cache_kv(got.cache)[1], _cache_kv(cache)[0] + _cache_kv(cache)[1]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=0)


def test_refuses_models_it_cannot_serve(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="kv_reuse"):
        check_supported(gpt2)
    dyn = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    with pytest.raises(ConfigError, match="dynamic"):
        check_supported(dyn)
    folder = tmp_path / "gpt2"
    gpt2.save_pretrained(str(folder))
    tok = make_tiny_lm(tmp_path / "t")
    transformers.AutoTokenizer.from_pretrained(str(tok)).save_pretrained(str(folder))
    from ragkit.generators.hf import HFGenerator

    with pytest.raises(ConfigError, match="decoder-only RoPE|rotary"):
        HFGenerator(model=str(folder), kv_reuse="plain", kv_store=str(tmp_path / "kv")).setup()


# -- the store ------------------------------------------------------------------------------------
def _entry(n=5, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PassageKV(torch.arange(n), torch.randn(layers, 2, n, 8, generator=g),
                     torch.randn(layers, 2, n, 8, generator=g), 3)


def test_store_roundtrip_dtypes_and_namespace(tmp_path):
    ns = {"model_id": "m", "revision": "r", "tokenizer": "t", "prefix": "p"}
    st = KVStore(tmp_path, ns, storage_dtype="float32")
    e = _entry()
    assert st.get("hello") is None
    st.put("hello", e)
    fresh = KVStore(tmp_path, ns, storage_dtype="float32")   # new process: from disk
    got = fresh.get("hello")
    assert torch.equal(got.keys, e.keys) and torch.equal(got.values, e.values) and got.start == 3
    assert fresh.stats["disk_hits"] == 1 and fresh.get("hello") is not None and fresh.stats["memory_hits"] == 1
    half = KVStore(tmp_path, ns, storage_dtype="float16")
    assert half.get("hello") is None                          # dtype is part of the key
    half.put("hello", e)
    h = KVStore(tmp_path, ns, storage_dtype="float16").get("hello", dtype=torch.float32)
    assert h.keys.dtype == torch.float32 and torch.allclose(h.keys, e.keys, atol=1e-2)
    assert half.disk_bytes() < st.disk_bytes()
    other = KVStore(tmp_path, {**ns, "prefix": "q"})
    assert other.get("hello") is None and other.key("hello") != st.key("hello")
    assert (st.folder / "namespace.json").exists()


def test_store_lru_is_bounded_in_bytes(tmp_path):
    e = _entry()
    st = KVStore(tmp_path, {"m": 1}, memory_bytes=int(e.nbytes * 2.5), write=False)
    for i in range(5):
        st.put(f"t{i}", e)
    assert st.memory_used <= st.memory_bytes and len(st._lru) == 2
    assert st.get("t0") is None and st.get("t4") is not None   # write=False: evicted means gone


def test_store_corrupt_entry_is_a_clear_error(tmp_path):
    st = KVStore(tmp_path, {"m": 1})
    st.put("x", _entry())
    st.path(st.key("x")).write_bytes(b"garbage")
    with pytest.raises(IndexArtifactError, match="corrupt passage KV"):
        KVStore(tmp_path, {"m": 1}).get("x")


def test_indexer_fills_the_store_the_generator_reads(tmp_path):
    from ragkit.generators.hf import HFGenerator
    from ragkit.indexers.kv import KVIndexer
    from ragkit.records import Chunk, Hit, Query, Ranking

    lm = make_tiny_lm(tmp_path / "lm")
    chunks = [Chunk("c1", "d1", "george orwell wrote animal farm .", 0, 33, {"title": "animal farm"}),
              Chunk("c2", "d2", "paris is the capital of france .", 0, 32),
              Chunk("c3", "d3", "berlin is the capital of germany .", 0, 34)]
    ix = KVIndexer(model=str(lm), store=str(tmp_path / "kv"), batch_size=2)
    assert ix(chunks) == chunks
    assert ix._last_stats["computed"] == 3 + 20     # passages + glue blocks [1]..[20]
    ix(chunks)
    assert ix._last_stats["computed"] == 0         # incremental
    hits = tuple(Hit("q", c.doc_id, 3.0 - i, 0, c.text, c.chunk_id, c.meta) for i, c in enumerate(chunks))
    r = Ranking(Query("q", "who wrote animal farm ?"), hits)
    for mode in ("plain", "blend"):
        a = HFGenerator(model=str(lm), kv_reuse=mode, kv_store=str(tmp_path / "kv"), max_new_tokens=4)([r])[0]
        assert a.meta["kv_blocks_computed"] == 0
    # batched block encoding (right padding) equals one-by-one encoding
    assert ix.kv_store.disk_bytes() > 0
    e = HFGenerator(model=str(lm), kv_reuse="plain", kv_store=str(tmp_path / "kv2")).setup()._engine
    blocks = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    together = e.encode_blocks(blocks)
    for b, t in zip(blocks, together):
        alone = e.encode_blocks([b])[0]
        assert torch.allclose(alone.keys, t.keys, atol=ATOL) and torch.allclose(alone.values, t.values, atol=ATOL)


# -- real SmolLM2 ---------------------------------------------------------------------------------
@pytest.mark.model
def test_smollm2_exactness(smol):
    tok, model = smol
    from ragkit.kv.prompt import PromptTemplate, build_segments, prefix_ids

    t = PromptTemplate()
    texts = ["Paris is the capital and most populous city of France, on the Seine.",
             "Berlin is the capital of Germany and its largest city by population.",
             "The Danube flows through Vienna, Bratislava, Budapest and Belgrade."]
    seg = build_segments(tok, t, "What is the capital of France?", [(x, None) for x in texts],
                         prefix=prefix_ids(tok, t))
    eng = KVReuseEngine(model, None, seg.prefix)
    entries = eng.encode_blocks(seg.blocks)
    ref = eng.full_prefill(seg.ids())
    # (4) full recompute == full prefill
    got = eng.prefill(seg.glues, entries, seg.final, recompute_ratio=1.0)
    assert torch.allclose(got.logits, ref.logits, atol=ATOL * 10, rtol=1e-4)
    # the same greedy token, unless the reference's top two logits are closer than the tolerance
    # (then either is a correct greedy choice and the pick depends on the CPU's float path)
    top2 = ref.logits.flatten().float().topk(2).values
    assert got.logits.argmax() == ref.logits.argmax() or float(top2[0] - top2[1]) < ATOL * 10
    # (1) one passage, no glue
    one = eng.prefill([[]], entries[:1], seg.final)
    ref1 = eng.full_prefill(seg.prefix + seg.blocks[0] + seg.final)
    assert torch.allclose(one.logits, ref1.logits, atol=ATOL * 10, rtol=1e-4)
    # (3) no prefix, several passages vs the block-mask forward
    eng0 = KVReuseEngine(model, None, [])
    got3 = eng0.prefill(seg.glues, eng0.encode_blocks(seg.blocks), seg.final)
    pieces = []
    for i, (g, b) in enumerate(zip(seg.glues, seg.blocks)):
        pieces += [("glue", g), (i, b)]
    ref3, _ = block_reference(model, pieces + [("final", seg.final)], None)
    assert torch.allclose(got3.logits, ref3, atol=ATOL * 10, rtol=1e-4)
    # (2) re-rotation at larger offsets: relative tolerance (fp32 RoPE drifts with position)
    x = torch.tensor([seg.blocks[0]])
    inv = model.model.rotary_emb.inv_freq
    with torch.no_grad():
        k0 = _cache_kv(model(input_ids=x, use_cache=True).past_key_values)[0]
        for d in (100, 1000, 4000):
            pos = torch.arange(d, d + x.shape[1])[None]
            kd = _cache_kv(model(input_ids=x, position_ids=pos, use_cache=True).past_key_values)[0]
            for a, b in zip(k0, kd):
                rel = (rotate_keys(a, d, inv) - b).abs().max() / b.abs().max()
                assert rel < (1e-5 if d <= 100 else 1e-3)


def test_3c_cached_glue_blocks_equal_block_mask_forward(tiny):
    """Glue tokens cached as blocks of their own (the generator's default) are blocks in the mask too."""
    ps = [rand_ids(n, 20 + n) for n in (11, 17)]
    glues = [rand_ids(3, 40 + i) for i in range(2)]
    fin = rand_ids(5, 45)
    eng = KVReuseEngine(tiny, None, [])
    got = eng.prefill(eng.encode_blocks(glues), eng.encode_blocks(ps), fin)
    pieces = [("g0", glues[0]), (0, ps[0]), ("g1", glues[1]), (1, ps[1])]
    ids, owner = [], []
    for kind, toks in pieces + [("final", fin)]:
        ids += toks
        owner += [kind] * len(toks)
    n = len(ids)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for i in range(n):
        if owner[i] != "final":
            allowed[i] &= torch.tensor([o == owner[i] for o in owner])
    mask = torch.zeros(1, 1, n, n).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = tiny(input_ids=torch.tensor([ids]), attention_mask=mask, position_ids=torch.arange(n)[None]).logits[:, -1]
    assert torch.allclose(got.logits, ref, atol=ATOL, rtol=0)
    full = eng.full_prefill(ids)
    assert torch.allclose(eng.prefill(eng.encode_blocks(glues), eng.encode_blocks(ps), fin,
                                      recompute_ratio=1.0).logits, full.logits, atol=ATOL, rtol=0)


def test_prompt_buffers_are_reused_only_after_their_cache_is_gone(tiny):
    import gc

    prefix = rand_ids(4, 120)
    ps = [rand_ids(10, 121), rand_ids(12, 122)]
    fin = rand_ids(3, 123)
    eng = KVReuseEngine(tiny, None, prefix)
    entries = eng.encode_blocks(ps)
    ptr = lambda r: r.cache.layers[0].kbuf.untyped_storage().data_ptr()  # noqa: E731
    a = eng.prefill([[], []], entries, fin, recompute_ratio=0.3)
    b = eng.prefill([[], []], entries, fin, recompute_ratio=0.3)
    assert ptr(a) != ptr(b)                       # a's cache is alive: its memory is not handed out again
    first, ref = ptr(b), b.logits.clone()
    logits_a = a.logits.clone()
    del a, b
    gc.collect()
    c = eng.prefill([[], []], entries, fin, recompute_ratio=0.3)
    assert ptr(c) == first and torch.equal(c.logits, ref) and torch.equal(c.logits, logits_a)
