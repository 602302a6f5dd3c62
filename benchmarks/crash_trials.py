"""kill -9 trials: builds killed at random moments and inside the rename window, then loaded and rebuilt.

Three kinds of trial, each on real passages (Cranfield, CISI, SQuAD, as in ``bench_bm25.py``)
written as a JSON lines corpus, with the real CLI (``python -m ragkit index``) in a child process:

1. ``random``: a pipeline with one indexer (``indexer.bm25``, or ``indexer.dense`` with model
   ``hash``, ragkit's built-in hashing encoder) rebuilds over a corpus that alternates between two
   versions (A: N passages, B: N + 500), and is SIGKILLed at a uniform random time in
   [0.3 T, 1.0 T] (T: the measured wall time of one such rebuild, embedding cache warm).
2. ``rename``: the same build with ``strace -e inject=rename,renameat,renameat2:signal=KILL:when=K``
   for every K up to the number of rename calls one build makes: the kill lands exactly on each
   rename, including the swap of the index folder. Run with the default swap (Linux
   ``renameat2(RENAME_EXCHANGE)``) and with the two-rename fallback (``USE_EXCHANGE = False``), whose
   window between the renames is what the issue reproduced.
3. ``pipeline``: a pipeline with two indexers (BM25 + dense) over one corpus, killed at a random
   time, so that one index may be new and the other old.

After each kill the parent process loads the pipeline as a user would (``Pipeline.run``; this is
where a killed rename is rolled back and dead writers' litter is removed) and classifies it:
``old`` / ``new`` (every index loads and holds one whole corpus version), ``refused`` (the
pipeline's indexes come from different corpora and loading says so), or ``FAIL`` (anything else:
no index, a half index, an unexpected error, mixed indexes served). Then it rebuilds and checks
that the rebuild succeeds and that no ``.tmp-*`` / ``.old-*`` folder is left.

    nice -n 10 .venv/bin/python benchmarks/crash_trials.py --n 3000 --random 30 --pipeline 20

Writes ``benchmarks/results/crash.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
PY = sys.executable

ONE = """version: 1
corpus: {{path: corpus.jsonl}}
index:
  - {indexer}
pipeline:
  - {retriever}
"""
TWO = """version: 1
corpus: {path: corpus.jsonl}
index:
  - indexer.bm25: {path: indexes/bm25}
  - indexer.dense: {path: indexes/dense, model: hash}
pipeline:
  - fusion.rrf:
      retrievers:
        - retriever.bm25: {index: indexes/bm25, k: 10}
        - retriever.dense: {index: indexes/dense, k: 10}
"""
KINDS = {
    "bm25": ("indexer.bm25: {path: indexes/bm25}", "retriever.bm25: {index: indexes/bm25, k: 10}", ["indexes/bm25"]),
    "dense": ("indexer.dense: {path: indexes/dense, model: hash}",
              "retriever.dense: {index: indexes/dense, k: 10}", ["indexes/dense"]),
}
WRAP = ("import sys, ragkit.artifacts as a; a.USE_EXCHANGE = {exchange}; from ragkit.cli import main; "
        "sys.exit(main(['index', 'p.yaml', '-q']))")


def passages(n: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    from bench_bm25 import corpus

    return corpus(n)


def write_corpus(folder: Path, texts: list[str], version: str) -> None:
    with open(folder / "corpus.jsonl.tmp", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"doc_id": f"p{i}", "text": f"{t} {version}"}) + "\n")
    os.replace(folder / "corpus.jsonl.tmp", folder / "corpus.jsonl")


def build_cmd(exchange: bool = True, strace_when: int | None = None) -> list[str]:
    cmd = [PY, "-c", WRAP.format(exchange=exchange)]
    if strace_when is not None:
        cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
               "-e", f"inject=rename,renameat,renameat2:signal=KILL:when={strace_when}"] + cmd
    return cmd


def litter(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


def corpus_ids(folder: Path, paths: list[str]) -> list[str | None]:
    out = []
    for p in paths:
        try:
            out.append(json.loads((folder / p / "params.json").read_text())["corpus"]["id"])
        except (OSError, ValueError, KeyError, TypeError):
            out.append(None)
    return out


def classify(folder: Path, paths: list[str], ids: dict[str, str]) -> tuple[str, str]:
    """Load and query the pipeline as a user would; name which corpus version it serves."""
    from ragkit import Pipeline
    from ragkit.errors import IndexArtifactError

    try:
        out = Pipeline.from_yaml(folder / "p.yaml").run("flow over a flat plate")
    except IndexArtifactError as exc:
        if "different corpora" in str(exc):
            return "refused", str(exc)[:160]
        return "FAIL", f"IndexArtifactError: {str(exc)[:200]}"
    except Exception as exc:  # noqa: BLE001
        return "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}"
    got = corpus_ids(folder, paths)
    if not out or not out[0].hits:
        return "FAIL", "no hits"
    names = {v: k for k, v in ids.items()}
    versions = {names.get(g, "?") for g in got}
    if len(versions) == 1 and "?" not in versions:
        return versions.pop(), ""
    return "FAIL", f"indexes serve corpus versions {sorted(versions)}"


def trial(folder: Path, paths: list[str], ids: dict[str, str], cmd: list[str], kill_after: float | None,
          old: str, new: str) -> dict:
    """The index holds corpus version ``old``; corpus.jsonl already holds ``new``."""
    p = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    err = p.communicate()[1]
    killed = p.returncode == -signal.SIGKILL
    left = litter(folder)
    missing = [x for x in paths if not (folder / x).exists()]
    outcome, msg = classify(folder, paths, ids)
    outcome = {old: "old", new: "new"}.get(outcome, outcome)
    left_after_load = litter(folder)
    # the next build (over the new corpus version) must succeed and leave nothing behind
    r = subprocess.run(build_cmd(), cwd=folder, capture_output=True, text=True)
    rebuild_ok = r.returncode == 0
    after, amsg = classify(folder, paths, ids)
    after = {old: "old", new: "new"}.get(after, after)
    return {"killed": killed, "rc": p.returncode, "litter_after_kill": len(left), "missing_after_kill": missing,
            "outcome": outcome, "msg": msg or (err.strip()[-160:] if not killed and p.returncode else ""),
            "litter_after_load": len(left_after_load), "rebuild_ok": rebuild_ok,
            "after_rebuild": after, "after_msg": amsg or r.stderr.strip()[-160:], "litter_after_rebuild": len(litter(folder))}


def setup_folder(root: Path, name: str, pipe: str, texts: dict[str, list[str]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "p.yaml").write_text(pipe)
    write_corpus(folder, texts["A"], "A")
    r = subprocess.run(build_cmd(), cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--random", type=int, default=30, help="random kills per single-index kind")
    ap.add_argument("--pipeline", type=int, default=20, help="random kills of the two-indexer pipeline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    load0 = os.getloadavg()
    base = passages(args.n + 500)
    texts = {"A": base[: args.n], "B": base}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["RAGKIT_CACHE"] = str(root / "cache")
        from ragkit.artifacts import corpus_record
        from ragkit.ingest import read_corpus
        from ragkit.config import CorpusSpec

        def ids_for(folder: Path) -> dict[str, str]:
            out = {}
            for v in ("A", "B"):
                write_corpus(folder, texts[v], v)
                c = read_corpus(CorpusSpec(path="corpus.jsonl"), base_dir=folder, progress=False)
                list(c)
                out[v] = corpus_record(c.manifest)["id"]
            write_corpus(folder, texts["A"], "A")
            return out

        cases = [(k, ONE.format(indexer=KINDS[k][0], retriever=KINDS[k][1]), KINDS[k][2]) for k in KINDS]
        cases.append(("pipeline", TWO, ["indexes/bm25", "indexes/dense"]))
        for kind, pipe, paths in cases:
            folder = setup_folder(root, kind, pipe, texts)
            ids = ids_for(folder)
            version = "A"
            # T: the wall time of one rebuild as the trials run it (A -> B -> A, caches warm: the
            # shorter of the two), so that the kill times spread over the whole build
            durations = []
            for v in ("B", "A", "B"):
                write_corpus(folder, texts[v], v)
                s = time.perf_counter()
                subprocess.run(build_cmd(), cwd=folder, capture_output=True, check=True)
                durations.append(time.perf_counter() - s)
            T = min(durations[1:])
            version = "B"

            def flip() -> str:
                return "A" if version == "B" else "B"

            n_random = args.pipeline if kind == "pipeline" else args.random
            for i in range(n_random):
                nxt = flip()
                write_corpus(folder, texts[nxt], nxt)
                at = rng.uniform(0.3 * T, 1.0 * T)
                r = trial(folder, paths, ids, build_cmd(), at, version, nxt)
                version = nxt  # the trial's rebuild indexed it
                r.update(kind=kind, mode="random", kill_at_s=round(at, 3), build_s=round(T, 3))
                results.append(r)
                print(json.dumps({k: r[k] for k in ("kind", "mode", "killed", "outcome", "litter_after_kill",
                                                    "after_rebuild")}), flush=True)
            if kind == "pipeline":
                continue
            # the rename window: count rename calls of one build, then kill on each
            for exchange in (True, False):
                nxt = flip()
                write_corpus(folder, texts[nxt], nxt)
                trace = root / "trace.txt"
                cmd = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=rename,renameat,renameat2"] + build_cmd(exchange)
                subprocess.run(cmd, cwd=folder, capture_output=True, check=True)
                calls = [ln for ln in trace.read_text().splitlines() if "rename" in ln]
                version = nxt
                for k in range(1, len(calls) + 1):
                    nxt = flip()
                    write_corpus(folder, texts[nxt], nxt)
                    r = trial(folder, paths, ids, build_cmd(exchange, strace_when=k), None, version, nxt)
                    version = nxt
                    r.update(kind=kind, mode="rename-exchange" if exchange else "rename-two-step", when=k,
                             call=calls[k - 1].split(" ", 1)[1][:160])
                    results.append(r)
                    print(json.dumps({k2: r[k2] for k2 in ("kind", "mode", "when", "killed", "outcome",
                                                           "missing_after_kill", "after_rebuild")}), flush=True)
    res = {"n": args.n, "seconds": time.time() - t0, "loadavg_before": load0, "command": " ".join(sys.argv[1:]),
           "results": results}
    OUT.mkdir(exist_ok=True)
    (OUT / "crash.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (OUT / "crash.md").write_text(md)
    print(md)


def report(res: dict) -> str:
    rs = res["results"]
    lines = ["# kill -9 trials: builds killed at random and inside the rename window", "",
             f"Command: `nice -n 10 .venv/bin/python benchmarks/crash_trials.py {res['command']}` "
             f"({res['seconds']:.0f} s; N = {res['n']:,} real passages, corpus versions of N and N + 500; "
             f"load average before {res['loadavg_before'][0]:.1f}).", "",
             "Outcome after the kill, when the pipeline is next loaded and queried: old / new = every index "
             "loads and serves one whole corpus version; refused = the pipeline's indexes come from different "
             "corpora and loading says so (exit 1), never serving them; FAIL = anything else. Then a rebuild "
             "must succeed and leave no `.tmp-*`/`.old-*` folder.", "",
             "| kind | mode | trials | killed | old | new | refused | FAIL | litter after kill | litter after load | "
             "rebuild ok | litter after rebuild |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({(r["kind"], r["mode"]) for r in rs})
    tot = Counter()
    for kind, mode in groups:
        g = [r for r in rs if r["kind"] == kind and r["mode"] == mode]
        c = Counter(r["outcome"] for r in g)
        row = {"trials": len(g), "killed": sum(r["killed"] for r in g), "lk": sum(r["litter_after_kill"] > 0 for r in g),
               "ll": sum(r["litter_after_load"] for r in g), "rb": sum(r["rebuild_ok"] and r["after_rebuild"] != "FAIL" for r in g),
               "lr": sum(r["litter_after_rebuild"] for r in g)}
        tot.update(row)
        tot.update({k: c[k] for k in ("old", "new", "refused", "FAIL")})
        lines.append(f"| {kind} | {mode} | {row['trials']} | {row['killed']} | {c['old']} | {c['new']} | {c['refused']} | "
                     f"{c['FAIL']} | {row['lk']} trials | {row['ll']} folders | {row['rb']} | {row['lr']} folders |")
    lines.append(f"| **all** | | {tot['trials']} | {tot['killed']} | {tot['old']} | {tot['new']} | {tot['refused']} | "
                 f"{tot['FAIL']} | {tot['lk']} trials | {tot['ll']} folders | {tot['rb']} | {tot['lr']} folders |")
    win = [r for r in rs if r["mode"].startswith("rename") and r["missing_after_kill"]]
    lines += ["", f"Kills that left nothing at the index path (the issue's window): {len(win)}; each was "
              f"rolled back when the index was next loaded: {sum(r['outcome'] in ('old', 'new') for r in win)}.", "",
              "## Rename-window trials, one per rename call", "", "| kind | mode | K | call | killed | path missing after kill | outcome |",
              "|---|---|---|---|---|---|---|"]
    for r in rs:
        if r["mode"].startswith("rename"):
            lines.append(f"| {r['kind']} | {r['mode']} | {r['when']} | `{r['call'][:90]}` | {r['killed']} | "
                         f"{bool(r['missing_after_kill'])} | {r['outcome']} |")
    fails = [r for r in rs if r["outcome"] == "FAIL" or r["after_rebuild"] == "FAIL" or not r["rebuild_ok"]]
    if fails:
        lines += ["", "## Failures", ""] + [f"- {r['kind']} {r['mode']}: {r['outcome']} {r['msg']} / after rebuild "
                                            f"{r['after_rebuild']} {r['after_msg']}" for r in fails]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
