"""Multi-Head RAG vs dense vs BM25 on multi-aspect questions (HotpotQA + 2WikiMultihopQA).

Benchmark built as the MRAG paper evaluates (Besta et al. 2024, Sec. 4): a query needs several
documents about different things. Here the queries are the real multi-hop questions of
HotpotQA (dev distractor, first 100) and 2WikiMultihopQA (dev, first 100) from ``../shared/data``;
the corpus is every context paragraph of every question of both sets (one document per title and
set); the documents a question needs are its supporting-fact paragraphs (2-4). Metrics (paper):

- success ratio: share of a question's needed documents found in the top k (mean over questions);
- exact success: share of questions whose needed documents are *all* in the top k;

for k = 2, 5, 10. Retrievers:

- BM25 (``retriever.bm25``, defaults);
- dense MiniLM (``retriever.dense``, the model's ordinary sentence embedding, flat cosine);
- MRAG MiniLM (``indexer.mha``/``retriever.mha``: last layer, mean pooling, per-head cosine top-c,
  votes s_i * 2^-p), with c = k (default) and c = 3k;
- with ``--smollm2 N``: the same for SmolLM2-135M-Instruct (decoder: last token) on the first N
  questions of each set: MRAG (last layer) vs the standard decoder embedding (last token of the
  last hidden state, cosine), computed in the same forward pass. CPU time limits N.

    nice -n 5 .venv/bin/python benchmarks/bench_mrag.py [--smollm2 30]
Results: benchmarks/results/mrag.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ragkit.eval import load_dataset
from ragkit.pipeline import documents_as_chunks
from ragkit.records import Document, Query

OUT = Path(__file__).resolve().parent / "results"
KS = (2, 5, 10)


def build_benchmark(limit: int | None = None):
    docs: dict[str, Document] = {}
    queries: list[Query] = []
    needed: dict[str, set[str]] = {}
    qtype: dict[str, str] = {}
    for name, short in (("hotpotqa", "hp"), ("2wikimultihopqa", "2w")):
        ds = load_dataset(name)
        qs = ds.queries[:limit] if limit else ds.queries
        allowed = context_titles(name, {q.qid for q in qs}) if limit else None
        for d in ds.corpus:
            if allowed is None or d.doc_id in allowed:
                docs[f"{short}:{d.doc_id}"] = Document(f"{short}:{d.doc_id}", d.text, {"title": d.doc_id})
        info = ds.meta.get("query_info", {})
        for q in qs:
            rel = {f"{short}:{t}" for t, g in ds.qrels.get(q.qid, {}).items() if g > 0}
            rel &= set(docs)
            if len(rel) < 2:
                continue  # not multi-aspect
            qid = f"{short}:{q.qid}"
            queries.append(Query(qid, q.text))
            needed[qid] = rel
            qtype[qid] = f"{name}/{(info.get(q.qid) or {}).get('type')}"
    return list(docs.values()), queries, needed, qtype


def context_titles(name: str, qids: set[str]) -> set[str]:
    """Titles of the context paragraphs of the given questions (read from the raw files)."""
    from ragkit.eval.datasets import find_data_dir

    root = find_data_dir()
    out: set[str] = set()
    if name == "hotpotqa":
        for r in json.loads((root / "hotpotqa" / "hotpot_dev_distractor_v1_100.json").read_text()):
            if str(r["_id"]) in qids:
                out |= {str(t) for t, _ in r["context"]}
    else:
        for line in (root / "2wikimultihopqa" / "2wikimultihopqa_dev_first100.jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if str(r["id"]) in qids:
                    out |= {str(t) for t in r["metadata"]["context"]["title"]}
    return out


def score(rankings: dict[str, list[str]], needed: dict[str, set[str]]) -> dict[str, float]:
    out = {}
    for k in KS:
        ratio, exact = [], []
        for qid, rel in needed.items():
            top = set(rankings[qid][:k])
            found = len(rel & top)
            ratio.append(found / len(rel))
            exact.append(float(found == len(rel)))
        out[f"success@{k}"] = round(float(np.mean(ratio)), 4)
        out[f"exact@{k}"] = round(float(np.mean(exact)), 4)
    return out


def doc_lists(rankings) -> dict[str, list[str]]:
    out = {}
    for r in rankings:
        seen = []
        for h in r.hits:
            if h.doc_id not in seen:
                seen.append(h.doc_id)
        out[r.qid] = seen
    return out


def run_minilm(docs, queries, work: Path, timings: dict) -> dict[str, dict[str, list[str]]]:
    from ragkit.indexers.bm25 import BM25Indexer
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.indexers.mha import MHAIndexer
    from ragkit.retrievers.bm25 import BM25Retriever
    from ragkit.retrievers.dense import DenseRetriever
    from ragkit.retrievers.mha import MHARetriever

    chunks = documents_as_chunks(docs)
    runs = {}
    t = time.time()
    BM25Indexer(path=str(work / "bm25"))(chunks)
    runs["BM25"] = doc_lists(BM25Retriever(index=str(work / "bm25"), k=max(KS))(queries))
    timings["BM25"] = time.time() - t
    t = time.time()
    DenseIndexer(path=str(work / "dense"), model="minilm")(chunks)
    runs["dense MiniLM (sentence embedding)"] = doc_lists(DenseRetriever(index=str(work / "dense"), k=max(KS))(queries))
    timings["dense MiniLM"] = time.time() - t
    t = time.time()
    MHAIndexer(path=str(work / "mha"), model="minilm")(chunks)
    timings["MRAG MiniLM index"] = time.time() - t
    for cmul in (1, 3):
        per_k = {}
        for k in KS:
            r = MHARetriever(index=str(work / "mha"), k=k, c=cmul * k)(queries)
            per_k[k] = doc_lists(r)
        runs[f"MRAG MiniLM (c = {'k' if cmul == 1 else f'{cmul}k'})"] = _PerK(per_k)
    p = json.loads((work / "mha" / "params.json").read_text())
    timings["mrag_importance"] = p["importance"]["s"]
    return runs


class _PerK(dict):
    """Rankings retrieved separately for each k (MRAG's votes depend on c, which follows k)."""

    def __init__(self, per_k):
        super().__init__(per_k[max(per_k)])
        self.per_k = per_k


def score_any(runs_entry, needed):
    if isinstance(runs_entry, _PerK):
        out = {}
        for k in KS:
            s = score(runs_entry.per_k[k], needed)
            out[f"success@{k}"], out[f"exact@{k}"] = s[f"success@{k}"], s[f"exact@{k}"]
        return out
    return score(runs_entry, needed)


def by_type_any(entry, needed, qtype):
    groups = defaultdict(dict)
    for qid, rel in needed.items():
        groups[qtype[qid]][qid] = rel
    return {t: {"n": len(g), **score_any(entry, g)} for t, g in sorted(groups.items())}


def run_smollm2(docs, queries, work: Path, timings: dict) -> dict:
    """MRAG vs standard decoder embedding for SmolLM2, one forward pass per text."""
    import faiss

    from ragkit.indexers._mha_embed import MultiHeadEmbedder, head_importance
    from ragkit.retrievers.mha import vote

    t = time.time()
    emb = MultiHeadEmbedder("smollm2-135m-instruct", standard=True, batch_size=8, max_length=256)
    timings["SmolLM2 load"] = time.time() - t
    t = time.time()
    heads_d, std_d = emb.encode([d.text for d in docs])
    heads_q, std_q = emb.encode([q.text for q in queries])
    timings["SmolLM2 encode"] = time.time() - t
    ids = [d.doc_id for d in docs]
    _, _, s = head_importance(heads_d)

    def cos_top(D, Qv, k):
        D = D / np.linalg.norm(D, axis=1, keepdims=True)
        Qv = Qv / np.linalg.norm(Qv, axis=1, keepdims=True)
        idx = faiss.IndexFlatIP(D.shape[1])
        idx.add(np.ascontiguousarray(D, dtype=np.float32))
        return idx.search(np.ascontiguousarray(Qv, dtype=np.float32), k)[1]

    runs = {"dense SmolLM2 (last-token embedding)": {
        q.qid: [ids[i] for i in row] for q, row in zip(queries, cos_top(std_d, std_q, max(KS)))}}
    for cmul in (1, 3):
        per_k = {}
        for k in KS:
            c = cmul * k
            per_head = [cos_top(heads_d[:, i], heads_q[:, i], c) for i in range(emb.num_heads)]
            out = {}
            for j, q in enumerate(queries):
                votes = vote([per_head[i][j] for i in range(emb.num_heads)], s)
                top = sorted(votes, key=lambda r: (-votes[r], ids[r]))[:k]
                out[q.qid] = [ids[r] for r in top]
            per_k[k] = out
        runs[f"MRAG SmolLM2 (c = {'k' if cmul == 1 else f'{cmul}k'})"] = _PerK(per_k)
    return runs


def table(results: dict[str, dict[str, float]]) -> list[str]:
    cols = [f"{m}@{k}" for k in KS for m in ("success", "exact")]
    lines = ["| retriever | " + " | ".join(c.replace("success", "success ratio").replace("exact", "exact success")
                                            for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", type=int, default=0, help="also run SmolLM2 on the first N questions of each set")
    args = ap.parse_args()
    t0 = time.time()
    docs, queries, needed, qtype = build_benchmark()
    work = Path(tempfile.mkdtemp(prefix="bench-mrag-"))
    timings: dict = {}
    runs = run_minilm(docs, queries, work, timings)
    results = {name: score_any(r, needed) for name, r in runs.items()}
    types = {name: by_type_any(r, needed, qtype) for name, r in runs.items()}
    n_needed = [len(v) for v in needed.values()]
    lines = ["# Multi-Head RAG vs dense vs BM25 on multi-aspect questions", "",
             f"Command: `nice -n 5 .venv/bin/python benchmarks/bench_mrag.py{f' --smollm2 {args.smollm2}' if args.smollm2 else ''}`.", "",
             f"Corpus: {len(docs)} paragraphs (every context paragraph of every question of HotpotQA dev-distractor "
             f"first 100 and 2WikiMultihopQA dev first 100, one per title and set). Queries: {len(queries)} "
             f"questions with >= 2 supporting paragraphs (needed documents per question: mean "
             f"{np.mean(n_needed):.2f}, max {max(n_needed)}). Success ratio = share of needed documents in the "
             f"top k; exact success = all needed documents in the top k (Besta et al. 2024).", "",
             "## MiniLM (all-MiniLM-L6-v2; MRAG on layer 6 of 6, 12 heads x 32 dims, mean pooling) and BM25", ""]
    lines += table(results)
    lines += ["", "### By question type (success ratio / exact success at k = 5)", "",
              "| retriever | " + " | ".join(f"{t} (n={v['n']})" for t, v in next(iter(types.values())).items()) + " |",
              "|---|" + "---|" * len(next(iter(types.values())))]
    for name, tv in types.items():
        lines.append(f"| {name} | " + " | ".join(f"{v['success@5']:.3f} / {v['exact@5']:.3f}" for v in tv.values()) + " |")
    imp = timings.pop("mrag_importance")
    lines += ["", "MRAG MiniLM head importance s_i = a_i * b_i: " + ", ".join(f"{x:.3f}" for x in imp), ""]
    data = {"results": results, "by_type": types, "importance": imp, "corpus": len(docs), "queries": len(queries)}
    if args.smollm2:
        sdocs, sq, sn, _ = build_benchmark(limit=args.smollm2)
        sub = work / "sub"
        sub.mkdir()
        sm_runs = run_smollm2(sdocs, sq, sub, timings)
        mini_runs = run_minilm(sdocs, sq, sub, {})
        sm = {name: score_any(r, sn) for name, r in {**mini_runs, **sm_runs}.items()}
        lines += [f"## SmolLM2-135M-Instruct (Llama decoder, 30 layers, 9 heads x 64 dims; last token) on a "
                  f"sub-benchmark: the first {args.smollm2} questions of each set ({len(sq)} queries), corpus = "
                  f"their own context paragraphs ({len(sdocs)}); CPU time rules out the full corpus here", ""]
        lines += table(sm)
        lines += [""]
        data["smollm2"] = {"results": sm, "queries": len(sq), "corpus": len(sdocs)}
    took = time.time() - t0
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; total {took:.0f}.", ""]
    data["timings"] = timings
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mrag.md").write_text("\n".join(lines), encoding="utf-8")
    (OUT / "mrag.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
