"""Encoder backends: torch (float32, sentence-transformers) vs ONNX Runtime float32 vs ONNX Runtime int8.

``speed``    encoding throughput on the same texts (SQuAD part-A paragraphs), same process, alternating,
             best of N; the models are loaded (and exported/quantized, once) before timing.
``rerank``   ``reranker.cross_encoder`` with backend torch / onnx / onnx-int8: pairs/s on the same SQuAD pairs
             (best of N, alternating) and nDCG@10 of BM25 top-N >> reranker on each data set.
``quality``  nDCG@10 of ``retriever.dense`` (minilm, flat) with ``backend: torch`` and ``backend: onnx-int8``
             on the named data sets (every judged query), through ``ragkit.eval.evaluate``.

    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py speed --n 128 --reps 3
    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py quality --datasets cranfield cisi squad
    RAGKIT_ONNX_THREADS=1 /work/wt/cpu .venv/bin/python benchmarks/bench_onnx.py rerank --model CKPT \\
        --pairs 256 --reps 3 --depth 20 --max-queries 50
Results: benchmarks/results/onnx_<part>.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BACKENDS = ("torch", "onnx", "onnx-int8")


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def cmd() -> str:
    prefix = os.environ.get("BENCH_PREFIX", "nice -n 10")
    return " ".join([prefix, ".venv/bin/python benchmarks/bench_onnx.py"] + sys.argv[1:])


def part_speed(args) -> None:
    from ragkit.eval.datasets import load_dataset
    from ragkit.indexers._encoder import Encoder

    texts = [d.text for d in load_dataset("squad").corpus if d.text.strip()][: args.n]
    encs = {b: Encoder("minilm", backend=b, cache=False) for b in BACKENDS}
    for e in encs.values():
        e.encode_documents(texts[:8])
    times = {b: [] for b in BACKENDS}
    loads = []
    for rep in range(args.reps):
        for b in (BACKENDS if rep % 2 == 0 else tuple(reversed(BACKENDS))):
            loads.append(load())
            t0 = time.perf_counter()
            encs[b].encode_documents(texts)
            times[b].append(time.perf_counter() - t0)
            print(b, times[b][-1], flush=True)
    best = {b: min(v) for b, v in times.items()}
    import numpy as np

    ref = encs["torch"].encode_documents(texts[:64])
    cos = {b: float(np.min((ref * encs[b].encode_documents(texts[:64])).sum(1))) for b in BACKENDS}
    res = {"n": len(texts), "times_s": times, "best_s": best, "min_cosine_to_torch_64_texts": cos, "loads": loads,
           "command": cmd(), "threads": os.environ.get("RAGKIT_ONNX_THREADS", "ORT default")}
    (OUT / "onnx_speed.json").write_text(json.dumps(res, indent=2))
    md = ["# Encoder backends: encoding speed", "", f"Command: `{cmd()}`. {len(texts)} SQuAD paragraphs, MiniLM, batch 64, "
          f"normalised, CPU (2 cores, shared: load averages {', '.join(loads)}). Same process, alternating, best of "
          f"{args.reps}.", "", "| backend | best s | texts/s | speed-up vs torch | min cosine to torch (64 texts) |",
          "|---|---|---|---|---|",
          *[f"| {b} | {best[b]:.2f} | {len(texts) / best[b]:.1f} | {best['torch'] / best[b]:.2f}x | {cos[b]:.4f} |"
            for b in BACKENDS], "",
          "All runs (s): " + "; ".join(f"{b}: {', '.join(f'{x:.2f}' for x in v)}" for b, v in times.items())]
    (OUT / "onnx_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def part_quality(args) -> None:
    from ragkit.eval import evaluate
    from ragkit.eval.datasets import load_dataset
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.pipeline import Pipeline
    from ragkit.retrievers.dense import DenseRetriever

    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    out = {}
    for name in args.datasets:
        ds = load_dataset(name)
        docs = [d for d in ds.corpus if d.text.strip()]
        pipes = {}
        for b in ("torch", "onnx-int8"):
            t0 = time.perf_counter()
            DenseIndexer(path=str(tmp / name / b), model="minilm", backend=b)(docs)
            print(name, b, "indexed in", time.perf_counter() - t0, flush=True)
            pipes[b] = Pipeline([DenseRetriever(index=str(tmp / name / b), k=100)], name=b)
        res = evaluate(pipes, ds, ["nDCG@10", "R@100"], batch_size=64, max_queries=args.max_queries, progress=False)
        out[name] = {b: res.summary[b] for b in pipes}
        out[name]["queries"] = res.queries
        print(name, out[name], flush=True)
        (OUT / f"onnx_quality{args.suffix}.json").write_text(json.dumps({"results": out, "command": cmd(), "load": load()}, indent=2))
    rows = [f"| {n} | {r['queries'].get('ir')} | {r['torch']['nDCG@10']:.4f} | {r['onnx-int8']['nDCG@10']:.4f} | "
            f"{r['onnx-int8']['nDCG@10'] - r['torch']['nDCG@10']:+.4f} | {r['torch']['R@100']:.4f} | "
            f"{r['onnx-int8']['R@100']:.4f} |" for n, r in out.items()]
    md = ["# Encoder backends: retrieval quality, float32 torch vs ONNX int8", "", f"Command: `{cmd()}`. "
          "retriever.dense, minilm, flat; documents and queries both encoded by the backend named.", "",
          "| data set | queries | nDCG@10 torch | nDCG@10 onnx-int8 | difference | R@100 torch | R@100 onnx-int8 |",
          "|---|---|---|---|---|---|---|", *rows]
    (OUT / f"onnx_quality{args.suffix}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def part_rerank(args) -> None:
    """reranker.cross_encoder with each backend: pairs/s on the same pairs, and nDCG@10 of BM25 top-N >> reranker."""
    from ragkit.eval import evaluate
    from ragkit.eval.datasets import load_dataset
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.pipeline import Pipeline
    from ragkit.records import Query
    from ragkit.rerankers.cross_encoder import CrossEncoderReranker
    from ragkit.retrievers.bm25 import BM25Retriever

    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-rerank-"))
    res: dict = {"model": args.model, "depth": args.depth, "command": cmd(), "load_start": load(),
                 "threads": os.environ.get("RAGKIT_ONNX_THREADS", "ORT default"),
                 "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    rerankers = {b: CrossEncoderReranker(model=args.model, backend=b, device="cpu", batch_size=32) for b in BACKENDS}
    # speed: the same (question, paragraph) pairs through each backend, alternating, best of N (--pairs 0: skip)
    stem = f"onnx_rerank{args.suffix}"
    qs, ps = [], []
    if args.pairs:
        ds = load_dataset("squad")
        docs = [d for d in ds.corpus if d.text.strip()]
        BM25Indexer(path=str(tmp / "squad-speed"))(docs)
        bm = Pipeline([BM25Retriever(index=str(tmp / "squad-speed"), k=args.depth, text=True)])
        for r in bm.run([Query(q.qid, q.text) for q in ds.queries[-(args.pairs // args.depth + 1):]]):
            for h in r.hits:
                qs.append(r.query.text)
                ps.append(h.text)
        qs, ps = qs[: args.pairs], ps[: args.pairs]
        for r in rerankers.values():
            r.score_pairs(qs[:8], ps[:8])  # load, export and quantize once, before timing
    times: dict = {b: [] for b in BACKENDS}
    scores: dict = {}
    for rep in range(args.reps if args.pairs else 0):
        for b in (BACKENDS if rep % 2 == 0 else tuple(reversed(BACKENDS))):
            t0 = time.perf_counter()
            scores[b] = np.asarray(rerankers[b].score_pairs(qs, ps)[0])
            times[b].append(time.perf_counter() - t0)
            print("speed", b, round(times[b][-1], 2), flush=True)
    if args.pairs:
        best = {b: min(v) for b, v in times.items()}
        res["speed"] = {"pairs": len(qs), "times_s": times, "best_s": best, "load_end": load(),
                        "max_abs_score_diff_vs_torch": {b: float(np.abs(scores[b] - scores["torch"]).max())
                                                        for b in BACKENDS}}
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2))
    # quality: BM25 top-depth >> cross-encoder (each backend) on the first max_queries judged queries
    res["quality"] = {}
    for name in args.datasets:
        ds = load_dataset(name)
        BM25Indexer(path=str(tmp / name))([d for d in ds.corpus if d.text.strip()])
        pipes = {"bm25": Pipeline([BM25Retriever(index=str(tmp / name), k=args.depth)], name="bm25")}
        for b in BACKENDS if args.all_quality else ("torch", "onnx-int8"):
            pipes[b] = Pipeline([BM25Retriever(index=str(tmp / name), k=args.depth, text=True), rerankers[b]], name=b)
        t0 = time.perf_counter()
        ev = evaluate(pipes, ds, ["nDCG@10"], batch_size=8, max_queries=args.max_queries, progress=False)
        res["quality"][name] = {"summary": ev.summary, "queries": ev.queries, "s": round(time.perf_counter() - t0, 1)}
        print(name, res["quality"][name], flush=True)
        (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2))
    res["load_end"] = load()
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2))
    sp = res.get("speed") or {"best_s": {b: float("nan") for b in BACKENDS},
                              "max_abs_score_diff_vs_torch": {b: float("nan") for b in BACKENDS}}
    rows = [f"| {b} | {sp['best_s'][b]:.2f} | {len(qs) / sp['best_s'][b]:.1f} | {sp['best_s']['torch'] / sp['best_s'][b]:.2f}x "
            f"| {sp['max_abs_score_diff_vs_torch'][b]:.4f} |" for b in BACKENDS]
    qrows = []
    for name, q in res["quality"].items():
        su = q["summary"]
        qrows.append(f"| {name} | {q['queries'].get('ir')} | {su['bm25']['nDCG@10']:.4f} | {su['torch']['nDCG@10']:.4f} | "
                     f"{su['onnx-int8']['nDCG@10']:.4f} | {su['onnx-int8']['nDCG@10'] - su['torch']['nDCG@10']:+.4f} |")
    md = ["# Cross-encoder reranker backends: torch float32 vs ONNX Runtime float32 vs int8", "",
          f"Command: `{cmd()}`. Checkpoint `{args.model}`; batch 32, max_length 512, CPU, torch threads "
          f"{res['omp_threads']}, ONNX Runtime threads {res['threads']}; load average {res['load_start']} at the start, "
          f"{res['load_end']} at the end.", "",
          f"## Speed: {len(qs)} (SQuAD question, BM25 top-{args.depth} paragraph) pairs, same process, alternating, "
          f"best of {args.reps}", "",
          "| backend | best s | pairs/s | speed-up vs torch | max abs score difference vs torch |", "|---|---|---|---|---|",
          *rows, "", "All runs (s): " + "; ".join(f"{b}: {', '.join(f'{x:.2f}' for x in v)}" for b, v in times.items()),
          "", f"## Quality: nDCG@10 of BM25 top-{args.depth} reranked, "
          + (f"first {args.max_queries} judged queries per set" if args.max_queries else "every judged query"), "",
          "| data set | queries | BM25 | torch | onnx-int8 | int8 - torch |", "|---|---|---|---|---|---|", *qrows]
    if not args.pairs:  # no speed section
        a = next(i for i, x in enumerate(md) if x.startswith("## Speed"))
        b = next(i for i, x in enumerate(md) if x.startswith("## Quality"))
        md = md[:a] + md[b:]
    (OUT / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["speed", "quality", "rerank"])
    ap.add_argument("--model", default="", help="rerank: a cross-encoder checkpoint (e.g. from ragkit train-reranker)")
    ap.add_argument("--depth", type=int, default=20, help="rerank: BM25 candidates reranked per query")
    ap.add_argument("--pairs", type=int, default=256, help="rerank: pairs timed")
    ap.add_argument("--all-quality", action="store_true", help="rerank: quality of the onnx float32 backend too")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["cranfield", "cisi", "squad"])
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--suffix", default="", help="suffix of the result file names")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    {"speed": part_speed, "quality": part_quality, "rerank": part_rerank}[args.part](args)


if __name__ == "__main__":
    main()
