"""Fuzz the pipeline-file loader with 100,000 inputs (issue 11, item 4) and record the figures.

    nice -n 10 .venv/bin/python benchmarks/fuzz_yaml.py            # inputs 0..99,999
    .venv/bin/python benchmarks/fuzz_yaml.py --n 2000 --out /tmp/x.json

Each input (tests/yaml_fuzz.py: mutations of the shipped pipelines/*.yaml and structured hostile
documents, input i is the same everywhere) is loaded as ``ragkit validate`` loads a file
(``Pipeline.from_yaml``). Recorded in benchmarks/results/fuzz_yaml.json: inputs run, outcomes
(loaded / ConfigError / other ragkit errors / non-ragkit exceptions, target 0, with the first
inputs of each), the largest wall time of one input, and the peak memory of one input.

Memory is measured with tracemalloc, which slows loading several-fold, so it is measured in a
second pass over the inputs most likely to be the largest: the --mem-top slowest inputs of the
first pass, the --mem-top longest texts, and every 50th input; plus the worst shapes at the size
limit (MAX_YAML_BYTES). Times are wall times on a shared machine: the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ragkit import errors  # noqa: E402
from ragkit.config import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES  # noqa: E402
from ragkit.pipeline import Pipeline  # noqa: E402
from tests.yaml_fuzz import fuzz_input  # noqa: E402


def load(text: str) -> str:
    try:
        Pipeline.from_yaml(text)
        return "loaded"
    except errors.ConfigError:
        return "ConfigError"
    except errors.RagkitError as exc:
        return f"ragkit:{type(exc).__name__}"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        return f"other:{type(exc).__name__}"


def peak_bytes(text: str) -> int:
    tracemalloc.start()
    try:
        load(text)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def worst_shapes() -> dict[str, str]:
    m = MAX_YAML_BYTES
    return {"flow list at the size limit": "a: [" + "x," * (m // 2 - 10) + "]",
            "block list at the size limit": "- x\n" * (m // 4),
            "mapping at the size limit": "".join(f"k{i}: {i}\n" for i in range(m))[:m],
            "aliases at the size limit": "- &a x\n" + "- *a\n" * ((m - 10) // 5),
            "one long scalar": "a: " + "x" * (m - 10),
            "billion laughs (459 bytes)": "\n".join(
                ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]) + "\nname: *a8\n",
            "5000 nested brackets": "[" * 5000 + "]" * 5000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--mem-top", type=int, default=500, help="slowest and longest inputs measured for memory")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fuzz_yaml.json"))
    args = ap.parse_args()

    outcomes: Counter = Counter()
    first: dict[str, list[int]] = {}
    times: list[tuple[float, int]] = []
    sizes: list[tuple[int, int]] = []
    t_start = time.perf_counter()
    for i in range(args.start, args.start + args.n):
        text = fuzz_input(i)
        t0 = time.perf_counter()
        kind = load(text)
        dt = time.perf_counter() - t0
        outcomes[kind] += 1
        if kind not in ("loaded", "ConfigError"):
            first.setdefault(kind, [])
            if len(first[kind]) < 10:
                first[kind].append(i)
        times.append((dt, i))
        sizes.append((len(text), i))
        done = i - args.start + 1
        if done % 10_000 == 0:
            print(f"{done:,} inputs, {time.perf_counter() - t_start:.0f} s, {dict(outcomes)}", flush=True)
    elapsed = time.perf_counter() - t_start
    times.sort(reverse=True)
    sizes.sort(reverse=True)

    mem_ids = {i for _, i in times[: args.mem_top]} | {i for _, i in sizes[: args.mem_top]}
    mem_ids |= set(range(args.start, args.start + args.n, 50))
    peaks = sorted(((peak_bytes(fuzz_input(i)), i) for i in mem_ids), reverse=True)
    shapes = {}
    for name, text in worst_shapes().items():
        t0 = time.perf_counter()
        kind = load(text)
        shapes[name] = {"chars": len(text), "outcome": kind, "seconds": round(time.perf_counter() - t0, 4),
                        "peak_MB": round(peak_bytes(text) / 2**20, 2)}

    non_ragkit = sum(v for k, v in outcomes.items() if k.startswith("other:"))
    result = {
        "command": "nice -n 10 .venv/bin/python benchmarks/fuzz_yaml.py" + " ".join(
            [""] + [a for a in sys.argv[1:]]),
        "inputs": args.n, "first_input": args.start,
        "outcomes": dict(outcomes), "non_ragkit_exceptions": non_ragkit,
        "non_config_error_exceptions": args.n - outcomes["loaded"] - outcomes["ConfigError"],
        "first_inputs_per_unexpected_outcome": first,
        "seconds_total": round(elapsed, 1), "ms_per_input_mean": round(1000 * elapsed / args.n, 3),
        "max_seconds_one_input": round(times[0][0], 4), "slowest_inputs": [[round(t, 4), i] for t, i in times[:5]],
        "p99_ms": round(1000 * times[len(times) // 100][0], 3),
        "memory_measured_inputs": len(mem_ids),
        "max_peak_MB_one_input": round(peaks[0][0] / 2**20, 3), "largest_peak_inputs": [[round(b / 2**20, 3), i]
                                                                                     for b, i in peaks[:5]],
        "worst_shapes_at_the_limits": shapes,
        "limits": {"MAX_YAML_BYTES": MAX_YAML_BYTES, "MAX_YAML_DEPTH": MAX_YAML_DEPTH,
                   "MAX_YAML_VALUES": MAX_YAML_VALUES},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("inputs", "outcomes", "non_ragkit_exceptions", "max_seconds_one_input",
                                             "max_peak_MB_one_input")}))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
