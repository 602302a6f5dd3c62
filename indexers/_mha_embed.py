"""Multi-head attention embeddings for MRAG (Besta et al., "Multi-Head RAG", 2024).

For a chosen transformer layer, the embedding of a text is the input of that layer's attention
output projection (``o_proj`` in Llama-type decoders, ``attention.output.dense`` in BERT-type
encoders, ``out_proj``/``c_proj``/``dense`` elsewhere), i.e. the concatenated per-head attention
outputs ``softmax(QK^T/sqrt(d)) V`` before they are mixed. It is captured with a forward pre-hook,
taken at the last non-padding token (decoders) or mean-pooled over non-padding tokens (encoders),
and split into one ``head_dim`` vector per head. The forward pass stops right after the hook
fires, so later layers are not computed.

Head importance (paper, Sec. 3): a_i = mean L2 norm of head i's embeddings over the corpus,
b_i = mean pairwise cosine distance between head i's embeddings (on a random sample),
s_i = a_i * b_i.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragkit._deps import require
from ragkit.errors import ConfigError, ModelNotFoundError
from ragkit.model_identity import ModelCacheKey
from ragkit.models import ResolvedModel, materialize_gguf, pick_device, resolve_model

# <layer number>.<attention module>.<output projection>
PROJ_PATTERN = re.compile(
    r"(?:^|\.)(\d+)\.(?:self_attn|attention|attn|self_attention|mixer)\.(?:o_proj|out_proj|output\.dense|c_proj|dense|wo)$")
DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt", "olmo",
                 "smollm3", "granite", "falcon", "mixtral"}


class _Stop(Exception):
    """Raised by the hook to end the forward pass once the layer's activations are captured."""


def find_output_projections(model: Any) -> list[tuple[int, str, Any]]:
    """(layer number, module name, module) of every attention output projection, by layer."""
    out = []
    for name, mod in model.named_modules():
        m = PROJ_PATTERN.search(name)
        if m and hasattr(mod, "weight"):
            out.append((int(m.group(1)), name, mod))
    out.sort(key=lambda t: t[0])
    return out


def is_decoder_config(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    return bool(getattr(config, "is_decoder", False)) or getattr(config, "model_type", "") in DECODER_TYPES


def pool(acts: Any, mask: Any, how: str):
    """acts [B, T, W], mask [B, T] (1 = token) -> [B, W] (``last`` token or ``mean`` over tokens)."""
    import torch

    m = mask.to(acts.dtype)
    if how == "mean":
        return (acts * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).expand_as(mask)
    last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp_min(0)
    return acts[torch.arange(acts.shape[0], device=acts.device), last]


class MultiHeadEmbedder(ModelCacheKey):
    """Per-head attention embeddings of one layer of a transformers model."""

    def __init__(self, model: str = "minilm", *, layer: int = -1, pooling: str = "auto", device: str = "cpu",
                 batch_size: int = 16, max_length: int = 256, base_dir: str | Path | None = None,
                 standard: bool = False) -> None:
        self.resolved: ResolvedModel = resolve_model(model, base_dir=base_dir)
        if self.resolved.kind == "hash":
            raise ConfigError(f"model '{model}': MRAG needs a transformer with multi-head attention; the hash "
                              f"embedder has none. Use e.g. model: minilm.")
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.standard = standard
        torch = require("torch", "multi-head embeddings")
        transformers = require("transformers", "multi-head embeddings")
        pick_device(device, "multi-head embeddings")   # an unavailable GPU is a clear error
        folder = materialize_gguf(self.resolved)
        try:
            self.config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                                dtype=torch.float32).to(device).eval()
        except OSError as exc:
            raise ModelNotFoundError(f"model '{model}' ({folder}) cannot be loaded: {exc}") from None
        self.decoder = is_decoder_config(self.config)
        if pooling == "auto":
            pooling = "last" if self.decoder else "mean"
        if pooling not in ("last", "mean"):
            raise ConfigError(f"pooling {pooling!r}; valid: auto, last, mean.")
        self.pooling = pooling
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        # right padding: positions 0..n-1 for every text (left padding would shift RoPE positions)
        self.tokenizer.padding_side = "right"
        projs = find_output_projections(self.model)
        if not projs:
            raise ConfigError(f"model '{model}' ({type(self.model).__name__}): no attention output projection "
                              f"found (looked for modules named like '<n>.self_attn.o_proj' or "
                              f"'<n>.attention.output.dense'); MRAG cannot be applied to it.")
        n = len(projs)
        if not -n <= layer < n:
            raise ConfigError(f"parameter 'layer' is {layer}, but the model has {n} layers; valid: "
                              f"{-n}..{n - 1} (-1 = last).")
        self.layer = layer % n
        self.num_layers = n
        self.module_name, self.proj = projs[self.layer][1], projs[self.layer][2]
        self.num_heads = int(getattr(self.config, "num_attention_heads", 0) or getattr(self.config, "n_head", 0))
        width = getattr(self.proj, "in_features", None) or self.proj.weight.shape[-1]
        if not self.num_heads or width % self.num_heads:
            raise ConfigError(f"model '{model}': cannot split the {width}-wide attention output into "
                              f"{self.num_heads} heads.")
        self.head_dim = width // self.num_heads

    def _weights_folder(self):
        r = self.resolved
        return materialize_gguf(r) if r.kind != "hash" else None

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """float32 [N, heads, head_dim] (and, with ``standard=True``, the model's ordinary embedding [N, hidden])."""
        import torch

        texts = list(texts)
        H, d = self.num_heads, self.head_dim
        out = np.zeros((len(texts), H, d), dtype=np.float32)
        std = np.zeros((len(texts), int(self.config.hidden_size)), dtype=np.float32) if self.standard else None
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch
        captured: dict[str, Any] = {}

        def hook(module, args):
            captured["x"] = args[0]
            if not self.standard:
                raise _Stop

        handle = self.proj.register_forward_pre_hook(hook)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="mha-encode", unit="text")
        try:
            for start in range(0, len(texts), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    try:
                        res = self.model(**enc)
                    except _Stop:
                        res = None
                mask = enc["attention_mask"]
                pooled = pool(captured.pop("x").float(), mask, self.pooling)
                out[idx] = pooled.reshape(len(idx), H, d).cpu().numpy()
                if std is not None:
                    hs = res.last_hidden_state.float()
                    std[idx] = pool(hs, mask, self.pooling).cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
        finally:
            handle.remove()
            if bar is not None:
                bar.close()
        return (out, std) if self.standard else out


def head_importance(embs: np.ndarray, sample: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, s) per head for embeddings [N, heads, d] (paper: s_i = a_i * b_i).

    a_i: mean L2 norm of head i's embeddings; b_i: mean cosine distance over all pairs of a random
    sample of ``sample`` texts (all texts when N <= sample).
    """
    n, h, _ = embs.shape
    a = np.linalg.norm(embs, axis=2).mean(0).astype(np.float64)
    if n < 2:
        b = np.zeros(h)
    else:
        rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        x = embs[rows].astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
        m = len(rows)
        b = np.empty(h)
        for i in range(h):
            cos = x[:, i] @ x[:, i].T
            b[i] = 1.0 - (cos.sum() - np.trace(cos)) / (m * (m - 1))
    return a, b, a * b
