#!/usr/bin/env bash
# sg2v-bench on a CUDA GPU machine (issue 6), run from anywhere; needs python3 with torch (+ triton for the
# torch.compile row), onnx, onnxscript, onnxruntime and safetensors; no network, nothing installed.
#   1. the GPU tests of sg2v.runtime.backends.torch_cuda (graph replay and torch.compile against eager fp32) must pass first
#   2. on $BUNDLE (default: the shipped teacher models/demo-teacher with the student models/demo compared at 4
#      steps, reported as "demo"; with BUNDLE=random, a
#      random-weight bundle of each size in $SIZES, default "small", exported first), sg2v-bench over every
#      backend available there (torch-cpu baseline, ort-cpu, torch-cuda eager fp32,
#      torch-cuda-compile-fp16, torch-cuda-fast; trt / ort-gpu when importable)
# Writes under $OUT (default ./gpu_bench_out): summary.txt, one log per step, bench_<size>.json and
# bench_<size>.md (the table for bench/RESULTS.md). Extra sg2v-bench options: $BENCH_ARGS (e.g. "--repeats 10");
# its time limit: $BENCH_TIMEOUT seconds (default 480, so one call fits a 10-minute device command).
# Exit status: the number of failed steps. bench/gpu_check.sh may call this script; it leaves the tree as it was.
set -u
cd "$(dirname "$0")/.."
default_out=gpu_bench_out
sizes=${SIZES:-small}
# shellcheck source=bench/gpu_common.sh
. bench/gpu_common.sh
device_info

[ "${SKIP_GPU_TESTS:-0}" = 1 ] || step "pytest -m gpu tests/test_torch_cuda.py" pytest_torch_cuda.log 300 \
  env SG2V_REQUIRE_GPU=1 "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m gpu -q -rs \
  -p no:cacheprovider "$repo/tests/test_torch_cuda.py"

compare=()
if [ -z "${BUNDLE:-}" ] && [ -f models/demo-teacher/manifest.json ] && [ -f models/demo/manifest.json ]; then
  BUNDLE=$(pwd)/models/demo-teacher  # the teacher at its 8 steps, the shipped student beside it at 4
  compare=(--compare "$(pwd)/models/demo" --compare-steps 4)
  sizes=demo
elif [ -z "${BUNDLE:-}" ] && [ -f models/demo/manifest.json ]; then
  BUNDLE=$(pwd)/models/demo
  sizes=demo
elif [ "${BUNDLE:-}" = random ]; then
  BUNDLE=
fi
work=$(mktemp -d)
for size in $sizes; do
  bundle=${BUNDLE:-$work/bundle_$size}
  if [ -z "${BUNDLE:-}" ]; then
    step "export a random-weight $size bundle" "export_$size.log" 300 \
      "$py" -P -c "import sys; from sg2v.export.bench import make_random_bundle; make_random_bundle(*sys.argv[1:])" \
      "$size" "$bundle" || continue
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
  step "sg2v-bench $size" "bench_$size.log" "${BENCH_TIMEOUT:-480}" \
    "$py" -P -m sg2v.export.bench --bundle "$bundle" --json "$out/bench_$size.json" --table "$out/bench_$size.md" \
    "${compare[@]}" ${BENCH_ARGS:-}
  [ -n "${BUNDLE:-}" ] && break
done

echo "=== $failed step(s) failed" | tee -a "$summary"
for f in "$out"/bench_*.md; do
  [ -f "$f" ] && { echo; echo "## $(basename "$f")"; cat "$f"; }
done
exit "$failed"
