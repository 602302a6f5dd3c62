"""Conformance examples for the dense and multi-head stages (merge into conformance_examples.EXAMPLES).

``EXAMPLES.update(dense_examples(chunks, QUERIES))`` adds indexer.dense, retriever.dense (fake
``hash`` embedder) and indexer.mha, retriever.mha (a tiny random BERT saved in the test's folder,
with the MiniLM tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def tiny_bert(tmp: Path) -> str:
    import torch
    import transformers

    from ragkit.models import resolve_model

    folder = tmp / "tiny-bert"
    if not (folder / "config.json").exists():
        tok = transformers.AutoTokenizer.from_pretrained(str(resolve_model("minilm").path))
        tok.save_pretrained(str(folder))
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
        transformers.BertModel(cfg).eval().save_pretrained(str(folder))
    return str(folder)


def dense_examples(chunks: Callable[[], list], queries: list) -> dict[str, Callable[[Path], tuple]]:
    def dense_index(tmp: Path) -> str:
        from ragkit.indexers.dense import DenseIndexer

        DenseIndexer(path=str(tmp / "dense"), model="hash")(chunks())
        return str(tmp / "dense")

    def mha_index(tmp: Path) -> str:
        from ragkit.indexers.mha import MHAIndexer

        MHAIndexer(path=str(tmp / "mha"), model=tiny_bert(tmp))(chunks())
        return str(tmp / "mha")

    def ix_dense(tmp):
        from ragkit.indexers.dense import DenseIndexer
        return DenseIndexer(path=str(tmp / "i"), model="hash", index_type="hnsw"), chunks()

    def rt_dense(tmp):
        from ragkit.retrievers.dense import DenseRetriever
        return DenseRetriever(index=dense_index(tmp), k=3, text=True), queries

    def ix_mha(tmp):
        from ragkit.indexers.mha import MHAIndexer
        return MHAIndexer(path=str(tmp / "i"), model=tiny_bert(tmp)), chunks()

    def rt_mha(tmp):
        from ragkit.retrievers.mha import MHARetriever
        return MHARetriever(index=mha_index(tmp), k=3, c=4, text=True), queries

    return {"indexer.dense": ix_dense, "retriever.dense": rt_dense, "indexer.mha": ix_mha, "retriever.mha": rt_mha}
