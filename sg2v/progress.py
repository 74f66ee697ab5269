"""Progress events and cancellation of one generation call (torch-free).

`Generator.run(..., progress=fn, cancel=event)` calls `fn(Progress)` after each unit of work: the encoder,
each layout draw round (grounded models), each sampler step, and the decode, per chunk of videos. After each
unit, and before the first, it reads `cancel.is_set()` (a `threading.Event` or anything with that method) and
raises `sg2v.errors.Cancelled` when it is set, so a generation stops at the next stage or step boundary. With
neither given, the loop runs exactly as without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sg2v.errors import Cancelled

STAGES = ("encoder", "layout", "step", "decode")
StepCallback = Callable[[int, float, Any, Any], None]  # a sampler's per-step callback (step, t, x, x0)


@dataclass(frozen=True)
class Progress:
    """One finished unit of a generation call."""

    stage: str  # one of STAGES
    index: int  # 1-based: the layout draw round, the sampler step; 1 for encoder and decode
    total: int  # the most layout rounds (a graph may finish sooner), the sampler steps; 1 otherwise
    videos: tuple[int, int]  # the chunk's videos of the call, [lo, hi)
    chunk: int  # 0-based
    chunks: int
    elapsed_s: float  # since the call started
    fraction: float  # of the call's units done, in (0, 1]

    def describe(self) -> str:
        """E.g. "step 3/8, videos 0-3 (chunk 1/2), 0.42 s"."""
        what = {"layout": "layout round ", "step": "step "}.get(self.stage)
        unit = self.stage if what is None else f"{what}{self.index}/{self.total}"
        lo, hi = self.videos
        videos = f"video {lo}" if hi - lo == 1 else f"videos {lo}-{hi - 1}"
        chunk = f" (chunk {self.chunk + 1}/{self.chunks})" if self.chunks > 1 else ""
        return f"{unit}, {videos}{chunk}, {self.elapsed_s:.2f} s"


class Tracker:
    """Progress events and cancel checks of one call of `videos` videos in chunks of `limit`, each chunk an
    encoder call, up to `rounds` layout rounds, `steps` sampler steps and a decode."""

    def __init__(self, progress: Callable[[Progress], Any] | None, cancel: Any, videos: int, limit: int,
                 steps: int, rounds: int = 0):
        self.progress, self.cancel = progress, cancel
        self.active = progress is not None or cancel is not None
        self.limit, self.steps, self.rounds = limit, steps, rounds
        self.chunks = -(-videos // limit)
        self.units = rounds + steps + 2  # per chunk
        self.last: Progress | None = None
        self.t0 = time.perf_counter()

    def check(self) -> None:
        """Raise `Cancelled` when the cancel event is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("generation cancelled after "
                            + ("nothing" if self.last is None else self.last.describe()))

    def done(self, stage: str, index: int, lo: int, hi: int) -> None:
        """Report unit `index` of `stage` for videos lo..hi finished, then check for cancellation."""
        total = {"layout": self.rounds, "step": self.steps}.get(stage, 1)
        chunk = lo // self.limit
        offset = {"encoder": 1, "layout": 1 + index, "step": 1 + self.rounds + index}.get(stage, self.units)
        event = Progress(stage, index, total, (lo, hi), chunk, self.chunks, time.perf_counter() - self.t0,
                         (chunk * self.units + offset) / (self.chunks * self.units))
        self.last = event
        if self.progress is not None:
            self.progress(event)
        self.check()

    def step_callback(self, callback: StepCallback | None, lo: int, hi: int) -> StepCallback | None:
        """The sampler's per-step callback for videos lo..hi: `callback` (step, t, x, x0), then this
        tracker's step event; `callback` itself when the tracker is idle."""
        if not self.active:
            return callback

        def step(i: int, t: float, x: Any, x0: Any) -> None:
            if callback is not None:
                callback(i, t, x, x0)
            self.done("step", i + 1, lo, hi)

        return step

    def round_callback(self, lo: int, hi: int) -> Callable[[int], None] | None:
        """The layout sampler's per-round callback for videos lo..hi (None when idle)."""
        if not self.active:
            return None
        return lambda k: self.done("layout", k, lo, hi)
