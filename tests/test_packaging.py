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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(ROOT)],
        check=True,
    )
    (whl,) = out.glob("sg2v-*.whl")
    return whl


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
