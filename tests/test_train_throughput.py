"""bench/train_throughput.py on the CPU: it runs the real loader and step and reports consistent figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_run_reports_consistent_figures(tmp_path):
    out = tmp_path / "t.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--size", "tiny",
                        "--batch", "2", "--workers", "0", "--device", "cpu", "--steps", "2", "--warmup", "1",
                        "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    keys = {"loader": "loader_s_per_batch", "loader_f32": "loader_f32_s_per_batch", "step": "step_s",
            "loop": "loop_s_per_step"}
    for name, key in keys.items():
        assert r[key] > 0
        assert abs(r[f"{name}_samples_per_s"] - 2 / r[key]) < 1e-9 * r[f"{name}_samples_per_s"]
    # The named limit is the slower of the two measured alone (how the times compare is the machine's affair).
    slower = "data" if r["loader_samples_per_s"] < r["step_samples_per_s"] else "model step"
    assert r["limit"] == slower
    assert "| loop (both) |" in p.stdout and "| loader (float32 video) |" in p.stdout


def test_cuda_request_without_a_gpu_fails_in_one_line():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the message for machines without one")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--device", "cuda"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "pass --device cpu" in p.stderr and len(p.stderr.strip().splitlines()) == 1
