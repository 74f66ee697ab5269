#!/usr/bin/env bash
# CI: configure and build the CUDA kernels (fatbin for every SG2V_CUDA_ARCHS entry + the ctest executable) into
# build/cuda, so the ahead-of-time build path never rots. Compile only: running the test needs a GPU
# (bench/gpu_check.sh does that). The project's machines have nvcc and CMake, so a missing one is an error;
# SG2V_ALLOW_NO_CUDA_BUILD=1 turns that into a skip (a machine without the CUDA toolkit).
# SG2V_CUDA_ARCHS picks the architectures (default: CMakeLists.txt's, by the nvcc version).
set -euo pipefail
cd "$(dirname "$0")/.."
missing() {
  if [ "${SG2V_ALLOW_NO_CUDA_BUILD:-0}" = 1 ]; then
    echo "build_cuda: $1; skipping the CUDA build (SG2V_ALLOW_NO_CUDA_BUILD=1)"
    exit 0
  fi
  echo "build_cuda: error: $1; install it, or set SG2V_ALLOW_NO_CUDA_BUILD=1 on a machine without the CUDA" \
       "toolkit" >&2
  exit 1
}
# nvcc: CUDACXX, else PATH, then $CUDA_HOME/bin, then /usr/local/cuda/bin (JetPack leaves it off PATH).
find_nvcc() {
  if [ -n "${CUDACXX:-}" ]; then echo "$CUDACXX"; return; fi
  if command -v nvcc; then return; fi
  for dir in ${CUDA_HOME:+"$CUDA_HOME/bin"} /usr/local/cuda/bin; do
    if [ -x "$dir/nvcc" ]; then echo "$dir/nvcc"; return; fi
  done
}
if [ -n "${CUDACXX:-}" ] && [ ! -x "$CUDACXX" ]; then
  missing "nvcc not found: CUDACXX=$CUDACXX is not an executable"
fi
nvcc_bin=$(find_nvcc || true)
if [ -z "$nvcc_bin" ] || [ ! -x "$nvcc_bin" ]; then
  missing "nvcc not found in PATH,${CUDA_HOME:+ $CUDA_HOME/bin,} /usr/local/cuda/bin (set CUDACXX or CUDA_HOME)"
fi
echo "build_cuda: nvcc $nvcc_bin"
if ! command -v cmake >/dev/null 2>&1; then
  missing "cmake not found (apt-get install cmake, or pip install cmake)"
fi
build=${SG2V_CUDA_BUILD_DIR:-build/cuda}
start=$(date +%s)
echo "build_cuda: $("$nvcc_bin" --version | tail -n 1), archs ${SG2V_CUDA_ARCHS:-by the nvcc version}, into $build"
cmake -S . -B "$build" -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_BUILD_TYPE=Release \
  ${SG2V_CUDA_ARCHS:+"-DSG2V_CUDA_ARCHS=$SG2V_CUDA_ARCHS"}
cmake --build "$build" -j "${SG2V_BUILD_JOBS:-2}"
test -s "$build/scatter_pool.fatbin"
echo "build_cuda: built $build/scatter_pool.fatbin and $build/test_scatter_pool in $(( $(date +%s) - start )) s"
