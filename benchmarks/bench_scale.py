"""Scaling benchmarks: distributed (Dask) indexing throughput and overhead, sharded exactness, ANN shard recall.

Parts (run one at a time; the machine is a shared 2-core box, so each result records `uptime` load):

``throughput``  index throughput of the plain local path (``Pipeline.build_index``) vs the Dask path with
                1 worker process (partitions 1) and 2 worker processes (partitions 2), same corpus,
                alternating, best of N. Each cluster is started before its timed run and closed after it (start-up time
                reported apart); each timed build covers partitioning, shipping, map/reduce/build on the workers and
                the atomic write of the sharded folder. ``--kind bm25`` (default corpus: every passage of the
                real data sets below, repeated with new ids up to ``--n``) or ``--kind dense`` (MiniLM,
                embedding cache off, a small ``--n``).
``exact``       sharded (``--shards`` partitions, serial executor) vs single index on Cranfield, CISI and
                SQuAD: BM25 (top 100) and flat dense (top 100): rankings and scores compared query by query.
``ann``         recall@10 of HNSW and IVF against the exact flat result, single index and sharded, on the
                same MiniLM vectors (all passages of Cranfield + CISI + SQuAD; their queries).

Corpus for ``throughput --kind bm25``: the passages of the named data sets under ../shared/data (cranfield,
cisi, squad, hotpotqa, 2wikimultihopqa, nq-open: 7,023 passages), repeated with ids ``r<k>-<set>:<id>`` until
``--n`` passages. Repetition keeps the text statistics of real data (lengths, vocabulary) while making the
corpus large enough; BM25's df values are scaled by the repetition, which does not change the work done.

    /work/wt/cpu -2 .venv/bin/python benchmarks/bench_scale.py throughput --kind bm25 --n 105000 --reps 3
    /work/wt/cpu -2 .venv/bin/python benchmarks/bench_scale.py throughput --kind dense --backend onnx-int8 \
        --n 4000 --max-chars 256 --reps 1 --suffix _int8
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py exact --model minilm
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py ann
Results: benchmarks/results/scale_<part>[_<kind>].{md,json}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETS = ("cranfield", "cisi", "squad", "hotpotqa", "2wikimultihopqa", "nq-open")


def load() -> str:
    return open("/proc/loadavg").read().split()[:3].__str__() if os.path.exists("/proc/loadavg") else "?"


def env() -> dict:
    import dask
    import distributed

    from ragkit import __version__

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "dask": dask.__version__,
            "distributed": distributed.__version__, "ragkit": __version__, "machine": platform.machine()}


def corpus(n: int) -> list:
    from ragkit.eval.datasets import load_dataset
    from ragkit.records import Document

    base = []
    for name in SETS:
        base += [Document(f"{name}:{d.doc_id}", d.text, d.meta) for d in load_dataset(name).corpus if d.text.strip()]
    out, k = [], 0
    while len(out) < n:
        # a new string object per copy: pickle would ship a repeated *object* once, real corpora have no such luck
        out += [Document(f"r{k}-{d.doc_id}", (d.text + " ")[:-1], d.meta) for d in base[: n - len(out)]]
        k += 1
    return out


def pipeline(kind: str, folder: Path, backend: str = "torch"):
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.pipeline import Pipeline
    from ragkit.retrievers.bm25 import BM25Retriever

    idx = BM25Indexer(path=str(folder)) if kind == "bm25" else DenseIndexer(path=str(folder), model="minilm",
                                                                               cache=False, backend=backend)
    return Pipeline([BM25Retriever(index=str(folder))], index=[idx])


def _set_threads(n: int) -> int:
    """In a worker (or here): intra-op threads of torch and of ONNX Runtime sessions created later."""
    os.environ["RAGKIT_ONNX_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return n


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def part_throughput(args) -> None:
    from ragkit.distributed import open_executor

    docs = corpus(args.n)
    if args.max_chars:
        from ragkit.records import Document

        docs = [Document(d.doc_id, d.text[: args.max_chars], d.meta) for d in docs]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    p = pipeline(args.kind, tmp / "idx", args.backend)
    threads = os.cpu_count() if args.threads == 0 else args.threads
    # (cluster, partitions, intra-op threads per worker); BM25 is single-threaded Python, so its 1-worker run
    # is already "1 worker with every thread it can use"
    configs = {"plain local (no Dask)": None, "Dask, 1 worker process": ("local:1", 1, 1 if args.kind == "bm25"
                                                                              else threads),
               "Dask, 2 worker processes": ("local:2", 2, 1)}
    if args.kind == "dense":
        configs = {f"plain local (no Dask, {threads} threads)": None,
                   f"Dask, 1 worker process x {threads} threads": ("local:1", 1, threads),
                   "Dask, 2 worker processes x 1 thread": ("local:2", 2, 1)}
    if args.one_worker_only:  # only the overhead comparison (plain vs 1 worker): fits one CPU slot
        configs = dict(list(configs.items())[:2])
    names = list(configs)
    _set_threads(threads)
    times: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[dict]] = {k: [] for k in configs}
    stats: dict[str, list[dict]] = {k: [] for k in configs}
    loads: list[str] = []
    startup: dict[str, float] = {}
    # one cluster at a time (started, warmed, timed, closed), so clusters do not compete for memory
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else list(reversed(names))
        for name in order:
            cfg = configs[name]
            with contextlib.ExitStack() as es:
                ex = None
                if cfg is not None:
                    t0 = time.perf_counter()
                    # partitions: ragkit's default (a multiple of the workers, <= 50k documents each) unless --partitions
                    ex = es.enter_context(open_executor(cfg[0], partitions=args.partitions or None))
                    startup[name] = min(startup.get(name, 1e9), time.perf_counter() - t0)
                    ex.client.run(_set_threads, cfg[2])
                # warm the workers (imports; dense: the model, once per worker) before timing
                p.build_index(docs[: 8 * (cfg[1] if cfg else 1)], executor=ex, progress=False)
                loads.append(load())
                w0 = ex.client.run(_cpu_s) if ex is not None else {}
                c0 = _cpu_s()
                t0 = time.perf_counter()
                st = p.build_index(docs, progress=False, executor=ex)
                times[name].append(time.perf_counter() - t0)
                c1 = _cpu_s()
                w1 = ex.client.run(_cpu_s) if ex is not None else {}
                cpu[name].append({"client_cpu_s": round(c1 - c0, 2),
                                  "workers_cpu_s": round(sum(w1[w] - w0[w] for w in w1 if w in w0), 2)})
                stats[name].append(st)
            print(f"{name}: {times[name][-1]:.2f} s  cpu {cpu[name][-1]}  {st}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    plain, one, two = (best[k] for k in names) if len(names) == 3 else (*(best[k] for k in names), float("nan"))
    rows = [f"| {k} | {best[k]:.2f} | {args.n / best[k]:,.1f} | {best[k] / plain:.3f}x | {startup.get(k, 0):.1f} | "
            f"{cpu[k][times[k].index(best[k])]['client_cpu_s']:.1f} | {cpu[k][times[k].index(best[k])]['workers_cpu_s']:.1f} |"
            for k in configs]
    cmd = " ".join([os.environ.get("BENCH_PREFIX", "/work/wt/cpu -2") + " .venv/bin/python benchmarks/bench_scale.py"]
                   + sys.argv[1:])
    res = {"part": "throughput", "kind": args.kind, "n": args.n, "reps": args.reps, "times_s": times,
           "best_s": best, "startup_s": startup, "cpu": cpu, "stats": stats, "load_during": loads, "env": env(),
           "backend": args.backend, "max_chars": args.max_chars, "threads": threads, "command": cmd}
    stem = f"scale_throughput_{args.kind}{args.suffix}"
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2))
    what = ("(the real data sets, repeated with new ids; see the script's docstring). BM25 defaults."
            if args.kind == "bm25" else
            f"(MiniLM, `backend: {args.backend}`, flat, embedding cache off"
            + (f", each passage cut to its first {args.max_chars} characters" if args.max_chars else "") + ").")
    md = [f"# Index throughput: plain local vs Dask with 1 and 2 worker processes ({args.kind})", "",
          f"Command: `{cmd}`. {args.n:,} passages {what}",
          f"Dask partitions: {'ragkit default (a multiple of the workers, at most 50,000 documents each)' if not args.partitions else args.partitions}; shards per run in the breakdown below. "
          f"Best of {args.reps}, alternating order; each cluster is started, warmed (a small build: imports, model) "
          f"and closed around its run (start-up reported apart, not in the build time). CPU s: CPU time of the "
          f"client process and of the worker processes during the best run. "
          f"Load average (1/5/15 min) at each run: {', '.join(loads)}.", "",
          "| path | best s | passages/s | vs plain | cluster start-up s | client CPU s | workers CPU s |",
          "|---|---|---|---|---|---|---|", *rows, "",
          f"Overhead of the distributed path with 1 worker: {(one / plain - 1) * 100:+.1f}% (target < 10%). "
          f"Speed-up of 2 worker processes over 1: {one / two:.2f}x.",
          "", "All runs (s): " + "; ".join(f"{k}: {', '.join(f'{x:.2f}' for x in v)}" for k, v in times.items()),
          "", "Where the time goes (best run of each Dask path; `*_compute_s` is time inside the worker's task, the "
          "rest of `map_s` / `build_s` is shipping and scheduling): "
          + "; ".join(f"{k}: " + ", ".join(f"{m}={stats[k][times[k].index(best[k])].get(m)}" for m in
                                           ("shards", "map_s", "map_compute_s", "build_s", "build_compute_s",
                                            "write_s", "shards_written_by_workers"))
                      for k in names[1:])]
    (OUT / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _datasets(names=("cranfield", "cisi", "squad")):
    from ragkit.eval.datasets import load_dataset

    for name in names:
        ds = load_dataset(name)
        yield name, ds, [d for d in ds.corpus if d.text.strip()]


def _compare(a, b) -> dict:
    same = sum([(h.doc_id, h.chunk_id, h.score) for h in x.hits] == [(h.doc_id, h.chunk_id, h.score) for h in y.hits]
               for x, y in zip(a, b))
    ids_same = sum([h.key for h in x.hits] == [h.key for h in y.hits] for x, y in zip(a, b))
    diff = max((abs(hx.score - hy.score) for x, y in zip(a, b) for hx, hy in zip(x.hits, y.hits)), default=0.0)
    tol = 1e-6
    up_to_ties = 0  # same score at every rank (within tol) and the same units above the last score
    for x, y in zip(a, b):
        if len(x.hits) != len(y.hits) or any(abs(hx.score - hy.score) > tol for hx, hy in zip(x.hits, y.hits)):
            continue
        last = min(x.hits[-1].score, y.hits[-1].score) if x.hits else 0.0
        above = lambda r: sorted(h.key for h in r.hits if h.score > last + tol)  # noqa: E731
        up_to_ties += above(x) == above(y)
    return {"queries": len(a), "identical_rankings_and_scores": same, "identical_ids": ids_same,
            "same_up_to_ties": up_to_ties, "max_abs_score_diff": diff}


def part_exact(args) -> None:
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.pipeline import Pipeline
    from ragkit.retrievers.bm25 import BM25Retriever
    from ragkit.retrievers.dense import DenseRetriever

    tmp = Path(tempfile.mkdtemp(prefix="bench-exact-"))
    out = {}
    for name, ds, docs in _datasets():
        queries = ds.queries[: args.max_queries]
        for kind in ("single", "sharded"):
            p = Pipeline([BM25Retriever(index=str(tmp / name / kind / "bm25"))],
                         index=[BM25Indexer(path=str(tmp / name / kind / "bm25")),
                                DenseIndexer(path=str(tmp / name / kind / "dense"), model=args.model)])
            p.build_index(docs, progress=False, executor="serial" if kind == "sharded" else None,
                          partitions=args.shards if kind == "sharded" else None)
        res = {}
        for key, cls in (("bm25", BM25Retriever), ("dense_flat", DenseRetriever)):
            folder = "bm25" if key == "bm25" else "dense"
            a = Pipeline([cls(index=str(tmp / name / "single" / folder), k=100)]).run(queries)
            b = Pipeline([cls(index=str(tmp / name / "sharded" / folder), k=100)]).run(queries)
            res[key] = _compare(a, b)
        out[name] = res
        print(name, res, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = " ".join(["nice -n 10 .venv/bin/python benchmarks/bench_scale.py"] + sys.argv[1:])
    (OUT / "scale_exact.json").write_text(json.dumps({"results": out, "shards": args.shards, "model": args.model,
                                                      "command": cmd, "load": load(), "env": env()}, indent=2))
    rows = [f"| {n} | {k} | {r['queries']} | {r['identical_rankings_and_scores']} | {r['identical_ids']} | "
            f"{r['same_up_to_ties']} | {r['max_abs_score_diff']:.2e} |" for n, rr in out.items() for k, r in rr.items()]
    md = ["# Sharded vs single index: exactness", "", f"Command: `{cmd}`. {args.shards} shards (serial executor: the "
          f"same map/reduce/build code the Dask workers run), top 100 per query, every query of each set"
          + (f" (first {args.max_queries})" if args.max_queries else "") + f"; dense model `{args.model}`, flat.", "",
          "| data set | index | queries | identical ids + scores | identical ids | same up to ties | max abs score diff |",
          "|---|---|---|---|---|---|---|", *rows, "",
          "BM25 shards score with the global document frequencies and average length, so each stored contribution "
          "is the same float32 as in the single index and each query sum is the same float64: identical results. "
          "Flat dense shards are exact searches; the merge keeps the best k by (score, doc_id, chunk_id). 'Same up to "
          "ties': equal scores (within 1e-6) at every rank and the same units above the last score; FAISS chooses "
          "among vectors tied at the k-th score by its own order, and its BLAS path can differ in the last bit "
          "(the max difference column), which reorders exact near-ties; the `hash` test embedder (bag of hashed "
          "words) makes such ties common."]
    (OUT / "scale_exact.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def part_ann(args) -> None:
    from ragkit.indexers._encoder import Encoder
    from ragkit.indexers._faiss import DenseIndex

    enc = Encoder("minilm", cache=True)
    docs, queries = [], []
    for name, ds, d in _datasets(args.datasets):
        docs += [(f"{name}:{x.doc_id}", x.text) for x in d]
        queries += [q.text for q in ds.queries[: args.max_queries]]
    t0 = time.perf_counter()
    vecs = enc.encode_documents([t for _, t in docs], progress=False)
    qv = enc.encode_queries(queries)
    enc_s = time.perf_counter() - t0
    ids = [i for i, _ in docs]
    base = {"model": "minilm", "model_id": enc.model_id, "dim": enc.dim, "normalize": True, "query_prefix": "",
            "doc_prefix": "", "max_length": None, "metric": "inner_product", "hnsw_m": 32, "ef_construction": 200,
            "ef_search": 64, "nlist": 0, "nprobe": 8, "pq_m": 16, "pq_bits": 8, "train_size": 100_000}

    def build(kind, sl):
        return DenseIndex.build(vecs[sl], ids[sl.start:sl.stop], ids[sl.start:sl.stop], [""] * (sl.stop - sl.start),
                                None, {**base, "index_type": kind})

    def topk(indexes, k=10):
        per = []
        for off, idx in indexes:
            s, r = idx.search(qv, k)
            per.append((s, np.where(r >= 0, r + off, -1)))
        out = []
        for i in range(len(qv)):
            cand = [(float(s[i][j]), int(r[i][j])) for s, r in per for j in range(len(r[i])) if r[i][j] >= 0]
            out.append({x for _, x in sorted(cand, key=lambda t: -t[0])[:k]})
        return out

    n = len(vecs)
    flat = topk([(0, build("flat", slice(0, n)))])
    res = {}
    for kind in ("hnsw", "ivf"):
        for shards in (1, args.shards):
            b = [n * s // shards for s in range(shards + 1)]
            got = topk([(b[s], build(kind, slice(b[s], b[s + 1]))) for s in range(shards)])
            rec = float(np.mean([len(a & g) / max(len(a), 1) for a, g in zip(flat, got)]))
            res[f"{kind}, {shards} shard(s)"] = rec
            print(kind, shards, rec, flush=True)
    cmd = " ".join(["nice -n 10 .venv/bin/python benchmarks/bench_scale.py"] + sys.argv[1:])
    (OUT / "scale_ann.json").write_text(json.dumps({"recall_at_10_vs_flat": res, "vectors": n, "queries": len(qv),
                                                    "encode_s": enc_s, "command": cmd, "load": load(),
                                                    "env": env()}, indent=2))
    md = ["# HNSW / IVF shards: recall@10 against the exact flat search", "",
          f"Command: `{cmd}`. {n:,} MiniLM passage vectors ({' + '.join(args.datasets)}), {len(qv):,} queries "
          f"(their questions" + (f", first {args.max_queries} of each" if args.max_queries else "") + "). "
          "HNSW M=32, efConstruction=200, efSearch=64; IVF nlist automatic per shard (4*sqrt(n)), nprobe=8. "
          "Shards are built over contiguous slices and merged by score.", "",
          "| index | recall@10 vs flat |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in res.items()], "",
          "Flat shards merge exactly (recall 1.0, see scale_exact.md)."]
    (OUT / "scale_ann.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["throughput", "exact", "ann"])
    ap.add_argument("--kind", choices=["bm25", "dense"], default="bm25")
    ap.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch", help="throughput, dense")
    ap.add_argument("--max-chars", type=int, default=0, help="throughput: cut each passage to this many characters")
    ap.add_argument("--partitions", type=int, default=0, help="throughput: partitions of the Dask runs (0 = default)")
    ap.add_argument("--one-worker-only", action="store_true", help="throughput: plain vs 1 worker only")
    ap.add_argument("--threads", type=int, default=0, help="throughput: intra-op threads of the plain path and "
                                                           "of the 1-worker dense run (0 = one per CPU)")
    ap.add_argument("--n", type=int, default=105_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--suffix", default="", help="throughput: suffix of the result file names (e.g. _20k)")
    ap.add_argument("--datasets", nargs="+", default=["cranfield", "cisi", "squad"], help="ann: vector sets")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    {"throughput": part_throughput, "exact": part_exact, "ann": part_ann}[args.part](args)


if __name__ == "__main__":
    main()
