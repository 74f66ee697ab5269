"""TensorRT plugin for the ONNX node `ScatterMeanPool` (namespace `sg2v`): the `plugin` pooling form.

UNVERIFIED: written to TensorRT's Python plugin API (`tensorrt.plugin`, "quickly deployable plugins"), its
validators (tensorrt/plugin/_validate.py, TensorRT 10.9 to 11.1) and NVIDIA's quickly_deployable_plugins
sample; TensorRT is not installable on the machines this project is built and tested on, so this module has
never run against TensorRT. tests/test_trt_plugin.py checks every definition against the validator's rules.

- TensorRT 10.6 - 10.8: `register()` registers the shape/type descriptor and a JIT implementation that
  launches the CuPy kernel (`sg2v.runtime.cuda_kernels`) on the stream TensorRT hands it, on CuPy views of
  TensorRT's buffers made without a stream sync (`tensor_view`); Python runs per enqueue, so the engine
  needs sg2v, CuPy and this registration at inference.
- TensorRT >= 10.9: it also registers the ahead-of-time implementation: the kernel compiled to PTX by NVRTC
  plus its launch parameters, which TensorRT bakes into the engine so inference needs no Python.
- TensorRT < 10.6 has no `tensorrt.plugin`: plugin bundles cannot be built there (export with --pooling
  portable).

With both implementations registered TensorRT must be told which to use, or plugin creation fails ("has both
AOT and JIT implementations"): the exported node carries `aot` (int, 1 or 0; a node-level choice, read by the
ONNX parser from 10.9 on), and `network_flags()` gives the matching PREFER_*_PYTHON_PLUGINS network flag.

The ONNX node the parser maps onto it: op_type `ScatterMeanPool`, domain `sg2v`, inputs (values (B, N, D)
float32 or float16, index (B, N) int32/int64, mask (B, N) float32, or float16 with float16 values), one output
(B, O, D) of values' dtype, attributes `num_segments` (int, O), `plugin_namespace` = "sg2v" (the only place
the 10.6 parser's fallback importer looks for the namespace), `plugin_version` = "1" (what tensorrt.plugin
registers) and `aot`. Call `register()` before parsing the ONNX file or deserializing an engine with the node.
"""

# No `from __future__ import annotations`: tensorrt.plugin's validators read the annotations as objects
# (trtp.TensorDesc, int, tuple[...]), which must be evaluated when the functions are defined in _define().

import threading
from typing import Any

import numpy as np

from sg2v.errors import MissingDependencyError, Sg2vError, require

PLUGIN_ID = "sg2v::ScatterMeanPool"
PLUGIN_NAMESPACE = "sg2v"
PLUGIN_NAME = "ScatterMeanPool"
PLUGIN_VERSION = "1"  # tensorrt.plugin's creators all report version "1"
IMPLS = ("aot", "jit")
MIN_TRT = {"jit": (10, 6), "aot": (10, 9)}  # tensorrt.plugin arrives in 10.6, aot_impl in 10.9
FALLBACK_PTX_ARCH = "compute_75"  # PTX for the oldest arch nvcc 13 targets; the driver JITs it for newer GPUs

_lock = threading.Lock()
_registered = False


class PluginError(Sg2vError):
    """The sg2v TensorRT plugin cannot be defined or used with this TensorRT / CUDA installation."""


def trt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as "10.9.0.34"."""
    try:
        major, minor = (int(p) for p in str(version).split(".")[:2])
    except ValueError:
        raise PluginError(f"cannot read TensorRT version {version!r}") from None
    return major, minor


def effective_impl(requested: str, version: str) -> str:
    """The implementation TensorRT `version` will use when `requested` ("aot"/"jit") is asked for."""
    if requested not in IMPLS:
        raise PluginError(f"plugin implementation {requested!r}: choose one of {list(IMPLS)}")
    have = trt_version(version)
    if have < MIN_TRT["jit"]:
        raise PluginError(f"TensorRT {version} has no Python plugin API (tensorrt.plugin arrives in 10.6), "
                          "so it cannot build plugin bundles; export with --pooling portable or upgrade "
                          "TensorRT")
    if requested == "aot" and have < MIN_TRT["aot"]:
        return "jit"  # before 10.9 the parser ignores the node's `aot` and only the JIT form exists
    return requested


def network_flags(trt: Any, impl: str) -> int:
    """The PREFER_AOT/JIT_PYTHON_PLUGINS creation flag bit for `impl` (0 where TensorRT has no such flag)."""
    name = {"aot": "PREFER_AOT_PYTHON_PLUGINS", "jit": "PREFER_JIT_PYTHON_PLUGINS"}[impl]
    flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
    return 0 if flag is None else 1 << int(flag)


def _tensorrt() -> tuple[Any, Any]:
    trt = require("tensorrt", "trt")
    try:
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise MissingDependencyError(
            f"tensorrt {getattr(trt, '__version__', '?')} has no tensorrt.plugin module ({e}); the sg2v "
            "ScatterMeanPool plugin needs TensorRT >= 10.6: upgrade TensorRT, or export with --pooling "
            "portable"
        ) from None
    return trt, trtp


def _dtype_name(trt: Any, dtype: Any) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int64: "int64"}
    if dtype not in names:
        raise PluginError(f"ScatterMeanPool: tensor type {dtype} is not supported; use float32/float16 "
                          "values and int32/int64 indices")
    return names[dtype]


def ptx_arch() -> str:
    """Virtual architecture for the AOT PTX: the current GPU's when CuPy sees one, else compute_75."""
    try:
        import cupy

        return f"compute_{cupy.cuda.Device().compute_capability}"
    except Exception:  # no CuPy or no device at build time: portable PTX, JIT-compiled by the driver at load
        return FALLBACK_PTX_ARCH


def register() -> None:
    """Register `sg2v::ScatterMeanPool` with TensorRT's plugin registry (idempotent). UNVERIFIED."""
    global _registered
    with _lock:
        if _registered:
            return
        trt, trtp = _tensorrt()
        try:
            _define(trt, trtp)
        except Sg2vError:
            raise
        except Exception as e:  # tensorrt.plugin's validators raise ValueError; keep the backend ladder going
            raise PluginError(f"TensorRT {getattr(trt, '__version__', '?')} rejected the sg2v plugin "
                              f"definition ({type(e).__name__}: {e}); export with --pooling portable"
                              ) from None
        _registered = True


def _define(trt: Any, trtp: Any) -> None:
    from sg2v.runtime import cuda_kernels

    @trtp.register(PLUGIN_ID)
    def scatter_mean_pool_desc(
        values: trtp.TensorDesc, index: trtp.TensorDesc, mask: trtp.TensorDesc, num_segments: int
    ) -> trtp.TensorDesc:
        shape = values.shape_expr  # (B, N, D)
        return trtp.from_shape_expr((shape[0], num_segments, shape[2]), dtype=values.dtype)  # (B, O, D)

    @trtp.autotune(PLUGIN_ID)
    def scatter_mean_pool_autotune(
        values: trtp.TensorDesc, index: trtp.TensorDesc, mask: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        # One explicit (values, index, mask, out) type combination per variant in cuda_kernels.POOL_VARIANTS.
        short = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64"}
        return [
            trtp.AutoTuneCombination(f"{short[v]}, {short[i]}, {short[m]}, {short[v]}", "LINEAR")
            for v, i, m in cuda_kernels.POOL_VARIANTS
        ]

    @trtp.impl(PLUGIN_ID)
    def scatter_mean_pool_impl(
        values: trtp.Tensor, index: trtp.Tensor, mask: trtp.Tensor, num_segments: int,
        outputs: tuple[trtp.Tensor], stream: int,
    ) -> None:
        import cupy

        device = cupy.cuda.runtime.getDevice()
        v, i, m, out = (tensor_view(cupy, trt, t, device) for t in (values, index, mask, outputs[0]))
        cuda_kernels.scatter_mean_pool(v, i, m, int(num_segments), out=out, stream=int(stream))

    if not hasattr(trtp, "aot_impl"):  # TensorRT 10.6 - 10.8: JIT only
        return

    @trtp.aot_impl(PLUGIN_ID)
    def scatter_mean_pool_aot(
        values: trtp.TensorDesc, index: trtp.TensorDesc, mask: trtp.TensorDesc, num_segments: int,
        outputs: tuple[trtp.TensorDesc], tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        return aot_kernel(trt, trtp, values, num_segments, index.dtype, mask.dtype)


def tensor_view(cupy: Any, trt: Any, tensor: Any, device_id: int) -> Any:
    """A CuPy array over a `trtp.Tensor`'s buffer: no copy, and no stream synchronisation.

    `cupy.asarray(tensor)` would go through `__cuda_array_interface__`, whose `stream` entry makes CuPy
    synchronise that stream for every tensor on every enqueue (CUPY_CUDA_ARRAY_INTERFACE_SYNC, on by
    default); the kernel already runs on TensorRT's stream. So the pointer is wrapped as
    `cupy.cuda.UnownedMemory(ptr, size, owner, device_id)` + `MemoryPointer` + `cupy.ndarray(shape, dtype,
    memptr, strides)` (CuPy 13 and 14, cupy/cuda/memory.pyx) from the tensor's `data_ptr`, `shape`, `dtype`
    and element `strides` (tensorrt/plugin/_tensor.py, TensorRT 10.6 to 11.1). Not run against TensorRT here.
    """
    dtype = np.dtype(_dtype_name(trt, tensor.dtype))
    shape = tuple(int(d) for d in tensor.shape)
    strides = tuple(int(s) * dtype.itemsize for s in tensor.strides)  # TensorRT's strides count elements
    size = 0 if 0 in shape else dtype.itemsize + sum((d - 1) * s for d, s in zip(shape, strides))
    memory = cupy.cuda.UnownedMemory(int(tensor.data_ptr), size, tensor, device_id)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0), strides=strides)


def aot_kernel(trt: Any, trtp: Any, values: Any, num_segments: int, index_dtype: Any, mask_dtype: Any
               ) -> tuple[bytes, bytes, Any, Any]:
    """(kernel name, PTX, launch parameters, extra int32 arguments) for one plugin node, as aot_impl returns.

    The plain `extern "C"` kernel of `scatter_pool.cu` for the dtypes, compiled by NVRTC for `ptx_arch()`
    (refused when NVRTC is newer than the driver, which could not load its PTX); one block per (graph,
    segment) as in the JIT launch; the kernel's int32 arguments between its input and output pointers are
    B, N, O, D.
    """
    from sg2v.runtime import cuda_kernels

    dtypes = (_dtype_name(trt, values.dtype), _dtype_name(trt, index_dtype), _dtype_name(trt, mask_dtype))
    if dtypes not in cuda_kernels.POOL_VARIANTS:
        raise PluginError(f"ScatterMeanPool: no kernel for (values, index, mask) = {dtypes}; the variants "
                          f"are {list(cuda_kernels.POOL_VARIANTS)}")
    cuda_kernels.check_nvrtc_against_driver()
    name = cuda_kernels.symbol("scatter_mean_pool", dtypes)
    ptx, _ = cuda_kernels.compile_ptx(ptx_arch())
    b, n, d = values.shape_expr  # (B, N, D)
    launch = trtp.KernelLaunchParams()
    launch.grid_x = b * num_segments
    width = d.constant_value() if d.is_constant else cuda_kernels.MAX_THREADS
    launch.block_x = cuda_kernels.threads_for(width)
    launch.shared_mem = 0  # the kernel's shared memory is static
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (b, n, num_segments, d)])
    return name.encode(), ptx, launch, extra


def plugin_record(impl: str, version: str) -> dict[str, Any]:
    """What an engine with this plugin depends on beyond its ONNX file, for its engine.json."""
    from sg2v.runtime import cuda_kernels

    used = effective_impl(impl, version)
    record = {"impl": used, "kernel_sha256": cuda_kernels.kernel_sha256()}
    if used == "aot":
        major, minor = cuda_kernels.nvrtc_version()
        record.update(nvrtc=f"{major}.{minor}", ptx_arch=ptx_arch())
    return record
