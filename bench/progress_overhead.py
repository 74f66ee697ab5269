"""What progress events and cancel checks cost a generation: per event, and per call against a plain call.

    python bench/progress_overhead.py --bundle models/demo --calls 20 --threads 1

Two figures from one run on one machine:
- the cost of one step event alone (`sg2v.progress.Tracker`'s step callback with a no-op progress function and
  a cancel event: the Progress it builds, the call, the `is_set()` check), timed over many events;
- whole calls of one graph, alternating plain calls and calls with `progress=` and `cancel=`, the median of
  each and their ratio (noise on a shared machine is larger than the difference; the first figure bounds it).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time


def event_cost(n: int = 200_000) -> float:
    """Seconds per step event (Progress built, delivered to a no-op function, cancel checked)."""
    from sg2v.progress import Tracker

    track = Tracker(lambda e: None, threading.Event(), videos=1, limit=1, steps=n)
    step = track.step_callback(None, 0, 1)
    t0 = time.perf_counter()
    for i in range(n):
        step(i, 0.0, None, None)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="models/demo")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--calls", type=int, default=20, help="calls of each kind")
    args = ap.parse_args()

    from sg2v.runtime import Pipeline

    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    per_event = event_cost()
    with Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads) as pipe:
        pipe(graph, seed=0, steps=args.steps)  # warm-up
        plain, tracked, events = [], [], []
        for i in range(args.calls):
            t0 = time.perf_counter()
            pipe(graph, seed=i, steps=args.steps)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipe(graph, seed=i, steps=args.steps, progress=events.append, cancel=threading.Event())
            tracked.append(time.perf_counter() - t0)
        steps = pipe.last_timings["unet_calls"]
        per_step = pipe.last_timings["denoiser_per_step_s"]
    a, b = statistics.median(plain), statistics.median(tracked)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, backend {args.backend}, "
          f"threads {args.threads}, bundle {args.bundle}, {steps} steps")
    print(f"one step event: {per_event * 1e6:.2f} us = {per_event / per_step:.2e} of a denoiser step "
          f"({per_step * 1e3:.1f} ms); {len(events) // args.calls} events per call")
    print(f"call median: plain {a * 1e3:.1f} ms, with progress and cancel {b * 1e3:.1f} ms, "
          f"ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
