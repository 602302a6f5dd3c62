"""Block fine-tuning (``ragkit train-generator``): answer quality of the base and the tuned SmolLM2, with
full prefill and passage-KV reuse, on questions held out of training.

Cells: ``base-none`` (base model, full prefill), ``base-plain`` (base, plain reuse), ``tuned-none``,
``tuned-plain``, ``tuned-blend`` (tuned = ``adapter: <adapter>`` merged; blend r = 0.15).
Sets (questions never trained on: the held-out ids recorded in the adapter's ragkit_adapter.json):

- ``nq10`` / ``nq20``: NQ-open part-a held-out questions, 10 / 20 passages = the gold passage and the
  BM25 top hard negatives from the NQ gold-passage pool (ragkit's BM25), the gold passage at position
  ``i % k`` for the i-th question (every position in turn);
- ``squad``: SQuAD part-a held-out questions, the default pipeline's setting: BM25 over all 1,023
  paragraphs, top 3 passages cut to 200 tokens (the gold paragraph is wherever BM25 puts it, or absent).

Metrics per question: EM, F1, EM-in (SQuAD normalisation, best over gold answers), ``cite_gold`` (the
answer cites the gold passage's number) and ``cite_any``. Greedy, max 32 new tokens, stop at a newline.

  python benchmarks/bench_train_generator.py quality --set nq10 --n 200 --cells base-none,base-plain
  python benchmarks/bench_train_generator.py quality --set nq10 --n 200 --cells tuned-none,tuned-plain,tuned-blend
  python benchmarks/bench_train_generator.py quality --set squad --start 100 --n 100   # extend to 200
  python benchmarks/bench_train_generator.py report        # train_generator.md (+ paired significance)

Each run writes ``benchmarks/results/train_generator_<set>_<cells>.json`` (per-question records, the
command, machine, timings); ``report`` joins the cells of a set by question id.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"
CELLS = {"base-none": ("", {}), "base-plain": ("", {"kv_reuse": "plain"}),
         "tuned-none": ("A", {}), "tuned-plain": ("A", {"kv_reuse": "plain"}),
         "tuned-blend": ("A", {"kv_reuse": "blend", "recompute_ratio": 0.15})}
PAIRS = [("tuned-none", "base-none"), ("tuned-plain", "tuned-none"), ("tuned-blend", "tuned-none"),
         ("tuned-plain", "base-plain"), ("base-plain", "base-none"), ("tuned-blend", "tuned-plain")]


def heldout(ds, adapter: str, holdout_every: int) -> list[str]:
    """The held-out question ids of ``ds``: ``train-generator``'s split (the same function), checked against
    the ids the adapter recorded when it exists (base-model cells can run before it is trained)."""
    from ragkit.errors import ModelNotFoundError
    from ragkit.generators._train_data import split

    held = split(ds, holdout_every, dev_every=5)["heldout"]
    try:
        from ragkit.adapters import read_meta, resolve_adapter

        rec = read_meta(resolve_adapter(adapter)).get("heldout_qids", {}).get(ds.name)
    except ModelNotFoundError:
        rec = None
    if rec is not None and sorted(rec) != sorted(held):
        raise SystemExit(f"adapter {adapter} was trained with another held-out split of {ds.name}")
    return held


def items(args) -> list[dict]:
    """[{qid, question, answers, hits: [(doc_id, text, title)], gold: {doc ids}}] for the set."""
    import random

    from ragkit.eval.datasets import load_dataset
    from ragkit.rerankers._train_data import BM25

    name = "squad" if args.set == "squad" else "nq-open"
    ds = load_dataset(name)
    qids = [q for q in heldout(ds, args.adapter, args.holdout_every) if ds.answers.get(q)]
    random.Random(args.seed).shuffle(qids)
    qids = qids[args.start:args.start + args.n]
    docs = {d.doc_id: d for d in ds.corpus}
    bm25 = BM25(list(docs), [d.text for d in docs.values()])
    qtext = {q.qid: q.text for q in ds.queries}
    k = {"nq10": 10, "nq20": 20, "squad": 3}[args.set]
    res = bm25.search([qtext[q] for q in qids], k + 5)
    out = []
    for i, (q, row) in enumerate(zip(qids, res)):
        gold = {d for d, g in ds.qrels.get(q, {}).items() if g > 0}
        if args.set == "squad":
            order = [d for d, _ in row][:k]
        else:
            negs = [d for d, _ in row if d not in gold][:k - 1]
            g = sorted(gold)[0]
            pos = (args.start + i) % k
            order = negs[:pos] + [g] + negs[pos:]
        out.append({"qid": q, "question": qtext[q], "answers": ds.answers[q], "gold": sorted(gold),
                    "hits": [(d, docs[d].text, (docs[d].meta or {}).get("title")) for d in order]})
    return out


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_start": os.getloadavg()}


def quality(args) -> None:
    from ragkit.eval.metrics import answer_score
    from ragkit.generators.hf import HFGenerator
    from ragkit.records import Hit, Query, Ranking

    data = items(args)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    store = tempfile.mkdtemp(prefix="bench-tgen-")
    mpt = 200
    t_all = time.time()
    res: dict = {"set": args.set, "n": len(data), "cells": cells, "adapter": args.adapter, "seed": args.seed,
                 "max_passage_tokens": mpt, "max_new_tokens": 32, "machine": machine(),
                 "command": "python benchmarks/bench_train_generator.py " + " ".join(sys.argv[1:]), "items": {}, "seconds": {}}
    rankings = [Ranking(Query(it["qid"], it["question"]),
                        tuple(Hit(it["qid"], d, float(len(it["hits"]) - j), j, t, meta={"title": ti} if ti else {})
                              for j, (d, t, ti) in enumerate(it["hits"]))) for it in data]
    names = {c: f"{c}/{args.label}" if args.label and CELLS[c][0] else c for c in cells}   # tuned cells carry the label
    res["cell_names"] = names
    for c in cells:
        which, extra = CELLS[c]
        gen = HFGenerator(model="smollm2-135m-instruct", adapter=args.adapter if which else "", device="cpu",
                          dtype="float32", max_new_tokens=32, stop=["\n"], max_passages=len(data[0]["hits"]),
                          max_passage_tokens=mpt, kv_store=store, kv_memory_mb=4096, batch_size=args.batch_size,
                          **extra).setup()
        eng = getattr(gen, "_engine", None)
        if eng is not None:
            eng.store.write_enabled = False     # the memory LRU holds the passages of the run
        t0 = time.time()
        answers = []
        for i in range(0, len(rankings), args.batch_size):
            answers += gen(rankings[i:i + args.batch_size])
            print(f"{c} {len(answers)}/{len(rankings)} {time.time() - t0:.0f}s", flush=True)
        res["seconds"][names[c]] = round(time.time() - t0, 1)
        for it, a in zip(data, answers):
            rec = res["items"].setdefault(it["qid"], {"answers": it["answers"], "gold": it["gold"],
                                                       "gold_pos": [j for j, h in enumerate(it["hits"]) if h[0] in it["gold"]]})
            rec[names[c]] = {"text": a.text, "EM": answer_score("EM", a.text, it["answers"]),
                      "F1": answer_score("F1", a.text, it["answers"]),
                      "EM-in": answer_score("EM-in", a.text, it["answers"]),
                      "cite_gold": float(any(d in it["gold"] for d in a.citations)),
                      "cite_any": float(bool(a.citations)), "ttft_s": round(a.timings["ttft_s"], 4),
                      "prompt_tokens": a.meta["prompt_tokens"]}
        del gen
        res["cells_done"] = [names[x] for x in cells if names[x] in res["seconds"]]   # after every cell (partial runs count)
        res["machine"]["load_avg_end"] = os.getloadavg()
        res["wall_s"] = round(time.time() - t_all, 1)
        part = f"_from{args.start}" if args.start else ""
        lab = f"_{args.label}" if args.label else ""
        out = Path(args.out or RES / f"train_generator_{args.set}_{'+'.join(cells)}{lab}{part}.json")
        out.write_text(json.dumps(res, indent=1))
        print("wrote", out)
    for c in names.values():
        print(c, {m: round(100 * statistics.mean(r[c][m] for r in res["items"].values()), 1)
                  for m in ("EM", "F1", "EM-in", "cite_gold")})


METRICS = ("EM", "F1", "EM-in", "cite_gold", "cite_any")


def _cell_tables(items: dict, cells: list[str], qs: list[str], pairs) -> list[str]:
    """The per-cell metric table and the paired differences over the questions ``qs``."""
    from ragkit.eval.significance import compare

    lines = [f"n = {len(qs)} questions in every cell.", "",
             "| cell | EM | F1 | EM-in | cites gold | cites any | mean prompt tokens |", "|---|---|---|---|---|---|---|"]
    if not qs:
        return lines
    for c in cells:
        rs = [items[q][c] for q in qs]
        vals = [f"{100 * statistics.mean(r[m] for r in rs):.1f}" for m in METRICS]
        lines.append(f"| {c} | " + " | ".join(vals) + f" | {statistics.mean(r['prompt_tokens'] for r in rs):.0f} |")
    lines += ["", "Paired differences (a - b, points) and p-values (t-test / randomization):", "",
              "| a vs b | EM-in delta | p | EM delta | p | F1 delta | p | cites-gold delta | p |", "|---|---|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        if a not in cells or b not in cells:
            continue
        row = [f"{a} vs {b}"]
        for m in ("EM-in", "EM", "F1", "cite_gold"):
            r = compare([items[q][a][m] for q in qs], [items[q][b][m] for q in qs], "both", permutations=5000)
            row += [f"{100 * r['delta']:+.1f}", f"{r['ttest']:.3g} / {r['randomization']:.3g}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def report(args) -> None:
    from ragkit.eval.metrics import answer_score

    lines = ["# Block fine-tuning (`ragkit train-generator`): measured results", "",
             "Produced by `benchmarks/bench_train_generator.py` (commands below and in each JSON file). "
             "SmolLM2-135M-Instruct, float32, one torch thread, greedy decoding (max 32 new tokens, stop at a newline); "
             "questions held out of training. Figures are percentages; n = questions per cell (the same questions "
             "in every cell of a set). Paired tests over the same questions: t-test and randomization test "
             "(ragkit.eval.significance.compare). Answer metrics ignore citation markers ([1]) in the answer "
             "(ragkit.eval.metrics.answer_score); 'cites gold' = the answer cites the gold passage's number. "
             "Time to first token: train_generator_ttft.json (bench_kv.py's harness, one prompt at a time).", ""]
    sets: dict = {}
    for f in sorted(RES.glob("train_generator_*_*.json")):
        d = json.loads(f.read_text())
        if "items" not in d or "set" not in d:
            continue
        s = sets.setdefault(d["set"], {"items": {}, "commands": [], "seconds": {}, "n": {}})
        s["commands"].append(d["command"])
        for c in d.get("cells_done", d["cells"]):
            s["seconds"][c] = d["seconds"].get(c)
        for q, rec in d["items"].items():
            for c in d.get("cells_done", d["cells"]):     # answer metrics recomputed from the stored texts
                if c in rec:
                    for m in ("EM", "F1", "EM-in"):
                        rec[c][m] = answer_score(m, rec[c]["text"], rec["answers"])
            s["items"].setdefault(q, {}).update(rec)
    for name in ("nq10", "nq20", "squad"):
        if name not in sets:
            continue
        s = sets[name]
        cells = [c for c in CELLS if any(c in r for r in s["items"].values())]
        labels = sorted({k.split("/", 1)[1] for r in s["items"].values() for k in r if "/" in k})
        common = [q for q, r in s["items"].items() if all(c in r for c in cells)]
        # a labelled recipe (another adapter) is reported on the questions its run covers
        lab_cells = [f"{c}/{lab}" for lab in labels for c in CELLS if CELLS[c][0]
                     and any(f"{c}/{lab}" in r for r in s["items"].values())]
        common_l = [q for q in common if all(c in s["items"][q] for c in lab_cells)]
        pairs = list(PAIRS) + [p for lab in labels for p in (
            (f"tuned-plain/{lab}", f"tuned-none/{lab}"), (f"tuned-blend/{lab}", f"tuned-none/{lab}"),
            (f"tuned-none/{lab}", "tuned-none"), (f"tuned-plain/{lab}", "tuned-plain"),
            (f"tuned-none/{lab}", "base-none"))]
        title = {"nq10": "NQ-open, 10 passages (gold + 9 BM25 hard negatives, gold at every position in turn)",
                 "nq20": "NQ-open, 20 passages (gold + 19 BM25 hard negatives, gold at every position in turn)",
                 "squad": "SQuAD, BM25 top 3 (the default pipeline's setting)"}[name]
        lines += [f"## {title}", ""] + _cell_tables(s["items"], cells, common, PAIRS)
        for lab in labels:
            lc = [c for c in lab_cells if c.endswith("/" + lab)]
            lines += [f"### Recipe `{lab}` (cells `<cell>/{lab}`: another adapter, see train_generator_notes.md)", "",
                      "Every cell on the questions the recipe's run covers.", ""]
            lines += _cell_tables(s["items"], cells + lc, common_l, [p for p in pairs if p not in PAIRS])
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in s["commands"]), ""]
    extra = RES / "train_generator_notes.md"
    if extra.exists():
        lines += [extra.read_text()]
    (RES / "train_generator.md").write_text("\n".join(lines) + "\n")
    print((RES / "train_generator.md").read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--set", choices=["nq10", "nq20", "squad"], required=True)
    q.add_argument("--n", type=int, default=200)
    q.add_argument("--start", type=int, default=0,
                   help="skip the first START questions of the set's fixed order (to extend an earlier run)")
    q.add_argument("--cells", default=",".join(CELLS))
    q.add_argument("--adapter", default="smollm2-rag", help="adapter (held-out ids come from it)")
    q.add_argument("--holdout-every", type=int, default=3, help="as the adapter's train-generator run")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="")
    q.add_argument("--label", default="",
                   help="name of another adapter's recipe: its tuned cells are stored as <cell>/<label> (report adds a table)")
    sub.add_parser("report")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    {"quality": quality, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
