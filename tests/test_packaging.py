"""The distribution: every module imports from the editable install and from a built wheel;
``import ragkit`` is light and has no side effects."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPING = {"ragkit": "ragkit", "ragkit.indexers": "indexers", "ragkit.retrievers": "retrievers",
           "ragkit.rerankers": "rerankers", "ragkit.generators": "generators"}


def all_modules() -> list[str]:
    mods = []
    for pkg, folder in MAPPING.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = f.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "ragkit" and parts and parts[0] in ("__main__",):
                continue
            mods.append(".".join([pkg, *parts]))
    return mods


IMPORT_ALL = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok', len(sys.argv) - 1)"


def test_every_module_imports_from_editable_install():
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL, *all_modules()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_import_ragkit_is_light_and_writes_nothing(tmp_path):
    code = ("import sys, ragkit, ragkit.pipeline, ragkit.cli\n"
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'faiss', 'bm25s') if m in sys.modules]\n"
            "print(heavy)")
    env = dict(os.environ, HOME=str(tmp_path / "home"), RAGKIT_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no home, no cache folder, nothing written


@pytest.mark.slow
def test_built_wheel_contains_and_imports_every_module(tmp_path):
    dist = tmp_path / "dist"
    b = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                       capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-2000:] + b.stderr[-2000:]
    (wheel,) = dist.glob("ragkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for m in all_modules():
        path = m.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, m
    target = tmp_path / "site"
    i = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), str(wheel)], capture_output=True, text=True)
    assert i.returncode == 0, i.stderr[-2000:]
    code = IMPORT_ALL + "\nimport ragkit; assert ragkit.__file__.startswith(sys.argv[0] if False else %r), ragkit.__file__" % str(target)
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code, *all_modules()], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
