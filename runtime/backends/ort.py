"""ONNX Runtime backend: one InferenceSession per stage, IO binding to buffers allocated once.

The stages are the encoder, the UNet and, for a layout-grounded bundle (format 3), the layout network, whose
batch axis holds candidate layouts (rows vary from round to round of the relation check). The encoder's and
the layout network's sessions sit idle while the UNet runs, so their threads sleep instead of spinning
(`session.intra_op.allow_spinning` 0: spinning ones compete with the UNet's first step); the UNet's keep
spinning, which its back-to-back steps want.

On CPU the inputs and outputs are bound to numpy arrays made once, so `run` copies the feeds into the input
buffers, runs, and hands back the same output arrays every call (no per-call allocation of I/O). A stage with
a batch axis (bundle format 2) allocates its buffers for the largest batch asked for so far (grown, never
shrunk) and binds a contiguous prefix of them for a smaller batch; a format-1 stage has one fixed batch. When
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

from sg2v import bundle_spec as spec
from sg2v.config import parse_device
from sg2v.errors import BundleError, MissingDependencyError, Sg2vError, first_line
from sg2v.generation import Backend

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class OrtStage:
    """A stage on ONNX Runtime with inputs and outputs bound to buffers allocated once (grown for a larger
    batch on a stage with a batch axis)."""

    def __init__(self, path: Path, io: dict[str, Any], providers: list[Any], threads: int | None = None,
                 xp: Any = np, device_type: str = "cpu", device_id: int = 0, max_rows: int = 1,
                 spin: bool = True):
        from sg2v.runtime.onnx_guard import check_onnx_file

        ort = _ort()
        # Every shape static and bounded at each batch size 1..max_rows, before ONNX Runtime folds constants.
        check_onnx_file(path, io["inputs"], max_rows)
        self.max_rows = max_rows
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime picks (one per physical core)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4  # fatal only: errors reach the user as exceptions, in one line
        if not spin:  # a stage idle while another runs: its threads sleep rather than spin against that one
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            if f"{spec.PLUGIN_DOMAIN}:{spec.PLUGIN_OP}" in str(e) or spec.PLUGIN_OP in str(e):
                raise BundleError(f"ONNX Runtime has no kernel for the {spec.PLUGIN_DOMAIN}::"
                                  f"{spec.PLUGIN_OP} plugin node in {path}; run the bundle with sg2v's ort "
                                  "backend (its encoder runs the pooling itself) or --backend trt, or export "
                                  "with --pooling portable") from None
            raise BundleError(f"ONNX Runtime cannot load {path} ({first_line(e)}); the file is corrupt or "
                              "needs a newer onnxruntime: pip install -U onnxruntime, or re-export the bundle"
                              ) from None
        self.path = path
        self.xp = xp
        self.providers = self.session.get_providers()
        self._check_io(io)
        self.io = io
        self.binding = self.session.io_binding()
        self._device = (device_type, device_id)
        self.dynamic = isinstance(io["inputs"][0]["shape"][0], str)  # a named batch axis (format 2)
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.capacity = self.rows = 0
        if not self.dynamic:
            self._allocate(int(io["inputs"][0]["shape"][0]))
            self._bind(self.capacity)

    def _allocate(self, rows: int) -> None:
        """Buffers for `rows` batch rows, every input and output (dim 0 is the batch)."""
        self.inputs = {d["name"]: _empty(self.xp, d, rows) for d in self.io["inputs"]}
        self.outputs = {d["name"]: _empty(self.xp, d, rows) for d in self.io["outputs"]}
        self.capacity, self.rows = rows, 0

    def _bind(self, rows: int) -> None:
        """Bind the first `rows` rows of every buffer (a contiguous prefix: same address, shorter dim 0)."""
        device_type, device_id = self._device
        for bind, bufs in ((self.binding.bind_input, self.inputs), (self.binding.bind_output, self.outputs)):
            for name, buf in bufs.items():
                bind(name, device_type, device_id, buf.dtype.type, [rows, *buf.shape[1:]], _ptr(buf))
        self.rows = rows

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
        missing = [name for name in (d["name"] for d in self.io["inputs"]) if name not in feeds]
        if missing:
            raise Sg2vError(f"{self.path.name}: feed {missing[0]!r} is missing; the stage takes "
                            f"{sorted(d['name'] for d in self.io['inputs'])}")
        rows = self.capacity
        if self.dynamic:
            rows = int(getattr(feeds[self.io["inputs"][0]["name"]], "shape", (0,))[0])
            if not 1 <= rows <= self.max_rows:
                raise Sg2vError(f"{self.path.name}: {rows} rows, the stage was checked for 1 to "
                                f"{self.max_rows}; pass fewer graphs per call")
            if rows > self.capacity:
                self._allocate(rows)
            if rows != self.rows:
                self._bind(rows)
        for name, buf in self.inputs.items():
            _copy_into(buf[:rows], feeds[name], self.xp)
        if self._device[0] != "cpu":
            # CuPy wrote the inputs on its stream; ONNX Runtime reads them on its own.
            self.xp.cuda.get_current_stream().synchronize()
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as e:  # onnxruntime raises its own Fail/RuntimeException/InvalidArgument types
            raise BundleError(f"ONNX Runtime failed running {self.path.name} ({first_line(e)[:300]}); "
                              "the graph cannot run with the manifest's settings (a modified manifest or "
                              "graph?): re-export the bundle") from None
        return {name: buf[:rows] for name, buf in self.outputs.items()} if self.dynamic else self.outputs


def stage_rows(bundle: Any, stage: str) -> int:
    """The most rows a stage's batch axis takes in one call (its fixed batch in format 1)."""
    first = bundle.stages[stage]["inputs"][0]["shape"][0]
    if isinstance(first, int):
        return first
    return int(bundle.max_batch) * spec.rows_per_video(stage, bundle.shapes)


def _empty(xp: Any, d: dict[str, Any], rows: int) -> Any:
    return xp.empty((rows, *d["shape"][1:]), dtype=_DTYPES[d["dtype"]])


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
    kind, index = parse_device(device)
    device_id = index or 0
    gpu = [] if kind == "cpu" else available_gpu_providers()
    if kind == "cuda" and not gpu:
        raise Sg2vError(f"--device {device}: this onnxruntime has no GPU providers (it has "
                        f"{_ort().get_available_providers()}); install onnxruntime-gpu "
                        "or use --device cpu")
    if gpu:
        return _gpu_backend(bundle, gpu, device_id, threads)
    providers = ["CPUExecutionProvider"]
    encoder, notes = _encoder_stage(bundle, providers, threads, np, "cpu", device_id)
    unet = OrtStage(bundle.stage_file("unet"), bundle.stages["unet"], providers, threads,
                    max_rows=stage_rows(bundle, "unet"))
    return Backend("ort-cpu", encoder, unet, np, max_batch=bundle.max_batch, notes=notes,
                   layout=_layout_stage(bundle, providers, threads, np, "cpu", device_id))


def _layout_stage(bundle: Any, providers: list[Any], threads: int | None, xp: Any, device_type: str,
                  device_id: int) -> OrtStage | None:
    """The layout network of a grounded bundle (its batch axis: candidate layouts), else None."""
    if not bundle.grounded:
        return None
    stage = spec.LAYOUT_STAGE
    return OrtStage(bundle.stage_file(stage), bundle.stages[stage], providers, threads, xp, device_type,
                    device_id, max_rows=stage_rows(bundle, stage), spin=False)


def _encoder_stage(bundle: Any, providers: list[Any], threads: int | None, xp: Any, device_type: str,
                   device_id: int) -> tuple[Any, list[str]]:
    """The encoder stage: its ONNX graph, or for plugin bundles sg2v's own encoder (`plugin_encoder`)."""
    if bundle.pooling != "plugin":
        return OrtStage(bundle.stage_file("encoder"), bundle.stages["encoder"], providers, threads, xp,
                        device_type, device_id, max_rows=stage_rows(bundle, "encoder"), spin=False), []
    return plugin_encoder(bundle, xp, device_id, "ONNX Runtime")


def plugin_encoder(bundle: Any, xp: Any, device_id: int, runner: str) -> tuple[Any, list[str]]:
    """A plugin bundle's encoder for a backend (`runner`) with no kernel for `sg2v::ScatterMeanPool`, and its
    note: `sg2v.runtime.gpu_encoder` (the SGEncoder forward on `encoder_weights.npz`), with CuPy on the GPU
    through the CUDA kernels in `cuda/` when `xp` is CuPy, else the numpy mirror on the CPU. It computes in
    float32 whatever the bundle's precision.
    """
    from sg2v.runtime import gpu_encoder as ge

    path = bundle.file(spec.ENCODER_WEIGHTS)
    if not bundle.has_file(spec.ENCODER_WEIGHTS):
        raise BundleError(f"bundle {bundle.path} has plugin pooling but no {spec.ENCODER_WEIGHTS}, which "
                          f"{runner} needs for its encoder; re-export it, or run it with --backend trt")
    weights = ge.load_encoder_weights(path)
    ge.check_against_config(weights, bundle.config.encoder.num_layers, bundle.shapes["context_dim"],
                            str(path), num_objs=bundle.config.encoder.num_objs,
                            num_preds=bundle.config.encoder.num_preds)
    why = f"{runner} cannot run the ScatterMeanPool plugin node"
    if xp is np:
        return ge.NumpyEncoder(weights, objects=bundle.grounded), [f"encoder: sg2v's numpy encoder ({why})"]
    return (ge.GpuEncoder(weights, device=device_id, objects=bundle.grounded),
            [f"encoder: sg2v's CUDA kernels through CuPy ({why})"])


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
        layout = _layout_stage(bundle, providers, threads, xp, device_type, device_id)
        unet = OrtStage(bundle.stage_file("unet"), bundle.stages["unet"], providers, threads, xp,
                        device_type, device_id, max_rows=stage_rows(bundle, "unet"))
    used = unet.providers[0]
    names = {"TensorrtExecutionProvider": "ort-tensorrt", "CUDAExecutionProvider": "ort-cuda"}
    name = names.get(used, "ort-cpu")
    sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
    stream_ctx = (lambda: xp.cuda.Device(device_id)) if xp is not np else contextlib.nullcontext
    return Backend(name, encoder, unet, xp, max_batch=bundle.max_batch, synchronize=sync,
                   stream_context=stream_ctx, notes=notes, layout=layout)


ORT_MISSING = ("no ONNX Runtime is installed; install one: pip install 'sg2v[cpu]' (CPU) or 'sg2v[gpu]' "
               "(onnxruntime-gpu + CuPy, NVIDIA GPUs), or on a Jetson NVIDIA's onnxruntime-gpu wheel for its "
               "JetPack")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(f"{ORT_MISSING} ({e})") from None
    return onnxruntime
