"""Evaluate a train-reranker checkpoint snapshot (``<output>/checkpoint/model.pt``, copied while a run
goes on) with the integration test's protocol: rerank the bm25s top 20 of the first N held-out SQuAD
questions, print nDCG@10 / RR@10 of BM25 and of the reranked list.

    python benchmarks/eval_reranker_snapshot.py SNAPSHOT.pt [N=100]

Recorded: steps 300 / 400 / 500 of the default-recipe run, results/rerank_recipes.md.
"""
import sys

import ir_measures
import torch
import transformers as tf
from ir_measures import RR, nDCG

from ragkit.rerankers import _train_data as D
from ragkit.rerankers._base import resolve_model
from ragkit.rerankers.cross_encoder import CrossEncoderReranker


def heldout_scores(ds, model_dir: str, nheld: int) -> tuple[tuple, tuple]:
    """(BM25, reranked) (nDCG@10, RR@10) on the bm25s top 20 of the first ``nheld`` held-out questions."""
    _, held = D.split_qids(ds, holdout_every=6)
    bm = D.bm25_rankings(ds, held[:nheld], k=20)
    rr = CrossEncoderReranker(model=model_dir, batch_size=32)(bm)
    keep = set(held[:nheld])
    qrels = [ir_measures.Qrel(q, d, g) for q, rel in ds.qrels.items() if q in keep for d, g in rel.items()]

    def measure(rankings):
        run = [ir_measures.ScoredDoc(r.qid, h.doc_id, h.score) for r in rankings for h in r.hits]
        a = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10], qrels, run)
        return round(a[nDCG @ 10], 4), round(a[RR @ 10], 4)

    return measure(bm), measure(rr)


if __name__ == "__main__":
    snap, nheld = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
    out = snap + ".ckpt"
    path = resolve_model("minilm")
    tf.logging.set_verbosity_error()
    net = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    net.load_state_dict(torch.load(snap, weights_only=True))
    net.save_pretrained(out)
    tf.AutoTokenizer.from_pretrained(path).save_pretrained(out)
    bm, ce = heldout_scores(D.load("squad"), out, nheld)
    print(snap, "bm25", bm, "ce", ce, flush=True)
