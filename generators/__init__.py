"""Answer generators (``ragkit.generators``); classes load on first use."""
from ragkit._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ExtractiveGenerator": "extractive", "HFGenerator": "hf", "LangChainGenerator": "langchain",
})
