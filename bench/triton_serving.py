"""Requests/s and p50/p95 latency for 1, 4 and 16 concurrent clients: Triton vs the in-process Pipeline.

    python bench/triton_serving.py --bundle models/demo --requests 32 --threads 1

Both sides in one run, on the same graphs (the files of `--graphs`, cycled) and seeds (request i: seed i):
- Triton: `sg2v-export triton --stage-backend python` to a temporary repository, the nvidia-pytriton wheel's
  CPU tritonserver on loopback (`sg2v.runtime.triton_server`), one `TritonClient` per client thread; the
  `sg2v` model has as many instances as the most clients, and the stage models batch concurrent calls;
- in-process: one `Pipeline` on ONNX Runtime (CPU) shared by the client threads (its calls take turns).
Each client sends one video per request, back to back; latency is from send to frames. The first request of
each side is a warm-up and not counted. Prints a Markdown table and, with --json, writes the figures, the
command and the machine. Ratios to the in-process figures of the same run are what compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _graphs(folder: str, vocab_check: Callable[[dict], object]) -> list[dict]:
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for g in data if isinstance(data, list) else [data]:
            try:
                vocab_check(g)
            except Exception:  # a graph outside this bundle's vocabulary or sizes: not used
                continue
            out.append(g)
    if not out:
        raise SystemExit(f"no graph in {folder} fits the bundle")
    return out


def _measure(call: Callable[[int], None], clients: int, requests: int) -> dict[str, float]:
    """`requests` calls of `call(i)` from `clients` threads: requests/s, p50 and p95 latency (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.perf_counter()
        call(i)
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": requests, "requests_per_s": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def _machine() -> dict:
    """The CPU model, cores, Python version and load of this machine."""
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                machine["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return machine


def _print_table(args: argparse.Namespace, rows: list[dict], machine: dict) -> None:
    """The markdown table: per client count, Triton's and the in-process Pipeline's figures, their ratio."""
    print(f"\nbundle {args.bundle}, steps {args.steps or 'default'}, {args.requests} requests per level; "
          f"{machine['cpu']}, {machine['cores']} cores, load {machine['load_avg_1m']:.1f}")
    print("| clients | Triton req/s | Triton p50 ms | Triton p95 ms | in-process req/s | in-process p50 ms | "
          "in-process p95 ms | Triton / in-process req/s |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in args.clients:
        t, s = (next(r for r in rows if r["side"] == side and r["clients"] == clients)
                for side in ("triton", "in-process"))
        print(f"| {clients} | {t['requests_per_s']:.2f} | {t['p50_ms']:.0f} | {t['p95_ms']:.0f} | "
              f"{s['requests_per_s']:.2f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
              f"{t['requests_per_s'] / s['requests_per_s']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default="models/demo", help="bundle folder from sg2v-export")
    p.add_argument("--graphs", default="examples/graphs", help="folder of scene-graph JSON files")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level and side")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads of the in-process Pipeline (default: one per core)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="the stage models' batching delay")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    from sg2v.safety import check_json_report, inputs, write_json_report

    if args.json:  # before measuring: never the bundle or a file sg2v did not write
        check_json_report(args.json, inputs((args.bundle, "the bundle", True)))

    from sg2v.export.triton import write_repository
    from sg2v.runtime.pipeline import Pipeline
    from sg2v.runtime.triton_client import TritonClient
    from sg2v.runtime.triton_server import TritonServer

    pipe = Pipeline.from_bundle(args.bundle, backend="ort", threads=args.threads)
    graphs = _graphs(args.graphs, pipe.parse)
    local = threading.local()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sg2v-bench-triton-") as tmp:
        repo = write_repository(args.bundle, Path(tmp) / "repo", stage_backend="python",
                                instances=max(args.clients), queue_delay_us=args.queue_delay_us)
        with TritonServer(repo, log_path=Path(tmp) / "tritonserver.log") as server:
            def served(i: int) -> None:
                if not hasattr(local, "client"):
                    local.client = TritonClient(server.url)
                local.client.generate([graphs[i % len(graphs)]], [i], steps=args.steps)

            def in_process(i: int) -> None:
                pipe.generate([graphs[i % len(graphs)]], [i], steps=args.steps)

            served(0)
            in_process(0)
            for clients in args.clients:
                for side, call in (("triton", served), ("in-process", in_process)):
                    row = {"side": side, **_measure(call, clients, args.requests)}
                    rows.append(row)
                    print(f"{side:10s} {clients:3d} clients: {row['requests_per_s']:7.2f} req/s, p50 "
                          f"{row['p50_ms']:8.1f} ms, p95 {row['p95_ms']:8.1f} ms", flush=True)
    machine = _machine()
    _print_table(args, rows, machine)
    if args.json:
        report = {"command": " ".join(sys.argv), "machine": machine, "rows": rows}
        write_json_report(args.json, "triton_serving", report, inputs((args.bundle, "the bundle", True)))
    pipe.close()
    return 0


if __name__ == "__main__":
    from sg2v.options import run_cli

    sys.exit(run_cli("triton_serving", main))  # an sg2v error: one line and its exit status
