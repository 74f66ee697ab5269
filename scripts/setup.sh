#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv in .venv with sg2v and every extra that runs here (CPU).
# Idempotent: re-running it only installs what changed. PYTHON selects the interpreter (default python3).
# pip's and setuptools' own output goes to .venv/setup.log; it is printed only when a step fails
# (SG2V_SETUP_VERBOSE=1 prints it as it comes).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "sg2v setup: creating .venv with $("$py" --version 2>&1)"
  "$py" -m venv .venv
fi
. .venv/bin/activate
log=.venv/setup.log
: > "$log"

step() {  # step "what it does" command...: the command's output goes to the log unless verbose
  echo "sg2v setup: $1"
  shift
  if [ "${SG2V_SETUP_VERBOSE:-0}" = 1 ]; then
    "$@" 2>&1 | tee -a "$log"
    return
  fi
  if ! "$@" >>"$log" 2>&1; then
    echo "sg2v setup: failed: $*; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

step "upgrading pip" python -m pip install --quiet --upgrade pip
# The CPU build of torch 2.13.0 is on local disk on the project's machines; other versions download GBs.
step "installing torch 2.13.0" python -m pip install --quiet "torch==2.13.0"
step "installing sg2v (editable) with the cpu, openvino, train, export, video, dev, ros and serve extras" \
  python -m pip install --quiet -e ".[cpu,openvino,train,export,video,dev,ros,serve]"
echo "sg2v set up in .venv ($(python -c 'import sg2v; print(sg2v.__version__)')); pip's output: $log"
