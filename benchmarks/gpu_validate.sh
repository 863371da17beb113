#!/usr/bin/env bash
# One command that validates rnnkit on a fresh GPU machine (torch preinstalled, no network):
#   builds the CUDA kernels in place for the visible GPU, runs the whole test suite, rnnkit info,
#   rnnkit check and the GPU benchmarks, and writes every log and result under one folder.
#
#   benchmarks/gpu_validate.sh [RESULTS_DIR]
#
# RESULTS_DIR defaults to benchmarks/results/<gpu>-<UTC date>. Nothing is pip-installed: the build
# is `python setup.py build_ext --inplace` and rnnkit runs from the source tree via PYTHONPATH.
# Exit status: 0 when every step passed, 1 otherwise (summary.txt lists each step's status).
#
# The steps run in the order that matters most when a lease is short: the build, the GPU tests
# (every test whose name says cuda), the GPU benchmarks, `rnnkit check`, then the whole suite
# (spread over the cores with pytest-xdist when it is installed). Each step has a time limit
# (STEP_TIMEOUT seconds, default 900) and each test one of TEST_TIMEOUT seconds (default 300)
# where pytest-timeout is installed, so a hung kernel fails its step instead of eating the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
gpu=${gpu:-unknown-gpu}
stamp=$(date -u +%Y-%m-%d)
OUT=${1:-$ROOT/benchmarks/results/$gpu-$stamp}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
failed=0

step() {  # step NAME LOGFILE COMMAND...: runs COMMAND, tees its output, records its status
  local name=$1 log=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/validate.log"
  local start=$SECONDS
  timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  printf '%-10s %s  (%d s, log %s)\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" \
    $((SECONDS - start)) "$log" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || failed=1
  return $rc
}

# ---- environment --------------------------------------------------------------------------
{
  date -u
  nvidia-smi || true
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version()); print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  git -C "$ROOT" log -1 --oneline 2>/dev/null || true
  git -C "$ROOT" status --short 2>/dev/null || true
} > "$OUT/env.txt" 2>&1

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# torch's wheels use the system's libstdc++; another toolchain (one GPU image sets CC and CXX to an
# /opt/gcc that links its own libstdc++ into the extension, which setup.py refuses) is set aside
# for the system compiler when there is one.
echo "compilers found: CC=${CC:-unset} CXX=${CXX:-unset}" >> "$OUT/env.txt"
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
echo "compilers used: CC=${CC:-unset} CXX=${CXX:-unset} ($("${CXX:-c++}" --version 2>/dev/null | head -1))" >> "$OUT/env.txt"
if [ -z "${RNNKIT_CUDA_ARCHS:-}" ]; then
  RNNKIT_CUDA_ARCHS=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd';')
fi
export RNNKIT_CUDA=1 RNNKIT_CUDA_ARCHS MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# ---- build, then everything that needs the build --------------------------------------------
if step build build.log "$PY" setup.py build_ext --inplace; then
  step info info.log "$PY" -m rnnkit info
  "$PY" -m rnnkit info --json > "$OUT/info.json" 2>/dev/null || true
  if "$PY" -c 'import pytest' 2>/dev/null; then
    pytest_args=(-q -rs -p no:cacheprovider)
    "$PY" -c 'import pytest_timeout' 2>/dev/null && pytest_args+=(--timeout "$TEST_TIMEOUT")
    step gpu-tests pytest-gpu.log "$PY" -m pytest "${pytest_args[@]}" -k cuda tests \
      --junitxml="$OUT/pytest-gpu.xml"
    if "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' &&
       grep -q "no GPU visible\|CUDA kernels not built" "$OUT/pytest-gpu.log"; then
      echo "gpu-tests  FAILED: CUDA cases skipped on a machine with a GPU (see pytest-gpu.log)" | tee -a "$SUMMARY"
      failed=1
    fi
  else
    echo "tests      NOT RUN: pytest is not installed for $PY" | tee -a "$SUMMARY"
    failed=1
  fi
  step bench bench.log "$PY" -m benchmarks.bench_gpu --json "$OUT/bench.json"
  step check check.log "$PY" -m rnnkit check
  if "$PY" -c 'import pytest' 2>/dev/null; then
    "$PY" -c 'import xdist' 2>/dev/null && pytest_args+=(-n "$(( $(nproc) > 8 ? 8 : $(nproc) ))")
    step tests pytest.log "$PY" -m pytest "${pytest_args[@]}" tests --junitxml="$OUT/pytest.xml"
  fi
fi

echo "results in $OUT" | tee -a "$SUMMARY"
exit $failed
