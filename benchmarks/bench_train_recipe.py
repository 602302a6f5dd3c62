"""Try one train-reranker recipe: train on SQuAD part-a training-article questions, rerank BM25 top-20 of
200 held-out questions, print nDCG@10 of BM25 and of the reranked list (the integration test's protocol).

    python benchmarks/bench_train_recipe.py LR NEGATIVES MAX_QUERIES [DATA_DIR]

Recorded: lr 1e-4, 3 negatives, 600 queries -> BM25 0.710, cross-encoder 0.156 (317 s); see results/rerank_recipes.md.
"""
import sys
import time

import ir_measures
from ir_measures import nDCG

from ragkit.rerankers import _train_data as D
from ragkit.rerankers.train import train_reranker
from ragkit.rerankers.cross_encoder import CrossEncoderReranker
lr, neg, nq = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ds = D.load("squad", sys.argv[4] if len(sys.argv) > 4 else None)
train, held = D.split_qids(ds, holdout_every=6)
out = f"/tmp/ragkit-recipe-{lr}-{neg}-{nq}"
t = time.time()
s = train_reranker(out, dataset=ds, model="minilm", max_queries=nq, negatives=neg, lr=lr, batch_size=16, progress=False, resume=False)
bm = D.bm25_rankings(ds, held[:200], k=20)
rr = CrossEncoderReranker(model=out, batch_size=32)(bm)
qrels = [ir_measures.Qrel(q, d, g) for q, rel in ds.qrels.items() if q in set(held[:200]) for d, g in rel.items()]
def ndcg(rankings):
    run = [ir_measures.ScoredDoc(r.qid, h.doc_id, h.score) for r in rankings for h in r.hits]
    return ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]
print(lr, neg, nq, "bm25", ndcg(bm), "ce", ndcg(rr), "secs", time.time()-t, s.get("final_loss"), flush=True)
