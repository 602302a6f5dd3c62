"""Train a reranker (``ragkit train-reranker``): monoBERT-style cross-encoder or monoT5.

monoBERT (Nogueira & Cho, 2019): a pretrained BERT encoder (here by default the offline
all-MiniLM-L6-v2, ``minilm``) gets a one-logit classification head on ``[CLS]`` and is fine-tuned
on (query, passage) pairs, label 1 for a judged-relevant passage and 0 for a BM25-mined hard
negative, with binary cross-entropy on the pair logit. Default recipe: 3 negatives per question
sampled from its BM25 top 20, one epoch, batch 16, AdamW with lr 1e-4 for the encoder and 2e-3
for the new head (see :func:`head_parameter_names`), 10% warm-up then linear decay, pairs cut to
256 tokens, no dropout on attention probabilities (see :func:`attention_dropout_overrides`).
The result is saved as a standard
``AutoModelForSequenceClassification`` checkpoint + tokenizer (``save_pretrained``), loadable by
``reranker.cross_encoder`` and by any transformers code.

monoT5 (Nogueira et al., 2020), chosen automatically for encoder-decoder checkpoints: the input
``Query: q Document: d Relevant:``, target word ``true``/``false`` at the first decoder step,
cross-entropy over the vocabulary; saved with ``save_pretrained``, loadable by ``reranker.monot5``.

Inputs are encoded exactly as the rerankers encode them (query cut to ``query_max_tokens``, passage
cut to ``max_length``). Batches group pairs of similar length (less padding). Training state
(model, optimizer, scheduler, step, RNG states, loss log) is saved every ``save_every`` steps to
``<output>/checkpoint``; running the same command again resumes from it and gives the same
weights as an uninterrupted run. ``<output>/train_log.jsonl`` holds the per-step loss.

LoRA (Hu et al., 2021; ``lora_rank > 0``, cross-encoders only, needs ``peft``): the pretrained
encoder stays frozen; trainable rank-r updates B·A (scaled by alpha/r, alpha = 2r) are added to the
query, key, value and dense projections of every layer, and the scoring head (classifier + pooler)
is trained in full. The output folder then holds only the adapter and the head
(``adapter_config.json`` + ``adapter_model.safetensors``, a few MB) plus the tokenizer;
``reranker.cross_encoder`` loads the base model named in ``adapter_config.json`` (the name given to
``--model``, e.g. ``minilm``), applies the adapter and merges it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from ragkit._deps import require
from ragkit.errors import ConfigError, DataError

from . import _train_data as D
from ._base import cut_many, encode_template, resolve_model, single_token_id
from .monot5 import MONOT5_TEMPLATE

CKPT = "checkpoint"


def _encode_bert(tok: Any, queries: list[str], passages: list[str], max_length: int, qmax: int) -> list[list[int]]:
    uq = sorted(set(queries))
    cut_q, _, _ = cut_many(tok, uq, qmax)
    qmap = dict(zip(uq, cut_q))
    enc = tok([qmap[q] for q in queries], passages, truncation="only_second", max_length=max_length)
    tt = enc.get("token_type_ids")
    return [(enc["input_ids"][i], tt[i] if tt is not None else None) for i in range(len(queries))]


def _save_checkpoint(folder: Path, model: Any, opt: Any, sched: Any, state: dict) -> None:
    torch = require("torch")
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    torch.save(sched.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


LORA_TARGETS = ("query", "key", "value", "dense")


def _with_lora(net: Any, rank: int, base_name: str) -> Any:
    """``net`` wrapped by peft: LoRA on the attention and MLP projections, the head trained in full."""
    from ragkit._hfcompat import peft_quiet

    peft = require("peft", "LoRA reranker training", extra="lora")
    cfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                          target_modules=list(LORA_TARGETS), modules_to_save=["classifier", "pooler"])
    with peft_quiet():
        net = peft.get_peft_model(net, cfg)
    net.peft_config["default"].base_model_name_or_path = base_name   # a short name stays portable
    return net


def head_parameter_names(net: Any) -> set[str]:
    """Names of the parameters of a sequence-classification model's scoring head: the layers
    outside the pretrained encoder (``classifier``) plus BERT's ``pooler``, which
    sentence-transformers checkpoints carry untrained for this task.

    The head starts random with weights of ~0.02; at the encoder's learning rate (~4e-5 per Adam
    step) it needs hundreds of steps to grow, and until it does the encoder receives almost no
    gradient (the loss sits at ln 2). Giving the head its own, larger rate (``head_lr``) is the
    usual fix for short fine-tuning runs.
    """
    prefix = getattr(net, "base_model_prefix", "") + "."
    return {n for n, _ in net.named_parameters() if not n.startswith(prefix) or ".pooler." in n}


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_overrides(config: Any, p: float | None) -> dict[str, float]:
    """The ``from_pretrained`` keyword overrides that set the dropout on attention probabilities
    of a transformers ``config`` (BERT-style ``attention_probs_dropout_prob`` or
    ``attention_dropout``) to ``p``; empty for ``p = None`` or a model without such a field.

    The default recipe turns it off (``p = 0``): PyTorch's fused CPU attention kernels do not
    implement dropout, so with it on, SDPA falls back to the unfused path that materialises the
    attention matrix, and a training step of all-MiniLM-L6-v2 (batch 16 x 200 tokens, 2 threads)
    takes ~1.7x as long (``benchmarks/probe_train_speed.py``). Hidden-state dropout stays as the
    checkpoint has it. T5 has a single ``dropout_rate`` and is left unchanged.
    """
    if p is None:
        return {}
    return {f: p for f in ATTENTION_DROPOUT_FIELDS if isinstance(getattr(config, f, None), (int, float))}


def train_reranker(output: str, *, dataset: Any = "squad", model: str = "minilm", kind: str = "auto",
                   split: str = "train", holdout_every: int = 6, max_queries: int | None = None,
                   negatives: int = 3, neg_depth: int = 20, epochs: int = 1, batch_size: int = 16,
                   lr: float = 1e-4, head_lr: float | None = 2e-3, warmup: float = 0.1, weight_decay: float = 0.01, max_length: int = 256,
                   query_max_tokens: int = 64, save_every: int = 100, resume: bool = True, seed: int = 13,
                   max_steps: int | None = None, progress: bool | None = None, data_dir: str | None = None,
                   threads: int | None = None, attention_dropout: float | None = 0.0, lora_rank: int = 0) -> dict:
    """Fine-tune a reranker; returns a summary dict (steps, seconds, final loss, paths).

    ``dataset``: a built-in dataset name (``squad``), a generic folder, or a Dataset object.
    ``split``: ``train`` (queries not held out by :func:`ragkit.rerankers._train_data.split_qids`
    with ``holdout_every``) or ``all``. ``max_steps`` stops early (the checkpoint is saved, so the
    same call resumes). ``kind``: ``auto`` (encoder-decoder -> monot5, else cross_encoder),
    ``cross_encoder`` or ``monot5``. ``attention_dropout``: dropout on the attention
    probabilities while training (see :func:`attention_dropout_overrides`); ``None`` keeps the
    checkpoint's own. ``lora_rank``: 0 fine-tunes every weight; r > 0 trains a LoRA adapter of rank
    r and the head only (see the module docstring).
    """
    torch = require("torch", "reranker training")
    tf = require("transformers", "reranker training")
    if kind not in ("auto", "cross_encoder", "monot5"):
        raise ConfigError(f"train-reranker: kind is {kind!r}; valid: auto, cross_encoder, monot5")
    if split not in ("train", "all"):
        raise ConfigError(f"train-reranker: split is {split!r}; valid: train, all")
    for name, v, lo in (("negatives", negatives, 0), ("neg_depth", neg_depth, 1), ("epochs", epochs, 1),
                        ("batch_size", batch_size, 1), ("save_every", save_every, 1)):
        if v < lo:
            raise ConfigError(f"train-reranker: {name} must be >= {lo}, got {v}")
    if lora_rank < 0:
        raise ConfigError(f"train-reranker: lora_rank must be >= 0, got {lora_rank}")
    if attention_dropout is not None and not 0.0 <= attention_dropout < 1.0:
        raise ConfigError(f"train-reranker: attention_dropout must be in [0, 1), got {attention_dropout}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # -- model -------------------------------------------------------------------------------------
    path = resolve_model(model)
    config = tf.AutoConfig.from_pretrained(path)
    if kind == "auto":
        kind = "monot5" if getattr(config, "is_encoder_decoder", False) else "cross_encoder"
    torch.manual_seed(seed)
    overrides = attention_dropout_overrides(config, attention_dropout)
    tok = tf.AutoTokenizer.from_pretrained(path)
    if kind == "cross_encoder":
        # the new head is reported "MISSING" by transformers' load report: expected here, not a problem
        verbosity = tf.logging.get_verbosity()
        tf.logging.set_verbosity_error()
        try:
            net = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **overrides)
        finally:
            tf.logging.set_verbosity(verbosity)
        net.config.id2label, net.config.label2id = {0: "relevant"}, {"relevant": 0}
        if lora_rank:
            net = _with_lora(net, lora_rank, model)
    else:
        if lora_rank:
            raise ConfigError("train-reranker: --lora-rank applies to cross-encoders; monoT5 trains in full.")
        if not getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"train-reranker: --kind monot5 needs an encoder-decoder (T5) checkpoint; "
                              f"{model!r} is {config.model_type!r}.")
        net = tf.AutoModelForSeq2SeqLM.from_pretrained(path, **overrides)
        true_id = single_token_id(tok, "true", "true_token", "train-reranker")
        false_id = single_token_id(tok, "false", "false_token", "train-reranker")
        start = net.config.decoder_start_token_id if net.config.decoder_start_token_id is not None else tok.pad_token_id

    # -- data --------------------------------------------------------------------------------------
    ds = D.load(dataset, data_dir)
    train_q, held_q = D.split_qids(ds, holdout_every)
    qids = train_q if split == "train" else train_q + held_q
    if max_queries is not None:
        qids = qids[:max_queries]
    if not qids:
        raise DataError(f"dataset {ds.name!r}: no judged queries to train on (split={split!r}).")
    tq = D.mine_negatives(ds, qids, depth=neg_depth)
    texts = {d.doc_id: d.text for d in ds.corpus}
    qtext = {q.qid: q.text for q in tq}

    def encode(rows: list[tuple[str, str, int]]) -> list[tuple]:
        qs, ps = [qtext[r[0]] for r in rows], [texts[r[1]] for r in rows]
        if kind == "cross_encoder":
            return _encode_bert(tok, qs, ps, max_length, query_max_tokens)
        enc, _ = encode_template(tok, lambda q, d: MONOT5_TEMPLATE.format(query=q, document=d),
                                 qs, [(p,) for p in ps], max_length, query_max_tokens)
        return [(e["input_ids"], None) for e in enc]

    epochs_data = []
    for e in range(epochs):
        ex = D.epoch_examples(tq, negatives, seed, e)
        enc = encode(ex)
        batches = D.length_batches([len(x[0]) for x in enc], batch_size, seed * 7919 + e)
        epochs_data.append((ex, enc, batches))
    total = sum(len(b) for _, _, b in epochs_data)

    # -- optimiser, schedule, resume -----------------------------------------------------------------
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")
    heads = head_parameter_names(net) if kind == "cross_encoder" and head_lr else set()
    if lora_rank and head_lr:   # under peft the head's copies are named ...classifier.modules_to_save...
        heads = {n for n, _ in net.named_parameters() if ".classifier." in n or ".pooler." in n}
    groups = []
    for is_head in (False, True):
        for decay in (True, False):
            ps = [p for n, p in net.named_parameters()
                  if p.requires_grad and (n in heads) == is_head and (not any(k in n for k in no_decay)) == decay]
            if ps:
                groups.append({"params": ps, "weight_decay": weight_decay if decay else 0.0,
                               "lr": head_lr if is_head else lr})
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = tf.get_linear_schedule_with_warmup(opt, int(math.ceil(warmup * total)), total)
    ck = out / CKPT
    step, losses = 0, []
    run_info = {"model": model, "resolved": path, "kind": kind, "dataset": ds.name, "split": split,
                "holdout_every": holdout_every, "queries": len(tq), "negatives": negatives, "neg_depth": neg_depth,
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr if heads else None,
                "max_length": max_length, "attention_dropout": attention_dropout,
                "query_max_tokens": query_max_tokens, "seed": seed, "total_steps": total, "lora_rank": lora_rank}
    prior_seconds = 0.0
    if resume and (ck / "state.json").exists():
        st = json.loads((ck / "state.json").read_text(encoding="utf-8"))
        differ = {k: (st["run"].get(k), v) for k, v in run_info.items() if k != "resolved" and st["run"].get(k) != v}
        if differ:
            raise ConfigError(f"train-reranker: {ck} holds a run with other settings {differ} (stored, given). "
                              f"Use the same settings, pass --no-resume, or another --output.")
        net.load_state_dict(torch.load(ck / "model.pt", weights_only=True))
        opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
        sched.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(ck / "rng.pt", weights_only=True)["torch"])
        step, losses, prior_seconds = st["step"], st["losses"], st.get("seconds", 0.0)
    log = open(out / "train_log.jsonl", "a" if step else "w", encoding="utf-8")

    from tqdm.auto import tqdm
    import sys

    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, initial=step, disable=not show, desc=f"train {kind}", unit="step")
    bce = torch.nn.BCEWithLogitsLoss()
    net.train()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def state() -> dict:
        return {"run": run_info, "step": step, "losses": losses,
                "seconds": prior_seconds + time.perf_counter() - t0}

    stopped = False
    g = 0
    for ex, enc, batches in epochs_data:
        for b in batches:
            g += 1
            if g <= step:
                continue
            n = max(len(enc[i][0]) for i in b)
            ids = torch.full((len(b), n), pad, dtype=torch.long)
            mask = torch.zeros((len(b), n), dtype=torch.long)
            tt = torch.zeros((len(b), n), dtype=torch.long) if enc[b[0]][1] is not None else None
            for r, i in enumerate(b):
                m = len(enc[i][0])
                ids[r, :m] = torch.tensor(enc[i][0])
                mask[r, :m] = 1
                if tt is not None:
                    tt[r, :m] = torch.tensor(enc[i][1])
            y = torch.tensor([float(ex[i][2]) for i in b])
            if kind == "cross_encoder":
                kw = {"input_ids": ids, "attention_mask": mask}
                if tt is not None:
                    kw["token_type_ids"] = tt
                loss = bce(net(**kw).logits[:, 0], y)
            else:
                dec = torch.full((len(b), 1), start, dtype=torch.long)
                logits = net(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, 0, :]
                target = torch.where(y > 0.5, torch.tensor(true_id), torch.tensor(false_id))
                loss = torch.nn.functional.cross_entropy(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            lv = float(loss.detach())
            losses.append(lv)
            log.write(json.dumps({"step": step, "loss": lv, "lr": sched.get_last_lr()[0],
                                  "seconds": round(prior_seconds + time.perf_counter() - t0, 3)}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if step % save_every == 0:
                log.flush()
                _save_checkpoint(ck, net, opt, sched, state())
            if max_steps is not None and step >= max_steps and step < total:
                stopped = True
                break
        if stopped:
            break
    bar.close()
    log.close()
    summary = {**run_info, "step": step, "finished": not stopped, "output": str(out),
               "seconds": round(prior_seconds + time.perf_counter() - t0, 2),
               "final_loss_avg50": (sum(losses[-50:]) / len(losses[-50:])) if losses else None,
               "train_qids": len(qids), "heldout_qids": len(held_q)}
    if stopped:
        _save_checkpoint(ck, net, opt, sched, state())
        return summary
    net.eval()
    for f in overrides:  # the saved config keeps the checkpoint's own value (it only matters in training)
        setattr(net.config, f, getattr(config, f))
    net.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "ragkit_train.json").write_text(json.dumps({**summary, "losses": losses}, indent=1), encoding="utf-8")
    if ck.exists():
        shutil.rmtree(ck)
    return summary


# -- CLI ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--output", "-o", required=True, help="folder for the trained checkpoint")
    p.add_argument("--dataset", default="squad", help="built-in dataset name (squad, ...) or generic folder")
    p.add_argument("--data-dir", default=None, help="folder holding the shared datasets (else RAGKIT_DATA / auto)")
    p.add_argument("--model", default="minilm", help="starting checkpoint: short name, folder or hub id")
    p.add_argument("--kind", default="auto", choices=["auto", "cross_encoder", "monot5"])
    p.add_argument("--split", default="train", choices=["train", "all"],
                   help="train: skip held-out query groups (every --holdout-every-th article); all: use all")
    p.add_argument("--holdout-every", type=int, default=6)
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--negatives", type=int, default=3, help="BM25 hard negatives per query per epoch")
    p.add_argument("--neg-depth", type=int, default=20, help="sample negatives from BM25 top-N")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the pretrained encoder")
    p.add_argument("--head-lr", type=float, default=2e-3,
                   help="learning rate of the new scoring head (classifier + pooler; cross-encoders only; 0 = --lr)")
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.0,
                   help="dropout on attention probabilities while training (default 0: keeps CPU attention fused, "
                        "~1.7x faster steps); -1 keeps the checkpoint's own")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="0: fine-tune every weight; r > 0: train a rank-r LoRA adapter + the head only (needs peft; "
                        "saves a few MB)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--query-max-tokens", type=int, default=64)
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (resumable)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(args: argparse.Namespace) -> int:
    kw = {k: getattr(args, k) for k in ("dataset", "model", "kind", "split", "holdout_every", "max_queries", "negatives",
                                        "neg_depth", "epochs", "batch_size", "lr", "head_lr", "warmup", "max_length",
                                        "query_max_tokens", "save_every", "resume", "max_steps", "seed", "progress",
                                        "data_dir", "threads", "attention_dropout", "lora_rank")}
    if kw["attention_dropout"] is not None and kw["attention_dropout"] < 0:
        kw["attention_dropout"] = None
    summary = train_reranker(args.output, **kw)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # python -m ragkit.rerankers.train ...
    raise SystemExit(main(add_arguments(argparse.ArgumentParser("ragkit train-reranker")).parse_args()))
