"""The backend table (`sg2v.runtime.backends.SPECS`): factories, availability checks, auto's ladder,
sg2v-run's --backend and the docs all come from it, and a backend added to the table alone joins them."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle

from sg2v.errors import Sg2vError
from sg2v.generation import Backend
from sg2v.runtime import backends
from sg2v.runtime.backends import BACKENDS, LADDER, SPECS, BackendSpec, make_backend
from sg2v.runtime.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(tmp_path, test_seed):
    root, _ = make_fake_bundle(tmp_path / "bundle", seed=test_seed % 1000)
    return Bundle.open(root)


def test_each_factory_takes_what_the_table_passes():
    for spec in SPECS.values():
        assert spec.devices and set(spec.devices) <= {"gpu", "cpu"}
        assert all(kind in spec.devices for _, kind in spec.auto)
        module = __import__(f"sg2v.runtime.backends.{spec.module}", fromlist=[spec.factory])
        kwargs = {"device": "cpu", **({"threads": 1} if spec.threads else {}),
                  **({"ckpt": None} if spec.needs_checkpoint else {})}
        inspect.signature(getattr(module, spec.factory)).bind(object(), **kwargs)


def test_the_ladder_and_the_cli_read_the_table():
    from sg2v.runtime.cli import build_parser

    assert BACKENDS == ("auto", "trt", "ort", "openvino", "torch", "torch-cuda")
    assert [spec.label(kind) for _, kind, spec in LADDER] == ["TensorRT", "ONNX Runtime GPU", "OpenVINO",
                                                              "ONNX Runtime CPU"]
    action = next(a for a in build_parser()._actions if "--backend" in a.option_strings)
    assert tuple(action.choices) == BACKENDS and action.help == backends.backend_help()
    assert action.help.startswith("auto tries TensorRT, then ONNX Runtime GPU, then OpenVINO, then ONNX "
                                  "Runtime CPU; trt: ")
    assert all(f"{s.name}: {s.help}" in action.help for s in SPECS.values())
    assert backends.checkpoint_backends() == ("torch", "torch-cuda")


def test_the_docs_table_is_the_registry():
    """docs/ARCHITECTURE.md's backend table, row for row, from the registry."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("<!-- backends -->")[1].split("<!-- /backends -->")[0]
    rows = re.findall(r"^\| `([\w-]+)` \| (.*) \|$", block, re.M)
    ranks = {s.name: ", ".join(f"{r} {k}" for r, k, t in LADDER if t is s) or "-" for s in SPECS.values()}
    want = [(s.name, f"{', '.join(s.devices)} | {ranks[s.name]} | {'yes' if s.needs_checkpoint else 'no'} | "
             f"{s.help}") for s in SPECS.values()]
    assert rows == want


def test_availability_checks_give_one_line_reasons(monkeypatch):
    from sg2v.runtime.backends import ort

    assert SPECS["torch"].check("cpu") is None  # torch is installed wherever this suite runs
    monkeypatch.setitem(sys.modules, "torch", None)
    assert SPECS["torch-cuda"].check("gpu") == "torch is not installed (pip install 'sg2v[train]')"
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert SPECS["openvino"].check("cpu").startswith("openvino is not installed")
    monkeypatch.setattr(ort, "available_gpu_providers", lambda: [])
    assert SPECS["ort"].check("gpu") == ("this onnxruntime build has no GPU execution providers (install "
                                         "onnxruntime-gpu)")
    assert SPECS["ort"].check("cpu") is None
    monkeypatch.setattr(ort, "available_gpu_providers", lambda: ["CUDAExecutionProvider"])
    assert SPECS["ort"].check("gpu") is None
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: "cupy is not installed")
    assert SPECS["trt"].check("gpu") == "cupy is not installed"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    missing = "onnxruntime is not installed (pip install 'sg2v[cpu]' or 'sg2v[gpu]')"
    assert SPECS["ort"].check("gpu") == SPECS["ort"].check("cpu") == missing


def _record(asked, name, exc=None):
    def make(bundle, device=None, threads=None):
        asked.append((name, device))
        if exc is not None:
            raise exc
        return Backend(name, None, None, notes=[])
    return make


@pytest.fixture
def stand_ins(monkeypatch):
    """TensorRT, ONNX Runtime (GPU providers) and OpenVINO available, each factory recording its calls."""
    from sg2v.runtime.backends import openvino, ort, trt

    asked: list[tuple[str, str | None]] = []
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: None)
    monkeypatch.setattr(ort, "available_gpu_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(openvino, "openvino_unavailable_reason", lambda: None)
    monkeypatch.setattr(trt, "make_trt_backend", _record(asked, "trt", RuntimeError("no engine")))
    monkeypatch.setattr(openvino, "make_openvino_backend", _record(asked, "openvino-cpu", RuntimeError("x")))
    monkeypatch.setattr(ort, "make_ort_backend", lambda bundle, device=None, threads=None: _record(
        asked, "ort-cuda" if device != "cpu" else "ort-cpu", MemoryError("oom") if device is None else None
    )(bundle, device, threads))
    return asked


def test_the_ladder_by_device(fake, stand_ins, capsys):
    """No device: every rung in order, the floor on the CPU; a named GPU: TensorRT then the floor on that GPU;
    the CPU: OpenVINO then the floor, never a GPU rung."""
    b = make_backend(fake, "auto")
    assert stand_ins == [("trt", None), ("ort-cuda", None), ("openvino-cpu", "cpu"), ("ort-cpu", "cpu")]
    assert b.name == "ort-cpu" and b.notes == ["TensorRT skipped: RuntimeError: no engine",
                                               "ONNX Runtime GPU skipped: MemoryError: oom",
                                               "OpenVINO skipped: RuntimeError: x"]
    assert capsys.readouterr().err.splitlines() == [
        "sg2v: warning: the TensorRT backend failed (RuntimeError: no engine); falling back to ONNX Runtime",
        "sg2v: warning: the ONNX Runtime GPU backend failed (MemoryError: oom); falling back to OpenVINO",
        "sg2v: warning: the OpenVINO backend failed (RuntimeError: x); falling back to ONNX Runtime CPU"]
    stand_ins.clear()
    assert make_backend(fake, "auto", device="cuda:1").name == "ort-cuda"
    assert stand_ins == [("trt", "cuda:1"), ("ort-cuda", "cuda:1")]
    assert capsys.readouterr().err.strip().endswith("falling back to ONNX Runtime")
    stand_ins.clear()
    assert make_backend(fake, "auto", device="cpu").name == "ort-cpu"
    assert stand_ins == [("openvino-cpu", "cpu"), ("ort-cpu", "cpu")]


def test_a_backend_added_to_the_table_alone_joins_auto_and_the_named_choices(fake, monkeypatch, capsys):
    """A new spec (its module under sg2v.runtime.backends, a row in SPECS) is tried at its rank, named by
    --backend, described in the help; a failure in it moves auto on with one warning line."""
    from sg2v.runtime.backends import openvino

    module = types.ModuleType("sg2v.runtime.backends.numpy_ref")
    built: list[tuple[str | None, int | None]] = []

    def make_numpy_backend(bundle, device=None, threads=None):
        built.append((device, threads))
        if module.fail:
            raise ValueError("planted")
        return Backend("numpy-cpu", None, None, xp=np, notes=["built"])

    module.make_numpy_backend, module.fail = make_numpy_backend, False
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = BackendSpec("numpy", "NumPy", "numpy_ref", "make_numpy_backend", "a NumPy stand-in", ("cpu",),
                       lambda kind: None, auto=((25, "cpu"),), threads=True)
    specs = {**SPECS, "numpy": spec}
    monkeypatch.setattr(backends, "SPECS", specs)
    monkeypatch.setattr(backends, "BACKENDS", ("auto", *specs))
    monkeypatch.setattr(backends, "LADDER", backends.ladder(specs))
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: "tensorrt is not installed")
    monkeypatch.setattr(openvino, "openvino_unavailable_reason", lambda: "openvino is not installed")
    got = make_backend(fake, "auto", device="cpu", threads=2)
    assert got.name == "numpy-cpu" and built == [("cpu", 2)] and got.notes == ["built"]
    assert make_backend(fake, "numpy").name == "numpy-cpu" and built[-1] == (None, None)
    assert "then NumPy, then OpenVINO" in backends.backend_help() and "numpy: a NumPy stand-in" in \
        backends.backend_help()
    module.fail = True
    capsys.readouterr()
    assert make_backend(fake, "auto", device="cpu").name == "ort-cpu"
    assert capsys.readouterr().err.strip() == ("sg2v: warning: the NumPy backend failed (ValueError: "
                                               "planted); falling back to ONNX Runtime CPU")
    with pytest.raises(Sg2vError, match=r"^the numpy backend failed: ValueError: planted; choose another"):
        make_backend(fake, "numpy")
