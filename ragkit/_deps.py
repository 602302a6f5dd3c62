"""Lazy imports of optional dependencies with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# module -> (pip distribution, ragkit extra)
KNOWN = {
    "torch": ("torch", "dense"),
    "transformers": ("transformers", "dense"),
    "sentence_transformers": ("sentence-transformers", "dense"),
    "faiss": ("faiss-cpu", "dense"),
    "networkx": ("networkx", "graph"),
    "rank_bm25": ("rank-bm25", "dev"),
    "hypothesis": ("hypothesis", "dev"),
    "langchain_core": ("langchain-core", "langchain"),
    "pypdf": ("pypdf", "ingest"),
    "tokenizers": ("tokenizers", "dense"),
    "langchain_text_splitters": ("langchain-text-splitters", "dev"),
    "matplotlib": ("matplotlib", "dev"),
    "gguf": ("gguf", "llm"),
    "accelerate": ("accelerate", "llm"),
    "peft": ("peft", "lora"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "distributed": ("distributed", "dask"),
}


def require(module: str, purpose: str = "", extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra that provides it
    (``extra`` overrides the module's usual extra, e.g. ``llm`` for torch needed by generation)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, known = KNOWN.get(module.split(".")[0], (module.split(".")[0], None))
        extra = extra or known
        how = f"pip install 'ragkit[{extra}]'" if extra else f"pip install {dist}"
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(f"'{module}' is not installed{what}. Install it with: {how}  [{exc}]") from None
