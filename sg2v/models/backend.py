"""SG2V modules in memory as a backend of the one generation loop (`sg2v.generation`), and torch devices.

Training-time evaluation runs the live model through `model_generator`; the runtime's torch backends
(`sg2v.runtime.backends.torch_ref`, `torch_cuda`) build on the same `TorchStage` (the reference backend with
host arrays, the CUDA-graph backend with device tensors). `torch_device` is the one parser of `--device`
values for every PyTorch part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sg2v import bundle_spec as spec
from sg2v.config import DEVICES, ModelConfig, parse_device
from sg2v.errors import ConfigError, Sg2vError
from sg2v.generation import Backend, Generator, sampler_defaults
from sg2v.kinds import kinds_of_config
from sg2v.schedule import make_alphas_cumprod

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
           np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}


def torch_device(text: str | None, flag: str = "--device") -> torch.device:
    """The torch device a `--device` value names ("auto": CUDA GPU 0 when PyTorch sees one, else the CPU)."""
    kind, index = parse_device(text, flag)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {text}: PyTorch sees no CUDA device; use {flag} cpu (choices: {DEVICES})")
    return torch.device("cuda", 0 if index is None else index)


class TorchArrays:
    """The array-module calls the generation loop makes (numpy's names), for torch tensors on one device."""

    __name__ = "torch"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def empty(self, shape: Sequence[int], dtype: Any) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=_DTYPES[np.dtype(dtype)], device=self.device)

    def asarray(self, a: Any) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.to(self.device)
        return torch.from_numpy(np.array(a)).to(self.device)  # a copy: bundle arrays are read-only

    def moveaxis(self, a: torch.Tensor, source: int, destination: int) -> torch.Tensor:
        return torch.movedim(a, source, destination)

    def ascontiguousarray(self, a: torch.Tensor) -> torch.Tensor:
        return a.contiguous()

    def asnumpy(self, a: torch.Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def concatenate(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))


class TorchStage:
    """A torch module as a stage: named inputs (numpy or tensors) in, named float32 outputs, no autograd.

    With `host`, outputs are copied into numpy buffers, grown to the largest batch seen and handed back as
    prefixes (the reference backend's sampler runs on host arrays); else they stay tensors on the device.
    """

    def __init__(self, fn: Any, inputs: Sequence[str], outputs: Sequence[str], device: torch.device,
                 host: bool = False):
        self.fn = fn
        self.input_names = list(inputs)
        self.output_names = list(outputs)
        self.device = torch.device(device)
        self.host = host
        self._host_bufs: dict[str, np.ndarray] = {}

    def _tensor(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(self.device)
        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        try:
            args = [self._tensor(feeds[n]) for n in self.input_names]
        except KeyError as e:
            raise Sg2vError(f"feed {e.args[0]!r} is missing; the stage takes {self.input_names}") from None
        with torch.no_grad():
            out = self.fn(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        values = {name: v.float() if v.is_floating_point() else v for name, v in zip(self.output_names, out)}
        if not self.host:
            return values
        result = {}
        for name, v in values.items():
            buf = self._host_bufs.get(name)
            if buf is None or buf.shape[0] < v.shape[0] or buf.shape[1:] != tuple(v.shape[1:]):
                buf = self._host_bufs[name] = np.empty(tuple(v.shape), dtype=np.float32)
            view = buf[:v.shape[0]]
            view[...] = v.detach().cpu().numpy()
            result[name] = view
        return result


def model_backend(model: torch.nn.Module, host: bool = False, name: str | None = None) -> Backend:
    """An SG2V's stages (encoder, layout network when grounded, UNet) as a backend on the model's device,
    with its learned null context."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    guidance, grounding = kinds_of_config(model.cfg)
    encoder = TorchStage(getattr(model.encoder, grounding.encoder_call), spec.ENCODER_INPUTS,
                         grounding.encoder_outputs, device, host)
    layout = None  # a layout-grounded model's layout network
    if model.layout_net is not None:
        layout = TorchStage(model.layout_net, spec.LAYOUT_INPUTS, spec.LAYOUT_OUTPUTS, device, host)
    extra = guidance.unet_extra_inputs
    return Backend(
        name or f"torch-{device.type}",
        encoder,
        TorchStage(UNetCall(model.unet, extra), (*grounding.unet_inputs, *extra), spec.UNET_OUTPUTS,
                   device, host),
        layout=layout,
        xp=np if host else TorchArrays(device),
        null_context=model.null_context_arrays(),
        synchronize=(lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None),
    )


class UNetCall(torch.nn.Module):
    """A UNet called with its stage inputs in the manifest's order (x, t, context, context_mask, [objects,
    boxes,] then the guidance's `extra` inputs, which go by keyword, so an ungrounded UNet gets no layout)."""

    def __init__(self, unet: torch.nn.Module, extra: Sequence[str] = ()):
        super().__init__()
        self.unet, self.extra = unet, tuple(extra)

    def forward(self, x, t, context, context_mask, *rest):
        cut = len(rest) - len(self.extra)
        return self.unet(x, t, context, context_mask, *rest[:cut], **dict(zip(self.extra, rest[cut:])))


class StudentCall(UNetCall):
    """A guidance-distilled student's UNet: the guidance weight is its last stage input."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__(unet, (spec.STUDENT_INPUT,))


def layout_settings(cfg: ModelConfig, vocab: Any) -> dict[str, Any] | None:
    """The layout stage's settings of a model (the manifest's `layout` entry), None without a layout net."""
    return kinds_of_config(cfg)[1].manifest_entries(cfg, vocab).get("layout")


def model_generator(model: torch.nn.Module, cfg: ModelConfig | None = None, vocab: Any = None) -> Generator:
    """The generation loop on `model_backend(model)`, with the model config's sampler and layout defaults."""
    cfg = cfg if cfg is not None else model.cfg
    if vocab is None:
        from sg2v.vocab import shapes_vocab

        vocab = shapes_vocab()
    d, diffusion = cfg.data, cfg.diffusion
    backend = model_backend(model)
    return Generator(backend, (d.frames, d.channels, d.height, d.width),
                     make_alphas_cumprod(diffusion.num_train_timesteps, diffusion.schedule),
                     sampler_defaults(diffusion), backend.null_context, layout_settings(cfg, vocab),
                     kinds_of_config(cfg)[0].entry)
