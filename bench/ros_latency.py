"""ROS 2 end-to-end latency of sg2v-ros: from publishing a graph request to receiving its last Image.

    python bench/ros_latency.py --bundle models/demo --requests 20 --futures 1 --threads 2

Starts `sg2v-ros` as its own process (ONNX Runtime CPU, `--threads`) on a fresh ROS domain on localhost, waits
for its topics, then sends `--requests` requests one after another (each after the previous one's last image;
`--warmup` more first, not counted) from a client node in this process. The baseline is the same request
through an in-process `Pipeline.run` on the same backend and threads, alternating with the ROS requests in
the same run: the ROS cost is the difference (message transport of the frames, JSON, queueing). Prints
p50/p95 of both, with the machine; `--json` writes them. CPU time is shared with whatever else runs on the
machine: note its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


def percentiles(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p95_ms": float(np.percentile(a, 95) * 1e3),
            "mean_ms": float(a.mean() * 1e3), "n": len(seconds)}


def measure(args: argparse.Namespace, pipe) -> tuple[list[float], list[float]]:
    """Seconds of each request through `pipe.run` in this process and from publishing it to receiving its
    last image through a sg2v-ros process, alternating (so both see the same machine load)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    frames = pipe.bundle.shapes["frames"]
    domain = random.randint(1, 101)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_LOCALHOST_ONLY": "1"}
    cmd = [str(Path(sys.executable).with_name("sg2v-ros")), "--ros-args", "-p", f"bundle:={args.bundle}",
           "-p", "backend:=ort", "-p", f"threads:={args.threads}", "-p", f"futures:={args.futures}",
           "-p", f"image_depth:={max(256, 2 * frames * args.futures)}"]
    proc = subprocess.Popen(cmd, env=env)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("sg2v_latency", context=ctx)
    got = threading.Semaphore(0)
    errors: list[str] = []
    node.create_subscription(Image, "images", lambda m: got.release(), QoSProfile(depth=4096))
    node.create_subscription(String, "errors", lambda m: errors.append(m.data), 10)
    pub = node.create_publisher(String, "graphs", 10)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        end = time.monotonic() + 120
        while pub.get_subscription_count() == 0 or node.count_publishers("images") == 0:
            if time.monotonic() > end or proc.poll() is not None:
                raise SystemExit("sg2v-ros did not come up (see its output above)")
            time.sleep(0.05)
        base, ros = [], []
        for i in range(args.warmup + args.requests):
            t0 = time.perf_counter()
            pipe.run([GRAPH] * args.futures, list(range(i, i + args.futures)))
            t1 = time.perf_counter()
            pub.publish(String(data=json.dumps({"id": i, "graph": GRAPH, "seed": i})))
            for _ in range(frames * args.futures):
                if not got.acquire(timeout=300):
                    raise SystemExit(f"request {i}: images missing after 300 s; errors: {errors}")
            if i >= args.warmup:
                base.append(t1 - t0)
                ros.append(time.perf_counter() - t1)
        return base, ros
    finally:
        executor.shutdown(timeout_sec=10)
        node.destroy_node()
        ctx.try_shutdown()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default="models/demo", help="bundle folder from sg2v-export")
    p.add_argument("--requests", type=int, default=20, help="timed requests")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    p.add_argument("--futures", type=int, default=1, help="videos per request")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (node and baseline)")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    from sg2v.safety import check_json_report, inputs, write_json_report

    if args.json:  # before measuring: never the bundle or a file sg2v did not write
        check_json_report(args.json, inputs((args.bundle, "the bundle", True)))

    from sg2v.runtime import Pipeline

    with Pipeline.from_bundle(args.bundle, backend="ort", threads=args.threads) as pipe:
        frames = pipe.bundle.shapes["frames"]
        base, ros = measure(args, pipe)
    result = {"machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "load_1min": os.getloadavg()[0], "python": platform.python_version()},
              "bundle": args.bundle, "futures": args.futures, "threads": args.threads,
              "pipeline_run": percentiles(base), "ros_end_to_end": percentiles(ros)}
    result["ratio_p50"] = result["ros_end_to_end"]["p50_ms"] / result["pipeline_run"]["p50_ms"]
    m = result["machine"]
    print(f"# {m['processor']}, {m['cpus']} CPUs visible, load {m['load_1min']:.1f}; {args.bundle}, "
          f"{args.futures} future(s) of {frames} frames, ORT CPU {args.threads} thread(s)")
    for name in ("pipeline_run", "ros_end_to_end"):
        r = result[name]
        print(f"{name:>15}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms over {r['n']} requests")
    print(f"{'ratio p50':>15}: {result['ratio_p50']:.3f}")
    if args.json:
        write_json_report(args.json, "ros_latency", result, inputs((args.bundle, "the bundle", True)))
    return 0


if __name__ == "__main__":
    from sg2v.options import run_cli

    sys.exit(run_cli("ros_latency", main))  # an sg2v error: one line and its exit status
