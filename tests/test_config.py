import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragkit import ConfigError, Pipeline
from ragkit.config import load_yaml
from ragkit.generators.extractive import ExtractiveGenerator
from ragkit.retrievers.bm25 import BM25Retriever
from ragkit.stages_core import Cutoff
from ragkit.testing import EchoGenerator, OverlapReranker


def err(text: str, tmp_path, name="p.yaml") -> str:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        Pipeline.from_yaml(f)
    return str(ei.value)


GOOD = """version: 1
name: t
pipeline:
  - retriever.bm25: {index: idx, text: true}
  - reranker.overlap
  - ranking.cutoff: {k: 5}
  - generator.extractive:
      n: 2
"""
FIRST = BM25Retriever(index="idx", text=True)


def test_load_and_round_trip(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    p = Pipeline.from_yaml(f)
    assert p.stages == [FIRST, OverlapReranker(), Cutoff(k=5), ExtractiveGenerator(n=2)]
    assert Pipeline.from_yaml(p.to_yaml()) == p
    p.to_yaml(tmp_path / "out.yaml")
    assert Pipeline.from_yaml(tmp_path / "out.yaml") == p


def test_unknown_stage_has_line_stage_number_and_suggestion(tmp_path):
    msg = err(GOOD.replace("ranking.cutoff", "ranking.cutof"), tmp_path)
    assert msg.startswith(f"{tmp_path / 'p.yaml'}:6: pipeline stage #3: unknown stage 'ranking.cutof'.")
    assert "Did you mean 'ranking.cutoff'?" in msg and "Valid: " in msg and "generator.echo" in msg


def test_unknown_parameter(tmp_path):
    msg = err(GOOD.replace("n: 2", "nn: 2"), tmp_path)
    assert ":8: pipeline stage #4 'generator.extractive': unknown parameter 'nn'. Did you mean 'n'?" in msg
    assert "Valid: n, max_chars." in msg


def test_wrong_type_and_out_of_range(tmp_path):
    msg = err(GOOD.replace("{k: 5}", "{k: five}"), tmp_path)
    assert ":6: pipeline stage #3 'ranking.cutoff': parameter 'k' must be int, got str 'five'" in msg
    msg = err(GOOD.replace("n: 2", "n: 0"), tmp_path)
    assert ":8: pipeline stage #4 'generator.extractive': parameter 'n' is 0, out of range: must be >= 1." in msg


def test_literal_choices_listed(tmp_path):
    text = "version: 1\ncorpus: {path: x.jsonl, format: jsonlines}\npipeline: [reranker.overlap]\n"
    msg = err(text, tmp_path)
    assert ":2: 'corpus': parameter 'format' is 'jsonlines'; valid: auto, jsonl, csv, folder." in msg


def test_top_level_errors(tmp_path):
    assert "unknown key 'pipline'. Did you mean 'pipeline'?" in err("version: 1\npipline: []\n", tmp_path)
    assert "missing 'version: 1'" in err("pipeline: []\n", tmp_path)
    assert "unsupported version 2" in err("version: 2\npipeline: []\n", tmp_path)
    assert ":3: duplicate key 'version'" in err("version: 1\npipeline: []\nversion: 1\n", tmp_path)
    assert "invalid YAML" in err("version: 1\npipeline: [\n", tmp_path)
    assert "missing required parameter 'dataset'" in err("version: 1\npipeline: []\neval: {metrics: [AP]}\n", tmp_path)


def test_safe_load_only(tmp_path):
    msg = err("version: 1\npipeline: !!python/object:os.system {}\n", tmp_path)
    assert ":2: tag " in msg and "not allowed" in msg


def test_lines_recorded():
    loc = load_yaml(GOOD)
    assert loc.line("pipeline", 3, "generator.extractive", "n") == 8


stage_strategy = st.one_of(
    st.builds(lambda k: Cutoff(k=k), st.integers(1, 10_000)),
    st.builds(lambda n, m: ExtractiveGenerator(n=n, max_chars=m), st.integers(1, 50), st.integers(10, 5000)),
    st.builds(lambda m: EchoGenerator(max_chars=m), st.integers(1, 5000)),
    st.just(OverlapReranker()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(stage_strategy.filter(lambda s: s.output_kind == "rankings"), max_size=4),
       st.one_of(st.none(), stage_strategy.filter(lambda s: s.output_kind == "answers")),
       st.text(st.characters(blacklist_characters="\x00"), max_size=20))
def test_yaml_round_trip_property(stages, gen, name):
    p = Pipeline([FIRST] + stages + ([gen] if gen else []), name=name)
    assert Pipeline.from_yaml(p.to_yaml()) == p
