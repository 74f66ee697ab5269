"""Checkpoint -> bundle (ONNX graphs, manifest, parity, TensorRT op check) and TensorRT engine builds.

This package's `__init__` imports nothing heavy: torch and onnx are imported inside the functions that need
them, so `sg2v.export.tensorrt` stays importable on a Jetson without torch.
"""

from __future__ import annotations

from typing import Any


def export_bundle(*args: Any, **kwargs: Any) -> Any:
    """Export a checkpoint to a bundle folder; see `sg2v.export.onnx_export.export_bundle`."""
    from sg2v.export.onnx_export import export_bundle as _export_bundle

    return _export_bundle(*args, **kwargs)


def check_model(*args: Any, **kwargs: Any) -> Any:
    """TensorRT ONNX operator check; see `sg2v.export.opcheck.check_model`."""
    from sg2v.export.opcheck import check_model as _check_model

    return _check_model(*args, **kwargs)


__all__ = ["check_model", "export_bundle"]
