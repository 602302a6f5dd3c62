"""Dense search per query from Python vs the CLI, by OpenMP wait policy (issue 11, item 7).

    nice -n 10 .venv/bin/python benchmarks/bench_omp.py [--queries 40] [--busy 2]

Builds a dense index (minilm, flat) of the bundled SQuAD sample once, then, each in a fresh
process, times ``retriever.dense`` on SQuAD questions one query at a time:

``library``          ``import ragkit`` first (the default now: it sets OMP_WAIT_POLICY=PASSIVE
                     unless the environment sets it), then ``Pipeline.search``;
``library-torch-first``  ``import torch`` before ragkit with OMP_WAIT_POLICY unset: OpenMP starts
                     with its default (spin, then sleep) policy; what every library user got before;
``library-active``   OMP_WAIT_POLICY=ACTIVE (threads always spin);
``cli``              ``ragkit run --batch-size 1`` over the same queries: per query =
                     (time for N+1 queries - time for 1 query) / N, so process start and model
                     loading cancel out.

``--busy K`` runs K CPU-bound processes (plain Python loops) beside each measurement, the
"busy machine" of the issue; the machine's own load average is recorded too (it is shared).
The modes alternate in rounds, so that a change of background load hits all of them.
Results: benchmarks/results/omp_wait_policy.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
PY = sys.executable

CHILD = r"""
import json, os, sys, time
mode, pipe, qfile, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "library-torch-first":
    import torch  # OpenMP starts here, before ragkit could set anything
import ragkit
from ragkit.pipeline import Pipeline
queries = [json.loads(l)["text"] for l in open(qfile)][: n + 3]
p = Pipeline.from_yaml(pipe)
for q in queries[:3]:
    p.search(q)  # warm-up: loads the model and index
times = []
for q in queries[3:]:
    t0 = time.perf_counter(); p.search(q); times.append(time.perf_counter() - t0)
import torch
print(json.dumps({"times": times, "omp": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads()}))
"""

BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def env_for(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DISABLE_TQDM="1")
    if mode == "library-active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    return env


def run_library(mode: str, pipe: Path, qfile: Path, n: int) -> dict:
    out = subprocess.run([PY, "-c", CHILD, mode, str(pipe), str(qfile), str(n)], env=env_for(mode),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(pipe: Path, qfile: Path, n: int, tmp: Path) -> dict:
    lines = qfile.read_text().splitlines()
    one, many = tmp / "q1.jsonl", tmp / "qn.jsonl"
    one.write_text("\n".join(lines[:1]) + "\n")
    many.write_text("\n".join(lines[: n + 1]) + "\n")
    ragkit = [PY, "-m", "ragkit", "run", str(pipe), "--batch-size", "1", "-q", "--format", "jsonl", "--queries"]
    walls = {}
    for name, f in (("one", one), ("many", many)):
        t0 = time.perf_counter()
        subprocess.run(ragkit + [str(f)], env=env_for("cli"), capture_output=True, check=True)
        walls[name] = time.perf_counter() - t0
    return {"per_query": (walls["many"] - walls["one"]) / n, "walls": walls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes running beside each measurement")
    ap.add_argument("--modes", default="library,library-torch-first,library-active,cli")
    args = ap.parse_args()
    modes = args.modes.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_omp_"))
    corpus = REPO / "data" / "squad_sample" / "corpus.jsonl"
    qsrc = REPO / "data" / "squad_sample" / "queries.jsonl"
    qfile = tmp / "queries.jsonl"
    qfile.write_text("".join(l for l in qsrc.read_text().splitlines(keepends=True)[: args.queries + 3]))
    pipe = tmp / "dense.yaml"
    pipe.write_text(f"version: 1\ncorpus: {{path: {corpus}}}\nindex:\n  - indexer.dense: {{path: {tmp / 'idx'}, "
                    f"model: minilm}}\npipeline:\n  - retriever.dense: {{index: {tmp / 'idx'}, k: 10}}\n")
    subprocess.run([PY, "-m", "ragkit", "index", "-q", str(pipe)], env=env_for("cli"), check=True,
                   capture_output=True)

    per: dict[str, list[float]] = {m: [] for m in modes}
    info: dict[str, dict] = {}
    loads = []
    for r in range(args.rounds):
        for mode in modes:
            burners = [subprocess.Popen([PY, "-c", BURN.format(s=600)]) for _ in range(args.busy)]
            try:
                loads.append(os.getloadavg()[0])
                if mode == "cli":
                    res = run_cli(pipe, qfile, args.queries, tmp)
                    per[mode].append(res["per_query"] * 1000)
                    info[mode] = {"walls_s": {k: round(v, 2) for k, v in res["walls"].items()}}
                else:
                    res = run_library(mode, pipe, qfile, args.queries)
                    per[mode].append(statistics.mean(res["times"]) * 1000)
                    info[mode] = {"omp": res["omp"], "torch_threads": res["threads"],
                                  "median_ms_last_round": round(statistics.median(res["times"]) * 1000, 2)}
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
            print(f"round {r + 1} {mode}: {per[mode][-1]:.1f} ms/query", flush=True)

    ref = statistics.mean(per["library"]) if "library" in per else None
    rows = []
    for m in modes:
        mean = statistics.mean(per[m])
        rows.append({"mode": m, "ms_per_query_mean_of_rounds": round(mean, 2),
                     "rounds_ms": [round(x, 2) for x in per[m]],
                     "vs_library": round(mean / ref, 2) if ref else None, **info.get(m, {})})
    data = {"command": "nice -n 10 .venv/bin/python benchmarks/bench_omp.py " + " ".join(sys.argv[1:]),
            "queries_per_round": args.queries, "rounds": args.rounds, "busy_processes": args.busy,
            "cpus": os.cpu_count(), "load_average_1min_during": [round(x, 2) for x in loads], "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "omp_wait_policy.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# Dense search per query by OpenMP wait policy\n",
          f"`{data['command']}`; {args.queries} SQuAD questions per round, {args.rounds} rounds, "
          f"{args.busy} CPU-bound processes beside each measurement, {os.cpu_count()} CPUs, 1-min load average "
          f"during {min(loads):.1f}-{max(loads):.1f} (shared machine).\n",
          "| mode | ms/query (mean of rounds) | rounds | vs library |", "|---|---|---|---|"]
    for row in rows:
        md.append(f"| {row['mode']} | {row['ms_per_query_mean_of_rounds']} | {row['rounds_ms']} | "
                  f"{row['vs_library']} |")
    md.append("\nNotes: `library` is the default (`import ragkit` sets OMP_WAIT_POLICY=PASSIVE before torch loads); "
              "`library-torch-first` imports torch first, so OpenMP keeps its default spin-then-sleep policy although "
              "ragkit sets the variable afterwards (the pre-change behaviour of library users); `cli` subtracts two "
              "process runs and is noisier.")
    (OUT / "omp_wait_policy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
