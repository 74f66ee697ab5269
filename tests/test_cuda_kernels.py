"""CUDA kernels for graph scatter pooling: the CPU side here (source lookup, variant tables vs the .cu, NVRTC
compile, lean imports, the numpy mirror of the encoder against PyTorch), the GPU side (`-m gpu`) against
PyTorch's index_add_ / gather on fresh random inputs, and the TensorRT plugin (`-m trt`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sg2v.errors import BundleError
from sg2v.runtime import cuda_kernels as ck
from sg2v.runtime import gpu_encoder as ge

ROOT = Path(__file__).resolve().parents[1]


# --- CPU: source, tables, compile ---------------------------------------------------------------------------


def test_kernel_dir_holds_the_shipped_source():
    folder = ck.kernel_dir()
    assert (folder / ck.SOURCE).is_file() and (folder / ck.HEADER).is_file()
    assert folder.resolve() == (ROOT / "cuda").resolve()  # a source checkout / editable install
    assert not (ROOT / "cuda" / "__init__.py").exists(), "cuda/ must never become an importable package"


def test_kernel_source_is_one_header_free_translation_unit():
    src = ck.kernel_source()
    assert "#include" not in src  # header inlined; NVRTC may lack every system header, so none is used
    assert "scatter_mean_pool_body" in src and "SG2V_FOR_EACH_POOL(SG2V_DEFINE_POOL)" in src
    header = (ck.kernel_dir() / ck.HEADER).read_text()
    assert header in src  # an edit to the header changes the text CuPy's compile cache keys on


def _macro_rows(name: str) -> list[tuple[str, ...]]:
    text = (ck.kernel_dir() / ck.HEADER).read_text()
    body = re.search(rf"#define {name}\(X\)(.*?)\n\n", text, re.S).group(1)
    return [tuple(p.strip() for p in row.split(",")) for row in re.findall(r"X\(([^)]*)\)", body)]


def test_python_variant_tables_match_the_cuda_macros():
    pool = _macro_rows("SG2V_FOR_EACH_POOL")
    gather = _macro_rows("SG2V_FOR_EACH_GATHER")
    ctype = {k: v[0] for k, v in ck._CTYPES.items()}
    assert [(f"sg2v_scatter_mean_pool_{r[0]}", r[1:]) for r in pool] == [
        (ck.symbol("scatter_mean_pool", v), tuple(ctype[d] for d in v)) for v in ck.POOL_VARIANTS
    ]
    assert [(f"sg2v_gather_concat_{r[0]}", r[1:]) for r in gather] == [
        (ck.symbol("gather_concat", v), tuple(ctype[d] for d in v)) for v in ck.GATHER_VARIANTS
    ]
    assert ck.name_expression("scatter_mean_pool", ("float32", "int64", "float32")) == (
        "sg2v::scatter_mean_pool<float, long long, float>"
    )


def _have_nvrtc() -> bool:
    try:
        ck._nvrtc_library()
        return True
    except ImportError:
        return False


@pytest.mark.cuda_build
@pytest.mark.skipif(not _have_nvrtc(), reason="libnvrtc not found (CUDA toolkit or pip nvidia-cuda-nvrtc)")
def test_nvrtc_compiles_every_template_and_plain_kernel():
    ptx, lowered = ck.compile_ptx("compute_87", ck.name_expressions())
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.decode()))
    assert set(lowered) == set(ck.name_expressions())
    assert set(lowered.values()) <= entries  # what CuPy's name_expressions path launches
    plain = {ck.symbol("scatter_mean_pool", v) for v in ck.POOL_VARIANTS}
    plain |= {ck.symbol("gather_concat", v) for v in ck.GATHER_VARIANTS}
    assert plain <= entries  # what the fatbin and TensorRT's AOT plugin launch


def test_threads_per_block_are_whole_warps_and_bounded():
    for width in (1, 31, 32, 33, 130, 256, 257, 5000):
        t = ck.threads_for(width)
        assert t % 32 == 0 and 32 <= t <= ck.MAX_THREADS and (t >= width or t == ck.MAX_THREADS)


def test_no_jit_without_a_prebuilt_fatbin_says_how_to_build_it(tmp_path, monkeypatch):
    for name in (ck.SOURCE, ck.HEADER):
        (tmp_path / name).write_text((ck.kernel_dir() / name).read_text())
    monkeypatch.setattr(ck, "kernel_dir", lambda: tmp_path)
    monkeypatch.setenv(ck.NO_JIT_ENV, "1")
    assert ck.no_jit()
    with pytest.raises(ck.KernelError, match="stage_fatbin"):
        ck.fatbin_path()
    (tmp_path / ck.FATBIN).write_bytes(b"\x7fELF")
    assert ck.fatbin_path() == tmp_path / ck.FATBIN
    monkeypatch.setenv(ck.NO_JIT_ENV, "0")
    assert not ck.no_jit()


def test_runtime_modules_import_without_cupy_torch_or_tensorrt():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("cupy", "torch", "tensorrt"):
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        from sg2v.errors import MissingDependencyError
        import sg2v.runtime.cuda_kernels as ck, sg2v.runtime.gpu_encoder, sg2v.runtime.trt_plugin as tp
        for call, extra in ((lambda: ck.scatter_mean_pool(None, None, None, 3), "sg2v[gpu]"),
                            (lambda: ck.gather_concat(None, None, None), "sg2v[gpu]"),
                            (tp.register, "sg2v[trt]")):
            try:
                call()
            except MissingDependencyError as e:
                assert extra in str(e), str(e)
            else:
                raise SystemExit("no MissingDependencyError")
        assert "torch" not in sys.modules and "cupy" not in sys.modules
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --- CPU: the numpy reference ops and encoder mirror against PyTorch ----------------------------------------


def _pool_inputs(rng, b, n, o, d, dtype=np.float32, index_dtype=np.int64):
    values = rng.standard_normal((b, n, d)).astype(dtype)
    index = rng.integers(0, max(1, o // 2), (b, n)).astype(index_dtype)  # few segments: repeated indices
    index[:, n // 2:] = rng.integers(0, o, (b, n - n // 2))
    mask = (rng.random((b, n)) > 0.3).astype(np.float32) * rng.uniform(0.5, 2.0, (b, n)).astype(np.float32)
    if b > 1:
        mask[1] = 0.0  # a wholly padded graph
    return values, index, mask


@pytest.mark.parametrize("shape", [(4, 12, 6, 5), (2, 70, 17, 33), (3, 0, 4, 8), (1, 1, 1, 1)])
def test_numpy_pool_matches_the_pytorch_definition(shape):
    torch = pytest.importorskip("torch")
    from sg2v.models.pooling import scatter_mean_pool

    b, n, o, d = shape
    values, index, mask = _pool_inputs(np.random.default_rng(sum(shape)), b, n, o, d)
    got = ge.NumpyOps.scatter_mean_pool(values, index, mask, o)
    for form in ("scatter", "onehot"):
        ref = scatter_mean_pool(torch.from_numpy(values).double(), torch.from_numpy(index),
                                torch.from_numpy(mask), o, form=form).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_numpy_gather_concat_matches_torch_gather():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    b, o, t, do, dp = 3, 6, 9, 5, 4
    obj = rng.standard_normal((b, o, do)).astype(np.float32)
    pred = rng.standard_normal((b, t, dp)).astype(np.float32)
    triples = rng.integers(0, o, (b, t, 3))
    got = ge.NumpyOps.gather_concat(obj, pred, triples)
    to = torch.from_numpy(obj)
    s = torch.gather(to, 1, torch.from_numpy(triples[..., 0:1]).expand(-1, -1, do))
    oo = torch.gather(to, 1, torch.from_numpy(triples[..., 2:3]).expand(-1, -1, do))
    np.testing.assert_array_equal(got, torch.cat([s, torch.from_numpy(pred), oo], -1).numpy())
    triples[0, 0, 0] = o  # out of range: zeros, as the kernel
    assert not ge.NumpyOps.gather_concat(obj, pred, triples)[0, 0, :do].any()


def _random_encoder(seed: int):
    torch = pytest.importorskip("torch")
    from sg2v.config import model_config
    from sg2v.models.encoder import SGEncoder

    cfg = model_config("tiny")
    torch.manual_seed(seed)
    enc = SGEncoder(cfg.encoder, cfg.data).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.3)  # far from init, so LayerNorm affine terms and biases matter
    return enc, cfg


def _random_graphs(cfg, seed: int, b: int = 3):
    rng = np.random.default_rng(seed)
    o, t = cfg.data.padded_objects, cfg.data.padded_triples
    objs = rng.integers(0, cfg.encoder.num_objs, (b, o))
    obj_mask = (rng.random((b, o)) > 0.3).astype(np.float32)
    triples = np.stack([rng.integers(0, o, (b, t)), rng.integers(0, cfg.encoder.num_preds, (b, t)),
                        rng.integers(0, o, (b, t))], axis=-1)
    triple_mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    triple_mask[1] = 0.0  # an empty graph
    triples[triple_mask == 0] = 0  # padding (0, 0, 0), as sg2v.graph pads
    return objs, obj_mask, triples, triple_mask


def test_numpy_encoder_mirror_matches_sgencoder(tmp_path):
    """Context, mask and the object vectors a layout-grounded bundle's encoder also outputs, against
    SGEncoder.encode_all in float64."""
    torch = pytest.importorskip("torch")
    enc, cfg = _random_encoder(3)
    feeds = _random_graphs(cfg, 4)
    with torch.no_grad():
        ref_ctx, ref_mask, ref_obj = enc.double().encode_all(*(torch.from_numpy(a) for a in feeds))
    enc = enc.float()
    path = tmp_path / "encoder_weights.npz"
    np.savez(path, **{k: v.numpy() for k, v in enc.state_dict().items()})  # the bundle's format
    weights = ge.load_encoder_weights(path)
    assert ge.num_layers(weights) == cfg.encoder.num_layers
    ctx, mask, obj = ge.encoder_forward(weights, *feeds, ge.NumpyOps)
    assert ctx.dtype == np.float32 and ctx.shape == (3, cfg.data.context_tokens, cfg.encoder.context_dim)
    assert obj.dtype == np.float32 and obj.shape == (3, cfg.data.padded_objects, cfg.encoder.embed_dim)
    for got, ref in ((ctx, ref_ctx.numpy()), (obj, ref_obj.numpy())):
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    assert not obj[feeds[1] == 0].any()  # padded slots stay zero


def test_encoder_weights_errors_name_the_problem(tmp_path):
    enc, _ = _random_encoder(5)
    sd = {k: v.numpy() for k, v in enc.state_dict().items()}
    assert ge.check_weights({f"encoder.{k}": v for k, v in sd.items()}).keys() == sd.keys()
    bad = dict(sd)
    del bad["layers.0.net2.0.bias"]
    with pytest.raises(BundleError, match=r"layers\.0\.net2\.0\.bias"):
        ge.check_weights(bad)
    bad = dict(sd, **{"layers.1.net1.0.weight": np.ones((3, 3), np.float32)})
    with pytest.raises(BundleError, match=r"layers\.1\.net1\.0\.weight has shape"):
        ge.check_weights(bad)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="readable"):
        ge.load_encoder_weights(tmp_path / "x.npz")


# --- GPU ---------------------------------------------------------------------------------------------------


def _cuda():
    # SG2V_REQUIRE_GPU=1 (bench/gpu_check.sh) turns a missing GPU stack into a failure, not a silent skip.
    missing = pytest.fail if os.environ.get("SG2V_REQUIRE_GPU") == "1" else pytest.skip
    try:
        import cupy
    except ImportError:
        missing("cupy is not installed (pip install 'sg2v[gpu]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            missing("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        missing(f"no usable CUDA device ({e})")
    try:
        import torch
    except ImportError:
        missing("torch is not installed")
    if not torch.cuda.is_available():
        missing("torch has no CUDA")
    return cupy, torch


def _torch_pool_reference(torch, values, index, mask, num_segments):
    """ScatterMeanPool in float64 on the GPU with torch.index_add_ (flattened (b, o) segments)."""
    b, n, d = values.shape
    keep = (mask != 0) & (index >= 0) & (index < num_segments)  # (B, N)
    flat = (torch.arange(b, device=values.device)[:, None] * num_segments + index.long()).clamp(min=0)
    flat = torch.where(keep, flat, torch.zeros_like(flat))
    w = keep.double()
    sums = torch.zeros(b * num_segments, d, dtype=torch.float64, device=values.device)
    sums.index_add_(0, flat.reshape(-1), (values.double() * w[..., None]).reshape(-1, d))
    counts = torch.zeros(b * num_segments, dtype=torch.float64, device=values.device)
    counts.index_add_(0, flat.reshape(-1), w.reshape(-1))
    return (sums / counts.clamp(min=1)[:, None]).reshape(b, num_segments, d)


POOL_SHAPES = [(1, 16, 9, 64), (3, 24, 9, 64), (2, 70, 5, 300), (4, 0, 6, 33), (0, 16, 6, 32), (1, 1, 1, 1),
               (256, 64, 17, 256), (7, 33, 16, 129)]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ck.POOL_VARIANTS, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_pool_matches_torch_index_add(variant, shape):
    cp, torch = _cuda()
    vdt, idt, mdt = variant
    b, n, o, d = shape
    values, index, mask = _pool_inputs(np.random.default_rng([b, n, o, d]), b, n, o, d, vdt, idt)
    if b > 0 and n > 0:
        index[0, 0] = o  # out of range: dropped, as the onehot form drops it
    cv, ci, cm = cp.asarray(values), cp.asarray(index), cp.asarray(mask.astype(mdt))
    out = cp.full((b, o, d), cp.nan, dtype=vdt)  # poison: every element must be written
    got = ck.scatter_mean_pool(cv, ci, cm, o, out=out)
    assert got is out
    again = ck.scatter_mean_pool(cv, ci, cm, o)
    assert cp.array_equal(got, again)  # bitwise run to run (NaN would fail too)
    ref = _torch_pool_reference(torch, torch.as_tensor(values, device="cuda"),
                                torch.as_tensor(index, device="cuda"),
                                torch.as_tensor(mask.astype(mdt), device="cuda"), o)
    got_t = torch.as_tensor(cp.asnumpy(got), device="cuda").double()
    assert not torch.isnan(got_t).any()
    err = (got_t - ref).norm() / ref.norm().clamp(min=1e-30)
    assert err < (2e-3 if vdt == "float16" else 1e-6), f"rel err {err:.2e}"


@pytest.mark.gpu
def test_gpu_pool_matches_scatter_reduce_mean_and_runs_on_given_streams():
    cp, torch = _cuda()
    values, index, mask = _pool_inputs(np.random.default_rng(11), 8, 40, 12, 96)
    mask = (mask != 0).astype(np.float32)
    tv, ti = torch.as_tensor(values, device="cuda"), torch.as_tensor(index, device="cuda")
    dump = torch.where(torch.as_tensor(mask, device="cuda") != 0, ti, torch.full_like(ti, 12))  # masked -> O
    ref = torch.zeros(8, 13, 96, device="cuda").scatter_reduce(
        1, dump[..., None].expand(-1, -1, 96), tv, reduce="mean", include_self=False)[:, :12]
    cv, ci, cm = cp.asarray(values), cp.asarray(index), cp.asarray(mask)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        cv2 = cv * 1  # produced on `stream`; the kernel must follow it there
    out_obj = ck.scatter_mean_pool(cv2, ci, cm, 12, stream=stream)
    out_ptr = ck.scatter_mean_pool(cv2, ci, cm, 12, stream=stream.ptr)
    stream.synchronize()
    got = torch.as_tensor(cp.asnumpy(out_obj), device="cuda")
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)  # another summation order: rounding only
    assert cp.array_equal(out_obj, out_ptr)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ck.GATHER_VARIANTS, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("shape", [(3, 9, 16, 32, 32), (2, 5, 7, 130, 70), (0, 5, 7, 8, 8),
                                   (256, 17, 64, 64, 64)])
def test_gpu_gather_concat_matches_torch_gather(variant, shape):
    cp, torch = _cuda()
    vdt, idt = variant
    b, o, t, do, dp = shape
    rng = np.random.default_rng(sum(shape))
    obj = rng.standard_normal((b, o, do)).astype(vdt)
    pred = rng.standard_normal((b, t, dp)).astype(vdt)
    triples = rng.integers(0, o, (b, t, 3)).astype(idt)
    out = cp.full((b, t, 2 * do + dp), cp.nan, dtype=vdt)
    got = ck.gather_concat(cp.asarray(obj), cp.asarray(pred), cp.asarray(triples), out=out)
    to, tt = torch.as_tensor(obj, device="cuda"), torch.as_tensor(triples, device="cuda").long()
    s = torch.gather(to, 1, tt[..., 0:1].expand(-1, -1, do))
    oo = torch.gather(to, 1, tt[..., 2:3].expand(-1, -1, do))
    ref = torch.cat([s, torch.as_tensor(pred, device="cuda"), oo], -1).cpu().numpy()
    np.testing.assert_array_equal(cp.asnumpy(got), ref)


@pytest.mark.gpu
def test_gpu_kernels_reject_bad_arguments_with_clear_errors():
    cp, _ = _cuda()
    v = cp.asarray(np.random.default_rng(1).standard_normal((2, 8, 4)).astype(np.float32))
    i = cp.zeros((2, 8), dtype=cp.int64) + 1
    m = cp.ones((2, 8), dtype=cp.float32)
    with pytest.raises(ck.KernelError, match="cupy.ndarray"):
        ck.scatter_mean_pool(cp.asnumpy(v), i, m, 3)
    with pytest.raises(ck.KernelError, match="float64 is not supported"):
        ck.scatter_mean_pool(v.astype(cp.float64), i, m, 3)
    with pytest.raises(ck.KernelError, match="C-contiguous"):
        ck.scatter_mean_pool(v.transpose(0, 2, 1).copy().transpose(0, 2, 1), i, m, 3)
    with pytest.raises(ck.KernelError, match=r"must both be \(B, N\)"):
        ck.scatter_mean_pool(v, i[:, :4].copy(), m, 3)
    with pytest.raises(ck.KernelError, match="num_segments"):
        ck.scatter_mean_pool(v, i, m, 0)
    with pytest.raises(ck.KernelError, match="out has shape"):
        ck.scatter_mean_pool(v, i, m, 3, out=cp.empty((2, 4, 4), cp.float32))
    with pytest.raises(ck.KernelError, match="stream"):
        ck.scatter_mean_pool(v, i, m, 3, stream="default")


@pytest.mark.gpu
def test_gpu_prebuilt_fatbin_matches_jit(monkeypatch):
    cp, _ = _cuda()
    if not (ck.kernel_dir() / ck.FATBIN).is_file():
        pytest.skip("no prebuilt fatbin staged (cmake --build build/cuda --target stage_fatbin)")
    values, index, mask = _pool_inputs(np.random.default_rng(5), 16, 48, 13, 200, np.float16, np.int32)
    args = (cp.asarray(values), cp.asarray(index), cp.asarray(mask), 13)
    jit = ck.scatter_mean_pool(*args)
    monkeypatch.setenv(ck.NO_JIT_ENV, "1")
    pre = ck.scatter_mean_pool(*args)
    assert cp.array_equal(jit, pre)  # same source, same float ops: nvcc and NVRTC agree bit for bit


@pytest.mark.gpu
def test_gpu_encoder_matches_pytorch_sgencoder():
    cp, torch = _cuda()
    enc, cfg = _random_encoder(9)
    feeds = _random_graphs(cfg, 10, b=5)
    with torch.no_grad():
        ref_ctx, ref_mask, ref_obj = enc.double().encode_all(*(torch.from_numpy(a) for a in feeds))
    enc = enc.float()
    stage = ge.GpuEncoder({k: v.numpy() for k, v in enc.state_dict().items()}, objects=True)
    out = stage.run(dict(zip(ge.GpuEncoder.inputs, feeds)))
    assert isinstance(out["context"], cp.ndarray) and isinstance(out["objects"], cp.ndarray)
    for name, ref in (("context", ref_ctx.numpy()), ("objects", ref_obj.numpy())):
        got = cp.asnumpy(out[name]).astype(np.float64)
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4, name
    np.testing.assert_array_equal(cp.asnumpy(out["context_mask"]), ref_mask.numpy())


def _plugin_bundle_stub(tmp_path, enc, cfg, grounded=False):
    """What `make_ort_backend` reads of a plugin bundle to pick its encoder stage, with real weights."""
    import types

    from sg2v import bundle_spec as spec

    path = tmp_path / spec.ENCODER_WEIGHTS
    np.savez(path, **{k: v.detach().float().numpy() for k, v in enc.state_dict().items()})
    return types.SimpleNamespace(pooling="plugin", file=lambda rel: tmp_path / rel, has_file=lambda rel: True,
                                 config=cfg, shapes={"context_dim": cfg.encoder.context_dim},
                                 grounded=grounded)


@pytest.mark.parametrize("grounded", [False, True])
def test_plugin_bundle_encoder_on_the_cpu_is_the_numpy_mirror(tmp_path, grounded):
    from sg2v import bundle_spec as spec
    from sg2v.runtime.backends.ort import _encoder_stage, plugin_encoder

    enc, cfg = _random_encoder(12)
    stage, notes = _encoder_stage(_plugin_bundle_stub(tmp_path, enc, cfg, grounded), [], None, np, "cpu", 0)
    assert isinstance(stage, ge.NumpyEncoder) and "numpy encoder" in notes[0]
    feeds = _random_graphs(cfg, 13)
    out = stage.run(dict(zip(ge.NumpyEncoder.inputs, feeds)))
    assert tuple(out) == (spec.GROUNDED_ENCODER_OUTPUTS if grounded else spec.ENCODER_OUTPUTS)
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        ref_ctx, ref_mask, ref_obj = enc.double().encode_all(*(torch.from_numpy(a) for a in feeds))
    refs = {"context": ref_ctx.numpy(), "objects": ref_obj.numpy()}
    for name in out.keys() & refs.keys():
        assert out[name].dtype == np.float32
        assert np.linalg.norm(out[name] - refs[name]) / np.linalg.norm(refs[name]) < 1e-5, name
    np.testing.assert_array_equal(out["context_mask"], ref_mask.numpy())
    # the same fallback for another backend without the plugin's kernel, its note naming that backend
    other, notes = plugin_encoder(_plugin_bundle_stub(tmp_path, enc, cfg, grounded), np, 0, "OpenVINO")
    assert notes == ["encoder: sg2v's numpy encoder (OpenVINO cannot run the ScatterMeanPool plugin node)"]
    again = other.run(dict(zip(ge.NumpyEncoder.inputs, feeds)))
    assert all(np.array_equal(again[k], out[k]) for k in out)


@pytest.mark.gpu
def test_plugin_bundle_encoder_on_the_gpu_runs_the_kernels(tmp_path):
    cp, _ = _cuda()
    from sg2v.runtime.backends.ort import _encoder_stage

    enc, cfg = _random_encoder(14)
    bundle = _plugin_bundle_stub(tmp_path, enc, cfg, grounded=True)
    gpu, notes = _encoder_stage(bundle, [], None, cp, "cuda", 0)
    assert isinstance(gpu, ge.GpuEncoder) and "CUDA kernels" in notes[0]
    cpu, _ = _encoder_stage(bundle, [], None, np, "cpu", 0)
    feeds = dict(zip(ge.GpuEncoder.inputs, _random_graphs(cfg, 15)))
    got, want = gpu.run(feeds), cpu.run(feeds)
    assert isinstance(got["context"], cp.ndarray) and set(got) == set(want)
    for name in ("context", "objects"):
        g = cp.asnumpy(got[name])
        assert np.linalg.norm(g - want[name]) / np.linalg.norm(want[name]) < 1e-5, name
    np.testing.assert_array_equal(cp.asnumpy(got["context_mask"]), want["context_mask"])


# --- TensorRT -----------------------------------------------------------------------------------------------


@pytest.mark.trt
def test_trt_plugin_registers_with_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from sg2v.runtime import trt_plugin

    trt_plugin.register()
    trt_plugin.register()  # idempotent
    import tensorrt as trt

    creators = trt.get_plugin_registry().all_creators
    assert any(c.name == trt_plugin.PLUGIN_NAME and c.plugin_namespace == trt_plugin.PLUGIN_NAMESPACE
               for c in creators)

