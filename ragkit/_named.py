"""Python objects that a YAML pipeline refers to by name (LangChain chat models, vector stores).

Objects such as a configured chat model cannot be written in YAML, so the user registers them
from Python under a name and the YAML names them. :class:`NamedObjects` is that registry: thread-safe,
and its lookup error says what is registered and how to register more.
"""
from __future__ import annotations

import threading
from typing import Any

from ragkit.errors import ConfigError


class NamedObjects:
    def __init__(self, what: str, how: str) -> None:
        self.what = what      # "LangChain model"
        self.how = how        # "ragkit.generators.langchain.register_model(name, model)"
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, name: str, obj: Any) -> Any:
        with self._lock:
            self._objects[name] = obj
        return obj

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    def lookup(self, name: str, stage_key: str, param: str) -> Any:
        """The object registered as ``name``; a ConfigError naming the stage and parameter otherwise."""
        with self._lock:
            obj = self._objects.get(name)
        if obj is None:
            known = ", ".join(self.names()) or "none registered"
            raise ConfigError(f"'{stage_key}': parameter '{param}' is {name!r}, but no {self.what} is registered "
                              f"under that name (registered: {known}). Call {self.how} first.")
        return obj
