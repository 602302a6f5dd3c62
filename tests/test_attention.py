"""The attention hook and the attention-level methods (generators/_attention.py, _attnrun.py,
rerankers/attention.py): tiny random Llama (fast tier), SmolLM2 (model tier)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragkit.errors import MissingDependencyError, ModelNotFoundError

from ._integration import import_or_unavailable, unavailable

from ragkit._hfcompat import cache_kw, output_cache

torch = import_or_unavailable("torch", "llm")
import_or_unavailable("transformers", "llm")

from ragkit.errors import ConfigError  # noqa: E402
from ragkit.generators import _attnrun  # noqa: E402
from ragkit.generators._attention import (ACT, AttentionContext, DocMassRescale, ParallelFix, Reader,  # noqa: E402
                                          active, check_family, install_hook, parse_heads, parse_layers)
from ragkit.generators.hf import HFGenerator  # noqa: E402
from ragkit.pipeline import Pipeline  # noqa: E402
from ragkit.records import Hit, Query, Ranking  # noqa: E402

from ._tinylm import make_tiny_lm  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("attn") / "lm", layers=3)


def load(path, attn="sdpa"):
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn, dtype=torch.float32)
    return m.eval()


def ranking(qid="q1", q="who wrote animal farm ?"):
    return Ranking(Query(qid, q), (
        Hit(qid, "d1", 4.0, 0, "george orwell wrote animal farm .", meta={"title": "animal farm"}),
        Hit(qid, "d2", 3.0, 0, "paris is the capital of france ."),
        Hit(qid, "d3", 2.0, 0, "berlin is the capital of germany .", meta={"title": "berlin"}),
        Hit(qid, "d4", 1.0, 0, "the river and the sea and the mountain .")))


IDS = [2, 30, 31, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52]


# -- the hook ----------------------------------------------------------------------------------------
def test_hook_without_method_is_bit_identical(tiny):
    ref = load(tiny)
    hooked = load(tiny)
    assert install_hook(hooked) == "ragkit_attn__sdpa"
    assert install_hook(hooked) == "ragkit_attn__sdpa"          # idempotent
    x = torch.tensor([IDS])
    with torch.no_grad():
        a = ref(x, use_cache=True)
        b = hooked(x, use_cache=True)
        assert torch.equal(a.logits, b.logits)
        # an active context whose methods touch no layer, and a read-only method: still identical
        for ctx in (AttentionContext(0, readers=[Reader("final", layers=[99])]),
                    AttentionContext(8, readers=[Reader("final"), Reader("last", entropy=True)])):
            with active(ctx):
                c = hooked(x, use_cache=True)
            assert torch.equal(a.logits, c.logits)
        # decode step too
        nxt = torch.tensor([[33]])
        da = ref(nxt, **cache_kw(output_cache(a)), use_cache=True)
        with active(AttentionContext(8, readers=[Reader("last")])):
            db = hooked(nxt, **cache_kw(output_cache(b)), use_cache=True)
        assert torch.equal(da.logits, db.logits)


def test_generator_with_read_only_method_answers_identically(tiny):
    plain = HFGenerator(model=str(tiny), max_new_tokens=6, device="cpu")
    guarded = HFGenerator(model=str(tiny), max_new_tokens=6, device="cpu", guard="flag", guard_heads=["*"],
                          guard_threshold=0.0)
    a, b = plain([ranking()])[0], guarded([ranking()])[0]
    assert a.text == b.text and a.meta["new_tokens"] == b.meta["new_tokens"]
    assert b.meta["guard"]["flagged"] is False and 0 < b.meta["guard"]["focus"] < 1
    assert b.meta["prefills"] == 1            # the focus score is read off the answer's own prefill


def test_reader_rows_equal_eager_attention(tiny):
    eager = load(tiny, "eager")
    hooked = load(tiny)
    install_hook(hooked)
    x = torch.tensor([IDS])
    with torch.no_grad():
        ref = eager(x, output_attentions=True).attentions          # per layer [1, H, T, T]
        rf, rl = Reader("final"), Reader("last")
        with active(AttentionContext(10, readers=[rf, rl])):
            hooked(x)
    for li, att in enumerate(ref):
        torch.testing.assert_close(rl.record[li], att[0, :, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rf.record[li], att[0, :, 10:].mean(1), atol=1e-5, rtol=1e-4)


class _Identity:
    needs = "full"

    def touches(self, layer):
        return True

    def apply(self, layer, probs, logits, qpos, ctx):
        return probs


def test_eager_rewrite_path_matches_kernel(tiny):
    """The hook's own eager attention (used when a method rewrites) agrees with the kernel."""
    m = load(tiny)
    x = torch.tensor([IDS])
    with torch.no_grad():
        ref = m(x, use_cache=True)
        install_hook(m)
        with active(AttentionContext(10, rewriters=[_Identity()])):
            out = m(x, use_cache=True)
            step = m(torch.tensor([[33]]), **cache_kw(output_cache(out)), use_cache=True)
        ref_step = load(tiny)(torch.tensor([IDS + [33]])).logits[:, -1]
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step.logits[:, -1], ref_step, atol=1e-4, rtol=1e-4)


def test_family_and_config_refusals(tmp_path, tiny):
    gpt2 = make_tiny_lm(tmp_path / "gpt2", arch="gpt2")
    import transformers

    with pytest.raises(ConfigError, match="llama, qwen2, mistral"):
        check_family(transformers.AutoModelForCausalLM.from_pretrained(str(gpt2)))
    with pytest.raises(ConfigError, match="llama, qwen2, mistral"):
        HFGenerator(model=str(gpt2), act_heads=["*"], device="cpu").setup()
    with pytest.raises(ConfigError, match="flash_attention_2"):
        HFGenerator(act_heads=["*"], attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError, match="kv_reuse"):
        HFGenerator(kv_temperature=0.5)
    with pytest.raises(ConfigError, match="guard_heads"):
        HFGenerator(guard="flag")
    with pytest.raises(ConfigError, match="layer:head"):
        HFGenerator(model=str(tiny), act_heads=["x:y"], device="cpu").setup()
    with pytest.raises(ConfigError, match="out of range"):
        HFGenerator(model=str(tiny), act_heads=["7:0"], device="cpu").setup()
    assert parse_heads(["1:2", "-1:*"], 3, 4) == {1: [2], 2: [0, 1, 2, 3]}
    assert parse_layers("auto", 30) == list(range(15, 30)) and parse_layers("2-4", 30) == [2, 3, 4]
    with pytest.raises(ConfigError):
        parse_layers("40-50", 30)


def _probe_file(path: Path, L: int, H: int, **over) -> Path:
    gen = torch.Generator().manual_seed(0)
    d = {"format": _attnrun.GuardProbe.FORMAT, "model": "tiny", "intercept": 0.3, "drop_heads": ["1:0"],
         "weights": torch.randn(L, H, generator=gen).tolist(), "mean": (torch.rand(L, H, generator=gen) * 0.2).tolist(),
         "std": (0.05 + torch.rand(L, H, generator=gen) * 0.1).tolist()}
    d.update(over)
    path.write_text(json.dumps(d))
    return path


def test_guard_probe_scores_every_heads_focus(tiny, tmp_path):
    cfg = json.loads((tiny / "config.json").read_text())
    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    f = _probe_file(tmp_path / "probe.json", L, H)
    r = ranking()
    g = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, guard="flag", guard_probe=str(f),
                    guard_threshold=0.5)
    a = g([r])[0]
    # the score is the probe's P(benign) of the [layers, heads] focus matrix the head selection reads
    d = json.loads(f.read_text())
    focus = _attnrun.head_focus(g, r.query.text, r.hits)
    z = (((focus - torch.tensor(d["mean"])) / torch.tensor(d["std"])) * torch.tensor(d["weights"])).sum() + d["intercept"]
    assert a.meta["guard"]["focus"] == pytest.approx(float(torch.sigmoid(z)), abs=1e-5)
    assert a.meta["guard"]["flagged"] == (a.meta["guard"]["focus"] < 0.5)
    # drop mode removes the passage the probe's drop_heads attend to most
    dropped = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, guard="drop", guard_probe=str(f),
                          guard_threshold=1.0)([r])[0]
    assert dropped.meta["guard"]["flagged"] and len(dropped.meta["guard"]["dropped"]) == 1
    # relative to the pipeline file, round-trips through YAML
    from ragkit.retrievers.bm25 import BM25Retriever
    p = Pipeline([BM25Retriever(index="idx", k=5, text=True), HFGenerator(model=str(tiny), guard="flag",
                                                                          guard_probe="probe.json")])
    (tmp_path / "p.yaml").write_text(p.to_yaml())
    q = Pipeline.from_yaml(tmp_path / "p.yaml")
    assert q == p
    g2 = q.stages[-1].bind_context(base_dir=q.base_dir).setup()     # as the pipeline binds it before a run
    assert g2._guard_probe is not None and g2._guard_heads == {1: [0]}


def test_guard_probe_bad_files_are_named(tiny, tmp_path):
    cfg = json.loads((tiny / "config.json").read_text())
    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]

    def err(f):
        with pytest.raises(ConfigError) as e:
            HFGenerator(model=str(tiny), device="cpu", guard="flag", guard_probe=str(f)).setup()
        return str(e.value)
    assert "no probe file" in err(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    assert "bad.json" in err(tmp_path / "bad.json") and "JSON" in err(tmp_path / "bad.json")
    assert "'format'" in err(_probe_file(tmp_path / "fmt.json", L, H, format="other"))
    m = err(_probe_file(tmp_path / "shape.json", L, H, weights=[[0.0] * H] * (L + 1)))
    assert "'weights'" in m and f"{L} layers x {H} heads" in m and "shape.json" in m
    assert "'std'" in err(_probe_file(tmp_path / "std.json", L, H, std=[[0.0] * H] * L))
    assert "'intercept'" in err(_probe_file(tmp_path / "icpt.json", L, H, intercept="x"))
    with pytest.raises(ConfigError, match="give one"):
        HFGenerator(guard="flag", guard_heads=["*"], guard_probe="p.json")


def test_yaml_round_trip_and_stages_listing(tiny, capsys):
    from ragkit.cli import main
    from ragkit.retrievers.bm25 import BM25Retriever

    g = HFGenerator(model=str(tiny), act_heads=["1:*"], act_beta=0.3, fim=True, fim_temperature=0.05, fim_layers="1-2",
                    attention_sort_rounds=2, guard="drop", guard_heads=["0:1"], guard_threshold=0.2)
    retr = BM25Retriever(index="idx", k=5, text=True)   # a file's pipeline must start from queries
    p = Pipeline([retr, g])
    assert Pipeline.from_yaml(p.to_yaml()) == p
    g2 = HFGenerator(model=str(tiny), kv_reuse="plain", kv_temperature=0.6, kv_scale=0.9, kv_top_blocks=2)
    assert Pipeline.from_yaml(Pipeline([retr, g2]).to_yaml()) == Pipeline([retr, g2])
    assert main(["stages", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in data["generator.hf"]["params"]}
    assert {"act_heads", "act_tau", "act_beta", "fim", "fim_temperature", "fim_layers", "attention_sort_rounds",
            "guard", "guard_heads", "kv_temperature", "kv_scale", "kv_top_blocks"} <= names
    assert {"calibrated", "bias", "dummy", "layers"} <= {p["name"] for p in data["reranker.attention"]["params"]}


# -- method mechanics on synthetic attention ----------------------------------------------------------
def _probs(B=1, H=2, q=6, T=6, seed=0, causal=True):
    g = torch.Generator().manual_seed(seed)
    lg = torch.randn(B, H, q, T, generator=g)
    lg[..., 0] += 3.0            # a BOS sink
    lg[..., 2] += 2.5            # another sink
    qpos = torch.arange(T - q, T)
    if causal:
        lg = lg.masked_fill(torch.arange(T).view(1, -1) > qpos.view(-1, 1), float("-inf"))
    return lg, torch.softmax(lg, -1), qpos


def test_act_sink_test_scaling_and_row_sums():
    lg, P, qpos = _probs()
    act = ACT({0: [0, 1]}, tau=0.1, beta=0.4)
    out = act.apply(0, P, lg, qpos, None)
    sink = act.sinks[0][0]                                  # [heads, T]
    s = P[0].sum(1) / torch.tensor([6, 5, 4, 3, 2, 1.0])    # s_j = sum_i A[i, j] / (q - j)
    assert torch.equal(sink, (s > 0.1) & (torch.arange(6) != 0))
    assert bool(sink[:, 2].all()) and not bool(sink[:, 0].any())    # column 2 a sink, BOS exempt
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2, 6))
    m = sink.unsqueeze(1).expand(2, 6, 6)
    torch.testing.assert_close(out[0][m], P[0][m] * 0.4)          # sink columns scaled by beta
    torch.testing.assert_close(out[0][..., 0], P[0][..., 0])      # BOS untouched
    # receivers: proportional to their attention
    recv = ~m.clone() & (P[0] > 0)
    recv[..., 0] = False
    ratio = out[0][recv] / P[0][recv]
    for h in range(2):
        for i in range(6):
            r = recv[h, i]
            if r.any():
                vals = out[0, h, i][r] / P[0, h, i][r]
                torch.testing.assert_close(vals, vals[0].expand_as(vals))
    assert bool((ratio >= 1 - 1e-6).all())
    # decode: one row, the prompt's sinks reused; row sums to 1
    lg1, P1, _ = _probs(q=1, T=7, seed=1, causal=False)
    out1 = act.apply(0, P1, lg1, torch.tensor([6]), None)
    torch.testing.assert_close(out1.sum(-1), torch.ones(1, 2, 1))
    torch.testing.assert_close(out1[0, :, 0, 2], P1[0, :, 0, 2] * 0.4)


def test_act_row_without_receivers_has_no_nan():
    P = torch.zeros(1, 1, 2, 3)
    P[0, 0, 0, 0] = 1.0                      # first row sees only BOS
    P[0, 0, 1, :2] = torch.tensor([0.3, 0.7])
    P[0, 0, 1, 2] = 0.0                      # second row: BOS and a sink only
    act = ACT({0: [0]}, tau=0.1)
    act.sinks[0] = torch.tensor([[[False, True, False]]]).squeeze(0)
    out = act.apply(0, P[:, :, 1:], P[:, :, 1:].log(), torch.tensor([2]), None)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, P[:, :, 1:])          # nothing to receive the mass: unchanged


def test_doc_mass_rescale_keeps_total_and_hits_targets():
    lg, P, qpos = _probs(q=3, T=12, seed=3, causal=False)
    ctx = AttentionContext(9, doc_spans=[(1, 4), (4, 6), (6, 9)])
    rel = [0.02, -0.01, 0.05]
    w = DocMassRescale([0], rel, temperature=0.02)
    out = w.apply(0, P, lg, qpos, ctx)
    mass = lambda X: torch.stack([X[..., a:b].sum(-1) for a, b in ctx.doc_spans], -1)  # noqa: E731
    torch.testing.assert_close(mass(out).sum(-1), mass(P).sum(-1))         # total document mass unchanged
    target = torch.softmax(torch.tensor(rel) / 0.02, 0)
    torch.testing.assert_close(mass(out) / mass(out).sum(-1, keepdim=True), target.expand_as(mass(out)))
    torch.testing.assert_close(out[..., [0, 9, 10, 11]], P[..., [0, 9, 10, 11]])   # other keys untouched
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)))
    # inside a document the tokens keep their relative weights
    torch.testing.assert_close(out[..., 1:4] / out[..., 1:4].sum(-1, keepdim=True), P[..., 1:4] / P[..., 1:4].sum(-1, keepdim=True))
    # mix: each mass moves that share of the way to its target; 0 leaves the probabilities as they are
    half = DocMassRescale([0], rel, temperature=0.02, mix=0.5).apply(0, P, lg, qpos, ctx)
    torch.testing.assert_close(mass(half), 0.5 * mass(P) + 0.5 * mass(out))
    torch.testing.assert_close(half.sum(-1), torch.ones_like(half.sum(-1)))
    torch.testing.assert_close(DocMassRescale([0], rel, temperature=0.02, mix=0.0).apply(0, P, lg, qpos, ctx), P)


def test_parallel_fix_temperature_scale_and_selection():
    lg, P, qpos = _probs(q=2, T=12, seed=5, causal=False)
    ctx = AttentionContext(9, doc_spans=[(1, 4), (4, 6), (6, 9)], context_span=(1, 9))
    assert torch.equal(ParallelFix().apply(0, P, lg, qpos, ctx), P)
    out = ParallelFix(temperature=0.5, scale=0.7).apply(0, P, lg, qpos, ctx)
    w = lg.exp().clone()
    w[..., 1:9] = 0.7 * (lg[..., 1:9] / 0.5).exp()
    torch.testing.assert_close(out, w / w.sum(-1, keepdim=True))
    out = ParallelFix(top_blocks=1).apply(0, P, lg, qpos, ctx)
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)))
    masses = torch.stack([out[..., a:b].sum(-1) for a, b in ctx.doc_spans], -1)
    assert bool(((masses > 0).sum(-1) == 1).all())
    kept = torch.stack([P[..., a:b].sum(-1) for a, b in ctx.doc_spans], -1).argmax(-1)
    assert torch.equal(masses.argmax(-1), kept)


# -- methods end to end on the tiny model ------------------------------------------------------------
def test_instruction_positions_from_offsets(tiny):
    g = HFGenerator(model=str(tiny), device="cpu", guard="flag", guard_heads=["*"]).setup()
    from ragkit.kv.prompt import build_segments

    d = g.__dict__
    r = ranking()
    seg = build_segments(d["_tok"], d["_template"], r.query.text, _attnrun._pairs(r.hits), 0, prefix=d["_prefix"])
    pos = _attnrun.instruction_positions(g, seg, r.query.text)
    ids = seg.ids()
    spans, cspan, fstart = _attnrun.layout(seg)
    text = d["_tok"].decode([ids[p] for p in pos if p < cspan[0]])
    assert "helpful" in text and "numbered passages" in text            # the system message
    fin = d["_tok"].decode([ids[p] for p in pos if p >= fstart])
    assert "who wrote animal farm" in fin and "answer briefly" in fin.lower()
    assert not any(a <= p < b for p in pos for a, b in spans)            # no data token


def test_sorting_guard_fim_and_act_run(tiny, tmp_path):
    r = ranking()
    s = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, attention_sort_rounds=3)([r])[0]
    assert 1 <= s.meta["attention_sort_rounds"] <= 3 and sorted(s.meta["attention_order"]) == ["d1", "d2", "d3", "d4"]
    # the returned order is stable: one more sorting pass on it keeps it
    g = HFGenerator(model=str(tiny), device="cpu", attention_sort_rounds=1).setup()
    hits = {h.doc_id: h for h in r.hits}
    order = [hits[x] for x in s.meta["attention_order"]]
    rd = Reader("last")
    pf = _attnrun.prefill(g, r.query.text, _attnrun._pairs(order), [rd])
    sc = _attnrun.passage_scores(rd, pf.ctx.doc_spans)
    if s.meta["attention_sort_rounds"] < 3:
        assert sc == sorted(sc)
    d = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, guard="drop", guard_heads=["*"],
                    guard_threshold=1.0, guard_max_drops=2)([r])[0]
    assert d.meta["guard"]["flagged"] and len(d.meta["guard"]["dropped"]) == 2
    assert all(c not in d.meta["guard"]["dropped"] for c in d.citations)
    f = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, fim=True, fim_layers="1-2")([r])[0]
    assert len(f.meta["fim_relevance"]) == 4 and f.meta["prefills"] == 3
    a = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=3, act_heads=["0:*", "2:1"], act_tau=0.05)([r])[0]
    assert a.meta["act_sinks"] >= 0 and isinstance(a.text, str)


def test_final_block_over_a_reused_prefix_equals_the_full_prefill(tiny):
    """Found in the middle reruns only the final block over the relevance pass's prompt: the same
    logits, cache and decoded tokens as a full prefill with the rewriter (fp32 tolerance), the source
    prefill left as it was; not taken with a full rewriter (ACT) or other passages."""
    import torch

    from ragkit.generators._attention import ACT, DocMassRescale, active
    from ragkit.generators._decode import decode
    from ragkit.kv.reuse import _cache_kv

    r = ranking()
    g = HFGenerator(model=str(tiny), device="cpu", max_new_tokens=4, fim=True, fim_layers="1-2").setup()
    pairs = _attnrun._pairs(r.hits)
    src = _attnrun.prefill(g, r.query.text, pairs, [Reader("final")])
    before = [k.clone() for k in _cache_kv(src.cache)[0]]

    def fim():
        return [DocMassRescale(g._fim_layers, [0.3, -0.1, 0.5, 0.0], 0.05)]
    full = _attnrun.prefill(g, r.query.text, pairs, [Reader("last")], fim())
    part = _attnrun.prefill(g, r.query.text, pairs, [Reader("last")], fim(), reuse=src)
    assert part.stats["prefix_reused_tokens"] == part.ctx.final_start > 0 and "prefix_reused_tokens" not in full.stats
    torch.testing.assert_close(part.logits, full.logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(_cache_kv(part.cache)[0], _cache_kv(full.cache)[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, _cache_kv(src.cache)[0]))     # source untouched
    outs = []
    for pf in (full, part):
        with active(pf.ctx), torch.no_grad():
            outs.append(decode(g._model, g._tok, pf.logits, pf.cache, params=g._decode_params(), eos_ids=g._eos,
                               next_pos=torch.tensor([pf.length]))[0].text)
    assert outs[0] == outs[1]
    act = _attnrun.prefill(g, r.query.text, pairs, [], [ACT({0: [0]})], reuse=src)
    other = _attnrun.prefill(g, r.query.text, pairs[::-1], [], fim(), reuse=src)
    assert "prefix_reused_tokens" not in act.stats and "prefix_reused_tokens" not in other.stats


def test_kv_reuse_with_fixes_and_entropy(tiny, tmp_path):
    r = ranking()
    kw = dict(model=str(tiny), device="cpu", max_new_tokens=3, kv_store=str(tmp_path / "kv"))
    base = HFGenerator(kv_reuse="plain", **kw)([r])[0]
    same = HFGenerator(kv_reuse="plain", kv_top_blocks=4, **kw)([r])[0]     # keeping all 4 blocks: a no-op
    assert same.text == base.text
    g = HFGenerator(kv_reuse="plain", kv_temperature=0.5, **kw).setup()
    ents = []
    for fix in ([], [ParallelFix(temperature=0.5)]):
        rd = Reader("last", entropy=True)
        _attnrun.prefill(g, r.query.text, _attnrun._pairs(r.hits), [rd], fix)
        ents.append(sum(float(v.mean()) for v in rd.entropy.values()))
    assert ents[1] < ents[0]          # sharpening the parallel blocks' logits lowers the entropy
    b = HFGenerator(kv_reuse="blend", kv_scale=0.8, act_heads=["1:*"], **kw)([r])[0]
    assert b.meta["attention_hook"] == "ragkit_sdpa"


def test_attention_reranker(tiny):
    from ragkit.rerankers.attention import AttentionReranker

    r = ranking()
    cal = AttentionReranker(model=str(tiny), device="cpu", top_n=3)
    van = AttentionReranker(model=str(tiny), device="cpu", top_n=3, calibrated=False)
    out_c, out_v = cal([r])[0], van([r])[0]
    assert [h.doc_id for h in out_c.hits][3:] == ["d4"] == [h.doc_id for h in out_v.hits][3:]   # tail kept below
    sc, info = cal.scores(r, list(r.hits[:3]))
    assert len(info["bias"]) == 3
    for s, v, b in zip(sc, info["vanilla"], info["bias"]):
        assert math.isclose(s, v - b, rel_tol=1e-6, abs_tol=1e-9)
    vs = {h.doc_id: h.score for h in out_v.hits[:3]}
    for h, v in zip(r.hits[:3], info["vanilla"]):
        assert math.isclose(vs[h.doc_id], v, rel_tol=1e-5, abs_tol=1e-7)


# -- SmolLM2 -----------------------------------------------------------------------------------------
@pytest.mark.model
def test_smollm2_hook_bit_identical_and_reader():
    from ragkit.models import load_causal_lm

    try:
        tok, ref, _ = load_causal_lm("smollm2-135m-instruct", "cpu", "float32", "sdpa")
        _, hooked, _ = load_causal_lm("smollm2-135m-instruct", "cpu", "float32", "sdpa")
        _, eager, _ = load_causal_lm("smollm2-135m-instruct", "cpu", "float32", "eager")
    except (ModelNotFoundError, MissingDependencyError) as exc:  # pragma: no cover - depends on installed weights
        unavailable(f"SmolLM2 weights ({exc})")
    install_hook(hooked)
    x = torch.tensor([tok("The capital of France is Paris. The capital of Germany is")["input_ids"]])
    with torch.no_grad():
        a = ref(x).logits
        rd = Reader("last")
        with active(AttentionContext(x.shape[1] - 3, readers=[rd])):
            b = hooked(x).logits
        att = eager(x, output_attentions=True).attentions
    assert torch.equal(a, b)
    for li in (0, 15, 29):
        torch.testing.assert_close(rd.record[li], att[li][0, :, -1], atol=1e-5, rtol=1e-4)
