"""Start-up cost: wall time of ``ragkit --help`` and ``import ragkit`` in fresh processes, and which
heavy libraries each start-up loads (``import ragkit`` must not load torch, transformers, faiss, ...).

Every measurement is a new ``python`` process (several repeats; median and min reported), next
to a bare ``python -c pass`` in the same run so the interpreter's own start-up can be subtracted.

    nice -n 5 .venv/bin/python benchmarks/bench_import.py [--repeats 7]

Writes ``benchmarks/results/import.{md,json}``. Exits 1 when a forbidden module is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "networkx", "langchain_core", "bm25s",
         "scipy", "matplotlib", "pypdf", "ir_measures", "Stemmer")
FORBIDDEN_ON_IMPORT = ("torch", "transformers", "sentence_transformers", "faiss")

PROBE = "import sys, json\n{stmt}\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
CLI_HELP = ("import contextlib, io, ragkit.cli as c\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        c.main(['--help'])\n    except SystemExit:\n        pass")


def timed(cmd: list[str], repeats: int) -> tuple[list[float], str]:
    times, out = [], ""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run(cmd, capture_output=True, env=env)  # warm the file cache and .pyc files
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-500:]}")
        out = p.stdout
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    cli = shutil.which("ragkit", path=str(Path(py).parent)) or "ragkit"
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "import ragkit": [py, "-c", "import ragkit"],
        "ragkit --help": [cli, "--help"],
        "import ragkit.retrievers.bm25": [py, "-c", "import ragkit.retrievers.bm25"],
    }
    rows = {}
    for name, cmd in cases.items():
        t, _ = timed(cmd, args.repeats)
        rows[name] = {"median_s": statistics.median(t), "min_s": min(t), "runs": [round(x, 4) for x in t]}
    loaded = {}
    for name, stmt in (("import ragkit", "import ragkit"),
                       ("ragkit --help (ragkit.cli.main)", CLI_HELP),
                       ("import ragkit.retrievers.bm25", "import ragkit.retrievers.bm25"),
                       ("import ragkit.indexers.bm25", "import ragkit.indexers.bm25")):
        p = subprocess.run([py, "-c", PROBE.format(stmt=stmt, heavy=HEAVY)], capture_output=True, text=True)
        loaded[name] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else f"error: {p.stderr[-300:]}"
    bad = [m for m in FORBIDDEN_ON_IMPORT if isinstance(loaded["import ragkit"], list) and m in loaded["import ragkit"]]
    info = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "repeats": args.repeats, "command": "nice -n 5 .venv/bin/python benchmarks/bench_import.py "
            + " ".join(sys.argv[1:])}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "import.json").write_text(json.dumps({"info": info, "timings": rows, "heavy_modules_loaded": loaded,
                                                 "forbidden_loaded_by_import_ragkit": bad}, indent=1))
    base = rows["python -c pass"]["median_s"]
    lines = ["# Start-up cost of ragkit", "",
             f"Command: `{info['command']}` ({args.repeats} fresh processes per row after one warm-up; "
             f"{info['machine']}; Python {info['python']}; other jobs may share the CPUs).", "",
             "| command | median s | min s | median minus bare python s |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| `{name}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['median_s'] - base:+.3f} |")
    lines += ["", f"Heavy modules loaded (checked among: {', '.join(HEAVY)}):", ""]
    for name, mods in loaded.items():
        lines.append(f"- `{name}`: {', '.join(mods) if isinstance(mods, list) and mods else (mods or 'none')}")
    lines += ["", f"`import ragkit` loads torch/transformers/sentence-transformers/faiss: "
              f"**{'YES: ' + ', '.join(bad) if bad else 'no'}**."]
    (OUT / "import.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
