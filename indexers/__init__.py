"""Chunkers and index builders (``ragkit.indexers``); classes load on first use."""
from ragkit._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FixedChunker": "chunkers", "SentenceChunker": "chunkers", "RecursiveChunker": "chunkers",
    "BM25Indexer": "bm25", "DenseIndexer": "dense", "MHAIndexer": "mha", "KVIndexer": "kv",
})
