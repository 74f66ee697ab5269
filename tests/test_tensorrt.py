"""TensorRT engine building and the TensorRT backend.

The engine-cache bookkeeping (fingerprint check, ONNX hash check, profiles from the manifest) and the errors
without TensorRT run everywhere. Building and running engines needs `tensorrt` and a GPU: those tests are
marked `trt` and skipped where `import tensorrt` fails; this project's machines cannot install it, so they
have not run here (the TensorRT code is unverified).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, MissingDependencyError, Sg2vError
from sg2v.runtime import Pipeline
from sg2v.runtime import engines as trt_build
from sg2v.runtime.backends import make_backend, trt_unavailable_reason
from sg2v.runtime.bundle import Bundle

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def fake(tmp_path, test_seed):
    return make_fake_bundle(tmp_path / "bundle", seed=test_seed % 1000)


def _write_info(folder, **info):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / trt_build.ENGINE_INFO).write_text(json.dumps(info))


def test_engine_of_another_fingerprint_is_refused(tmp_path):
    mine = spec.engine_fingerprint("NVIDIA Jetson AGX Orin", (8, 7), "10.3.0", "fp16")
    other = spec.engine_fingerprint("NVIDIA H100 80GB HBM3", (9, 0), "10.8.0", "fp16")
    folder = tmp_path / "engines" / other
    _write_info(folder, fingerprint=other, onnx_sha256={"encoder": "a", "unet": "b"})
    with pytest.raises(BundleError, match=rf"built for '{other}', this machine needs '{mine}'.*"
                                          r"python -m sg2v.export.tensorrt"):
        trt_build.check_engine_dir(folder, mine)
    info = trt_build.check_engine_dir(folder, other, {"encoder": "a", "unet": "b"})
    assert info["fingerprint"] == other
    with pytest.raises(BundleError, match="built from other ONNX graphs"):
        trt_build.check_engine_dir(folder, other, {"encoder": "a", "unet": "c"})


def test_engine_dir_without_or_with_corrupt_info(tmp_path):
    with pytest.raises(BundleError, match="no engine.json, so their build target is unknown"):
        trt_build.check_engine_dir(tmp_path, "x")
    (tmp_path / trt_build.ENGINE_INFO).write_text("{not json")
    with pytest.raises(BundleError, match="engine.json is corrupt"):
        trt_build.check_engine_dir(tmp_path, "x")


def test_fingerprint_is_filesystem_safe():
    fp = spec.engine_fingerprint("NVIDIA GeForce RTX 4090 (16GB)", (8, 9), "10.7.0", "fp32")
    assert fp == "nvidia-geforce-rtx-4090-16gb_sm89_trt10.7.0_fp32"


def test_profiles_span_the_batch_axis(fake, tmp_path):
    """min / opt / max over the batch axis: 1, --opt-batch and the bundle's max_batch videos (the UNet's
    rows are 2 per video); a format-1 bundle's fixed shapes as min = opt = max."""
    root, _ = fake
    b = Bundle.open(root)
    s = b.shapes
    frame = (s["frames"], s["channels"], s["height"], s["width"])
    profiles = trt_build.profile_shapes(b, "unet", opt_batch=3)
    assert profiles["x"] == ((2, *frame), (6, *frame), (2 * b.max_batch, *frame))
    assert profiles["t"] == ((2,), (6,), (2 * b.max_batch,))
    enc = trt_build.profile_shapes(b, "encoder")
    o = s["padded_objects"]
    assert enc["objs"] == ((1, o), (1, o), (b.max_batch, o))
    for stage in spec.STAGE_FILES:
        assert set(trt_build.profile_shapes(b, stage)) == {d["name"] for d in b.stages[stage]["inputs"]}
    with pytest.raises(Sg2vError, match="--opt-batch 9"):
        trt_build.profile_shapes(b, "unet", opt_batch=b.max_batch + 5)
    old = Bundle.open(make_fake_bundle(tmp_path / "v1", version=1)[0])
    fixed = trt_build.profile_shapes(old, "unet")["x"]
    assert fixed == ((2, *frame),) * 3


def test_layout_grounded_bundles_get_a_third_engine_with_its_own_profile(grounded_bundle):
    """The layout engine's batch axis spans 1 candidate (a graph's last round) to max_layout_batch, tuned for
    one round per video; its ONNX file is among the sources the plans are checked against."""
    b = Bundle.open(grounded_bundle)
    s = b.shapes
    layout = trt_build.profile_shapes(b, "layout", opt_batch=3)
    assert set(layout) == set(spec.LAYOUT_INPUTS)
    o, f = s["padded_objects"], s["frames"]
    top = s["max_layout_batch"]
    assert layout["x"] == ((1, o, f, 4), (3 * spec.LAYOUT_PER_ROUND, o, f, 4), (top, o, f, 4))
    assert layout["triples"] == tuple((n, s["padded_triples"], 3) for n in (1, 24, top))
    unet = trt_build.profile_shapes(b, "unet", opt_batch=3)
    assert unet["boxes"] == tuple((n, o, f, 4) for n in (2, 6, 2 * b.max_batch))
    assert unet["objects"][2] == (2 * b.max_batch, o, s["object_dim"])
    src = trt_build.engine_sources(b)
    assert src["onnx_sha256"] == {stage: b.manifest["files"][file]["sha256"]
                                  for stage, file in spec.GROUNDED_STAGE_FILES.items()}


def test_the_export_module_is_the_runtime_engine_lifecycle():
    """`sg2v.export.tensorrt` hands out the runtime's objects; `python -m sg2v.export.tensorrt` still runs."""
    import subprocess

    from sg2v.export import tensorrt as export_trt

    names = export_trt.__all__
    assert names and all(getattr(export_trt, n) is getattr(trt_build, n) for n in names)
    r = subprocess.run([sys.executable, "-m", "sg2v.export.tensorrt", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m sg2v.export.tensorrt [-h]")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT errors cannot be shown")
def test_without_tensorrt_errors_name_the_extra(fake, capsys):
    root, _ = fake
    assert trt_unavailable_reason() is not None
    with pytest.raises(MissingDependencyError, match=r"pip install 'sg2v\[trt\]'"):
        trt_build.build_engine(root / spec.ENCODER_ONNX, root / "x.plan", {})
    with pytest.raises(MissingDependencyError, match=r"sg2v\[trt\]"):
        make_backend(Bundle.open(root), "trt")
    assert trt_build.main([str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tensorrt" in err


# ------------------------------------------------------------------------ needs TensorRT and a GPU
def _needs_trt_gpu():
    if not HAVE_TRT:
        pytest.skip("TensorRT cannot be installed here")
    reason = trt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT backend unavailable: {reason}")


@pytest.mark.trt
@pytest.mark.gpu
def test_build_engines_caches_by_fingerprint(fake):
    _needs_trt_gpu()
    root, _ = fake
    b = Bundle.open(root)
    plans = trt_build.build_engines(b)
    fingerprint = trt_build.current_fingerprint(b.precision)
    folder = root / spec.ENGINES_DIR / fingerprint
    assert set(plans) == set(spec.STAGE_FILES)
    assert all(p.parent == folder and p.is_file() for p in plans.values())
    assert (folder / trt_build.TIMING_CACHE).is_file()
    info = trt_build.check_engine_dir(folder, fingerprint)
    assert info["precision"] == b.precision
    stamps = {s: p.stat().st_mtime_ns for s, p in plans.items()}
    again = trt_build.build_engines(b)
    assert {s: p.stat().st_mtime_ns for s, p in again.items()} == stamps  # reused, not rebuilt
    Bundle.open(root)  # engines/ lives outside the manifest's files: the bundle still verifies


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_pipeline_matches_onnx_runtime(fake, rng):
    _needs_trt_gpu()
    import cupy as cp

    root, _ = fake
    trt_pipe = Pipeline.from_bundle(root, backend="trt")
    ort_pipe = Pipeline.from_bundle(root, backend="ort")
    assert trt_pipe.backend_name == "trt"
    graph = random_graph(rng)
    xt, xo = [], []
    f_trt = trt_pipe(graph, seed=5, steps=4, callback=lambda i, t, x, x0: xt.append(cp.asnumpy(x)))
    f_ort = ort_pipe(graph, seed=5, steps=4, callback=lambda i, t, x, x0: xo.append(np.array(x)))
    assert np.abs(xt[-1] - xo[-1]).max() <= 1e-3
    assert np.abs(f_trt.astype(int) - f_ort).max() <= 1
    on_gpu = trt_pipe(graph, seed=5, steps=4, output="cupy")
    assert isinstance(on_gpu, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(on_gpu), f_trt)


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_runs_the_layout_grounded_chain_as_onnx_runtime_does(grounded_bundle, tmp_path, rng):
    """Three engines (the layout engine uncaptured, its rows changing per round) against ONNX Runtime: the
    same number of draws per graph, tracks and frames within float32 rounding (not yet run on a GPU)."""
    _needs_trt_gpu()
    import shutil

    root = shutil.copytree(grounded_bundle, tmp_path / "bundle")
    trt_pipe = Pipeline.from_bundle(root, backend="trt")
    ort_pipe = Pipeline.from_bundle(root, backend="ort")
    assert trt_pipe.backend.layout is not None
    graphs = [random_graph(rng, 3, 2) for _ in range(3)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=3)]
    got, want = trt_pipe.run(graphs, seeds, steps=3), ort_pipe.run(graphs, seeds, steps=3)
    assert [r.draws for r in got.layouts] == [r.draws for r in want.layouts]
    for a, b in zip(got.layouts, want.layouts):
        assert np.abs(a.tracks - b.tracks).max() <= 1e-3
    assert np.abs(got.frames.astype(int) - want.frames).max() <= 2


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_batches_match_single_calls_and_onnx_runtime(fake, rng):
    """A batch of 3 through the engines' batch axis (set_input_shape, a CUDA graph for 6 UNet rows) against
    3 single calls on TensorRT and against ONNX Runtime's batch."""
    _needs_trt_gpu()
    root, _ = fake
    trt_pipe = Pipeline.from_bundle(root, backend="trt")
    ort_pipe = Pipeline.from_bundle(root, backend="ort")
    graphs = [random_graph(rng) for _ in range(3)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=3)]
    batch = trt_pipe.generate(graphs, seeds, steps=3)
    singles = np.stack([trt_pipe(g, seed=s, steps=3) for g, s in zip(graphs, seeds)])
    assert trt_pipe.last_timings["chunks"] == 1 and 6 in trt_pipe.backend.unet.graphs
    assert np.abs(batch.astype(int) - singles).max() <= 1
    assert np.abs(batch.astype(int) - ort_pipe.generate(graphs, seeds, steps=3)).max() <= 1


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_buffers_stay_at_fixed_addresses(fake, rng):
    _needs_trt_gpu()
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="trt")
    unet = pipe.backend.unet
    assert unet.graph is not None, unet.graph_note

    def addresses():
        stages = (pipe.backend.encoder, unet)
        return {n: b.data.ptr for st in stages for n, b in {**st.inputs, **st.outputs}.items()}

    pipe(random_graph(rng), seed=1, steps=2)
    before = addresses()
    pipe(random_graph(rng), seed=2, steps=3)
    assert addresses() == before


def test_trt_backend_refuses_bad_device_strings(fake):
    from sg2v.runtime.backends.trt import _device_id

    assert _device_id("cuda:1") == 1
    with pytest.raises(Sg2vError, match="use cuda or cuda:N"):
        _device_id("gpu0")


# ------------------------------------------------------------------ what a plan depends on beyond its GPU
def _plugin_info(folder, fingerprint, **plugin):
    _write_info(folder, fingerprint=fingerprint, route="onnx", onnx_sha256={"encoder": "a", "unet": "b"},
                plugin={"impl": "aot", "kernel_sha256": "k1", "nvrtc": "12.6", **plugin})


def test_aot_plan_must_hold_this_kernel_and_a_ptx_the_driver_loads(tmp_path):
    fp = spec.engine_fingerprint("NVIDIA Jetson AGX Orin", (8, 7), "10.9.0", "fp16")
    onnx = {"encoder": "a", "unet": "b"}
    _plugin_info(tmp_path, fp)
    assert trt_build.check_engine_dir(tmp_path, fp, onnx, kernel_sha256="k1", driver_cuda=(12, 6))["plugin"]
    with pytest.raises(BundleError, match="another version of sg2v's CUDA kernel baked in.*--force"):
        trt_build.check_engine_dir(tmp_path, fp, onnx, kernel_sha256="k2", driver_cuda=(12, 6))
    with pytest.raises(BundleError, match=r"PTX from NVRTC 12.6, which the driver \(CUDA 12.4\) cannot load"):
        trt_build.check_engine_dir(tmp_path, fp, onnx, kernel_sha256="k1", driver_cuda=(12, 4))
    _plugin_info(tmp_path, fp, impl="jit", kernel_sha256="old", nvrtc=None)  # JIT compiles at run time
    trt_build.check_engine_dir(tmp_path, fp, onnx, kernel_sha256="k2", driver_cuda=(12, 4))
    _write_info(tmp_path, fingerprint=fp, onnx_sha256=onnx)  # a plugin bundle's plans without the record
    with pytest.raises(BundleError, match="record no sg2v plugin"):
        trt_build.check_engine_dir(tmp_path, fp, onnx, kernel_sha256="k1", driver_cuda=(12, 6))


def test_torch_tensorrt_plans_must_come_from_the_bundles_checkpoint(tmp_path):
    fp = spec.engine_fingerprint("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0", "fp32")
    ckpt = {"sha256": "c" * 64, "ema": True}
    _write_info(tmp_path, fingerprint=fp, route="torch_tensorrt", checkpoint=ckpt, weight_storage="fp32")
    sources = {"onnx_sha256": {"encoder": "x", "unet": "y"}, "checkpoint": ckpt, "weight_storage": "fp32"}
    assert trt_build.check_engine_dir(tmp_path, fp, sources=sources)["route"] == "torch_tensorrt"
    for other in ({"checkpoint": {**ckpt, "ema": False}}, {"checkpoint": {**ckpt, "sha256": "d" * 64}},
                  {"weight_storage": "fp16"}):
        with pytest.raises(BundleError, match="by Torch-TensorRT from checkpoint.*sg2v.export.torch_trt"):
            trt_build.check_engine_dir(tmp_path, fp, sources={**sources, **other})


def test_engine_sources_are_the_bundles_onnx_and_checkpoint_hashes(fake):
    root, _ = fake
    b = Bundle.open(root)
    src = trt_build.engine_sources(b)
    assert src["onnx_sha256"] == {s: b.manifest["files"][f]["sha256"] for s, f in spec.STAGE_FILES.items()}
    assert src["weight_storage"] == b.manifest.get("weight_storage", "fp32")


def test_engine_io_must_equal_the_manifest(fake):
    """Shapes and dtypes as the manifest says; its named batch axis matches any row count (-1: dynamic)."""
    root, _ = fake
    io = Bundle.open(root).stages["unet"]
    manifest = {d["name"]: tuple(d["shape"]) for d in io["inputs"] + io["outputs"]}
    for rows in (-1, 2, 6):
        have = {d["name"]: ((rows, *d["shape"][1:]), d["dtype"]) for d in io["inputs"] + io["outputs"]}
        assert trt_build.engine_io_mismatches(have, io) == []
    v_shape = have["v"][0]
    wrong_out = {**have, "v": ((v_shape[0], v_shape[1] + 1, *v_shape[2:]), "float32")}
    assert trt_build.engine_io_mismatches(wrong_out, io) == [
        f"'v' is float32 {(v_shape[0], v_shape[1] + 1, *v_shape[2:])}, the manifest says float32 "
        f"{manifest['v']}"]
    old = Bundle.open(make_fake_bundle(root.parent / "v1", version=1)[0]).stages["unet"]
    fixed = {d["name"]: ((3, *d["shape"][1:]), d["dtype"]) for d in old["inputs"] + old["outputs"]}
    assert len(trt_build.engine_io_mismatches(fixed, old)) == 5  # format 1: exactly 2 rows
    half = {**have, "v": (v_shape, "float16")}
    assert "'v' is float16" in trt_build.engine_io_mismatches(half, io)[0]
    renamed = {("output0" if k == "v" else k): v for k, v in have.items()}
    assert sorted(trt_build.engine_io_mismatches(renamed, io)) == ["'output0' only in the engine",
                                                                   "'v' only in the manifest"]


def test_trt_backend_checks_a_given_engine_dir_against_the_bundle(fake, tmp_path, monkeypatch):
    """engine_dir= and build=False load no plan before engine.json names this bundle's ONNX graphs."""
    import contextlib
    import types

    from sg2v.runtime.backends import trt as trt_backend

    root, _ = fake
    b = Bundle.open(root)
    fp = spec.engine_fingerprint("Some GPU", (8, 9), "10.9.0", b.precision)
    stub_cp = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda i: contextlib.nullcontext()))
    monkeypatch.setattr(trt_backend, "require", lambda mod, extra: stub_cp if mod == "cupy" else object())
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: object())
    monkeypatch.setattr(trt_build, "current_fingerprint", lambda precision, device_id=0: fp)
    folder = tmp_path / "plans"
    _write_info(folder, fingerprint=fp, onnx_sha256={"encoder": "old", "unet": "old"})
    with pytest.raises(BundleError, match="built from other ONNX graphs"):
        trt_backend.make_trt_backend(b, engine_dir=str(folder))
    _write_info(root / spec.ENGINES_DIR / fp, fingerprint=fp, onnx_sha256={"encoder": "old", "unet": "old"})
    with pytest.raises(BundleError, match="built from other ONNX graphs"):
        trt_backend.make_trt_backend(b, build=False)


# --------------------------------------------------- the backend's stages on stand-ins for TensorRT and CuPy
class _Buf(np.ndarray):
    """A CuPy array stand-in: `.data.ptr` is its address, `.set` copies from the host."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def set(self, value, stream=None):
        self[...] = value


class _Device:
    """A stand-in GPU: allocations by address, streams with capture, and every misuse the tests look for."""

    def __init__(self):
        self.memory, self.streams = {}, {}
        self.stale_replays = []  # (context, rows) of graphs replayed after their context's shapes changed
        device = self

        class Stream:
            def __init__(self, non_blocking=True):
                self.ptr, self.capturing = 1000 + len(device.streams), None
                device.streams[self.ptr] = self

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def synchronize(self):
                pass

            def begin_capture(self):
                self.capturing = []

            def end_capture(self):
                ops, self.capturing = self.capturing, None
                return types.SimpleNamespace(launch=lambda stream: [op(replay=True) for op in ops])

            def enqueue(self, op):
                (self.capturing.append if self.capturing is not None else lambda f: f())(op)

        self.cp = types.SimpleNamespace(
            zeros=self._alloc, empty=self._alloc,
            copyto=lambda dst, src, casting: np.copyto(dst, src, casting=casting),
            cuda=types.SimpleNamespace(Stream=Stream, Device=lambda i: contextlib.nullcontext()))

    def _alloc(self, shape, dtype):
        buf = np.zeros(shape, dtype=dtype).view(_Buf)
        self.memory[buf.data.ptr] = buf
        return buf


def _stand_in_tensorrt(device, max_rows):  # noqa: C901  a stand-in module: its classes' small methods all count toward this one function
    """TensorRT 10.3 as far as TrtStage uses it (enum values from include/NvInferRuntime.h at v10.3.0), with
    an engine y = 2 x + 1 over x (-1, 3) whose execution contexts record their shape changes."""

    class Context:
        def __init__(self, engine, strategy):
            assert strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self.engine, self.shapes, self.addresses, self.reshapes, self.scratch = engine, {}, {}, 0, None

        def set_device_memory(self, ptr, size):
            assert size >= self.engine.device_memory_size_v2 and ptr in device.memory
            self.scratch = ptr

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= max_rows:
                return False
            self.shapes[name], self.reshapes = tuple(shape), self.reshapes + 1
            return True

        def get_tensor_shape(self, name):
            return (self.shapes.get("x", (-1, 3))[0], 3)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_ptr):
            assert self.scratch is not None and set(self.addresses) == {"x", "y"}
            rows, reshapes = self.shapes["x"][0], self.reshapes
            x, y = device.memory[self.addresses["x"]], device.memory[self.addresses["y"]]

            def op(replay=False):
                if replay and self.reshapes != reshapes:
                    device.stale_replays.append((self, rows))
                y[:rows] = 2 * x[:rows] + 1  # a graph runs at the shapes it was captured with

            device.streams[stream_ptr].enqueue(op)
            return True

    class Engine:
        num_io_tensors, device_memory_size_v2 = 2, 4096

        def __init__(self):
            self.contexts = []

        def create_execution_context(self, strategy=0):
            self.contexts.append(Context(self, strategy))
            return self.contexts[-1]

        def get_tensor_name(self, i):
            return ("x", "y")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "x" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, 3)

        def get_tensor_dtype(self, name):
            return "float32"

    trt = types.SimpleNamespace(
        __version__="10.3.0", nptype=lambda dtype: np.float32,
        TensorIOMode=types.SimpleNamespace(NONE=0, INPUT=1, OUTPUT=2),
        ExecutionContextAllocationStrategy=types.SimpleNamespace(STATIC=0, ON_PROFILE_CHANGE=1,
                                                                 USER_MANAGED=2))
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: Engine())
    return trt, runtime


_IO = {"inputs": [{"name": "x", "shape": ["rows", 3], "dtype": "float32"}],
       "outputs": [{"name": "y", "shape": ["rows", 3], "dtype": "float32"}]}


def _stand_in_stage(monkeypatch, tmp_path, graphs, max_rows=6):
    from sg2v.runtime.backends import trt as trt_backend

    device = _Device()
    trt, runtime = _stand_in_tensorrt(device, max_rows)
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "require", lambda mod, extra: device.cp)
    plan = tmp_path / "stage.plan"
    plan.write_bytes(b"plan")
    stage = trt_backend.TrtStage(plan, _IO, runtime, device.cp.cuda.Stream(), max_rows=max_rows,
                                 graphs=graphs)
    return stage, device


def test_cuda_graphs_replay_only_on_contexts_whose_shapes_never_changed(monkeypatch, tmp_path, rng):
    """A batch of 3 videos (6 UNet rows), single videos (2 rows), the batch again: each row count runs its
    own graph on its own context, set up once; every result is the engine's, from this call's input."""
    stage, device = _stand_in_stage(monkeypatch, tmp_path, graphs=True)
    addresses = {n: b.data.ptr for n, b in {**stage.inputs, **stage.outputs}.items()}
    for rows in (6, 2, 2, 6, 2):
        x = rng.standard_normal((rows, 3)).astype(np.float32)
        y = stage.run({"x": x})["y"]
        np.testing.assert_array_equal(y, 2 * x + 1)
    assert device.stale_replays == []
    assert set(stage.graphs) == {2, 6} and set(stage.contexts) == {2, 6}
    assert all(stage.contexts[r].shapes["x"] == (r, 3) and stage.contexts[r].reshapes == 1 for r in (2, 6))
    assert {n: b.data.ptr for n, b in {**stage.inputs, **stage.outputs}.items()} == addresses
    assert len({c.scratch for c in stage.contexts.values()}) == 1  # one scratch allocation, shared
    stage.release()
    assert stage.graphs == {} and stage.contexts == {} and stage.engine is None


def test_the_stand_in_catches_a_graph_replayed_after_its_shapes_changed(monkeypatch, tmp_path, rng):
    """What one shared context did: capture at 6 rows, reshape to 2 and back, replay the 6-row graph."""
    stage, device = _stand_in_stage(monkeypatch, tmp_path, graphs=True)
    stage.run({"x": rng.standard_normal((6, 3)).astype(np.float32)})
    for rows in (2, 6):
        stage._set_shapes(stage.context, rows)
    stage.graphs[6].launch(stage.stream)
    assert device.stale_replays == [(stage.contexts[6], 6)]


def test_a_stage_without_graphs_reshapes_its_one_context(monkeypatch, tmp_path, rng):
    """The layout engine's rows change every round: one context, its shapes set per call, nothing captured."""
    stage, device = _stand_in_stage(monkeypatch, tmp_path, graphs=False, max_rows=9)
    for rows in rng.integers(1, 10, size=6):
        x = rng.standard_normal((int(rows), 3)).astype(np.float32)
        np.testing.assert_array_equal(stage.run({"x": x})["y"], 2 * x + 1)
    assert stage.graphs == {} and len(stage.contexts) == 1 and len(stage.engine.contexts) == 1
    with pytest.raises(Sg2vError, match="a batch of 10 rows; the engine takes 1 to 9"):
        stage.run({"x": np.ones((10, 3), np.float32)})


# ------------------------------------------------------------------------ the auto ladder and named backends
class OutOfMemoryError(MemoryError):
    """As cupy.cuda.memory.OutOfMemoryError: a MemoryError, not an Sg2vError."""


STRONGLY_TYPED = AttributeError("type object 'tensorrt.NetworkDefinitionCreationFlag' has no attribute "
                                "'STRONGLY_TYPED'")


def _failing(exc):
    def make(*args, **kwargs):
        raise exc
    return make


def test_auto_moves_past_any_exception_with_one_warning_line_each(fake, monkeypatch, capsys):
    """TensorRT raising an AttributeError (8.6 bindings) and ONNX Runtime GPU running out of memory: auto
    ends on the CPU, with one stderr line per failed rung naming its cause, and notes saying the same."""
    from sg2v.runtime import backends
    from sg2v.runtime.backends import ort
    from sg2v.runtime.backends import trt as trt_backend

    root, _ = fake
    real_ort = ort.make_ort_backend
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend, "make_trt_backend", _failing(STRONGLY_TYPED))
    monkeypatch.setattr(ort, "available_gpu_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "make_ort_backend", lambda bundle, device=None, threads=None: (
        _failing(OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes"))() if device is None
        else real_ort(bundle, device=device, threads=threads)))
    backend = make_backend(Bundle.open(root), "auto")
    assert backend.name not in ("trt", "ort-cuda")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == ("sg2v: warning: the TensorRT backend failed (AttributeError: type object 'tensorrt."
                        "NetworkDefinitionCreationFlag' has no attribute 'STRONGLY_TYPED'); falling back to "
                        "ONNX Runtime")
    assert lines[1].startswith("sg2v: warning: the ONNX Runtime GPU backend failed (OutOfMemoryError: Out of "
                               "memory allocating 1,073,741,824 bytes); falling back to ")
    assert backend.notes[:2] == [f"TensorRT skipped: AttributeError: {STRONGLY_TYPED}",
                                 "ONNX Runtime GPU skipped: OutOfMemoryError: Out of memory allocating "
                                 "1,073,741,824 bytes"]


@pytest.mark.parametrize("exc", [STRONGLY_TYPED, OutOfMemoryError("Out of memory allocating 512 bytes")])
def test_a_backend_asked_for_by_name_fails_in_one_line(fake, monkeypatch, capsys, tmp_path, rng, exc):
    """--backend trt failing with a non-sg2v exception: one stderr line naming it, exit 1, no traceback."""
    from sg2v.runtime.backends import trt as trt_backend
    from sg2v.runtime.cli import main

    root, _ = fake
    monkeypatch.setattr(trt_backend, "make_trt_backend", _failing(exc))
    with pytest.raises(Sg2vError, match=rf"^the trt backend failed: {type(exc).__name__}: "):
        make_backend(Bundle.open(root), "trt")
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps(random_graph(rng)))
    capsys.readouterr()
    code = main([str(graph), "--bundle", str(root), "--backend", "trt", "--out", str(tmp_path / "v.npy")])
    err = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "v.npy").exists()
    assert err.strip() == (f"sg2v-run: error: the trt backend failed: {type(exc).__name__}: {exc}; choose "
                           "another --backend (auto falls back to the next one that works)")


def test_interrupts_are_not_swallowed_by_the_ladder(fake, monkeypatch):
    from sg2v.runtime import backends
    from sg2v.runtime.backends import trt as trt_backend

    root, _ = fake
    b = Bundle.open(root)
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: None)
    for exc in (KeyboardInterrupt(), SystemExit(3)):
        monkeypatch.setattr(trt_backend, "make_trt_backend", _failing(exc))
        for name in ("auto", "trt"):
            with pytest.raises(type(exc)):
                make_backend(b, name)


def test_tensorrt_below_10_3_is_refused_and_auto_goes_to_onnx_runtime(fake, monkeypatch):
    """JetPack 6.0's TensorRT 8.6: one line naming the way out; auto skips to ONNX Runtime with that note."""
    import importlib.machinery

    from sg2v.runtime.backends import trt as trt_backend

    assert trt_build.tensorrt_version_problem("10.3.0.30") is None
    assert trt_build.tensorrt_version_problem("11.1.0") is None
    for old in ("8.6.2", "10.2.0.19", "9.3.0"):
        assert trt_build.tensorrt_version_problem(old) == (
            f"TensorRT {old} is older than the 10.3 sg2v needs; use --backend ort with onnxruntime-gpu, or "
            "upgrade TensorRT (on a Jetson: JetPack 6.1 or newer)")
    assert "cannot read" in trt_build.tensorrt_version_problem("ten")
    root, _ = fake
    jetpack60 = types.ModuleType("tensorrt")
    jetpack60.__version__ = "8.6.2"
    jetpack60.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", jetpack60)
    reason = trt_unavailable_reason()
    assert reason == trt_build.tensorrt_version_problem("8.6.2")
    with pytest.raises(Sg2vError, match=r"^TensorRT 8.6.2 is older than the 10.3 sg2v needs; use --backend"):
        trt_backend.make_trt_backend(Bundle.open(root))
    with pytest.raises(Sg2vError, match=r"^TensorRT 8.6.2 is older"):
        trt_build.build_engine(root / spec.ENCODER_ONNX, root / "x.plan", {})
    from sg2v.generation import Backend
    from sg2v.runtime.backends import ort

    asked = []
    monkeypatch.setattr(ort, "available_gpu_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "make_ort_backend", lambda bundle, device=None, threads=None: (
        asked.append(device) or Backend("ort-cuda", None, None, notes=[])))
    backend = make_backend(Bundle.open(root), "auto")
    assert backend.name == "ort-cuda" and asked == [None]
    assert backend.notes == [f"TensorRT skipped: {reason}"]


# ---------------------------------------------------------------------------------------- the timing cache
class _TimingCacheConfig:
    """IBuilderConfig's timing-cache calls as documented (pyCoreDoc.h, v10.3.0 to v11.1): create_timing_cache
    parses bytes (None when it cannot), set_timing_cache returns False for a cache of another device."""

    def __init__(self, device, parse=True):
        self.device, self.parse, self.attached = device, parse, None

    def create_timing_cache(self, data):
        if data and not self.parse:
            return None
        return types.SimpleNamespace(device=data.decode() if data else self.device,
                                     serialize=lambda: self.attached.device.encode())

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if cache.device != self.device:
            return False
        self.attached = cache
        return True

    def get_timing_cache(self):
        return self.attached


@pytest.mark.parametrize("kind", ["mine", "none", "other_gpu", "corrupt"])
def test_a_rejected_timing_cache_is_replaced_by_a_fresh_one(tmp_path, kind):
    path = tmp_path / trt_build.TIMING_CACHE
    if kind != "none":
        path.write_bytes(b"gpu-a" if kind == "mine" else b"gpu-b")
    config = _TimingCacheConfig("gpu-a", parse=kind != "corrupt")
    said = []
    assert trt_build.attach_timing_cache(config, path, said.append)
    assert config.get_timing_cache().device == "gpu-a"
    if kind in ("other_gpu", "corrupt"):
        assert said == [f"sg2v: TensorRT rejected the timing cache {path} (another GPU or TensorRT version, "
                        "or a corrupt file); starting a fresh one"]
    else:
        assert said == []


def test_a_builder_that_takes_no_cache_builds_without_one(tmp_path):
    class Refusing(_TimingCacheConfig):
        def set_timing_cache(self, cache, ignore_mismatch):
            return False

    path = tmp_path / trt_build.TIMING_CACHE
    path.write_bytes(b"gpu-b")
    said = []
    assert not trt_build.attach_timing_cache(Refusing("gpu-a"), path, said.append)
    assert said[-1] == "sg2v: TensorRT accepts no timing cache here; building without one" and len(said) == 2


# ----------------------------------------------------------- the whole backend on TensorRT and CuPy stand-ins
def _stand_in_runtime(device, bundle, failing=None):  # noqa: C901  a stand-in module: its classes' small methods all count toward this one function
    """TensorRT 10.3 engines with the manifest's I/O for each plan (a plan's bytes name its stage), whose
    contexts log every enqueue as (stage, rows, captured?); `failing` names a stage whose enqueue fails."""
    log = []

    class Context:
        def __init__(self, stage, io):
            self.stage, self.io, self.rows, self.scratch = stage, io, None, None

        def set_device_memory(self, ptr, size):
            self.scratch = ptr

        def set_input_shape(self, name, shape):
            self.rows = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.rows, *self.io[name][0])

        def set_tensor_address(self, name, ptr):
            pass

        def execute_async_v3(self, stream_ptr):
            stream = device.streams[stream_ptr]
            log.append((self.stage, self.rows, stream.capturing is not None))
            return self.stage != failing

    class Engine:
        device_memory_size_v2 = 1024

        def __init__(self, stage):
            self.stage = stage
            d = bundle.stages[stage]
            self.inputs = [x["name"] for x in d["inputs"]]
            self.io = {x["name"]: (tuple(x["shape"][1:]), x["dtype"]) for x in d["inputs"] + d["outputs"]}
            self.names = list(self.io)
            self.num_io_tensors = len(self.names)

        def create_execution_context(self, strategy=0):
            return Context(self.stage, self.io)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return 1 if name in self.inputs else 2

        def get_tensor_shape(self, name):
            return (-1, *self.io[name][0])

        def get_tensor_dtype(self, name):
            return self.io[name][1]

    class Logger:
        WARNING = 2  # ILogger::Severity::kWARNING

        def __init__(self, severity):
            self.severity = severity

    trt = types.SimpleNamespace(
        __version__="10.3.0", nptype=np.dtype, TensorIOMode=types.SimpleNamespace(INPUT=1, OUTPUT=2),
        ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED=2), Logger=Logger,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine(b.decode())))
    return trt, log


def _stand_in_backend(fake, tmp_path, monkeypatch, failing=None):
    from sg2v.runtime.backends import trt as trt_backend

    root, _ = fake
    bundle = Bundle.open(root)
    device = _Device()
    trt, log = _stand_in_runtime(device, bundle, failing)
    fp = spec.engine_fingerprint("Stand-in GPU", (8, 7), "10.3.0", bundle.precision)
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "require", lambda mod, extra: device.cp)
    monkeypatch.setattr(trt_build, "current_fingerprint", lambda precision, device_id=0: fp)
    folder = tmp_path / "plans"
    _write_info(folder, fingerprint=fp, **trt_build.engine_sources(bundle))
    for stage in bundle.stages:
        (folder / f"{stage}{trt_build.PLAN_SUFFIX}").write_bytes(stage.encode())
    return bundle, folder, log


def test_building_the_backend_runs_every_engine_once(fake, tmp_path, monkeypatch):
    """The encoder runs once at 1 row, the UNet once at one video's rows and once more inside the capture, so
    a failing first enqueue stops the build; later batches get their own contexts and graphs."""
    from sg2v.runtime.backends import trt as trt_backend

    bundle, folder, log = _stand_in_backend(fake, tmp_path, monkeypatch)
    backend = trt_backend.make_trt_backend(bundle, engine_dir=str(folder))
    per_video = spec.rows_per_video(spec.UNET_STAGE, bundle.shapes)
    assert log == [("encoder", 1, False), ("unet", per_video, False), ("unet", per_video, True)]
    assert backend.notes[-1] == "CUDA graph captured" and set(backend.unet.graphs) == {per_video}
    unet = backend.unet
    feeds = {d["name"]: np.zeros((3 * per_video, *d["shape"][1:]), d["dtype"])
             for d in bundle.stages[spec.UNET_STAGE]["inputs"]}
    unet.run(feeds)
    unet.run({k: v[:per_video] for k, v in feeds.items()})
    assert set(unet.graphs) == {per_video, 3 * per_video}
    assert {r: c.rows for r, c in unet.contexts.items()} == {r: r for r in unet.contexts}
    backend.close()
    assert unet.contexts == {} and unet.engine is None


def test_a_failing_first_enqueue_sends_auto_to_the_next_backend(fake, tmp_path, monkeypatch, capsys):
    from sg2v.runtime import backends
    from sg2v.runtime.backends import trt as trt_backend

    bundle, folder, log = _stand_in_backend(fake, tmp_path, monkeypatch, failing="encoder")
    with pytest.raises(Sg2vError, match="TensorRT execution of encoder.plan failed"):
        trt_backend.make_trt_backend(bundle, engine_dir=str(folder))
    real = trt_backend.make_trt_backend
    monkeypatch.setattr(backends, "trt_unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend, "make_trt_backend",
                        lambda b, device=None: real(b, device=device, engine_dir=str(folder)))
    capsys.readouterr()
    backend = make_backend(bundle, "auto")
    assert backend.name != "trt"
    why = "TensorRT execution of encoder.plan failed; see the TensorRT log"
    assert backend.notes[0] == f"TensorRT skipped: {why}"
    assert capsys.readouterr().err.splitlines()[0].startswith("sg2v: warning: the TensorRT backend failed (")
