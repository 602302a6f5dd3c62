"""monoBERT cross-encoder reranker (Nogueira & Cho, "Passage Re-ranking with BERT", 2019).

The input is ``[CLS] query [SEP] passage [SEP]`` (segment ids 0/1 where the model uses them); the
query keeps at most ``query_max_tokens`` tokens and the passage is cut so the pair fits
``max_length``. The score is the relevance logit of a one-output head, or log P(relevant) of a
two-class head (same order as P(relevant), without float saturation at 1.0).

Any sequence-classification checkpoint loads, by local folder or hub id (for instance
``cross-encoder/ms-marco-MiniLM-L-6-v2`` where a user has it, or a model trained with
``ragkit train-reranker``). A checkpoint without a classification head (an embedding model
such as all-MiniLM-L6-v2) is refused with a clear error instead of scoring with a random head.

Scoring uses transformers directly (faster here than sentence-transformers' CrossEncoder:
pairs are tokenized once, sorted by length and padded per batch; see benchmarks/bench_rerank.py),
under ``torch.inference_mode``, in bfloat16/float16 on GPU. ``backend: onnx`` / ``onnx-int8`` score with ONNX
Runtime on the CPU instead (the checkpoint exported once to ONNX, for ``onnx-int8`` with dynamic int8
quantization; see ``ragkit.indexers._onnx`` and ``benchmarks/results/onnx_rerank.md``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Sequence

from ragkit._deps import require
from ragkit._hfcompat import peft_quiet
from ragkit.errors import ConfigError, ModelNotFoundError
from ragkit.registry import register
from ragkit.stage import param

from ragkit.models import pick_device, pick_dtype

from ._base import RerankerBase, cut_many, load_error, score_sorted


def check_classifier_checkpoint(path: str, name: str, key: str = "reranker.cross_encoder") -> None:
    """Refuse a local checkpoint whose config names no sequence-classification architecture."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return
    data = json.loads(cfg.read_text(encoding="utf-8"))
    archs = data.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        st = " It is a sentence-transformers embedding model." if (Path(path) / "modules.json").exists() else ""
        raise ConfigError(
            f"'{key}': parameter 'model' is {name!r}, a checkpoint without a sequence-classification head "
            f"(architectures: {archs or 'none'}).{st} A cross-encoder needs a model trained to score "
            f"(query, passage) pairs: train one with `ragkit train-reranker --model {name} ...` and pass its "
            f"output folder, or give a *ForSequenceClassification checkpoint.")


@register("reranker.cross_encoder")
class CrossEncoderReranker(RerankerBase):
    """monoBERT: rescore (query, passage) pairs with a sequence-classification cross-encoder."""

    model: str = param(help="sequence-classification checkpoint: local folder or hub id")
    backend: Literal["torch", "onnx", "onnx-int8"] = param(
        "torch", help="runtime: torch, or ONNX Runtime on the CPU (onnx: float32; onnx-int8: dynamic int8 "
                      "quantization of the MatMul/Gemm weights); the model is exported once into the cache")

    def validate(self) -> None:
        super().validate()
        if self.backend != "torch" and self.device not in ("cpu", "auto"):
            raise ConfigError(f"'{self.key}': backend {self.backend!r} runs on the CPU (ONNX Runtime); parameter "
                              f"'device' is {self.device!r}. Use device: cpu or backend: torch.")

    def _setup(self) -> None:
        torch = require("torch", "cross-encoder reranking")
        tf = require("transformers", "cross-encoder reranking")
        adapter = self._adapter_folder()
        try:
            path = str(adapter) if adapter is not None else self._model_path()
        except ModelNotFoundError as exc:
            base = self._base_dir
            target = Path(self.model).expanduser()
            if not target.is_absolute() and base is not None:
                target = Path(os.path.relpath(Path(base) / target))
            raise ModelNotFoundError(
                f"'{self.key}': {exc} A cross-encoder checkpoint is made by one command, e.g. "
                f"`ragkit train-reranker --dataset squad --model minilm --output {target}` (about 20 min on a "
                f"2-core CPU; see pipelines/rerank.yaml).") from None
        if adapter is not None:
            tok, model, info = self._load_adapter(tf, path)
        else:
            check_classifier_checkpoint(path, self.model, self.key)
            try:
                tok = tf.AutoTokenizer.from_pretrained(path)
                model, info = tf.AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
            except (OSError, ValueError) as exc:
                raise load_error(self.model, exc) from exc
        missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
        if missing:
            raise ConfigError(f"'{self.key}': checkpoint {self.model!r} lacks trained weights for {sorted(missing)[:4]}; "
                              f"its classification head would be random. Give a trained cross-encoder checkpoint.")
        n = model.config.num_labels
        if n not in (1, 2):
            raise ConfigError(f"'{self.key}': checkpoint {self.model!r} has a {n}-class head; a relevance "
                              f"cross-encoder has 1 output (a logit) or 2 (not relevant, relevant).")
        self._onnx = None
        if self.backend != "torch":
            from ragkit.indexers._onnx import export, session, thread_count

            key_extra = ""
            if adapter is not None:  # a LoRA adapter merged into its base: the base's files are part of the model
                key_extra = str(json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
                                .get("base_model_name_or_path"))
            f = export(Path(path), self.backend == "onnx-int8", model=model.float(), key_extra=key_extra)
            self._onnx = session(f, thread_count())
            self._onnx_inputs = [i.name for i in self._onnx.get_inputs()]
            dev = "cpu"
        else:
            dev = pick_device(self.device)
            model = model.to(device=dev, dtype=pick_dtype(self.dtype, dev)).eval()
        self._tok, self._model, self._dev, self._torch = tok, model, dev, torch
        self._n_special = tok.num_special_tokens_to_add(pair=True)

    def _adapter_folder(self) -> Path | None:
        """The local folder of a LoRA checkpoint (it has ``adapter_config.json``, no ``config.json``)."""
        p = Path(self.model).expanduser()
        base = self._base_dir
        if not p.is_absolute() and base is not None:
            p = Path(base) / p
        return p if (p / "adapter_config.json").is_file() else None

    def _load_adapter(self, tf: Any, path: str) -> tuple[Any, Any, dict]:
        """A LoRA adapter + head (``ragkit train-reranker --lora-rank r``) over its base, merged."""
        peft = require("peft", "LoRA cross-encoder checkpoints", extra="lora")
        from ._base import resolve_model

        cfg = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = cfg.get("base_model_name_or_path") or ""
        if cfg.get("task_type") != "SEQ_CLS" or not base_name:
            raise ConfigError(f"'{self.key}': {path} holds a peft adapter that is not a sequence-classification "
                              f"adapter with a named base model (task_type {cfg.get('task_type')!r}).")
        saved = set((cfg.get("modules_to_save") or []))
        if "classifier" not in saved:
            raise ConfigError(f"'{self.key}': the adapter in {path} does not carry its classification head "
                              f"(modules_to_save {sorted(saved)}); its scores would come from a random head.")
        base = resolve_model(base_name, self._base_dir)
        try:
            tok = tf.AutoTokenizer.from_pretrained(path)
            verbosity = tf.logging.get_verbosity()
            tf.logging.set_verbosity_error()   # the base's head is reported missing: the adapter supplies it
            try:
                net = tf.AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
            finally:
                tf.logging.set_verbosity(verbosity)
            with peft_quiet():
                model = peft.PeftModel.from_pretrained(net, path).merge_and_unload()
        except (OSError, ValueError) as exc:
            raise load_error(self.model, exc) from exc
        return tok, model, {}

    def encode_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> tuple[list[dict], list[bool]]:
        """Tokenize pairs with the query cut to its budget and the passage to the rest."""
        tok = self._tok
        uq = sorted(set(queries))
        cut_q, _, _ = cut_many(tok, uq, self.query_max_tokens)
        qmap = dict(zip(uq, cut_q))
        qs = [qmap[q] for q in queries]
        enc = tok(qs, list(passages), truncation="only_second", max_length=self.max_length,
                  return_overflowing_tokens=False, return_length=False)
        rows, full = [], []
        for i in range(len(qs)):
            row = {"input_ids": enc["input_ids"][i]}
            if "token_type_ids" in enc:
                row["token_type_ids"] = enc["token_type_ids"][i]
            rows.append(row)
            if len(row["input_ids"]) >= self.max_length:
                full.append(i)
        # only a pair that fills the window can have had its passage cut: check those
        cut = [False] * len(qs)
        if full:
            p_lens = tok([passages[i] for i in full], add_special_tokens=False, return_length=True)["length"]
            q_lens = dict(zip(uq, tok(cut_q, add_special_tokens=False, return_length=True)["length"]))
            n_sp = self._n_special
            for i, n in zip(full, p_lens):
                cut[i] = q_lens[queries[i]] + n + n_sp > self.max_length
        return rows, cut

    def _forward(self, rows: list[dict]) -> list[float]:
        torch = self._torch
        tok, model, dev = self._tok, self._model, self._dev
        n = max(len(r["input_ids"]) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        tt = torch.zeros((len(rows), n), dtype=torch.long) if "token_type_ids" in rows[0] else None
        for i, r in enumerate(rows):
            m = len(r["input_ids"])
            ids[i, :m] = torch.tensor(r["input_ids"])
            mask[i, :m] = 1
            if tt is not None:
                tt[i, :m] = torch.tensor(r["token_type_ids"])
        kw: dict[str, Any] = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
        if tt is not None:
            kw["token_type_ids"] = tt.to(dev)
        if self._onnx is not None:
            feed = {n: kw[n].numpy() if n in kw else torch.zeros_like(ids).numpy() for n in self._onnx_inputs}
            logits = torch.from_numpy(self._onnx.run(None, feed)[0]).float()
        else:
            with torch.inference_mode():
                logits = model(**kw).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0].tolist()
        return torch.log_softmax(logits, dim=-1)[:, 1].tolist()

    def score_pairs(self, queries: Sequence[str], passages: Sequence[str],
                    sizes: Sequence[int] | None = None) -> tuple[list[float], list[bool]]:
        self.setup()
        rows, cut = self.encode_pairs(queries, passages)
        return score_sorted(rows, self.batch_size, self._forward), cut
