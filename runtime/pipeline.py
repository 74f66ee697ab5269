"""`Pipeline`: scene graph -> frames on any backend, with the shared torch-free samplers (no torch at import).

One call: parse and pad the graph with the bundle's vocabulary and sizes, run the encoder once, pair the
conditional context with the bundle's learned null context as the UNet's batch of 2 (classifier-free
guidance), draw x_T from `np.random.default_rng(seed)` on the host (the same x_T on every backend), run the
sampler of `sg2v.sampling` with a denoiser that calls the UNet stage, and decode with
`sg2v.video.unit_to_frames`.

Thread safety: a `Pipeline` serialises its calls with a lock, because its stages own one set of buffers (and
on the GPU one CUDA graph); calls from several threads are safe and give the frames a serial call would. For
parallel generation, open one `Pipeline` per thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sg2v.errors import ConfigError, Sg2vError
from sg2v.runtime.backends import Backend, make_backend
from sg2v.runtime.bundle import Bundle

OUTPUTS = ("numpy", "cupy")


def stage_timings(backend: str, t_start: float, t_enc: float, t_sample: float, t_end: float,
                  steps: list[float]) -> dict[str, Any]:
    """Per-stage seconds of one call from its clock marks and per-step UNet times (every pipeline).

    Sampler overhead is the sampling phase minus the time inside the UNet: the sampler's own array math.
    """
    denoiser = float(sum(steps))
    return {
        "backend": backend,
        "encoder_s": t_enc - t_start,
        "denoiser_s": denoiser,
        "denoiser_steps_s": steps,
        "denoiser_per_step_s": denoiser / max(len(steps), 1),
        "unet_calls": len(steps),
        "sampler_overhead_s": (t_sample - t_enc) - denoiser,
        "decode_s": t_end - t_sample,
        "total_s": t_end - t_start,
    }


class Pipeline:
    """A loaded bundle on one backend; `pipe(graph, seed=...)` returns frames (F, H, W, 3) uint8."""

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.xp = backend.xp
        self.alphas_cumprod = bundle.alphas_cumprod()  # (num_train,) float64
        self.last_timings: dict[str, Any] = {}
        self._lock = threading.Lock()
        s = bundle.shapes
        self._x_shape = (1, s["frames"], s["channels"], s["height"], s["width"])
        xp = self.xp
        null_ctx, null_mask = backend.null_context or (bundle.null_context, bundle.null_context_mask)
        with backend.stream_context():
            # The UNet's batch-2 context (cond, uncond), allocated once; row 1 is the learned null context.
            self._context = xp.empty((2, s["context_tokens"], s["context_dim"]), np.float32)  # (2, L, D)
            self._context_mask = xp.empty((2, s["context_tokens"]), dtype=np.float32)  # (2, L)
            self._context[1:] = xp.asarray(null_ctx)
            self._context_mask[1:] = xp.asarray(null_mask)
            self._t = xp.empty((2,), dtype=np.float32)  # (2,)
        self._unet_feeds = {"x": None, "t": self._t, "context": self._context,
                            "context_mask": self._context_mask}
        self._step_times: list[float] = []

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", device: str | None = None,
                    threads: int | None = None, verify: bool = True, ckpt: str | os.PathLike | None = None
                    ) -> Pipeline:
        """Open and verify the bundle at `path` and build `backend` ("auto", "trt", "ort" or "torch")."""
        bundle = Bundle.open(path, verify=verify)
        return cls(bundle, make_backend(bundle, backend, device=device, threads=threads,
                                        ckpt=None if ckpt is None else str(ckpt)))

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def parse(self, graph: Any) -> Any:
        """A `SceneGraph` from a dict, JSON text, path or `SceneGraph`, checked with the bundle's vocab."""
        from sg2v.graph import SceneGraph, parse_graph

        if isinstance(graph, SceneGraph):
            # Re-validate: a SceneGraph built against another vocabulary would silently mean other objects.
            graph = graph.to_dict()
        data = self.bundle.config.data
        return parse_graph(graph, self.bundle.vocab, data.max_objects, data.max_relationships)

    def __call__(self, graph: Any, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 guidance_rescale: float | None = None, sampler: str | None = None,
                 callback: Callable[[int, float, Any, Any], None] | None = None,
                 output: str = "numpy") -> Any:
        """Frames (F, H, W, 3) uint8 for `graph`; unset options take the bundle's sampler defaults."""
        from sg2v.graph import pad_graphs
        from sg2v.sampling import cfg_denoiser, get_sampler
        from sg2v.schedule import timesteps

        if output not in OUTPUTS:
            raise Sg2vError(f"output={output!r}: choose one of {list(OUTPUTS)}")
        if output == "cupy" and self.xp is np:
            raise Sg2vError(f"output='cupy' needs a GPU backend; this pipeline runs on {self.backend.name}: "
                            "use output='numpy'")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise Sg2vError(f"seed must be a non-negative integer, got {seed!r}")
        d = self.bundle.sampler_defaults
        try:
            steps = d["steps"] if steps is None else steps
            guidance = float(d["guidance"] if guidance is None else guidance)
            rescale = float(d["guidance_rescale"] if guidance_rescale is None else guidance_rescale)
            sample = get_sampler(d["sampler"] if sampler is None else sampler)
            num_train = int(self.bundle.schedule["num_train_timesteps"])
            ts = timesteps(num_train, steps, "trailing")  # (steps,) int64, descending
            denoise = cfg_denoiser(self._denoise_pair, guidance, rescale)
        except (ConfigError, TypeError, ValueError) as e:
            # Sampler settings are user input here: report them as sg2v errors (one line, CLI exit 1).
            raise Sg2vError(str(e)) from None
        sg = self.parse(graph)
        feeds = pad_graphs([sg], self.bundle.config.data.max_objects,
                           self.bundle.config.data.max_relationships).as_feeds()
        x_host = np.random.default_rng(int(seed)).standard_normal(self._x_shape, dtype=np.float32)

        with self._lock, self.backend.stream_context():
            return self._generate(feeds, x_host, ts, denoise, sample, callback, output)

    def _denoise_pair(self, x2: Any, t: float) -> Any:
        """The UNet stage on the CFG batch (cond, uncond): x2 (2, F, C, H, W) at timestep t -> v2."""
        t0 = time.perf_counter()
        self._t.fill(t)
        self._unet_feeds["x"] = x2  # (2, F, C, H, W)
        v2 = self.backend.unet.run(self._unet_feeds)["v"]  # the stage's buffer, used before the next step
        self.backend.synchronize()
        self._step_times.append(time.perf_counter() - t0)
        return v2  # (2, F, C, H, W)

    def _generate(self, feeds: dict[str, np.ndarray], x_host: np.ndarray, ts: np.ndarray, denoise: Any,
                  sample: Any, callback: Any, output: str) -> Any:
        be = self.backend
        self._step_times = []
        t_start = time.perf_counter()
        enc = be.encoder.run(feeds)
        self._context[0:1] = enc["context"]  # (1, L, D) -> the cond row
        self._context_mask[0:1] = enc["context_mask"]  # (1, L)
        be.synchronize()
        t_enc = time.perf_counter()
        x = self.xp.asarray(x_host)  # (1, F, C, H, W): the same x_T on every backend
        x = sample(denoise, x, ts, self.alphas_cumprod, callback=callback)
        be.synchronize()
        t_sample = time.perf_counter()
        frames = self._decode(x[0], output)  # (F, H, W, 3) uint8
        t_end = time.perf_counter()
        self.last_timings = stage_timings(be.name, t_start, t_enc, t_sample, t_end, list(self._step_times))
        return frames

    def _decode(self, x: Any, output: str) -> Any:
        """(F, C, H, W) in [-1, 1] -> (F, H, W, 3) uint8 with `sg2v.video.unit_to_frames` (on x's device)."""
        from sg2v.video import unit_to_frames

        xp = self.xp
        frames = xp.ascontiguousarray(unit_to_frames(x).transpose(0, 2, 3, 1))  # (F, H, W, C)
        if xp is not np and output == "numpy":
            return xp.asnumpy(frames)
        return frames

    def close(self) -> None:
        """Release the backend's sessions, engines and device buffers."""
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
