"""CMakeLists.txt configures and builds the CUDA kernels with nvcc (one arch here, to stay quick; CI's
.ci/build_cuda.sh builds every default architecture): a fatbin holding every plain kernel, and the ctest
parity executable registered with ctest. Nothing runs on a GPU here. Marked `cuda_build`: skipped where nvcc
or CMake is missing, a failure there under SG2V_REQUIRE_CUDA_BUILD=1 (CI), as is `.ci/build_cuda.sh`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sg2v.runtime import cuda_kernels as ck

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    found = os.environ.get("CUDACXX") or shutil.which("nvcc")
    return found if found and os.access(found, os.X_OK) else None


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
needs_nvcc = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (CUDA toolkit not installed)")


@pytest.mark.slow
@pytest.mark.cuda_build
@needs_nvcc
@needs_cmake
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


@pytest.mark.cuda_build
@needs_cmake
def test_cmake_rejects_a_malformed_arch_list(tmp_path):
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DSG2V_CUDA_ARCHS=sm90"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "SG2V_CUDA_ARCHS entry 'sm90'" in r.stdout + r.stderr


def _fake_nvcc(folder: Path, release: str) -> Path:
    """An `nvcc` that only answers --version (CMake's CUDA detection then fails, after the arch default)."""
    path = folder / f"nvcc-{release}"
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.cuda_build
@needs_cmake
@pytest.mark.parametrize("release, archs", [("11.4", "87"), ("12.2", "87;90"), ("12.8", "87;90;101"),
                                            ("12.9", "87;90;101"), ("13.0", "87;90;110"),
                                            ("13.2", "87;90;110")])
def test_default_architectures_follow_the_nvcc_version(tmp_path, release, archs):
    """Thor is sm_101 in CUDA 12.8 - 12.9 and sm_110 from CUDA 13; Hopper from 11.8."""
    nvcc = _fake_nvcc(tmp_path, release)
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DCMAKE_CUDA_COMPILER={nvcc}"],
                       capture_output=True, text=True, timeout=300)
    assert f"sg2v: nvcc {release}: default SG2V_CUDA_ARCHS {archs}" in r.stdout, r.stdout + r.stderr


@pytest.mark.cuda_build
@needs_nvcc
@needs_cmake
def test_default_architectures_of_the_installed_nvcc_configure(tmp_path):
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"),
                        f"-DCMAKE_CUDA_COMPILER={_nvcc()}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    version = subprocess.run([_nvcc(), "--version"], capture_output=True, text=True).stdout
    if "release 13." in version:
        assert "SG2V_CUDA_ARCHS:STRING=87;90;110" in cache


def _build_cuda_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """PATH holding only what .ci/build_cuda.sh needs besides nvcc and cmake (which are left out)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "date", "dirname", "env", "sh"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    base = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "SG2V_ALLOW_NO_CUDA_BUILD")}
    return {**base, "PATH": str(bin_dir), **env}


JETPACK_NVCC = Path("/usr/local/cuda/bin/nvcc")  # where JetPack (and NVIDIA's installers) put nvcc, off PATH


def _cuda_home(tmp_path: Path, release: str) -> Path:
    """A CUDA_HOME whose bin/nvcc answers --version with `release`."""
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    return _fake_nvcc(tmp_path / "cuda" / "bin", release).rename(tmp_path / "cuda" / "bin" / "nvcc")


@pytest.mark.parametrize("where", ["path", "cuda_home", "default"])
def test_build_cuda_looks_for_nvcc_in_path_then_cuda_home_then_usr_local_cuda(tmp_path, where):
    script = ROOT / ".ci" / "build_cuda.sh"
    env = _build_cuda_env(tmp_path)
    if where != "default":
        env["CUDA_HOME"] = str(_cuda_home(tmp_path, "12.6").parent.parent)
    if where == "path":
        on_path = _fake_nvcc(tmp_path / "bin", "13.0").rename(tmp_path / "bin" / "nvcc")
    want = {"path": str(tmp_path / "bin" / "nvcc"), "cuda_home": str(tmp_path / "cuda" / "bin" / "nvcc"),
            "default": str(JETPACK_NVCC)}[where]
    r = subprocess.run([shutil.which("bash"), str(script)], env=env, capture_output=True, text=True,
                       timeout=60)
    if where == "default" and not os.access(JETPACK_NVCC, os.X_OK):
        assert r.returncode != 0 and "nvcc not found in PATH, /usr/local/cuda/bin" in r.stderr
        return
    assert f"build_cuda: nvcc {want}\n" in r.stdout  # found; the stand-in PATH has no cmake, which fails next
    assert r.returncode != 0 and "cmake not found" in r.stderr
    if where == "path":
        assert on_path.is_file()


@pytest.mark.cuda_build
@needs_cmake
@pytest.mark.parametrize("where", ["path", "cuda_home"])
def test_cmake_looks_for_nvcc_in_path_then_cuda_home(tmp_path, where):
    """Without CMAKE_CUDA_COMPILER or CUDACXX: PATH first, then $CUDA_HOME/bin (then /usr/local/cuda/bin); the
    nvcc found sets the default architectures and becomes CMAKE_CUDA_COMPILER."""
    env = _build_cuda_env(tmp_path, CUDA_HOME=str(_cuda_home(tmp_path, "12.6").parent.parent))
    if where == "path":
        _fake_nvcc(tmp_path / "bin", "13.0").rename(tmp_path / "bin" / "nvcc")
    nvcc, release, archs = {"path": (tmp_path / "bin" / "nvcc", "13.0", "87;90;110"),
                            "cuda_home": (tmp_path / "cuda" / "bin" / "nvcc", "12.6", "87;90")}[where]
    r = subprocess.run([shutil.which("cmake"), "-S", str(ROOT), "-B", str(tmp_path / "b")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert f"sg2v: nvcc {nvcc}\n" in r.stdout, r.stdout + r.stderr
    assert f"sg2v: nvcc {release}: default SG2V_CUDA_ARCHS {archs}" in r.stdout
    assert f"CMAKE_CUDA_COMPILER:FILEPATH={nvcc}" in (tmp_path / "b" / "CMakeCache.txt").read_text()


def test_build_cuda_fails_without_nvcc_unless_allowed(tmp_path):
    """A CUDACXX naming no executable stands for a machine without nvcc (/usr/local/cuda may exist here)."""
    script = ROOT / ".ci" / "build_cuda.sh"
    bash = shutil.which("bash")
    gone = str(tmp_path / "no-cuda" / "nvcc")
    r = subprocess.run([bash, str(script)], env=_build_cuda_env(tmp_path, CUDACXX=gone), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and f"nvcc not found: CUDACXX={gone} is not an executable" in r.stderr
    assert "SG2V_ALLOW_NO_CUDA_BUILD=1" in r.stdout + r.stderr
    r = subprocess.run([bash, str(script)], env=_build_cuda_env(tmp_path, SG2V_ALLOW_NO_CUDA_BUILD="1",
                                                                CUDACXX=gone),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "skipping the CUDA build" in r.stdout


def test_build_cuda_fails_without_cmake_unless_allowed(tmp_path):
    nvcc = _fake_nvcc(tmp_path, "13.0")
    script = ROOT / ".ci" / "build_cuda.sh"
    bash = shutil.which("bash")
    env = _build_cuda_env(tmp_path, CUDACXX=str(nvcc))
    r = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cmake not found" in r.stdout + r.stderr
    env["SG2V_ALLOW_NO_CUDA_BUILD"] = "1"
    r = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "skipping the CUDA build" in r.stdout
