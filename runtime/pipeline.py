"""`Pipeline`: a bundle + a backend + the one generation loop of `sg2v.generation` (no torch at import).

`pipe(graph, seed=...)` returns one video (F, H, W, 3) uint8; `pipe.generate(graphs, seeds)` returns B videos
(B, F, H, W, 3) uint8 from one encoder call and one batched UNet call per sampler step (in chunks of the
backend's `max_batch`). Graphs are parsed and padded with the bundle's vocabulary and sizes; x_T, sampler
defaults, guidance and timings are the loop's, so every backend and training-time evaluation agree on them.

`pipe.submit(graphs, seeds, ...)` queues the same call and returns at once with a `Job` (a
`concurrent.futures.Future` of the `Generation`); inputs are parsed and checked in the caller's thread, so a
bad graph raises there. One worker thread per Pipeline, started on the first submit, runs the queue in order;
`close()` (or leaving a `with` block) cancels what is queued, stops the running job and ends the worker.
`job.cancel()` drops a queued job and stops a running one at its next stage or sampler step; the job then
ends cancelled. A synchronous call takes `cancel=` (a `threading.Event`) for the same stop, and every call
takes `progress=`, a function of `sg2v.progress.Progress` called after the encoder, each layout draw round,
each sampler step and the decode (in the worker thread for a submitted job).

Thread safety: a `Pipeline` serialises its calls with a lock, because its stages own one set of buffers (and
on the GPU CUDA graphs); calls from several threads, synchronous or submitted, are safe and give the frames a
serial call would. For parallel generation, open one `Pipeline` per thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from sg2v.errors import Cancelled, Sg2vError, shown
from sg2v.generation import Backend, Generation, Generator, check_seeds
from sg2v.runtime.backends import make_backend
from sg2v.runtime.bundle import Bundle

DEFAULT_MAX_PENDING = 64  # submitted calls waiting for the worker, beyond the one it runs
MAX_PENDING = 1 << 20
ProgressFn = Callable[[Any], Any]  # called with a sg2v.progress.Progress
StepFn = Callable[[int, float, Any, Any], None]  # (step, t, x, x0) after each sampler step


class Job(Future[Generation]):
    """A submitted generation, a `Future` of its `Generation`. Unlike a plain Future, `cancel()` also works
    while it runs: the generation stops at its next stage or sampler step and the job ends cancelled."""

    def __init__(self, call: dict[str, Any], progress: ProgressFn | None):
        super().__init__()
        self.call, self.progress = call, progress
        self.interrupt = threading.Event()  # the running generation's cancel event
        self.started = threading.Event()

    def cancel(self) -> bool:
        """Cancel unless finished; True when the job is (now) cancelled."""
        cancelled = super().cancel()
        if cancelled:
            self.interrupt.set()
        return cancelled

    def running(self) -> bool:
        """Whether the worker is generating this job now."""
        return self.started.is_set() and not self.done()


class Pipeline:
    """A loaded bundle on one backend; `pipe(graph, seed=...)` returns frames (F, H, W, 3) uint8."""

    def __init__(self, bundle: Bundle, backend: Backend, max_pending: int = DEFAULT_MAX_PENDING):
        whole = isinstance(max_pending, int) and not isinstance(max_pending, bool)
        if not (whole and 1 <= max_pending <= MAX_PENDING):
            raise Sg2vError(f"max_pending {max_pending!r}: must be an integer in [1, {MAX_PENDING}]")
        self.bundle = bundle
        self.backend = backend
        self.xp = backend.xp
        s = bundle.shapes
        # the learned null context (unread by a guidance-distilled student, which has no unconditional rows)
        null = backend.null_context
        if null is None and bundle.null_context is not None and bundle.null_context_mask is not None:
            null = (bundle.null_context, bundle.null_context_mask)
        layout = bundle.layout  # None without a layout stage
        if layout is not None:  # candidate layouts per layout-stage call: at most its batch axis takes
            layout = {**layout, "max_batch": s["max_layout_batch"]}
        self.generator = Generator(backend, (s["frames"], s["channels"], s["height"], s["width"]),
                                   bundle.alphas_cumprod(), bundle.sampler_defaults, null, layout,
                                   bundle.student)
        self.last_generation: Generation | None = None
        self.max_pending = max_pending
        self._lock = threading.Lock()  # one generation at a time on the stages' buffers
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._worker: threading.Thread | None = None
        self._running: Job | None = None
        self._closed = False
        self._state = threading.Lock()  # guards _worker, _running and _closed

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], backend: str = "auto", device: str | None = None,
                    threads: int | None = None, verify: bool = True,
                    ckpt: str | os.PathLike[str] | None = None,
                    max_pending: int = DEFAULT_MAX_PENDING) -> Pipeline:
        """Open and verify the bundle at `path` and build `backend` (one of `sg2v.runtime.BACKENDS`);
        `max_pending` bounds the submitted calls waiting for the worker."""
        bundle = Bundle.open(path, verify=verify)
        return cls(bundle, make_backend(bundle, backend, device=device, threads=threads,
                                        ckpt=None if ckpt is None else str(ckpt)), max_pending)

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
                 callback: StepFn | None = None, output: str = "numpy", progress: ProgressFn | None = None,
                 cancel: Any = None) -> Any:
        """Frames (F, H, W, 3) uint8 for `graph`; unset options take the bundle's sampler defaults."""
        return self.generate([graph], [seed], steps=steps, guidance=guidance,
                             guidance_rescale=guidance_rescale, sampler=sampler, callback=callback,
                             output=output, progress=progress, cancel=cancel)[0]

    def generate(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
                 guidance: float | None = None, guidance_rescale: float | None = None,
                 sampler: str | None = None, callback: StepFn | None = None,
                 output: str = "numpy", max_batch: int | None = None,
                 layouts: Sequence[Mapping[int, Any] | None] | None = None,
                 layout_tries: int | None = None, progress: ProgressFn | None = None,
                 cancel: Any = None) -> Any:
        """Frames (B, F, H, W, 3) uint8 for B graphs, graph i from seed i: the frames of B single calls.

        One encoder call and one UNet call per step for at most `max_batch` (and the backend's limit) videos
        at a time; unset options take the bundle's sampler defaults. For a layout-grounded bundle,
        `layouts[i]` maps object indices of graph i to given tracks ((F, 4) boxes in [0, 1], kept exactly,
        beside the graph's own "layout" key) and `layout_tries` caps the draws of the relation check;
        `self.last_generation.layouts` holds each video's `LayoutResult` (the tracks used, which relations
        hold) after the call (`run` returns it directly). `progress` gets a `sg2v.progress.Progress` after
        each stage and step; setting the `cancel` event stops the call there with `sg2v.errors.Cancelled`.
        """
        return self.run(graphs, seeds, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                        sampler=sampler, callback=callback, output=output, max_batch=max_batch,
                        layouts=layouts, layout_tries=layout_tries, progress=progress, cancel=cancel).frames

    def run(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
            guidance: float | None = None, guidance_rescale: float | None = None,
            sampler: str | None = None, callback: StepFn | None = None,
            output: str = "numpy", max_batch: int | None = None,
            layouts: Sequence[Mapping[int, Any] | None] | None = None,
            layout_tries: int | None = None, progress: ProgressFn | None = None,
            cancel: Any = None) -> Generation:
        """`generate`, returning the whole `Generation`: frames, timings and (grounded bundles) layouts."""
        call = self._prepare(graphs, seeds, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                             sampler=sampler, callback=callback, output=output, max_batch=max_batch,
                             layouts=layouts, layout_tries=layout_tries)
        return self._execute(call, progress, cancel)

    def submit(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
               guidance: float | None = None, guidance_rescale: float | None = None,
               sampler: str | None = None, callback: StepFn | None = None,
               output: str = "numpy", max_batch: int | None = None,
               layouts: Sequence[Mapping[int, Any] | None] | None = None,
               layout_tries: int | None = None, progress: ProgressFn | None = None) -> Job:
        """`run` on the worker thread: a `Job` (a Future) of the `Generation`, returned at once.

        The inputs are parsed and checked here (one-line Sg2vErrors in the caller's thread); the queue holds
        at most `max_pending` calls besides the running one, and a full queue raises Sg2vError.
        `callback` and `progress` run in the worker thread.
        """
        call = self._prepare(graphs, seeds, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                             sampler=sampler, callback=callback, output=output, max_batch=max_batch,
                             layouts=layouts, layout_tries=layout_tries)
        job = Job(call, progress)
        with self._state:
            if self._closed:
                raise Sg2vError("this Pipeline is closed; open a new one to submit more generations")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Sg2vError(f"{self.max_pending} submitted generations are already waiting "
                                "(max_pending); wait for some to finish (job.result()), or open the Pipeline "
                                "with a larger max_pending") from None
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="sg2v-pipeline", daemon=True)
                self._worker.start()
        return job

    def _prepare(self, graphs: Sequence[Any], seeds: Sequence[int], *, layouts: Any, **options: Any
                 ) -> dict[str, Any]:
        """A call's `Generator.run` arguments from the user's inputs, all checked (one-line Sg2vErrors)."""
        from sg2v.graph import pad_graphs

        graphs = list(graphs)
        if not graphs:
            raise Sg2vError("no graphs to generate; pass at least one")
        seeds = check_seeds(seeds, len(graphs))
        for name in ("guidance", "guidance_rescale"):
            value = options.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      and not _is_np_number(value)):
                raise Sg2vError(f"{name} {shown(value)}: must be a real number, not a {type(value).__name__}")
        settings = self.generator.settings(**{k: options.pop(k) for k in
                                              ("steps", "guidance", "guidance_rescale", "sampler")})
        data = self.bundle.config.data
        parsed = [self.parse(g) for g in graphs]
        feeds = pad_graphs(parsed, data.max_objects, data.max_relationships).as_feeds()
        given = None if layouts is None else [_checked_tracks(m, i, data.frames)
                                              for i, m in enumerate(layouts)]
        self.generator.check_call(len(parsed), seeds, options["output"], options["max_batch"], parsed, given,
                                  options["layout_tries"])
        return {"feeds": feeds, "seeds": seeds, "settings": settings, "graphs": parsed, "layouts": given,
                **options}

    def _execute(self, call: dict[str, Any], progress: ProgressFn | None, cancel: Any) -> Generation:
        with self._lock:
            result = self.generator.run(**call, progress=progress, cancel=cancel)
            self.last_generation = result
            return result

    def _work(self) -> None:
        """The worker: run queued jobs in order until `close` sends None."""
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._state:  # either close() sees this job running, or this sees close()
                if self._closed:
                    job.cancel()
                elif not job.cancelled():
                    self._running = job
            if job.cancelled():
                job.set_running_or_notify_cancel()  # tells `wait` / `as_completed` it is done
                continue
            job.started.set()
            try:
                result = self._execute(job.call, job.progress, job.interrupt)
            except Cancelled:
                job.cancel()
                job.set_running_or_notify_cancel()
            except BaseException as e:  # the caller sees it from job.result()
                _settle(job, job.set_exception, e)
            else:
                _settle(job, job.set_result, result)
            finally:
                with self._state:
                    self._running = None
                job.call = {}  # the worker drops the inputs; the job keeps its result

    def close(self) -> None:
        """Cancel queued and running submitted calls, end the worker, and release the backend's sessions,
        engines and device buffers."""
        with self._state:
            self._closed = True
            worker, running = self._worker, self._running
            self._worker = None
        if worker is not None:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.cancel():
                    job.set_running_or_notify_cancel()
            if running is not None:
                running.cancel()
            self._queue.put(None)
            if worker is not threading.current_thread():
                worker.join()
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _settle(job: Job, set_outcome: Callable[[Any], None], value: Any) -> None:
    """Give `job` its result or exception, unless it was cancelled meanwhile (then tell its waiters)."""
    try:
        set_outcome(value)
    except InvalidStateError:
        job.set_running_or_notify_cancel()


def _is_np_number(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_)


def _checked_tracks(given: Any, i: int, frames: int) -> dict[Any, Any]:
    """`Pipeline.run(layouts=...)[i]` with every track checked as a layout file's are (`sg2v.layout`: finite
    boxes in [0, 1], x0 < x1, y0 < y1, one box, F boxes or a start/end pair) and expanded to (F, 4) boxes;
    the keys are checked by the generator."""
    import numpy as np

    from sg2v.layout import parse_track

    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise Sg2vError(f"layouts[{i}]: expected a mapping of object indices to tracks, got {shown(given)}")
    out = {}
    for key, value in given.items():
        plain = value.tolist() if isinstance(value, np.ndarray) else value
        out[key] = parse_track(plain, f"layouts[{i}][{shown(key)}]", frames).expand(frames, f"layouts[{i}]")
    return out
