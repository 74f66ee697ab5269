"""The `sg2v::ScatterMeanPool` TensorRT plugin definitions, checked without TensorRT.

TensorRT's Python plugin API validates each decorated function when it is registered. The rules below restate
those validators (NVIDIA/TensorRT python/packaging/bindings_wheel/tensorrt/plugin/_validate.py, identical in
v10.9.0 and v11.1: `_validate_name_and_namespace`, `_parse_register_inputs`, `_parse_register_return`,
`_validate_impl`, `_validate_aot_impl`, `_validate_autotune`) in this project's own words, and a stand-in for
`tensorrt.plugin` applies them to `sg2v.runtime.trt_plugin`'s definitions exactly where registration would.
The AOT implementation also runs on stand-in tensor descriptors, with the real NVRTC compile of the kernel.
"""

from __future__ import annotations

import inspect
import re
import types
import typing

import numpy as np
import pytest

from sg2v.runtime import cuda_kernels as ck
from sg2v.runtime import trt_plugin as tp

# ---------------------------------------------------------------------------------- stand-in tensorrt.plugin


class TensorDesc:
    pass


class Tensor:
    pass


class SymExprs:
    pass


class SymIntExprs(SymExprs):
    def __init__(self, exprs):
        self.exprs = list(exprs)

    @classmethod
    def from_tuple(cls, exprs):
        return cls(exprs)


class AutoTuneCombination:
    def __init__(self, types, layouts=""):
        self.types, self.layouts = types, layouts


class KernelLaunchParams:
    _fields = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __setattr__(self, name, value):
        if name not in self._fields:  # the real class refuses unknown fields too
            raise AttributeError(name)
        object.__setattr__(self, name, value)


class ShapeExpr:
    """A build-time dimension: `is_constant` is a property, `constant_value()` a method (as in _tensor.py)."""

    def __init__(self, value, constant=True):
        self.value, self._constant = value, constant

    @property
    def is_constant(self):
        return self._constant

    def constant_value(self):
        if not self._constant:
            raise RuntimeError("not a build-time constant")
        return self.value

    def __mul__(self, other):
        return ShapeExpr(self.value * int(other), self._constant)


def SymInt32(value):  # noqa: N802 (the real API's name)
    return ("i32", value.value if isinstance(value, ShapeExpr) else int(value))


SERIALIZABLE = (int, float, bytes, bool, str)
RESERVED_NAMESPACES = {"", "trt", "tensorrt", "std"}
RESERVED_ATTRS = {"outputs", "stream", "tactic"}


def _annotated(param):
    return param.annotation is not inspect.Parameter.empty


def _is(annotation, cls):
    return inspect.isclass(annotation) and issubclass(annotation, cls)


def _tuple_of(annotation, cls):
    return typing.get_origin(annotation) is tuple and all(_is(a, cls) for a in typing.get_args(annotation))


class Plugin:
    """What `register` learnt: tensor names, attribute names and types (in order)."""

    def __init__(self, tensors, attrs):
        self.tensors, self.attrs = tensors, attrs


def check_register(plugin_id, fn) -> Plugin:
    ns, name = plugin_id.split("::")
    assert "." not in ns and "." not in name and ns not in RESERVED_NAMESPACES, plugin_id
    sig = inspect.signature(fn)
    tensors, attrs = [], {}
    for i, (pname, p) in enumerate(sig.parameters.items()):
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), f"{pname}: positional-or-keyword only"
        assert _annotated(p), f"register: {pname} must be annotated"
        assert p.default is inspect.Parameter.empty, f"register: {pname} may not have a default"
        if _is(p.annotation, TensorDesc):
            assert not attrs, "register: TensorDescs come before every attribute"
            tensors.append(pname)
        else:
            assert i > 0, "register: the first argument must be a TensorDesc"
            assert pname not in RESERVED_ATTRS, f"register: {pname!r} is reserved"
            assert p.annotation in SERIALIZABLE, f"register: {pname} has unserializable type {p.annotation}"
            attrs[pname] = p.annotation
    ret = sig.return_annotation
    assert ret is not inspect.Parameter.empty, "register: return annotation required"
    assert _is(ret, TensorDesc) or _tuple_of(ret, TensorDesc), f"register returns {ret}"
    return Plugin(tensors, attrs)


def _check_args(fn, plugin, kind, tensor_cls, tail, optional_tail=()):
    sig = inspect.signature(fn)
    used = []
    for pname, p in sig.parameters.items():
        if pname in plugin.attrs:
            used.append(pname)
        if not _annotated(p):
            continue
        a = p.annotation
        if pname == "outputs":
            assert _tuple_of(a, tensor_cls), f"{kind}: outputs must be tuple[{tensor_cls.__name__}]"
        elif pname in ("stream", "tactic"):
            assert _is(a, int), f"{kind}: {pname} must be int"
        elif _is(a, tensor_cls):
            assert pname in plugin.tensors, f"{kind}: unknown tensor {pname}"
        else:
            assert plugin.attrs.get(pname) == a, f"{kind}: attribute {pname} annotated {a}"
    names = list(sig.parameters)
    head = plugin.tensors + [n for n in plugin.attrs if n in used]
    allowed = [head + list(tail)] + [head + list(tail) + [extra] for extra in optional_tail]
    assert names in allowed, f"{kind}: arguments {names}, expected one of {allowed}"
    return sig


def check_impl(fn, plugin):
    sig = _check_args(fn, plugin, "impl", Tensor, ["outputs", "stream"], ["tactic"])
    assert sig.return_annotation in (inspect.Parameter.empty, None), "impl: return annotation must be None"


def check_aot_impl(fn, plugin):
    sig = _check_args(fn, plugin, "aot_impl", TensorDesc, ["outputs", "tactic"])
    ret = sig.return_annotation
    assert ret is not inspect.Parameter.empty, "aot_impl: return annotation required"
    assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 4, f"aot_impl returns {ret}"
    name, ptx, launch, extra = typing.get_args(ret)
    for a in (name, ptx):
        union = typing.get_origin(a) in (typing.Union, types.UnionType)
        assert all(x in (str, bytes) for x in (typing.get_args(a) if union else (a,))), f"{a}: str or bytes"
    assert _is(launch, KernelLaunchParams) and _is(extra, SymExprs), ret


def check_autotune(fn, plugin):
    sig = _check_args(fn, plugin, "autotune", TensorDesc, ["outputs"])
    ret = sig.return_annotation
    if ret is not inspect.Parameter.empty:
        ok = _is(ret, AutoTuneCombination) or (typing.get_origin(ret) is list and all(
            _is(a, AutoTuneCombination) for a in typing.get_args(ret)))
        assert ok, f"autotune returns {ret}"


class FakeTrtp:
    """tensorrt.plugin as far as the plugin module uses it; each decorator validates like the real one."""

    TensorDesc, Tensor, SymExprs, SymIntExprs = TensorDesc, Tensor, SymExprs, SymIntExprs
    AutoTuneCombination, KernelLaunchParams = AutoTuneCombination, KernelLaunchParams
    SymInt32 = staticmethod(SymInt32)

    def __init__(self, aot=True):
        self.plugins, self.funcs = {}, {}
        if aot:
            self.aot_impl = self._decorator("aot_impl", check_aot_impl)

    def register(self, plugin_id):
        def wrap(fn):
            self.plugins[plugin_id] = check_register(plugin_id, fn)
            self.funcs[(plugin_id, "register")] = fn
            return fn
        return wrap

    def _decorator(self, kind, check):
        def decorator(plugin_id):
            def wrap(fn):
                check(fn, self.plugins[plugin_id])
                self.funcs[(plugin_id, kind)] = fn
                return fn
            return wrap
        return decorator

    def impl(self, plugin_id):
        return self._decorator("impl", check_impl)(plugin_id)

    def autotune(self, plugin_id):
        return self._decorator("autotune", check_autotune)(plugin_id)


class FakeTrt:
    __version__ = "10.9.0"
    float32, float16, int32, int64, bool_ = "f32", "f16", "i32", "i64", "bool"

    class NetworkDefinitionCreationFlag:  # 10.9's values (include/NvInfer.h and pyCore.cpp at v10.9.0)
        EXPLICIT_BATCH, STRONGLY_TYPED, PREFER_JIT_PYTHON_PLUGINS, PREFER_AOT_PYTHON_PLUGINS = 0, 1, 2, 3


def _defined(aot=True):
    trtp = FakeTrtp(aot=aot)
    tp._define(FakeTrt, trtp)
    return trtp


# ------------------------------------------------------------------------------------------------- tests


def test_every_definition_passes_the_validator_rules():
    trtp = _defined(aot=True)
    kinds = {kind for (pid, kind) in trtp.funcs if pid == tp.PLUGIN_ID}
    assert kinds == {"register", "autotune", "impl", "aot_impl"}
    plugin = trtp.plugins[tp.PLUGIN_ID]
    assert plugin.tensors == ["values", "index", "mask"] and plugin.attrs == {"num_segments": int}
    assert tp.PLUGIN_ID == f"{tp.PLUGIN_NAMESPACE}::{tp.PLUGIN_NAME}"


def test_before_10_9_only_the_jit_form_is_defined():
    trtp = _defined(aot=False)
    assert {kind for (_, kind) in trtp.funcs} == {"register", "autotune", "impl"}


@pytest.mark.parametrize("bad", ["no_tactic", "no_return", "property_return"])
def test_the_rules_reject_what_tensorrt_rejects(bad):
    plugin = Plugin(["values", "index", "mask"], {"num_segments": int})
    if bad == "no_tactic":
        def fn(values, index, mask, num_segments,
               outputs) -> tuple[str, bytes, KernelLaunchParams, SymIntExprs]:
            pass
    elif bad == "no_return":
        def fn(values, index, mask, num_segments, outputs, tactic):
            pass
    else:
        def fn(values, index, mask, num_segments, outputs, tactic) -> KernelLaunchParams:
            pass
    with pytest.raises(AssertionError):
        check_aot_impl(fn, plugin)


def test_autotune_offers_exactly_the_kernel_variants():
    trtp = _defined()
    combos = trtp.funcs[(tp.PLUGIN_ID, "autotune")](None, None, None, ())
    short = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64"}
    want = {f"{short[v]}, {short[i]}, {short[m]}, {short[v]}" for v, i, m in ck.POOL_VARIANTS}
    assert {c.types for c in combos} == want and all(c.layouts == "LINEAR" for c in combos)


def test_descriptor_gives_b_o_d_in_the_values_dtype():
    trtp = _defined()
    seen = {}

    def from_shape_expr(shape, dtype):
        seen.update(shape=shape, dtype=dtype)
        return "desc"

    trtp.from_shape_expr = from_shape_expr
    values = TensorDesc()
    values.shape_expr, values.dtype = ("B", "N", "D"), FakeTrt.float16
    assert trtp.funcs[(tp.PLUGIN_ID, "register")](values, None, None, 7) == "desc"
    assert seen == {"shape": ("B", 7, "D"), "dtype": FakeTrt.float16}


def _have_nvrtc() -> bool:
    try:
        ck._nvrtc_library()
        return True
    except ImportError:
        return False


def _desc(dtype, shape):
    d = TensorDesc()
    d.dtype, d.shape_expr = dtype, shape
    return d


@pytest.mark.cuda_build
@pytest.mark.skipif(not _have_nvrtc(), reason="libnvrtc not found (CUDA toolkit or pip nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("d_const", [True, False])
def test_aot_kernel_names_a_ptx_entry_with_the_launch_contract(monkeypatch, d_const):
    monkeypatch.setattr(ck, "driver_cuda_version", lambda: ck.nvrtc_version())  # a driver as new as NVRTC
    rng = np.random.default_rng(14)
    b, n, o, d = (int(v) for v in rng.integers(1, 90, size=4))
    trtp = _defined()
    values = _desc(FakeTrt.float32, (ShapeExpr(b), ShapeExpr(n), ShapeExpr(d, constant=d_const)))
    index, mask = _desc(FakeTrt.int64, None), _desc(FakeTrt.float32, None)
    name, ptx, launch, extra = trtp.funcs[(tp.PLUGIN_ID, "aot_impl")](values, index, mask, o, (), 0)
    assert name == b"sg2v_scatter_mean_pool_f32_i64_f32"
    assert launch.grid_x.value == b * o and launch.shared_mem == 0
    assert launch.block_x == ck.threads_for(d if d_const else ck.MAX_THREADS)
    assert extra.exprs == [("i32", b), ("i32", n), ("i32", o), ("i32", d)]
    # TensorRT passes the input pointers, then the extra int32 arguments, then the output pointers.
    text = ptx.decode()
    m = re.search(r"\.entry\s+" + name.decode() + r"\s*\((.*?)\)", text, re.S)
    assert m is not None, "the kernel is not an entry of the PTX"
    params = re.findall(r"\.param\s+\.(\w+)", m.group(1))
    assert params == ["u64", "u64", "u64", "u32", "u32", "u32", "u32", "u64"]


def test_aot_refuses_ptx_the_driver_cannot_load(monkeypatch):
    monkeypatch.setattr(ck, "nvrtc_version", lambda: (13, 0))
    monkeypatch.setattr(ck, "driver_cuda_version", lambda: (12, 4))
    values = _desc(FakeTrt.float32, (ShapeExpr(2), ShapeExpr(6), ShapeExpr(8)))
    with pytest.raises(ck.KernelError, match=r"NVRTC 13.0 .* driver \(CUDA 12.4\) cannot load.*update the "
                                             r"NVIDIA driver"):
        _defined().funcs[(tp.PLUGIN_ID, "aot_impl")](values, _desc(FakeTrt.int32, None),
                                                     _desc(FakeTrt.float32, None), 3, (), 0)
    assert ck.ptx_loadable((12, 4), (12, 4)) and ck.ptx_loadable((12, 2), (13, 0))
    assert not ck.ptx_loadable((12, 6), (12, 4))


def test_unsupported_dtype_is_one_clear_error():
    values = _desc(FakeTrt.bool_, (ShapeExpr(2), ShapeExpr(6), ShapeExpr(8)))
    with pytest.raises(tp.PluginError, match="not supported"):
        tp.aot_kernel(FakeTrt, FakeTrtp(), values, 3, FakeTrt.int32, FakeTrt.float32)
    values = _desc(FakeTrt.float32, values.shape_expr)
    with pytest.raises(tp.PluginError, match="no kernel for"):
        tp.aot_kernel(FakeTrt, FakeTrtp(), values, 3, FakeTrt.int32, FakeTrt.float16)


def test_implementation_choice_by_tensorrt_version():
    assert tp.effective_impl("aot", "10.9.0.34") == "aot" and tp.effective_impl("aot", "11.1") == "aot"
    assert tp.effective_impl("aot", "10.8.0") == "jit" and tp.effective_impl("jit", "10.6.0") == "jit"
    with pytest.raises(tp.PluginError, match="10.3.0 has no Python plugin API.*--pooling portable"):
        tp.effective_impl("aot", "10.3.0")
    with pytest.raises(tp.PluginError, match="choose one of"):
        tp.effective_impl("both", "10.9")


def test_network_flag_follows_the_enum_of_the_installed_tensorrt():
    """The stand-ins carry each version's NetworkDefinitionCreationFlag values as NVIDIA/TensorRT's
    include/NvInfer.h and python/src/infer/pyCore.cpp define them at tags v10.6.0, v10.9.0, v11.0, v11.1."""
    assert tp.network_flags(FakeTrt, "aot") == 1 << 3 and tp.network_flags(FakeTrt, "jit") == 1 << 2

    class Trt11:  # v11.0 and v11.1: EXPLICIT_BATCH gone, STRONGLY_TYPED deprecated (always on) and 0
        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED, PREFER_JIT_PYTHON_PLUGINS, PREFER_AOT_PYTHON_PLUGINS = 0, 1, 2

    class Trt106:  # v10.6.0 to v10.8.0: no PREFER_* flags yet
        class NetworkDefinitionCreationFlag:
            EXPLICIT_BATCH, STRONGLY_TYPED = 0, 1

    assert tp.network_flags(Trt11, "aot") == 1 << 2 and tp.network_flags(Trt11, "jit") == 1 << 1
    assert tp.network_flags(Trt106, "aot") == 0 and tp.network_flags(Trt106, "jit") == 0


def test_validator_errors_become_one_line_sg2v_errors(monkeypatch):
    def broken(trt, trtp):
        raise ValueError("Signature of the aot_impl function does not match")

    monkeypatch.setattr(tp, "_tensorrt", lambda: (FakeTrt, FakeTrtp()))
    monkeypatch.setattr(tp, "_define", broken)
    monkeypatch.setattr(tp, "_registered", False)
    with pytest.raises(tp.PluginError, match=r"rejected the sg2v plugin definition \(ValueError: Signature"):
        tp.register()
    assert tp._registered is False


# -------------------------------------------------------------- the JIT implementation's view of TensorRT
class _PluginTensor:
    """tensorrt.plugin.Tensor as _tensor.py (10.6 to 11.1) defines it: data_ptr, shape, dtype, element
    strides; its __cuda_array_interface__ (carrying the stream CuPy would synchronise) records each use."""

    touched = []

    def __init__(self, array, dtype):
        self.array, self.data_ptr, self.shape, self.dtype = array, array.ctypes.data, array.shape, dtype
        self.strides = tuple(s // array.itemsize for s in array.strides)

    @property
    def __cuda_array_interface__(self):
        self.touched.append(self)
        raise AssertionError("__cuda_array_interface__ read: CuPy would synchronise the stream")


class _StandInCupy:
    """cupy.cuda.UnownedMemory / MemoryPointer / cupy.ndarray (CuPy 13 and 14 signatures) on host memory."""

    def __init__(self):
        self.memories = []

        def unowned(ptr, size, owner, device_id=-1):
            self.memories.append(types.SimpleNamespace(ptr=ptr, size=size, owner=owner, device_id=device_id))
            return self.memories[-1]

        self.cuda = types.SimpleNamespace(
            UnownedMemory=unowned,
            MemoryPointer=lambda mem, offset: types.SimpleNamespace(mem=mem, offset=offset),
            runtime=types.SimpleNamespace(getDevice=lambda: 3))

    @staticmethod
    def ndarray(shape, dtype, memptr, strides):
        import ctypes

        mem = memptr.mem
        buf = (ctypes.c_char * max(mem.size, 1)).from_address(mem.ptr + memptr.offset)
        return np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)


def test_the_jit_implementation_wraps_tensorrt_buffers_without_a_stream_sync(monkeypatch):
    """The views CuPy's kernel gets are TensorRT's buffers (same address, shape, byte strides, dtype; a
    padded row stride kept), written in place; __cuda_array_interface__ and cupy.asarray are never used."""
    import sys

    rng = np.random.default_rng(7)
    b, n, d, o = (int(v) for v in rng.integers(2, 9, size=4))
    padded = rng.standard_normal((b, n, d + 3)).astype(np.float32)
    host = {"values": padded[:, :, :d], "index": rng.integers(0, o, size=(b, n)).astype(np.int64),
            "mask": (rng.random((b, n)) < 0.7).astype(np.float32), "out": np.zeros((b, o, d), np.float32)}
    kinds = {"values": FakeTrt.float32, "index": FakeTrt.int64, "mask": FakeTrt.float32,
             "out": FakeTrt.float32}
    tensors = {k: _PluginTensor(a, kinds[k]) for k, a in host.items()}
    cupy = _StandInCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    seen = {}

    def kernel(values, index, mask, num_segments, out=None, stream=None):
        seen.update(values=values, index=index, mask=mask, out=out, num_segments=num_segments, stream=stream)
        out[...] = 1.5

    monkeypatch.setattr(ck, "scatter_mean_pool", kernel)
    impl = _defined().funcs[(tp.PLUGIN_ID, "impl")]
    impl(tensors["values"], tensors["index"], tensors["mask"], o, (tensors["out"],), 12345)
    assert _PluginTensor.touched == [] and seen["stream"] == 12345 and seen["num_segments"] == o
    for name, array in host.items():
        view = seen[name]
        assert view.ctypes.data == array.ctypes.data and view.shape == array.shape
        assert view.strides == array.strides and view.dtype == array.dtype
        if name != "out":
            np.testing.assert_array_equal(view, array)
    np.testing.assert_array_equal(host["out"], np.full((b, o, d), 1.5, np.float32))
    assert [m.device_id for m in cupy.memories] == [3] * 4
    assert [m.owner for m in cupy.memories] == [tensors[k] for k in ("values", "index", "mask", "out")]
    assert cupy.memories[0].size == ((b - 1) * n * (d + 3) + (n - 1) * (d + 3) + d) * 4  # to the last element
