"""Seconds per training step of all-MiniLM-L6-v2 as a cross-encoder, with and without dropout.

    python benchmarks/probe_train_speed.py [--threads 2] [--steps 10] [--tokens 200]

One batch of 16 random pairs (half of them padded to 3/4 length), forward + backward + AdamW,
as in ``train-reranker``; median over ``steps`` after 3 warm-up steps. Variants: the checkpoint's
dropout (0.1 on attention probabilities and hidden states), no attention-probability dropout (the
``train-reranker`` default), no dropout at all, and the eager attention path. Why it matters:
PyTorch's fused CPU attention has no dropout, so with dropout on, SDPA runs the unfused kernel.
Recorded in results/rerank.md (training section).
"""
import argparse
import statistics
import time

import torch
import transformers as tf

from ragkit.rerankers._base import resolve_model

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--tokens", type=int, default=200)
args = ap.parse_args()
torch.set_num_threads(args.threads)
tf.logging.set_verbosity_error()
path = resolve_model("minilm")


def step_seconds(attn_drop: float, hidden_drop: float, impl: str = "sdpa", bs: int = 16) -> float:
    torch.manual_seed(0)
    net = tf.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, attention_probs_dropout_prob=attn_drop, hidden_dropout_prob=hidden_drop,
        attn_implementation=impl)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net.train()
    ids = torch.randint(1000, 20000, (bs, args.tokens))
    mask = torch.ones_like(ids)
    mask[bs // 2:, args.tokens * 3 // 4:] = 0
    y = torch.rand(bs).round()
    bce = torch.nn.BCEWithLogitsLoss()
    times = []
    for _ in range(args.steps + 3):
        t = time.perf_counter()
        bce(net(input_ids=ids, attention_mask=mask).logits[:, 0], y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


base = None
print(f"| attention | attention-probs dropout | hidden dropout | s/step | vs checkpoint dropout |")
print("|---|---|---|---|---|")
for impl, ad, hd in (("sdpa", 0.1, 0.1), ("sdpa", 0.0, 0.1), ("sdpa", 0.0, 0.0), ("eager", 0.1, 0.1)):
    s = step_seconds(ad, hd, impl)
    base = base or s
    print(f"| {impl} | {ad} | {hd} | {s:.3f} | {base / s:.2f}x |", flush=True)
