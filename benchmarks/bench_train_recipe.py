"""Try one train-reranker recipe against the integration test's protocol: train from all-MiniLM-L6-v2 on
SQuAD part-a questions of the training articles (every 6th article held out), rerank the BM25 top-20 of
the first N held-out questions, print nDCG@10 / RR@10 of BM25 and of the reranked list, the training
time and the loss curve (mean per 25 steps).

    python benchmarks/bench_train_recipe.py '{"max_queries": 1000, "negatives": 3, "lr": 1e-4}' [N=200]

The JSON holds keyword arguments of ragkit.rerankers.train.train_reranker. Results: results/rerank_recipes.md.
"""
import json
import sys
import time

from eval_reranker_snapshot import heldout_scores  # same folder

from ragkit.rerankers import _train_data as D
from ragkit.rerankers.train import train_reranker

kw = json.loads(sys.argv[1])
nheld = int(sys.argv[2]) if len(sys.argv) > 2 else 200
ds = D.load("squad")
out = "/tmp/exp-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
t = time.time()
train_reranker(out, dataset=ds, model="minilm", progress=False, resume=False, **kw)
tt = time.time() - t
bm, ce = heldout_scores(ds, out, nheld)
L = json.load(open(out + "/ragkit_train.json"))["losses"]
curve = [round(sum(L[i:i + 25]) / len(L[i:i + 25]), 3) for i in range(0, len(L), 25)]
print(json.dumps(kw), "bm25", bm, "ce", ce, "train_s", round(tt), "eval_s", round(time.time() - t - tt),
      "steps", len(L), "curve", curve, flush=True)
