"""`Pipeline`: a bundle + a backend + the one generation loop of `sg2v.generation` (no torch at import).

`pipe(graph, seed=...)` returns one video (F, H, W, 3) uint8; `pipe.generate(graphs, seeds)` returns B videos
(B, F, H, W, 3) uint8 from one encoder call and one batched UNet call per sampler step (in chunks of the
backend's `max_batch`). Graphs are parsed and padded with the bundle's vocabulary and sizes; x_T, sampler
defaults, guidance and timings are the loop's, so every backend and training-time evaluation agree on them.

Thread safety: a `Pipeline` serialises its calls with a lock, because its stages own one set of buffers (and
on the GPU CUDA graphs); calls from several threads are safe and give the frames a serial call would. For
parallel generation, open one `Pipeline` per thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sg2v.errors import Sg2vError
from sg2v.generation import Backend, Generation, Generator, check_seeds
from sg2v.runtime.backends import make_backend
from sg2v.runtime.bundle import Bundle


class Pipeline:
    """A loaded bundle on one backend; `pipe(graph, seed=...)` returns frames (F, H, W, 3) uint8."""

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.xp = backend.xp
        s = bundle.shapes
        student = bundle.student  # a guidance-distilled student: no unconditional rows, no null context
        null = None if student is not None else (backend.null_context
                                                 or (bundle.null_context, bundle.null_context_mask))
        layout = None
        if bundle.grounded:  # candidate layouts per layout-stage call: at most its batch axis takes
            layout = {**bundle.layout, "max_batch": s["max_layout_batch"]}
        self.generator = Generator(backend, (s["frames"], s["channels"], s["height"], s["width"]),
                                   bundle.alphas_cumprod(), bundle.sampler_defaults, null, layout,
                                   student)
        self.last_generation: Generation | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", device: str | None = None,
                    threads: int | None = None, verify: bool = True, ckpt: str | os.PathLike | None = None
                    ) -> Pipeline:
        """Open and verify the bundle at `path` and build `backend` (one of `sg2v.runtime.BACKENDS`)."""
        bundle = Bundle.open(path, verify=verify)
        return cls(bundle, make_backend(bundle, backend, device=device, threads=threads,
                                        ckpt=None if ckpt is None else str(ckpt)))

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def max_batch(self) -> int | None:
        """Videos per stage call (None: any); larger batches run in chunks of this size."""
        return self.backend.max_batch

    @property
    def last_timings(self) -> dict[str, Any]:
        """Seconds per stage of the last call: encoder, each denoiser step, sampler overhead, decode."""
        return self.generator.last_timings

    def parse(self, graph: Any) -> Any:
        """A `SceneGraph` from a dict, JSON text, path or `SceneGraph`, checked with the bundle's vocab."""
        from sg2v.graph import SceneGraph, parse_graph

        if isinstance(graph, SceneGraph):
            # Re-validate: a SceneGraph built against another vocabulary would silently mean other objects.
            graph = graph.to_dict()
        data = self.bundle.config.data
        return parse_graph(graph, self.bundle.vocab, data.max_objects, data.max_relationships, data.frames)

    def __call__(self, graph: Any, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 guidance_rescale: float | None = None, sampler: str | None = None,
                 callback: Callable[[int, float, Any, Any], None] | None = None,
                 output: str = "numpy") -> Any:
        """Frames (F, H, W, 3) uint8 for `graph`; unset options take the bundle's sampler defaults."""
        return self.generate([graph], [seed], steps=steps, guidance=guidance,
                             guidance_rescale=guidance_rescale, sampler=sampler, callback=callback,
                             output=output)[0]

    def generate(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
                 guidance: float | None = None, guidance_rescale: float | None = None,
                 sampler: str | None = None, callback: Callable[[int, float, Any, Any], None] | None = None,
                 output: str = "numpy", max_batch: int | None = None,
                 layouts: Sequence[Mapping[int, Any] | None] | None = None,
                 layout_tries: int | None = None) -> Any:
        """Frames (B, F, H, W, 3) uint8 for B graphs, graph i from seed i: the frames of B single calls.

        One encoder call and one UNet call per step for at most `max_batch` (and the backend's limit) videos
        at a time; unset options take the bundle's sampler defaults. For a layout-grounded bundle,
        `layouts[i]` maps object indices of graph i to given tracks ((F, 4) boxes in [0, 1], kept exactly,
        beside the graph's own "layout" key) and `layout_tries` caps the draws of the relation check;
        `self.last_generation.layouts` holds each video's `LayoutResult` (the tracks used, which relations
        hold) after the call (`run` returns it directly).
        """
        return self.run(graphs, seeds, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                        sampler=sampler, callback=callback, output=output, max_batch=max_batch,
                        layouts=layouts, layout_tries=layout_tries).frames

    def run(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
            guidance: float | None = None, guidance_rescale: float | None = None,
            sampler: str | None = None, callback: Callable[[int, float, Any, Any], None] | None = None,
            output: str = "numpy", max_batch: int | None = None,
            layouts: Sequence[Mapping[int, Any] | None] | None = None,
            layout_tries: int | None = None) -> Generation:
        """`generate`, returning the whole `Generation`: frames, timings and (grounded bundles) layouts."""
        from sg2v.graph import pad_graphs

        graphs = list(graphs)
        if not graphs:
            raise Sg2vError("no graphs to generate; pass at least one")
        seeds = check_seeds(seeds, len(graphs))
        settings = self.generator.settings(steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                                           sampler=sampler)
        data = self.bundle.config.data
        parsed = [self.parse(g) for g in graphs]
        feeds = pad_graphs(parsed, data.max_objects, data.max_relationships).as_feeds()
        given = None if layouts is None else [dict(m or {}) for m in layouts]
        with self._lock:
            result = self.generator.run(feeds, seeds, settings, callback=callback, output=output,
                                        max_batch=max_batch, graphs=parsed, layouts=given,
                                        layout_tries=layout_tries)
            self.last_generation = result
            return result

    def close(self) -> None:
        """Release the backend's sessions, engines and device buffers."""
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
