"""PyTorch reference backend: the SG2V modules themselves, for parity checks and benchmarks.

Torch is imported only when the backend is built. Weights come from the bundle's optional
`model.safetensors` (exported with `--include-weights`) or from a checkpoint given explicitly (`ckpt`), loaded
by `sg2v.models.weights` (`torch.load(weights_only=True)`, safetensors). The stages are
`sg2v.models.backend.TorchStage`s with host outputs, so the loop's sampler runs on the same numpy arrays as
the ONNX Runtime backend; on CUDA the tensors cross once per stage call, which is fine for a reference.
"""

from __future__ import annotations

from typing import Any

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, MissingDependencyError, Sg2vError
from sg2v.generation import Backend


def make_torch_backend(bundle: Any, device: str | None = None, ckpt: str | None = None,
                       threads: int | None = None) -> Backend:
    """SG2V from `ckpt` or the bundle's `model.safetensors` on `device` ("cpu" default, "cuda", "cuda:N")."""
    dev, model = load_torch_model(bundle, device or "cpu", ckpt, threads)
    from sg2v.models.backend import model_backend

    backend = model_backend(model, host=True)
    if ckpt is None:
        backend.null_context = None  # the bundle's own null context, as the exported graphs use it
    return backend


def load_torch_model(bundle: Any, device: str, ckpt: str | None, threads: int | None) -> tuple[Any, Any]:
    """(torch device, SG2V in eval mode on it) from `ckpt` or the bundle's weights; one-line errors."""
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError(f"the torch backends need PyTorch ({e}); install it with: "
                                     "pip install 'sg2v[train]', or use --backend ort") from None
    from sg2v.models.backend import torch_device

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch_device(device)
    if ckpt is not None:
        from sg2v.models.weights import load_model

        model, cfg, vocab = load_model(ckpt, ema=True, device=dev)
        if cfg.data != bundle.config.data or cfg.encoder != bundle.config.encoder or vocab != bundle.vocab:
            raise Sg2vError(f"--ckpt {ckpt} was trained with other shapes or another vocabulary than bundle "
                            f"{bundle.path}; pass the checkpoint the bundle was exported from")
        if bool(cfg.unet.guidance_embed) != bool(bundle.config.unet.guidance_embed):
            what = ("a guidance-distilled student", "a model sampled with guidance")
            raise Sg2vError(f"--ckpt {ckpt} is {what[not cfg.unet.guidance_embed]} and bundle {bundle.path} "
                            f"{what[not bundle.config.unet.guidance_embed]}; pass the checkpoint the bundle "
                            "was exported from")
        return dev, model
    return dev, load_bundle_model(bundle, dev)


def load_bundle_model(bundle: Any, dev: Any) -> Any:
    """SG2V (eval mode, on `dev`) from the bundle's `model.safetensors`; BundleError when it has none."""
    from sg2v.models.weights import load_weights_file

    if not bundle.has_file(spec.MODEL_WEIGHTS):
        raise BundleError(f"bundle {bundle.path} has no {spec.MODEL_WEIGHTS} (the PyTorch weights); "
                          "re-export it with --include-weights or pass a checkpoint (--ckpt model.pt)")
    return load_weights_file(bundle.config, bundle.file(spec.MODEL_WEIGHTS), bundle.path).to(dev)
