"""SmolLM2-135M-Instruct as indexer.graph's LLM extractor: prompt variants on a few HotpotQA paragraphs.

For each variant ``prompt:prefill:max_input_chars:no_repeat_ngram`` (e.g. ``fewshot:1:400:8``) every
paragraph is extracted with ``extractor: llm, llm_backend: hf`` (greedy, 200 new tokens, 1 thread) and
counted: well-formed entity / relation records per chunk (what ragkit's parser keeps), *grounded*
ones (entity name, or both relation ends, occur in the paragraph -- a small model also copies the
worked example's names), dropped records by reason, CPU s per chunk. Replies go to one reply cache
(``--cache``), so a rerun or ``tests/data/graph_smollm2_replies.json`` (``--fixture VARIANT``: the
replies of one variant, one record per extracted window, for the lightrag-hku merge diff) costs no
model call.

    /work/wt/cpu .venv/bin/python benchmarks/bench_graph_llm_variants.py 6 lightrag:0:12000:0 fewshot:1:12000:0 \\
        fewshot:1:400:0 fewshot:1:400:8
Results: benchmarks/results/graph_index_llm_variants.{md,json}.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path(__file__).resolve().parent / "results"


def run(n: int, variants: list[str], cache: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from bench_graph_index import hotpot_chunks
    from ragkit.indexers._graph_llm import ReplyCache
    from ragkit.indexers.graph import GraphIndexer

    chunks = hotpot_chunks(n)
    out = {}
    for v in variants:
        prompt, prefill, win, ngram = v.split(":")
        ix = GraphIndexer(path=tempfile.mkdtemp() + "/g", model="hash", extractor="llm", llm_backend="hf",
                          llm_device="cpu", max_new_tokens=200, prompt=prompt, prefill=prefill == "1",
                          max_input_chars=int(win), no_repeat_ngram=int(ngram))
        x = ix.llm()
        x.cache = ReplyCache(Path(cache))
        rows = []
        for c in chunks:
            t0, calls = time.process_time(), x.stats["llm_calls"]
            ex, raws = x.extract(c.text, c.chunk_id)
            low = c.text.casefold()
            rows.append({"chunk": c.chunk_id, "cpu_s": round(time.process_time() - t0, 2),
                         "calls": x.stats["llm_calls"] - calls, "windows": x.windows(c.text),
                         "entities": len(ex.entities), "relations": len(ex.relations),
                         "grounded_entities": sum(1 for e in ex.entities if e["name"].casefold() in low),
                         "grounded_relations": sum(1 for r in ex.relations if r["source"].casefold() in low
                                                   and r["target"].casefold() in low),
                         "dropped": ex.dropped, "raw": raws})
            print(v, json.dumps({k: w for k, w in rows[-1].items() if k not in ("raw", "windows")}), flush=True)
        out[v] = rows
    return out


def render(data: dict, command: str, load: tuple) -> str:
    md = ["# indexer.graph LLM extractor: SmolLM2-135M-Instruct, prompt variants (greedy, 200 new tokens, CPU)\n",
          "Variant = prompt : prefill : max_input_chars : no_repeat_ngram. Grounded = the entity name (both "
          "relation ends) occur in the paragraph.\n",
          "| variant | chunks | model calls | CPU s / call | entity records / chunk | grounded | relation records / chunk | "
          "grounded | chunks with >= 1 grounded record | dropped (by reason) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v, rows in data.items():
        n = len(rows)
        dropped: dict = {}
        for r in rows:
            for k, c in r["dropped"].items():
                dropped[k] = dropped.get(k, 0) + c
        calls = sum(r["calls"] for r in rows)
        md.append(f"| {v} | {n} | {calls} | {sum(r['cpu_s'] for r in rows) / max(calls, 1):.1f} | "
                  f"{sum(r['entities'] for r in rows) / n:.2f} | {sum(r['grounded_entities'] for r in rows) / n:.2f} | "
                  f"{sum(r['relations'] for r in rows) / n:.2f} | {sum(r['grounded_relations'] for r in rows) / n:.2f} | "
                  f"{sum(1 for r in rows if r['grounded_entities'] or r['grounded_relations'])} | {dropped} |")
    for v, rows in data.items():
        md.append(f"\n## {v}: first reply (first 700 characters)\n\n```\n{rows[0]['raw'][0][:700]}\n```")
    md.append(f"\nCommand: `{command}`; load average start/end {load}. A window whose prompt and text another "
              "variant already sent (a paragraph shorter than max_input_chars) is answered from the reply cache: "
              "model calls counts only real calls, and CPU s / call is over those.")
    return "\n".join(md) + "\n"


def fixture(data: dict, variant: str, path: Path) -> None:
    """The replies of one variant (one record per extracted window) for the lightrag-hku merge diff."""
    reps = []
    for r in data[variant]:
        for i, (w, raw) in enumerate(zip(r["windows"], r["raw"])):
            reps.append({"doc_id": f"{r['chunk']}#w{i}", "text": w, "reply": raw})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": "smollm2-135m-instruct", "variant": variant,
                                "source": "benchmarks/bench_graph_llm_variants.py", "replies": reps},
                               ensure_ascii=False, indent=1), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, help="HotpotQA paragraphs")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "graph_llm_variants.sqlite"))
    ap.add_argument("--fixture", default="", help="write tests/data/graph_smollm2_replies.json from this variant")
    ap.add_argument("--render", action="store_true", help="only re-render the results from the stored json")
    args = ap.parse_args()
    if args.render:
        d = json.loads((OUT / "graph_index_llm_variants.json").read_text(encoding="utf-8"))
        md = render(d["variants"], d["command"], tuple(d.get("load", ())))
        (OUT / "graph_index_llm_variants.md").write_text(md, encoding="utf-8")
        if args.fixture:
            fixture(d["variants"], args.fixture,
                    Path(__file__).resolve().parents[1] / "tests" / "data" / "graph_smollm2_replies.json")
        print(md)
        return
    load0 = os.getloadavg()
    data = run(args.n, args.variants, args.cache)
    cmd = os.environ.get("BENCH_LAUNCHER", "") + " .venv/bin/python benchmarks/bench_graph_llm_variants.py " + \
        " ".join(sys.argv[1:])
    md = render(data, cmd.strip(), (load0, os.getloadavg()))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "graph_index_llm_variants.md").write_text(md, encoding="utf-8")
    (OUT / "graph_index_llm_variants.json").write_text(json.dumps({"command": cmd.strip(), "variants": data,
                                                                   "load": [load0, os.getloadavg()]},
                                                                  ensure_ascii=False, indent=1), encoding="utf-8")
    if args.fixture:
        fixture(data, args.fixture, Path(__file__).resolve().parents[1] / "tests" / "data" / "graph_smollm2_replies.json")
    print(md)


if __name__ == "__main__":
    main()
