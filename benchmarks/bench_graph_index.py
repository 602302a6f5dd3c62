"""Graph index (``indexer.graph``) benchmarks: build speed, graph size, load time, incremental insert, LLM records.

Parts (run one at a time; each is CPU work on a shared 2-core machine, so run it with nice and
read the recorded load average next to the figures):

``spacy``        spaCy extractor on the 1,021 HotpotQA-100 paragraphs (one chunk each): extraction
                 chunks/s, full build time (extraction + merge + MiniLM encoding + write) scaled to
                 per 1,000 chunks, graph size (entities, relations, records, folder MB).
``incremental``  build over 90% of those paragraphs, then ``update_index`` with the other 10%, vs a
                 full rebuild over 100% (cold embedding cache each time, same process, alternating).
``load``         a synthetic 100k-entity / 300k-relation graph written by the indexer's own writer
                 (384-d random unit vectors), then ``load_graph_index`` timed cold (best of 3).
``llm``          the LLM extractor with SmolLM2-135M-Instruct (``llm_backend: hf``, greedy) on ~20
                 HotpotQA paragraphs: well-formed entity/relation records per chunk, dropped records
                 by reason, seconds per chunk, calls.

    nice -n 10 .venv/bin/python benchmarks/bench_graph_index.py spacy|incremental|load|llm
Results: benchmarks/results/graph_index_<part>.{md,json}.
"""
from __future__ import annotations

import argparse
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


_ENV: dict = {}


def env() -> dict:
    if _ENV:
        return dict(_ENV)
    import spacy
    import networkx

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "spacy": spacy.__version__,
            "networkx": networkx.__version__, "loadavg_start": os.getloadavg()}


def write(name: str, md: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data["loadavg_end"] = os.getloadavg()
    launcher = os.environ.get("BENCH_LAUNCHER", "nice -n 10")
    data["command"] = f"{launcher} .venv/bin/python benchmarks/bench_graph_index.py " + " ".join(sys.argv[1:])
    note = ("both CPU slots held through /work/wt/cpu -2: no other queued job ran" if "-2" in launcher
            else "2-core machine shared with other jobs")
    md += f"\nCommand: `{data['command']}`; load average at start/end: {data['env']['loadavg_start']} / " \
          f"{data['loadavg_end']} ({note}).\n"
    (OUT / f"{name}.md").write_text(md, encoding="utf-8")
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    print(md)


def hotpot_chunks(limit: int | None = None, dataset: str = "hotpotqa"):
    from ragkit.eval.datasets import load_dataset
    from ragkit.records import Chunk

    ds = load_dataset(dataset, data_dir=REPO.parent / "shared" / "data"
                      if (REPO.parent / "shared" / "data").is_dir() else "/work/shared/data")
    docs = ds.corpus[:limit] if limit else ds.corpus
    return [Chunk(d.doc_id, d.doc_id, d.text, 0, len(d.text), dict(d.meta)) for d in docs]


def folder_mb(p: Path) -> float:
    return round(sum(f.stat().st_size for f in p.iterdir()) / 1e6, 2)


_MADE: list[str] = []


def fresh_cache() -> str:
    """A new empty RAGKIT_CACHE (cold embedding cache); removed when the script ends."""
    d = tempfile.mkdtemp(prefix="graph-bench-cache-")
    if not _MADE:
        import atexit

        atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in _MADE])
    _MADE.append(d)
    os.environ["RAGKIT_CACHE"] = d
    return d


# ------------------------------------------------------------------------------------------------
def part_spacy(args) -> None:
    from ragkit.indexers.graph import GraphIndexer, load_graph_index

    chunks = hotpot_chunks(args.limit or None, dataset=args.dataset)
    words = sum(len(c.text.split()) for c in chunks)
    tmp = Path(tempfile.mkdtemp(prefix="graph-bench-"))
    fresh_cache()
    ix = GraphIndexer(path=str(tmp / "g"), model=args.model, n_process=args.n_process,
                      noun_chunks=bool(args.noun_chunks))
    t0 = time.perf_counter()
    ix.setup()
    setup_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ix(chunks)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    idx = load_graph_index(tmp / "g")
    st = idx.params["stats"]
    g = idx.graph
    types: dict[str, int] = {}
    for _, a in g.nodes(data=True):
        types[a["entity_type"]] = types.get(a["entity_type"], 0) + 1
    deg = sorted((d for _, d in g.degree()), reverse=True)
    res = {"env": env(), "chunks": len(chunks), "words": words, "encoder": args.model, "n_process": args.n_process,
           "setup_s": round(setup_s, 2), "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu, 2),
           "build_s_per_1000_chunks": round(build_s / len(chunks) * 1000, 2),
           "extraction_s": st["extraction_s"], "extraction_chunks_per_s": st["chunks_per_s"],
           "entities": g.number_of_nodes(), "relations": g.number_of_edges(), "entity_records": st["entity_records"],
           "relation_records": st["relation_records"], "entity_types_top": dict(sorted(types.items(),
                                                                                   key=lambda x: -x[1])[:8]),
           "max_degree": deg[0] if deg else 0, "median_degree": deg[len(deg) // 2] if deg else 0,
           "folder_mb": folder_mb(tmp / "g"), "dataset": args.dataset, "noun_chunks": bool(args.noun_chunks),
           "torch_threads": args.threads}
    if args.keep:   # keep the index (e.g. as bench_graph.py's graph index of this dataset)
        shutil.move(str(tmp / "g"), args.keep)
    shutil.rmtree(tmp, ignore_errors=True)
    md = (f"# indexer.graph, spaCy extractor, {args.dataset}-100 paragraphs"
          f"{f' (first {len(chunks)})' if args.limit else ''}\n\n"
          f"| chunks | words | extraction chunks/s | extraction s | full build s | build s / 1,000 chunks | "
          f"entities | relations | entity / relation records | folder MB |\n|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {len(chunks):,} | {words:,} | {res['extraction_chunks_per_s']} | {res['extraction_s']} | {res['build_s']} | "
          f"{res['build_s_per_1000_chunks']} | {res['entities']:,} | {res['relations']:,} | "
          f"{res['entity_records']:,} / {res['relation_records']:,} | {res['folder_mb']} |\n\n"
          f"Encoder {args.model} (cold embedding cache), noun chunks {'on' if args.noun_chunks else 'off (named entities only)'}, "
          f"spaCy n_process={args.n_process}, torch threads {args.threads}; model load "
          f"{res['setup_s']} s not included. Build CPU time {res['build_cpu_s']} s. Entity types: {res['entity_types_top']}. Degree max "
          f"{res['max_degree']}, median {res['median_degree']}.\n")
    write(f"graph_index_spacy{args.suffix}", md, res)


def part_incremental(args) -> None:
    from ragkit.indexers.graph import GraphIndexer, load_graph_index

    chunks = hotpot_chunks()
    n_old = int(len(chunks) * 0.9)
    old, new = chunks[:n_old], chunks[n_old:]
    tmp = Path(tempfile.mkdtemp(prefix="graph-bench-"))
    GraphIndexer(path=str(tmp / "warm"), model=args.model).setup()  # load spaCy + encoder once
    runs = []
    for r in range(args.repeats):
        fresh_cache()
        base = GraphIndexer(path=str(tmp / f"inc{r}"), model=args.model)
        base(old)
        fresh_cache()   # cold embedding cache: old vectors come from the index folder, new ones are encoded
        t0, c0 = time.perf_counter(), time.process_time()
        base.update_index(new, [])
        insert_s, insert_cpu = time.perf_counter() - t0, time.process_time() - c0
        fresh_cache()
        full = GraphIndexer(path=str(tmp / f"full{r}"), model=args.model)
        t0, c0 = time.perf_counter(), time.process_time()
        full(chunks)
        full_s, full_cpu = time.perf_counter() - t0, time.process_time() - c0
        a, b = load_graph_index(tmp / f"inc{r}"), load_graph_index(tmp / f"full{r}")
        same = (sorted(a.graph.nodes) == sorted(b.graph.nodes) and
                sorted(map(sorted, a.graph.edges)) == sorted(map(sorted, b.graph.edges)))
        runs.append({"insert_s": round(insert_s, 2), "full_rebuild_s": round(full_s, 2),
                     "ratio": round(full_s / insert_s, 2), "insert_cpu_s": round(insert_cpu, 2),
                     "full_rebuild_cpu_s": round(full_cpu, 2), "cpu_ratio": round(full_cpu / insert_cpu, 2),
                     "same_graph": same})
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"env": env(), "encoder": args.model, "old_chunks": len(old), "new_chunks": len(new), "runs": runs}
    rows = "".join(f"| {i + 1} | {r['insert_s']} | {r['full_rebuild_s']} | {r['ratio']}x | {r['insert_cpu_s']} | "
                   f"{r['full_rebuild_cpu_s']} | {r['cpu_ratio']}x | {r['same_graph']} |\n" for i, r in enumerate(runs))
    md = (f"# indexer.graph incremental insert (spaCy extractor, encoder {args.model})\n\n"
          f"{len(old)} HotpotQA-100 paragraphs indexed, then {len(new)} more (10%) inserted with update_index, vs a "
          f"full rebuild over all {len(chunks)} (cold embedding cache for both).\n\n"
          f"| run | insert 10% s | full rebuild s | speed-up | insert CPU s | full rebuild CPU s | CPU speed-up | "
          f"same graph |\n|---|---|---|---|---|---|---|---|\n{rows}")
    write(f"graph_index_incremental{args.suffix}", md, res)


def legacy_load(folder: Path):
    """The load path of commit 52522e5 (before this change), for a same-run before/after: json,
    ``add_nodes_from`` / ``add_edges_from`` with the cyclic GC on, relation keys as string pairs, every
    vector table read into memory. Reads both vector_keys layouts."""
    import networkx as nx

    from ragkit.artifacts import DocStore, load_array, read_params
    from ragkit.indexers._graph_store import FastVectorTable, GraphIndex
    from ragkit.indexers._encoder import Encoder

    params = read_params(folder, expect_key="indexer.graph")

    def full(a):
        if "descriptions" not in a:
            d = a.get("description", "")
            a["descriptions"] = d.split("\n") if d else []
        return a

    data = json.loads((folder / "graph.json").read_bytes())
    g = nx.Graph()
    g.graph.update(data.get("graph", {}))
    g.add_nodes_from((a.pop("id"), full(a)) for a in data["nodes"])
    g.add_edges_from((a.pop("source"), a.pop("target"), full(a)) for a in data["edges"])
    enc = Encoder(params["model_id"][5:] if params["model_id"].startswith("path:") else params["model"],
                  normalize=True, cache=False)
    store = DocStore.load(folder)
    texts = {cid: store.text(i) for i, cid in enumerate(store.ids)}
    docs = dict(zip(store.ids, store.doc_ids))
    keys = json.loads((folder / "vector_keys.json").read_text(encoding="utf-8"))
    if "relation_rows" in keys:   # written by the new writer: as string pairs, as the old file had them
        e = keys["entities"]
        keys["relations"] = [[e[a], e[b]] for a, b in keys["relation_rows"]]
    vt = {}
    for name in ("entities", "relations", "chunks"):
        k = keys.get(name, [])
        if name == "relations":
            k = [tuple(x) for x in k]
        vt[name] = FastVectorTable(list(k), load_array(folder, f"{name}.npy", dtype="float32", ndim=2))
    titles = {cid: store.title(i) for i, cid in enumerate(store.ids) if store.title(i)}
    return GraphIndex(g, texts, docs, enc.encode_queries, vt["entities"], vt["relations"], vt["chunks"], params, titles)


def part_load(args) -> None:
    from ragkit.indexers._graph_merge import GraphState
    from ragkit.indexers._graph_records import Extraction
    from ragkit.indexers._graph_store import VectorTable
    from ragkit.indexers.graph import GraphIndexer, _forget, load_graph_index

    rng = np.random.default_rng(0)
    n_ent, n_rel, dim = args.entities, args.entities * 3, 384
    n_chunks = args.entities // 5
    tmp = Path(tempfile.mkdtemp(prefix="graph-bench-"))
    t0 = time.perf_counter()
    st = GraphState()
    names = [f"Entity {i:06d}" for i in range(n_ent)]
    g = st.graph
    for c in range(n_chunks):
        st.chunks[f"c{c}"] = (f"d{c // 4}", f"Synthetic chunk {c} about " + ", ".join(names[c * 5: c * 5 + 5]) + ".")
        st.extractions[f"c{c}"] = Extraction()
        st.seq[f"c{c}"] = c
    for i, n in enumerate(names):
        g.add_node(n.casefold(), name=n, entity_type="concept",
                   description=f"{n} is a synthetic entity number {i} used to time loading.",
                   descriptions=[f"{n} is a synthetic entity number {i} used to time loading."],
                   source_ids=[f"c{i // 5}"])
    a = rng.integers(0, n_ent, n_rel)
    b = rng.integers(0, n_ent, n_rel)
    for x, y in zip(a, b):
        if x != y:
            u, v = names[x].casefold(), names[y].casefold()
            g.add_edge(u, v, keywords=["related", "synthetic"], description=f"{names[x]} relates to {names[y]}.",
                       descriptions=[f"{names[x]} relates to {names[y]}."], weight=1.0,
                       source_ids=[f"c{x // 5}"])

    def table(keys):
        v = rng.standard_normal((len(keys), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return VectorTable(keys, v)

    vecs = {"entities": table(sorted(g.nodes)), "relations": table(sorted(tuple(sorted(e)) for e in g.edges)),
            "chunks": table(sorted(st.chunks))}
    ix = GraphIndexer(path=str(tmp / "g"), model="hash-384")
    ix._save(tmp / "g", st, {}, vecs, {"synthetic": True})
    gen_s = time.perf_counter() - t0
    if args.keep:
        shutil.copytree(tmp / "g", args.keep)
    q = ix.encoder().encode_queries(["Entity 000123 synthetic"])
    runs: dict[str, list] = {"new": [], "legacy": []}
    for _ in range(args.repeats_load):
        for which in ("legacy", "new"):   # alternating, so both see the same machine state
            _forget(tmp / "g")
            t0, c0 = time.perf_counter(), time.process_time()
            idx = load_graph_index(tmp / "g") if which == "new" else legacy_load(tmp / "g")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()   # the first searches page mmapped vectors in
            idx.search_entities(q, 10)
            idx.search_relations(q, 10)
            fwall, fcpu = time.perf_counter() - t0, time.process_time() - c0
            runs[which].append({"wall": wall, "cpu": cpu, "first_search_wall": fwall, "first_search_cpu": fcpu})
            assert idx.graph.number_of_edges() == g.number_of_edges()
            del idx
    idx = load_graph_index(tmp / "g")
    t0 = time.perf_counter()
    load_graph_index(tmp / "g")
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        idx.search_entities(q, 10)
    search_ms = (time.perf_counter() - t0) / 20 * 1000

    def best(which: str, key: str) -> float:
        return round(min(r[key] for r in runs[which]), 3)

    res = {"env": env(), "entities": idx.graph.number_of_nodes(), "relations": idx.graph.number_of_edges(),
           "chunks": len(idx.chunk_texts), "dim": dim, "folder_mb": folder_mb(tmp / "g"),
           "generate_and_write_s": round(gen_s, 2),
           "runs": {k: [{a: round(b, 3) for a, b in r.items()} for r in v] for k, v in runs.items()},
           "load_s_best": best("new", "wall"), "load_cpu_s_best": best("new", "cpu"),
           "legacy_load_s_best": best("legacy", "wall"), "legacy_load_cpu_s_best": best("legacy", "cpu"),
           "first_search_s_best": best("new", "first_search_wall"),
           "legacy_first_search_s_best": best("legacy", "first_search_wall"),
           "load_cached_s": round(cached_s, 6), "entity_search_ms": round(search_ms, 2)}
    shutil.rmtree(tmp, ignore_errors=True)
    row = lambda name, w: (f"| {name} | {best(w, 'wall')} | {best(w, 'cpu')} | {best(w, 'first_search_wall')} | "
                           f"{[round(r['wall'], 2) for r in runs[w]]} |")
    md = (f"# load_graph_index on a synthetic {res['entities']:,}-entity graph\n\n"
          f"{res['entities']:,} entities, {res['relations']:,} relations, {res['chunks']:,} chunks, 384-d vectors, "
          f"folder {res['folder_mb']} MB, written by the indexer's own writer. Cold load = the per-folder cache "
          f"cleared (graph JSON decoded, networkx graph built, texts and vector keys read, files verified); "
          f"best of {args.repeats_load}, the two readers alternating in one process.\n\n"
          f"| reader | load wall s | load CPU s | first entity + relation search s | load wall s, all runs |\n"
          f"|---|---|---|---|---|\n"
          f"{row('legacy (52522e5: json, add_nodes_from/add_edges_from, GC on, vectors read)', 'legacy')}\n"
          f"{row('now (orjson, adjacency built directly, GC paused, relation keys as rows, vectors mmapped)', 'new')}\n\n"
          f"Speed-up (best load wall): {best('legacy', 'wall') / max(best('new', 'wall'), 1e-9):.1f}x, "
          f"CPU {best('legacy', 'cpu') / max(best('new', 'cpu'), 1e-9):.1f}x. Cached load "
          f"{res['load_cached_s']} s; one exact entity search over the {res['entities']:,} vectors {res['entity_search_ms']} ms "
          f"(warm). The legacy reader is the 52522e5 load path re-implemented in this script (`legacy_load`).\n")
    write(f"graph_index_load{args.suffix}", md, res)


def part_llm(args) -> None:
    from ragkit.indexers.graph import GraphIndexer, load_graph_index

    chunks = hotpot_chunks(args.chunks)
    tmp = Path(tempfile.mkdtemp(prefix="graph-bench-"))
    ix = GraphIndexer(path=str(tmp / "g"), model="hash", extractor="llm", llm_backend="hf",
                      llm_model=args.llm, llm_device="cpu", max_new_tokens=args.max_new_tokens, gleaning=args.gleaning)
    t0 = time.perf_counter()
    ix.setup()
    load_s = time.perf_counter() - t0
    x = ix.llm()
    from ragkit.indexers._graph_llm import ReplyCache

    # a fresh reply cache (every chunk a real model call), or --reply-cache to resume an interrupted run
    x.cache = ReplyCache(Path(args.reply_cache) if args.reply_cache else tmp / "llm.sqlite")
    per_chunk = []
    for c in chunks:
        t0, c0, calls = time.perf_counter(), time.process_time(), x.stats["llm_calls"]
        ex, raws = x.extract(c.text, c.chunk_id)
        per_chunk.append({"chunk": c.chunk_id, "s": round(time.perf_counter() - t0, 2),
                          "cpu_s": round(time.process_time() - c0, 2), "cached": x.stats["llm_calls"] == calls,
                          "entities": len(ex.entities), "relations": len(ex.relations), "dropped": ex.dropped,
                          "repaired": ex.repaired, "reply_head": raws[0][:300]})
        print(json.dumps({k: v for k, v in per_chunk[-1].items() if k != "reply_head"}), flush=True)
    timed = [r for r in per_chunk if not r["cached"]]
    total = sum(r["s"] for r in timed)
    total_cpu = sum(r["cpu_s"] for r in timed)
    ix(chunks)   # the full build now runs from the reply cache
    idx = load_graph_index(tmp / "g")
    st = idx.params["stats"]
    shutil.rmtree(tmp, ignore_errors=True)
    n = len(chunks)
    dropped: dict[str, int] = {}
    for r in per_chunk:
        for k, v in r["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    res = {"env": env(), "llm": args.llm, "identity": x.identity, "max_new_tokens": args.max_new_tokens,
           "gleaning": args.gleaning, "chunks": n, "model_load_s": round(load_s, 2), "total_s": round(total, 2),
           "timed_chunks": len(timed), "s_per_chunk": round(total / max(len(timed), 1), 2),
           "cpu_s_per_chunk": round(total_cpu / max(len(timed), 1), 2), "llm_calls": x.stats["llm_calls"],
           "entity_records_per_chunk": round(sum(r["entities"] for r in per_chunk) / n, 2),
           "relation_records_per_chunk": round(sum(r["relations"] for r in per_chunk) / n, 2),
           "chunks_with_any_record": sum(1 for r in per_chunk if r["entities"] or r["relations"]),
           "dropped_by_reason": dropped, "graph_entities": st["entities"], "graph_relations": st["relations"],
           "rebuild_from_cache_llm_calls": st.get("llm_calls"), "per_chunk": per_chunk}
    md = (f"# indexer.graph LLM extractor with {args.llm} (greedy, max_new_tokens {args.max_new_tokens}, "
          f"gleaning {args.gleaning}, CPU)\n\n"
          f"| chunks | s / chunk (wall) | CPU s / chunk | calls | well-formed entity records / chunk | relation records / chunk | "
          f"chunks with >= 1 record | dropped records (by reason) | graph entities / relations |\n"
          f"|---|---|---|---|---|---|---|---|---|\n"
          f"| {n} | {res['s_per_chunk']} | {res['cpu_s_per_chunk']} | {res['llm_calls']} | {res['entity_records_per_chunk']} | "
          f"{res['relation_records_per_chunk']} | {res['chunks_with_any_record']} | {dropped} | "
          f"{st['entities']} / {st['relations']} |\n\n"
          f"Seconds per chunk over the {len(timed)} chunks extracted in this run (the others came from the reply "
          f"cache of an interrupted run). Model load {res['model_load_s']} s. The rebuild over the same chunks afterwards made "
          f"{res['rebuild_from_cache_llm_calls']} model calls (reply cache). First reply, first 300 characters:\n\n"
          f"```\n{per_chunk[0]['reply_head']}\n```\n")
    write(f"graph_index_llm{args.suffix}", md, res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["spacy", "incremental", "load", "llm"])
    ap.add_argument("--model", default="minilm", help="encoder for spacy/incremental (default minilm)")
    ap.add_argument("--n-process", type=int, default=1, help="spaCy worker processes")
    ap.add_argument("--dataset", default="hotpotqa", help="spacy: hotpotqa or 2wikimultihopqa paragraphs")
    ap.add_argument("--noun-chunks", type=int, default=1, help="spacy: 1 (the indexer's default) or 0 (named "
                    "entities only, as bench_graph.py builds)")
    ap.add_argument("--keep", default="", help="spacy: move the built index folder here")
    ap.add_argument("--limit", type=int, default=0, help="spacy: only the first N paragraphs (0 = all)")
    ap.add_argument("--repeats", type=int, default=2, help="incremental: alternating runs")
    ap.add_argument("--entities", type=int, default=100_000, help="load: synthetic graph size")
    ap.add_argument("--repeats-load", type=int, default=3, help="load: cold loads per reader")
    ap.add_argument("--chunks", type=int, default=20, help="llm: paragraphs to extract")
    ap.add_argument("--llm", default="smollm2-135m-instruct", help="llm: causal LM")
    ap.add_argument("--max-new-tokens", type=int, default=384, help="llm: generation cap per call")
    ap.add_argument("--gleaning", type=int, default=0, help="llm: gleaning passes")
    ap.add_argument("--reply-cache", default="", help="llm: reply cache file to resume an interrupted run")
    ap.add_argument("--suffix", default="", help="suffix for the result file names")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on an oversubscribed machine 2 threads ran SmolLM2 8x slower)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    _ENV.update(env())
    _ENV["torch_threads"] = args.threads
    {"spacy": part_spacy, "incremental": part_incremental, "load": part_load, "llm": part_llm}[args.part](args)


if __name__ == "__main__":
    main()
