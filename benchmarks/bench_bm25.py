"""BM25 speed and memory: ragkit (indexer.bm25 / retriever.bm25) vs bm25s used directly vs rank_bm25.

Corpus: the real passages of Cranfield (1,398 abstracts), CISI (1,460 abstracts) and SQuAD v1.1
dev part A (1,023 paragraphs) from ``../shared/data`` -- 3,881 passages -- repeated with fresh
ids until the corpus has N passages (so the vocabulary stays that of 3,881 passages and every
term's document frequency grows with N). Queries: the 225 Cranfield + 76 judged CISI queries
and SQuAD questions, up to ``--queries``.

Every case runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its
own. All use the same scorer (lucene variant, k1 1.2, b 0.75), the same tokenization (NLTK
English stopwords, Porter stemmer via PyStemmer) and k = 100:

- ``bm25s``: ``bm25s.tokenize`` + ``BM25.index``; queries ``bm25s.tokenize`` + ``BM25.retrieve``.
- ``ragkit``: ``BM25Indexer.build`` (tokenize + bm25s index + tie-break order), then ``save``
  (atomic folder, texts included) timed apart; in a fresh process ``BM25Retriever`` loads the
  folder memory-mapped (``setup``) and runs the queries in batches of 100.
- ``rank_bm25``: ``BM25Okapi`` on the same tokens; ``get_scores`` + ``argpartition`` top-k for a
  query subset (its cost per query is linear in N with Python loops).

    nice -n 5 .venv/bin/python benchmarks/bench_bm25.py --sizes 10000 100000 1000000

Writes ``benchmarks/results/bm25.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
OUT = HERE / "results"
K1, B, METHOD, K = 1.2, 0.75, "lucene", 100


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def base_passages() -> tuple[list[str], list[str]]:
    """The 3,881 passages, and the queries of the three sets interleaved round-robin (Cranfield,
    CISI, SQuAD, Cranfield, ...; a set that runs out is skipped), so any prefix mixes long
    technical queries with short questions."""
    from itertools import chain, zip_longest

    from ragkit.eval.datasets import load_dataset

    texts, per_set = [], []
    for name in ("cranfield", "cisi", "squad"):
        ds = load_dataset(name, data_dir=DATA)
        texts += [d.text for d in ds.corpus]
        per_set.append([q.text for q in ds.queries])
    return texts, [q for q in chain.from_iterable(zip_longest(*per_set)) if q is not None]


def corpus(n: int) -> list[str]:
    base, _ = base_passages()
    return [base[i % len(base)] for i in range(n)]


def queries(m: int) -> list[str]:
    return base_passages()[1][:m]


def stopwords() -> list[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return list(STOPWORDS_EN_PLUS)


# -- cases (each runs in a child process) ---------------------------------------------------------


def case_bm25s(n: int, m: int, folder: str) -> dict:
    import bm25s
    import Stemmer

    texts, qs = corpus(n), queries(m)
    rss0 = rss_mb()
    stem = Stemmer.Stemmer("porter")
    sw = stopwords()
    c0, t0 = time.process_time(), time.perf_counter()
    tok = bm25s.tokenize(texts, stopwords=sw, stemmer=stem, show_progress=False)
    t1 = time.perf_counter()
    eng = bm25s.BM25(k1=K1, b=B, method=METHOD)
    eng.index(tok, show_progress=False)
    c2, t2 = time.process_time(), time.perf_counter()
    del tok
    c3, t3 = time.process_time(), time.perf_counter()
    qtok = bm25s.tokenize(qs, stopwords=sw, stemmer=stem, show_progress=False, return_ids=False)
    res = eng.retrieve(qtok, k=K, show_progress=False)
    c4, t4 = time.process_time(), time.perf_counter()
    assert res.documents.shape == (m, K)
    return {"tokenize_s": t1 - t0, "index_s": t2 - t1, "build_s": t2 - t0, "build_cpu_s": c2 - c0,
            "query_s": t4 - t3, "query_cpu_s": c4 - c3, "qps": m / (t4 - t3), "rss_input_mb": rss0,
            "peak_rss_mb": rss_mb()}


def case_ragkit_build(n: int, m: int, folder: str) -> dict:
    import bm25s  # noqa: F401  (engine import outside the timing, as in the bm25s case)
    import Stemmer  # noqa: F401

    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.records import Chunk

    base = corpus(n)
    chunks = [Chunk(f"p{i}", f"p{i}", t, 0, len(t)) for i, t in enumerate(base)]
    rss0 = rss_mb()
    stage = BM25Indexer(path=folder, k1=K1, b=B, method=METHOD, stopwords="en_plus", stemmer="porter")
    stage.__dict__["_progress"] = False
    c0, t0 = time.process_time(), time.perf_counter()
    idx = stage.build(chunks)
    c1, t1 = time.process_time(), time.perf_counter()
    idx.save(folder)
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in Path(folder).iterdir())
    return {"build_s": t1 - t0, "build_cpu_s": c1 - c0, "save_s": t2 - t1, "index_mb": size / 2**20, "nnz": idx.params["nnz"],
            "vocab": idx.params["vocab_size"], "rss_input_mb": rss0, "peak_rss_mb": rss_mb()}


def case_ragkit_query(n: int, m: int, folder: str) -> dict:
    from ragkit.records import Query
    from ragkit.retrievers.bm25 import BM25Retriever

    qs = [Query(str(i), t) for i, t in enumerate(queries(m))]
    rss0 = rss_mb()
    t0 = time.perf_counter()
    r = BM25Retriever(index=folder, k=K).setup()
    c1, t1 = time.process_time(), time.perf_counter()
    out = []
    for i in range(0, len(qs), 100):
        out += r(qs[i:i + 100])
    c2, t2 = time.process_time(), time.perf_counter()
    assert len(out) == m
    return {"load_s": t1 - t0, "query_s": t2 - t1, "query_cpu_s": c2 - c1, "qps": m / (t2 - t1), "rss_input_mb": rss0,
            "peak_rss_mb": rss_mb(), "mean_hits": sum(len(x.hits) for x in out) / m}


def case_query_same_process(n: int, m: int, folder: str) -> dict:
    """ragkit's retriever and bm25s.retrieve on the same (memory-mapped) score matrix in one
    process, in alternating rounds: the least noisy query-time ratio on a shared machine."""
    import statistics

    import bm25s
    import Stemmer

    from ragkit.records import Query
    from ragkit.retrievers.bm25 import BM25Retriever

    qs = queries(m)
    rq = [Query(str(i), t) for i, t in enumerate(qs)]
    r = BM25Retriever(index=folder, k=K).setup()
    idx = r.__dict__["_idx"]
    eng = bm25s.BM25(k1=K1, b=B, method=METHOD)
    eng.scores = {"data": idx.data, "indices": idx.indices, "indptr": idx.indptr, "num_docs": idx.num_docs}
    eng.vocab_dict = idx.vocab_ids
    eng.unique_token_ids_set = set(idx.vocab_ids.values())
    eng.nonoccurrence_array = None
    stem, sw = Stemmer.Stemmer("porter"), stopwords()

    def run_bm25s():
        qt = bm25s.tokenize(qs, stopwords=sw, stemmer=stem, show_progress=False, return_ids=False)
        return eng.retrieve(qt, k=K, show_progress=False)

    def run_ragkit():
        return [h for i in range(0, len(rq), 100) for h in r(rq[i:i + 100])]

    def run_ragkit_arrays():  # the same work without building Hit/Ranking records
        tok, vocab = r.__dict__["_tok"], idx.vocab_ids
        return [idx.search(tok.encode_query(q, vocab), K) for q in qs]

    times: dict[str, list[float]] = {"ragkit": [], "bm25s": [], "ragkit_arrays": []}
    for _ in range(3):
        for name, fn in (("ragkit", run_ragkit), ("bm25s", run_bm25s), ("ragkit_arrays", run_ragkit_arrays)):
            c0 = time.process_time()
            fn()
            times[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ragkit_query_cpu_s": med["ragkit"], "bm25s_query_cpu_s": med["bm25s"],
            "ragkit_arrays_cpu_s": med["ragkit_arrays"], "ratio": med["ragkit"] / med["bm25s"], "rounds": times}


def case_rank_bm25(n: int, m: int, folder: str) -> dict:
    import numpy as np
    from rank_bm25 import BM25Okapi

    from ragkit.indexers._tokenize import Tokenizer, TokenizerConfig

    texts, qs = corpus(n), queries(m)
    tok = Tokenizer(TokenizerConfig(stopwords="en_plus", stemmer="porter"))
    rss0 = rss_mb()
    t0 = time.perf_counter()
    ids, vocab = tok.encode_corpus(texts)
    docs = [[vocab[i] for i in d] for d in ids]
    del ids
    t1 = time.perf_counter()
    eng = BM25Okapi(docs, k1=K1, b=B)
    t2 = time.perf_counter()
    for q in qs:
        s = eng.get_scores(tok.terms(q))
        top = np.argpartition(-s, K)[:K]
        top[np.argsort(-s[top])]
    t3 = time.perf_counter()
    return {"tokenize_s": t1 - t0, "index_s": t2 - t1, "build_s": t2 - t0, "query_s": t3 - t2,
            "qps": m / (t3 - t2), "rss_input_mb": rss0, "peak_rss_mb": rss_mb()}


CASES = {"bm25s": case_bm25s, "ragkit_build": case_ragkit_build, "ragkit_query": case_ragkit_query,
         "same_process": case_query_same_process, "rank_bm25": case_rank_bm25}


def run_case(name: str, n: int, m: int, folder: str, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, str(n), str(m), folder]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "DISABLE_TQDM": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="BM25 speed/memory: ragkit vs bm25s vs rank_bm25")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000, help="queries per size for ragkit and bm25s")
    ap.add_argument("--queries-large", type=int, default=300, help="queries at N >= 1,000,000 (keeps the run short)")
    ap.add_argument("--rank-bm25-max", type=int, default=100_000, help="largest size rank_bm25 runs at")
    ap.add_argument("--rank-bm25-queries", type=int, nargs=2, default=[1000, 50],
                    help="rank_bm25 queries at 10k and at larger sizes")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, n, m, folder = args.child
        print(json.dumps(CASES[name](int(n), int(m), folder)))
        return

    results = []
    t_all = time.time()
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-bm25-") as tmp:
            folder = str(Path(tmp) / "idx")
            nq = args.queries if n < 1_000_000 else args.queries_large
            row = {"n": n, "queries": nq}
            for name in ("bm25s", "ragkit_build", "ragkit_query", "same_process"):
                row[name] = run_case(name, n, nq, folder, args.timeout)
                print(n, name, row[name], file=sys.stderr, flush=True)
            if n <= args.rank_bm25_max:
                m = args.rank_bm25_queries[0] if n <= 10_000 else args.rank_bm25_queries[1]
                row["rank_bm25"] = dict(run_case("rank_bm25", n, m, folder, args.timeout), queries=m)
                print(n, "rank_bm25", row["rank_bm25"], file=sys.stderr, flush=True)
        results.append(row)
    info = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "seconds": round(time.time() - t_all, 1), "command": "nice -n 5 .venv/bin/python benchmarks/bench_bm25.py "
            + " ".join(sys.argv[1:])}
    try:
        import bm25s
        import numpy

        info["versions"] = f"bm25s {bm25s.__version__}, numpy {numpy.__version__}"
    except ImportError:
        pass
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bm25.json").write_text(json.dumps({"info": info, "results": results}, indent=1), encoding="utf-8")
    (OUT / "bm25.md").write_text(report(info, results), encoding="utf-8")
    print(report(info, results))


def report(info: dict, results: list[dict]) -> str:
    def f(x, nd=2):
        return "-" if x is None else f"{x:,.{nd}f}"

    lines = ["# BM25 speed and memory: ragkit vs bm25s vs rank_bm25", "",
             f"Command: `{info['command']}` ({info['seconds']} s; {info['machine']}; Python {info['python']}; "
             f"{info.get('versions', '')}). Each case is a separate process; peak RSS is its `ru_maxrss`, which "
             "includes the input corpus held in memory (`input RSS`, measured before building).", "",
             "Corpus: the 3,881 real passages of Cranfield (1,398), CISI (1,460) and SQuAD v1.1 dev part A (1,023), "
             "**repeated with fresh ids** up to N, so the vocabulary is that of 3,881 passages and document "
             "frequencies grow with N. Queries: Cranfield, CISI and SQuAD questions interleaved round-robin (so a prefix of 300 holds 100 Cranfield, 76 CISI, 124 SQuAD; 1000 holds 225, 76, 699). Same scorer for all "
             f"({METHOD}, k1 {K1}, b {B}; rank_bm25 has only Okapi), same tokenization (NLTK English stopwords, "
             f"Porter), k = {K}.", "",
             "ragkit build = tokenize + bm25s index + tie-break order; save = atomic index folder incl. texts; "
             "query = a fresh process that loads the folder memory-mapped, then runs the queries in batches of "
             "100 through `BM25Retriever` (Ranking/Hit objects included). bm25s = `bm25s.tokenize` + "
             "`BM25.index`, queries `bm25s.tokenize` + `BM25.retrieve`.", "",
             "| N | system | build s | save s | load s | queries | query/s | peak RSS MB | input RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        n = row["n"]
        s, rb, rq = row["bm25s"], row["ragkit_build"], row["ragkit_query"]
        for label, d in (("bm25s", s), ("ragkit build+save", rb), ("ragkit query (mmap)", rq),
                         ("rank_bm25", row.get("rank_bm25"))):
            if d is None:
                continue
            if "error" in d:
                lines.append(f"| {n:,} | {label} | error: {d['error']} | | | | | | |")
                continue
            lines.append(f"| {n:,} | {label} | {f(d.get('build_s'))} | {f(d.get('save_s'))} | "
                         f"{f(d.get('load_s'))} | {d.get('queries', row['queries']) if 'qps' in d else '-'} | "
                         f"{f(d.get('qps'), 1)} | {f(d.get('peak_rss_mb'), 0)} | {f(d.get('rss_input_mb'), 0)} |")
    lines += ["", "## Ratios ragkit / bm25s (target: within 1.2x)", "",
              "Wall-clock ratios, and CPU-time ratios (`time.process_time`, less sensitive to other jobs "
              "sharing the 2 cores) in brackets.", "",
              "Peak RSS ratios compare whole processes; ragkit's build input is Chunk records, bm25s' is a list "
              "of strings, so the ratio of peak minus input RSS is given in brackets.", "",
              "| N | build time | query time | peak RSS (build) | peak RSS (query) | index on disk MB | nnz |",
              "|---|---|---|---|---|---|---|"]
    for row in results:
        s, rb, rq = row["bm25s"], row["ragkit_build"], row["ragkit_query"]
        if any("error" in d for d in (s, rb, rq)):
            continue
        lines.append(f"| {row['n']:,} | {rb['build_s'] / s['build_s']:.2f} ({rb['build_cpu_s'] / s['build_cpu_s']:.2f}) "
                     f"| {rq['query_s'] / s['query_s']:.2f} ({rq['query_cpu_s'] / s['query_cpu_s']:.2f}) | "
                     f"{rb['peak_rss_mb'] / s['peak_rss_mb']:.2f} ("
                     f"{(rb['peak_rss_mb'] - rb['rss_input_mb']) / (s['peak_rss_mb'] - s['rss_input_mb']):.2f}) | "
                     f"{rq['peak_rss_mb'] / s['peak_rss_mb']:.2f} | "
                     f"{rb['index_mb']:,.0f} | {rb['nnz']:,} |")
    lines += ["", "## Query time in one process (alternating rounds, same memory-mapped matrix)", "",
              "The separate-process query figures above are taken minutes apart on a machine shared with other "
              "jobs. Here `BM25Retriever` (tokenize, score, top-k with doc-id tie-break, Hit/Ranking records) and "
              "`bm25s.tokenize` + `BM25.retrieve` (numpy backend; it returns arrays) run on the same score matrix "
              "in one process, 3 alternating rounds each, median CPU seconds. `ragkit arrays` is the retriever's "
              "work without building Hit/Ranking records (tokenize + `BM25Index.search`), the like of what "
              "bm25s returns.", "",
              "| N | queries | ragkit s | bm25s s | ragkit / bm25s | ragkit arrays s | arrays / bm25s |",
              "|---|---|---|---|---|---|---|"]
    for row in results:
        sp = row.get("same_process")
        if sp and "error" not in sp:
            lines.append(f"| {row['n']:,} | {row['queries']} | {sp['ragkit_query_cpu_s']:.2f} | "
                         f"{sp['bm25s_query_cpu_s']:.2f} | {sp['ratio']:.2f} | {sp['ragkit_arrays_cpu_s']:.2f} | "
                         f"{sp['ragkit_arrays_cpu_s'] / sp['bm25s_query_cpu_s']:.2f} |")
    lines += ["", "rank_bm25 (for scale): "]
    for row in results:
        rk = row.get("rank_bm25")
        if rk and "error" not in rk:
            lines[-1] += (f"N={row['n']:,}: build {rk['build_s']:.1f} s, {rk['qps']:.1f} query/s over "
                          f"{rk['queries']} queries (ragkit {row['ragkit_query']['qps'] / rk['qps']:.0f}x faster "
                          f"per query). ")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
