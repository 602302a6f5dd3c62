"""Cost of verifying index files at load (``RAGKIT_VERIFY``: off / fast / full), extrapolated to 1M passages.

Builds, in a temporary folder, a BM25 index over N real passages (Cranfield, CISI and SQuAD
paragraphs from ``../shared/data``, repeated with fresh ids, as in ``bench_bm25.py``) and a flat
dense index over the same N texts with random unit vectors of dimension 384 (MiniLM's; the vectors'
values do not matter for hashing, so no encoder runs). Then measures:

- sha256 throughput of this machine (hashlib, in memory and over the index files, page cache warm);
- the checksum pass ``write_params`` adds to every save (``file_record`` over every file);
- ``BM25Index.load`` / ``DenseIndex.load`` with verify ``off``, ``fast`` and ``full`` (best of R);

and extrapolates full verification to 1M passages from the measured bytes per passage and the
measured throughput (fast verification reads 128 KiB per file, independent of N).

    nice -n 10 .venv/bin/python benchmarks/bench_verify.py --n 20000

Writes ``benchmarks/results/verify.{md,json}``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "results"


CLOCK = time.perf_counter


def best(fn, repeat: int) -> float:
    """Best of ``repeat`` runs, on CLOCK (process CPU time by default: the work here is CPU-bound
    hashing and parsing, and CPU time is far less disturbed by other jobs on a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="passages")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wall", action="store_true", help="time with the wall clock instead of process CPU time")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time

    from bench_bm25 import corpus
    from ragkit.artifacts import file_record, file_sha256, verify_files
    from ragkit.indexers._faiss import DenseIndex
    from ragkit.indexers.bm25 import BM25Index, BM25Indexer
    from ragkit.records import Chunk

    texts = corpus(args.n)
    chunks = [Chunk(f"p{i}", f"p{i}", t, 0, len(t)) for i, t in enumerate(texts)]
    load0 = os.getloadavg()
    res: dict = {"clock": "wall" if args.wall else "process CPU time", "n": args.n, "python": platform.python_version(), "cpus": os.cpu_count(),
                 "machine": platform.machine(), "loadavg_before": load0}

    # sha256 throughput in memory
    buf = np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8).tobytes()
    t = best(lambda: hashlib.sha256(buf).hexdigest(), args.repeat)
    res["sha256_mem_MBps"] = len(buf) / t / 1e6
    del buf

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        stage = BM25Indexer(path=str(tmp / "bm25"))
        idx = stage.build(chunks)
        t0 = time.perf_counter()
        idx.save(tmp / "bm25")
        res["bm25_save_s"] = time.perf_counter() - t0
        vecs = np.random.default_rng(1).standard_normal((args.n, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        params = {"stage": "indexer.dense", "index_type": "flat", "dim": 384, "model": "random",
                  "model_id": "random", "normalize": True}
        d = DenseIndex.build(vecs, [c.chunk_id for c in chunks], [c.doc_id for c in chunks], texts, None, params)
        t0 = time.perf_counter()
        d.save(tmp / "dense")
        res["dense_save_s"] = time.perf_counter() - t0

        for kind, folder, load in (("bm25", tmp / "bm25", lambda v: BM25Index.load(tmp / "bm25", verify=v)),
                                   ("dense", tmp / "dense", lambda v: DenseIndex.load(tmp / "dense", verify=v))):
            size = folder_bytes(folder)
            p = json.loads((folder / "params.json").read_text())
            files = [folder / n for n in p["files"]]
            r = {"bytes": size, "bytes_per_passage": size / args.n, "files": len(files)}
            r["hash_files_s"] = best(lambda: [file_sha256(f) for f in files], args.repeat)
            r["sha256_files_MBps"] = size / r["hash_files_s"] / 1e6
            r["checksum_pass_at_save_s"] = best(lambda: [file_record(f) for f in files], args.repeat)
            r["verify_fast_s"] = best(lambda: verify_files(folder, p, "fast"), args.repeat)
            r["verify_full_s"] = best(lambda: verify_files(folder, p, "full"), args.repeat)
            for v in ("off", "fast", "full"):
                r[f"load_{v}_s"] = best(lambda: load(v), args.repeat)
            r["extrapolated_1M_bytes"] = r["bytes_per_passage"] * 1e6
            r["extrapolated_1M_full_s"] = r["extrapolated_1M_bytes"] / (r["sha256_files_MBps"] * 1e6)
            r["extrapolated_1M_full_s_mem_rate"] = r["extrapolated_1M_bytes"] / (res["sha256_mem_MBps"] * 1e6)
            r["fast_bytes_read"] = sum(min(f.stat().st_size, 2 << 16) for f in files)
            res[kind] = r
        # per-query bounds check of the BM25 postings (indices.npy rows): queries with and without it
        import ragkit.indexers.bm25 as bm

        from bench_bm25 import queries
        from ragkit.indexers._tokenize import Tokenizer

        idx = BM25Index.load(tmp / "bm25")
        tok = Tokenizer(idx.tokenizer_config)
        qids = [tok.encode_query(q, idx.vocab_ids) for q in queries(300)]
        real = bm.check_rows

        def run_all():
            for q in qids:
                idx.search(q, 100)

        with_check, without = [], []
        for _ in range(args.repeat):
            bm.check_rows = real
            with_check.append(best(run_all, 1))
            bm.check_rows = lambda *a: None
            without.append(best(run_all, 1))
        bm.check_rows = real
        res["bm25_query_check"] = {"queries": len(qids), "with_s": min(with_check), "without_s": min(without),
                                   "ratio": min(with_check) / min(without)}
    res["loadavg_after"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "verify.json").write_text(json.dumps(res, indent=2))
    (OUT / "verify.md").write_text(report(res, " ".join(sys.argv[1:])))
    print(report(res, " ".join(sys.argv[1:])))


def report(r: dict, argv: str) -> str:
    lines = [
        "# Index verification cost (RAGKIT_VERIFY = off / fast / full)", "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/bench_verify.py {argv}` (x86_64, {r['cpus']} CPUs, "
        f"Python {r['python']}; load average before {r['loadavg_before'][0]:.1f}, after "
        f"{r['loadavg_after'][0]:.1f}: the machine is shared; times are {r['clock']}, best of the repeats).", "",
        f"N = {r['n']:,} real passages (Cranfield, CISI, SQuAD repeated). sha256 in memory: "
        f"**{r['sha256_mem_MBps']:.0f} MB/s**.", "",
        "| index | MB on disk | bytes/passage | files | sha256 over files MB/s | checksum pass at save s | "
        "verify fast s | verify full s | load off s | load fast s | load full s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ("bm25", "dense"):
        x = r[k]
        lines.append(f"| {k} | {x['bytes'] / 1e6:.1f} | {x['bytes_per_passage']:.0f} | {x['files']} | "
                     f"{x['sha256_files_MBps']:.0f} | {x['checksum_pass_at_save_s']:.3f} | {x['verify_fast_s']:.4f} | "
                     f"{x['verify_full_s']:.3f} | {x['load_off_s']:.3f} | {x['load_fast_s']:.3f} | {x['load_full_s']:.3f} |")
    lines += ["", "## Extrapolated to 1M passages", "",
              "Full mode hashes every byte, so its cost is linear in index size: bytes/passage x 1M / measured "
              "throughput. Fast mode reads at most 128 KiB per file (head and tail), so its cost does not grow with N.",
              "", "| index | bytes at 1M | full verify s (file rate) | full verify s (memory rate) | fast verify reads |",
              "|---|---|---|---|---|"]
    for k in ("bm25", "dense"):
        x = r[k]
        lines.append(f"| {k} | {x['extrapolated_1M_bytes'] / 1e9:.2f} GB | {x['extrapolated_1M_full_s']:.1f} | "
                     f"{x['extrapolated_1M_full_s_mem_rate']:.1f} | {x['files']} files, <= {x['files'] * 128} KiB |")
    q = r["bm25_query_check"]
    lines += ["", f"Per-query bounds check of the BM25 postings (row numbers from indices.npy): {q['queries']} "
              f"queries, k = 100, in {q['with_s']:.3f} s with it and {q['without_s']:.3f} s without "
              f"(ratio {q['ratio']:.3f}; alternated, best of the repeats)."]
    lines += ["", "The same full-hash pass runs once at every save (to record the checksums): the "
              "`checksum pass at save` column, which extrapolates the same way. A cold page cache adds the "
              "disk read time to full verification (the whole index is read once)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
