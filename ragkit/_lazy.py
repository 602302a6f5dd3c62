"""Lazy attribute exports for packages, so that importing a family imports no stage module."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` resolving ``names[attr]`` (a submodule) on first access."""

    def __getattr__(attr: str) -> Any:
        mod = names.get(attr)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(f"{package}.{mod}"), attr)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
