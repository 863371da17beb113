#!/usr/bin/env bash
# Issue 17 on a GPU machine, in one go: build the CUDA kernels, test the persistent loops, time them.
#
#   benchmarks/gpu_persistent.sh RESULTS_DIR
#
# From the repository root (torch preinstalled, no network, nothing pip-installed): builds rnnkit._C
# in place for sm_90 (RNNKIT_CUDA_ARCHS overrides) with the system compiler, then runs
#   1. tests/library/test_persistent_plan.py and test_persistent_mma.py (plan and tile maps), the
#      mma variant's cases of test_persistent_cuda.py (tensor cores, not yet run on a GPU), then
#      its other cases (the persistent loops forced on, against the float64 reference and the
#      general loop),
#   2. benchmarks/bench_persistent.py (writes persistent.json and persistent.md),
#   3. every CUDA case of the suite but the torch.compile ones (the general path, the double
#      backward, module_db, the test-only cell, ...),
#   4. benchmarks/bench_gpu.py (the general path against cuDNN, bench-gpu.json),
#   5. the torch.compile CUDA cases (inductor builds: last, as the least likely to find a fault),
# each under its own time limit, and writes every log under RESULTS_DIR (summary.txt: one line per
# step). All steps together stay within BUDGET seconds (default 350: under 6 minutes).
# Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT=${1:?usage: benchmarks/gpu_persistent.sh RESULTS_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
failed=0

BUDGET=${BUDGET:-350}  # seconds for all steps together; each step gets at most what is left
DEADLINE=$((SECONDS + BUDGET))

step() {  # step NAME SECONDS LOGFILE COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then
    printf '%-16s %s\n' "$name" "NOT RUN: the ${BUDGET} s budget is spent" | tee -a "$SUMMARY"
    failed=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit $limit s): $*" | tee -a "$OUT/run.log"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  printf '%-16s %s  (%d s, log %s)\n' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED rc=$rc")" \
    $((SECONDS - start)) "$log" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

{
  date -u
  nvidia-smi || true
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
  git -C "$ROOT" log -1 --oneline 2>/dev/null || true
  git -C "$ROOT" status --short 2>/dev/null || true
} > "$OUT/env.txt" 2>&1

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# The image's own CC/CXX link a private libstdc++ (see gpu_validate.sh): use the system compiler.
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
export RNNKIT_CUDA=1 RNNKIT_CUDA_ARCHS=${RNNKIT_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
unset RNNKIT_CUDA_PERSISTENT  # auto; the tests and the benchmark set it where they mean a loop
echo "compilers: CC=${CC:-unset} CXX=${CXX:-unset}; archs $RNNKIT_CUDA_ARCHS" >> "$OUT/env.txt"

pytest_args=(-q -rs -p no:cacheprovider --maxfail=10)
"$PY" -c 'import pytest_timeout' 2>/dev/null && pytest_args+=(--timeout 60)
# --maxfail: a wrong kernel fails many cases fast; ten show the pattern without eating the lease.

# Most important first: the build, the persistent loops' tests, their timings, then the general
# path's tests (without its torch.compile cases, whose inductor builds take most of a minute and
# test nothing this change touches).
if step build 150 build.log "$PY" setup.py build_ext --inplace; then
  step plan-tests 20 pytest-plan.log "$PY" -m pytest "${pytest_args[@]}" \
    tests/library/test_persistent_plan.py tests/library/test_persistent_mma.py
  bench_args=()
  # A faulting mma kernel would end the benchmark's process: time it only when its tests pass.
  step mma-tests 60 pytest-mma.log "$PY" -m pytest "${pytest_args[@]}" -k mma \
    tests/library/test_persistent_cuda.py --junitxml="$OUT/pytest-mma.xml" || bench_args+=(--skip-mma)
  step persistent-tests 130 pytest-persistent.log "$PY" -m pytest "${pytest_args[@]}" -k "not mma" \
    tests/library/test_persistent_cuda.py --junitxml="$OUT/pytest-persistent.xml"
  if grep -q "no GPU visible\|CUDA kernels not built" "$OUT/pytest-persistent.log" "$OUT/pytest-mma.log"; then
    echo "persistent-tests FAILED: CUDA cases skipped (see pytest-persistent.log)" | tee -a "$SUMMARY"
    failed=1
  fi
  step bench 90 bench.log "$PY" -m benchmarks.bench_persistent --out-dir "$OUT" ${bench_args[@]+"${bench_args[@]}"}
  step cuda-tests 100 pytest-cuda.log "$PY" -m pytest "${pytest_args[@]}" -k "cuda and not compile" \
    tests --junitxml="$OUT/pytest-cuda.xml"
  step bench-gpu 70 bench-gpu.log "$PY" -m benchmarks.bench_gpu --json "$OUT/bench-gpu.json"
  step compile-tests 60 pytest-compile.log "$PY" -m pytest "${pytest_args[@]}" -k "cuda and compile" \
    tests --junitxml="$OUT/pytest-compile.xml"
fi
echo "results in $OUT" | tee -a "$SUMMARY"
exit $failed
