"""Backends behind one stage protocol, and the `auto` ladder (TensorRT, ONNX Runtime GPU, OpenVINO, ORT CPU).

A stage is `run(feeds: dict[str, array]) -> dict[str, array]` (docs/ARCHITECTURE.md "Runtime"). Its buffers
are allocated once when the stage is built (or grown once to the largest batch asked for); `run` copies the
feeds into them and returns the stage's own output buffers, which stay valid until the next `run` (callers
copy what they keep). A `Backend` (`sg2v.generation.Backend`) is what the one generation loop drives. Heavy
modules (onnxruntime, cupy, tensorrt, torch) are imported only when a backend is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sg2v.config import threads_problem
from sg2v.errors import Sg2vError, first_line, shown
from sg2v.generation import Backend


@dataclass(frozen=True)
class BackendSpec:
    """One backend of the table: how to build it, when it can run, where `auto` tries it, what it is."""

    name: str  # the --backend value
    title: str  # in auto's notes and warnings
    module: str  # sg2v.runtime.backends.<module>, imported only when the backend is built
    factory: str  # its function (bundle, device=..., [threads=...], [ckpt=...]) -> Backend
    help: str  # one line for --help and the docs
    devices: tuple[str, ...]  # "gpu", "cpu": what it runs on
    check: Callable[[str], str | None]  # (device kind) -> None when it can run here, else why not (one line)
    auto: tuple[tuple[int, str], ...] = ()  # (rank, device kind) of each rung in auto's ladder; () never
    threads: bool = False  # the factory takes threads=
    needs_checkpoint: bool = False  # PyTorch weights: --ckpt or the bundle's model.safetensors
    default_device: str | None = None  # the device asked for when none is named
    extra: str = "gpu"  # the pip extra named when its library is missing

    def make(self, bundle: Any, device: str | None, threads: int | None, ckpt: str | None) -> Backend:
        """The backend, its module imported now (its factory looked up at call time)."""
        kwargs: dict[str, Any] = {"device": device if device is not None else self.default_device}
        if self.threads:
            kwargs["threads"] = threads
        if self.needs_checkpoint:
            kwargs["ckpt"] = ckpt
        module = importlib.import_module(f"{__name__}.{self.module}")
        factory: Callable[..., Backend] = getattr(module, self.factory)
        return factory(bundle, **kwargs)

    def label(self, kind: str) -> str:
        """The title, with the device kind where the backend runs on both."""
        return f"{self.title} {kind.upper()}" if len(self.devices) > 1 else self.title


def _trt_check(kind: str) -> str | None:
    return trt_unavailable_reason()


def _ort_check(kind: str) -> str | None:
    try:
        found = importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):  # a broken install or an import hook that refuses it
        found = False
    if not found:
        return "onnxruntime is not installed (pip install 'sg2v[cpu]' or 'sg2v[gpu]')"
    if kind == "gpu" and not _ort_has_gpu(importlib.import_module(f"{__name__}.ort")):
        return "this onnxruntime build has no GPU execution providers (install onnxruntime-gpu)"
    return None


def _openvino_check(kind: str) -> str | None:
    from sg2v.runtime.backends.openvino import openvino_unavailable_reason

    return openvino_unavailable_reason()


def _torch_check(kind: str) -> str | None:
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "torch is not installed (pip install 'sg2v[train]')"


# The one table of backends: --backend's choices and help, auto's ladder and the docs come from it.
SPECS = {s.name: s for s in (
    BackendSpec("trt", "TensorRT", "trt", "make_trt_backend",
                "TensorRT engines built for this GPU (cached in the bundle), CUDA-graph replay (needs "
                "tensorrt and cupy)", ("gpu",), _trt_check, auto=((10, "gpu"),)),
    BackendSpec("ort", "ONNX Runtime", "ort", "make_ort_backend",
                "ONNX Runtime on its GPU providers when it has them, else on the CPU", ("gpu", "cpu"),
                _ort_check, auto=((20, "gpu"), (40, "cpu")), threads=True),
    BackendSpec("openvino", "OpenVINO", "openvino", "make_openvino_backend",
                "OpenVINO's CPU plugin on the same ONNX files (the openvino extra)", ("cpu",),
                _openvino_check, auto=((30, "cpu"),), threads=True),
    BackendSpec("torch", "PyTorch", "torch_ref", "make_torch_backend",
                "the PyTorch reference (host arrays), weights from --ckpt or the bundle's model.safetensors",
                ("cpu", "gpu"), _torch_check, threads=True, needs_checkpoint=True, extra="train"),
    BackendSpec("torch-cuda", "PyTorch CUDA", "torch_cuda", "make_torch_cuda_backend",
                "PyTorch on CUDA with fp16 weights and one CUDA graph per guided step", ("gpu",),
                _torch_check, threads=True, needs_checkpoint=True, default_device="cuda", extra="train"),
)}
BACKENDS = ("auto", *SPECS)


def ladder(specs: dict[str, BackendSpec]) -> tuple[tuple[int, str, BackendSpec], ...]:
    """auto's ladder: every (rank, device kind, spec) rung of the table by rank; the last one is the floor
    (it runs whatever the device, and its failure is the error)."""
    rungs = ((rank, kind, s) for s in specs.values() for rank, kind in s.auto)
    return tuple(sorted(rungs, key=lambda r: r[0]))


LADDER = ladder(SPECS)


def backend_help() -> str:
    """--backend's help: auto's ladder, then each backend's line."""
    ladder = ", then ".join(spec.label(kind) for _, kind, spec in LADDER)
    return f"auto tries {ladder}; " + "; ".join(f"{s.name}: {s.help}" for s in SPECS.values())


def checkpoint_backends() -> tuple[str, ...]:
    """The backends that run PyTorch weights (they take --ckpt)."""
    return tuple(s.name for s in SPECS.values() if s.needs_checkpoint)


def make_backend(bundle: Any, backend: str = "auto", device: str | None = None, threads: int | None = None,
                 ckpt: str | None = None) -> Backend:
    """Build `backend` for `bundle`; `auto` walks `LADDER` (TensorRT, ONNX Runtime GPU, OpenVINO, ORT CPU).

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
        return SPECS[backend].make(bundle, device, threads, ckpt)
    except Sg2vError:
        raise
    except Exception as e:  # KeyboardInterrupt and SystemExit are not Exceptions: they pass
        raise Sg2vError(f"the {backend} backend failed: {failure(e)}; choose another --backend (auto falls "
                        "back to the next one that works)") from e


def failure(e: BaseException) -> str:
    """`Type: first line` of an exception, for one-line reports of a backend that failed."""
    return first_line(e) if isinstance(e, Sg2vError) else f"{type(e).__name__}: {first_line(e)}"


def _auto(bundle: Any, device: str | None, threads: int | None) -> Backend:
    """The ladder's rungs in rank order: a GPU rung where no device or a CUDA one is named, a CPU rung where
    none or the CPU is (on the CPU); any exception of a rung's construction, whose first run it includes,
    moves on with one warning line; backends other than the floor's that cannot run here are noted."""
    floor = LADDER[-1][2]
    notes: list[str] = []
    failed_gpu = False
    for i, (_, kind, spec) in enumerate(LADDER[:-1]):
        reason = _rung_skip(kind, spec, floor, device, failed_gpu)
        if reason is not None:
            if reason and spec is not floor:
                notes.append(f"{spec.label(kind)} skipped: {reason}")
            continue
        then = _next_label(LADDER[i + 1:], floor, device, failed_gpu or spec is floor)
        result = _rung(partial(spec.make, bundle, _rung_device(kind, device), threads, None),
                       spec.label(kind), then, notes)
        if result is not None:
            result.notes[:0] = notes
            return result
        failed_gpu = failed_gpu or (kind == "gpu" and spec is floor)
    try:
        result = floor.make(bundle, "cpu" if device is None else device, threads, None)
    except Sg2vError:
        raise
    except Exception as e:  # the last rung: one line, as a named backend's failure
        raise Sg2vError(f"no backend works here; {floor.title} failed last: {failure(e)}") from e
    result.notes[:0] = notes
    return result


def _rung_skip(kind: str, spec: BackendSpec, floor: BackendSpec, device: str | None,
               failed_gpu: bool) -> str | None:
    """None when the rung runs, "" when it does not apply to `device`, else why its backend cannot run."""
    if kind == "gpu" and not (device is None or device.startswith("cuda")):
        return ""
    if kind == "cpu" and device not in (None, "cpu"):
        return ""
    if spec is floor and kind == "gpu" and (device is not None or failed_gpu):
        return ""  # a named GPU: the floor runs this backend there
    return spec.check(kind) or None


def _rung_device(kind: str, device: str | None) -> str | None:
    return "cpu" if kind == "cpu" and device is None else device


def _next_label(rest: tuple[tuple[int, str, BackendSpec], ...], floor: BackendSpec, device: str | None,
                failed_gpu: bool) -> str:
    """What the ladder tries next after a failure, for the warning line."""
    for _, kind, spec in rest[:-1]:
        if _rung_skip(kind, spec, floor, device, failed_gpu) is None:
            return spec.title if spec is floor else spec.label(kind)
    return floor.label("cpu") if device in (None, "cpu") else floor.title


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
