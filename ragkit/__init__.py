"""ragkit: composable retrieval-augmented generation pipelines.

``import ragkit`` is cheap: no network, no writes, no heavy libraries. Names below are
imported on first use. Its one effect: unless the environment already sets
``OMP_WAIT_POLICY``, it sets it to ``PASSIVE``, so that the OpenMP threads of torch and FAISS
(loaded later) sleep instead of spinning while they wait; spinning threads made dense search
over ten times slower on a busy machine (benchmarks/results/omp_wait_policy.md). OpenMP reads
the variable once, when torch or FAISS is first imported: import ragkit first, or export
``OMP_WAIT_POLICY=PASSIVE`` yourself (``OMP_WAIT_POLICY=ACTIVE`` keeps the spinning).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    # records
    "Document": "ragkit.records", "Chunk": "ragkit.records", "Query": "ragkit.records",
    "Hit": "ragkit.records", "Ranking": "ragkit.records", "Answer": "ragkit.records",
    # core
    "Stage": "ragkit.stage", "Retriever": "ragkit.stage", "Generator": "ragkit.stage",
    "param": "ragkit.stage", "register": "ragkit.registry",
    "Pipeline": "ragkit.pipeline", "Cutoff": "ragkit.stages_core",
    "CorpusSpec": "ragkit.config", "EvalSpec": "ragkit.config",
    # errors
    "RagkitError": "ragkit.errors", "ConfigError": "ragkit.errors", "PipelineError": "ragkit.errors",
    "StageInputError": "ragkit.errors", "DataError": "ragkit.errors",
    "IndexArtifactError": "ragkit.errors", "MissingDependencyError": "ragkit.errors",
    "ModelNotFoundError": "ragkit.errors",
    # evaluation
    "evaluate": "ragkit.eval", "load_dataset": "ragkit.eval", "list_datasets": "ragkit.eval",
    "EvalResult": "ragkit.eval", "Dataset": "ragkit.eval",
    # ingestion
    "read_documents": "ragkit.ingest",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'ragkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
