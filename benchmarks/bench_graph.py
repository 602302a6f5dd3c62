"""Graph retrieval on multi-hop QA: supporting-paragraph recall at equal context budgets, R@5/R@10,
query latency, and (optionally) SmolLM2 answer quality for the best two graph retrievers.

Datasets: HotpotQA-100 (distractor) and 2WikiMultihopQA-100 from ../shared/data, as ragkit's
``load_dataset`` reads them: the corpus is every context paragraph (one document per title, about
1,000 per set), a question's relevant documents are its supporting-fact titles.

Indexes (built once under ``--work``, reused when present): ``indexer.bm25``, ``indexer.dense``
(minilm, flat) and ``indexer.graph`` (spaCy extractor, minilm vectors; named entities only unless
``--noun-chunks``).

Retrievers: BM25, dense MiniLM, ``retriever.lightrag`` in each mode, ``retriever.pathrag`` and
``retriever.ppr`` (plus the PPR variants named in ``--ppr-variants``), all with their defaults
unless stated, offline keyword extraction (spaCy).

Metrics per retriever:

- ``R@5``, ``R@10``: share of a question's supporting paragraphs among the first 5 / 10 hits,
  averaged over questions;
- ``Rb@1000``, ``Rb@2000`` (**equal context budget**): the context a generator would get -- the
  graph context rendered as ``generator.hf`` renders it (capped at a quarter of the budget, the
  most reliable PathRAG paths kept first) plus the hit passages in rank order while they fit --
  counted in SmolLM2 tokens; the score is the share of supporting paragraphs whose passage is in it;
- latency p50/p95 of one query (retrieval only, after setup, single-threaded), with ``uptime``.

``--generate N``: EM / F1 / EM-in (answer contained) with SmolLM2-135M-Instruct for the two graph
retrievers with the best ``Rb@1000`` and for dense, on the first N questions, context = the
1,000-token budget above.

    nice -n 10 .venv/bin/python benchmarks/bench_graph.py [--datasets hotpotqa 2wikimultihopqa] [--generate 100]

Results: benchmarks/results/graph.{md,json} (the command line is recorded in them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def load_avg() -> str:
    try:
        return open("/proc/loadavg").read().split(" ")[0:3].__str__()
    except OSError:
        return "n/a"


def build_indexes(ds, work: Path, log, noun_chunks: bool, graph_model: str) -> dict[str, str]:
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.indexers.graph import GraphIndexer
    from ragkit.records import as_chunks

    chunks = as_chunks(ds.corpus)
    paths = {}
    stats = {}
    for name, make in (("bm25", lambda p: BM25Indexer(path=p)),
                       ("dense", lambda p: DenseIndexer(path=p, model="minilm")),
                       ("graph", lambda p: GraphIndexer(path=p, model=graph_model, noun_chunks=noun_chunks))):
        p = work / f"{ds.name}-{name}" if name != "graph" else \
            work / f"{ds.name}-graph-{graph_model}-nc{int(noun_chunks)}"
        paths[name] = str(p)
        if (p / "params.json").exists():
            continue
        t0 = time.perf_counter()
        make(str(p))(chunks)
        stats[name] = time.perf_counter() - t0
        log(f"  built {name} index of {len(chunks)} chunks in {stats[name]:.1f} s")
    return paths


def retrievers(paths: dict[str, str], ppr_variants: list[str]) -> dict[str, object]:
    from ragkit.retrievers.bm25 import BM25Retriever
    from ragkit.retrievers.dense import DenseRetriever
    from ragkit.retrievers.lightrag import LightRAGRetriever
    from ragkit.retrievers.pathrag import PathRAGRetriever
    from ragkit.retrievers.ppr import PPRRetriever

    g = paths["graph"]
    out: dict[str, object] = {"bm25": BM25Retriever(index=paths["bm25"], k=50, text=True),
                              "dense-minilm": DenseRetriever(index=paths["dense"], k=50, text=True)}
    for mode in ("local", "global", "hybrid", "mix", "naive"):
        out[f"lightrag-{mode}"] = LightRAGRetriever(index=g, mode=mode, k=50, text=True)
    out["pathrag"] = PathRAGRetriever(index=g, k=50, text=True)
    out["ppr"] = PPRRetriever(index=g, k=50, text=True)
    for spec in ppr_variants:   # name:key=value,key=value
        name, _, kv = spec.partition(":")
        kw = {}
        for part in filter(None, kv.split(",")):
            k, _, v = part.partition("=")
            kw[k] = type(getattr(PPRRetriever, k, v))(v) if not isinstance(getattr(PPRRetriever, k, None), str) else v
        out[name] = PPRRetriever(index=g, k=50, text=True, **_coerce(kw))
    return out


def _coerce(kw: dict) -> dict:
    out = {}
    for k, v in kw.items():
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                try:
                    v = float(v)
                except ValueError:
                    pass
        out[k] = v
    return out


def budget_context(ranking, budget: int, count) -> tuple[set[str], str]:
    """(doc ids whose passage fits, the graph context text) for one ranking at ``budget`` tokens."""
    from ragkit.retrievers._graph import contexts_of, render_graph_context

    ctx_text = "\n".join(t for t in (render_graph_context(c, budget // 4, count) for c in contexts_of(ranking.hits))
                         if t)
    used = count(ctx_text) if ctx_text else 0
    docs: set[str] = set()
    for h in ranking.hits:
        n = count(h.text or "")
        if used + n > budget:
            break
        used += n
        docs.add(h.doc_id)
    return docs, ctx_text


def evaluate(ds, rets: dict, budgets: list[int], count, log) -> dict:
    res = {}
    for name, r in rets.items():
        t0 = time.perf_counter()
        r.setup()
        setup_s = time.perf_counter() - t0
        lat, cpu, rows, fallbacks = [], [], {}, 0
        for q in ds.queries:
            t, c = time.perf_counter(), time.process_time()
            rk = r([q])[0]
            lat.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            rows[q.qid] = rk
            if rk.hits and (rk.hits[0].meta or {}).get("graph_context", {}).get("fallback"):
                fallbacks += 1
        m = {"setup_s": round(setup_s, 2), "latency_p50_ms": 1000 * float(np.percentile(lat, 50)),
             "latency_p95_ms": 1000 * float(np.percentile(lat, 95)),
             "cpu_p50_ms": 1000 * float(np.percentile(cpu, 50)), "cpu_p95_ms": 1000 * float(np.percentile(cpu, 95)),
             "fallback_queries": fallbacks}
        for k in (5, 10):
            vals = []
            for q in ds.queries:
                rel = set(ds.qrels.get(q.qid, {}))
                got = {h.doc_id for h in rows[q.qid].hits[:k]}
                vals.append(len(rel & got) / max(len(rel), 1))
            m[f"R@{k}"] = 100 * float(np.mean(vals))
        for b in budgets:
            vals = []
            for q in ds.queries:
                rel = set(ds.qrels.get(q.qid, {}))
                docs, _ = budget_context(rows[q.qid], b, count)
                vals.append(len(rel & docs) / max(len(rel), 1))
            m[f"Rb@{b}"] = 100 * float(np.mean(vals))
        res[name] = {"metrics": m, "rankings": rows}
        log(f"  {name:18s} " + " ".join(f"{k}={v:.1f}" for k, v in m.items() if isinstance(v, float)))
    return res


def generate(ds, res: dict, names: list[str], n: int, budget: int, count, log) -> dict:
    from ragkit.eval.metrics import answer_score
    from ragkit.generators.hf import HFGenerator
    from ragkit.records import Ranking

    gen = HFGenerator(model="smollm2-135m-instruct", device="cpu", max_new_tokens=32, max_passages=50,
                      max_graph_context_tokens=budget // 4).setup()
    out = {}
    for name in names:
        rows = []
        for q in ds.queries[:n]:
            rk = res[name]["rankings"][q.qid]
            docs, _ = budget_context(rk, budget, count)
            hits = tuple(h for h in rk.hits if h.doc_id in docs)
            rows.append(Ranking(q, hits) if hits else Ranking(q, rk.hits[:1]))
        t0, c0 = time.perf_counter(), time.process_time()
        answers = gen(rows)
        gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
        sc = {"EM": [], "F1": [], "EM-in": []}
        for a in answers:
            golds = ds.answers.get(a.qid, [])
            sc["EM"].append(answer_score("EM", a.text, golds))
            sc["F1"].append(answer_score("F1", a.text, golds))
            sc["EM-in"].append(answer_score("EM-in", a.text, golds))
        out[name] = {k: 100 * float(np.mean(v)) for k, v in sc.items()}
        out[name].update({"n": len(answers), "s_per_answer": gen_s / max(len(answers), 1),
                          "cpu_s_per_answer": gen_cpu / max(len(answers), 1),
                          "answers": {a.qid: a.text for a in answers}})
        log(f"  gen {name:18s} " + " ".join(f"{k}={v:.1f}" for k, v in out[name].items() if isinstance(v, float)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["hotpotqa", "2wikimultihopqa"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[1000, 2000])
    ap.add_argument("--work", default=str(REPO / ".ragkit" / "bench-graph"), help="index folder (reused)")
    ap.add_argument("--only", nargs="*", default=None, help="only these retrievers")
    ap.add_argument("--ppr-variants", nargs="*", default=[],
                    help="extra PPR settings, e.g. ppr-d0.85:damping=0.85 ppr-facts:seed=facts")
    ap.add_argument("--generate", type=int, default=0, help="answer the first N questions with SmolLM2")
    ap.add_argument("--questions", type=int, default=0, help="only the first N questions of each set (0 = all)")
    ap.add_argument("--noun-chunks", action="store_true",
                    help="spaCy extractor: noun chunks are entities too (the indexer's default; off here: "
                         "named entities only, a graph a fraction of the size to embed on 2 CPU cores)")
    ap.add_argument("--graph-model", default="minilm",
                    help="encoder of the graph index's entity/relation/chunk tables (minilm, or hash: lexical, "
                         "no neural encoding -- builds in seconds)")
    ap.add_argument("--out", default="graph", help="results file stem under benchmarks/results/")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from ragkit.eval import load_dataset
    from ragkit.models import transformers_folder

    tok = AutoTokenizer.from_pretrained(transformers_folder("smollm2-135m-instruct").path)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    launcher = os.environ.get("BENCH_LAUNCHER", "nice -n 10")
    data = {"command": " ".join([launcher, ".venv/bin/python"] + sys.argv), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_before": load_avg(), "datasets": {}}
    for name in args.datasets:
        ds = load_dataset(name)
        if args.questions:
            import dataclasses

            ds = dataclasses.replace(ds, queries=ds.queries[:args.questions])
        log(f"{name}: {len(ds.corpus)} paragraphs, {len(ds.queries)} questions")
        paths = build_indexes(ds, work, log, args.noun_chunks, args.graph_model)
        gp = json.loads((Path(paths["graph"]) / "params.json").read_text())
        rets = retrievers(paths, args.ppr_variants)
        if args.only:
            rets = {k: v for k, v in rets.items() if k in args.only}
        res = evaluate(ds, rets, args.budgets, count, log)
        entry = {"graph": {k: gp.get(k) for k in ("n_entities", "n_relations", "n_chunks", "stats") if k in gp},
                 "metrics": {k: v["metrics"] for k, v in res.items()}}
        if args.generate:
            graph_names = [k for k in res if k not in ("bm25", "dense-minilm", "lightrag-naive")]
            best = sorted(graph_names, key=lambda k: -res[k]["metrics"][f"Rb@{args.budgets[0]}"])[:2]
            entry["generation"] = generate(ds, res, ["dense-minilm"] + best, args.generate, args.budgets[0], count, log)
        data["datasets"][name] = entry
    data["load_after"] = load_avg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    md = [f"# Graph retrieval benchmark\n", f"`{data['command']}`  (load {data['load_before']} -> {data['load_after']})\n"]
    for name, entry in data["datasets"].items():
        md.append(f"\n## {name}\n")
        cols = ["R@5", "R@10"] + [f"Rb@{b}" for b in args.budgets] + ["latency_p50_ms", "latency_p95_ms",
                                                                       "cpu_p50_ms", "cpu_p95_ms", "fallback_queries"]
        md.append("| retriever | " + " | ".join(cols) + " |")
        md.append("|---" * (len(cols) + 1) + "|")
        for r, m in entry["metrics"].items():
            md.append(f"| {r} | " + " | ".join(f"{m[c]:.1f}" if isinstance(m[c], float) else str(m[c])
                                               for c in cols) + " |")
        if "generation" in entry:
            md.append("\n| generator context (SmolLM2-135M-Instruct, greedy) | n | EM | F1 | EM-in | CPU s / answer |"
                      "\n|---|---|---|---|---|---|")
            for r, m in entry["generation"].items():
                md.append(f"| {r} | {m['n']} | {m['EM']:.1f} | {m['F1']:.1f} | {m['EM-in']:.1f} | "
                          f"{m['cpu_s_per_answer']:.2f} |")
    (OUT / f"{args.out}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
