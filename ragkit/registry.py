"""The stage registry: keys ``<role>.<method>`` -> stage classes.

Built-in stages are registered by importing their (light) modules on first lookup;
third-party stages register through the entry-point group ``ragkit.stages``
(``name = "package.module:Class"``; the class carries its key in ``@register``).
"""
from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Callable, TypeVar

from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from .stage import Stage

ENTRY_POINT_GROUP = "ragkit.stages"

# modules that define the built-in stages; importing them must stay cheap
BUILTIN_MODULES = (
    "ragkit.stages_core",
    "ragkit.testing",
    "ragkit.indexers.chunkers",
    "ragkit.indexers.bm25",
    "ragkit.indexers.dense",
    "ragkit.indexers.mha",
    "ragkit.indexers.kv",
    "ragkit.indexers.graph",
    "ragkit.retrievers.bm25",
    "ragkit.retrievers.dense",
    "ragkit.retrievers.mha",
    "ragkit.retrievers.lightrag",
    "ragkit.retrievers.pathrag",
    "ragkit.retrievers.ppr",
    "ragkit.retrievers.fusion",
    "ragkit.retrievers.langchain",
    "ragkit.rerankers.cross_encoder",
    "ragkit.rerankers.monot5",
    "ragkit.rerankers.duot5",
    "ragkit.rerankers.llm",
    "ragkit.rerankers.attention",
    "ragkit.generators.extractive",
    "ragkit.generators.hf",
    "ragkit.generators.langchain",
)

_REGISTRY: dict[str, type] = {}
_loaded = False
_lock = threading.RLock()

S = TypeVar("S", bound=type)


def register(key: str) -> Callable[[S], S]:
    """Class decorator: register a stage class under ``key`` (``<role>.<method>``)."""
    role, _, method = key.partition(".")
    if not role or not method:
        raise ValueError(f"stage key {key!r} must look like '<role>.<method>'")

    def deco(cls: S) -> S:
        other = _REGISTRY.get(key)
        if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"stage key {key!r} already registered by {other.__module__}.{other.__qualname__}")
        cls.key = key  # type: ignore[attr-defined]
        _REGISTRY[key] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for mod in BUILTIN_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as exc:  # a family not present in this build
                if exc.name != mod:
                    raise
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must not break ragkit
                    import warnings

                    warnings.warn(f"ragkit plugin {ep.name!r} ({ep.value}) failed to load: {exc}")
        except Exception:  # pragma: no cover - importlib.metadata problems
            pass
        _loaded = True


def keys() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(key: str) -> type["Stage"]:
    """Look a stage class up by key; unknown keys raise a ConfigError with the choices."""
    _load_all()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ConfigError(
            f"unknown stage '{key}'.{did_you_mean(key, _REGISTRY)} Valid: {', '.join(sorted(_REGISTRY))}"
        ) from None


def all_stages() -> dict[str, type["Stage"]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))
