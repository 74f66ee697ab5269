# Sourced by the GPU session scripts (bench/gpu_check.sh, bench/run_gpu_bench.sh): run from the repository root
# on a GPU machine with no network and nothing installed. Sets repo, out ($OUT, or the caller's default in
# $default_out), py, summary, failed; links an import tree; defines step() and device_info().
repo=$PWD
out=${OUT:-$repo/$default_out}
mkdir -p "$out"
py=${PYTHON:-python3}
summary=$out/summary.txt
: >"$summary"
failed=0

# pyproject maps runtime/ -> sg2v.runtime, export/ -> sg2v.export, cuda/ -> sg2v.kernels; without installing
# anything, a linked tree gives the same import names. `python -P` keeps the repo root (which holds a plain
# sg2v/) off sys.path, so the linked tree is the one imported; sg2v-bench starts its children with -P too.
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
  local start
  start=$(date +%s)
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

device_info() {  # the machine, the card and the software, into the summary
  {
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores," \
      "load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
    echo "cmake: $(cmake --version 2>&1 | head -n 1)"
    "$py" -c 'import importlib, sys
mods = ["numpy", "torch", "cupy", "onnxruntime", "onnx"]
vers = []
for m in mods:
    try:
        vers.append(f"{m} {importlib.import_module(m).__version__}")
    except Exception as e:
        vers.append(f"{m} missing ({type(e).__name__})")
import torch
print("python", sys.version.split()[0], ", ".join(vers), "cuda", torch.cuda.is_available())' 2>&1
    echo "git: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  } | tee -a "$summary"
}
