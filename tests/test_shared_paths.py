"""One module per concern: model resolution/loading, device choice, BM25 and JSON-lines reading each
have one implementation, and the stages that need them go through it (issue 12, item 5)."""
from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

from ._integration import import_or_unavailable

from ragkit.errors import DataError, MissingDependencyError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ragkit", "indexers", "retrievers", "rerankers", "generators")


@functools.lru_cache(maxsize=None)
def _definitions() -> dict[str, list[str]]:
    """name -> modules (repo-relative) defining a top-level function or class of that name."""
    out: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.parse(f.read_text(encoding="utf-8")).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    out.setdefault(node.name, []).append(str(f.relative_to(REPO)))
    return out


@pytest.mark.parametrize("name", ["ResolvedModel", "resolve_model", "load_causal_lm", "pick_device", "pick_dtype",
                                  "materialize_gguf", "folder_revision"])
def test_model_helpers_are_defined_once_in_ragkit_models(name):
    defs = _definitions().get(name, [])
    assert defs == ["ragkit/models.py"] or (name == "resolve_model" and "ragkit/models.py" in defs), defs


def test_dead_fallback_resolver_is_gone():
    assert "_fallback_resolve" not in _definitions()
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            assert "_fallback_resolve" not in f.read_text(encoding="utf-8"), f


def test_one_bm25_engine_and_one_json_lines_reader():
    defs = _definitions()
    # the training-negatives BM25 is a thin client of indexers.bm25 (no bm25s tokenizer of its own)
    src = (REPO / "rerankers" / "_train_data.py").read_text(encoding="utf-8")
    assert "bm25s" not in src and "build_index" in src
    assert defs.get("json_lines") == ["ragkit/ingest.py"]
    for f in ("ragkit/eval/datasets.py", "ragkit/eval/_loaders.py"):
        assert "json.loads" not in (REPO / f).read_text(encoding="utf-8"), f


def test_pick_device_refuses_missing_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    from ragkit.models import pick_device, pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu" and pick_dtype("auto", "cpu") == torch.float32
    for dev in ("cuda", "cuda:1"):
        with pytest.raises(MissingDependencyError, match="no CUDA GPU"):
            pick_device(dev)


def test_generator_and_llm_reranker_go_through_the_shared_loader(tmp_path, monkeypatch):
    """Both causal-LM stages refuse a missing GPU the same way (the shared pick_device), and both
    load the same folder through ragkit.models.load_causal_lm."""
    torch = pytest.importorskip("torch")
    import_or_unavailable("transformers", "llm", module_level=False)
    import ragkit.models as models
    from ragkit.generators.hf import HFGenerator
    from ragkit.rerankers.llm import LLMReranker

    from ._tinylm import make_tiny_lm

    folder = make_tiny_lm(tmp_path / "lm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for stage in (HFGenerator(model=str(folder), device="cuda"), LLMReranker(model=str(folder), device="cuda", yes_token="one", no_token="two")):
        with pytest.raises(MissingDependencyError, match="device 'cuda'"):
            stage.setup()
    calls = []
    real = models.load_causal_lm

    def spy(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(models, "load_causal_lm", spy)
    import ragkit.generators.hf as hf
    import ragkit.rerankers.llm as llm

    monkeypatch.setattr(llm, "load_causal_lm", spy)  # imported by name there; hf imports it at setup time
    HFGenerator(model=str(folder), device="cpu").setup()
    LLMReranker(model=str(folder), device="cpu", yes_token="one", no_token="two").setup()
    assert calls == [str(folder), str(folder)]
    assert hf is not None


def test_training_negatives_bm25_equals_the_bm25_stage(tmp_path):
    pytest.importorskip("bm25s")
    from ragkit.indexers import BM25Indexer
    from ragkit.records import Document, Query
    from ragkit.retrievers import BM25Retriever
    from ragkit.rerankers._train_data import BM25

    docs = [Document(f"d{i}", t) for i, t in enumerate([
        "Paris is the capital of France", "Berlin is the capital of Germany", "George Orwell wrote Animal Farm",
        "The river Seine flows through Paris", "Capitals of European countries", "Farming animals in France"])]
    BM25Indexer(path=str(tmp_path / "bm25"))(docs)
    ret = BM25Retriever(index=str(tmp_path / "bm25"), k=5)
    ours = BM25([d.doc_id for d in docs], [d.text for d in docs])
    for q in ("capital of France", "who wrote animal farm", "rivers in Paris"):
        want = [(h.doc_id, h.score) for h in ret([Query("q", q)])[0].hits]
        got = ours.search([q], 5)[0]
        assert [d for d, _ in got] == [d for d, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6)


def test_dataset_corpus_is_read_by_the_ingest_reader(tmp_path, monkeypatch):
    """corpus.jsonl of a dataset folder goes through ragkit.ingest's reader: a byte-order mark is
    accepted and a bad byte is reported with its file offset, as for a pipeline corpus."""
    import ragkit.ingest as ingest
    from ragkit.eval.datasets import load_dataset

    seen = []
    real = ingest.json_lines
    monkeypatch.setattr(ingest, "json_lines", lambda p, name=None: (seen.append(Path(p).name), real(p, name))[1])
    (tmp_path / "queries.jsonl").write_text('{"qid": "q1", "text": "capital"}\n', encoding="utf-8")
    (tmp_path / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"doc_id": "d1", "text": "Paris"}).encode()
                                            + b"\n")
    ds = load_dataset(tmp_path)
    assert [d.doc_id for d in ds.corpus] == ["d1"] and sorted(seen) == ["corpus.jsonl", "queries.jsonl"]
    (tmp_path / "corpus.jsonl").write_bytes(b'{"doc_id": "d1", "text": "Par\xffis"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: not UTF-8: byte 0xff at byte offset 29"):
        load_dataset(tmp_path)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(("." * node.level) + node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_kv_package_is_neutral_and_indexer_generator_are_its_clients():
    """ragkit.kv imports neither indexers nor generators; indexer.kv no longer builds a generator;
    generators no longer import indexers (the old cycle through private attributes is gone)."""
    for f in (REPO / "ragkit" / "kv").glob("*.py"):
        bad = {m for m in _imports(f) if "indexers" in m or "generators" in m}
        assert not bad, (f, bad)
    ix = _imports(REPO / "indexers" / "kv.py")
    assert "ragkit.kv" in ix and not any("generators" in m for m in ix), ix
    for f in (REPO / "generators").glob("*.py"):
        assert not any("indexers" in m for m in _imports(f)), f
    assert "ragkit.kv" in _imports(REPO / "generators" / "hf.py")


def test_loaded_state_uses_plain_private_attributes():
    """One pattern for loaded state (docs/ARCHITECTURE.md): ``self._x`` set in _setup(), no
    ``__dict__`` manipulation in stage modules."""
    for pkg in ("indexers", "retrievers", "rerankers", "generators", "ragkit/kv"):
        for f in (REPO / pkg).rglob("*.py"):
            assert "__dict__" not in f.read_text(encoding="utf-8"), f
    src = (REPO / "ragkit" / "pipeline.py").read_text(encoding="utf-8")
    assert "__dict__" not in src


def test_loaded_state_is_dropped_by_pickle_and_context_is_bound(tmp_path):
    import pickle

    from ragkit.retrievers import BM25Retriever

    r = BM25Retriever(index=str(tmp_path / "x"))
    assert r._base_dir is None and r._progress is None and r._ready is False
    r.bind_context(base_dir=tmp_path, progress=False)
    r._idx = object()
    back = pickle.loads(pickle.dumps(r))
    assert back == r and "_idx" not in vars(back) and back._base_dir is None and back._ready is False
    r.bind_context(progress=True)
    assert r._base_dir == tmp_path and r._progress is True


def test_the_kv_cache_is_named_through_hfcompat_only():
    """transformers >= 5.2x renamed the cache argument and output field (``past_key_values`` -> ``cache``) and
    logs a deprecation for the old names: ragkit's code reads and passes the cache through ragkit._hfcompat."""
    offenders = []
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            if f.name == "_hfcompat.py":
                continue
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in ("past_key_values", "cache_params"):
                    offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
                if isinstance(node, ast.keyword) and node.arg in ("past_key_values", "cache_params"):
                    offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
