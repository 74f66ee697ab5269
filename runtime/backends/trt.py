"""TensorRT backend: engines, CuPy buffers at fixed addresses, CUDA-graph replay of the UNet step.

Written against the documented TensorRT 10.x / 11 Python API (Runtime.deserialize_cuda_engine, name-based
tensor I/O, set_input_shape, set_tensor_address, execute_async_v3) and CuPy's stream capture, and
UNVERIFIED: TensorRT cannot be installed on this project's machines. Every tensor gets one CuPy buffer, for
the bundle's largest batch, when the stage is built and the engine is bound to those addresses once, so the
UNet's `execute_async_v3` is captured into a CUDA graph (one per batch size) and each denoiser step is a copy
of x into the fixed input buffer plus one graph launch on the pipeline's stream; the sampler's arithmetic
runs on CuPy on the same stream, so nothing crosses to the host inside the loop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError, require
from sg2v.generation import Backend


class TrtStage:
    """One engine with an execution context bound once to CuPy buffers; optional CUDA-graph replay.

    With a batch axis (bundle format 2) the buffers hold `max_rows` rows and stay bound at their addresses;
    a call of fewer rows sets the inputs' shapes (`set_input_shape`) and uses a prefix of each buffer, and
    each row count gets its own CUDA graph, captured on first use."""

    def __init__(self, plan_path: Path, io: dict[str, Any], runtime: Any, stream: Any, max_rows: int = 0,
                 graphs: bool = False):
        self.trt = require("tensorrt", "trt")
        self.cp = require("cupy", "gpu")
        self.path = Path(plan_path)
        self.stream = stream
        self.runtime = runtime  # an engine must not outlive the runtime that deserialized it
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT {self.trt.__version__} cannot load {self.path} (another TensorRT "
                              "version or a corrupt plan); rebuild with: python -m sg2v.export.tensorrt "
                              "<bundle> --force")
        self.context = self.engine.create_execution_context()
        want = {d["name"]: d for d in io["inputs"] + io["outputs"]}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted(want):
            raise BundleError(f"{self.path}: engine tensors {sorted(names)} differ from the manifest's "
                              f"{sorted(want)}; rebuild with --force")
        self.dynamic = isinstance(io["inputs"][0]["shape"][0], str)  # a named batch axis (format 2)
        self.capacity = int(max_rows) if self.dynamic else int(io["inputs"][0]["shape"][0])
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        for name in names:
            shape = (self.capacity, *(int(n) for n in want[name]["shape"][1:]))
            is_input = self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            buf = self.cp.empty(shape, dtype=dtype)
            self.context.set_tensor_address(name, buf.data.ptr)
            (self.inputs if is_input else self.outputs)[name] = buf
        self.rows = 0
        self._set_rows(self.capacity)
        self.use_graphs = graphs
        self.graphs: dict[int, Any] = {}
        self.graph_note = "not captured"

    def _set_rows(self, rows: int) -> None:
        """Set every input's shape to `rows` rows (dim 0) where the engine's shapes are dynamic."""
        for name, buf in self.inputs.items():
            if any(d < 0 for d in self.engine.get_tensor_shape(name)) and \
                    not self.context.set_input_shape(name, (rows, *buf.shape[1:])):
                raise Sg2vError(f"{self.path.name}: TensorRT refused input {name!r} at {rows} rows (outside "
                                "the engine's optimisation profile); rebuild with: python -m "
                                "sg2v.export.tensorrt <bundle> --force")
        self.rows = rows

    @property
    def graph(self) -> Any:
        """The CUDA graph of the current row count, if captured."""
        return self.graphs.get(self.rows)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise Sg2vError(f"TensorRT execution of {self.path.name} failed; see the TensorRT log")

    def capture(self) -> None:
        """Capture one execution at the current row count into a CUDA graph; later runs of that many rows
        replay it (the addresses never change)."""
        with self.stream:
            self._execute()  # the first enqueue does lazy setup that must not land inside the capture
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    self._execute()
                finally:
                    graph = self.stream.end_capture()
                self.graphs[self.rows] = graph
                self.graph_note = "CUDA graph captured"
            except Exception as e:  # some plugins or TensorRT versions cannot be captured: run uncaptured
                self.use_graphs = False
                self.graph_note = f"CUDA graph capture failed ({type(e).__name__}: {e}); running uncaptured"

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Copy feeds into the bound inputs on the stream, launch, return the bound (device) outputs."""
        cp = self.cp
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise Sg2vError(f"{self.path.name}: feed {missing[0]!r} is missing; the stage takes "
                            f"{sorted(self.inputs)}")
        rows = int(feeds[next(iter(self.inputs))].shape[0]) if self.dynamic else self.capacity
        if not 1 <= rows <= self.capacity:
            raise Sg2vError(f"{self.path.name}: a batch of {rows} rows; the engine takes 1 to "
                            f"{self.capacity} (the bundle's max_batch)")
        if rows != self.rows:
            self._set_rows(rows)
        for name, buf in self.inputs.items():
            value, dst = feeds[name], buf[:rows]
            if value is buf or value is dst:
                continue
            if isinstance(value, np.ndarray):
                dst.set(np.ascontiguousarray(value, dtype=buf.dtype), stream=self.stream)
            else:
                with self.stream:
                    cp.copyto(dst, value, casting="same_kind")
        if self.use_graphs and rows not in self.graphs:
            self.capture()
        if self.use_graphs:
            self.graphs[rows].launch(self.stream)
        else:
            self._execute()
        return {name: buf[:rows] for name, buf in self.outputs.items()} if self.dynamic else self.outputs


def make_trt_backend(bundle: Any, device: str | None = None, engine_dir: str | None = None,
                     build: bool = True) -> Backend:
    """Engines for this machine (built once into the bundle's engines/ cache), bound and graph-captured."""
    from sg2v.export import tensorrt as trt_build

    trt = require("tensorrt", "trt")
    cp = require("cupy", "gpu")
    device_id = 0 if device in (None, "cuda") else _device_id(device)
    with cp.cuda.Device(device_id):
        fingerprint = trt_build.current_fingerprint(bundle.precision, device_id)
        if engine_dir is not None:
            trt_build.check_engine_dir(engine_dir, fingerprint)
            plans = {s: Path(engine_dir) / f"{s}{trt_build.PLAN_SUFFIX}" for s in spec.STAGE_FILES}
        elif build:
            plans = trt_build.build_engines(bundle, device_id)
        else:
            found = trt_build.engine_dir(bundle, fingerprint)
            trt_build.check_engine_dir(found, fingerprint)
            plans = {s: found / f"{s}{trt_build.PLAN_SUFFIX}" for s in spec.STAGE_FILES}
        if bundle.pooling == "plugin":
            trt_build.register_plugins()  # the plan names the plugin; it must be registered before loading
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept alive by the stages' engines
        stream = cp.cuda.Stream(non_blocking=True)  # capture needs a stream other than the legacy default
        videos = bundle.max_batch
        encoder = TrtStage(plans[spec.ENCODER_STAGE], bundle.stages[spec.ENCODER_STAGE], runtime, stream,
                           videos)
        unet = TrtStage(plans[spec.UNET_STAGE], bundle.stages[spec.UNET_STAGE], runtime, stream, 2 * videos,
                        graphs=True)
        unet._set_rows(2)
        unet.capture()  # one video's step now; other batch sizes are captured on first use

    @contextlib.contextmanager
    def on_stream():
        with cp.cuda.Device(device_id), stream:
            yield

    def close() -> None:
        unet.graphs.clear()  # the graphs hold the context's kernels; release them before the engines go
        encoder.context = unet.context = None
        encoder.engine = unet.engine = None

    return Backend("trt", encoder, unet, cp, max_batch=videos, stream_context=on_stream,
                   synchronize=stream.synchronize, notes=[f"engines {plans[spec.UNET_STAGE].parent}",
                                                         unet.graph_note], close=close)


def _device_id(device: str) -> int:
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise Sg2vError(f"--device {device!r} is not understood for TensorRT; use cuda or cuda:N")
