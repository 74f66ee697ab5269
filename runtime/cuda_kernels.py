"""CuPy loading and launching of the graph scatter-pooling kernels in `cuda/` (package `sg2v.kernels`).

The kernels (`scatter_pool.cuh`: ScatterMeanPool and the triple gather-concat) are compiled at run time with
NVRTC through `cupy.RawModule(code=..., name_expressions=...)`, once per device (CuPy memoizes the module per
device and keeps a disk cache). With `SG2V_NO_JIT=1` nothing is compiled: the fatbin built by CMake and
shipped next to the source is loaded instead and its plain `extern "C"` kernels are used. CuPy is imported
lazily, so `sg2v.runtime` imports without it; a missing CuPy raises `MissingDependencyError` naming sg2v[gpu].
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from sg2v.errors import MissingDependencyError, Sg2vError, require

SOURCE = "scatter_pool.cu"
HEADER = "scatter_pool.cuh"
FATBIN = "scatter_pool.fatbin"
NO_JIT_ENV = "SG2V_NO_JIT"
NVRTC_OPTIONS = ("-std=c++17",)
MAX_THREADS = 256  # per block; pool blocks need whole warps (warp 0 ballots over the indices)

# dtype name -> (C++ type in the templates, suffix of the extern "C" kernels). Must match the X-macros
# SG2V_FOR_EACH_POOL / SG2V_FOR_EACH_GATHER in scatter_pool.cuh (a test checks).
_CTYPES = {
    "float32": ("float", "f32"),
    "float16": ("sg2v::half_t", "f16"),
    "int32": ("int", "i32"),
    "int64": ("long long", "i64"),
}
POOL_VARIANTS = (  # (values, index, mask) dtypes
    ("float32", "int32", "float32"),
    ("float32", "int64", "float32"),
    ("float16", "int32", "float32"),
    ("float16", "int64", "float32"),
    ("float16", "int32", "float16"),
    ("float16", "int64", "float16"),
)
GATHER_VARIANTS = (  # (vectors, triples) dtypes
    ("float32", "int32"),
    ("float32", "int64"),
    ("float16", "int32"),
    ("float16", "int64"),
)


class KernelError(Sg2vError, ValueError):
    """Bad arguments to a CUDA kernel, or kernels that cannot be loaded on this machine."""


def name_expression(op: str, dtypes: tuple[str, ...]) -> str:
    """C++ name expression of a template instance, e.g. `sg2v::scatter_mean_pool<float, long long, float>`."""
    return f"sg2v::{op}<{', '.join(_CTYPES[d][0] for d in dtypes)}>"


def symbol(op: str, dtypes: tuple[str, ...]) -> str:
    """Plain (extern "C") kernel name of a variant, e.g. `sg2v_scatter_mean_pool_f32_i64_f32`."""
    return f"sg2v_{op}_{'_'.join(_CTYPES[d][1] for d in dtypes)}"


def name_expressions() -> list[str]:
    """Every template instance the runtime may launch."""
    return [name_expression("scatter_mean_pool", v) for v in POOL_VARIANTS] + [
        name_expression("gather_concat", v) for v in GATHER_VARIANTS
    ]


def kernel_dir() -> Path:
    """Folder holding scatter_pool.cu: sg2v/kernels/ when installed, the repository's cuda/ in a checkout."""
    import sg2v

    candidates = []
    spec = importlib.util.find_spec("sg2v.kernels")  # the installed package, or an editable install's mapping
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    pkg = Path(sg2v.__file__).resolve().parent
    candidates += [pkg / "kernels", pkg.parent / "cuda"]
    for folder in candidates:
        if (folder / SOURCE).is_file():
            return folder
    raise KernelError(
        f"CUDA kernel source {SOURCE} not found in {[str(c) for c in candidates]}; "
        "reinstall sg2v (the wheel ships it as sg2v/kernels/)"
    )


def kernel_source() -> str:
    """scatter_pool.cu with its header inlined, as one self-contained translation unit.

    Inlining (rather than `-I`) keeps CuPy's compile cache honest: its key is the source text, so an edit to
    the header must change the text.
    """
    folder = kernel_dir()
    header = (folder / HEADER).read_text()
    lines = []
    for i, line in enumerate((folder / SOURCE).read_text().splitlines(), start=1):
        if line.strip() == f'#include "{HEADER}"':
            lines += [f'#line 1 "{HEADER}"', header, f'#line {i + 1} "{SOURCE}"']
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def kernel_sha256() -> str:
    """sha256 of `kernel_source()`: what NVRTC compiles, and what an AOT TensorRT plan has baked in."""
    return hashlib.sha256(kernel_source().encode()).hexdigest()


def no_jit() -> bool:
    """True when SG2V_NO_JIT forbids run-time compilation."""
    return os.environ.get(NO_JIT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def fatbin_path() -> Path:
    """The prebuilt fatbin shipped next to the kernel source; a clear error when it is missing."""
    path = kernel_dir() / FATBIN
    if not path.is_file():
        raise KernelError(
            f"{NO_JIT_ENV}=1 forbids run-time compilation, but no prebuilt {path} is shipped; build it "
            "with `bash .ci/build_cuda.sh && cmake --build build/cuda --target stage_fatbin` "
            f"(or unset {NO_JIT_ENV})"
        )
    return path


def _cupy() -> Any:
    return require("cupy", "gpu")


_modules: dict[tuple[int, bool], Any] = {}
_lock = threading.Lock()


def _module(cp: Any, device_id: int) -> Any:
    """The RawModule for `device_id`, built once (per device and JIT setting) and cached."""
    prebuilt = no_jit()
    key = (device_id, prebuilt)
    with _lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
        with cp.cuda.Device(device_id):
            if prebuilt:
                mod = cp.RawModule(path=str(fatbin_path()))
            else:
                mod = cp.RawModule(code=kernel_source(), options=NVRTC_OPTIONS,
                                   name_expressions=name_expressions())
            try:
                mod.compile()
            except Exception as e:  # CuPy raises CompileException / CUDADriverError with the compiler log
                cc = cp.cuda.Device(device_id).compute_capability
                how = (f"the fatbin has no code for sm_{cc}; rebuild it with -DSG2V_CUDA_ARCHS including {cc}"
                       if prebuilt else "NVRTC failed to compile it")
                raise KernelError(
                    f"cannot load the sg2v CUDA kernels on device {device_id}: {how} ({e})"
                ) from e
        _modules[key] = mod
        return mod


def _function(cp: Any, device_id: int, op: str, dtypes: tuple[str, ...]) -> Any:
    mod = _module(cp, device_id)
    return mod.get_function(symbol(op, dtypes) if no_jit() else name_expression(op, dtypes))


def _stream(cp: Any, stream: Any) -> Any:
    """A CuPy stream object for `stream`: None (the current stream), a cupy Stream, or a raw cudaStream_t."""
    if stream is None:
        return cp.cuda.get_current_stream()
    if isinstance(stream, int):
        return cp.cuda.ExternalStream(stream)
    if isinstance(stream, (cp.cuda.Stream, cp.cuda.ExternalStream)):
        return stream
    raise KernelError(
        f"stream must be None, a cupy.cuda.Stream or a raw cudaStream_t int, got {type(stream).__name__}"
    )


def _check_array(cp: Any, name: str, a: Any, ndim: int, dtypes: tuple[str, ...], device_id: int | None
                 ) -> None:
    if not isinstance(a, cp.ndarray):
        raise KernelError(f"{name} must be a cupy.ndarray on the GPU, got {type(a).__name__}; "
                          "move it with cupy.asarray(...)")
    if a.ndim != ndim:
        raise KernelError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if a.dtype.name not in dtypes:
        raise KernelError(f"{name} dtype {a.dtype.name} is not supported; use one of {list(dtypes)}")
    if not a.flags.c_contiguous:
        raise KernelError(f"{name} must be C-contiguous; pass cupy.ascontiguousarray({name})")
    if device_id is not None and a.device.id != device_id:
        raise KernelError(f"{name} is on device {a.device.id} but the other arguments are on device "
                          f"{device_id}; put every argument on one GPU")


def _check_int32(dims: tuple[int, ...]) -> None:
    if max(dims) >= 2**31:
        raise KernelError(f"dimensions {dims}: each must be below 2**31 (the kernels take int32 sizes); "
                          "split the batch")


def threads_for(width: int) -> int:
    """Threads per block for rows of `width`: whole warps (the pool kernel ballots over warp 0), <= 256."""
    return max(32, min(MAX_THREADS, (width + 31) // 32 * 32))


def _grid(blocks: int) -> int:
    return min(blocks, 1 << 30)  # the kernels stride over blocks beyond the grid


def scatter_mean_pool(values: Any, index: Any, mask: Any, num_segments: int, out: Any = None,
                      stream: Any = None) -> Any:
    """ScatterMeanPool on the GPU: masked mean of `values` rows grouped by `index` (docs/ARCHITECTURE.md).

    values (B, N, D) float32/float16, index (B, N) int32/int64, mask (B, N) float32 (or float16 with
    float16 values), all C-contiguous CuPy arrays on one device -> out (B, num_segments, D), values' dtype.
    Launched on `stream` (None: CuPy's current stream; a cupy Stream; or a raw cudaStream_t). Deterministic:
    each output element is summed in a fixed order by one thread.
    """
    cp = _cupy()
    _check_array(cp, "values", values, 3, ("float32", "float16"), None)
    dev = values.device.id
    _check_array(cp, "index", index, 2, ("int32", "int64"), dev)
    _check_array(cp, "mask", mask, 2, ("float32", values.dtype.name), dev)
    b, n, d = values.shape
    if tuple(index.shape) != (b, n) or tuple(mask.shape) != (b, n):
        raise KernelError(f"index {tuple(index.shape)} and mask {tuple(mask.shape)} must both be (B, N) = "
                          f"{(b, n)} to match values {tuple(values.shape)}")
    if not isinstance(num_segments, int) or num_segments < 1:
        raise KernelError(f"num_segments must be a positive int, got {num_segments!r}")
    _check_int32(values.shape + (num_segments,))
    out = _output(cp, out, (b, num_segments, d), values.dtype, dev)
    if b * num_segments * d == 0:
        return out
    dtypes = (values.dtype.name, index.dtype.name, mask.dtype.name)
    i32 = np.int32
    with cp.cuda.Device(dev), _stream(cp, stream):
        kernel = _function(cp, dev, "scatter_mean_pool", dtypes)
        kernel((_grid(b * num_segments),), (threads_for(d),),
               (values, index, mask, i32(b), i32(n), i32(num_segments), i32(d), out))
    return out


def _output(cp: Any, out: Any, shape: tuple[int, ...], dtype: Any, dev: int) -> Any:
    """`out` checked against (shape, dtype, device), or a new array of that kind when `out` is None."""
    if out is None:
        with cp.cuda.Device(dev):
            return cp.empty(shape, dtype=dtype)
    _check_array(cp, "out", out, len(shape), (np.dtype(dtype).name,), dev)
    if tuple(out.shape) != shape:
        raise KernelError(f"out has shape {tuple(out.shape)}, expected {shape}")
    return out


def gather_concat(obj_vecs: Any, pred_vecs: Any, triples: Any, out: Any = None, stream: Any = None) -> Any:
    """cat(obj[b, s], pred[b, t], obj[b, o]) per triple (s, p, o) = triples[b, t] (sg2im GraphTripleConv).

    obj_vecs (B, O, Do), pred_vecs (B, T, Dp) float32/float16 of one dtype, triples (B, T, 3) int32/int64,
    C-contiguous CuPy arrays on one device -> out (B, T, 2 Do + Dp). Object indices outside [0, O) give zeros.
    """
    cp = _cupy()
    _check_array(cp, "obj_vecs", obj_vecs, 3, ("float32", "float16"), None)
    dev = obj_vecs.device.id
    _check_array(cp, "pred_vecs", pred_vecs, 3, (obj_vecs.dtype.name,), dev)
    _check_array(cp, "triples", triples, 3, ("int32", "int64"), dev)
    b, o, d_obj = obj_vecs.shape
    t, d_pred = pred_vecs.shape[1], pred_vecs.shape[2]
    if pred_vecs.shape[0] != b or tuple(triples.shape) != (b, t, 3):
        raise KernelError(f"pred_vecs {tuple(pred_vecs.shape)} must be (B, T, Dp) and triples "
                          f"{tuple(triples.shape)} must be (B, T, 3) with B = {b} from obj_vecs")
    width = 2 * d_obj + d_pred
    _check_int32((b, o, t, width))
    out = _output(cp, out, (b, t, width), obj_vecs.dtype, dev)
    if b * t * width == 0:
        return out
    i32 = np.int32
    with cp.cuda.Device(dev), _stream(cp, stream):
        kernel = _function(cp, dev, "gather_concat", (obj_vecs.dtype.name, triples.dtype.name))
        kernel((_grid(b * t),), (threads_for(width),),
               (obj_vecs, pred_vecs, triples, i32(b), i32(o), i32(t), i32(d_obj), i32(d_pred), out))
    return out


# --- NVRTC to PTX, without CuPy (TensorRT's AOT plugin bakes PTX into the engine) ---------------------------


def _nvrtc_library() -> Any:
    """ctypes handle to libnvrtc: CUDA_PATH/CUDA_HOME, the system CUDA, or NVIDIA's pip wheels."""
    names = []
    found = ctypes.util.find_library("nvrtc")
    if found:
        names.append(found)
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for root in filter(None, roots):
        names += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), reverse=True)
        names += sorted(glob.glob(os.path.join(root, "targets", "*", "lib", "libnvrtc.so*")), reverse=True)
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        names += sorted(glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")), reverse=True)
    for name in names:
        if "builtins" in os.path.basename(name) or "alt" in os.path.basename(name):
            continue
        try:
            # libnvrtc dlopens its builtins by soname; preloading the copy beside it makes a pip wheel's work
            # without LD_LIBRARY_PATH.
            for builtins in glob.glob(os.path.join(os.path.dirname(name), "libnvrtc-builtins.so*")):
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise MissingDependencyError(
        "libnvrtc (NVIDIA's run-time compiler) was not found; install the CUDA toolkit or "
        "`pip install nvidia-cuda-nvrtc`, or set CUDA_PATH"
    )


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the libnvrtc `compile_ptx` uses."""
    lib = _nvrtc_library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        raise KernelError("nvrtcVersion failed; reinstall the CUDA toolkit or nvidia-cuda-nvrtc")
    return major.value, minor.value


def driver_cuda_version() -> tuple[int, int]:
    """(major, minor) CUDA version the installed driver supports (cudaDriverGetVersion, through CuPy)."""
    v = int(_cupy().cuda.runtime.driverGetVersion())  # e.g. 12040 for CUDA 12.4
    return v // 1000, (v % 1000) // 10


def ptx_loadable(nvrtc: tuple[int, int], driver: tuple[int, int]) -> bool:
    """Whether a driver for CUDA `driver` can load PTX from NVRTC `nvrtc` (its PTX ISA needs that CUDA)."""
    return tuple(nvrtc) <= tuple(driver)


def check_nvrtc_against_driver() -> None:
    """KernelError when this NVRTC writes PTX the installed driver cannot load (NVRTC newer than it)."""
    nvrtc, driver = nvrtc_version(), driver_cuda_version()
    if not ptx_loadable(nvrtc, driver):
        raise KernelError(
            f"NVRTC {nvrtc[0]}.{nvrtc[1]} writes PTX that the installed driver (CUDA "
            f"{driver[0]}.{driver[1]}) cannot load; update the NVIDIA driver, or install the NVRTC of the "
            "driver's CUDA (CUDA 12: pip install nvidia-cuda-nvrtc-cu12) ahead of this one"
        )


def compile_ptx(arch: str, name_exprs: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """Compile the kernel source to PTX for `arch` (e.g. "compute_90") with NVRTC.

    Returns the PTX and, for each name expression asked for, its lowered (mangled) kernel name.
    """
    lib = _nvrtc_library()
    c_char_pp = ctypes.POINTER(ctypes.c_char_p)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(result: int, what: str, prog: Any = None) -> None:
        if result != 0:
            log = _nvrtc_log(lib, prog) if prog is not None else ""
            msg = lib.nvrtcGetErrorString(result).decode()
            raise KernelError(f"NVRTC {what} failed: {msg}{': ' + log if log else ''}")

    prog = ctypes.c_void_p()
    src = kernel_source().encode()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, SOURCE.encode(), 0, None, None), "create")
    try:
        exprs = list(name_exprs or [])
        for e in exprs:
            check(lib.nvrtcAddNameExpression(prog, e.encode()), f"add name expression {e}")
        opts = [o.encode() for o in (*NVRTC_OPTIONS, f"--gpu-architecture={arch}")]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        check(lib.nvrtcCompileProgram(prog, len(opts), ctypes.cast(arr, c_char_pp)), "compile", prog)
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, buf), "PTX")
        lowered = {}
        for e in exprs:
            name = ctypes.c_char_p()
            check(lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(name)), f"lowered name of {e}")
            if name.value is None:
                raise KernelError(f"NVRTC gave no lowered name for {e}")
            lowered[e] = name.value.decode()
        return buf.raw.rstrip(b"\0"), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvrtc_log(lib: Any, prog: Any) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) != 0 or size.value <= 1:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace").strip()
