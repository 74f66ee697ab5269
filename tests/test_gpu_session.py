"""bench/gpu_session.sh's bookkeeping, run for real on a stand-in repository: the fine-tune's exit status
counts in the script's own (the GPU checks, benchmarks and the training module are small stand-ins here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB_OK = "#!/usr/bin/env bash\nmkdir -p \"$OUT\"; echo 'stand-in: ok' > \"$OUT/summary.txt\"; exit 0\n"
TRAIN = '''import pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "last.pt").write_bytes(b"weights")
(out / "metrics.jsonl").write_text('{{"step": 1, "loss": 0.5}}\\n')
print("stand-in training, exit", {rc})
sys.exit({rc})
'''
SPLIT = '''import pathlib, shutil, sys
shutil.copy(sys.argv[2], pathlib.Path(sys.argv[3]) / "ema_part0.safetensors")
'''
KBENCH = '''import pathlib, sys
for flag in ("--json", "--markdown"):
    pathlib.Path(sys.argv[sys.argv.index(flag) + 1]).write_text("{}")
'''


def _repo(tmp_path: Path, train_rc: int) -> Path:
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    for name in ("gpu_session.sh", "gpu_common.sh"):
        shutil.copy(ROOT / "bench" / name, repo / "bench" / name)
    for name in ("gpu_check.sh", "run_gpu_bench.sh"):
        (repo / "bench" / name).write_text(STUB_OK)
    (repo / "bench" / "lease_weights.py").write_text(SPLIT)
    (repo / "bench" / "scatter_pool.py").write_text(KBENCH)
    (repo / "sg2v" / "cli").mkdir(parents=True)
    (repo / "sg2v" / "__init__.py").write_text("")
    (repo / "sg2v" / "cli" / "__init__.py").write_text("")
    (repo / "sg2v" / "cli" / "train.py").write_text(TRAIN.format(rc=train_rc))
    for folder in ("runtime", "export", "cuda"):
        (repo / folder).mkdir()
    return repo


@pytest.mark.parametrize("train_rc", [0, 3])
def test_fine_tune_status_counts(tmp_path, train_rc):
    repo = _repo(tmp_path, train_rc)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TRAIN_SECONDS": "1", "THROUGHPUT": "0", "PYTHON": sys.executable,
           "TRAIN_DEVICE": "cpu"}
    r = subprocess.run(["bash", str(repo / "bench" / "gpu_session.sh")], env=env, capture_output=True,
                       text=True, timeout=120)
    summary = (out / "summary.txt").read_text()
    assert f"# GPU fine-tune: rc={train_rc}" in summary, summary + r.stderr
    assert (r.returncode != 0) == (train_rc != 0), r.stdout + r.stderr
    assert (out / "ema_part0.safetensors").read_bytes() == b"weights"  # weights come back either way
    assert "loss" in (out / "train_metrics.jsonl").read_text()
