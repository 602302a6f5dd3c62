"""Corruption trials: damage each file of a BM25 and a dense index, load it, query it, count outcomes.

For every artifact file of an ``indexer.bm25`` folder and of an ``indexer.dense`` folder (flat and
HNSW; model ``hash``, ragkit's built-in hashing encoder, so no weights are needed), and for each
corruption class -- truncate to a random length, empty, flip one random bit, flip 8 random bits,
overwrite 16 random bytes at a random offset, a same-size semantic edit of a JSON file (swap two
ids / change one character), append bytes, delete -- with ``--seeds`` random draws, a copy of the
pristine folder is damaged, then loaded by the real retriever (``BM25Retriever`` /
``DenseRetriever``, ``text: true``) under ``RAGKIT_VERIFY`` = off, fast and full, and 30 queries
are run. Outcomes:

- ``detected``: an IndexArtifactError (at load or on a query);
- ``same``: no error and every ranking (ids, scores to 1e-6, texts) equals the pristine one;
- ``silent``: no error and some ranking differs (the failure the issue reports);
- ``other``: another exception type; ``crash``: the process died (e.g. a segfault in faiss).

Each trial runs in a worker process that is restarted after a crash. params.json is tampered too
(list, missing keys, a value changed, invalid JSON).

    nice -n 10 .venv/bin/python benchmarks/corruption_trials.py --n 2000 --seeds 3

Writes ``benchmarks/results/corruption.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
CLASSES = ("truncate", "empty", "flip1", "flip8", "overwrite16", "edit_json", "append", "delete")
PARAMS_EDITS = ("list", "drop_key", "change_value", "invalid_json", "drop_checksum_and_change")
MODES = ("off", "fast", "full")


def build(root: Path, n: int) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    from bench_bm25 import corpus

    from ragkit.indexers import BM25Indexer, DenseIndexer
    from ragkit.records import Document

    docs = [Document(f"p{i:05d}", t) for i, t in enumerate(corpus(n))]
    out = {"bm25": root / "bm25", "dense_flat": root / "dense_flat", "dense_hnsw": root / "dense_hnsw"}
    BM25Indexer(path=str(out["bm25"]))(docs)
    DenseIndexer(path=str(out["dense_flat"]), model="hash")(docs)
    DenseIndexer(path=str(out["dense_hnsw"]), model="hash", index_type="hnsw")(docs)
    return out


def queries() -> list[str]:
    sys.path.insert(0, str(HERE))
    from bench_bm25 import queries as q

    return q(30)


def run_retriever(kind: str, folder: Path, qs: list[str]) -> list:
    from ragkit import Pipeline
    from ragkit.retrievers import BM25Retriever, DenseRetriever

    r = BM25Retriever(index=str(folder), text=True, k=10) if kind == "bm25" else \
        DenseRetriever(index=str(folder), text=True, k=10)
    out = Pipeline([r]).run(qs)
    return [[[h.doc_id, round(h.score, 6), h.text] for h in rk.hits] for rk in out]


def corrupt(f: Path, how: str, rng: random.Random) -> bool:
    """Damage ``f``; False when the class does not apply to this file."""
    data = f.read_bytes()
    if how == "truncate":
        if not data:
            return False
        f.write_bytes(data[: rng.randrange(len(data))])
    elif how == "empty":
        if not data:
            return False
        f.write_bytes(b"")
    elif how in ("flip1", "flip8"):
        if not data:
            return False
        b = bytearray(data)
        for _ in range(1 if how == "flip1" else 8):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(b))
    elif how == "overwrite16":
        if len(data) < 16:
            return False
        i = rng.randrange(len(data) - 15)
        f.write_bytes(data[:i] + bytes(rng.randrange(256) for _ in range(16)) + data[i + 16:])
    elif how == "edit_json":
        if f.suffix != ".json":
            return False
        obj = json.loads(data)
        lst = obj if isinstance(obj, list) else obj.get("ids")
        if isinstance(lst, list) and len(lst) >= 2:
            i, j = rng.sample(range(len(lst)), 2)
            lst[i], lst[j] = lst[j], lst[i]
        else:
            return False
        f.write_text(json.dumps(obj), encoding="utf-8")
    elif how == "append":
        f.write_bytes(data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    elif how == "delete":
        f.unlink()
    else:
        raise ValueError(how)
    return True


def edit_params(f: Path, how: str) -> None:
    p = json.loads(f.read_text())
    if how == "list":
        f.write_text(json.dumps(list(p)))
    elif how == "drop_key":
        for k in ("num_docs", "dim", "method", "index_type"):
            p.pop(k, None)
        f.write_text(json.dumps(p))
    elif how == "change_value":
        for k, v in (("k1", 0.9), ("ef_search", 1), ("normalize", False)):
            if k in p:
                p[k] = v
        f.write_text(json.dumps(p))
    elif how == "invalid_json":
        f.write_text(f.read_text()[:-5])
    elif how == "drop_checksum_and_change":  # a deliberate edit that also removes the self-checksum
        p.pop("params_sha256", None)
        p.pop("files", None)
        for k, v in (("num_docs", p.get("num_docs", 0) + 1), ("dim", 128)):
            if k in p:
                p[k] = v
        f.write_text(json.dumps(p))


def worker(spec_file: str, results_file: str, start: int) -> None:
    """Run trials from ``start``; one JSON line per trial, flushed before the next begins."""
    spec = json.loads(Path(spec_file).read_text())
    qs = spec["queries"]
    from ragkit.errors import IndexArtifactError

    with open(results_file, "a") as out:
        for t in spec["trials"][start:]:
            mode = t["mode"]
            os.environ["RAGKIT_VERIFY"] = mode
            src = Path(spec["indexes"][t["index"]])
            work = Path(spec["work"]) / f"t{t['i']}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work)
            rng = random.Random(t["seed"])
            if t["file"] == "params.json":
                edit_params(work / "params.json", t["how"])
            else:
                corrupt(work / t["file"], t["how"], rng)
            kind = "bm25" if t["index"] == "bm25" else "dense"
            try:
                got = run_retriever(kind, work, qs)
                outcome = "same" if got == spec["baseline"][t["index"]] else "silent"
                msg = ""
            except IndexArtifactError as exc:
                outcome, msg = "detected", str(exc)[:300]
            except Exception as exc:  # noqa: BLE001 -- counted, that is the point
                outcome, msg = "other", f"{type(exc).__name__}: {str(exc)[:200]}"
            shutil.rmtree(work, ignore_errors=True)
            out.write(json.dumps({"i": t["i"], "outcome": outcome, "msg": msg}) + "\n")
            out.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    t_start = time.time()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["RAGKIT_CACHE"] = str(tmp / "cache")
        indexes = build(tmp / "pristine", args.n)
        qs = queries()
        baseline = {k: run_retriever("bm25" if k == "bm25" else "dense", v, qs) for k, v in indexes.items()}
        trials = []
        rng = random.Random(0)
        for name, folder in indexes.items():
            files = sorted(json.loads((folder / "params.json").read_text())["files"])
            cases = [(f, c) for f in files for c in CLASSES] + [("params.json", e) for e in PARAMS_EDITS]
            for f, c in cases:
                if c == "edit_json" and not f.endswith(".json"):
                    continue
                for s in range(args.seeds if c not in ("empty", "delete") and f != "params.json" else 1):
                    seed = rng.randrange(1 << 30)
                    for mode in MODES:
                        trials.append({"i": len(trials), "index": name, "file": f, "how": c, "seed": seed,
                                       "mode": mode})
        spec = {"trials": trials, "queries": qs, "baseline": baseline, "work": str(tmp / "work"),
                "indexes": {k: str(v) for k, v in indexes.items()}}
        (tmp / "work").mkdir()
        spec_f, res_f = tmp / "spec.json", tmp / "results.jsonl"
        spec_f.write_text(json.dumps(spec))
        res_f.write_text("")
        done: dict[int, dict] = {}
        while len(done) < len(trials):
            start = len(done)
            p = subprocess.run([sys.executable, __file__, "--worker", str(spec_f), str(res_f), str(start)],
                               env=dict(os.environ), capture_output=True, text=True)
            for line in res_f.read_text().splitlines():
                r = json.loads(line)
                done[r["i"]] = r
            if len(done) < len(trials) and p.returncode != 0:  # the trial after the last recorded one crashed
                i = len(done)
                done[i] = {"i": i, "outcome": "crash", "msg": f"exit {p.returncode}: {p.stderr.strip()[-200:]}"}
                with open(res_f, "a") as fh:
                    fh.write(json.dumps(done[i]) + "\n")
    for t in trials:
        t.update(outcome=done[t["i"]]["outcome"], msg=done[t["i"]]["msg"])
    res = {"n": args.n, "seeds": args.seeds, "trials": trials, "seconds": time.time() - t_start,
           "loadavg_before": load0, "command": " ".join(sys.argv[1:])}
    OUT.mkdir(exist_ok=True)
    (OUT / "corruption.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (OUT / "corruption.md").write_text(md)
    print(md)


def report(res: dict) -> str:
    trials = res["trials"]
    lines = ["# Corruption trials: damaged index files, detected / total", "",
             f"Command: `nice -n 10 .venv/bin/python benchmarks/corruption_trials.py {res['command']}` "
             f"({res['seconds']:.0f} s; N = {res['n']:,} real passages; 30 queries, k = 10, texts on hits).", "",
             "A trial is one damaged copy of one index file, loaded by the real retriever under one "
             "`RAGKIT_VERIFY` mode. detected = IndexArtifactError; same = no error and identical rankings, "
             "scores and texts (the damage did not matter to these queries); silent = no error but different "
             "results; other = another exception; crash = the process died.", "",
             "## Totals by mode", "", "| mode | trials | detected | same | silent | other | crash |",
             "|---|---|---|---|---|---|---|"]
    for m in MODES:
        c = Counter(t["outcome"] for t in trials if t["mode"] == m)
        n = sum(c.values())
        lines.append(f"| {m} | {n} | {c['detected']} ({100 * c['detected'] / n:.1f}%) | {c['same']} | "
                     f"{c['silent']} | {c['other']} | {c['crash']} |")
    lines += ["", "## By index and mode", "", "| index | mode | trials | detected | same | silent | other | crash |",
              "|---|---|---|---|---|---|---|---|"]
    for idx in sorted({t["index"] for t in trials}):
        for m in MODES:
            c = Counter(t["outcome"] for t in trials if t["mode"] == m and t["index"] == idx)
            lines.append(f"| {idx} | {m} | {sum(c.values())} | {c['detected']} | {c['same']} | {c['silent']} | "
                         f"{c['other']} | {c['crash']} |")
    lines += ["", "## By file and corruption class (fast mode, the default)", "",
              "| file | class | trials | detected | same | silent | other | crash |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(t["file"], t["how"]) for t in trials})
    for f, h in keys:
        c = Counter(t["outcome"] for t in trials if t["mode"] == "fast" and t["file"] == f and t["how"] == h)
        lines.append(f"| {f} | {h} | {sum(c.values())} | {c['detected']} | {c['same']} | {c['silent']} | "
                     f"{c['other']} | {c['crash']} |")
    bad = [t for t in trials if t["outcome"] in ("other", "crash", "silent")]
    if bad:
        lines += ["", "## Not detected with a changed result, other exceptions, crashes", "",
                  "| index | file | class | mode | outcome | message |", "|---|---|---|---|---|---|"]
        for t in bad[:60]:
            lines.append(f"| {t['index']} | {t['file']} | {t['how']} | {t['mode']} | {t['outcome']} | "
                         f"{t['msg'].replace('|', '/')[:120]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
