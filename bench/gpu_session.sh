#!/usr/bin/env bash
# Everything a GPU session checks, in one device call (about 8-10 minutes on an H100), run from the repository
# root with nothing installed:
#   1. with TRAIN_SECONDS > 0: a fine-tune of the shipped demo model on the GPU, in the background, for that many
#      seconds of training (sg2v-train diffusion --init models/demo-teacher --time-limit ...); its EMA weights come back
#      as ema_part*.safetensors (join them here with bench/lease_weights.py join) with its train_metrics.jsonl
#   2. meanwhile bench/gpu_check.sh: CMake build + ctest, every GPU test with skips as failures (correctness
#      only, so sharing the GPU with the training does not matter)
#   3. once the GPU is quiet: bench/scatter_pool.py (kernels vs PyTorch), bench/run_gpu_bench.sh (sg2v-bench
#      over every backend on the shipped teacher models/demo-teacher, its student models/demo beside it) and, unless THROUGHPUT=0,
#      bench/train_throughput.py (does the data loader or the model step limit GPU training?)
# The device tool returns at most 8 files from $OUT; this leaves: summary.txt, scatter_pool.md, bench_demo.md,
# bench_demo.json, logs.tar.gz (every log and JSON), and with training ema_part0/1.safetensors and
# train_metrics.jsonl.
#   OUT=$OUT TRAIN_SECONDS=230 bash bench/gpu_session.sh     # then paste the two .md tables into RESULTS.md
# Training settings: TRAIN_STEPS (cosine horizon, default 4000), TRAIN_BATCH (256), TRAIN_LR (1e-3),
# TRAIN_WORKERS (13 data workers), TRAIN_SEED (5; give each fine-tune a seed of its own, or it sees the data
# stream of an earlier one again: models/demo-ungrounded stage 4 used 3, models/demo-teacher 1), TRAIN_DEVICE (cuda; cpu to smoke-test this).
set -u
cd "$(dirname "$0")/.."
final=${OUT:-$PWD/gpu_session_out}
mkdir -p "$final"
work=$(mktemp -d)
train_secs=${TRAIN_SECONDS:-0}
train_pid=
if [ "$train_secs" != 0 ]; then
  mkdir -p "$work/train"
  (
    default_out=unused OUT=$work/train_env
    # shellcheck source=bench/gpu_common.sh
    . bench/gpu_common.sh
    start=$(date +%s)
    timeout $(( ${train_secs%.*} + 120 )) "$py" -P -m sg2v.cli.train diffusion --size small --init models/demo-teacher \
      --device "${TRAIN_DEVICE:-cuda}" --steps "${TRAIN_STEPS:-4000}" --batch "${TRAIN_BATCH:-256}" --lr "${TRAIN_LR:-1e-3}" \
      --warmup 200 --ema-decay 0.999 --eval-every 0 --ckpt-every 1000 --log-every 50 \
      --workers "${TRAIN_WORKERS:-13}" --seed "${TRAIN_SEED:-5}" --time-limit "$train_secs" --no-progress \
      --out "$work/train/run"
    rc=$?
    echo "train rc=$rc in $(( $(date +%s) - start )) s"
    # The weights come back even from a failed run (a checkpoint may exist); the status still counts.
    "$py" -P bench/lease_weights.py split "$work/train/run/last.pt" "$final" --max-mib 15 \
      || { [ "$rc" = 0 ] && rc=1; }
    cp "$work/train/run/metrics.jsonl" "$final/train_metrics.jsonl" || { [ "$rc" = 0 ] && rc=1; }
    exit "$rc"
  ) >"$work/train/train.log" 2>&1 &
  train_pid=$!
fi
OUT=$work/check SKIP_CPU_SIDE=1 SKIP_KERNEL_BENCH=1 bash bench/gpu_check.sh
rc_check=$?
rc_train=0
if [ -n "$train_pid" ]; then
  wait "$train_pid"
  rc_train=$?
  echo "=== GPU fine-tune (log train/train.log): rc=$rc_train"
  tail -n 6 "$work/train/train.log"
fi
(
  default_out=unused OUT=$work/kbench
  # shellcheck source=bench/gpu_common.sh
  . bench/gpu_common.sh
  step "benchmark bench/scatter_pool.py" bench.log 150 \
    "$py" -P bench/scatter_pool.py --json "$out/bench.json" --markdown "$out/bench.md"
  exit "$failed"
)
rc_kbench=$?
OUT=$work/bench SKIP_GPU_TESTS=1 BENCH_TIMEOUT=${BENCH_TIMEOUT:-300} bash bench/run_gpu_bench.sh
rc_bench=$?
rc_tput=0
if [ "${THROUGHPUT:-1}" = 1 ]; then
  (
    default_out=unused OUT=$work/tput
    # shellcheck source=bench/gpu_common.sh
    . bench/gpu_common.sh
    step "training throughput bench/train_throughput.py (loader / step / loop)" train_throughput.log 180 \
      "$py" -P bench/train_throughput.py --size small --batch "${TRAIN_BATCH:-256}" \
      --workers "${TRAIN_WORKERS:-13}" --json "$out/train_throughput.json"
    tail -n 7 "$out/train_throughput.log" >>"$summary"
    exit "$failed"
  )
  rc_tput=$?
fi
{
  echo "# bench/gpu_check.sh: $rc_check failed step(s)"
  cat "$work/check/summary.txt"
  [ -n "$train_pid" ] && { echo; echo "# GPU fine-tune: rc=$rc_train"; tail -n 6 "$work/train/train.log"; }
  echo
  echo "# bench/scatter_pool.py: $rc_kbench failed step(s)"
  cat "$work/kbench/summary.txt"
  echo
  echo "# bench/run_gpu_bench.sh: $rc_bench failed step(s)"
  cat "$work/bench/summary.txt"
  [ -f "$work/tput/summary.txt" ] && { echo; echo "# training throughput: $rc_tput failed step(s)"; \
    cat "$work/tput/summary.txt"; }
} >"$final/summary.txt"
cp "$work/kbench/bench.md" "$final/scatter_pool.md" 2>/dev/null
cp "$work"/bench/bench_*.md "$work"/bench/bench_*.json "$final/" 2>/dev/null
tar -czf "$final/logs.tar.gz" -C "$work" check kbench bench $( [ -d "$work/tput" ] && echo tput ) \
  $( [ -n "$train_pid" ] && echo train/train.log )
cat "$final/summary.txt"
exit $(( rc_check + rc_kbench + rc_bench + rc_tput + (rc_train != 0) ))
