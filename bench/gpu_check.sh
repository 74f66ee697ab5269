#!/usr/bin/env bash
# One GPU check for the CUDA kernels (issue 5), run from the repository root on a machine with a CUDA GPU,
# python3 with torch + cupy, nvcc and cmake, and no network:
#   1. CMake build of cuda/ (fatbin + ctest executable), fatbin staged into cuda/, ctest (parity vs a CPU loop)
#   2. the GPU pytest (-m gpu) of tests/test_cuda_kernels.py, incl. the prebuilt-fatbin (SG2V_NO_JIT) path
#   3. bench/scatter_pool.py (kernels vs PyTorch, 1 to 256 graphs, bandwidth vs the card's copy bandwidth)
# Each step logs to its own file under $OUT (default ./gpu_check_out); a failing step does not stop the
# others; summary.txt lists each step's status and the device. Exit status: number of failed steps.
set -u
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-$repo/gpu_check_out}
mkdir -p "$out"
py=${PYTHON:-python3}
archs=${SG2V_CUDA_ARCHS:-87;90;110}
summary=$out/summary.txt
: >"$summary"
failed=0

# sg2v maps runtime/ -> sg2v.runtime and cuda/ -> sg2v.kernels (pyproject); without installing anything, a
# linked tree gives the same import names. python -P keeps the repo root (which holds a plain sg2v/) off
# sys.path, so the linked tree is the one imported.
shim=$(mktemp -d)
mkdir -p "$shim/sg2v"
for f in "$repo"/sg2v/*; do ln -s "$f" "$shim/sg2v/"; done
ln -s "$repo/runtime" "$shim/sg2v/runtime"
ln -s "$repo/export" "$shim/sg2v/export"
ln -s "$repo/cuda" "$shim/sg2v/kernels"
export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

step() {  # step NAME LOGFILE TIMEOUT_S COMMAND...: run, log, record status, never abort the script
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$(date +%s)
  echo "=== $name: $*" | tee -a "$summary"
  timeout "$limit" "$@" >"$out/$log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then
    echo "    ok ($secs s, log $log)" | tee -a "$summary"
  else
    failed=$((failed + 1))
    echo "    FAILED rc=$rc ($secs s, log $log); last lines:" | tee -a "$summary"
    tail -n 15 "$out/$log" | sed 's/^/    | /' | tee -a "$summary"
  fi
}

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
  echo "cmake: $(cmake --version 2>&1 | head -n 1)"
  "$py" -c 'import sys, numpy, torch, cupy; print("python", sys.version.split()[0], "numpy", numpy.__version__,
"torch", torch.__version__, "cupy", cupy.__version__, "cuda", torch.cuda.is_available())' 2>&1
  echo "git: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee -a "$summary"

build=$(mktemp -d)/build
had_fatbin=0
[ -e "$repo/cuda/scatter_pool.fatbin" ] && had_fatbin=1
step "cmake configure + build (archs $archs) + stage fatbin" cmake_build.log 600 \
  bash -c "cmake -S '$repo' -B '$build' -DSG2V_CUDA_ARCHS='$archs' -DCMAKE_BUILD_TYPE=Release &&
           cmake --build '$build' -j 8 && cmake --build '$build' --target stage_fatbin"
step "ctest (kernel parity vs CPU loop)" ctest.log 300 ctest --test-dir "$build" --output-on-failure -V
step "pytest -m gpu tests/test_cuda_kernels.py" pytest_gpu.log 900 \
  env SG2V_REQUIRE_GPU=1 "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m gpu -q -rs "$repo/tests/test_cuda_kernels.py"
step "pytest (CPU side) tests/test_cuda_kernels.py" pytest_cpu.log 300 \
  "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m "not gpu" -q -rs "$repo/tests/test_cuda_kernels.py"
step "benchmark bench/scatter_pool.py" bench.log 900 \
  "$py" -P "$repo/bench/scatter_pool.py" --json "$out/bench.json" --markdown "$out/bench.md"

# Staged for the NO_JIT test only: leave the checkout as it was.
[ $had_fatbin -eq 0 ] && rm -f "$repo/cuda/scatter_pool.fatbin"
echo "=== $failed step(s) failed" | tee -a "$summary"
[ -f "$out/bench.md" ] && cat "$out/bench.md"
exit "$failed"
