"""A plain (non-editable) `pip install .` works: build the wheel, install it alone, import every module."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_names() -> list[str]:
    """Import names of every .py file under the folders the wheel maps into sg2v.*."""
    mapping = {"sg2v": "sg2v", "export": "sg2v.export", "runtime": "sg2v.runtime"}
    names = []
    for folder, pkg in mapping.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts and parts[-1] == "__main__":
                continue
            names.append(".".join([pkg, *parts]))
    return names


BUILD_LOG = pytest.StashKey[str]()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, request) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(ROOT)], capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    request.config.stash[BUILD_LOG] = r.stdout + r.stderr
    (whl,) = out.glob("sg2v-*.whl")
    return whl


def test_the_build_warns_about_nothing(wheel, request):
    """setuptools' deprecation warnings (a TOML-table license, a data folder missing from `packages`) were
    most of a newcomer's first screen; the build must not emit any."""
    log = request.config.stash[BUILD_LOG]
    for warning in ("deprecated", "is absent from the `packages`", "SetuptoolsDeprecationWarning"):
        assert warning not in log, log[-3000:]


_FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for .venv/bin/python: pip prints a screenful of warnings (and fails if asked to)
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  for i in $(seq 130); do echo "SetuptoolsDeprecationWarning: noise line $i" >&2; done
  case "$*" in *"$FAIL_ON"*) echo "ERROR: No matching distribution found for torch==2.13.0" >&2; exit 1;; esac
  exit 0
fi
echo 0.1.0
"""


def _fake_checkout(tmp_path: Path) -> Path:
    """scripts/setup.sh in a folder with a .venv whose python is `_FAKE_PYTHON` (no network, no pip)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text(_FAKE_PYTHON)
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    (repo / ".venv" / "bin" / "activate").write_text('PATH="$(pwd)/.venv/bin:$PATH"\n')
    return repo


def test_setup_prints_its_own_progress_and_pip_only_on_failure(tmp_path):
    repo = _fake_checkout(tmp_path)
    env = {**os.environ, "FAIL_ON": "never-matches"}
    env.pop("SG2V_SETUP_VERBOSE", None)
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert r.stderr == "" and len(lines) <= 6 and all(line.startswith("sg2v set") for line in lines), r.stdout
    assert "sg2v set up in .venv (0.1.0)" in lines[-1]
    assert (repo / ".venv" / "setup.log").read_text().count("noise line") == 3 * 130  # kept, not shown

    env["FAIL_ON"] = "torch==2.13.0"
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "failed" in r.stderr and "No matching distribution found for torch==2.13.0" in r.stderr
    assert len(r.stderr.splitlines()) <= 32  # the log's tail, not all of it


def test_wheel_ships_every_module_and_data_file(wheel):
    files = set(zipfile.ZipFile(wheel).namelist())
    for name in _module_names():
        as_path = name.replace(".", "/")
        assert f"{as_path}.py" in files or f"{as_path}/__init__.py" in files, f"{name} missing from the wheel"
    data = [p.relative_to(ROOT / "sg2v") for p in (ROOT / "sg2v" / "data").glob("*.json")]
    for rel in data:
        assert f"sg2v/{rel.as_posix()}" in files
    for cu in (ROOT / "cuda").glob("*.cu"):
        assert f"sg2v/kernels/{cu.name}" in files, f"{cu.name} not shipped as sg2v/kernels/{cu.name}"
    assert not any(f.startswith("cuda/") for f in files), "cuda must not become a top-level package"


def test_installed_wheel_imports_outside_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    names = _module_names()
    code = (
        "import importlib, sg2v\n"
        f"assert sg2v.__file__.startswith({str(site)!r}), sg2v.__file__\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "print('ok', len(" + repr(names) + "))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")


def _requirements(wheel: Path) -> dict[str | None, set[str]]:
    """The wheel's Requires-Dist by extra (None: the base install), as distribution names."""
    import re

    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    out: dict[str | None, set[str]] = {}
    for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        out.setdefault(extra.group(1) if extra else None, set()).add(name)
    return out


def test_onnx_runtime_is_an_extra_and_never_two_of_them(wheel):
    reqs = _requirements(wheel)
    ort = {"onnxruntime", "onnxruntime-gpu"}
    assert not reqs[None] & ort, "ONNX Runtime must not be a base dependency (one ORT per environment)"
    assert reqs["cpu"] >= {"onnxruntime"}
    assert reqs["gpu"] >= {"onnxruntime-gpu", "cupy-cuda12x"}
    assert reqs["gpu-cuda13"] >= {"onnxruntime-gpu", "cupy-cuda13x"}
    for extra, names in reqs.items():
        assert len(names & ort) <= 1, f"extra {extra} pulls both ONNX Runtime packages"
        assert not ({"cupy-cuda12x", "cupy-cuda13x"} <= names), f"extra {extra} pulls two CuPy builds"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '".[cpu,' in setup, "scripts/setup.sh must install the cpu extra (the README's commands need ORT)"
