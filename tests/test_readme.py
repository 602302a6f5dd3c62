"""The README's Python examples that need no model weights run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


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
    exec(compile(next(b for b in BLOCKS if "MHAIndexer(" in b), "README.md", "exec"), ns)
    assert ns["hybrid"].search("Super Bowl 50").hits[0].doc_id.startswith("0-")
    assert len(ns["mrag"].search("Super Bowl 50").hits) == 5
