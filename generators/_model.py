"""Loading causal language models for the generators, offline.

Names resolve through :func:`ragkit.models.resolve_model` (short names such as
``smollm2-135m-instruct`` shipped in installed packages, local folders, hub ids already in the
local cache); a name that does not resolve raises :class:`ModelNotFoundError` saying how to get
the model -- there is no fallback to another model. GGUF checkpoints are dequantised once by
:func:`ragkit.models.materialize_gguf` and cached as safetensors under
``ragkit.artifacts.cache_dir()/models/`` so later loads take about a second.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit._deps import require
from ragkit.errors import ModelNotFoundError

@dataclass(frozen=True)
class ResolvedModel:
    name: str          # what the user gave
    path: str          # folder passed to from_pretrained (GGUF already dequantised to safetensors)
    model_id: str      # stable identifier (upstream hub id for short names)
    revision: str      # content hash of the weights folder + numeric library versions (ragkit.model_identity)


def _folder_revision(folder: Path) -> str:
    """Content identity of the weights folder (see :mod:`ragkit.model_identity`)."""
    from ragkit.model_identity import model_identity

    return model_identity(folder)


def resolve(name: str, base_dir: str | Path | None = None) -> ResolvedModel:
    """Resolve offline with :func:`ragkit.models.resolve_model`; GGUF is dequantised once and cached."""
    from ragkit.models import materialize_gguf, resolve_model

    res = resolve_model(name, base_dir=base_dir)
    if res.kind not in ("hf", "gguf"):
        raise ModelNotFoundError(f"model '{name}' resolves to a {res.kind!r} model, not a causal language "
                                 "model; give e.g. smollm2-135m-instruct, a transformers folder or a cached hub id.")
    folder = Path(materialize_gguf(res))
    if not (folder / "config.json").exists():
        raise ModelNotFoundError(f"model '{name}': {folder} holds no config.json (not a transformers causal LM folder).")
    return ResolvedModel(name, str(folder), res.id or name, _folder_revision(folder))


def pick_device(device: str) -> str:
    torch = require("torch", "generation", extra="llm")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ragkit.errors import ConfigError

        raise ConfigError(f"device '{device}' asked for but CUDA is not available; use device: cpu or auto")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    torch = require("torch", "generation", extra="llm")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto", attn: str = "auto",
                   base_dir: str | Path | None = None):
    """Load (tokenizer, model, ResolvedModel) in eval mode on the chosen device."""
    transformers = require("transformers", "generation", extra="llm")
    res = resolve(name, base_dir)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    impl = attn
    if impl == "auto":
        impl = "sdpa"
        if dev.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None and dt != require("torch").float32:
            impl = "flash_attention_2"
    tok = transformers.AutoTokenizer.from_pretrained(res.path)
    model = transformers.AutoModelForCausalLM.from_pretrained(res.path, dtype=dt, attn_implementation=impl)
    model.to(dev)
    model.eval()
    return tok, model, res
