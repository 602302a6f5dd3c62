"""LoRA adapters for causal LMs: resolution (offline), base-model check, merge at load.

An adapter folder (written by ``ragkit train-generator``) holds

- ``adapter_config.json`` + ``adapter_model.safetensors``: a peft LoRA adapter;
- ``ragkit_adapter.json``: what it was trained on -- the base model's name, its hub id, the
  :func:`ragkit.model_identity.weights_identity` of the base weights and its architecture
  (``model_type``, hidden size, layers), and the training run's settings.

``generator.hf`` takes ``adapter:`` as a folder (relative to the pipeline file) or a short name that
resolves, offline, to an adapter shipped with ragkit in ``ragkit/generators/adapters/<name>/``
(:func:`shipped_adapters`). :func:`apply_adapter` refuses an adapter whose base weights differ from the
model it is applied to (a ConfigError naming both), then merges the LoRA update into the weights
(``W + B A * alpha / r``, :func:`merge_lora`, without peft), so inference runs the plain model at
unchanged speed. The merged model's
:class:`ragkit.models.ResolvedModel` carries the adapter's identity, so every cache keyed by the model
(passage KV above all) keys on the tuned weights and never serves the base model's states to it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelNotFoundError

META_FILE = "ragkit_adapter.json"


def adapters_root() -> Path:
    """The folder of the adapters shipped with ragkit (``ragkit/generators/adapters``)."""
    import importlib.util

    spec = importlib.util.find_spec("ragkit.generators")
    if spec is None or not spec.submodule_search_locations:   # pragma: no cover - broken install
        return Path(__file__).resolve().parents[1] / "generators" / "adapters"
    return Path(list(spec.submodule_search_locations)[0]) / "adapters"


def shipped_adapters() -> dict[str, Path]:
    """Short name -> folder of every adapter shipped with ragkit."""
    root = adapters_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / META_FILE).exists()}


def resolve_adapter(spec: str, base_dir: str | Path | None = None) -> Path:
    """A shipped short name or an adapter folder (relative to ``base_dir`` when given) -> its folder."""
    s = str(spec).strip()
    shipped = shipped_adapters()
    if s in shipped:
        return shipped[s]
    p = Path(s).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.is_dir():
        if not (p / "adapter_config.json").exists():
            raise ModelNotFoundError(f"adapter '{spec}': {p} holds no adapter_config.json (not a LoRA adapter "
                                     f"folder). Give a folder written by `ragkit train-generator` or a shipped "
                                     f"adapter: {', '.join(shipped) or 'none installed'}.")
        return p.resolve()
    raise ModelNotFoundError(f"adapter '{spec}' does not resolve offline: not a shipped adapter "
                             f"({', '.join(shipped) or 'none installed'}) and not an existing folder.")


def read_meta(folder: Path) -> dict:
    f = folder / META_FILE
    if not f.exists():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{f}: unreadable adapter description ({exc}).") from None
    return data if isinstance(data, dict) else {}


def base_description(model: Any, resolved: Any, name: str) -> dict:
    """What an adapter records about its base model (see the module docstring)."""
    from .model_identity import weights_identity

    cfg = model.config
    return {"base_model": name, "base_id": resolved.id,
            "base_weights": weights_identity(resolved.path) if resolved.path is not None else "",
            "base_arch": {"model_type": getattr(cfg, "model_type", ""), "hidden_size": getattr(cfg, "hidden_size", 0),
                          "num_hidden_layers": getattr(cfg, "num_hidden_layers", 0),
                          "vocab_size": getattr(cfg, "vocab_size", 0)}}


def check_base(folder: Path, meta: dict, model: Any, resolved: Any, name: str) -> None:
    """ConfigError unless the adapter in ``folder`` was trained on exactly these base weights."""
    if not meta.get("base_weights"):
        raise ConfigError(f"adapter {folder}: {META_FILE} is missing or names no base weights, so ragkit cannot "
                          f"check that it belongs to model '{name}'. Use an adapter written by `ragkit "
                          f"train-generator`.")
    have = base_description(model, resolved, name)
    if have["base_weights"] != meta["base_weights"]:
        arch, want = have["base_arch"], meta.get("base_arch", {})
        differ = ", ".join(f"{k} {want.get(k)} vs {arch.get(k)}" for k in arch if want.get(k) != arch.get(k))
        raise ConfigError(f"adapter {folder} was trained for base model '{meta.get('base_model')}' "
                          f"({meta.get('base_id')}, weights {meta['base_weights']}), but model '{name}' "
                          f"({resolved.id}) has other weights ({have['base_weights']}"
                          f"{'; ' + differ if differ else ''}). Use model: {meta.get('base_model')}, or train an "
                          f"adapter for this model: ragkit train-generator --model {name} -o <folder>.")


def apply_adapter(model: Any, resolved: Any, spec: str, *, base_dir: str | Path | None = None,
                  base_name: str = "") -> tuple[Any, str]:
    """Check the adapter ``spec`` against ``model`` and merge it; returns (merged model, adapter identity)."""
    from .model_identity import model_identity

    folder = resolve_adapter(spec, base_dir)
    meta = read_meta(folder)
    check_base(folder, meta, model, resolved, base_name or resolved.name)
    merge_lora(model, folder)
    return model, model_identity(folder)


def merge_lora(model: Any, folder: Path) -> int:
    """Merge the peft LoRA adapter in ``folder`` into ``model``'s linear weights in place:
    ``W += B @ A * scale`` with ``scale = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), per target layer,
    computed in float32 and cast to the weight's dtype. No peft needed at inference (the tests check the
    result against peft's own ``merge_and_unload``). Returns the number of layers merged; variants that
    are not a plain low-rank update (DoRA, biases, fan-in/fan-out layouts) are refused."""
    from ._deps import require

    torch = require("torch", "loading a LoRA adapter")
    from safetensors.torch import load_file

    try:
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"adapter {folder}: unreadable adapter_config.json ({exc}).") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"adapter {folder}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters are supported.")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise ConfigError(f"adapter {folder}: {flag} is set; only plain LoRA updates can be merged.")
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise ConfigError(f"adapter {folder}: trains biases or whole modules; only plain LoRA updates can be merged.")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    patt_r, patt_a = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    if patt_r or patt_a:
        raise ConfigError(f"adapter {folder}: per-layer rank/alpha patterns are not supported.")
    scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
    f = folder / "adapter_model.safetensors"
    if not f.exists():
        raise ConfigError(f"adapter {folder}: adapter_model.safetensors is missing.")
    sd = load_file(str(f))
    modules = dict(model.named_modules())
    pairs: dict[str, dict[str, Any]] = {}
    for k, v in sd.items():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}."
            if tag in k:
                path = k.split(tag)[0]
                path = path.removeprefix("base_model.model.")
                pairs.setdefault(path, {})[part] = v
                break
        else:
            raise ConfigError(f"adapter {folder}: unexpected tensor {k!r} (not a LoRA A/B matrix).")
    n = 0
    with torch.no_grad():
        for path, ab in sorted(pairs.items()):
            mod = modules.get(path)
            if mod is None or not hasattr(mod, "weight") or set(ab) != {"lora_A", "lora_B"}:
                raise ConfigError(f"adapter {folder}: layer {path!r} is not a linear layer of this model.")
            W = mod.weight
            delta = ab["lora_B"].to(W.device, torch.float32) @ ab["lora_A"].to(W.device, torch.float32)
            if delta.shape != W.shape:
                raise ConfigError(f"adapter {folder}: layer {path!r} update has shape {tuple(delta.shape)}, the "
                                  f"model's weight {tuple(W.shape)}.")
            W.copy_((W.float() + delta * scale).to(W.dtype))
            n += 1
    return n


__all__ = ["adapters_root", "shipped_adapters", "resolve_adapter", "read_meta", "base_description", "check_base",
           "apply_adapter", "merge_lora", "META_FILE"]
