"""Backends behind one stage protocol, and the `auto` ladder (TensorRT, ONNX Runtime GPU, OpenVINO, ORT CPU).

A stage is `run(feeds: dict[str, array]) -> dict[str, array]` (docs/ARCHITECTURE.md "Runtime"). Its buffers
are allocated once when the stage is built (or grown once to the largest batch asked for); `run` copies the
feeds into them and returns the stage's own output buffers, which stay valid until the next `run` (callers
copy what they keep). A `Backend` (`sg2v.generation.Backend`) is what the one generation loop drives. Heavy
modules (onnxruntime, cupy, tensorrt, torch) are imported only when a backend is built.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from sg2v.config import threads_problem
from sg2v.errors import Sg2vError, first_line, shown
from sg2v.generation import Backend

# torch: the PyTorch reference (host arrays); torch-cuda: fp16 weights and one CUDA graph per guided step.
# openvino: OpenVINO's CPU plugin on the same ONNX files (the openvino extra).
BACKENDS = ("auto", "trt", "ort", "openvino", "torch", "torch-cuda")


def make_backend(bundle: Any, backend: str = "auto", device: str | None = None, threads: int | None = None,
                 ckpt: str | None = None) -> Backend:
    """Build `backend` for `bundle`; `auto` tries TensorRT, ONNX Runtime GPU, OpenVINO, ORT CPU.

    A backend named here that fails in any way (a TensorRT, CuPy or CUDA exception as much as an Sg2vError)
    raises one Sg2vError line naming the cause; `auto` moves on to the next backend instead."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise Sg2vError(f"unknown backend {shown(backend)}; choose one of {list(BACKENDS)}")
    problem = None if threads is None else threads_problem(threads, flag="threads")
    if problem:
        raise Sg2vError(problem)
    if backend == "auto":
        return _auto(bundle, device, threads)
    try:
        return _make_named(bundle, backend, device, threads, ckpt)
    except Sg2vError:
        raise
    except Exception as e:  # KeyboardInterrupt and SystemExit are not Exceptions: they pass
        raise Sg2vError(f"the {backend} backend failed: {failure(e)}; choose another --backend (auto falls "
                        "back to the next one that works)") from e


def failure(e: BaseException) -> str:
    """`Type: first line` of an exception, for one-line reports of a backend that failed."""
    return first_line(e) if isinstance(e, Sg2vError) else f"{type(e).__name__}: {first_line(e)}"


def _make_named(bundle: Any, backend: str, device: str | None, threads: int | None,
                ckpt: str | None) -> Backend:
    if backend == "ort":
        from sg2v.runtime.backends.ort import make_ort_backend

        return make_ort_backend(bundle, device=device, threads=threads)
    if backend == "openvino":
        from sg2v.runtime.backends.openvino import make_openvino_backend

        return make_openvino_backend(bundle, device=device, threads=threads)
    if backend == "trt":
        from sg2v.runtime.backends.trt import make_trt_backend

        return make_trt_backend(bundle, device=device)
    if backend == "torch":
        from sg2v.runtime.backends.torch_ref import make_torch_backend

        return make_torch_backend(bundle, device=device, ckpt=ckpt, threads=threads)
    if backend == "torch-cuda":
        from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

        return make_torch_cuda_backend(bundle, device=device or "cuda", ckpt=ckpt, threads=threads)
    raise AssertionError(backend)


def _auto(bundle: Any, device: str | None, threads: int | None) -> Backend:
    """TensorRT, then ONNX Runtime on its GPU providers, then on the CPU OpenVINO (where installed) or ONNX
    Runtime; any exception of a rung's construction, whose first run it includes, moves on with one warning
    line."""
    from sg2v.runtime.backends import ort

    notes: list[str] = []
    gpu = device is None or device.startswith("cuda")
    if gpu:
        reason = trt_unavailable_reason()
        if reason is None:
            from sg2v.runtime.backends.trt import make_trt_backend

            result = _rung(lambda: make_trt_backend(bundle, device=device), "TensorRT", "ONNX Runtime", notes)
            if result is not None:
                return result
        else:
            notes.append(f"TensorRT skipped: {reason}")
    if device is None and _ort_has_gpu(ort):
        result = _rung(lambda: ort.make_ort_backend(bundle, device=None, threads=threads),
                       "ONNX Runtime GPU", "ONNX Runtime CPU", notes)
        if result is None:
            device = "cpu"
    else:
        result = None
    if result is None and device in (None, "cpu"):
        from sg2v.runtime.backends import openvino

        reason = openvino.openvino_unavailable_reason()
        if reason is None:
            result = _rung(lambda: openvino.make_openvino_backend(bundle, device=device, threads=threads),
                           "OpenVINO", "ONNX Runtime CPU", notes)
        else:
            notes.append(f"OpenVINO skipped: {reason}")
    if result is None:
        try:
            result = ort.make_ort_backend(bundle, device=device, threads=threads)
        except Sg2vError:
            raise
        except Exception as e:  # the last rung: one line, as a named backend's failure
            raise Sg2vError(f"no backend works here; ONNX Runtime failed last: {failure(e)}") from e
    result.notes[:0] = notes
    return result


def _rung(make: Callable[[], Backend], name: str, then: str, notes: list[str]) -> Backend | None:
    """`make()`, or None after one warning line on stderr when it raises any Exception."""
    try:
        return make()
    except Exception as e:  # TensorRT, CuPy and CUDA raise their own types; the ladder moves on for all
        notes.append(f"{name} skipped: {failure(e)}")
        print(f"sg2v: warning: the {name} backend failed ({failure(e)}); falling back to {then}",
              file=sys.stderr)
        return None


def _ort_has_gpu(ort: Any) -> bool:
    """Whether the installed onnxruntime offers a GPU provider (False when it does not even import)."""
    try:
        return bool(ort.available_gpu_providers())
    except Exception:  # no onnxruntime: the CPU rung says so in one line
        return False


def trt_unavailable_reason() -> str | None:
    """None when TensorRT 10.3+ and `cupy` import and a CUDA device is visible, else why not (one line)."""
    for mod in ("tensorrt", "cupy"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a broken install or an import hook that refuses it
            found = False
        if not found:
            return f"{mod} is not installed"
        if mod == "tensorrt":
            problem = _tensorrt_problem()
            if problem:
                return problem
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # cupy raises its own CUDARuntimeError types when there is no driver
        return f"no usable CUDA device ({type(e).__name__})"
    return None


def _tensorrt_problem() -> str | None:
    """Why the installed `tensorrt` cannot serve (too old, or it does not import), else None."""
    try:
        import tensorrt

        from sg2v.runtime.engines import tensorrt_version_problem

        return tensorrt_version_problem(getattr(tensorrt, "__version__", "?"))
    except Exception as e:  # a broken install: missing libnvinfer, mismatched CUDA libraries
        return f"tensorrt does not import ({type(e).__name__}: {first_line(e)})"
