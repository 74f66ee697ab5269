"""sg2v.runtime: bundle -> frames without PyTorch (ONNX Runtime on CPU; TensorRT/CuPy on NVIDIA GPUs).

Importing this package loads nothing heavy: `Pipeline`, `Bundle` and the backends import numpy and sg2v's
torch-free parts on first use, and onnxruntime, cupy, tensorrt or torch only when a backend is built.

    from sg2v.runtime import Pipeline
    pipe = Pipeline.from_bundle("models/demo")
    frames = pipe({"objects": ["red circle"], "relationships": []}, seed=0)  # (F, H, W, 3) uint8
"""

from __future__ import annotations

from typing import Any

__all__ = ["Bundle", "BundleError", "Pipeline", "make_backend"]

_LAZY = {
    "Bundle": ("sg2v.runtime.bundle", "Bundle"),
    "BundleError": ("sg2v.errors", "BundleError"),
    "Pipeline": ("sg2v.runtime.pipeline", "Pipeline"),
    "make_backend": ("sg2v.runtime.backends", "make_backend"),
}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attributes: `import sg2v.runtime` stays cheap for `sg2v-run --help` and lean-import tests.
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sg2v.runtime' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
