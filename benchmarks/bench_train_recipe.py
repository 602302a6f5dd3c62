"""Try one train-reranker recipe against the integration test's protocol: train from all-MiniLM-L6-v2 on
SQuAD part-a questions of the training articles (every 6th article held out), rerank the BM25 top-20 of
the first N held-out questions, print nDCG@10 / RR@10 of BM25 and of the reranked list, the training
time and the loss curve (mean per 25 steps).

    python benchmarks/bench_train_recipe.py '{"max_queries": 1000, "negatives": 3, "lr": 1e-4}' [N=200]

The JSON holds keyword arguments of ragkit.rerankers.train.train_reranker. Results: results/rerank_recipes.md.
"""
import sys, time, json
import ir_measures
from ir_measures import nDCG, RR
from ragkit.rerankers import _train_data as D
from ragkit.rerankers.train import train_reranker
from ragkit.rerankers.cross_encoder import CrossEncoderReranker
kw = json.loads(sys.argv[1]); nheld = int(sys.argv[2]) if len(sys.argv) > 2 else 200
ds = D.load("squad")
train, held = D.split_qids(ds, holdout_every=6)
out = "/tmp/exp-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
t = time.time()
s = train_reranker(out, dataset=ds, model="minilm", progress=False, resume=False, **kw)
tt = time.time() - t
bm = D.bm25_rankings(ds, held[:nheld], k=20)
rr = CrossEncoderReranker(model=out, batch_size=32)(bm)
qrels = [ir_measures.Qrel(q, d, g) for q, rel in ds.qrels.items() if q in set(held[:nheld]) for d, g in rel.items()]
def m(rankings):
    run = [ir_measures.ScoredDoc(r.qid, h.doc_id, h.score) for r in rankings for h in r.hits]
    a = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10], qrels, run)
    return round(a[nDCG @ 10], 4), round(a[RR @ 10], 4)
L = json.load(open(out + "/ragkit_train.json"))["losses"]
curve = [round(sum(L[i:i+25]) / len(L[i:i+25]), 3) for i in range(0, len(L), 25)]
print(json.dumps(kw), "bm25", m(bm), "ce", m(rr), "train_s", round(tt), "eval_s", round(time.time() - t - tt), "steps", len(L), "curve", curve, flush=True)
