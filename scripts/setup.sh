#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv in .venv with sg2v and every extra that runs here (CPU).
# Idempotent: re-running it only installs what changed. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of torch 2.13.0 is on local disk on the project's machines; other versions download GBs.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[cpu,train,export,video,dev]"
echo "sg2v set up in .venv ($(python -c 'import sg2v; print(sg2v.__version__)'))"
