"""Encoder backends onnx / onnx-int8 (indexers/_onnx.py): parity with torch, recorded in the index."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ._integration import import_or_unavailable

from ragkit.errors import ConfigError
from ragkit.indexers._encoder import Encoder

TEXTS = ["The cat sat on the mat.", "Aerodynamic heating of a slender body at hypersonic speeds.",
         "Libraries classify books by subject headings.", "Who wrote the Declaration of Independence?",
         "short", "A much longer passage " * 30]


def test_backend_choices_checked():
    with pytest.raises(ConfigError, match="encoder backend 'tensorrt'; valid: torch, onnx, onnx-int8"):
        Encoder("hash", backend="tensorrt")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        Encoder("hash", backend="onnx", device="cuda")
    from ragkit.indexers.dense import DenseIndexer

    with pytest.raises(ConfigError, match="backend"):
        DenseIndexer(path="x", backend="int4")


@pytest.mark.model
def test_onnx_matches_torch_and_int8_is_close():
    import_or_unavailable("onnxruntime", "onnx", module_level=False)
    ref = Encoder("minilm", cache=False).encode_documents(TEXTS)
    f32 = Encoder("minilm", backend="onnx", cache=False).encode_documents(TEXTS)
    assert np.abs(ref - f32).max() < 1e-4  # same graph, same pooling and normalisation
    i8 = Encoder("minilm", backend="onnx-int8", cache=False).encode_documents(TEXTS)
    cos = (ref * i8).sum(1)
    assert cos.min() > 0.97 and np.allclose(np.linalg.norm(i8, axis=1), 1, atol=1e-5)


@pytest.mark.model
def test_index_records_backend_and_retriever_uses_it(tmp_path):
    import_or_unavailable("onnxruntime", "onnx", module_level=False)
    from ragkit.indexers.dense import DenseIndexer
    from ragkit.pipeline import Pipeline
    from ragkit.records import Document
    from ragkit.retrievers.dense import DenseRetriever

    docs = [Document(f"d{i}", t) for i, t in enumerate(TEXTS)]
    DenseIndexer(path=str(tmp_path / "i"), backend="onnx-int8")(docs)
    assert json.loads((tmp_path / "i" / "params.json").read_text())["backend"] == "onnx-int8"
    r = Pipeline([DenseRetriever(index=str(tmp_path / "i"), k=2)])
    r.setup()
    assert r.stages[0].__dict__["_enc"].backend == "onnx-int8"
    assert r.search("a cat on a mat").hits[0].doc_id == "d0"
    # explicit float32 query encoder against int8 document vectors also works
    assert Pipeline([DenseRetriever(index=str(tmp_path / "i"), k=2, backend="torch")]).search(
        "a cat on a mat").hits[0].doc_id == "d0"


# -- the cross-encoder reranker on ONNX Runtime -------------------------------------------------------------

PAIRS = [("who wrote the book", "the book was written by a man in the city"),
         ("where is the city", "a city by the river"), ("what is the river", "short"),
         ("who wrote the book", "the river runs " * 40)]


@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_onnx_matches_torch(tmp_path, labels):
    import_or_unavailable("onnxruntime", "onnx", module_level=False)
    from ragkit.rerankers.cross_encoder import CrossEncoderReranker

    from ._tiny_models import tiny_bert

    folder = str(tiny_bert(tmp_path / "ce", num_labels=labels, seed=3))
    q, p = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    ref, _ = CrossEncoderReranker(model=folder, device="cpu").score_pairs(q, p)
    f32, _ = CrossEncoderReranker(model=folder, backend="onnx").score_pairs(q, p)
    assert np.abs(np.asarray(ref) - np.asarray(f32)).max() < 1e-4  # the same graph in another runtime
    i8 = CrossEncoderReranker(model=folder, backend="onnx-int8")
    got, _ = i8.score_pairs(q, p)
    assert np.isfinite(got).all() and np.abs(np.asarray(ref) - np.asarray(got)).max() < 0.1
    assert i8.changed_config()["backend"] == "onnx-int8"  # the pipeline's YAML records the runtime
    from ragkit.artifacts import cache_dir

    exported = sorted((cache_dir() / "onnx").iterdir())
    again, _ = CrossEncoderReranker(model=folder, backend="onnx-int8").score_pairs(q, p)
    assert sorted((cache_dir() / "onnx").iterdir()) == exported and again == got  # exported once, reused


def test_cross_encoder_backend_checked():
    from ragkit.rerankers.cross_encoder import CrossEncoderReranker

    with pytest.raises(ConfigError, match="runs on the CPU"):
        CrossEncoderReranker(model="x", backend="onnx", device="cuda")
    with pytest.raises(ConfigError, match="backend"):
        CrossEncoderReranker(model="x", backend="tensorrt")
