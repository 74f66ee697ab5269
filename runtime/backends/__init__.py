"""Backends behind one stage protocol, and the `auto` ladder (TensorRT, ONNX Runtime GPU, ONNX Runtime CPU).

A stage is `run(feeds: dict[str, array]) -> dict[str, array]` (docs/ARCHITECTURE.md "Runtime"). Its buffers
are allocated once when the stage is built; `run` copies the feeds into them and returns the stage's own
output buffers, which stay valid until the next `run` (callers copy what they keep). Heavy modules
(onnxruntime, cupy, tensorrt, torch) are imported only when a backend is built.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sg2v.errors import Sg2vError

BACKENDS = ("auto", "trt", "ort", "torch")


class Stage(Protocol):
    """One exported graph (encoder or UNet) with its buffers allocated once."""

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class Backend:
    """The two stages of a bundle on one device, with the array module their outputs live in."""

    name: str  # e.g. "ort-cpu", "ort-cuda", "trt", "torch-cpu"
    encoder: Stage
    unet: Stage
    xp: Any = np  # numpy, or cupy when the stages hand back device arrays
    null_context: tuple[np.ndarray, np.ndarray] | None = None  # overrides the bundle's (torch with --ckpt)
    stream_context: Callable[[], Any] = contextlib.nullcontext  # the CUDA stream the pipeline's array ops use
    synchronize: Callable[[], None] = lambda: None  # wait for queued device work (for honest timings)
    notes: list[str] = field(default_factory=list)  # how the ladder got here (fallbacks, capture status)
    close: Callable[[], None] = lambda: None


def make_backend(bundle: Any, backend: str = "auto", device: str | None = None, threads: int | None = None,
                 ckpt: str | None = None) -> Backend:
    """Build `backend` for `bundle`; `auto` tries TensorRT, then ONNX Runtime GPU providers, then ORT CPU."""
    if backend not in BACKENDS:
        raise Sg2vError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "ort":
        from sg2v.runtime.backends.ort import make_ort_backend

        return make_ort_backend(bundle, device=device, threads=threads)
    if backend == "trt":
        from sg2v.runtime.backends.trt import make_trt_backend

        return make_trt_backend(bundle, device=device)
    if backend == "torch":
        from sg2v.runtime.backends.torch_ref import make_torch_backend

        return make_torch_backend(bundle, device=device, ckpt=ckpt, threads=threads)
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
