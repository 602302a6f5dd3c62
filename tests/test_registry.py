"""Plugins register stages through the entry-point group ``ragkit.stages``."""
from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

import pytest

from ragkit import registry


@pytest.fixture
def plugin_entry_point(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_pkg"))
    ep = md.EntryPoint(name="reverse", value="ragkit_example_plugin:ReversePluginReranker", group=registry.ENTRY_POINT_GROUP)
    broken = md.EntryPoint(name="broken", value="no_such_module_xyz:Thing", group=registry.ENTRY_POINT_GROUP)
    real = md.entry_points

    def fake(**kw):
        if kw.get("group") == registry.ENTRY_POINT_GROUP:
            return md.EntryPoints([ep, broken])
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", fake)
    monkeypatch.setattr(registry, "_loaded", False)
    yield
    registry._REGISTRY.pop("reranker.reverse_plugin", None)
    sys.modules.pop("ragkit_example_plugin", None)
    monkeypatch.setattr(registry, "_loaded", False)


def test_entry_point_plugin_is_usable_from_yaml(plugin_entry_point):
    from ragkit import Pipeline

    with pytest.warns(UserWarning, match="plugin 'broken'"):
        keys = registry.keys()
    assert "reranker.reverse_plugin" in keys
    p = Pipeline.from_yaml("version: 1\npipeline:\n  - retriever.bm25: {index: idx}\n"
                           "  - reranker.reverse_plugin: {scale: 2.0}\n")
    assert p.stages[1].scale == 2.0


def test_duplicate_key_from_another_class_is_refused():
    from ragkit.stage import Stage

    with pytest.raises(ValueError, match="already registered"):
        @registry.register("ranking.cutoff")
        class Other(Stage):
            """x"""
