"""How far two runtime backends' frames lie apart for the same graphs and seeds, in levels of 255.

    python bench/backend_parity.py --bundle models/demo-teacher --steps 8 --threads 1
    python bench/backend_parity.py --bundle models/demo --threads 1   # the student: its own step count

Runs every graph of `--graphs` (graph i with noise seed i) on `--a` and `--b` (default: ONNX Runtime and the
PyTorch reference, which needs the bundle's model.safetensors and torch) and prints per graph and over all:
max |diff|, mean |diff|, the share of values more than 1 and more than 8 levels apart, and the 99.9th
percentile. Both backends compute in float32 from the same weights; the differences are float rounding, which
the sampler's steps and the guidance weight amplify (a pixel near an edge can flip between two colors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sg2v.runtime.backends import BACKENDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default="models/demo", help="bundle folder from sg2v-export")
    p.add_argument("--graphs", default="examples/graphs", help="folder of scene-graph JSON files")
    p.add_argument("--a", default="ort", choices=BACKENDS, help="first backend")
    p.add_argument("--b", default="torch", choices=BACKENDS, help="second backend")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (None: the bundle's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight (None: the bundle's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per backend (None: one per core)")
    p.add_argument("--json", default=None, help="also write the rows and the summary as JSON here")
    args = p.parse_args(argv)

    from sg2v.runtime import Pipeline

    pipes = [Pipeline.from_bundle(args.bundle, backend=b, threads=args.threads) for b in (args.a, args.b)]
    paths = sorted(Path(args.graphs).glob("*.json"))
    if not paths:
        print(f"no graph files in {args.graphs}", file=sys.stderr)
        return 1
    settings = pipes[0].generator.settings(steps=args.steps, guidance=args.guidance)
    print(f"{args.a} vs {args.b} on {args.bundle}: {settings.sampler}, {settings.steps} steps, guidance "
          f"{settings.guidance:g}, {len(paths)} graphs (graph i with seed i)")
    print("graph                       max   mean   >1 lvl   >8 lvl   p99.9")
    rows, diffs = [], []
    for i, path in enumerate(paths):
        graph = json.loads(path.read_text())
        a, b = (pipe(graph, seed=i, steps=args.steps, guidance=args.guidance).astype(np.int16)
                for pipe in pipes)
        d = np.abs(a - b)  # (F, H, W, 3)
        diffs.append(d.ravel())
        rows.append(_stats(d, path.name))
        r = rows[-1]
        print(f"{r['graph']:<26} {r['max']:>4} {r['mean']:>6.3f} {r['over_1']:>7.2%} {r['over_8']:>7.2%} "
              f"{r['p99_9']:>7.1f}")
    total = _stats(np.concatenate(diffs), "all")
    print(f"{'all':<26} {total['max']:>4} {total['mean']:>6.3f} {total['over_1']:>7.2%} "
          f"{total['over_8']:>7.2%} {total['p99_9']:>7.1f}")
    if args.json:
        from sg2v.safety import inputs, write_json_report

        report = {"a": args.a, "b": args.b, "bundle": args.bundle, "sampler": settings.sampler,
                  "steps": settings.steps, "guidance": settings.guidance, "rows": rows, "all": total}
        write_json_report(args.json, "backend_parity", report, inputs((args.bundle, "the bundle", True)))
    return 0


def _stats(d: np.ndarray, name: str) -> dict:
    return {"graph": name, "max": int(d.max()), "mean": float(d.mean()), "over_1": float((d > 1).mean()),
            "over_8": float((d > 8).mean()), "p99_9": float(np.percentile(d, 99.9))}


if __name__ == "__main__":
    sys.exit(main())
