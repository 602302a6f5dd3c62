"""Fine-tune a causal LM for RAG (``ragkit train-generator``), with the Block-Attention recipe.

Examples (:mod:`ragkit.generators._train_data`): a question, ``k`` passages (the gold one and BM25 hard
negatives from ragkit's own BM25, the gold one at a seeded random position), and the target
``"<answer> [n]"`` plus the end-of-turn token. The prompt is built by ``generator.hf``'s own code
(:meth:`ragkit.generators.hf.HFGenerator.prompt_segments` of a generator with the same prompt
parameters), so training and serving see the same tokens. The loss is the cross-entropy of the target
tokens only.

Block-Attention (Sun et al., 2024): a share ``block_ratio`` of the examples (seeded per example) is
trained under the block pattern that ``kv_reuse: plain`` serves -- every passage (and every passage
number ``[i]``) attends to the shared prefix and to itself only, at the positions its cached KV is
computed at, its keys re-rotated to their place, and the final block (question + answer) attends to
everything (:func:`ragkit.generators._block.block_forward`); the rest with ordinary full attention, as
the paper mixes both. Only model families that passage-KV reuse serves can be trained with blocks
(:func:`ragkit.kv.check_supported`); others need ``--block-ratio 0``.

LoRA through peft by default (rank, alpha, target modules configurable; the output folder is then a
few-MB adapter that ``generator.hf`` takes as ``adapter:``), or ``--full`` fine-tuning (the output
folder is then a model folder for ``model:``). Training state (trainable weights, optimizer, schedule,
RNG states, step, losses) is saved every ``save_every`` steps to ``<output>/checkpoint`` through
:func:`ragkit.artifacts.atomic_folder` (a crash never leaves a half checkpoint; files are checksummed
and verified on resume); running the same command again resumes from it and gives the same weights as
an uninterrupted run; a run with other settings is refused. ``<output>/train_log.jsonl`` has the loss
of every step and ``<output>/loss.png`` the curve; ``<output>/ragkit_train.json`` the settings, the
data split (train / dev / held-out question ids; held-out ids are never trained on), timings and peak
memory.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ragkit._deps import require
from ragkit.errors import ConfigError, DataError

from . import _train_data as D

CKPT = "checkpoint"
CKPT_STAGE = "train-generator.checkpoint"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_DATASETS = ("squad", "nq-open")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``resource.getrusage`` maxrss, KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1 << 20) if sys.platform == "darwin" else r / 1024, 1)


def encode_example(gen: Any, tok: Any, prefix: list[int], ex: D.RAGExample, eos: int) -> dict:
    """Token ids of an example: the prompt segments exactly as ``gen`` builds them, and the target."""
    from ragkit.kv.prompt import tokenize

    seg = gen.prompt_segments(tok, ex.question, [(t, ti) for _, t, ti in ex.passages], prefix=prefix)
    return {"prefix": seg.prefix, "glues": seg.glues, "blocks": seg.blocks, "final": seg.final,
            "answer": tokenize(tok, ex.target) + [eos]}


def example_loss(model: Any, enc: dict, block: bool) -> Any:
    """Mean cross-entropy of the answer tokens under the block pattern or full attention."""
    torch = require("torch")
    from ._block import block_forward

    ans = enc["answer"]
    if block:
        logits = block_forward(model, enc["prefix"], enc["glues"], enc["blocks"], enc["final"], ans)
        rows = logits[0, len(enc["final"]) - 1: len(enc["final"]) - 1 + len(ans)]
    else:
        ids = list(enc["prefix"])
        for g, b in zip(enc["glues"], enc["blocks"]):
            ids += list(g) + list(b)
        ids += list(enc["final"]) + ans
        dev = next(model.parameters()).device
        logits = model(input_ids=torch.tensor([ids], device=dev), use_cache=False,
                       logits_to_keep=len(ans) + 1).logits
        rows = logits[0, :len(ans)]
    target = torch.tensor(ans, device=rows.device)
    return torch.nn.functional.cross_entropy(rows.float(), target)


def _save_checkpoint(folder: Path, net: Any, opt: Any, sched: Any, state: dict) -> None:
    """Write the training state into a temporary folder and swap it in atomically (checksummed)."""
    torch = require("torch")
    from ragkit.artifacts import atomic_folder, write_params

    with atomic_folder(folder, CKPT_STAGE) as tmp:
        torch.save({n: p.detach().cpu() for n, p in net.named_parameters() if p.requires_grad}, tmp / "trainable.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        write_params(tmp, {"stage": CKPT_STAGE, "step": state["step"]})


def _load_checkpoint(folder: Path, net: Any, opt: Any, sched: Any, run_info: dict) -> dict:
    torch = require("torch")
    from ragkit.artifacts import read_params

    read_params(folder, expect_key=CKPT_STAGE, verify="full")   # sizes + checksums of every file
    st = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    differ = {k: (st["run"].get(k), v) for k, v in run_info.items() if st["run"].get(k) != v}
    if differ:
        shown = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ConfigError(f"train-generator: {folder} holds a run with other settings ({shown}). Run the same "
                          f"command to resume it, pass --no-resume to start over in this folder, or choose another "
                          f"--output.")
    params = dict(net.named_parameters())
    for n, t in torch.load(folder / "trainable.pt", weights_only=True).items():
        params[n].data.copy_(t)
    opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
    return st


def plot_losses(losses: Sequence[float], path: Path, title: str = "") -> Path | None:
    """Loss per step and its 25-step moving average as a PNG (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import os

    from ragkit.artifacts import temp_file

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = list(range(1, len(losses) + 1))
    ax.plot(xs, losses, lw=0.6, alpha=0.5, label="loss per step")
    w = 25
    if len(losses) >= w:
        avg = [sum(losses[i - w:i]) / w for i in range(w, len(losses) + 1)]
        ax.plot(xs[w - 1:], avg, lw=1.6, label=f"{w}-step mean")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_title(title or "ragkit train-generator")
    ax.legend()
    fig.tight_layout()
    fd, tmp = temp_file(path.parent, ".loss.", ".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _save_adapter(net: Any, out: Path, meta: dict) -> None:
    """adapter_config.json + adapter_model.safetensors (float16) + ragkit_adapter.json, each written atomically."""
    import os

    torch = require("torch")
    peft = require("peft")
    from safetensors.torch import save_file

    from ragkit.artifacts import atomic_write_text, temp_file

    sd = peft.get_peft_model_state_dict(net, save_embedding_layers=False)   # LoRA on projections only; no hub probe
    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in sd.items()}
    fd, tmp = temp_file(out, ".adapter.", ".safetensors")
    os.close(fd)
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, out / "adapter_model.safetensors")
    cfg = net.peft_config["default"].to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    atomic_write_text(out / "adapter_config.json", json.dumps(cfg, indent=1, sort_keys=True, default=str))
    atomic_write_text(out / "ragkit_adapter.json", json.dumps(meta, indent=1, sort_keys=True))


def train_generator(output: str, *, datasets: Sequence[str] = DEFAULT_DATASETS, model: str = "smollm2-135m-instruct",
                    examples: int = 320, passages: str = "3-5", max_passage_tokens: int = 100, neg_depth: int = 10,
                    block_ratio: float = 0.5, lora_rank: int = 8, lora_alpha: int = 16,
                    lora_targets: Sequence[str] = LORA_TARGETS, full: bool = False, epochs: int = 1,
                    batch_size: int = 4, lr: float = 3e-4, warmup: float = 0.05, weight_decay: float = 0.0,
                    holdout_every: int = 3, dev_examples: int = 24, save_every: int = 20, resume: bool = True,
                    seed: int = 13, max_steps: int | None = None, progress: bool | None = None,
                    data_dir: str | None = None, threads: int | None = None, device: str = "auto",
                    system_prompt: str = "", instruction: str = "", chat_template: bool = True) -> dict:
    """Fine-tune ``model`` on RAG examples; returns a summary dict (see the module docstring).

    ``examples``: training examples in all, shared evenly between ``datasets``; ``passages``: passages per
    prompt (``"3-5"``: uniform in the range); ``max_passage_tokens``, ``system_prompt``, ``instruction``,
    ``chat_template``: the prompt, as the ``generator.hf`` parameters of the same names (serve with the
    same values). ``holdout_every``: every n-th question group of each dataset is held out (never trained
    on; ids recorded). ``max_steps`` stops early with a checkpoint (the same call resumes).
    """
    torch = require("torch", "generator training", extra="llm")
    tf = require("transformers", "generator training", extra="llm")
    from ragkit.kv import check_supported
    from ragkit.models import load_causal_lm, pick_device

    from .hf import HFGenerator

    if not 0.0 <= block_ratio <= 1.0:
        raise ConfigError(f"train-generator: block_ratio must be in [0, 1], got {block_ratio}")
    for name, v, lo in (("examples", examples, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                        ("save_every", save_every, 1), ("neg_depth", neg_depth, 1), ("holdout_every", holdout_every, 2),
                        ("max_passage_tokens", max_passage_tokens, 0), ("dev_examples", dev_examples, 0)):
        if v < lo:
            raise ConfigError(f"train-generator: {name} must be >= {lo}, got {v}")
    if not full and lora_rank < 1:
        raise ConfigError(f"train-generator: lora_rank must be >= 1 (or pass --full), got {lora_rank}")
    if not datasets:
        raise ConfigError("train-generator: give at least one dataset (--dataset squad,nq-open)")
    k_range = D.parse_range(passages, "passages")
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device, "train-generator")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # -- model and prompt ------------------------------------------------------------------------------
    tok, net, res = load_causal_lm(model, dev, "float32", "sdpa", what="train-generator")
    if block_ratio > 0:
        try:
            check_supported(net)
        except ConfigError as exc:
            raise ConfigError(f"train-generator: the block recipe trains the pattern passage-KV reuse serves, and "
                              f"model '{model}' cannot be served by it: {exc} Train without blocks: --block-ratio 0.") from None
    gen = HFGenerator(model=model, max_passage_tokens=max_passage_tokens, system_prompt=system_prompt,
                      instruction=instruction, chat_template=chat_template)
    from ragkit.kv.prompt import prefix_ids

    prefix = prefix_ids(tok, gen.prompt_template())
    eos = tok.eos_token_id
    if eos is None:
        raise ConfigError(f"train-generator: model '{model}' has no eos token; the answer needs an end marker.")

    # -- data --------------------------------------------------------------------------------------------
    per = [examples // len(datasets) + (1 if i < examples % len(datasets) else 0) for i in range(len(datasets))]
    train_ex: list[D.RAGExample] = []
    dev_ex: list[D.RAGExample] = []
    splits: dict[str, dict] = {}
    skipped = 0
    for i, (name, n) in enumerate(zip(datasets, per)):
        ds = D.load(name, data_dir)
        sp = D.split(ds, holdout_every, dev_every=5)
        held_docs = {d for q in sp["heldout"] for d, g in ds.qrels.get(q, {}).items() if g > 0}
        rng = random.Random(seed * 31 + i)
        want = rng.sample(sp["train"], min(len(sp["train"]), int(n * 1.3) + 8))   # some are skipped below

        def fits(ex: D.RAGExample) -> bool:
            gold = ex.passages[ex.gold_pos]
            seg = gen.prompt_segments(tok, ex.question, [(gold[1], gold[2])], prefix=prefix)
            return D.answer_in(ex.answer, tok.decode(seg.blocks[0]))

        got, sk = D.build_examples(ds, want, passages=k_range, depth=neg_depth, seed=seed + i, avoid_docs=held_docs,
                                   fits=fits)
        skipped += sk
        train_ex += got[:n]
        dv = rng.sample(sp["dev"], min(len(sp["dev"]), dev_examples + 8)) if dev_examples else []
        dgot, _ = D.build_examples(ds, dv, passages=k_range, depth=neg_depth, seed=seed + 100 + i, avoid_docs=held_docs,
                                   fits=fits)
        dev_ex += dgot[: max(0, dev_examples // len(datasets))]
        splits[ds.name] = {"train_qids": sorted(e.qid for e in got[:n]), "dev_qids": sorted(e.qid for e in dev_ex
                                                                                          if e.dataset == ds.name),
                           "heldout_qids": sp["heldout"], "excluded_demo_qids": len(sp["excluded"]),
                           "train_pool": len(sp["train"])}
    if not train_ex:
        raise DataError(f"train-generator: no training examples from {', '.join(datasets)} (every answer was cut from "
                        f"its passage?). Raise --max-passage-tokens or use another dataset.")
    random.Random(seed).shuffle(train_ex)
    enc = [encode_example(gen, tok, prefix, e, eos) for e in train_ex]
    blocks = [random.Random(seed * 7919 + j).random() < block_ratio for j in range(len(enc))]
    steps_per_epoch = math.ceil(len(enc) / batch_size)
    total = steps_per_epoch * epochs

    # -- trainable weights, optimiser, schedule, resume ------------------------------------------------
    torch.manual_seed(seed)
    if full:
        net.train()
        trainable = net
    else:
        from ragkit._hfcompat import peft_quiet

        peft = require("peft", "LoRA generator training", extra="lora")
        cfg = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                              target_modules=list(lora_targets))
        try:
            with peft_quiet():
                trainable = peft.get_peft_model(net, cfg)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ConfigError(f"train-generator: --lora-targets {','.join(lora_targets)}: {exc}. Linear layers of "
                              f"this model: {', '.join(names)}.") from None
        trainable.peft_config["default"].base_model_name_or_path = model
        trainable.train()
    fwd = trainable.get_base_model() if not full else trainable
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = tf.get_linear_schedule_with_warmup(opt, int(math.ceil(warmup * total)), total)
    run_info = {"model": model, "datasets": list(datasets), "examples": examples, "passages": passages,
                "max_passage_tokens": max_passage_tokens, "neg_depth": neg_depth, "block_ratio": block_ratio,
                "lora_rank": None if full else lora_rank, "lora_alpha": None if full else lora_alpha,
                "lora_targets": None if full else list(lora_targets), "full": full, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
                "holdout_every": holdout_every, "seed": seed, "system_prompt": system_prompt,
                "instruction": instruction, "chat_template": chat_template, "total_steps": total}
    ck = out / CKPT
    step, losses, prior = 0, [], 0.0
    if resume and ck.exists():
        st = _load_checkpoint(ck, trainable, opt, sched, run_info)
        step, losses, prior = st["step"], st["losses"], st.get("seconds", 0.0)
    log = open(out / "train_log.jsonl", "a" if step else "w", encoding="utf-8")

    from tqdm.auto import tqdm

    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, initial=step, disable=not show, desc="train-generator", unit="step")

    def state() -> dict:
        return {"run": run_info, "step": step, "losses": losses, "seconds": prior + time.perf_counter() - t0}

    stopped = False
    for g in range(step, total):
        e = g // steps_per_epoch
        order = list(range(len(enc)))
        random.Random(seed * 1_000_003 + e).shuffle(order)
        s = g % steps_per_epoch
        idx = order[s * batch_size:(s + 1) * batch_size]
        tot = 0.0
        for j in idx:
            loss = example_loss(fwd, enc[j], blocks[j]) / len(idx)
            loss.backward()
            tot += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(tot)
        log.write(json.dumps({"step": step, "loss": round(tot, 5), "lr": sched.get_last_lr()[0],
                              "block": sum(blocks[j] for j in idx), "examples": len(idx),
                              "seconds": round(prior + time.perf_counter() - t0, 2)}) + "\n")
        log.flush()
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if step % save_every == 0 and step < total:
            _save_checkpoint(ck, trainable, opt, sched, state())
        if max_steps is not None and step >= max_steps and step < total:
            stopped = True
            break
    bar.close()
    log.close()
    train_s = prior + time.perf_counter() - t0
    summary = {**run_info, "step": step, "finished": not stopped, "output": str(out), "seconds": round(train_s, 1),
               "train_examples": len(enc), "block_examples": int(sum(blocks)), "skipped_examples": skipped,
               "mean_prompt_tokens": round(sum(len(x["prefix"]) + sum(map(len, x["glues"])) + sum(map(len, x["blocks"]))
                                               + len(x["final"]) for x in enc) / len(enc), 1),
               "final_loss_avg20": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4) if losses else None,
               "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(), "device": dev}
    if stopped:
        _save_checkpoint(ck, trainable, opt, sched, state())
        plot_losses(losses, out / "loss.png")
        return summary
    # -- dev loss (both patterns), outputs -------------------------------------------------------------
    trainable.eval()
    if dev_ex:
        with torch.no_grad():
            denc = [encode_example(gen, tok, prefix, e, eos) for e in dev_ex]
            summary["dev_loss_full"] = round(sum(float(example_loss(fwd, x, False)) for x in denc) / len(denc), 4)
            if block_ratio > 0:
                summary["dev_loss_block"] = round(sum(float(example_loss(fwd, x, True)) for x in denc) / len(denc), 4)
    from ragkit.adapters import base_description
    from ragkit.artifacts import atomic_write_text

    record = {**summary, "splits": splits, "losses": losses}
    if full:
        net.save_pretrained(out)
        tok.save_pretrained(out)
    else:
        _save_adapter(trainable, out, {**base_description(net, res, model), "format": 1, "train": run_info,
                                       "heldout_qids": {k: v["heldout_qids"] for k, v in splits.items()}})
    atomic_write_text(out / "ragkit_train.json", json.dumps(record, indent=1))
    plot_losses(losses, out / "loss.png")
    if ck.exists():
        import shutil

        shutil.rmtree(ck)
    return summary


# -- CLI ------------------------------------------------------------------------------------------
EXAMPLES = """examples:
  ragkit train-generator -o my-adapter                        # the default recipe (SQuAD + NQ-open, LoRA; ~20 min on one CPU core)
  ragkit train-generator -o my-adapter --max-steps 20        # a short pilot; the same command resumes it
  ragkit train-generator -o tuned --device cuda --examples 4000 --passages 5-10 --max-passage-tokens 200
  ragkit train-generator -o tuned --block-ratio 0            # no Block-Attention examples (any causal LM)

then serve it:  generator.hf: {model: smollm2-135m-instruct, adapter: my-adapter, kv_reuse: plain}
"""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--output", "-o", required=True, help="folder for the adapter (or model with --full), log and plot")
    p.add_argument("--dataset", default=",".join(DEFAULT_DATASETS),
                   help="comma-separated datasets with answers and gold passages: built-in names (squad, nq-open) or "
                        "generic folders (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder holding the shared datasets (else RAGKIT_DATA / auto)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base causal LM: short name, folder or hub id")
    p.add_argument("--examples", type=int, default=320, help="training examples in all, shared between datasets")
    p.add_argument("--passages", default="3-5", help="passages per prompt: N or LOW-HIGH (gold + BM25 hard negatives)")
    p.add_argument("--max-passage-tokens", type=int, default=100,
                   help="cut passages to this many tokens (serve with the same generator.hf max_passage_tokens or more)")
    p.add_argument("--neg-depth", type=int, default=10, help="hard negatives are drawn from the BM25 top-N")
    p.add_argument("--block-ratio", type=float, default=0.5,
                   help="share of examples trained with the Block-Attention pattern of kv_reuse: plain (0 = none)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", default=",".join(LORA_TARGETS), help="comma-separated linear layer names")
    p.add_argument("--full", action="store_true", help="fine-tune every weight instead of a LoRA adapter")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="examples per optimizer step (gradient accumulation)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--holdout-every", type=int, default=3,
                   help="hold out every N-th question group of each dataset (never trained on; ids recorded)")
    p.add_argument("--dev-examples", type=int, default=24, help="dev examples for the final dev loss")
    p.add_argument("--save-every", type=int, default=20, help="checkpoint every N steps")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if a checkpoint exists")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (resumable)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--system-prompt", default="", help="as generator.hf system_prompt (empty = built-in)")
    p.add_argument("--instruction", default="", help="as generator.hf instruction (empty = built-in)")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(args: argparse.Namespace) -> int:
    kw = {k: getattr(args, k) for k in ("model", "examples", "passages", "max_passage_tokens", "neg_depth",
                                        "block_ratio", "lora_rank", "lora_alpha", "full", "epochs", "batch_size",
                                        "lr", "warmup", "weight_decay", "holdout_every", "dev_examples", "save_every",
                                        "resume", "max_steps", "seed", "progress", "data_dir", "threads", "device",
                                        "system_prompt", "instruction", "chat_template")}
    if getattr(args, "quiet", False):
        kw["progress"] = False
    kw["datasets"] = [d.strip() for d in args.dataset.split(",") if d.strip()]
    kw["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    summary = train_generator(args.output, **kw)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # python -m ragkit.generators.train ...
    raise SystemExit(main(add_arguments(argparse.ArgumentParser("ragkit train-generator")).parse_args()))
