"""Second-stage rerankers (``ragkit.rerankers``); classes load on first use."""
from ragkit._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "CrossEncoderReranker": "cross_encoder", "MonoT5Reranker": "monot5", "DuoT5Reranker": "duot5",
    "LLMReranker": "llm", "AttentionReranker": "attention",
})
