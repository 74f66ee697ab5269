"""Shapes-world throughput (samples/s, one process) and the oracle's self-test on generated samples.

    python bench/shapes_throughput.py                 # 16x64x64 and 16x32x32, 1000 samples each
    python bench/shapes_throughput.py --n 200 --sizes 16x64x64

For each size: ShapesDataset indexing rate (what a training loader sees), oracle scoring rate, and the
oracle's scores on those samples (the self-test: presence and relation accuracy must be 100%); exits 1 if not.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from sg2v.shapes import ShapesDataset, score_batch


def _size(text: str) -> tuple[int, int, int]:
    try:
        f, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 16x64x64") from None
    return f, h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples per size")
    ap.add_argument("--sizes", type=_size, nargs="+", default=[(16, 64, 64), (16, 32, 32)],
                    help="FRAMESxHEIGHTxWIDTH canvases")
    ap.add_argument("--seed", type=int, default=0, help="ShapesDataset seed")
    a = ap.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, one process")
    ok = True
    for f, h, w in a.sizes:
        ds = ShapesDataset(seed=a.seed, length=a.n, frames=f, height=h, width=w)
        ds[0]  # warm caches (templates, vocabulary)
        t0, c0 = time.perf_counter(), time.process_time()
        samples = [ds[i] for i in range(a.n)]
        t1, c1 = time.perf_counter(), time.process_time()
        r = score_batch([s.video for s in samples], [s.graph for s in samples])
        t2, c2 = time.perf_counter(), time.process_time()
        # CPU-time rates are what one core gives on an idle machine; wall rates include other load
        print(f"{f}x{h}x{w}: generate {a.n / (t1 - t0):6.0f} samples/s wall, {a.n / (c1 - c0):6.0f} per "
              f"CPU-s; oracle {a.n / (t2 - t1):5.0f} videos/s wall, {a.n / (c2 - c1):5.0f} per CPU-s")
        print("  " + r.summary().replace("\n", "\n  "))
        ok &= r.presence == 1.0 and r.relation_accuracy in (None, 1.0)
    print("self-test " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
