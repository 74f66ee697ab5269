"""The `torch-cuda` backend: fp16 weights, static buffers, one CUDA graph per guided denoiser step.

It offers the generation loop a fused guided step (`GuidedStep`, `sg2v.generation.GuidedStep`): the UNet on
the 2B rows (the B conditional ones, then the B unconditional ones; a layout-grounded UNet also reads the
objects and boxes of those rows, zero in the unconditional ones) and the guidance combination of
`sg2v.sampling.guide` (Ho & Salimans 2022, with guidance rescale, Lin et al. 2023), reading x, t, the
conditioning and the guidance settings from buffers allocated once per batch size (for a guidance-distilled
student the step is its one UNet call on the B rows with the guidance weight as an input). Four modes: `eager`
(the reference: plain module calls), `compile` (the module through `torch.compile`, the peer a user would
pick), `torch_tensorrt` (the module through `torch_tensorrt.compile`, the peer a TensorRT user would pick:
Torch-TensorRT's torch.compile backend builds TensorRT engines for each input shape on its first call), and
`graphs` (the whole step captured once per batch size as a CUDA graph and replayed: one launch per step
instead of hundreds; Nguyen et al., "CUDA Graphs", NVIDIA 2019). The `torch_tensorrt` mode is written to
Torch-TensorRT's documented API and UNVERIFIED: Torch-TensorRT cannot be installed on this project's machines.
The sampler then runs on torch tensors on the device, so the loop never copies to the host; on CUDA, CUDA
events time each step without a host sync. Torch is imported only when the backend is built.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sg2v import bundle_spec as spec
from sg2v.errors import Sg2vError
from sg2v.generation import GROUNDING, Backend
from sg2v.kinds import guidance_for, kinds_of_config
from sg2v.sampling import guide

MODES = ("eager", "compile", "graphs", "torch_tensorrt")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
CAPTURE_WARMUP = 3  # eager calls on a side stream before capture: cuDNN/cuBLAS pick algorithms, pools fill


def _fp32_types() -> tuple[Any, ...]:
    from sg2v.models.unet import SinusoidalEmbedding

    # sin/cos of a timestep up to ~1000 need float32: fp16 resolves only 0.5 there. GroupNorm and the UNet's
    # TokenNorm already accumulate in float32 on half inputs, so they stay in fp16 (no extra casts).
    return (SinusoidalEmbedding,)


def half_unet(unet: nn.Module) -> nn.Module:
    """A float16 copy of `unet` whose timestep embedding computes in float32 and hands fp16 on."""
    keep = _fp32_types()
    half = copy.deepcopy(unet)
    for m in half.modules():
        if isinstance(m, keep):
            m.register_forward_hook(lambda mod, args, out: out.to(torch.float16))
            continue
        for p in m.parameters(recurse=False):
            p.data = p.data.half()
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                m._buffers[name] = b.half()
    return half.eval()


def prepare_unet(unet: nn.Module, device: torch.device, mode: str, precision: str,
                 compile_mode: str = "default") -> nn.Module:
    """The UNet as the backend runs it: on `device`, in `precision`, through torch.compile in mode compile."""
    if mode not in MODES:
        raise Sg2vError(f"mode {mode!r}: choose one of {list(MODES)}")
    if precision not in PRECISIONS:
        raise Sg2vError(f"precision {precision!r}: choose one of {sorted(PRECISIONS)}")
    if mode in ("graphs", "torch_tensorrt") and device.type != "cuda":
        raise Sg2vError(f"mode {mode!r} needs a CUDA device, got {device}; use mode='eager' on the CPU")
    net = unet.to(device).eval()
    net = half_unet(net) if precision == "fp16" else net
    if mode == "torch_tensorrt":
        return torch_tensorrt_unet(net, precision)
    return torch.compile(net, mode=compile_mode) if mode == "compile" else net


def torch_tensorrt_unet(net: nn.Module, precision: str) -> Any:
    """`net` (already in `precision`) through `torch_tensorrt.compile(ir="torch_compile")`: torch.compile with
    Torch-TensorRT's backend, which builds a TensorRT engine per input shape on the first call with it.
    `enabled_precisions` lets TensorRT pick fp16 kernels where its builder honours the flag; releases that
    build strongly typed networks take the precision from the module's own dtypes, which `half_unet` set."""
    from sg2v.errors import require

    torch_tensorrt = require("torch_tensorrt", "torch-trt")
    wanted = {PRECISIONS[precision], torch.float32}  # fp32: the timestep embedding (`_fp32_types`)
    return torch_tensorrt.compile(net, ir="torch_compile", enabled_precisions=wanted)


_MODE_NOTES = {"graphs": ", one CUDA graph per guided step and batch size",
               "torch_tensorrt": ", TensorRT engines built by Torch-TensorRT per batch size on first use"}


class GuidedStep:
    """Guided v for x (B, F, C, H, W) at timestep t, all inputs in static buffers (see the module note)."""

    def __init__(self, unet: nn.Module, batch: int, frames_shape: tuple[int, int, int, int],
                 context_shape: tuple[int, int], device: str | torch.device = "cuda", mode: str = "graphs",
                 precision: str = "fp16", object_shape: tuple[int, int] | None = None,
                 student: bool = False):
        self.device = torch.device(device)
        self.mode, self.precision = mode, precision
        self.dtype = PRECISIONS[precision]
        self.unet = unet  # from prepare_unet: already on the device, in the precision, compiled if asked
        self.batch = b = int(batch)
        self.kind = guidance_for(student)  # CFG on (cond, uncond) rows, or a student's B rows
        self._body = getattr(self, STEP_BODIES[self.kind.name])
        rows = self.kind.rows_per_video * b
        f, c, h, w = frames_shape
        tokens, dim = context_shape
        kw = {"device": self.device}
        self.x = torch.empty((b, f, c, h, w), dtype=torch.float32, **kw)  # (B, F, C, H, W)
        self.t = torch.empty((rows,), dtype=torch.float32, **kw)  # (2B,): one timestep for every row
        self.context = torch.empty((rows, tokens, dim), dtype=self.dtype, **kw)  # (2B, L, D): cond, uncond
        self.context_mask = torch.empty((rows, tokens), dtype=self.dtype, **kw)  # (2B, L)
        self.layout: tuple[torch.Tensor, ...] = ()  # a grounded UNet's objects and boxes (uncond rows: 0)
        if object_shape is not None:
            slots, width = object_shape
            self.layout = (torch.empty((rows, slots, width), dtype=self.dtype, **kw),  # (2B, O, d)
                           torch.empty((rows, slots, f, 4), dtype=self.dtype, **kw))  # (2B, O, F, 4)
        self.guidance = torch.empty((), dtype=torch.float32, **kw)
        self.guidance_rows = torch.empty((b,), dtype=torch.float32, **kw)  # (B,): a student's UNet input
        self.rescale = torch.empty((), dtype=torch.float32, **kw)
        self.graph: Any = None
        self.out: torch.Tensor | None = None  # the graph's output buffer (B, F, C, H, W)

    @torch.no_grad()
    def prepare(self, feeds: dict[str, Any], guidance: float, rescale: float) -> None:
        """Copy the conditioning (2B rows: cond, then uncond; a student's B rows) and the guidance settings
        into the buffers."""
        self.context.copy_(feeds["context"])  # (2B, L, D), cast to the step's precision
        self.context_mask.copy_(feeds["context_mask"])  # (2B, L)
        for buf, name in zip(self.layout, GROUNDING):
            buf.copy_(feeds[name])  # (2B, O, d), (2B, O, F, 4)
        self.set_guidance(guidance, rescale)

    @torch.no_grad()
    def set_guidance(self, guidance: float, rescale: float) -> None:
        """Guidance weight and rescale in [0, 1] (0 disables it), as device scalars the graph reads."""
        if not 0.0 <= float(rescale) <= 1.0:
            raise Sg2vError(f"guidance rescale must be in [0, 1], got {rescale}; "
                            "0 disables it, 0.7 is typical")
        self.guidance.fill_(float(guidance))
        self.rescale.fill_(float(rescale))
        self.guidance_rows.fill_(float(guidance))

    def _distilled_body(self) -> torch.Tensor:
        """A student: the guidance weight is the network's input, one call on the B rows."""
        return self.unet(self.x.to(self.dtype), self.t, self.context, self.context_mask, *self.layout,
                         guidance=self.guidance_rows).float()  # (B, F, C, H, W)

    def _cfg_body(self) -> torch.Tensor:
        """CFG: the UNet on the cond and uncond halves, then `guide`."""
        b = self.batch
        x2 = self.x.repeat(2, 1, 1, 1, 1).to(self.dtype)  # (2B, F, C, H, W): the cond and uncond halves
        v2 = self.unet(x2, self.t, self.context, self.context_mask, *self.layout).float()  # (2B, F, C, H, W)
        # Rescale always runs (r = 0 multiplies by exactly 1), so one captured graph serves every setting.
        return guide(v2[:b], v2[b:], self.guidance, self.rescale)  # (B, F, C, H, W)

    @torch.no_grad()
    def capture(self) -> None:
        """Record the step as one CUDA graph (warm-up on a side stream first, as capture requires)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP):
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self._body()
        self.graph = graph

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """v (B, F, C, H, W) float32; in `graphs` mode the step's own buffer, valid until the next call."""
        self.x.copy_(x)
        self.t.fill_(float(t))
        if self.mode != "graphs":
            return self._body()
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.out


STEP_BODIES = {"cfg": "_cfg_body", "student": "_distilled_body"}  # GuidedStep's body by `Guidance.name`


class CudaEventClock:
    """Denoiser step times from CUDA events recorded on the stream: no host sync inside the loop."""

    def __init__(self) -> None:
        self.marks: list[tuple[Any, Any]] = []

    def start(self) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._start.record()

    def stop(self) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.marks.append((self._start, end))

    def seconds(self) -> list[float]:
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in self.marks]


class _CastInputs(nn.Module):
    """The UNet stage for direct calls: float32 inputs cast to the UNet's precision, float32 v out."""

    def __init__(self, unet: nn.Module, dtype: torch.dtype, extra: tuple[str, ...] = ()):
        super().__init__()
        self.unet, self.dtype, self.extra = unet, dtype, tuple(extra)  # extra: the guidance's by keyword

    # rest: [objects, boxes,] then the guidance's extra inputs ([guidance])
    def forward(self, x: Any, t: Any, context: Any, context_mask: Any, *rest: Any) -> Any:
        d = self.dtype
        cut = len(rest) - len(self.extra)
        return self.unet(x.to(d), t, context.to(d), context_mask.to(d), *(a.to(d) for a in rest[:cut]),
                         **dict(zip(self.extra, rest[cut:]))).float()


def make_torch_cuda_backend(bundle: Any, device: str = "cuda", mode: str = "graphs", precision: str = "fp16",
                            ckpt: str | None = None, compile_mode: str = "default",
                            threads: int | None = None) -> Backend:
    """The bundle's SG2V (its `model.safetensors`, or `ckpt`) on `device` with a fused guided step in `mode`
    and `precision`; on the CPU only `eager` runs (a reference for tests)."""
    from sg2v.runtime.backends.torch_ref import load_torch_model

    _, model = load_torch_model(bundle, device, ckpt, threads)
    backend = model_cuda_backend(model, mode, precision, compile_mode)
    if ckpt is None:
        backend.null_context = None  # the bundle's own null context, as the exported graphs use it
    return backend


def model_cuda_backend(model: nn.Module, mode: str = "graphs", precision: str = "fp16",
                       compile_mode: str = "default") -> Backend:
    """An SG2V (on its device) as a backend with the fused guided step, its learned null context included."""
    from sg2v.models.backend import TorchArrays, TorchStage

    dev = next(model.parameters()).device
    unet = prepare_unet(model.unet, dev, mode, precision, compile_mode)
    cfg = model.cfg
    d = cfg.data
    frames = (d.frames, d.channels, d.height, d.width)
    tokens = (d.context_tokens, cfg.encoder.context_dim)
    guidance, grounding = kinds_of_config(cfg)
    objects = None  # a grounded UNet's object slots and width
    if model.layout_net is not None:
        objects = (d.padded_objects, cfg.encoder.embed_dim)
    cuda = dev.type == "cuda"
    steps: dict[int, GuidedStep] = {}  # one per batch size, each with its buffers (and CUDA graph)

    def guided_step(batch: int) -> GuidedStep:
        if batch not in steps:
            steps[batch] = GuidedStep(unet, batch, frames, tokens, dev, mode, precision, objects,
                                      guidance.entry is not None)
        return steps[batch]

    def close() -> None:
        steps.clear()  # the graphs and buffers go; the CUDA caching allocator keeps the memory for reuse

    encoder = TorchStage(getattr(model.encoder, grounding.encoder_call), spec.ENCODER_INPUTS,
                         grounding.encoder_outputs, dev)
    layout = None  # the layout network runs eagerly in float32 on the device: small next to the UNet
    if model.layout_net is not None:
        layout = TorchStage(model.layout_net.eval(), spec.LAYOUT_INPUTS, spec.LAYOUT_OUTPUTS, dev)
    extra = guidance.unet_extra_inputs
    return Backend(
        f"torch-{dev.type}-{mode}-{precision}",
        encoder,
        TorchStage(_CastInputs(unet, PRECISIONS[precision], extra), (*grounding.unet_inputs, *extra),
                   spec.UNET_OUTPUTS, dev),
        TorchArrays(dev),
        layout=layout,
        null_context=model.null_context_arrays(),
        guided_step=guided_step,
        clock=CudaEventClock if cuda else None,
        synchronize=(lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None),
        notes=[f"{mode} {precision}" + _MODE_NOTES.get(mode, "")],
        close=close,
    )
