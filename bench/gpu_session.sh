#!/usr/bin/env bash
# Everything a GPU session checks, in one device call (about 8-10 minutes on an H100): bench/gpu_check.sh (CMake
# build + ctest, every GPU test with skips as failures, the scatter-pool benchmark), then bench/run_gpu_bench.sh
# (sg2v-bench over every backend on the shipped demo bundle models/demo; its GPU tests already ran). Run from the
# repository root; nothing is installed. The device tool returns at most 8 files from $OUT, so this leaves
# exactly: summary.txt, scatter_pool.md, scatter_pool.json, bench_demo.md, bench_demo.json, logs.tar.gz.
#   OUT=$OUT bash bench/gpu_session.sh        # then paste the two .md tables into bench/RESULTS.md
set -u
cd "$(dirname "$0")/.."
final=${OUT:-$PWD/gpu_session_out}
mkdir -p "$final"
work=$(mktemp -d)
OUT=$work/check bash bench/gpu_check.sh
rc_check=$?
OUT=$work/bench SKIP_GPU_TESTS=1 BENCH_TIMEOUT=${BENCH_TIMEOUT:-300} bash bench/run_gpu_bench.sh
rc_bench=$?
{
  echo "# bench/gpu_check.sh: $rc_check failed step(s)"
  cat "$work/check/summary.txt"
  echo
  echo "# bench/run_gpu_bench.sh: $rc_bench failed step(s)"
  cat "$work/bench/summary.txt"
} >"$final/summary.txt"
cp "$work/check/bench.md" "$final/scatter_pool.md" 2>/dev/null
cp "$work/check/bench.json" "$final/scatter_pool.json" 2>/dev/null
cp "$work"/bench/bench_*.md "$work"/bench/bench_*.json "$final/" 2>/dev/null
tar -czf "$final/logs.tar.gz" -C "$work" check bench
cat "$final/summary.txt"
exit $(( rc_check + rc_bench ))
