"""Passage-KV reuse benchmark: time to first token, answer quality, store size.

Three prefill modes of ``generator.hf`` in the same process, interleaved per repeat:
``none`` (full prefill), ``plain`` (reuse, r = 0) and ``blend`` (reuse + CacheBlend, r = 0.15).

  python benchmarks/bench_kv.py ttft    --repeats 3 --sizes 5,10,20,40     # TTFT at ~1k/2k/4k/8k tokens
  python benchmarks/bench_kv.py quality --passages 10 --questions 40       # NQ-open lost-in-the-middle
                                      [--extra-ratios 0.5]               #   + more blend ratios
                                      [--extra-select-layers 4]          #   + blend selecting on layer 4
  python benchmarks/bench_kv.py store                                      # bytes, load vs recompute
  python benchmarks/bench_kv.py throughput --questions 8 --batches 1,4,8   # questions/s with batching
  python benchmarks/bench_kv.py --adapter smollm2-rag ttft --sizes 20   # the same with the tuned (merged) model
  python benchmarks/bench_kv.py report                                     # kv.md + kv_ttft.png
                                         (hand-written notes in kv.md between <!-- keep:NAME --> lines stay)

Results go to benchmarks/results/kv_*.json; ``report`` renders them. Passages come from
../shared/data/lost_in_the_middle (NQ-open gold Wikipedia passages).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "lost_in_the_middle" / "nq-open-oracle.part-a.jsonl.gz"
RES = ROOT / "benchmarks" / "results"
MODES = {"none": {}, "plain": {"kv_reuse": "plain"}, "blend": {"kv_reuse": "blend", "recompute_ratio": 0.15}}
# ``ttft --fixes``: the training-free parallel-encoding fixes of generator.hf (docs/attention.md)
FIX_MODES = {"plain T=0.8": {"kv_reuse": "plain", "kv_temperature": 0.8},
             "plain S=0.8": {"kv_reuse": "plain", "kv_scale": 0.8},
             "plain top-3 blocks": {"kv_reuse": "plain", "kv_top_blocks": 3},
             "blend T=0.8": {"kv_reuse": "blend", "recompute_ratio": 0.15, "kv_temperature": 0.8}}


def rows() -> list[dict]:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def gold(row: dict) -> dict:
    for c in row["ctxs"]:
        if c.get("isgold"):
            return c
    return row["ctxs"][0]


def synthetic_passages(n: int, words: int = 260, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (title, text) passages of ``words`` words drawn (seeded) from the project's own docs, for
    machines without ../shared/data (the TTFT benchmark measures time, not answers)."""
    vocab = sorted(set(re.findall(r"[A-Za-z]{3,}", " ".join(p.read_text(encoding="utf-8")
                                                            for p in sorted((ROOT / "docs").glob("*.md"))))))
    rng = random.Random(seed)
    return [(f"Passage {i}", " ".join(rng.choice(vocab) for _ in range(words)) + ".") for i in range(n)]


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_start": os.getloadavg(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


DEVICE = {"device": "cpu", "dtype": "float32", "adapter": ""}     # --device / --dtype / --adapter


def generators(store: str, max_new: int, max_passages: int, max_tokens: int, modes: dict | None = None, **kw):
    from ragkit.generators.hf import HFGenerator

    gens = {m: HFGenerator(model="smollm2-135m-instruct", device=DEVICE["device"], dtype=DEVICE["dtype"],
                           adapter=DEVICE["adapter"], max_new_tokens=max_new,
                           max_passages=max_passages, max_passage_tokens=max_tokens, kv_store=store,
                           kv_memory_mb=4096, **kw, **extra).setup() for m, extra in (modes or MODES).items()}
    # one model in memory, shared by the three modes (same weights; the engines keep their own stores);
    # a mode with an attention-level fix keeps its own model, which carries the attention hook
    from ragkit.kv.reuse import use_gqa_sdpa

    base = gens["none"]._model
    use_gqa_sdpa(base)   # as each engine did on its own model (full prefill passes no mask: unaffected)
    for m, g in gens.items():
        if m not in MODES:
            continue
        g._model = base
        eng = getattr(g, "_engine", None)
        if eng is not None:
            eng.model, eng.base = base, base.get_decoder()
    return gens


# -- time to first token ------------------------------------------------------------------------------
def ttft(args) -> None:
    from ragkit.records import Hit, Query, Ranking

    tok_len = 200
    if args.dry_run:
        print(f"ttft: {len(args.sizes)} sizes of {args.sizes} passages x {tok_len} tokens (about "
              f"{', '.join(f'{n * tok_len / 1000:.0f}k' for n in args.sizes)} prompt tokens), {args.repeats} repeats, "
              f"modes {', '.join(MODES | (FIX_MODES if args.fixes else {}))}, device {DEVICE['device']} {DEVICE['dtype']}, "
              f"{'synthetic passages' if args.synthetic or not DATA.exists() else DATA.name} -> {args.out or RES / 'kv_ttft.json'}")
        return
    if args.synthetic or not DATA.exists():
        pool, question = synthetic_passages(max(args.sizes)), "Which river flows through the old capital?"
    else:
        data = rows()
        # passages of >= 200 tokens: consecutive gold passages joined, cut to 200 tokens by the generator
        pool, i = [], 0
        while len(pool) < max(args.sizes):
            a, b = gold(data[i]), gold(data[i + 1])
            pool.append((a["title"], a["text"] + " " + b["text"] + " " + gold(data[i + 2])["text"]))
            i += 3
        question = data[1000]["question"]
    q = Query("q", question)
    store = tempfile.mkdtemp(prefix="bench-kv-")
    modes = MODES | (FIX_MODES if args.fixes else {})
    gens = generators(store, 1, max(args.sizes), tok_len, modes)
    res: dict = {"machine": machine(), "repeats": args.repeats, "passage_tokens": tok_len, "runs": {},
                 "passages": "synthetic" if args.synthetic or not DATA.exists() else DATA.name,
                 "device": dict(DEVICE), "modes": modes, "command": "python benchmarks/bench_kv.py " + " ".join(sys.argv[1:])}
    rankings = {n: Ranking(q, tuple(Hit("q", f"p{j}", float(n - j), 0, t, meta={"title": ti})
                                    for j, (ti, t) in enumerate(pool[:n]))) for n in args.sizes}
    for n in args.sizes:   # warm-up: fills the store (disk + memory) and the prefix cache
        for m in [k for k in modes if k != "none"] + ["none"]:
            a = gens[m]([rankings[n]])[0]
            res["runs"].setdefault(str(n), {"prompt_tokens": a.meta["prompt_tokens"], **{k: [] for k in modes}})
            print(f"warm n={n} {m} prompt={a.meta['prompt_tokens']} ttft={a.timings['ttft_s']:.2f}", flush=True)
    for r in range(args.repeats):
        for n in args.sizes:
            for m in modes:
                a = gens[m]([rankings[n]])[0]
                res["runs"][str(n)][m].append(a.timings["ttft_s"])
                if m == "blend":
                    res["runs"][str(n)].setdefault("blend_detail", []).append(
                        {k: round(v, 4) for k, v in a.timings.items()})
                    res["runs"][str(n)]["blend_recomputed"] = a.meta.get("recomputed_tokens")
                print(f"rep {r} n={n} {m} ttft={a.timings['ttft_s']:.3f}s", flush=True)
    res["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out or RES / "kv_ttft.json")
    out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


# -- throughput: questions per second with batching ----------------------------------------------------
def throughput(args) -> None:
    """Questions/s of ``none``, ``plain`` and ``blend`` at several ``batch_size`` values: the same
    questions (each with its own passages) answered by one call per batch size and mode, modes and
    batch sizes interleaved per repeat, after a warm-up that fills the passage store."""
    from ragkit.records import Hit, Query, Ranking

    data = [r for r in rows() if any(c.get("isgold") for c in r["ctxs"])]
    rng = random.Random(args.seed)
    sample = rng.sample(data, args.questions)
    rankings = []
    for qi, row in enumerate(sample):
        ctx = [gold(row)] + [gold(r) for r in rng.sample(data, args.passages - 1)]
        rankings.append(Ranking(Query(f"q{qi}", row["question"]),
                                tuple(Hit(f"q{qi}", f"c{j}", float(args.passages - j), 0, c["text"],
                                          meta={"title": c["title"]}) for j, c in enumerate(ctx))))
    store = tempfile.mkdtemp(prefix="bench-kvt-")
    gens = generators(store, args.max_new_tokens, args.passages, args.passage_tokens)
    res: dict = {"machine": machine(), "questions": len(rankings), "passages": args.passages,
                 "passage_tokens": args.passage_tokens, "max_new_tokens": args.max_new_tokens,
                 "batches": args.batches, "repeats": args.repeats, "runs": {}}
    for m, g in gens.items():      # warm-up: store filled, prefix cached, buffers allocated
        g.batch_size = max(args.batches)
        a = g(rankings)
        res.setdefault("prompt_tokens_mean", statistics.mean(x.meta["prompt_tokens"] for x in a))
    texts: dict = {}
    for r in range(args.repeats):
        for b in args.batches:
            for m, g in gens.items():
                g.batch_size = b
                t0 = time.perf_counter()
                a = g(rankings)
                dt = time.perf_counter() - t0
                res["runs"].setdefault(f"{m} b={b}", []).append(len(rankings) / dt)
                texts[(m, b)] = [x.text for x in a]
                print(f"rep {r} {m:5s} batch {b}: {len(rankings) / dt:.2f} q/s", flush=True)
    res["q_per_s_median"] = {k: statistics.median(v) for k, v in res["runs"].items()}
    res["same_answers_as_batch_1"] = {f"{m} b={b}": texts[(m, b)] == texts[(m, args.batches[0])]
                                      for (m, b) in texts}
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["command"] = "python benchmarks/bench_kv.py " + " ".join(sys.argv[1:])
    out = Path(args.out or RES / "kv_throughput.json")
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res["q_per_s_median"], indent=1), "wrote", out)


# -- quality ----------------------------------------------------------------------------------------
def quality(args) -> None:
    from ragkit.eval.metrics import answer_score
    from ragkit.records import Hit, Query, Ranking

    data = [r for r in rows() if any(c.get("isgold") for c in r["ctxs"])]
    rng = random.Random(args.seed)
    sample = rng.sample(data, args.questions)
    k = args.passages
    positions = [0, k // 2, k - 1]
    store = tempfile.mkdtemp(prefix="bench-kvq-")
    modes = {**MODES, **{f"blend r={r:g}": {"kv_reuse": "blend", "recompute_ratio": r} for r in args.extra_ratios},
             **{f"blend r={MODES['blend']['recompute_ratio']:g} layer {n}": {**MODES["blend"], "select_layers": n}
                for n in args.extra_select_layers}}
    gens = generators(store, args.max_new_tokens, k, 0, modes=modes, stop=["\n"])
    for g in gens.values():   # no disk writes: the memory LRU holds the ~questions distinct passages
        eng = getattr(g, "_engine", None)
        if eng is not None:
            eng.store.write_enabled = False
    per: list[dict] = []
    t_start = time.time()
    for qi, row in enumerate(sample):
        if args.budget_s and time.time() - t_start > args.budget_s:
            print(f"time budget reached after {qi} questions", flush=True)
            break
        others = [r for r in sample if r is not row]
        distract = [gold(r) for r in rng.sample(others, k - 1)]
        pos = positions[qi % len(positions)]
        ctx = distract[:pos] + [gold(row)] + distract[pos:]
        q = Query(f"q{qi}", row["question"])
        hits = tuple(Hit(q.qid, f"c{j}", float(k - j), 0, c["text"], meta={"title": c["title"]})
                     for j, c in enumerate(ctx))
        rk = Ranking(q, hits)
        item = {"qid": q.qid, "question": row["question"], "answers": row["answers"], "gold_pos": pos}
        for m in modes:
            a = gens[m]([rk])[0]
            item[m] = {"text": a.text, "em_in": answer_score("EM-in", a.text, row["answers"]),
                       "ttft_s": a.timings["ttft_s"], "prompt_tokens": a.meta["prompt_tokens"]}
        per.append(item)
        print(qi, pos, {m: (item[m]["em_in"], item[m]["text"][:40]) for m in modes}, flush=True)
    summary = {m: statistics.mean(x[m]["em_in"] for x in per) for m in modes}
    by_pos = {str(p): {m: statistics.mean(x[m]["em_in"] for x in per if x["gold_pos"] == p) for m in modes}
              for p in positions if any(x["gold_pos"] == p for x in per)}
    agree = {m: statistics.mean(float(x[m]["text"] == x["none"]["text"]) for x in per) for m in modes if m != "none"}
    res = {"machine": machine(), "passages": k, "questions": len(per), "seed": args.seed,
           "max_new_tokens": args.max_new_tokens, "em_in": summary, "em_in_by_gold_position": by_pos,
           "same_text_as_full": agree,
           "mean_prompt_tokens": statistics.mean(x["none"]["prompt_tokens"] for x in per), "items": per}
    out = Path(args.out or RES / f"kv_quality_{k}.json")
    out.write_text(json.dumps(res, indent=2))
    print("EM-in", summary, "wrote", out)


# -- store size and load vs recompute -----------------------------------------------------------------
def store(args) -> None:
    import torch

    from ragkit.kv.prompt import block_text, tokenize
    from ragkit.kv.store import KVStore

    data = rows()
    texts = [block_text(gold(r)["text"], gold(r)["title"]) for r in data[: args.passages]]
    root = Path(tempfile.mkdtemp(prefix="bench-kvs-"))
    gens = generators(str(root), 1, 10, 0)
    g = gens["plain"]
    eng, tok = g._engine, g._tok
    blocks = [tokenize(tok, t) for t in texts]
    n_tok = sum(map(len, blocks))
    cfg = g._model.config
    out: dict = {"machine": machine(), "passages": len(texts), "tokens": n_tok, "layers": cfg.num_hidden_layers,
                 "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.hidden_size // cfg.num_attention_heads}
    t0 = time.perf_counter()
    entries = []
    for i in range(0, len(blocks), 8):
        entries += eng.encode_blocks(blocks[i:i + 8])
    out["recompute_s_per_passage"] = (time.perf_counter() - t0) / len(texts)
    for dt in ("float32", "float16", "bfloat16"):
        st = KVStore(root, eng.store.namespace, storage_dtype=dt, memory_bytes=0)
        for t, e in zip(texts, entries):
            st.put(t, e)
        size = st.disk_bytes()
        fresh = KVStore(root, eng.store.namespace, storage_dtype=dt, memory_bytes=0)
        t1 = time.perf_counter()
        for t in texts:
            fresh.get(t, dtype=torch.float32)
        load = (time.perf_counter() - t1) / len(texts)
        out[dt] = {"disk_bytes": size, "bytes_per_token_per_layer": size / n_tok / cfg.num_hidden_layers,
                   "bytes_per_1000_passages": size / len(texts) * 1000, "load_s_per_passage": load}
        print(dt, out[dt], flush=True)
    out["mean_passage_tokens"] = n_tok / len(texts)
    (RES / "kv_store.json").write_text(json.dumps(out, indent=2))
    print("recompute per passage", out["recompute_s_per_passage"])


# -- report --------------------------------------------------------------------------------------------
KEEP = re.compile(r"<!-- keep:(\w+) -->\n(.*?)<!-- /keep -->\n", re.S)


def kept_notes(path: Path) -> dict[str, str]:
    """Hand-written notes in kv.md, between ``<!-- keep:NAME -->`` and ``<!-- /keep -->`` lines: ``report``
    puts each back at its place (NAME: intro, ttft, quality10, quality20, store)."""
    return dict(KEEP.findall(path.read_text())) if path.exists() else {}


def report(args) -> None:
    notes = kept_notes(RES / "kv.md")

    def keep(name: str) -> list[str]:
        return [f"<!-- keep:{name} -->", notes[name].rstrip("\n"), "<!-- /keep -->", ""] if name in notes else []

    lines = ["# Passage-KV reuse: measured results", "",
             "Produced by `benchmarks/bench_kv.py` (see its docstring for the commands). SmolLM2-135M-Instruct "
             "(float32, SDPA, one torch thread) on this machine's 2-core CPU. The three modes were measured "
             "interleaved in the same process; ratios are the figures to read.", "", *keep("intro")]
    f = RES / "kv_ttft.json"
    if f.exists():
        d = json.loads(f.read_text())
        lines += ["## Time to first token", "",
                  f"Median of {d['repeats']} runs per cell, passages already in the store (memory). "
                  f"Load average at start/end: {d['machine']['load_avg_start']} / {d['machine'].get('load_avg_end')}.",
                  "", "| passages | prompt tokens | full prefill s | plain reuse s | blend r=0.15 s | speed-up plain | "
                  "speed-up blend |", "|---|---|---|---|---|---|---|"]
        xs, ys = [], {m: [] for m in MODES}
        for n, run in d["runs"].items():
            med = {m: statistics.median(run[m]) for m in MODES}
            lines.append(f"| {n} | {run['prompt_tokens']} | {med['none']:.3f} | {med['plain']:.3f} | "
                         f"{med['blend']:.3f} | {med['none'] / med['plain']:.1f}x | {med['none'] / med['blend']:.1f}x |")
            xs.append(run["prompt_tokens"])
            for m in MODES:
                ys[m].append(med[m])
        lines += ["", "Where the blend time goes (median seconds: KV lookup, assembly, token selection on layer 1, "
                  "the one forward pass of recomputed + final tokens):", "",
                  "| passages | recomputed tokens | kv_load | assemble | select | forward |", "|---|---|---|---|---|---|"]
        for n, run in d["runs"].items():
            det = run.get("blend_detail") or []
            if det:
                med = {k: statistics.median(x.get(k, 0.0) for x in det)
                       for k in ("kv_load_s", "assemble_s", "select_s", "forward_s")}
                lines.append(f"| {n} | {run.get('blend_recomputed', '')} | {med['kv_load_s']:.3f} | "
                             f"{med['assemble_s']:.3f} | {med['select_s']:.3f} | {med['forward_s']:.3f} |")
        lines += ["", *keep("ttft"), "Targets (issue 5): at ~4k tokens, plain reuse >= 25x and r = 15% >= 5x "
                  "faster than full prefill.", ""]
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
            for m, lab in (("none", "full prefill"), ("plain", "plain reuse (r=0)"), ("blend", "CacheBlend r=0.15")):
                ax.plot(xs, ys[m], marker="o", label=lab)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("prompt tokens")
            ax.set_ylabel("time to first token (s)")
            ax.set_title("SmolLM2-135M, CPU: TTFT vs context")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(RES / "kv_ttft.png", dpi=110)
            lines += ["![TTFT vs context](kv_ttft.png)", ""]
        except ImportError:
            pass
    for k in (10, 20):
        f = RES / f"kv_quality_{k}.json"
        if f.exists():
            d = json.loads(f.read_text())
            e = d["em_in"]
            lines += [f"## Answer quality, {k} passages", "",
                      f"NQ-open (lost-in-the-middle oracle file), {d['questions']} questions (seed {d['seed']}), "
                      f"gold passage at positions {sorted(map(int, d['em_in_by_gold_position']))} in turn, "
                      f"distractors = gold passages of other sampled questions; greedy, max {d['max_new_tokens']} "
                      f"new tokens, stop at newline; mean prompt {d['mean_prompt_tokens']:.0f} tokens. EM-in-answer:",
                      "", "| mode | EM-in | same text as full prefill |", "|---|---|---|",
                      f"| full prefill | {100 * e['none']:.1f} | - |",
                      f"| plain reuse (r=0) | {100 * e['plain']:.1f} | {100 * d['same_text_as_full']['plain']:.0f}% |",
                      f"| CacheBlend r=0.15 | {100 * e['blend']:.1f} | {100 * d['same_text_as_full']['blend']:.0f}% |",
                      *[f"| CacheBlend {m[6:]} | {100 * e[m]:.1f} | {100 * d['same_text_as_full'][m]:.0f}% |"
                        for m in e if m.startswith("blend r=")],
                      "", "Paired with full prefill (questions right only with full / only with the mode): " + "; ".join(
                          f"{m}: {sum(1 for x in d['items'] if x['none']['em_in'] > x[m]['em_in'])} / "
                          f"{sum(1 for x in d['items'] if x['none']['em_in'] < x[m]['em_in'])}"
                          for m in e if m != "none") + f". With {d['questions']} questions one question is "
                      f"{100 / d['questions']:.1f} points, so differences of a few points are within noise.",
                      "", "By gold position: " + "; ".join(
                          f"pos {p}: " + ", ".join(f"{m} {100 * v:.0f}" for m, v in s.items())
                          for p, s in d["em_in_by_gold_position"].items()), "", *keep(f"quality{k}")]
    f = RES / "kv_store.json"
    if f.exists():
        d = json.loads(f.read_text())
        lines += ["## Store size and load time", "",
                  f"{d['passages']} NQ gold passages ({d['mean_passage_tokens']:.0f} tokens on average), "
                  f"{d['layers']} layers x {d['kv_heads']} KV heads x {d['head_dim']} dims. "
                  f"Recomputing one passage's KV (batches of 8): {1000 * d['recompute_s_per_passage']:.1f} ms.", "",
                  "| dtype | bytes / token / layer | per 1,000 passages | load from disk per passage | "
                  "recompute / load |", "|---|---|---|---|---|"]
        for dt in ("float32", "float16", "bfloat16"):
            x = d[dt]
            lines.append(f"| {dt} | {x['bytes_per_token_per_layer']:.0f} | {x['bytes_per_1000_passages'] / 1e9:.2f} GB | "
                         f"{1000 * x['load_s_per_passage']:.2f} ms | {d['recompute_s_per_passage'] / x['load_s_per_passage']:.0f}x |")
        lines += ["", "Load times are from the OS page cache right after writing (a cold disk is slower).", "",
                  *keep("store")]
    (RES / "kv.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine, 2 threads stall on each other)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16")
    ap.add_argument("--adapter", default="", help="LoRA adapter merged into SmolLM2 (e.g. smollm2-rag)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("ttft")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20, 40])
    t.add_argument("--out", default="")
    t.add_argument("--synthetic", action="store_true", help="synthetic passages (default when ../shared/data is absent)")
    t.add_argument("--dry-run", action="store_true", help="print what would be measured and stop")
    t.add_argument("--fixes", action="store_true",
                   help="also the parallel-encoding fixes (APE temperature / scale, top-3 blocks, blend + T)")
    q = sub.add_parser("quality")
    q.add_argument("--passages", type=int, default=10)
    q.add_argument("--questions", type=int, default=100)
    q.add_argument("--max-new-tokens", type=int, default=24)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--budget-s", type=float, default=0, help="stop after this many seconds (0 = no limit)")
    q.add_argument("--extra-select-layers", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                   help="also blend r=0.15 selecting on these layers (default mode: layer 1)")
    q.add_argument("--extra-ratios", type=lambda s: [float(x) for x in s.split(",") if x], default=[],
                   help="more blend recompute ratios to measure alongside, e.g. 0.3,0.5")
    q.add_argument("--out", default="")
    b = sub.add_parser("throughput", help="questions/s at batch sizes (none / plain / blend)")
    b.add_argument("--questions", type=int, default=8)
    b.add_argument("--passages", type=int, default=5)
    b.add_argument("--passage-tokens", type=int, default=128)
    b.add_argument("--max-new-tokens", type=int, default=8)
    b.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="")
    s = sub.add_parser("store")
    s.add_argument("--passages", type=int, default=100)
    sub.add_parser("report")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    RES.mkdir(parents=True, exist_ok=True)
    DEVICE.update(device=args.device, dtype=args.dtype, adapter=args.adapter)
    {"ttft": ttft, "quality": quality, "store": store, "report": report, "throughput": throughput}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
