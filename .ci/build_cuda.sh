#!/usr/bin/env bash
# CI: configure and build the CUDA kernels (fatbin for every SG2V_CUDA_ARCHS entry + the ctest executable) into
# build/cuda, so the ahead-of-time build path never rots. Compile only: running the test needs a GPU
# (bench/gpu_check.sh does that). Skips with a message where nvcc or cmake is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc_bin=${CUDACXX:-$(command -v nvcc || true)}
if [ -z "$nvcc_bin" ] || [ ! -x "$nvcc_bin" ]; then
  echo "build_cuda: nvcc not found (set CUDACXX or put nvcc on PATH); skipping the CUDA build"
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "build_cuda: cmake not found; skipping the CUDA build"
  exit 0
fi
archs=${SG2V_CUDA_ARCHS:-87;90;110}
build=${SG2V_CUDA_BUILD_DIR:-build/cuda}
start=$(date +%s)
echo "build_cuda: $("$nvcc_bin" --version | tail -n 1), archs $archs, into $build"
cmake -S . -B "$build" -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DSG2V_CUDA_ARCHS="$archs" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "${SG2V_BUILD_JOBS:-2}"
test -s "$build/scatter_pool.fatbin"
echo "build_cuda: built $build/scatter_pool.fatbin and $build/test_scatter_pool in $(( $(date +%s) - start )) s"
