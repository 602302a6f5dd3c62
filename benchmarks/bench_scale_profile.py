"""Profile one BM25 build: plain local vs serial sharded vs Dask, with the map/build breakdown.

    .venv/bin/python benchmarks/bench_scale_profile.py N [plain] [serial] [local:1] ...   (PARTS=k: partitions)

Prints, per path, the wall time, the client's CPU time and the build statistics (``map_s`` / ``build_s`` on
the client, ``map_compute_s`` / ``build_compute_s`` inside the worker's task). Results and the story of the
fixes: benchmarks/results/scale_overhead_profile.md. One build per path: for ratios use bench_scale.py.
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_scale as B  # noqa: E402


def main() -> None:
    from ragkit.distributed import open_executor

    n = int(sys.argv[1])
    which = sys.argv[2:] or ["plain", "serial", "local:1"]
    t0 = time.perf_counter()
    docs = B.corpus(n)
    print("corpus", round(time.perf_counter() - t0, 2), flush=True)
    t0 = time.perf_counter()
    blob = pickle.dumps(docs)
    t1 = time.perf_counter()
    pickle.loads(blob)
    print(f"pickle docs {len(blob) / 1e6:.1f} MB dump {t1 - t0:.2f}s load {time.perf_counter() - t1:.2f}s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="prof-"))
    p = B.pipeline("bm25", tmp / "idx")
    parts = int(os.environ.get("PARTS", "0")) or None
    for w in which:
        cfg = None if w == "plain" else w
        with open_executor(cfg, partitions=parts) if cfg else open_executor("serial") as ex:
            if cfg is None:
                ex = None
            p.build_index(docs[:8], executor=ex, progress=False)
            c0 = os.times()
            t0 = time.perf_counter()
            st = p.build_index(docs, executor=ex, progress=False)
            c1 = os.times()
            print(w, f"{time.perf_counter() - t0:.2f}s client-cpu {c1.user - c0.user + c1.system - c0.system:.2f}s", st,
                  B.load(), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
