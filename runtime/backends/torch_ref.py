"""PyTorch reference backend: the SG2V modules themselves, for parity checks and benchmarks.

The only backend that imports torch, and only when it is built. Weights come from the bundle's optional
`model.safetensors` (exported with `--include-weights`) or from a checkpoint given explicitly (`ckpt`), loaded
with `sg2v.training.checkpoint` (`torch.load(weights_only=True)`, safetensors). Stages take and return numpy
arrays so the pipeline's sampler runs on the same host arrays as the ONNX Runtime backend; on CUDA the tensors
cross once per call, which is fine for a reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, MissingDependencyError, Sg2vError
from sg2v.runtime.backends import Backend


class TorchStage:
    """A torch module called with the stage's named inputs; outputs copied into numpy buffers made once."""

    def __init__(self, fn: Any, io: dict[str, Any], device: Any):
        import torch

        self._torch = torch
        self.fn = fn
        self.device = device
        self.input_names = [d["name"] for d in io["inputs"]]
        self.outputs = {d["name"]: np.empty(tuple(d["shape"]), dtype=np.dtype(d["dtype"]))
                        for d in io["outputs"]}

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        try:
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
                    for n in self.input_names]
        except KeyError as e:
            raise Sg2vError(f"feed {e.args[0]!r} is missing; the stage takes {self.input_names}") from None
        with torch.inference_mode():
            out = self.fn(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        for buf, value in zip(self.outputs.values(), out):
            buf[...] = value.detach().float().cpu().numpy()
        return self.outputs


def make_torch_backend(bundle: Any, device: str | None = None, ckpt: str | None = None,
                       threads: int | None = None) -> Backend:
    """SG2V from `ckpt` or the bundle's `model.safetensors` on `device` ("cpu" default, "cuda", "cuda:N")."""
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError(f"the torch backend needs PyTorch ({e}); install it with: "
                                     "pip install 'sg2v[train]', or use --backend ort") from None
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Sg2vError(f"--device {device}: PyTorch sees no CUDA device; use --device cpu")
    model = _load(bundle, ckpt, dev)
    null_context = None
    if ckpt is not None:
        # An explicit checkpoint brings its own learned null context; the bundle's is the exported model's.
        null_context = _null_context(model, bundle)
    encoder = TorchStage(model.encoder, bundle.stages[spec.ENCODER_STAGE], dev)
    unet = TorchStage(model.unet, bundle.stages[spec.UNET_STAGE], dev)
    return Backend(f"torch-{dev.type}", encoder, unet, np, null_context=null_context)


def _load(bundle: Any, ckpt: str | None, dev: Any) -> Any:
    from sg2v.training.checkpoint import load_model

    if ckpt is not None:
        model, cfg, vocab = load_model(ckpt, ema=True, device=dev)
        if cfg.data != bundle.config.data or cfg.encoder != bundle.config.encoder or vocab != bundle.vocab:
            raise Sg2vError(f"--ckpt {ckpt} was trained with other shapes or another vocabulary than bundle "
                            f"{bundle.path}; pass the checkpoint the bundle was exported from")
        return model
    return load_bundle_model(bundle, dev)


def load_bundle_model(bundle: Any, dev: Any) -> Any:
    """SG2V (eval mode, on `dev`) from the bundle's `model.safetensors`; BundleError when it has none."""
    from sg2v.training.checkpoint import load_weights_file

    if not bundle.has_file(spec.MODEL_WEIGHTS):
        raise BundleError(f"bundle {bundle.path} has no {spec.MODEL_WEIGHTS} (the PyTorch weights); "
                          "re-export it with --include-weights or pass a checkpoint (--ckpt model.pt)")
    return load_weights_file(bundle.config, bundle.file(spec.MODEL_WEIGHTS), bundle.path).to(dev)


def _null_context(model: Any, bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    length = bundle.shapes["context_tokens"]
    ctx = model.null_context.detach().float().cpu().numpy().reshape(1, length, -1)  # (1, L, D)
    mask = np.zeros((1, length), dtype=np.float32)  # (1, L): only the learned global token is valid
    mask[0, 0] = 1.0
    return np.ascontiguousarray(ctx, dtype=np.float32), mask
