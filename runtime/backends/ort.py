"""ONNX Runtime backend: one InferenceSession per stage, IO binding to buffers allocated once.

On CPU the inputs and outputs are bound to numpy arrays made at load time, so `run` copies the feeds into the
input buffers, runs, and hands back the same output arrays every call (no per-call allocation of I/O). When
onnxruntime-gpu exposes the TensorRT or CUDA execution provider, that provider runs the graph; with CuPy
present the buffers are CuPy device arrays bound by pointer (the sampler then runs on the GPU), without CuPy
they are the same host arrays and ONNX Runtime copies across. The GPU paths follow the documented IO-binding
API but are unverified here: the project's machines have the CPU build of ONNX Runtime only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from sg2v.runtime.backends import Backend

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, MissingDependencyError, Sg2vError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class OrtStage:
    """A stage on ONNX Runtime with inputs and outputs bound once to preallocated buffers."""

    def __init__(self, path: Path, io: dict[str, Any], providers: list[Any], threads: int | None = None,
                 xp: Any = np, device_type: str = "cpu", device_id: int = 0):
        from sg2v.runtime.onnx_guard import check_onnx_file

        ort = _ort()
        check_onnx_file(path)  # bound what the file makes ONNX Runtime allocate, before it folds constants
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime picks (one per physical core)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: the CPU build warns about every unused provider option
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            if f"{spec.PLUGIN_DOMAIN}:{spec.PLUGIN_OP}" in str(e) or spec.PLUGIN_OP in str(e):
                raise BundleError(f"ONNX Runtime has no kernel for the {spec.PLUGIN_DOMAIN}::"
                                  f"{spec.PLUGIN_OP} plugin node in {path}; run the bundle with sg2v's ort "
                                  "backend (its encoder runs the pooling itself) or --backend trt, or export "
                                  "with --pooling portable") from None
            raise BundleError(f"ONNX Runtime cannot load {path} ({_first_line(e)}); the file is corrupt or "
                              "needs a newer onnxruntime: pip install -U onnxruntime, or re-export the bundle"
                              ) from None
        self.path = path
        self.xp = xp
        self.providers = self.session.get_providers()
        self._check_io(io)
        self.inputs = {d["name"]: _empty(xp, d) for d in io["inputs"]}
        self.outputs = {d["name"]: _empty(xp, d) for d in io["outputs"]}
        self.binding = self.session.io_binding()
        for name, buf in self.inputs.items():
            self.binding.bind_input(name, device_type, device_id, buf.dtype.type, list(buf.shape), _ptr(buf))
        for name, buf in self.outputs.items():
            self.binding.bind_output(name, device_type, device_id, buf.dtype.type, list(buf.shape), _ptr(buf))
        self._device = device_type != "cpu"

    def _check_io(self, io: dict[str, Any]) -> None:
        got = {i.name: i.shape for i in self.session.get_inputs()}, {o.name: o.shape for o in
                                                                      self.session.get_outputs()}
        want = ({d["name"]: d["shape"] for d in io["inputs"]}, {d["name"]: d["shape"] for d in io["outputs"]})
        for kind, g, w in (("inputs", got[0], want[0]), ("outputs", got[1], want[1])):
            if set(g) != set(w):
                raise BundleError(f"{self.path}: graph {kind} {sorted(g)} differ from the manifest's "
                                  f"{sorted(w)}; re-export the bundle")
            for name, shape in g.items():
                # Symbolic dims (strings) are allowed; fixed ones must equal the manifest's.
                fixed_ok = all(not isinstance(a, int) or a == b for a, b in zip(shape, w[name]))
                if len(shape) != len(w[name]) or not fixed_ok:
                    raise BundleError(f"{self.path}: {kind[:-1]} {name!r} has shape {shape}, the manifest "
                                      f"says {w[name]}; re-export the bundle")

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Copy `feeds` into the bound inputs, run, return the bound outputs (valid until the next run)."""
        for name, buf in self.inputs.items():
            try:
                value = feeds[name]
            except KeyError:
                raise Sg2vError(f"{self.path.name}: feed {name!r} is missing; the stage takes "
                                f"{sorted(self.inputs)}") from None
            _copy_into(buf, value, self.xp)
        if self._device:
            # CuPy wrote the inputs on its stream; ONNX Runtime reads them on its own.
            self.xp.cuda.get_current_stream().synchronize()
        self.session.run_with_iobinding(self.binding)
        return self.outputs


def _empty(xp: Any, d: dict[str, Any]) -> Any:
    return xp.empty(tuple(d["shape"]), dtype=_DTYPES[d["dtype"]])


def _copy_into(buf: Any, value: Any, xp: Any) -> None:
    if tuple(getattr(value, "shape", ())) != buf.shape:
        raise Sg2vError(f"feed has shape {tuple(getattr(value, 'shape', ()))}, the stage expects {buf.shape}")
    if xp is np:
        np.copyto(buf, value, casting="same_kind")
    elif isinstance(value, np.ndarray):
        buf.set(np.ascontiguousarray(value, dtype=buf.dtype))
    else:
        xp.copyto(buf, value, casting="same_kind")


def _ptr(buf: Any) -> int:
    return buf.ctypes.data if isinstance(buf, np.ndarray) else buf.data.ptr


def available_gpu_providers() -> list[str]:
    """The GPU execution providers this onnxruntime build offers, best first."""
    ort = _ort()
    have = set(ort.get_available_providers())
    return [p for p in GPU_PROVIDERS if p in have]


def make_ort_backend(bundle: Any, device: str | None = None, threads: int | None = None) -> Backend:
    """ONNX Runtime on the GPU providers when `device` allows and the build has them, else on the CPU."""
    device_id = _device_id(device)
    gpu = [] if device == "cpu" else available_gpu_providers()
    if device is not None and device != "cpu" and not gpu:
        raise Sg2vError(f"--device {device}: this onnxruntime has no GPU providers (it has "
                        f"{_ort().get_available_providers()}); install onnxruntime-gpu "
                        "or use --device cpu")
    if gpu:
        return _gpu_backend(bundle, gpu, device_id, threads)
    providers = ["CPUExecutionProvider"]
    encoder, notes = _encoder_stage(bundle, providers, threads, np, "cpu", device_id)
    unet = OrtStage(bundle.stage_file("unet"), bundle.stages["unet"], providers, threads)
    return Backend("ort-cpu", encoder, unet, np, notes=notes)


def _encoder_stage(bundle: Any, providers: list[Any], threads: int | None, xp: Any, device_type: str,
                   device_id: int) -> tuple[Any, list[str]]:
    """The encoder stage: its ONNX graph, or for plugin bundles sg2v's own encoder on the bundle's weights.

    ONNX Runtime has no kernel for `sg2v::ScatterMeanPool`, so a plugin bundle's encoder runs as
    `sg2v.runtime.gpu_encoder` (the SGEncoder forward on `encoder_weights.npz`): with CuPy on the GPU through
    the CUDA kernels in `cuda/`, else the numpy mirror on the CPU. It computes in float32 whatever the
    bundle's precision.
    """
    if bundle.pooling != "plugin":
        return OrtStage(bundle.stage_file("encoder"), bundle.stages["encoder"], providers, threads, xp,
                        device_type, device_id), []
    from sg2v.runtime import gpu_encoder as ge

    path = bundle.file(spec.ENCODER_WEIGHTS)
    if not bundle.has_file(spec.ENCODER_WEIGHTS):
        raise BundleError(f"bundle {bundle.path} has plugin pooling but no {spec.ENCODER_WEIGHTS}, which "
                          "ONNX Runtime needs for its encoder; re-export it, or run it with --backend trt")
    weights = ge.load_encoder_weights(path)
    ge.check_against_config(weights, bundle.config.encoder.num_layers, bundle.shapes["context_dim"],
                            str(path))
    why = "ONNX Runtime cannot run the ScatterMeanPool plugin node"
    if xp is np:
        return ge.NumpyEncoder(weights), [f"encoder: sg2v's numpy encoder ({why})"]
    return ge.GpuEncoder(weights, device=device_id), [f"encoder: sg2v's CUDA kernels through CuPy ({why})"]


def _gpu_backend(bundle: Any, gpu: list[str], device_id: int, threads: int | None) -> Backend:
    providers: list[Any] = []
    for p in gpu:
        if p == "TensorrtExecutionProvider":
            cache = Path(bundle.engines_dir) / "ort-trt-cache"
            with contextlib.suppress(OSError):
                cache.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache, os.W_OK)
            providers.append((p, {"device_id": device_id, "trt_engine_cache_enable": writable,
                                  "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": writable}))
        else:
            providers.append((p, {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    try:
        import cupy as xp

        device_type = "cuda"
    except ImportError:
        xp, device_type = np, "cpu"  # host buffers; ONNX Runtime copies them to and from the device
    ctx = xp.cuda.Device(device_id) if xp is not np else contextlib.nullcontext()
    with ctx:
        encoder, notes = _encoder_stage(bundle, providers, threads, xp, device_type, device_id)
        unet = OrtStage(bundle.stage_file("unet"), bundle.stages["unet"], providers, threads, xp,
                        device_type, device_id)
    used = unet.providers[0]
    names = {"TensorrtExecutionProvider": "ort-tensorrt", "CUDAExecutionProvider": "ort-cuda"}
    name = names.get(used, "ort-cpu")
    sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
    stream_ctx = (lambda: xp.cuda.Device(device_id)) if xp is not np else contextlib.nullcontext
    return Backend(name, encoder, unet, xp, synchronize=sync, stream_context=stream_ctx, notes=notes)


def _device_id(device: str | None) -> int:
    if device is None or device in ("cpu", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise Sg2vError(f"--device {device!r} is not understood; use cpu, cuda or cuda:N")


ORT_MISSING = ("no ONNX Runtime is installed; install one: pip install 'sg2v[cpu]' (CPU) or 'sg2v[gpu]' "
               "(onnxruntime-gpu + CuPy, NVIDIA GPUs), or on a Jetson NVIDIA's onnxruntime-gpu wheel for its "
               "JetPack")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(f"{ORT_MISSING} ({e})") from None
    return onnxruntime


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
