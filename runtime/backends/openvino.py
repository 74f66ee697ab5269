"""OpenVINO backend (CPU): the bundle's ONNX stages compiled with fixed shapes, one model per batch size.

OpenVINO reads the same ONNX files as ONNX Runtime. The encoder and the UNet compile a static-shape model for
one video's rows when the backend is built and for any other batch size the first time it is asked for, and
keep each (with its infer request) for the life of the backend; the
layout network, whose rows (candidate layouts) change from round to round, compiles once with its batch axis
dynamic. With a writable
`engines/` folder in the bundle, OpenVINO's own model cache there makes later processes skip the compile.
Inference runs in float32 (the precision hint is pinned: OpenVINO would otherwise pick bf16 on CPUs that have
it). `run` copies the feeds into the request's input tensors and returns its output tensors as numpy views,
valid until the next `run` on that batch size, as the stage protocol asks.
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

OV_MISSING = "OpenVINO is not installed; install it: pip install 'sg2v[openvino]'"
CACHE_SUBDIR = "openvino-cache"


class OvStage:
    """A stage on OpenVINO's CPU plugin: one compiled static-shape model and infer request per batch size,
    or (`per_batch` False: a stage whose rows change from call to call) one model compiled with the batch axis
    dynamic."""

    def __init__(self, core: Any, path: Path, io: dict[str, Any], threads: int | None = None,
                 per_batch: bool = True, first_rows: int | None = None):
        from sg2v.runtime.onnx_guard import check_onnx_file

        check_onnx_file(path)  # bound what the file makes the reader allocate
        try:
            self.model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
            if spec.PLUGIN_OP in str(e):
                raise BundleError(f"OpenVINO has no kernel for the {spec.PLUGIN_DOMAIN}::{spec.PLUGIN_OP} "
                                  f"plugin node in {path}; export with --pooling portable or use "
                                  "--backend ort") from None
            raise BundleError(f"OpenVINO cannot read {path} ({first_line(e)}); the file is corrupt or "
                              "needs a newer openvino: pip install -U openvino, or re-export the bundle"
                              ) from None
        self.core, self.path, self.io = core, path, io
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                       "NUM_STREAMS": 1}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.names = [d["name"] for d in io["inputs"]]
        self.out_names = [d["name"] for d in io["outputs"]]
        self._check_io()
        self.dynamic = isinstance(io["inputs"][0]["shape"][0], str)  # a named batch axis (format 2)
        self.requests: dict[int, Any] = {}  # batch rows -> infer request of the model compiled for them
        self.any_rows = None  # the request of the dynamic-batch model (per_batch False)
        if not self.dynamic:
            self._request(int(io["inputs"][0]["shape"][0]))
        elif not per_batch:
            self.any_rows = self._compile(self.model, "any batch")
        elif first_rows:  # one video's rows, compiled now rather than inside the first generation
            self._request(int(first_rows))

    def _check_io(self) -> None:
        got_in = {p.get_any_name() for p in self.model.inputs}
        got_out = {n for p in self.model.outputs for n in p.get_names()}
        if got_in != set(self.names) or not set(self.out_names) <= got_out:
            raise BundleError(f"{self.path}: graph inputs {sorted(got_in)} / outputs differ from the "
                              f"manifest's {sorted(self.names)} -> {self.out_names}; re-export the bundle")

    def _request(self, rows: int) -> Any:
        """The infer request for `rows` batch rows, compiling the static-shape model the first time."""
        request = self.requests.get(rows)
        if request is None:
            model = self.model.clone()
            model.reshape({d["name"]: [rows, *d["shape"][1:]] for d in self.io["inputs"]})
            request = self.requests[rows] = self._compile(model, f"batch {rows}")
        return request

    def _compile(self, model: Any, what: str) -> Any:
        try:
            return self.core.compile_model(model, "CPU", self.config).create_infer_request()
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
            raise BundleError(f"OpenVINO cannot compile {self.path.name} for {what} ({first_line(e)}); use "
                              "--backend ort") from None

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Copy `feeds` into the request's input tensors, run, return its output tensors (valid until the
        next run on this batch size)."""
        missing = [name for name in self.names if name not in feeds]
        if missing:
            raise Sg2vError(f"{self.path.name}: feed {missing[0]!r} is missing; the stage takes "
                            f"{sorted(self.names)}")
        first = feeds[self.names[0]]
        rows = int(getattr(first, "shape", (0,))[0]) if self.dynamic else next(iter(self.requests))
        if self.any_rows is not None:
            return self._run_any(feeds, rows)
        request = self._request(rows)
        for name in self.names:
            buf = request.get_tensor(name).data
            value = feeds[name]
            if tuple(getattr(value, "shape", ())) != buf.shape:
                raise Sg2vError(f"feed {name!r} has shape {tuple(getattr(value, 'shape', ()))}, the stage "
                                f"expects {buf.shape}")
            np.copyto(buf, value, casting="same_kind")
        request.infer()
        return {name: request.get_tensor(name).data for name in self.out_names}

    def _run_any(self, feeds: dict[str, Any], rows: int) -> dict[str, Any]:
        """`run` on the dynamic-batch model: the feeds copied in as tensors of `rows` rows."""
        inputs = {}
        for d in self.io["inputs"]:
            value = feeds[d["name"]]
            want = (rows, *d["shape"][1:])
            if tuple(getattr(value, "shape", ())) != want:
                raise Sg2vError(f"feed {d['name']!r} has shape {tuple(getattr(value, 'shape', ()))}, the "
                                f"stage expects {want}")
            inputs[d["name"]] = np.ascontiguousarray(value, dtype=np.dtype(d["dtype"]))
        request = self.any_rows
        assert request is not None  # run() calls this only with the dynamic-batch model compiled
        request.infer(inputs)
        return {name: request.get_tensor(name).data for name in self.out_names}


def openvino_unavailable_reason() -> str | None:
    """None when `openvino` can be imported, else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"openvino is not installed ({first_line(e)})"
    return None


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError(f"{OV_MISSING} ({e})") from None
    return openvino


def make_openvino_backend(bundle: Any, device: str | None = None, threads: int | None = None) -> Backend:
    """The bundle's stages on OpenVINO's CPU plugin (float32, static shapes per batch size)."""
    kind, _ = parse_device(device)
    if kind == "cuda":
        raise Sg2vError(f"--device {device}: the openvino backend runs on the CPU; use --device cpu, or "
                        "--backend trt / ort for a GPU")
    ov = _ov()
    core = ov.Core()
    cache = Path(bundle.engines_dir) / CACHE_SUBDIR
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
    notes = []
    if cache.is_dir() and os.access(cache, os.W_OK):
        core.set_property({"CACHE_DIR": str(cache)})
    else:
        notes.append(f"openvino: no model cache ({cache} is not writable): every process compiles again")
    if bundle.pooling == "plugin":
        from sg2v.runtime.backends.ort import _encoder_stage

        # The portable encoder's math on the bundle's weights (numpy): no OpenVINO kernel for the plugin.
        encoder, enc_notes = _encoder_stage(bundle, [], threads, np, "cpu", 0)
        notes += enc_notes
    else:
        encoder = OvStage(core, bundle.stage_file(spec.ENCODER_STAGE), bundle.stages[spec.ENCODER_STAGE],
                          threads, first_rows=1)
    unet = OvStage(core, bundle.stage_file(spec.UNET_STAGE), bundle.stages[spec.UNET_STAGE], threads,
                   first_rows=spec.rows_per_video(spec.UNET_STAGE, bundle.shapes))
    layout = None
    if bundle.grounded:
        # Its rows (candidate layouts) change from round to round: one dynamic-batch model, not one per count.
        layout = OvStage(core, bundle.stage_file(spec.LAYOUT_STAGE), bundle.stages[spec.LAYOUT_STAGE],
                         threads, per_batch=False)
    return Backend("openvino-cpu", encoder, unet, np, max_batch=bundle.max_batch, notes=notes, layout=layout)
