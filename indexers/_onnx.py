"""ONNX Runtime encoder backend for sentence-transformers BERT-style models, optionally int8-quantized.

sentence-transformers' own ONNX backend needs ``optimum``, whose releases pin transformers < 5 (it
cannot be installed beside ragkit's transformers 5 here), so ragkit does the same steps itself, offline,
from the installed model folder:

1. **export**: the folder's transformer (``AutoModel``) to ONNX with ``torch.onnx.export`` (inputs
   ``input_ids``, ``attention_mask``[, ``token_type_ids``], dynamic batch and sequence axes, output the
   last hidden state), once, into ``cache_dir()/onnx/<key>/`` keyed by the model folder's files and the
   export settings;
2. **quantize** (``onnx-int8``): ONNX Runtime's dynamic quantization (``quantize_dynamic``: int8 weights,
   activations quantized per batch at run time; MatMul/Gemm only, as ORT recommends for transformers);
3. **encode**: the folder's tokenizer (``max_seq_length`` from ``sentence_bert_config.json``), an ORT
   ``InferenceSession``, then the pooling the folder's ``1_Pooling/config.json`` names (mean or CLS) and
   L2 normalisation, as sentence-transformers computes them.

Speed and quality against the float32 PyTorch encoder are measured in ``benchmarks/bench_onnx.py``
(results in ``benchmarks/results/onnx_speed.md`` and ``onnx_quality*.md``). The cross-encoder reranker uses the
same export with its classification logits as the output (``reranker.cross_encoder`` ``backend:``;
``onnx_rerank.md``).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ragkit._deps import require
from ragkit.artifacts import atomic_folder, cache_dir
from ragkit.errors import ConfigError

BACKENDS = ("torch", "onnx", "onnx-int8")
OPSET = 17
_LOCK = threading.Lock()


def _folder_key(folder: Path, quantize: bool) -> str:
    h = hashlib.sha256(f"opset{OPSET}\x1fint8={quantize}\x1fv2".encode())
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}\x1f{st.st_size}\x1f{int(st.st_mtime)}\x1e".encode())
    return h.hexdigest()[:20]


def _pooling(folder: Path) -> str:
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.exists():
        return "mean"
    c = json.loads(cfg.read_text(encoding="utf-8"))
    if c.get("pooling_mode_mean_tokens"):
        return "mean"
    if c.get("pooling_mode_cls_token"):
        return "cls"
    modes = [k for k, v in c.items() if k.startswith("pooling_mode") and v]
    raise ConfigError(f"{cfg}: pooling {modes} is not supported by the onnx backend (mean or cls); use backend: torch.")


def export(folder: Path, quantize: bool, *, model: Any = None, key_extra: str = "") -> Path:
    """The exported (and quantized) ONNX file for a model folder, built once into the cache.

    Without ``model``: the folder's transformer (``AutoModel``), output its last hidden state (encoders).
    With ``model`` (a loaded ``*ForSequenceClassification``, e.g. the cross-encoder; ``key_extra`` names
    anything beyond the folder that made it, such as a LoRA adapter's base): output its logits."""
    task = "logits" if model is not None else "hidden"
    key = _folder_key(folder, quantize) if model is None and not key_extra else \
        hashlib.sha256(f"{_folder_key(folder, quantize)}\x1f{task}\x1f{key_extra}".encode()).hexdigest()[:20]
    out = cache_dir() / "onnx" / key
    model_file = out / ("model_int8.onnx" if quantize else "model.onnx")
    with _LOCK:
        if model_file.exists():
            return model_file
        require("onnxruntime", "the onnx backend")
        import torch

        if model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
        model = model.eval()
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if getattr(model.config, "type_vocab_size", 0) > 1
                                                   else [])
        dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)

        class _Wrap(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, *args: Any) -> Any:
                res = self.m(**dict(zip(names, args)))
                return res.logits if task == "logits" else res.last_hidden_state

        with atomic_folder(out) as tmp:
            raw = tmp / "model.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                # dynamo=False is the TorchScript exporter on purpose (no onnxscript dependency); torch
                # warns that it is legacy
                warnings.filterwarnings("ignore", message="You are using the legacy TorchScript", category=DeprecationWarning)
                torch.onnx.export(_Wrap(model), dummy, str(raw), input_names=names, output_names=["hidden"],
                                  dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names},
                                                "hidden": {0: "batch"} if task == "logits" else {0: "batch", 1: "seq"}},
                                  opset_version=OPSET, dynamo=False)
            if quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(raw), str(tmp / "model_int8.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
                raw.unlink()
            (tmp / "export.json").write_text(json.dumps({"source": str(folder), "opset": OPSET, "int8": quantize,
                                                         "inputs": names, "output": task}), encoding="utf-8")
        return model_file


def session(file: Path, threads: int = 0) -> Any:
    ort = require("onnxruntime", "the onnx backend")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


class OnnxEncoderModel:
    """``encode(texts, batch_size, normalize) -> float32 [N, dim]`` with ONNX Runtime."""

    def __init__(self, folder: Path, *, quantize: bool, max_length: int | None = None, threads: int = 0) -> None:
        ort = require("onnxruntime", "the onnx encoder backend")
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.file = export(self.folder, quantize)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        sb = self.folder / "sentence_bert_config.json"
        seq = json.loads(sb.read_text(encoding="utf-8")).get("max_seq_length") if sb.exists() else None
        self.max_length = max_length or seq or 512
        self.pooling = _pooling(self.folder)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.file), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        cfg = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        self.dim = int(cfg.get("hidden_size") or cfg.get("dim"))

    def encode(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # length-sorted batches (as sentence-transformers does) waste less compute on padding
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
            feed = {n: enc[n].astype(np.int64) for n in self.inputs}
            hidden = self.session.run(None, feed)[0]
            if self.pooling == "cls":
                vec = hidden[:, 0]
            else:
                m = enc["attention_mask"][..., None].astype(np.float32)
                vec = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            if normalize:
                vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
            out[idx] = vec
        return out


def thread_count() -> int:
    return int(os.environ.get("RAGKIT_ONNX_THREADS", "0"))
