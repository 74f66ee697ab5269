"""The one graph -> frames loop (torch-free), for every runtime backend and for training-time evaluation.

`Generator.run` takes B padded graphs and B seeds and returns B videos. It owns, each in one place:
- x_T: `initial_noise`, `np.random.default_rng(seed).standard_normal((1, F, C, H, W))` per video on the host,
  so every backend starts from the same noise for a seed; a stochastic sampler's noise at step i likewise
  (`step_noise`: `default_rng([seed, 1, i])` per video), handed to every sampler as its `noise` source;
- the sampler settings: `resolve_settings` (defaults, then validation: one-line `ConfigError`s), then the
  model's guidance's check (`sg2v.kinds`);
- guidance, through the model's `sg2v.kinds.Guidance`, chosen once from the manifest: classifier-free
  guidance with rescale (`sg2v.sampling.guide` through `cfg_denoiser` around the UNet stage) or a backend's
  fused guided step (`Backend.guided_step`, e.g. one CUDA graph per step), which uses the same function;
- the conditioning of the UNet (`Guidance.fill`): the encoder's outputs are the conditional half, the learned
  null context the unconditional half, laid out as one batch of 2B rows (the B conditional rows, then the B
  unconditional ones) in buffers allocated once and grown when a larger batch comes. A guidance-distilled
  student (the bundle manifest's "student" entry) has no unconditional half: its UNet runs on the B
  conditional rows with the guidance weight as one more input (one call of B rows per step, or the backend's
  fused step of it), and `settings` refuses what it was not distilled for;
- the layout stage of a layout-grounded model (`sg2v.kinds.Grounding`: its plan, then `LayoutSampler`);
- batching: one encoder call and one UNet call per step for the whole batch, in chunks of at most the
  backend's `max_batch` videos (bundles of format 1 take one video per call);
- decoding with `sg2v.video.unit_to_frames`, and `last_timings`;
- progress events after each stage and step, and cancellation at those points (`sg2v.progress`).
Backends hand the loop stages (`Stage.run(feeds) -> outputs`, docs/ARCHITECTURE.md "Runtime") and an array
module (`xp`: numpy, CuPy, or an object with the same few calls for torch tensors).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from sg2v.config import MAX_SEED
from sg2v.errors import ConfigError, Sg2vError, first_line, shown
from sg2v.graph import GRAPH_TENSORS
from sg2v.kinds import CONDITIONING as CONDITIONING  # re-exported: the UNet's conditioning inputs
from sg2v.kinds import GROUNDING as GROUNDING  # re-exported: a grounded UNet's further inputs
from sg2v.kinds import grounding_for, guidance_for
from sg2v.sampling import Denoiser, get_sampler
from sg2v.schedule import timesteps
from sg2v.video import unit_to_frames

OUTPUTS = ("numpy", "cupy")


class Stage(Protocol):
    """One network (encoder or UNet) with its buffers allocated once."""

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


class GuidedStep(Protocol):
    """A backend's fused guided denoiser step for one batch size B (the UNet on 2B rows, then `guide`; for a
    guidance-distilled student the UNet on B rows with the guidance input)."""

    def prepare(self, feeds: dict[str, Any], guidance: float, rescale: float) -> None:
        """Take the UNet's conditioning (2B rows: cond, then uncond; a student's B rows) and the guidance
        settings."""

    def __call__(self, x: Any, t: float) -> Any:
        """Guided v (B, F, C, H, W) for x (B, F, C, H, W) at timestep t; valid until the next call."""


class HostClock:
    """Denoiser step times by the host clock, each read after the backend's device sync."""

    def __init__(self, synchronize: Callable[[], None]):
        self.synchronize = synchronize
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.synchronize()
        self.times.append(time.perf_counter() - self._t0)

    def seconds(self) -> list[float]:
        return list(self.times)


@dataclass
class Backend:
    """A bundle's stages on one device, with the array module their outputs live in."""

    name: str  # e.g. "ort-cpu", "ort-cuda", "trt", "torch-cpu", "torch-cuda-graphs-fp16"
    encoder: Stage
    unet: Stage
    xp: Any = np  # numpy, cupy, or sg2v.models.backend.TorchArrays
    # overrides the bundle's (torch with --ckpt)
    null_context: tuple[NDArray[Any], NDArray[Any]] | None = None
    max_batch: int | None = None  # videos per stage call (None: any; the UNet then takes 2 x max_batch rows)
    guided_step: Callable[[int], GuidedStep] | None = None  # the fused guided step for batch size B, if any
    clock: Callable[[], Any] | None = None  # step timer (start/stop/seconds); None: HostClock(synchronize)
    stream_context: Callable[[], Any] = contextlib.nullcontext  # the CUDA stream the loop's array ops use
    synchronize: Callable[[], None] = lambda: None  # wait for queued device work (for honest timings)
    notes: list[str] = field(default_factory=list)  # how the ladder got here (fallbacks, capture status)
    close: Callable[[], None] = lambda: None
    layout: Stage | None = None  # the layout network of a grounded bundle (format 3)


@dataclass(frozen=True)
class SamplerSettings:
    """What one generation call samples with: sampler name, steps, guidance weight and rescale."""

    sampler: str
    steps: int
    guidance: float
    guidance_rescale: float


def sampler_defaults(diffusion: Any, guidance: float | None = None) -> dict[str, Any]:
    """The `sampler_defaults` of a `DiffusionConfig` (a bundle manifest's entry), `guidance` overriding."""
    return {"sampler": diffusion.default_sampler, "steps": diffusion.default_steps,
            "guidance": float(diffusion.default_guidance if guidance is None else guidance),
            "guidance_rescale": diffusion.default_guidance_rescale}


def resolve_settings(defaults: Mapping[str, Any], num_train: int, steps: int | None = None,
                     guidance: float | None = None, guidance_rescale: float | None = None,
                     sampler: str | None = None) -> SamplerSettings:
    """The settings of one call: each unset option takes `defaults`, then each is checked (ConfigError)."""
    steps = defaults["steps"] if steps is None else steps
    timesteps(num_train, steps, "trailing")  # "sampler steps must be an integer in [1, num_train]"
    name = defaults["sampler"] if sampler is None else sampler
    get_sampler(name)
    try:
        g = float(defaults["guidance"] if guidance is None else guidance)
        r = float(defaults["guidance_rescale"] if guidance_rescale is None else guidance_rescale)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"guidance and guidance rescale must be finite numbers ({first_line(e)})") from None
    if not (math.isfinite(g) and g >= 0.0):
        raise ConfigError(f"guidance must be a finite number >= 0, got {g}; 1 is no guidance, 0 "
                          "unconditional")
    if not 0.0 <= r <= 1.0:
        raise ConfigError(f"guidance rescale must be in [0, 1], got {r}; 0 disables it, 0.7 is typical")
    return SamplerSettings(str(name), int(steps), g, r)


def check_student_settings(s: SamplerSettings, student: Mapping[str, Any]) -> None:
    """A guidance-distilled consistency student samples with DDIM on its grid's step counts, at guidance in
    its distilled range and its teacher's rescale (the manifest's "student" entry); else one ConfigError."""
    guidance_for(student).check(s)


def check_seeds(seeds: Sequence[int], count: int) -> list[int]:
    """`count` non-negative integer seeds, or an Sg2vError naming the bad one."""
    seeds = list(seeds)
    if len(seeds) != count:
        raise Sg2vError(f"{len(seeds)} seeds for {count} graphs; pass one seed per graph")
    for s in seeds:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
            raise Sg2vError(f"seed must be an integer in [0, {MAX_SEED}], got {shown(s)}")
    return [int(s) for s in seeds]


def initial_noise(seeds: Sequence[int], frame_shape: Sequence[int]) -> NDArray[Any]:
    """x_T of each seed, stacked: (B, F, C, H, W) float32, `default_rng(seed).standard_normal` per video."""
    return np.concatenate([np.random.default_rng(int(s)).standard_normal((1, *frame_shape), dtype=np.float32)
                           for s in seeds])


def step_noise(seeds: Sequence[int], frame_shape: Sequence[int], xp: Any = np) -> Callable[[int], Any]:
    """The noise a stochastic sampler adds at step i, drawn on the host like x_T: per video
    `default_rng([seed, 1, i]).standard_normal((1, F, C, H, W))`, stacked (B, ...) float32 in `xp`, so a
    seed gives the same video on every backend and in any batch."""

    def draw(i: int) -> Any:
        return xp.asarray(np.concatenate([
            np.random.default_rng([int(s), 1, int(i)]).standard_normal((1, *frame_shape), dtype=np.float32)
            for s in seeds]))

    return draw


def stage_timings(backend: str, encoder_s: float, sample_s: float, total_s: float, steps: list[float],
                  videos: int = 1, chunks: int = 1, layout_s: float = 0.0) -> dict[str, Any]:
    """Per-stage seconds of one call (`last_timings`). Sampler overhead is the sampling phase minus the
    time inside the denoiser calls: the sampler's own array math; decode is the rest of the call (the
    layout stage, drawing and checking the layouts of a grounded model, is its own `layout_s`)."""
    denoiser = float(sum(steps))
    return {
        "backend": backend,
        "encoder_s": encoder_s,
        "denoiser_s": denoiser,
        "denoiser_steps_s": steps,
        "denoiser_per_step_s": denoiser / max(len(steps), 1),
        "unet_calls": len(steps),
        "sampler_overhead_s": sample_s - denoiser,
        "decode_s": total_s - encoder_s - layout_s - sample_s,
        "total_s": total_s,
        "videos": videos,
        "chunks": chunks,
    }


@dataclass
class Generation:
    """What one `Generator.run` made: frames (B, F, H, W, 3) uint8 (numpy, or device arrays), timings, and
    for a grounded model each video's layout (`sg2v.layout_sampler.LayoutResult`: tracks, relation checks)."""

    frames: Any
    timings: dict[str, Any]
    layouts: list[Any] | None = None


class Generator:
    """Graph tensors + seeds -> frames on one backend (see the module note); not thread-safe by itself."""

    def __init__(self, backend: Backend, frame_shape: Sequence[int], alphas_cumprod: NDArray[Any],
                 defaults: Mapping[str, Any], null_context: tuple[NDArray[Any], NDArray[Any]] | None,
                 layout: Mapping[str, Any] | None = None, student: Mapping[str, Any] | None = None):
        self.backend = backend
        self.guidance = guidance_for(student)  # classifier-free, or a guidance-distilled student
        self.grounding = grounding_for(layout)  # ungrounded, or a layout stage first
        if (backend.layout is None) != (layout is None):
            raise Sg2vError("a grounded model needs both its layout stage and its layout settings (the "
                            "manifest's \"layout\" entry); re-export the bundle")
        self.layout = dict(layout) if layout is not None else None
        self.xp = backend.xp
        self.frame_shape = tuple(int(n) for n in frame_shape)  # (F, C, H, W)
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)  # (num_train,)
        self.num_train = len(self.alphas_cumprod)
        self.defaults = dict(defaults)
        with backend.stream_context():  # the unconditional rows' conditioning (a student has none)
            self._uncond = self.guidance.unconditional(null_context, self.xp)
        self._bufs: dict[str, Any] = {}  # UNet feeds other than x: (2 x capacity, ...) each
        self._capacity = 0
        self.last_timings: dict[str, Any] = {}

    def settings(self, **options: Any) -> SamplerSettings:
        """`resolve_settings` with this generator's defaults (steps, guidance, guidance_rescale, sampler);
        a guidance-distilled student also refuses what it was not distilled for."""
        return self.guidance.settings(self.defaults, self.num_train, **options)

    @property
    def student(self) -> dict[str, Any] | None:
        """A guidance-distilled student's manifest "student" entry; None for a model sampled with CFG."""
        return self.guidance.entry

    @property
    def grounded(self) -> bool:
        """Whether the model draws a layout first and grounds the UNet on it."""
        return self.grounding.layout_stage

    def check_call(self, b: int, seeds: Sequence[int], output: str = "numpy", max_batch: int | None = None,
                   graphs: Sequence[Any] | None = None,
                   layouts: Sequence[Mapping[int, NDArray[Any]]] | None = None,
                   layout_tries: int | None = None) -> tuple[list[int], int, Any]:
        """The checks `run` makes before any work (one-line Sg2vErrors) for a call of b videos; returns its
        seeds, its videos per chunk and its layout plan (None when the model is not grounded)."""
        if not isinstance(output, str) or output not in OUTPUTS:
            raise Sg2vError(f"output={shown(output)}: choose one of {list(OUTPUTS)}")
        if output == "cupy" and getattr(self.xp, "__name__", "") != "cupy":
            raise Sg2vError(f"output='cupy' needs a GPU backend; this pipeline runs on {self.backend.name}: "
                            "use output='numpy'")
        seeds = check_seeds(seeds, b)
        whole = isinstance(max_batch, (int, np.integer)) and not isinstance(max_batch, bool)
        if max_batch is not None and not (whole and max_batch >= 1):
            raise Sg2vError(f"batch {shown(max_batch)}: must be an integer >= 1 videos per call")
        limit = min(n for n in (max_batch, self.backend.max_batch, b) if n is not None)
        return seeds, limit, self._layout_plan(b, graphs, layouts, layout_tries)

    def run(self, feeds: Mapping[str, NDArray[Any]], seeds: Sequence[int], settings: SamplerSettings,
            callback: Callable[[int, float, Any, Any], None] | None = None, output: str = "numpy",
            max_batch: int | None = None, graphs: Sequence[Any] | None = None,
            layouts: Sequence[Mapping[int, NDArray[Any]]] | None = None,
            layout_tries: int | None = None, progress: Callable[[Any], Any] | None = None,
            cancel: Any = None) -> Generation:
        """Videos for the B graphs in `feeds` (`GRAPH_TENSORS`, (B, ...)) with seed i for graph i.

        Chunks of at most `max_batch` videos (and the backend's limit) run one after another; `callback`
        (step, t, x, x0) sees each chunk's x (b, F, C, H, W). A grounded model also needs the parsed `graphs`
        (their relationships are checked on the layout); `layouts[i]` maps object indices to given (F, 4)
        tracks, kept exactly (on top of the graph's own "layout" key); `layout_tries` caps the layouts drawn
        per graph until every relation with a rule holds (default: the bundle's). `progress` gets a
        `sg2v.progress.Progress` after each stage and step; a set `cancel` event (`is_set()`) stops the call
        at the next one with `sg2v.errors.Cancelled`.
        """
        from sg2v.layout_sampler import max_rounds
        from sg2v.progress import Tracker

        xp, be = self.xp, self.backend
        b = len(feeds[GRAPH_TENSORS[0]])
        seeds, limit, plan = self.check_call(b, seeds, output, max_batch, graphs, layouts, layout_tries)
        sample = get_sampler(settings.sampler)
        ts = timesteps(self.num_train, settings.steps, "trailing")  # (steps,) int64, descending
        rounds = 0 if plan is None else max_rounds(plan["settings"]["tries"], plan["settings"]["per_round"])
        track = Tracker(progress, cancel, b, limit, len(ts), rounds)
        track.check()
        clock = be.clock() if be.clock is not None else HostClock(be.synchronize)
        t_start = time.perf_counter()
        encoder_s = sample_s = layout_s = 0.0
        frames, drawn = [], []
        with be.stream_context():
            for lo in range(0, b, limit):
                hi = min(lo + limit, b)
                t0 = time.perf_counter()
                enc = be.encoder.run({k: feeds[k][lo:hi] for k in GRAPH_TENSORS})
                if track.active:
                    track.done("encoder", 1, lo, hi)
                cond = {name: enc[name] for name in CONDITIONING}
                if plan is not None:
                    t_layout = time.perf_counter()
                    results, boxes = self._draw_layouts(enc, feeds["triples"][lo:hi], plan, seeds, lo, hi,
                                                        track.round_callback(lo, hi))
                    drawn += results
                    cond.update(objects=enc["objects"], boxes=xp.asarray(boxes))
                    layout_s += time.perf_counter() - t_layout
                unet_feeds = self._conditioning(cond, self._uncond, hi - lo)
                be.synchronize()
                t1 = time.perf_counter()
                x = xp.asarray(initial_noise(seeds[lo:hi], self.frame_shape))  # (b, F, C, H, W)
                x = sample(self._denoiser(unet_feeds, hi - lo, settings, clock), x, ts, self.alphas_cumprod,
                           callback=track.step_callback(callback, lo, hi),
                           noise=step_noise(seeds[lo:hi], self.frame_shape, xp))
                be.synchronize()
                t2 = time.perf_counter()
                frames.append(self._decode(x, output))  # (b, F, H, W, 3) uint8
                if track.active:
                    track.done("decode", 1, lo, hi)
                encoder_s += t1 - t0
                sample_s += t2 - t1
            out = frames[0] if len(frames) == 1 else _concatenate(frames, output, xp)
        total = time.perf_counter() - t_start
        self.last_timings = stage_timings(be.name, encoder_s - layout_s, sample_s, total, clock.seconds(), b,
                                          len(frames), layout_s)
        if plan is None:
            return Generation(out, self.last_timings)
        self.last_timings.update(layout_s=layout_s, layout_draws=[r.draws for r in drawn],
                                 layout_satisfied=[r.satisfied for r in drawn])
        return Generation(out, self.last_timings, drawn)

    def draw_layouts(self, feeds: Mapping[str, NDArray[Any]], seeds: Sequence[int], graphs: Sequence[Any],
                     layouts: Sequence[Mapping[int, NDArray[Any]]] | None = None,
                     layout_tries: int | None = None, max_batch: int | None = None) -> list[Any]:
        """The layout stage alone: the `LayoutResult` each graph would be drawn with (no video)."""
        self.grounding.require_layout_stage()
        be = self.backend
        b = len(feeds[GRAPH_TENSORS[0]])
        seeds = check_seeds(seeds, b)
        plan = self._layout_plan(b, graphs, layouts, layout_tries)
        limit = min(n for n in (max_batch, be.max_batch, b) if n is not None)
        out: list[Any] = []
        with be.stream_context():
            for lo in range(0, b, limit):
                hi = min(lo + limit, b)
                enc = be.encoder.run({k: feeds[k][lo:hi] for k in GRAPH_TENSORS})
                out += self._draw_layouts(enc, feeds["triples"][lo:hi], plan, seeds, lo, hi)[0]
        return out

    def _layout_plan(self, b: int, graphs: Sequence[Any] | None,
                     layouts: Sequence[Mapping[int, NDArray[Any]]] | None, tries: int | None) -> Any:
        """What the layout stage needs per graph (counts, relationships, pinned tracks), or None when the
        model is not grounded."""
        return self.grounding.plan(b, graphs, layouts, tries, self.frame_shape[0], self.layout)

    def _draw_layouts(self, enc: Mapping[str, Any], triples: NDArray[Any], plan: Mapping[str, Any],
                      seeds: Sequence[int], lo: int, hi: int,
                      on_round: Callable[[int], None] | None = None) -> tuple[list[Any], NDArray[Any]]:
        """Draw and check the layouts of graphs lo..hi; boxes (b, O, F, 4) for the UNet (padded slots 0)."""
        from sg2v.geometry import from_entry
        from sg2v.layout_sampler import LayoutSampler

        be, xp = self.backend, self.xp
        assert be.layout is not None  # only a grounded model has a plan
        s = plan["settings"]
        f, _, h, w = self.frame_shape
        host = {name: _host(enc[name], xp) for name in ("objects", "context", "context_mask")}
        host["triples"] = np.asarray(triples)
        geometry = s.get("geometry")  # the manifest's entry (sg2v.geometry), None: no constraints
        sampler = LayoutSampler(be.layout.run, self.alphas_cumprod, f, h, w, s["relation_rules"],
                                steps=s["steps"], tries=s["tries"], per_round=s["per_round"],
                                sampler=s["sampler"], xp=xp, max_batch=s.get("max_batch"),
                                geometry=None if geometry is None else from_entry(geometry))
        results = sampler.draw(host, plan["relationships"][lo:hi], plan["counts"][lo:hi],
                               plan["pinned"][lo:hi], seeds[lo:hi], on_round)
        boxes = np.zeros((hi - lo, host["objects"].shape[1], f, 4), np.float32)  # (b, O, F, 4)
        for i, r in enumerate(results):
            boxes[i, :len(r.tracks)] = r.tracks
        return results, boxes

    def _conditioning(self, cond: Mapping[str, Any], uncond: Mapping[str, Any], b: int) -> dict[str, Any]:
        """The UNet feeds other than x: t, the guidance's extra inputs, and each conditioning input in the
        guidance's rows (`Guidance.fill`: the b rows of `cond`, then for CFG `uncond`'s)."""
        xp, guidance = self.xp, self.guidance
        rows = guidance.rows_per_video * b
        vectors = ("t", *guidance.unet_extra_inputs)  # (rows,) each
        if b > self._capacity or set(cond) - set(self._bufs):  # grown once; smaller batches use a prefix
            self._bufs = {name: xp.empty((rows,), dtype=np.float32) for name in vectors}
            for name, value in cond.items():
                self._bufs[name] = xp.empty((rows, *value.shape[1:]), dtype=np.float32)
            self._capacity = b
        feeds = {name: self._bufs[name][:rows] for name in (*vectors, *cond)}
        guidance.fill(feeds, cond, uncond, b)
        return feeds

    def _denoiser(self, feeds: dict[str, Any], b: int, s: SamplerSettings, clock: Any) -> Denoiser:
        """denoise(x, t) -> guided v (`Guidance.denoiser`: the backend's fused step, a student's UNet at
        weight w, or CFG around the UNet)."""
        return self.guidance.denoiser(self.backend, feeds, b, s, clock)

    def _decode(self, x: Any, output: str) -> Any:
        """(b, F, C, H, W) in [-1, 1] -> (b, F, H, W, 3) uint8 on x's device; to the host for "numpy"."""
        xp = self.xp
        frames = xp.ascontiguousarray(xp.moveaxis(unit_to_frames(x), 2, -1))  # (b, F, H, W, C)
        return frames if output != "numpy" or xp is np else xp.asnumpy(frames)


def _host(a: Any, xp: Any) -> NDArray[Any]:
    """A stage output as a host numpy array (a copy where it lives on a device)."""
    return np.asarray(a) if isinstance(a, np.ndarray) or xp is np else xp.asnumpy(a)


def _concatenate(parts: list[Any], output: str, xp: Any) -> Any:
    return np.concatenate(parts) if output == "numpy" or xp is np else xp.concatenate(parts)
