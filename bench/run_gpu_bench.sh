#!/usr/bin/env bash
# sg2v-bench on a CUDA GPU machine (issue 6), run from anywhere; needs python3 with torch (+ triton for the
# torch.compile row), onnx, onnxscript, onnxruntime and safetensors; no network, nothing installed.
#   1. the GPU tests of sg2v.torch_fast (graph replay and torch.compile against eager fp32) must pass first
#   2. for each size in $SIZES (default "small"): export a random-weight bundle of that size (or use $BUNDLE),
#      then sg2v-bench over every backend available there (torch-cpu baseline, ort-cpu, torch-cuda eager fp32,
#      torch-cuda-compile-fp16, torch-cuda-fast; trt / ort-gpu when importable)
# Writes under $OUT (default ./gpu_bench_out): summary.txt, one log per step, bench_<size>.json and
# bench_<size>.md (the table for bench/RESULTS.md). Extra sg2v-bench options: $BENCH_ARGS (e.g. "--repeats 10");
# its time limit: $BENCH_TIMEOUT seconds (default 480, so one call fits a 10-minute device command).
# Exit status: the number of failed steps. bench/gpu_check.sh may call this script; it leaves the tree as it was.
set -u
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-$repo/gpu_bench_out}
mkdir -p "$out"
py=${PYTHON:-python3}
sizes=${SIZES:-small}
summary=$out/summary.txt
: >"$summary"
failed=0

# The tree maps runtime/ -> sg2v.runtime, export/ -> sg2v.export, cuda/ -> sg2v.kernels (pyproject). Without
# installing, a linked tree gives those names; python -P keeps the repo root's plain sg2v/ off sys.path, and
# sg2v-bench starts each backend's process with -P too.
shim=$(mktemp -d)
mkdir -p "$shim/sg2v"
for f in "$repo"/sg2v/*; do ln -s "$f" "$shim/sg2v/"; done
ln -s "$repo/runtime" "$shim/sg2v/runtime"
ln -s "$repo/export" "$shim/sg2v/export"
ln -s "$repo/cuda" "$shim/sg2v/kernels"
export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

step() {  # step NAME LOGFILE TIMEOUT_S COMMAND...: run with a time limit, log, record the status, go on
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$(date +%s)
  echo "=== $name" | tee -a "$summary"
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
  return $rc
}

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$py" -c 'import sys, numpy, torch, onnxruntime; print("python", sys.version.split()[0], "numpy", numpy.__version__,
"torch", torch.__version__, "onnxruntime", onnxruntime.__version__, "cuda", torch.cuda.is_available())' 2>&1
  echo "git: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee -a "$summary"

step "pytest -m gpu tests/test_torch_fast.py" pytest_torch_fast.log 300 \
  env SG2V_REQUIRE_GPU=1 "$py" -P -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -m gpu -q -rs \
  -p no:cacheprovider "$repo/tests/test_torch_fast.py"

work=$(mktemp -d)
for size in $sizes; do
  bundle=${BUNDLE:-$work/bundle_$size}
  if [ -z "${BUNDLE:-}" ]; then
    step "export a random-weight $size bundle" "export_$size.log" 300 \
      "$py" -P -c "import sys; from sg2v.bench import make_random_bundle; make_random_bundle(*sys.argv[1:])" \
      "$size" "$bundle" || continue
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
  step "sg2v-bench $size" "bench_$size.log" "${BENCH_TIMEOUT:-480}" \
    "$py" -P -m sg2v.bench --bundle "$bundle" --json "$out/bench_$size.json" --table "$out/bench_$size.md" \
    ${BENCH_ARGS:-}
  [ -n "${BUNDLE:-}" ] && break
done

echo "=== $failed step(s) failed" | tee -a "$summary"
for f in "$out"/bench_*.md; do
  [ -f "$f" ] && { echo; echo "## $(basename "$f")"; cat "$f"; }
done
exit "$failed"
