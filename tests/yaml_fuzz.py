"""Hostile and mutated pipeline files for the YAML fuzz test and benchmarks/fuzz_yaml.py.

``fuzz_input(i)`` is a pure function of ``i``: input ``i`` is the same on every machine, so a
CI slice ``range(a, b)`` is reproducible and the benchmark's 100,000 inputs are the union of
slices. Two families alternate:

* mutations of the shipped ``pipelines/*.yaml`` (1-8 edits: insert YAML punctuation, tags,
  anchors, aliases, merge keys, numbers, control characters; delete, duplicate or swap spans;
  replace a value), the way a careless or hostile edit changes a real file;
* structured hostile documents: nested aliases ("billion laughs"), recursive aliases, deep
  nesting, merge keys, complex keys, every YAML tag with good and bad values, huge numbers,
  sexagesimal numbers, NUL and control characters, non-finite numbers and out-of-range
  parameters in otherwise valid pipelines.

``check(text)`` loads one input the way ``ragkit validate`` does and returns the exception
type name ('' when it loaded, 'ConfigError' for a clear error); anything else is a bug.
"""
from __future__ import annotations

import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEEDS = [p.read_text(encoding="utf-8") for p in sorted((REPO / "pipelines").glob("*.yaml"))]

TOKENS = [
    "&a ", "*a", "&b ", "*b", "<<: ", "<<: *a", "? ", "? [a]\n: 1", "? {a: 1}\n", "!!int ", "!!float ", "!!bool ",
    "!!null ", "!!str ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!pairs ", "!!map ", "!!seq ",
    "!!merge ", "!!value ", "!!python/object:os.system ", "!!python/name:os.system ", "!foo ", "!<tag:x> ",
    "%YAML 1.1\n---\n", "%TAG ! tag:x,2000:\n---\n", "---\n", "...\n", "[", "]", "{", "}", ",", ":", ": ", "- ",
    "|", ">", "|-\n  ", "'", '"', "#", "\n", "\n  ", "\t", " ", "\\", "\\0", "\\x00", "\x00", "\x01", "\x7f",
    "\ufeff", "\u2028", "\x85", "~", "null", "true", "false", "yes", "no", "on", "off", ".inf", "-.inf", ".nan",
    ".NaN", "1e11", "1e309", "100000000000", "9223372036854775808", "-9223372036854775809", "0x7fffffffffffffff",
    "0b" + "1" * 70, "0o777", "190:20:30", "1:" * 40 + "0", "1_000_000", "2001-12-14t21:59:43.10-05:00",
    "2002-12-14", "9" * 120, "1" + "0" * 4400, "-1", "0", "1.5", "=", "@", "`", "%", "&", "*",
    "version: 1\n", "version: true\n", "version: 1.0\n", "version: '1'\n", "pipeline: []\n", "index: []\n",
    "- ranking.cutoff\n", "- generator.extractive\n", "- retriever.bm25: {index: x}\n", "k1: .inf", "k: -1",
    "hnsw_m: 100000000000", "ef_search: 9223372036854775808", "path: \"a\\0b\"", "path: \"\"", "text: .nan",
]


def _laughs(rng: random.Random) -> str:
    width, depth = rng.randint(2, 12), rng.randint(3, 12)
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    head = "version: 1\npipeline:\n  - retriever.bm25: {index: x}\n" if rng.random() < 0.5 else ""
    where = rng.choice(["name: *a{d}", "description: *a{d}", "pipeline: *a{d}", "x: *a{d}"])
    return head + "\n".join(lines) + "\n" + where.format(d=depth - 1) + "\n"


def _structured(rng: random.Random) -> str:
    kind = rng.randrange(14)
    n = rng.choice([10, 64, 65, 100, 1000, 5000])
    if kind == 0:
        return _laughs(rng)
    if kind == 1:
        return rng.choice(["a: &a [*a]\n", "a: &a {b: *a}\n", "&a [&b [*a, *b]]\n", "a: &a\n  - *a\n",
                           "version: 1\npipeline: &p [*p]\n", "x: &a {<<: *a}\n"])
    if kind == 2:
        o, c = rng.choice([("[", "]"), ("{a: ", "}"), ("- ", ""), ("[{a: ", "}]")])
        return o * n + "x" + c * n
    if kind == 3:
        return "\n".join("  " * i + f"k{i}:" for i in range(n)) + " x\n"
    if kind == 4:
        base = rng.choice(["{version: 1}", "*a", "[*a, *a]", "{pipeline: []}", "x", "[1, 2]"])
        return f"a: &a {{version: 1, pipeline: []}}\n<<: {base}\n" if rng.random() < 0.5 else f"version: 1\n<<: {base}\n"
    if kind == 5:
        return rng.choice(["? [a]\n: 1\n", "? {a: 1}\n: 2\n", "{[a]: 1}\n", "? - a\n  - b\n: c\n", "{? a: b}\n",
                           "? |\n  x\n: 1\n", "[? a: b]\n"])
    if kind == 6:
        tag = rng.choice(["int", "float", "bool", "null", "str", "timestamp", "binary", "set", "omap", "pairs",
                          "map", "seq", "merge", "value", "yaml", "python/none", "python/object/apply:os.system"])
        val = rng.choice(["x", "", "1", "[1]", "{a: 1}", "2002-13-45", "'%%'", "!!", "0x", "1:2:3", ".inf"])
        field = rng.choice(["version", "name", "pipeline", "x"])
        return f"version: 1\npipeline: []\n{field}2: !!{tag} {val}\n" if rng.random() < 0.5 else f"{field}: !!{tag} {val}\n"
    if kind == 7:
        num = rng.choice(["9" * 101, "1" + "0" * 4400, "0b" + "1" * 200, "1:" * 60 + "1", "0x" + "f" * 150,
                          "1e400", "-1e400", "1" + "_0" * 80])
        return f"version: 1\npipeline:\n  - retriever.bm25: {{index: x, k: {num}}}\n"
    if kind == 8:
        ch = rng.choice(["\x00", "\x01", "\x1b", "\x7f", "\ufffe", "\x85", "\u2028"])
        return f"version: 1\nname: a{ch}b\npipeline: []\n"
    if kind == 9:
        return ('version: 1\ncorpus: {path: "' + rng.choice(["a\\0b", "\\x00", "", "\\u0000.jsonl"])
                + '"}\npipeline: []\n')
    if kind == 10:
        stage, param, val = rng.choice([
            ("indexer.bm25: {path: x, ", "k1", ".inf"), ("indexer.bm25: {path: x, ", "b", ".nan"),
            ("indexer.dense: {path: x, ", "hnsw_m", "100000000000"),
            ("indexer.dense: {path: x, ", "ef_search", "9223372036854775808"),
            ("indexer.dense: {path: x, ", "ef_construction", "-.inf"),
            ("indexer.bm25: {path: x, ", "delta", "1e309"), ("indexer.bm25: {path: x, ", "k1", "[.inf]"),
        ])
        return f"version: 1\nindex:\n  - {stage}{param}: {val}}}\npipeline: []\n"
    if kind == 11:
        first = rng.choice(["ranking.cutoff", "generator.extractive", "reranker.overlap", "generator.echo",
                            "indexer.bm25: {path: x}", "chunker.sentence"])
        sec = rng.choice(["pipeline", "index"])
        return f"version: 1\n{sec}:\n  - {first}\n" + ("pipeline: []\n" if sec == "index" else "")
    if kind == 12:
        return rng.choice(["version: true\npipeline: []\n", "version: 1.0\npipeline: []\n",
                           "version: [1]\npipeline: []\n", "version: 2001-01-01\npipeline: []\n",
                           "version: ~\npipeline: []\n", "2001-01-01: 1\n", "1: 2\n", "null: x\n", ".nan: 1\n"])
    return "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 40)))


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        i = rng.randrange(len(text) + 1)
        if op <= 1:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op == 2:
            j = min(len(text), i + rng.randint(1, 40))
            text = text[:i] + text[j:]
        elif op == 3:
            j = min(len(text), i + rng.randint(1, 80))
            text = text[:i] + text[i:j] * rng.randint(2, 4) + text[i:]
        elif op == 4 and ":" in text:
            k = text.find(":", i)
            if k >= 0:
                end = text.find("\n", k)
                end = len(text) if end < 0 else end
                text = text[:k + 1] + " " + rng.choice(TOKENS).strip("\n") + text[end:]
        else:
            j = rng.randrange(len(text) + 1)
            a, b = sorted((i, j))
            text = text[:a] + text[b:] + text[a:b]
    return text


def fuzz_input(i: int) -> str:
    rng = random.Random(i * 7919 + 17)
    if i % 2 == 0:
        return _mutate(rng, SEEDS[rng.randrange(len(SEEDS))])
    return _structured(rng)


def check(text: str) -> str:
    """'' if the text loads as a pipeline, else the name of the exception it raised."""
    from ragkit.pipeline import Pipeline

    try:
        Pipeline.from_yaml(text)
        return ""
    except Exception as exc:  # the fuzz target: every failure must be a ConfigError
        return type(exc).__name__
