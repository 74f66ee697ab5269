"""TensorRT backend: engines, CuPy buffers at fixed addresses, CUDA-graph replay of the UNet step.

Written against the TensorRT 10.3 to 11.1 Python API (Runtime.deserialize_cuda_engine, name-based tensor
I/O, set_input_shape, set_tensor_address, execute_async_v3, USER_MANAGED contexts with set_device_memory;
names checked in NVIDIA/TensorRT's python/src/infer/pyCore.cpp at v10.3.0 and v11.1) and CuPy's stream
capture, and UNVERIFIED on a GPU: TensorRT cannot be installed on this project's machines; tests drive it
with stand-ins. TensorRT older than 10.3 is refused. Every tensor gets one CuPy buffer, for the bundle's
largest batch, bound by address, so the UNet's `execute_async_v3` is captured into a CUDA graph, one per
batch size, each on its own execution context whose shapes are set once (a graph replayed after its
context's shapes changed is undefined), and each denoiser step is a copy of x into the fixed input buffer
plus one graph launch on the pipeline's stream; the sampler's arithmetic runs on CuPy on the same stream, so
nothing crosses to the host inside the loop. A layout-grounded bundle's layout engine runs uncaptured on one
context (its row count changes from round to round); its candidates go to the host once per round for the
relation check. Building the backend runs every engine once, so a failing first enqueue surfaces there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError, require
from sg2v.generation import Backend


class TrtStage:
    """One engine bound once to CuPy buffers, with optional CUDA-graph replay.

    With a batch axis (bundle format 2) the buffers hold `max_rows` rows and stay at their addresses; a call
    of fewer rows sets the inputs' shapes (`set_input_shape`) and uses a prefix of each buffer. A CUDA graph
    is tied to the shapes and state its execution context had when it was captured, so a stage with graphs
    keeps one execution context per row count, each with its own shapes set once and its own graph, and never
    changes a context's shapes after capturing it. The contexts share one scratch allocation (they run one
    after another on one stream). A stage without graphs keeps one context and resets its shapes."""

    def __init__(self, plan_path: Path, io: dict[str, Any], runtime: Any, stream: Any,
                 bindings: dict[str, str] | None = None, max_rows: int = 0, graphs: bool = False):
        from sg2v.runtime.engines import engine_io_mismatches, require_tensorrt

        self.trt = require_tensorrt()
        self.cp = require("cupy", "gpu")
        self.path = Path(plan_path)
        self.stream = stream
        self.runtime = runtime  # an engine must not outlive the runtime that deserialized it
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT {self.trt.__version__} cannot load {self.path} (another TensorRT "
                              "version or a corrupt plan); rebuild with: python -m sg2v.export.tensorrt "
                              "<bundle> --force")
        # One scratch allocation for every context of this engine (USER_MANAGED, TensorRT >= 10.1).
        self._scratch_bytes = int(self.engine.device_memory_size_v2)
        self._scratch = self.cp.empty(max(self._scratch_bytes, 256), dtype=np.uint8)
        # Engine tensor name -> manifest name (Torch-TensorRT plans may name outputs output0, output1, ...).
        rename = dict(bindings or {})
        want = {d["name"]: d for d in io["inputs"] + io["outputs"]}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(rename.get(n, n) for n in names) != sorted(want):
            raise BundleError(f"{self.path}: engine tensors {sorted(names)} differ from the manifest's "
                              f"{sorted(want)}; rebuild with --force")
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        first = next(n for n in names if is_input[n])
        engine_rows = int(self.engine.get_tensor_shape(first)[0])  # -1 on a dynamic batch axis
        # A batch axis needs both: a named one in the manifest (format 2) and a dynamic one in the engine
        # (plans built with fixed shapes, e.g. by the Torch-TensorRT route, take their one batch).
        self.dynamic = isinstance(io["inputs"][0]["shape"][0], str) and engine_rows < 0
        fixed_rows = engine_rows if engine_rows > 0 else io["inputs"][0]["shape"][0]
        self.capacity = int(max_rows) if self.dynamic else int(fixed_rows)
        self._engine_names = {rename.get(n, n): n for n in names if is_input[n]}  # manifest -> engine name
        self._shapes = {m: (self.capacity, *(int(d) for d in want[m]["shape"][1:]))
                        for m in (rename.get(n, n) for n in names)}  # manifest name -> shape at capacity
        self.per_rows = graphs  # one context per row count (graphs), else one context reshaped per call
        self.contexts: dict[int, Any] = {}
        self.rows = 0
        self.context = self._new_context()
        self._set_shapes(self.context, self.capacity)
        self.contexts[self.capacity] = self.context
        self.rows = self.capacity
        have = {rename.get(n, n): (tuple(int(d) for d in self.context.get_tensor_shape(n)),
                                   np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n))).name)
                for n in names}
        at_capacity = {kind: [dict(d, shape=list(self._shapes[d["name"]])) for d in io[kind]]
                       for kind in ("inputs", "outputs")}
        wrong = engine_io_mismatches(have, at_capacity)
        if wrong:
            raise BundleError(f"{self.path}: engine I/O differs from the manifest ({'; '.join(wrong)}); "
                              "rebuild with: python -m sg2v.export.tensorrt <bundle> --force")
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self._addresses: dict[str, int] = {}  # engine tensor name -> buffer address, bound on every context
        for name in names:
            shape, dtype = have[rename.get(name, name)]
            buf = self.cp.zeros(shape, dtype=dtype)  # zeros: a first run before any feed reads valid indices
            self._addresses[name] = buf.data.ptr
            (self.inputs if is_input[name] else self.outputs)[rename.get(name, name)] = buf
        self._bind(self.context)
        self.use_graphs = graphs
        self.graphs: dict[int, Any] = {}  # row count -> CUDA graph captured on self.contexts[row count]
        self.graph_note = "not captured"

    def _new_context(self) -> Any:
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED  # scratch set below, shared
        context = self.engine.create_execution_context(strategy)
        if context is None:
            raise Sg2vError(f"TensorRT cannot create an execution context for {self.path.name} (out of GPU "
                            "memory?); free GPU memory or use a smaller --batch")
        context.set_device_memory(self._scratch.data.ptr, self._scratch_bytes)
        return context

    def _bind(self, context: Any) -> None:
        for name, address in self._addresses.items():
            context.set_tensor_address(name, address)

    def _set_shapes(self, context: Any, rows: int) -> None:
        """Set every input's shape on `context` to `rows` rows (dim 0) where the engine's axis is dynamic."""
        for name, engine_name in self._engine_names.items():
            shape = (rows, *self._shapes[name][1:])
            if any(d < 0 for d in self.engine.get_tensor_shape(engine_name)) and \
                    not context.set_input_shape(engine_name, shape):
                raise Sg2vError(f"{self.path.name}: TensorRT refused input {name!r} at {rows} rows (outside "
                                "the engine's optimisation profile); rebuild with: python -m "
                                "sg2v.export.tensorrt <bundle> --force")

    def set_rows(self, rows: int) -> None:
        """Make `rows` rows the current shape: its own context (made and bound on first use) with graphs, else
        the one context's input shapes reset."""
        if rows == self.rows:
            return
        if self.per_rows:
            if rows not in self.contexts:
                context = self._new_context()
                self._bind(context)
                self._set_shapes(context, rows)
                self.contexts[rows] = context
            self.context = self.contexts[rows]
        else:
            self._set_shapes(self.context, rows)
            self.contexts = {rows: self.context}
        self.rows = rows

    @property
    def graph(self) -> Any:
        """The CUDA graph of the current row count, if captured."""
        return self.graphs.get(self.rows)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise Sg2vError(f"TensorRT execution of {self.path.name} failed; see the TensorRT log")

    def warm(self) -> None:
        """Run once at the current rows on whatever the buffers hold and wait, so that a failing first
        enqueue (out of memory, a driver or plugin error) surfaces while the backend is being built."""
        with self.stream:
            self._execute()
        self.stream.synchronize()

    def capture(self) -> None:
        """Capture one execution of the current row count's context into a CUDA graph; later runs of that
        many rows replay it (the addresses and that context's shapes never change)."""
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
        self.set_rows(rows)
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

    def release(self) -> None:
        """Drop the graphs, then the contexts, then the engine (graphs hold the contexts' kernels)."""
        self.graphs.clear()
        self.contexts.clear()
        self.context = self.engine = None


def make_trt_backend(bundle: Any, device: str | None = None, engine_dir: str | None = None,
                     build: bool = True) -> Backend:
    """Engines for this machine (built once into the bundle's engines/ cache), bound and graph-captured."""
    from sg2v.runtime import engines as trt_build

    trt = trt_build.require_tensorrt()  # TensorRT 10.3 or newer, else one line naming what to use instead
    cp = require("cupy", "gpu")
    device_id = 0 if device in (None, "cuda") else _device_id(device)
    with cp.cuda.Device(device_id):
        fingerprint = trt_build.current_fingerprint(bundle.precision, device_id)
        sources = trt_build.engine_sources(bundle)
        plugin = bundle.pooling == "plugin"
        kernel_sha, driver_cuda = trt_build._plugin_checks(bundle) if plugin else (None, None)
        if engine_dir is None and build:
            plans = trt_build.build_engines(bundle, device_id)
            folder = next(iter(plans.values())).parent
        else:
            folder = Path(engine_dir) if engine_dir is not None else trt_build.engine_dir(bundle, fingerprint)
            plans = {s: folder / f"{s}{trt_build.PLAN_SUFFIX}" for s in bundle.stages}
        # Every path: the plans must fit this machine, this bundle's graphs, and (AOT) kernel and driver.
        info = trt_build.check_engine_dir(folder, fingerprint, sources=sources, kernel_sha256=kernel_sha,
                                          driver_cuda=driver_cuda)
        if plugin and info.get("route", trt_build.ROUTE_ONNX) == trt_build.ROUTE_ONNX:
            trt_build.register_plugins()  # the plan names the plugin; it must be registered before loading
        given = info.get("bindings")
        bindings = given if isinstance(given, dict) else {}
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept alive by the stages' engines
        stream = cp.cuda.Stream(non_blocking=True)  # capture needs a stream other than the legacy default
        encoder = TrtStage(plans[spec.ENCODER_STAGE], bundle.stages[spec.ENCODER_STAGE], runtime, stream,
                           bindings.get(spec.ENCODER_STAGE), bundle.max_batch)
        per_video = spec.rows_per_video(spec.UNET_STAGE, bundle.shapes)  # 2 (cond, uncond), a student's 1
        unet = TrtStage(plans[spec.UNET_STAGE], bundle.stages[spec.UNET_STAGE], runtime, stream,
                        bindings.get(spec.UNET_STAGE), per_video * bundle.max_batch, graphs=True)
        layout = None
        if bundle.grounded:  # rows vary from round to round of the relation check: no CUDA graphs
            layout = TrtStage(plans[spec.LAYOUT_STAGE], bundle.stages[spec.LAYOUT_STAGE], runtime, stream,
                              bindings.get(spec.LAYOUT_STAGE), bundle.shapes["max_layout_batch"])
        videos = min(encoder.capacity, unet.capacity // per_video)  # what both stages take per call
        # First use here, so that a failing enqueue stops the build (and `auto` moves on), not a generation.
        for stage in (encoder, layout):
            if stage is not None:
                stage.set_rows(1 if stage.dynamic else stage.capacity)
                stage.warm()
        unet.set_rows(per_video)
        unet.capture()  # one video's step now; other batch sizes are captured on first use
        stream.synchronize()

    @contextlib.contextmanager
    def on_stream() -> Iterator[None]:
        with cp.cuda.Device(device_id), stream:
            yield

    def close() -> None:
        for stage in (unet, encoder, layout):
            if stage is not None:
                stage.release()

    return Backend("trt", encoder, unet, cp, max_batch=videos, stream_context=on_stream,
                   synchronize=stream.synchronize, notes=[f"engines {plans[spec.UNET_STAGE].parent}",
                                                         unet.graph_note], close=close, layout=layout)


def _device_id(device: str) -> int:
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise Sg2vError(f"--device {device!r} is not understood for TensorRT; use cuda or cuda:N")
