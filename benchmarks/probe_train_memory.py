"""Peak memory of a short train-reranker run, with glibc's default malloc or with a fixed mmap threshold.

    python benchmarks/probe_train_memory.py plain|trim

``trim`` calls ``mallopt(M_MMAP_THRESHOLD, 1 MiB)`` first, which stops glibc from raising the
threshold (blocks above it are mmapped and given back on free). 200 questions, 40 steps, 1 thread.
Recorded in results/rerank.md (training section).
"""
import ctypes
import resource
import sys

if sys.argv[1] == "trim":
    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)   # -3 = M_MMAP_THRESHOLD
from ragkit.rerankers.train import train_reranker  # noqa: E402

s = train_reranker("/tmp/memprobe-" + sys.argv[1], dataset="squad", model="minilm", max_queries=200, max_steps=40,
                   threads=1, progress=False, resume=False)
print(sys.argv[1], "max RSS MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "seconds", s["seconds"])
