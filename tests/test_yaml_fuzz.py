"""Fuzzing the pipeline-file loader (issue 11, item 4): every input either loads or raises a
ConfigError; nothing else escapes, and the work per input is bounded by limits in the code.

The inputs come from tests/yaml_fuzz.py (mutations of the shipped pipelines/*.yaml plus
structured hostile documents), numbered so that slices are reproducible. The fast tier runs the
first 300 and a hypothesis search; the slow tier (CI runs ``pytest -m ""``) runs inputs
0-99,999 in ten slices of 10,000. benchmarks/fuzz_yaml.py runs the same 100,000 and records
time and memory per input.
"""
from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragkit.config import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, load_yaml
from ragkit.errors import ConfigError

from .yaml_fuzz import SEEDS, TOKENS, check, fuzz_input

SLICE = 10_000


def _run(indices: range) -> None:
    bad = {}
    for i in indices:
        name = check(fuzz_input(i))
        if name not in ("", "ConfigError"):
            bad.setdefault(name, i)
    assert not bad, f"non-ConfigError exceptions (type: first input number): {bad}"


def test_fuzz_first_inputs():
    _run(range(300))


@pytest.mark.slow
@pytest.mark.parametrize("part", range(10))
def test_fuzz_100k_in_slices(part):
    _run(range(part * SLICE, (part + 1) * SLICE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 4000), st.sampled_from(TOKENS)), max_size=12))
def test_hypothesis_token_insertions_into_shipped_pipelines(seed, edits):
    text = seed
    for pos, tok in edits:
        pos = pos % (len(text) + 1)
        text = text[:pos] + tok + text[pos:]
    assert check(text) in ("", "ConfigError")


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from(list("[]{}:,-&*!?<>|'\"#%@` \n\tab01.~\\x\x00")), max_size=200))
def test_hypothesis_punctuation_soup(text):
    assert check(text) in ("", "ConfigError")


# -- the limits that bound every input (checked by what they refuse, not by timing) ---------------

def _refused(text: str, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as ei:
        load_yaml(text, "f.yaml")
    assert str(ei.value).startswith("f.yaml:")
    return str(ei.value)


@pytest.mark.slow  # tracemalloc makes the loader several times slower
def test_the_largest_inputs_stay_within_the_memory_bound():
    # inputs at the size limit, each shape that builds the most objects: refused by a limit or
    # loaded, and never more than a few MB of Python objects while doing so
    m = MAX_YAML_BYTES
    worst = ["a: [" + "x," * (m // 2 - 10) + "]", "- x\n" * (m // 4), "".join(f"k{i}: {i}\n" for i in range(m))[:m],
             "- &a x\n" + "- *a\n" * ((m - 10) // 5), "a: " + "x\n " * (m // 3 - 10)]
    for text in worst:
        assert len(text) <= m
        tracemalloc.start()
        try:
            load_yaml(text, "f.yaml")
        except ConfigError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 * 2**20, (text[:40], peak)


def test_size_depth_and_value_limits():
    _refused("a: " + "x" * MAX_YAML_BYTES, "too large")
    _refused("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), "nested deeper than 64")
    _refused("[" * 5000 + "]" * 5000, "nested deeper")  # was RecursionError
    _refused("a: [" + "x, " * MAX_YAML_VALUES + "]", "more than 10,000 values")
    # aliases expand: depth and values are counted after expansion
    chain = "a0: &a0 " + "[" * 40 + "x" + "]" * 40 + "\n" + "\n".join(
        f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 4))
    _refused(chain, "deeper than 64 levels once aliases are expanded")


def test_billion_laughs_is_refused_after_a_bounded_amount_of_work():
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nname: *a8\n"  # 459 bytes, 10**9 strings once expanded
    assert len(text.encode()) < 600
    msg = _refused(text, "more than 10,000 values once aliases are expanded")
    assert msg.startswith("f.yaml:")
    # a few aliases are fine
    assert load_yaml("p: &p {index: x}\nq: *p\n").value == {"p": {"index": "x"}, "q": {"index": "x"}}


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "&a [&b [*a, *b]]\n"])
def test_recursive_alias(text):
    _refused(text, "recursive alias")


@pytest.mark.parametrize("text, match", [
    ("version: 1\n<<: {pipeline: []}\n", r"f.yaml:2: merge keys \(`<<`\) are not supported"),
    ("a: &a {x: 1}\nb:\n  <<: *a\n", r"f.yaml:3: merge keys"),
    ("? [a]\n: 1\n", r"f.yaml:1: a key must be a plain value"),
    ("{[a]: 1}\n", r"f.yaml:1: a key must be a plain value"),
    ("version: !!int x\n", r"f.yaml:1: invalid int value 'x'"),
    ("name: !!timestamp x\n", r"f.yaml:1: invalid timestamp value 'x'"),
    ("name: !!bool x\n", r"f.yaml:1: invalid bool value 'x'"),
    ("name: !!float\n", r"f.yaml:1: invalid float value ''"),
    ("name: !!binary aGVsbG8=\n", r"f.yaml:1: tag 'tag:yaml.org,2002:binary' is not allowed"),
    ("name: !!python/name:os.system x\n", r"f.yaml:1: tag .* is not allowed"),
    ("name: !!set {a: 1}\n", r"f.yaml:1: tag 'tag:yaml.org,2002:set' is not allowed"),
    ("k: " + "1" * 5000 + "\n", r"f.yaml:1: number too long \(5000 characters"),
    ("k: " + "1:" * 80 + "1\n", r"f.yaml:1: number too long"),
    ('name: "a\\0b"\n', r"f.yaml:1: a NUL character"),
    ("version: 1\nname: a\x00b\n", r"f.yaml:2: invalid YAML: a NUL character"),
    ("name: a\x01b\n", r"f.yaml:1: invalid YAML: a control character U\+0001"),
])
def test_hostile_constructs_are_config_errors_with_file_and_line(text, match):
    _refused(text, match)
