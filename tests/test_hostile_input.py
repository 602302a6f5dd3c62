"""Issue 11, items 5-7: `validate` refuses pipelines that cannot run; small bad inputs give one
clear line (exit 2 for usage/configuration, 1 at run time); library users get the passive
OpenMP wait policy. (Item 4, hostile YAML, is in test_yaml_fuzz.py.)"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit import ConfigError, Pipeline, PipelineError, StageInputError
from ragkit.cli import main
from ragkit.errors import DataError
from ragkit.generators.extractive import ExtractiveGenerator
from ragkit.indexers.bm25 import BM25Indexer
from ragkit.ingest import read_documents
from ragkit.retrievers.bm25 import BM25Retriever
from ragkit.stages_core import Cutoff
from ragkit.testing import OverlapReranker

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("ragkit")]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "unexpected error" not in err[0]
    return err[0]


def validate(tmp_path, text: str, capsys, name="p.yaml") -> tuple[int, str]:
    f = tmp_path / name
    f.write_text(text)
    code = main(["validate", str(f)])
    return code, one_error_line(capsys) if code else ""


# -- item 5: the whole chain, first stage included ----------------------------------------------

@pytest.mark.parametrize("stage, kind", [("ranking.cutoff", "rankings"), ("generator.extractive", "rankings"),
                                         ("reranker.overlap", "rankings"), ("generator.echo", "rankings")])
def test_pipeline_must_start_with_a_stage_that_takes_queries(tmp_path, capsys, stage, kind):
    code, err = validate(tmp_path, f"version: 1\npipeline:\n  - {stage}\n  - ranking.cutoff\n", capsys)
    assert code == 2
    assert err.startswith(f"ragkit: error: {tmp_path / 'p.yaml'}:3: pipeline stage #1 '{stage}' takes {kind} "
                          "but the pipeline stages start from queries: start with a retriever")


def test_retriever_under_index_is_refused_with_file_and_line(tmp_path, capsys):
    text = ("version: 1\nindex:\n  - indexer.bm25: {path: i}\n  - retriever.bm25: {index: i}\n"
            "pipeline:\n  - retriever.bm25: {index: i}\n")
    code, err = validate(tmp_path, text, capsys)
    assert code == 2 and ":4: index stage #2 'retriever.bm25' takes queries but the stage before it gives chunks" in err
    code, err = validate(tmp_path, text.replace("  - indexer.bm25: {path: i}\n", ""), capsys)
    assert code == 2 and ":3: index stage #1 'retriever.bm25' takes queries but the index stages start from " \
                         "documents: list chunkers and indexers under 'index:'" in err


def test_needs_are_checked_from_the_first_stage_with_a_line(tmp_path, capsys):
    code, err = validate(tmp_path, "version: 1\npipeline:\n  - retriever.bm25: {index: i}\n"
                                   "  - generator.extractive\n", capsys)
    assert code == 2 and ":4: pipeline stage #2 'generator.extractive' needs `text` on hits" in err


def test_valid_pipelines_and_fragments_still_work(tmp_path, capsys):
    for f in sorted((REPO / "pipelines").glob("*.yaml")):
        assert main(["validate", str(f)]) == 0, f
    # fragments compose before they are complete; running an incomplete one is a clear error
    frag = OverlapReranker() % 2
    p = BM25Retriever(index="i", text=True) >> frag
    assert [type(s).__name__ for s in p.stages] == ["BM25Retriever", "OverlapReranker", "Cutoff"]
    with pytest.raises(PipelineError, match="'ranking.cutoff' takes rankings but the pipeline stages start from"):
        Pipeline([Cutoff()]).run("a question")
    with pytest.raises(PipelineError, match="'generator.extractive' takes rankings"):
        Pipeline([ExtractiveGenerator()]).search("a question")
    with pytest.raises(ConfigError, match=r"<dict>: pipeline stage #1 'ranking.cutoff' takes rankings"):
        Pipeline.from_config({"version": 1, "pipeline": ["ranking.cutoff"]})


# -- item 6: small bad inputs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bm25_pipeline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bm25")
    f = tmp / "p.yaml"
    f.write_text(f"version: 1\ncorpus: {{path: {REPO / 'data/squad_sample/corpus.jsonl'}}}\n"
                 f"index:\n  - indexer.bm25: {{path: {tmp / 'idx'}}}\npipeline:\n"
                 f"  - retriever.bm25: {{index: {tmp / 'idx'}, k: 5}}\n")
    assert main(["index", "-q", str(f)]) == 0
    return f


@pytest.mark.parametrize("args, msg", [
    (["--batch-size", "-1"], "argument --batch-size: must be at least 1"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--batch-size", "x"], "argument --batch-size: expected a whole number, got 'x'"),
    (["--show", "-1"], "argument --show: must be at least 0"),
    (["--batch-size", str(2**63)], "argument --batch-size: must be at least 1 (and below 2**31)"),
])
def test_bad_counts_are_usage_errors(bm25_pipeline, capsys, args, msg):
    with pytest.raises(SystemExit) as ei:
        main(["run", str(bm25_pipeline), "what is it", *args])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ragkit run: error: ") and msg in err[-1]


def test_show_zero_and_batches_keep_every_hit(bm25_pipeline, capsys):
    assert main(["run", str(bm25_pipeline), "when was the university founded", "--format", "jsonl", "--show", "3", "--batch-size", "1"]) == 0
    import json

    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    assert main(["run", str(bm25_pipeline), "a b", "--format", "jsonl", "--show", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == []


def test_a_folder_as_the_pipeline(tmp_path, capsys):
    for cmd in (["validate", str(tmp_path)], ["run", str(tmp_path), "q"], ["index", str(tmp_path)]):
        assert main(cmd) == 2
        assert one_error_line(capsys) == f"ragkit: error: {tmp_path}: is a folder; give a pipeline YAML file " \
                                         f"(e.g. {tmp_path / 'pipeline.yaml'})."


def test_unclosed_csv_quote_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "docs.csv"
    f.write_text('doc_id,text\n1,first\n2,"second, with a quote that never ends\n3,third\n4,fourth\n')
    with pytest.raises(DataError, match=r"docs.csv:3: unclosed quote: the quoted field that starts on this row "
                                        r"runs to the end of the file"):
        list(read_documents(f))
    skipped = read_documents(f, on_error="skip")
    assert [d.doc_id for d in skipped] == ["1"]  # the rest is reported, never merged into document 2
    p = tmp_path / "p.yaml"
    p.write_text(f"version: 1\ncorpus: {{path: {f}}}\nindex:\n  - indexer.bm25: {{path: {tmp_path / 'i'}}}\n"
                 f"pipeline: []\n")
    assert main(["index", "-q", str(p)]) == 1
    assert "docs.csv:3: unclosed quote" in one_error_line(capsys)
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("stage, msg", [
    ("indexer.bm25: {path: i, k1: .inf}", "parameter 'k1' is inf; numbers must be finite"),
    ("indexer.bm25: {path: i, k1: -.inf}", "parameter 'k1' is -inf; numbers must be finite"),
    ("indexer.bm25: {path: i, b: .nan}", "parameter 'b' is nan; numbers must be finite"),
    ("indexer.bm25: {path: i, delta: 1.0e+400}", "parameter 'delta' is inf"),
    ("indexer.dense: {path: i, hnsw_m: 100000000000}", "parameter 'hnsw_m' is 100000000000, out of range: must be "
                                                       ">= 2 and <= 512."),
    ("indexer.dense: {path: i, ef_search: 9223372036854775808}", "parameter 'ef_search' is 9223372036854775808, out "
                                                                 "of range: must be >= 1 and <= 1048576."),
    ("indexer.dense: {path: i, ef_construction: 1e11}", "parameter 'ef_construction' must be int, got str"),
    ("chunker.fixed: {size: 4294967296}", "parameter 'size' is 4294967296, out of range: integer parameters must be "
                                          "within +-2,147,483,647"),
    ('indexer.bm25: {path: "idx\\0evil"}', "a NUL character (\\0) is not allowed in a value"),
])
def test_bad_numbers_and_nul_in_parameters(tmp_path, capsys, stage, msg):
    code, err = validate(tmp_path, f"version: 1\nindex:\n  - {stage}\npipeline: []\n", capsys)
    assert code == 2 and f"{tmp_path / 'p.yaml'}:3: " in err and msg in err


def test_the_same_checks_from_python():
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match="numbers must be finite"):
            BM25Indexer(path="i", k1=bad)
    with pytest.raises(ConfigError, match="NUL character"):
        BM25Indexer(path="i\x00j")
    with pytest.raises(ConfigError, match="NUL"):
        Pipeline([BM25Retriever(index="i")], name="a\x00b")
    with pytest.raises(ConfigError, match=r"a NUL character is not allowed in a file name"):
        Pipeline.from_yaml("p\x00.yaml")
    with pytest.raises(ConfigError, match=r"from_yaml\(\) takes a file path .* got bytes"):
        Pipeline.from_yaml(b"version: 1\npipeline: []\n")


@pytest.mark.parametrize("version", ["true", "1.0", "'1'", "[1]", "~"])
def test_version_must_be_the_integer_1(tmp_path, capsys, version):
    code, err = validate(tmp_path, f"version: {version}\npipeline: []\n", capsys)
    assert code == 2 and (":1: unsupported version" in err or "missing 'version: 1'" in err)


def test_unresolvable_model_name_is_exit_2(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(f"version: 1\ncorpus: {{path: {REPO / 'data/squad_sample/corpus.jsonl'}}}\n"
                 f"index:\n  - indexer.dense: {{path: {tmp_path / 'i'}, model: no-such-model-anywhere}}\npipeline: []\n")
    pytest.importorskip("torch")
    assert main(["index", "-q", str(f)]) == 2
    err = one_error_line(capsys)
    assert "model 'no-such-model-anywhere' does not resolve offline" in err
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("call, msg", [
    (lambda p: p.search(b"what is it"), r"search\(\) takes the query text as a str, got bytes b'what is it'; "
                                        r"decode it first"),
    (lambda p: p.search(123), r"search\(\) takes the query text as a str, got int 123"),
    (lambda p: p.run(b"what"), r"queries must be a str, a Query or a list of them, got bytes"),
    (lambda p: p.run(123), r"queries must be a str, a Query or a list of them, got int 123"),
    (lambda p: p.run({"q": "x"}), r"got dict \{'q': 'x'\} \(a dict's keys are not queries\)"),
    (lambda p: p.run(["ok", 5]), r"query #2: expected str or Query, got int 5"),
    (lambda p: p.run([b"x"]), r"query #1: expected str or Query, got bytes b'x'; decode it first"),
    (lambda p: p.stages[0].search(b"x"), r"search\(\) takes the query text as a str, got bytes"),
])
def test_python_api_wrong_query_types(bm25_pipeline, call, msg):
    p = Pipeline.from_yaml(bm25_pipeline)
    with pytest.raises(StageInputError, match=msg):
        call(p)
    assert len(p.run(("a", "b"))) == 2 and len(p.run(q for q in ["a"])) == 1  # tuples, generators still work


# -- item 7: the OpenMP wait policy for library users ---------------------------------------------

@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_import_ragkit_sets_passive_wait_policy_unless_the_user_did(user_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    code = "import os, sys, ragkit; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [user_value or "PASSIVE", "False"]  # set before torch (and OpenMP) can load
