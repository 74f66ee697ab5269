"""TensorRT plugin for the ONNX node `ScatterMeanPool` (namespace `sg2v`): the `plugin` pooling form.

UNVERIFIED: written by the documentation of TensorRT's Python plugin API (`tensorrt.plugin`, "quickly
deployable plugins") and NVIDIA's quickly_deployable_plugins sample; TensorRT is not installable on the
machines this project is built and tested on, so this module has never run against TensorRT.

- TensorRT >= 10.6: `register()` registers the shape/type descriptor and a JIT implementation that launches
  the CuPy kernel (`sg2v.runtime.cuda_kernels`) on the stream TensorRT hands it (Python runs per enqueue).
- TensorRT >= 10.9: it also registers the ahead-of-time implementation: the kernel compiled to PTX by NVRTC
  plus its launch parameters, which TensorRT bakes into the engine so inference needs no Python.

The ONNX node TensorRT's parser maps onto it: op_type `ScatterMeanPool`, inputs (values (B, N, D) float32 or
float16, index (B, N) int32/int64, mask (B, N) float32, or float16 with float16 values), one output (B, O, D)
of values' dtype, attributes `num_segments` (int, O), `plugin_namespace` = "sg2v" (how the parser finds the
namespace) and optionally `aot` (int 1: use the AOT implementation). Call `register()` before parsing the ONNX
file or deserializing an engine that holds the node.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the descriptor's annotations as objects
# (trtp.TensorDesc, int), which must be evaluated when the function is defined inside register().

import threading

from sg2v.errors import MissingDependencyError, require

PLUGIN_ID = "sg2v::ScatterMeanPool"
PLUGIN_NAMESPACE = "sg2v"
PLUGIN_NAME = "ScatterMeanPool"
FALLBACK_PTX_ARCH = "compute_75"  # PTX for the oldest arch nvcc 13 targets; the driver JITs it for newer GPUs

_lock = threading.Lock()
_registered = False


def _tensorrt():
    trt = require("tensorrt", "trt")
    try:
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise MissingDependencyError(
            f"tensorrt {getattr(trt, '__version__', '?')} has no tensorrt.plugin module ({e}); the sg2v "
            "ScatterMeanPool plugin needs TensorRT >= 10.6: pip install 'sg2v[trt]' with a newer TensorRT"
        ) from None
    return trt, trtp


def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int64: "int64"}
    if dtype not in names:
        raise ValueError(f"ScatterMeanPool: tensor type {dtype} is not supported; use float32/float16 values "
                         "and int32/int64 indices")
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
        _define(trt, trtp)
        _registered = True


def _define(trt, trtp) -> None:
    from sg2v.runtime import cuda_kernels

    @trtp.register(PLUGIN_ID)
    def scatter_mean_pool_desc(
        values: trtp.TensorDesc, index: trtp.TensorDesc, mask: trtp.TensorDesc, num_segments: int
    ) -> trtp.TensorDesc:
        shape = values.shape_expr  # (B, N, D)
        return trtp.from_shape_expr((shape[0], num_segments, shape[2]), dtype=values.dtype)  # (B, O, D)

    @trtp.autotune(PLUGIN_ID)
    def scatter_mean_pool_autotune(values, index, mask, outputs):
        # One explicit (values, index, mask, out) type combination per variant in cuda_kernels.POOL_VARIANTS.
        short = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64"}
        return [
            trtp.AutoTuneCombination(f"{short[v]}, {short[i]}, {short[m]}, {short[v]}", "LINEAR")
            for v, i, m in cuda_kernels.POOL_VARIANTS
        ]

    @trtp.impl(PLUGIN_ID)
    def scatter_mean_pool_impl(values, index, mask, num_segments, outputs, stream):
        # Annotations are optional on impl/aot_impl (TensorRT checks any given against register's).
        import cupy

        # trtp.Tensor exposes __cuda_array_interface__: these are views of TensorRT's buffers, no copies.
        out = cupy.asarray(outputs[0])
        cuda_kernels.scatter_mean_pool(cupy.asarray(values), cupy.asarray(index), cupy.asarray(mask),
                                       int(num_segments), out=out, stream=int(stream))

    if not hasattr(trtp, "aot_impl"):  # TensorRT 10.6 - 10.8: JIT only
        return

    @trtp.aot_impl(PLUGIN_ID)
    def scatter_mean_pool_aot(values, index, mask, num_segments, outputs):
        # Returns (kernel name, PTX, launch parameters, extra int32 kernel arguments), as aot_impl documents.
        dtypes = (_dtype_name(trt, values.dtype), _dtype_name(trt, index.dtype), _dtype_name(trt, mask.dtype))
        name = cuda_kernels.symbol("scatter_mean_pool", dtypes)
        ptx, _ = cuda_kernels.compile_ptx(ptx_arch())
        b, n, d = values.shape_expr  # (B, N, D)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = b * num_segments  # one block per (graph, segment), as the JIT launch
        width = d.constant_value if d.is_constant else cuda_kernels.MAX_THREADS
        launch.block_x = cuda_kernels.threads_for(width)
        launch.shared_mem = 0  # the kernel's shared memory is static
        # The kernel's int32 arguments between its input and output pointers: B, N, O, D.
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (b, n, num_segments, d)])
        return name.encode(), ptx, launch, extra
