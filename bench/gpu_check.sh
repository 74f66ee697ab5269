#!/usr/bin/env bash
# One GPU check for the CUDA kernels (issue 5), run from the repository root on a machine with a CUDA GPU,
# python3 with torch + cupy, nvcc and cmake, and no network:
#   1. CMake build of cuda/ (fatbin + ctest executable), fatbin staged into cuda/, ctest (parity vs a CPU loop)
#   2. every GPU test of the suite (pytest -m gpu, SG2V_REQUIRE_GPU=1: a skip fails): the kernels incl.
#      the prebuilt-fatbin (SG2V_NO_JIT) path, the GPU encoder, the UNet on CUDA + bf16 autocast, the
#      torch-cuda backend (CUDA graphs per batch size), bf16 against fp32 loss and gradients, and a few
#      training steps on CUDA to a resumable checkpoint
#   3. bench/scatter_pool.py (kernels vs PyTorch, 1 to 256 graphs, bandwidth vs the card's copy bandwidth)
# SKIP_CPU_SIDE=1 skips the CPU-side kernel tests (CI runs them), SKIP_KERNEL_BENCH=1 skips step 3.
# Each step logs to its own file under $OUT (default ./gpu_check_out); a failing step does not stop the
# others; summary.txt lists each step's status and the device. Exit status: number of failed steps.
set -u
cd "$(dirname "$0")/.."
default_out=gpu_check_out
archs=${SG2V_CUDA_ARCHS:-}  # empty: CMakeLists.txt's default for the installed nvcc
# shellcheck source=bench/gpu_common.sh
. bench/gpu_common.sh
device_info

build=$(mktemp -d)/build
had_fatbin=0
[ -e "$repo/cuda/scatter_pool.fatbin" ] && had_fatbin=1
step "cmake configure + build (archs ${archs:-by the nvcc version}) + stage fatbin" cmake_build.log 240 \
  bash -c "cmake -S '$repo' -B '$build' ${archs:+-DSG2V_CUDA_ARCHS='$archs'} -DCMAKE_BUILD_TYPE=Release &&
           cmake --build '$build' -j 8 && cmake --build '$build' --target stage_fatbin"
step "ctest (kernel parity vs CPU loop)" ctest.log 120 ctest --test-dir "$build" --output-on-failure -V
# The files holding GPU tests (the whole folder would need the CPU-only dev packages to collect).
gpu_tests="test_cuda_kernels.py test_unet.py test_diffusion.py test_torch_cuda.py test_train.py"
step "pytest -m gpu ($gpu_tests; a skip fails)" pytest_gpu.log 300 \
  env SG2V_REQUIRE_GPU=1 "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m gpu -q -rs \
  -p no:cacheprovider $(for f in $gpu_tests; do printf '%s ' "$repo/tests/$f"; done)
[ "${SKIP_CPU_SIDE:-0}" = 1 ] || step "pytest (CPU side) tests/test_cuda_kernels.py" pytest_cpu.log 120 \
  "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m "not gpu" -q -rs "$repo/tests/test_cuda_kernels.py"
# SKIP_KERNEL_BENCH=1: the caller times the kernels later (bench/gpu_session.sh does, once the GPU is quiet).
[ "${SKIP_KERNEL_BENCH:-0}" = 1 ] || step "benchmark bench/scatter_pool.py" bench.log 240 \
  "$py" -P "$repo/bench/scatter_pool.py" --json "$out/bench.json" --markdown "$out/bench.md"

# Staged for the NO_JIT test only: leave the checkout as it was.
[ $had_fatbin -eq 0 ] && rm -f "$repo/cuda/scatter_pool.fatbin"
echo "=== $failed step(s) failed" | tee -a "$summary"
[ -f "$out/bench.md" ] && cat "$out/bench.md"
exit "$failed"
