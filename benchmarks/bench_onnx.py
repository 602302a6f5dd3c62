"""Encoder backends: torch (float32, sentence-transformers) vs ONNX Runtime float32 vs ONNX Runtime int8.

``speed``    encoding throughput on the same texts (SQuAD part-A paragraphs), same process, alternating,
             best of N; the models are loaded (and exported/quantized, once) before timing.
``quality``  nDCG@10 of ``retriever.dense`` (minilm, flat) with ``backend: torch`` and ``backend: onnx-int8``
             on the named data sets (every judged query), through ``ragkit.eval.evaluate``.

    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py speed --n 128 --reps 3
    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py quality --datasets cranfield cisi squad
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
    return " ".join(["nice -n 10 .venv/bin/python benchmarks/bench_onnx.py"] + sys.argv[1:])


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["speed", "quality"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["cranfield", "cisi", "squad"])
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--suffix", default="", help="suffix of the result file names")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    {"speed": part_speed, "quality": part_quality}[args.part](args)


if __name__ == "__main__":
    main()
