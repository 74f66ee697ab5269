"""CMakeLists.txt configures and builds the CUDA kernels with nvcc (one arch here, to stay quick; CI's
.ci/build_cuda.sh builds every SG2V_CUDA_ARCHS entry): a fatbin holding every plain kernel, and the ctest
parity executable registered with ctest. Nothing runs on a GPU here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sg2v.runtime import cuda_kernels as ck

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    found = os.environ.get("CUDACXX") or shutil.which("nvcc")
    return found if found and os.access(found, os.X_OK) else None


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_cmake_builds_fatbin_and_ctest_executable(tmp_path):
    build = tmp_path / "build"
    run = dict(capture_output=True, text=True, timeout=600)
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
                        "-DSG2V_CUDA_ARCHS=90"], **run)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run(["cmake", "--build", str(build), "-j", "2"], **run)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    fatbin = (build / "scatter_pool.fatbin").read_bytes()
    symbols = [ck.symbol("scatter_mean_pool", v) for v in ck.POOL_VARIANTS]
    symbols += [ck.symbol("gather_concat", v) for v in ck.GATHER_VARIANTS]
    for name in symbols:  # what SG2V_NO_JIT=1 looks up in the shipped fatbin
        assert name.encode() in fatbin, f"{name} missing from the fatbin"
    assert os.access(build / "test_scatter_pool", os.X_OK)
    r = subprocess.run(["ctest", "--test-dir", str(build), "-N"], **run)
    assert r.returncode == 0 and "scatter_pool_parity" in r.stdout, r.stdout + r.stderr
    assert not (ROOT / "cuda" / "__init__.py").exists()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_cmake_rejects_a_malformed_arch_list(tmp_path):
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DSG2V_CUDA_ARCHS=sm90"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "SG2V_CUDA_ARCHS entry 'sm90'" in r.stdout + r.stderr
