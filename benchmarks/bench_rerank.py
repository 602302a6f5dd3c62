"""Reranker benchmarks: throughput vs sentence-transformers, reranking quality, training loss plot.

    # pairs/s of reranker.cross_encoder vs CrossEncoder.predict on the same pairs, same run
    nice -n 5 .venv/bin/python benchmarks/bench_rerank.py throughput --model <ckpt> [--pairs 1024]
    # nDCG@10 / MRR@10: BM25 top-100, hybrid (RRF of BM25 + dense MiniLM), BM25 >> cross-encoder,
    # BM25 >> reranker.llm, on held-out SQuAD (articles never trained on), Cranfield and CISI
    nice -n 5 .venv/bin/python benchmarks/bench_rerank.py quality --model <ckpt> [--queries 100 --llm-queries 20]
    # loss curve PNG of a train-reranker run
    .venv/bin/python benchmarks/bench_rerank.py plot --log <output>/train_log.jsonl

Results go to benchmarks/results/rerank_{throughput,quality}.{md,json} and rerank_train_loss.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _env() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "loadavg_start": os.getloadavg()[0]}


def _squad_pairs(n_pairs: int, per_query: int = 25) -> tuple[list[str], list[str]]:
    from ragkit.rerankers import _train_data as D

    ds = D.load("squad", str(DATA) if DATA.exists() else None)
    _, held = D.split_qids(ds, 6)
    rk = D.bm25_rankings(ds, held[: (n_pairs + per_query - 1) // per_query], k=per_query)
    qs, ps = [], []
    for r in rk:
        for h in r.hits:
            qs.append(r.query.text)
            ps.append(h.text)
    return qs[:n_pairs], ps[:n_pairs]


def throughput(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from ragkit.rerankers.cross_encoder import CrossEncoderReranker

    model = args.model
    tmp = None
    if not model:  # any checkpoint serves for speed: MiniLM + an (untrained) one-logit head
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ragkit.rerankers._base import resolve_model

        tmp = tempfile.mkdtemp(prefix="bench-rerank-")
        src = resolve_model("minilm")
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        model = tmp
    qs, ps = _squad_pairs(args.pairs)
    rk = CrossEncoderReranker(model=model, batch_size=args.batch_size, max_length=512).setup()
    ce = CrossEncoder(model, max_length=512, device="cpu")
    pairs = list(zip(qs, ps))
    identity = torch.nn.Identity()
    res: dict[str, list[float]] = {"ragkit": [], "st": []}
    s_r = s_c = None
    for rnd in range(args.rounds):
        for name in (("ragkit", "st") if rnd % 2 == 0 else ("st", "ragkit")):
            t = time.perf_counter()
            if name == "ragkit":
                s_r, _ = rk.score_pairs(qs, ps)
            else:
                s_c = ce.predict(pairs, batch_size=args.batch_size, activation_fn=identity, show_progress_bar=False)
            res[name].append(len(pairs) / (time.perf_counter() - t))
    diff = float(np.max(np.abs(np.asarray(s_r) - np.asarray(s_c))))
    lens = rk._tok(qs, ps, truncation="only_second", max_length=512, return_length=True)["length"]
    out = {"pairs": len(pairs), "batch_size": args.batch_size, "rounds": args.rounds,
           "model": args.model or "minilm + untrained 1-logit head", "device": "cpu",
           "pair_tokens_mean": round(statistics.mean(lens), 1), "pair_tokens_max": max(lens),
           "ragkit_pairs_per_s": [round(x, 1) for x in res["ragkit"]],
           "st_pairs_per_s": [round(x, 1) for x in res["st"]],
           "ragkit_median": round(statistics.median(res["ragkit"]), 1),
           "st_median": round(statistics.median(res["st"]), 1),
           "ratio_ragkit_over_st": round(statistics.median(res["ragkit"]) / statistics.median(res["st"]), 3),
           "max_abs_score_diff": diff, "env": _env()}
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sample(qids: list[str], n: int | None, seed: int = 0) -> list[str]:
    if n is None or n >= len(qids):
        return list(qids)
    keep = set(random.Random(seed).sample(qids, n))
    return [q for q in qids if q in keep]


def quality(args: argparse.Namespace) -> dict:
    import ir_measures
    from ir_measures import RR, nDCG

    from ragkit.eval.datasets import load_dataset
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.pipeline import documents_as_chunks
    from ragkit.rerankers import _train_data as D
    from ragkit.rerankers.cross_encoder import CrossEncoderReranker
    from ragkit.rerankers.llm import LLMReranker
    from ragkit.retrievers.bm25 import BM25Retriever

    measures = [nDCG @ 10, RR @ 10]
    out: dict = {"env": _env(), "datasets": {}, "model": args.model, "llm": args.llm, "llm_top_n": args.llm_top_n,
                 "max_length": args.max_length,
                 "queries": args.queries, "llm_queries": args.llm_queries}
    tmp = Path(tempfile.mkdtemp(prefix="bench-rerank-q-"))
    ce = CrossEncoderReranker(model=args.model, top_n=100, batch_size=32, max_length=args.max_length)
    llm = LLMReranker(model=args.llm, top_n=args.llm_top_n, batch_size=16, max_length=args.max_length) \
        if args.llm_queries else None
    for name in args.datasets:
        ds = load_dataset(name, data_dir=str(DATA) if DATA.exists() else None)
        if name == "squad":
            _, judged = D.split_qids(ds, 6)  # held-out articles only: never seen in training
        else:
            judged = ds.judged_qids()
        qids = _sample(judged, args.queries)
        llm_qids = _sample(qids, args.llm_queries, seed=1) if args.llm_queries else []
        qmap = {q.qid: q for q in ds.queries}
        queries = [qmap[q] for q in qids]
        t = time.perf_counter()
        BM25Indexer(path=str(tmp / f"{name}-bm25"))(documents_as_chunks(ds.corpus))
        bm25 = BM25Retriever(index=str(tmp / f"{name}-bm25"), k=100, text=True)
        systems: dict[str, list] = {}
        times: dict[str, float] = {}
        t = time.perf_counter()
        systems["bm25"] = bm25(queries)
        times["bm25"] = time.perf_counter() - t
        if args.hybrid:
            from ragkit.indexers.dense import DenseIndexer
            from ragkit.retrievers.dense import DenseRetriever
            from ragkit.retrievers.fusion import RRFFusion

            t = time.perf_counter()
            DenseIndexer(path=str(tmp / f"{name}-dense"), model="minilm")(documents_as_chunks(ds.corpus))
            dense = DenseRetriever(index=str(tmp / f"{name}-dense"), k=100)
            times["dense_index"] = time.perf_counter() - t
            t = time.perf_counter()
            systems["hybrid_rrf"] = RRFFusion(retrievers=[BM25Retriever(index=str(tmp / f"{name}-bm25"), k=100), dense],
                                              k=100)(queries)
            times["hybrid_rrf"] = time.perf_counter() - t
        t = time.perf_counter()
        systems["bm25>>cross_encoder"] = ce(systems["bm25"])
        times["bm25>>cross_encoder"] = time.perf_counter() - t
        sub = [r for r in systems["bm25"] if r.qid in set(llm_qids)]
        t = time.perf_counter()
        llm_out = llm(sub) if sub and llm is not None else []
        times["bm25>>llm"] = time.perf_counter() - t
        qrels = [ir_measures.Qrel(q, d, g) for q, rel in ds.qrels.items() for d, g in rel.items()]

        def score(rankings, keep):
            run = [ir_measures.ScoredDoc(r.qid, h.doc_id, h.score) for r in rankings if r.qid in keep for h in r.hits]
            qr = [x for x in qrels if x.query_id in keep]
            agg = ir_measures.calc_aggregate(measures, qr, run)
            return {"nDCG@10": round(float(agg[nDCG @ 10]), 4), "MRR@10": round(float(agg[RR @ 10]), 4)}

        full, small = set(qids), set(llm_qids)
        res = {"n_queries": len(qids), "n_llm_queries": len(llm_qids), "docs": len(ds.corpus), "seconds": {},
               "all": {k: score(v, full) for k, v in systems.items()},
               "llm_sample": ({**{k: score(v, small) for k, v in systems.items()}, "bm25>>llm": score(llm_out, small)}
                              if small else {})}
        res["seconds"] = {k: round(v, 1) for k, v in times.items()}
        res["pairs_per_s"] = {"cross_encoder": round(sum(min(100, len(r)) for r in systems["bm25"]) / times["bm25>>cross_encoder"], 1),
                              "llm": round(sum(min(args.llm_top_n, len(r)) for r in sub) / max(times["bm25>>llm"], 1e-9), 1)}
        out["datasets"][name] = res
        print(name, json.dumps(res), flush=True)
    out["env"]["loadavg_end"] = os.getloadavg()[0]
    return out


def plot(args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in Path(args.log).read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    w = max(1, args.window)
    smooth = [sum(loss[max(0, i - w + 1): i + 1]) / len(loss[max(0, i - w + 1): i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="#bbbbbb", lw=0.8, label="batch loss")
    ax.plot(steps, smooth, color="#1f77b4", lw=1.8, label=f"moving average ({w} steps)")
    ax.set_xlabel("step (batch of 16 pairs)")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title(args.title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(args.png)
    fig.savefig(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="", help="cross-encoder checkpoint (default: MiniLM + untrained head)")
    t.add_argument("--pairs", type=int, default=1024)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--rounds", type=int, default=3)
    q = sub.add_parser("quality")
    q.add_argument("--model", required=True, help="trained cross-encoder checkpoint")
    q.add_argument("--llm", default="smollm2-135m-instruct")
    q.add_argument("--datasets", nargs="+", default=["squad", "cranfield", "cisi"])
    q.add_argument("--queries", type=int, default=100, help="seeded sample of judged queries per dataset")
    q.add_argument("--llm-queries", type=int, default=20, help="sub-sample reranked by reranker.llm")
    q.add_argument("--llm-top-n", type=int, default=100, help="hits reranked by reranker.llm (the rest kept below)")
    q.add_argument("--max-length", type=int, default=512)
    q.add_argument("--no-hybrid", dest="hybrid", action="store_false")
    q.add_argument("--out", default=None, help="result file stem under benchmarks/results/ (default: rerank_quality)")
    g = sub.add_parser("plot")
    g.add_argument("--log", required=True)
    g.add_argument("--png", default=str(OUT / "rerank_train_loss.png"))
    g.add_argument("--window", type=int, default=25)
    g.add_argument("--title", default="monoBERT training from all-MiniLM-L6-v2 on SQuAD part-a (train articles)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["nice -n 5 .venv/bin/python benchmarks/bench_rerank.py"] + sys.argv[1:])
    t0 = time.perf_counter()
    if args.cmd == "plot":
        print(plot(args))
        return
    res = throughput(args) if args.cmd == "throughput" else quality(args)
    res["command"] = cmd
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    name = getattr(args, "out", None) or f"rerank_{args.cmd}"
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
