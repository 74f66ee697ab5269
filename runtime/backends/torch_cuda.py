"""The fastest PyTorch path: fp16 weights, static buffers, one CUDA graph per guided denoiser step.

`GuidedStep` computes the classifier-free-guided v for one clip (Ho & Salimans 2022, with guidance rescale,
Lin et al. 2023): the UNet on (cond, uncond) as one batch of 2, then the guided combination, reading x, t, the
context and the guidance weights from buffers allocated once. Three modes: `eager` (the reference: plain
module calls), `compile` (the module through `torch.compile`, the peer a user would pick), and `graphs` (the
whole step captured once as a CUDA graph and replayed: one launch per step instead of hundreds; Nguyen et al.,
"CUDA Graphs", NVIDIA 2019). `TorchPipeline` runs graph -> frames with the shared samplers of `sg2v.sampling`
on torch tensors on one device, so the sampler loop never copies to the host, and records the same
`last_timings` as `sg2v.runtime.Pipeline` (here the denoiser step includes the guidance combination).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from sg2v.errors import Sg2vError
from sg2v.sampling import batch_std

MODES = ("eager", "compile", "graphs")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
CAPTURE_WARMUP = 3  # eager calls on a side stream before capture: cuDNN/cuBLAS pick algorithms, pools fill


def _fp32_types() -> tuple[type, ...]:
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


class GuidedStep:
    """Guided v for x (1, F, C, H, W) at timestep t, with all inputs in static buffers (see module note)."""

    def __init__(self, unet: nn.Module, frames_shape: tuple[int, int, int, int],
                 context_shape: tuple[int, int], device: str | torch.device = "cuda", mode: str = "graphs",
                 precision: str = "fp16", compile_mode: str = "default"):
        if mode not in MODES:
            raise Sg2vError(f"mode {mode!r}: choose one of {list(MODES)}")
        if precision not in PRECISIONS:
            raise Sg2vError(f"precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        self.device = torch.device(device)
        if mode == "graphs" and self.device.type != "cuda":
            raise Sg2vError(f"mode 'graphs' needs a CUDA device, got {self.device}; "
                            "use mode='eager' on the CPU")
        self.mode, self.precision = mode, precision
        self.dtype = PRECISIONS[precision]
        net = unet.to(self.device).eval()
        net = half_unet(net) if precision == "fp16" else net
        self.unet = torch.compile(net, mode=compile_mode) if mode == "compile" else net
        f, c, h, w = frames_shape
        tokens, dim = context_shape
        kw = {"device": self.device}
        self.x = torch.empty((1, f, c, h, w), dtype=torch.float32, **kw)  # (1, F, C, H, W)
        self.t = torch.empty((2,), dtype=torch.float32, **kw)  # (2,): the same timestep for both halves
        self.context = torch.empty((2, tokens, dim), dtype=self.dtype, **kw)  # (2, L, D): cond, uncond
        self.context_mask = torch.empty((2, tokens), dtype=self.dtype, **kw)  # (2, L)
        self.guidance = torch.empty((), dtype=torch.float32, **kw)
        self.rescale = torch.empty((), dtype=torch.float32, **kw)
        self.graph: Any = None
        self.out: torch.Tensor | None = None  # the graph's output buffer (1, F, C, H, W)

    @torch.no_grad()
    def set_context(self, context: torch.Tensor, context_mask: torch.Tensor) -> None:
        """Copy the batch-2 context (cond, uncond) (2, L, D) and mask (2, L) into the step's buffers."""
        self.context.copy_(context)
        self.context_mask.copy_(context_mask)

    @torch.no_grad()
    def set_guidance(self, guidance: float, rescale: float) -> None:
        """Guidance weight and rescale in [0, 1] (0 disables it), as device scalars the graph reads."""
        if not 0.0 <= float(rescale) <= 1.0:
            raise Sg2vError(f"guidance rescale must be in [0, 1], got {rescale}; "
                            "0 disables it, 0.7 is typical")
        self.guidance.fill_(float(guidance))
        self.rescale.fill_(float(rescale))

    def _body(self) -> torch.Tensor:
        x2 = self.x.expand(2, *self.x.shape[1:]).to(self.dtype)  # (2, F, C, H, W): cond and uncond halves
        v2 = self.unet(x2, self.t, self.context, self.context_mask).float()  # (2, F, C, H, W)
        v_cond, v_uncond = v2[0:1], v2[1:2]
        v = v_uncond + self.guidance * (v_cond - v_uncond)
        # Rescale always runs (r = 0 multiplies by exactly 1), so one captured graph serves every setting.
        ratio = batch_std(v_cond) / (batch_std(v) + 1e-12)  # (1, 1, 1, 1, 1)
        return (self.rescale * ratio + (1.0 - self.rescale)) * v  # (1, F, C, H, W)

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
        """v (1, F, C, H, W) float32; in `graphs` mode the step's own buffer, valid until the next call."""
        self.x.copy_(x)
        self.t.fill_(float(t))
        if self.mode != "graphs":
            return self._body()
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.out


class TorchPipeline:
    """Graph -> frames (F, H, W, 3) uint8 with encoder, guided step and sampler all on `device`."""

    def __init__(self, bundle: Any, model_encoder: nn.Module, unet: nn.Module,
                 null_context: tuple[np.ndarray, np.ndarray], device: str | torch.device = "cuda",
                 mode: str = "graphs", precision: str = "fp16", compile_mode: str = "default"):
        from sg2v.schedule import make_alphas_cumprod

        self.bundle = bundle
        self.device = torch.device(device)
        s = bundle.shapes
        self.encoder = model_encoder.to(self.device).eval()
        self.step = GuidedStep(unet, (s["frames"], s["channels"], s["height"], s["width"]),
                               (s["context_tokens"], s["context_dim"]), self.device, mode, precision,
                               compile_mode)
        # Copies: the bundle's arrays are read-only, and torch must not share memory it may not write.
        self.null_context = torch.tensor(np.array(null_context[0]), device=self.device)  # (1, L, D)
        self.null_context_mask = torch.tensor(np.array(null_context[1]), device=self.device)  # (1, L)
        sched = bundle.schedule
        self.alphas_cumprod = make_alphas_cumprod(int(sched["num_train_timesteps"]), sched["kind"])
        self._x_shape = (1, s["frames"], s["channels"], s["height"], s["width"])
        self.backend_name = f"torch-{self.device.type}-{mode}-{precision}"
        self.last_timings: dict[str, Any] = {}

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str = "cuda", mode: str = "graphs",
                    precision: str = "fp16", ckpt: str | os.PathLike | None = None, verify: bool = True,
                    compile_mode: str = "default", threads: int | None = None) -> TorchPipeline:
        """Weights from `ckpt` or the bundle's model.safetensors, loaded by the runtime's torch backend."""
        from sg2v.runtime.backends.torch_ref import make_torch_backend
        from sg2v.runtime.bundle import Bundle

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise Sg2vError(f"device {device!r}: PyTorch sees no CUDA device; "
                            "use device='cpu' with mode='eager'")
        bundle = Bundle.open(path, verify=verify)
        backend = make_torch_backend(bundle, device=device, ckpt=None if ckpt is None else str(ckpt),
                                     threads=threads)
        null = backend.null_context or (bundle.null_context, bundle.null_context_mask)
        return cls(bundle, backend.encoder.fn, backend.unet.fn, null, device, mode, precision, compile_mode)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def __call__(self, graph: Any, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 guidance_rescale: float | None = None, sampler: str | None = None,
                 callback: Callable[[int, float, Any, Any], None] | None = None) -> np.ndarray:
        """Frames (F, H, W, 3) uint8 for `graph`; unset options take the bundle's sampler defaults."""
        from sg2v.graph import pad_graphs, parse_graph
        from sg2v.models.sg2v import graph_tensors
        from sg2v.runtime.pipeline import stage_timings
        from sg2v.sampling import get_sampler
        from sg2v.schedule import timesteps
        from sg2v.video import unit_to_frames

        d = self.bundle.sampler_defaults
        data = self.bundle.config.data
        sample = get_sampler(d["sampler"] if sampler is None else sampler)
        num_train = int(self.bundle.schedule["num_train_timesteps"])
        ts = timesteps(num_train, d["steps"] if steps is None else steps, "trailing")  # (steps,) descending
        self.step.set_guidance(float(d["guidance"] if guidance is None else guidance),
                               float(d["guidance_rescale"] if guidance_rescale is None else guidance_rescale))
        sg = parse_graph(graph, self.bundle.vocab, data.max_objects, data.max_relationships)
        feeds = pad_graphs([sg], data.max_objects, data.max_relationships).as_feeds()
        x_host = np.random.default_rng(int(seed)).standard_normal(self._x_shape, dtype=np.float32)
        cuda = self.device.type == "cuda"
        marks: list[Any] = []

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            # CUDA events time the step on the stream without a host sync per step; the CPU is synchronous.
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                v = self.step(x, t)
                end.record()
                marks.append((start, end))
            else:
                t0 = time.perf_counter()
                v = self.step(x, t)
                marks.append(time.perf_counter() - t0)
            return v

        self._sync()
        t_start = time.perf_counter()
        g = graph_tensors(feeds, self.device)
        context, context_mask = self.encoder(g["objs"], g["obj_mask"], g["triples"], g["triple_mask"])
        self.step.set_context(torch.cat([context, self.null_context]),
                              torch.cat([context_mask, self.null_context_mask]))
        self._sync()
        t_enc = time.perf_counter()
        x = torch.from_numpy(x_host).to(self.device)  # the same x_T as every other backend
        x = sample(denoise, x, ts, self.alphas_cumprod, callback=callback)
        self._sync()
        t_sample = time.perf_counter()
        frames = unit_to_frames(x[0]).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (F, H, W, C)
        t_end = time.perf_counter()
        step_s = [a.elapsed_time(b) / 1e3 for a, b in marks] if cuda else list(marks)
        self.last_timings = stage_timings(self.backend_name, t_start, t_enc, t_sample, t_end, step_s)
        return frames

    def close(self) -> None:
        """Drop the step's graph and buffers (the CUDA caching allocator keeps the memory for reuse)."""
        self.step.graph = None
        self.step.out = None
