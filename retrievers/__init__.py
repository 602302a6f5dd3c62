"""Retrievers and fusion (``ragkit.retrievers``); classes load on first use."""
from ragkit._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BM25Retriever": "bm25", "DenseRetriever": "dense", "MHARetriever": "mha",
    "RRF": "fusion", "RRFFusion": "fusion", "WeightedFusion": "fusion",
})
