"""The runtime is torch-free: in a subprocess where importing torch (and onnx, cupy, tensorrt) raises, the
runtime imports and `sg2v-run` generates a video end to end on ONNX Runtime, the same frames as in-process,
for ungrounded bundles and for the layout-grounded chain."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph

from sg2v.runtime import Pipeline

BLOCKED = ("torch", "onnx", "onnxscript", "cupy", "tensorrt", "safetensors")

# A sys.meta_path finder that refuses the blocked top-level packages, as if they were not installed.
BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked for the lean-import test: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""

LEAN_MODULES = ("sg2v.runtime", "sg2v.runtime.bundle", "sg2v.runtime.pipeline", "sg2v.runtime.backends",
                "sg2v.runtime.backends.ort", "sg2v.runtime.backends.trt", "sg2v.runtime.backends.torch_ref",
                "sg2v.runtime.cli", "sg2v.export.bench", "sg2v.runtime.onnx_guard", "sg2v.runtime.engines",
                "sg2v.export.tensorrt",
                "sg2v.generation", "sg2v.quality", "sg2v.layout_sampler", "sg2v.relations", "sg2v.layout")


def _run(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_blocker_really_blocks():
    r = _run("import torch")
    assert r.returncode != 0 and "blocked for the lean-import test: torch" in r.stderr


def test_runtime_imports_without_heavy_packages():
    code = f"""
import importlib
for name in {LEAN_MODULES!r}:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not heavy, heavy
import sg2v.runtime
print("ok", "onnxruntime" in sys.modules)
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "False"]  # onnxruntime itself loads only when a backend is built


def _sg2v_run_lean(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`sg2v-run ARGS` (the installed console script when there is one) in a torch-blocked interpreter."""
    script = shutil.which("sg2v-run", path=str(Path(sys.executable).parent))
    if script:
        argv = ["sg2v-run", *args]
        launch = f"import runpy; sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"
    else:
        launch = f"from sg2v.runtime.cli import main; sys.exit(main({args!r}))"
    guard = f"""
import atexit
@atexit.register
def _check():
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
    if heavy:
        print("HEAVY MODULES LOADED", heavy)
"""
    return _run(guard + launch, cwd=cwd)


def _check_lean_cli(bundle: Path, tmp_path: Path, steps: int, rng) -> None:
    graph = random_graph(rng)
    (tmp_path / "g.json").write_text(json.dumps(graph))
    args = ["g.json", "--bundle", str(bundle), "--out", "v.npy", "--steps", str(steps), "--seed", "7",
            "--backend", "ort"]
    r = _sg2v_run_lean(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HEAVY MODULES LOADED" not in r.stdout
    assert "backend ort-cpu" in r.stdout and "denoiser" in r.stdout
    want = Pipeline.from_bundle(bundle, backend="ort")(graph, seed=7, steps=steps)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), want)


def test_sg2v_run_without_torch_on_a_small_bundle(tmp_path, test_seed, rng):
    root, _ = make_fake_bundle(tmp_path / "bundle", seed=test_seed % 1000)
    _check_lean_cli(root, tmp_path, steps=3, rng=rng)


def test_sg2v_run_without_torch_invalid_graph_exit_2(tmp_path):
    root, _ = make_fake_bundle(tmp_path / "bundle")
    bad = {"objects": ["red circle", "blue squar"], "relationships": []}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = _sg2v_run_lean(["bad.json", "--bundle", str(root)], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "blue squar" in r.stderr


def test_without_onnx_runtime_sg2v_run_names_the_extras(tmp_path):
    root, _ = make_fake_bundle(tmp_path / "bundle", seed=3)
    (tmp_path / "g.json").write_text(json.dumps(random_graph(np.random.default_rng(3))))
    # OpenVINO runs bundles on the CPU too (auto's CPU rung before ONNX Runtime): block it as well
    block_ort = BLOCKER.replace(repr(BLOCKED), repr((*BLOCKED, "onnxruntime", "openvino")))
    launch = f"from sg2v.runtime.cli import main; sys.exit(main({['g.json', '--bundle', str(root)]!r}))"
    r = subprocess.run([sys.executable, "-c", block_ort + launch], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "no ONNX Runtime is installed" in r.stderr and "sg2v[cpu]" in r.stderr and "sg2v[gpu]" in r.stderr


@pytest.mark.slow
def test_sg2v_run_without_torch_on_an_exported_checkpoint(real_bundle, tmp_path, rng):
    _check_lean_cli(real_bundle, tmp_path, steps=2, rng=rng)


@pytest.mark.slow
def test_sg2v_run_without_torch_on_a_layout_grounded_bundle(grounded_bundle, tmp_path):
    """The whole chain (encoder, layout stage with the relation check, grounded UNet) with torch blocked: the
    frames and the saved tracks of an in-process run, and the saved tracks load again to the same video."""
    graph = {"objects": ["red circle", "blue square", "green triangle"],
             "relationships": [[0, "left of", 1], [2, "above", 0]]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    args = ["g.json", "--bundle", str(grounded_bundle), "--steps", "2", "--seed", "3", "--backend", "ort"]
    r = _sg2v_run_lean([*args, "--out", "v.npy", "--save-layout", "l.json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HEAVY MODULES LOADED" not in r.stdout and "layout " in r.stdout
    want = Pipeline.from_bundle(grounded_bundle, backend="ort").run([graph], [3], steps=2)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), want.frames[0])
    saved = json.loads((tmp_path / "l.json").read_text())
    np.testing.assert_array_equal(np.asarray([saved["layout"][k] for k in ("0", "1", "2")], np.float32),
                                  want.layouts[0].tracks)
    r = _sg2v_run_lean([*args, "--out", "w.npy", "--layout", "l.json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), want.frames[0])


@pytest.mark.slow
def test_sg2v_run_without_torch_on_a_student_bundle(student_bundle, tmp_path):
    """A guidance-distilled student (format 4) with torch blocked: its frames at a guidance of its range equal
    an in-process run's, and a step count it was not distilled for is refused in one line (exit 2)."""
    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    args = ["g.json", "--bundle", str(student_bundle), "--seed", "3", "--backend", "ort", "--guidance", "4"]
    r = _sg2v_run_lean([*args, "--out", "v.npy", "--steps", "1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HEAVY MODULES LOADED" not in r.stdout and "for 1 steps" in r.stdout
    want = Pipeline.from_bundle(student_bundle, backend="ort")(graph, seed=3, steps=1, guidance=4.0)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), want)
    r = _sg2v_run_lean([*args, "--out", "w.npy", "--steps", "25"], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "25 steps: this student was distilled for [1, 2, 4] steps" in r.stderr
    assert not (tmp_path / "w.npy").exists()
