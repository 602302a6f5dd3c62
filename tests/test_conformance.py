"""Every registered stage obeys the stage protocol (ARCHITECTURE.md, 'Tests')."""
from __future__ import annotations

import pickle

import pytest

from ragkit import Pipeline, PipelineError, registry
from ragkit.config import build_stage, load_yaml, stage_to_item
from ragkit.records import Answer, Chunk, Ranking
from ragkit.stage import ANSWERS, CHUNKS, QUERIES, RANKINGS, Stage, param

from .conformance_examples import EXAMPLES

TYPES = {RANKINGS: Ranking, ANSWERS: Answer, CHUNKS: Chunk}
KEYS = registry.keys()


def example(key, tmp_path):
    if key not in EXAMPLES:
        pytest.fail(f"stage '{key}' has no conformance example: add one to tests/conformance_examples.py")
    return EXAMPLES[key](tmp_path)


def test_every_builtin_module_imports():
    import importlib

    for mod in registry.BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


@pytest.mark.parametrize("key", KEYS)
def test_params_documented_and_keyed(key):
    cls = registry.get(key)
    assert cls.key == key and issubclass(cls, Stage)
    role, method = key.split(".")
    for p in cls.params_info():
        assert p.help, f"{key}: parameter '{p.name}' has no help text"
    assert cls.describe(), f"{key}: class has no docstring"


@pytest.mark.parametrize("key", KEYS)
def test_protocol(key, tmp_path):
    stage, batch = example(key, tmp_path)
    # config round-trip through YAML text
    import yaml

    text = yaml.safe_dump(stage_to_item(stage))
    assert build_stage(load_yaml(text).value) == stage
    # printable, comparable, picklable
    assert type(stage).__name__ in repr(stage)
    assert pickle.loads(pickle.dumps(stage)) == stage
    # empty batch -> empty result, setup twice
    assert stage([]) == []
    stage.setup()
    stage.setup()
    out1 = stage(batch)
    out2 = pickle.loads(pickle.dumps(stage))(batch)
    # deterministic and typed
    assert out1 == out2
    if stage.output_kind in TYPES:
        assert all(isinstance(o, TYPES[stage.output_kind]) for o in out1)
    if stage.output_kind == RANKINGS:
        for r in out1:
            assert [h.rank for h in r.hits] == list(range(len(r.hits)))
            assert list(r.hits) == sorted(r.hits, key=lambda h: (-h.score, h.doc_id, h.chunk_id or ""))


class _NoText(Stage):
    """Upstream that provides no text on hits."""

    k: int = param(1, help="unused")
    input_kind = QUERIES
    output_kind = RANKINGS


@pytest.mark.parametrize("key", KEYS)
def test_needs_enforced(key, tmp_path):
    stage, _ = example(key, tmp_path)
    if stage.input_kind != RANKINGS or not stage.needs():
        pytest.skip("needs nothing beyond a ranking")
    with pytest.raises(PipelineError, match="needs"):
        Pipeline([_NoText(), stage])
