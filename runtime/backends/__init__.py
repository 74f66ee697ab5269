"""Backends behind one stage protocol, and the `auto` ladder (TensorRT, ONNX Runtime GPU, ONNX Runtime CPU).

A stage is `run(feeds: dict[str, array]) -> dict[str, array]` (docs/ARCHITECTURE.md "Runtime"). Its buffers
are allocated once when the stage is built (or grown once to the largest batch asked for); `run` copies the
feeds into them and returns the stage's own output buffers, which stay valid until the next `run` (callers
copy what they keep). A `Backend` (`sg2v.generation.Backend`) is what the one generation loop drives. Heavy
modules (onnxruntime, cupy, tensorrt, torch) are imported only when a backend is built.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from sg2v.config import threads_problem
from sg2v.errors import Sg2vError, shown
from sg2v.generation import Backend

# torch: the PyTorch reference (host arrays); torch-cuda: fp16 weights and one CUDA graph per guided step.
BACKENDS = ("auto", "trt", "ort", "torch", "torch-cuda")


def make_backend(bundle: Any, backend: str = "auto", device: str | None = None, threads: int | None = None,
                 ckpt: str | None = None) -> Backend:
    """Build `backend` for `bundle`; `auto` tries TensorRT, then ONNX Runtime GPU providers, then ORT CPU."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise Sg2vError(f"unknown backend {shown(backend)}; choose one of {list(BACKENDS)}")
    problem = None if threads is None else threads_problem(threads, flag="threads")
    if problem:
        raise Sg2vError(problem)
    if backend == "ort":
        from sg2v.runtime.backends.ort import make_ort_backend

        return make_ort_backend(bundle, device=device, threads=threads)
    if backend == "trt":
        from sg2v.runtime.backends.trt import make_trt_backend

        return make_trt_backend(bundle, device=device)
    if backend == "torch":
        from sg2v.runtime.backends.torch_ref import make_torch_backend

        return make_torch_backend(bundle, device=device, ckpt=ckpt, threads=threads)
    if backend == "torch-cuda":
        from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

        return make_torch_cuda_backend(bundle, device=device or "cuda", ckpt=ckpt, threads=threads)
    return _auto(bundle, device, threads)


def _auto(bundle: Any, device: str | None, threads: int | None) -> Backend:
    notes = []
    if device in (None, "cuda") or (device or "").startswith("cuda"):
        reason = trt_unavailable_reason()
        if reason is None:
            from sg2v.runtime.backends.trt import make_trt_backend

            try:
                return make_trt_backend(bundle, device=device)
            except Sg2vError as e:
                # The ladder's promise is "best available": a TensorRT build failure must not stop generation.
                notes.append(f"TensorRT skipped: {e}")
                warnings.warn(f"sg2v: TensorRT backend failed, falling back to ONNX Runtime: {e}",
                              stacklevel=3)
        else:
            notes.append(f"TensorRT skipped: {reason}")
    from sg2v.runtime.backends.ort import make_ort_backend

    result = make_ort_backend(bundle, device=device, threads=threads)
    result.notes[:0] = notes
    return result


def trt_unavailable_reason() -> str | None:
    """None when `tensorrt` and `cupy` import and a CUDA device is visible, else why not (one line)."""
    for mod in ("tensorrt", "cupy"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a broken install or an import hook that refuses it
            found = False
        if not found:
            return f"{mod} is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # cupy raises its own CUDARuntimeError types when there is no driver
        return f"no usable CUDA device ({type(e).__name__})"
    return None
