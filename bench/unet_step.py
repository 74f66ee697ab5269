"""UNet step time of several ONNX files of one bundle's UNet on ONNX Runtime and OpenVINO, interleaved.

    python bench/unet_step.py --bundle models/demo shipped=models/demo/unet.onnx lean=LEAN/unet.onnx \
        int8=INT8/unet.onnx --threads 1 --clock cpu --rounds 25

Every file gets the same fresh inputs (the bundle's UNet signature at --rows rows: noise, timesteps, context,
boxes in [0, 1], guidance in the student's range), runs once per round on each runtime in turn (so load on a
shared machine falls on all of them alike), and the table gives the median per file and runtime with its
speed against the first. `--clock cpu` times the process's CPU seconds (`time.process_time`), which other
jobs on a shared machine disturb far less than the wall clock; with more than one thread it includes ONNX
Runtime's spinning workers. OpenVINO compiles each file for the fixed input shapes, float32, as the openvino
backend does. Also prints each output's largest difference from the first file's on ONNX Runtime.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def feeds_for(bundle, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Fresh UNet inputs of `rows` rows for `bundle`'s UNet signature (the runtime's random_unet_feeds)."""
    from sg2v.runtime.bundle import random_unet_feeds

    return random_unet_feeds(bundle, rows, np.random.default_rng(seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("files", nargs="+", metavar="NAME=PATH", help="UNet ONNX files of the bundle's signature")
    p.add_argument("--bundle", default="models/demo", help="bundle whose UNet signature the inputs follow")
    p.add_argument("--rows", type=int, default=1, help="batch rows per call")
    p.add_argument("--threads", type=int, default=2, help="threads of each runtime")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="what a step's time is")
    p.add_argument("--rounds", type=int, default=25, help="timed calls per file and runtime")
    p.add_argument("--runtimes", nargs="+", choices=["ort", "openvino"], default=["ort", "openvino"])
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    args = p.parse_args(argv)
    from sg2v.runtime.bundle import Bundle

    feeds = feeds_for(Bundle.open(args.bundle), args.rows, args.seed)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    runs = {}
    items = [f.split("=", 1) if "=" in f else (f, f) for f in args.files]
    for name, path in items:
        if "ort" in args.runtimes:
            import onnxruntime as ort

            o = ort.SessionOptions()
            o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = args.threads, 1, 3
            s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
            runs[f"ort {name}"] = lambda s=s: s.run(None, feeds)[0]
        if "openvino" in args.runtimes:
            import openvino as ov

            core = ov.Core()
            m = core.read_model(path)
            m.reshape({k: list(v.shape) for k, v in feeds.items()})
            r = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1,
                                              "PERFORMANCE_HINT": "LATENCY",
                                              "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
            runs[f"openvino {name}"] = lambda r=r: r.infer(feeds)[0]
    first = next(iter(runs))
    ref = np.array(runs[first]())
    for k, f in runs.items():
        out = np.array(f())
        print(f"{k}: max |v - {first}| / max |v| = {np.abs(out - ref).max() / np.abs(ref).max():.2e}")
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = clock()
            f()
            times[k].append(clock() - t)
    base = float(np.median(times[first]))
    print(f"\n| UNet step, {args.rows} row(s), {args.threads} thread(s) | {args.clock} ms (median of "
          f"{args.rounds}) | x vs {first} |\n|---|---|---|")
    for k in runs:
        med = float(np.median(times[k]))
        print(f"| {k} | {1000 * med:.1f} | {base / med:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
