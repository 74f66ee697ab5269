"""`sg2v-bench`: every backend this machine offers, measured side by side in one run on one bundle.

Each backend runs in its own fresh Python process (`python -m sg2v.export.bench --child NAME ...`), so cold
start is process start to first frame, peak host memory is that process's `ru_maxrss`, and backends cannot
disturb each other's threads, caches or device memory. The parent counts the UNet's FLOPs
(`torch.utils.flop_counter` on meta tensors, at the UNet's rows per video: 2 with CFG, 1 for a
guidance-distilled student), measures the machine's matmul peak in the same run (the
physical floor), takes medians over the timed repeats, forms ratios against the baseline measured in the same
run, checks the project's targets, and writes JSON and a markdown table. With `--compare`, further bundles
(a few-step student beside its teacher) are measured on the same backends in the same run, and each gets its
end-to-end time, UNet calls and UNet FLOPs per video against the first bundle. Torch is imported only for
FLOPs, the matmul peak and the torch-based backends; `--backends ort-cpu` runs without it (FLOPs then absent).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sg2v.errors import Sg2vError, first_line
from sg2v.io import atomic_write_text
from sg2v.kinds import guidance_for
from sg2v.options import HelpFormatter, add_shared, check_shared, run_cli
from sg2v.safety import JSON_MARK, TABLE_MARK

BENCH_FORMAT = 1
CHILD_MARK = "SG2V_BENCH_CHILD "
BASELINE = "torch-cpu"  # PyTorch reference, eager fp32: every ratio is against this row
GPU_REFERENCE = "torch-cuda"  # eager fp32 on the GPU: the GPU targets are against this row
WRITE_FORMATS = ("gif", "mp4", "webp", "npy", "none")


@dataclass(frozen=True)
class Variant:
    """One row: a runtime backend (`sg2v.runtime.backends.BACKENDS`) on a device (torch-cuda: a mode)."""

    name: str
    help: str
    runtime: str
    device: str = "cpu"
    mode: str | None = None  # torch-cuda's mode (sg2v.runtime.backends.torch_cuda.MODES)
    precision: str = "fp32"

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"


VARIANTS = {v.name: v for v in (
    Variant("torch-cpu", "PyTorch reference backend of sg2v.runtime, eager fp32 on the CPU (the baseline)",
            runtime="torch", device="cpu"),
    Variant("ort-cpu", "ONNX Runtime, CPU execution provider, IO-bound buffers (sg2v.runtime)",
            runtime="ort", device="cpu"),
    Variant("openvino-cpu", "OpenVINO CPU plugin on the same ONNX files, fixed shapes per batch size "
            "(sg2v.runtime; needs the openvino extra)", runtime="openvino", device="cpu"),
    Variant("torch-cuda", "PyTorch eager fp32 on CUDA, sampler on the device (torch-cuda backend, eager)",
            runtime="torch-cuda", device="cuda", mode="eager", precision="fp32"),
    Variant("torch-cuda-compile-fp16", "torch.compile of the fp16 UNet (torch-cuda backend, mode compile)",
            runtime="torch-cuda", device="cuda", mode="compile", precision="fp16"),
    Variant("torch-cuda-fast", "the project's fastest torch path: fp16, static buffers, one CUDA graph "
            "per guided step and batch size (torch-cuda backend, mode graphs)", runtime="torch-cuda",
            device="cuda", mode="graphs", precision="fp16"),
    Variant("torch-tensorrt-fp16", "torch_tensorrt.compile of the fp16 UNet (Torch-TensorRT's torch.compile "
            "backend: what a TensorRT user tries first; needs torch-tensorrt; torch-cuda backend, mode "
            "torch_tensorrt)", runtime="torch-cuda", device="cuda", mode="torch_tensorrt", precision="fp16"),
    Variant("trt", "TensorRT engines through sg2v.runtime (needs tensorrt + cupy)", runtime="trt",
            device="cuda"),
    Variant("ort-gpu", "ONNX Runtime's TensorRT/CUDA execution providers (needs onnxruntime-gpu)",
            runtime="ort", device="cuda"),
)}

EPILOG = """figures (medians over --repeats timed runs after --warmup untimed ones; a process per backend):
  end-to-end      graph -> frames (F, H, W, 3) uint8 in memory: encoder + sampler loop + decode.
  encoder         the scene-graph encoder stage, once per video.
  layout          a layout-grounded bundle's layout stage: the layout network's sampling of candidate tracks
                  and the relation check with its redraws (draws: candidates judged, median), once per video.
  denoiser step   one guided denoiser call: the UNet on the CFG batch of 2 (a guidance-distilled student's
                  one row, the guidance weight its input). Runtime backends time the UNet
                  stage (host clock after a device sync); torch-cuda* rows time the whole captured step
                  (UNet + the guidance combination) with CUDA events. Median over all steps of all timed runs.
  sampler overh.  end-to-end minus encoder, layout, the denoiser calls and decode: the sampler's own array
                  work and the glue around the model (the CFG combination, for runtime backends).
  decode / write  decode: [-1, 1] floats -> uint8 frames; write: those frames to a --write file (not part of
                  end-to-end).
  startup         a fresh process: interpreter start, imports, bundle open (sha256 checks unless --no-verify),
                  backend build (sessions, engine load, weights to the device): ready to generate.
  cold start      startup + the first video in memory (torch.compile, Torch-TensorRT's engine builds and CUDA
                  graph capture happen here).
  peak RSS        the host-memory high-water mark (VmHWM) of the backend's process after all its runs.
  CUDA peak       torch.cuda.max_memory_allocated in that process (CuPy backends: bytes held by CuPy's pool).
  x vs baseline   the baseline's time / this backend's time (>1 = faster), baseline = torch-cpu measured in
                  this run; GPU rows also against torch-cuda (eager fp32 on the GPU).
  FLOPs, TFLOP/s  the UNet's FLOPs per step at its rows per video (2 with CFG, a student's 1; 2 x
                  multiply-adds of convs and matmuls, counted by
                  torch.utils.flop_counter) over the denoiser step time; peak = the machine's matmul rate
                  measured in this run (CPU: fp32 numpy/torch matmul; GPU: fp16 torch.matmul); the physical
                  floor of a step is FLOPs / peak.
  --compare       per bundle and backend: end-to-end s, UNet calls per video (steps) x rows per call, UNet
                  GFLOP per video (the step's FLOPs x calls), and each against the first bundle (--bundle):
                  its time / this one's (x faster) and its FLOPs / this one's (x fewer).
targets: CPU: ort-cpu >= 1.5x torch-cpu end-to-end, < 5 s end-to-end, cold start < 2 s;
  GPU: torch-cuda-fast step >= 3x torch-cuda, faster than torch-cuda-compile-fp16, sampler overhead < 3%;
  --compare: a guidance-distilled student >= 3.5x faster end-to-end than a CFG first bundle (per backend),
  and at 16 x 64 x 64 under 0.3 s on ort-cpu."""


# ----------------------------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sg2v-bench",
        description="Measure every backend available here on one bundle, side by side: end-to-end latency, "
                    "per-stage time, peak memory, cold start, FLOPs and achieved TFLOP/s against the "
                    "machine's matmul peak; ratios against the PyTorch eager baseline of the same run.",
        formatter_class=HelpFormatter, epilog=EPILOG)
    add_shared(p, "bundle", required=True)
    p.add_argument("--random-size", default=None, choices=("tiny", "small", "base"),
                   help="first export a bundle of this model size with random weights to --bundle (timing "
                        "only: the videos are noise); an existing bundle of that size is reused")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint for the torch backends (None: the bundle's model.safetensors)")
    p.add_argument("--graph", default=None,
                   help="scene-graph JSON (None: two objects, one relationship from the bundle's vocabulary)")
    add_shared(p, "steps")
    p.add_argument("--compare", nargs="+", default=[], metavar="BUNDLE",
                   help="further bundles measured on the same backends in this run (e.g. a few-step student "
                        "beside its teacher), each reported against --bundle: end-to-end time, UNet calls "
                        "and UNet FLOPs per video")
    p.add_argument("--compare-steps", nargs="+", type=int, default=None, metavar="N",
                   help="sampler steps of the --compare bundles: one for all, or one per bundle (default: "
                        "each bundle's own default steps)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend; medians are reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after the first (cold) one")
    add_shared(p, "seed", what="x_T (the same on every backend)")
    p.add_argument("--batch", type=int, nargs="+", default=[1],
                   help="batch sizes to time: one generate call of B videos (seeds seed .. seed + B - 1); "
                        "videos/s per size beside the same run's B=1 figure (B=1 is always timed)")
    p.add_argument("--backends", nargs="+", default=["all"], choices=["all", *VARIANTS],
                   help="backends to measure; 'all' = every one available here")
    add_shared(p, "threads")
    p.add_argument("--write", choices=WRITE_FORMATS, default="gif",
                   help="video format timed as the write stage (none: skip)")
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of torch-cuda-compile-fp16")
    p.add_argument("--peak-size", type=int, default=0,
                   help="n of the n x n x n matmul that measures the peak (0: 2048 on CPU, 8192 on GPU)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per backend process")
    add_shared(p, "no_verify")
    p.add_argument("--json", default=None, help="write every figure and raw timing here")
    p.add_argument("--table", default=None, help="write the markdown table here (also printed)")
    # Internal: how the parent starts one backend's process.
    p.add_argument("--child", default=None, choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--spawn-time", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--frames-out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sg2v-bench`; errors become one line on stderr and an exit status (`run_cli`)."""
    from sg2v.safety import safe_stdio

    safe_stdio()  # before argparse prints a path in its usage error
    args = build_parser().parse_args(argv)
    if args.child:
        return _child_main(args)
    return run_cli("sg2v-bench", lambda: _bench(args, sys.argv[1:] if argv is None else argv))


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    """Measure (after exporting a random bundle with --random-size), print the table; 1 if nothing ran."""
    if args.random_size:
        _check_args(args)
        make_random_bundle(args.random_size, args.bundle, seed=args.seed)
    report = run_bench(args, argv=argv)
    print(report["table"])
    return 0 if any(b.get("results") for b in report["backends"].values()) else 1


# ----------------------------------------------------------------------------------------------------- parent

class FlagError(Sg2vError):
    """A flag value sg2v-bench cannot use, or an output path it must not write (exit status 2)."""

    exit_code = 2


MAX_BENCH_BATCH = 1024  # videos per timed batch
MAX_PEAK_SIZE = 16384  # n of the peak matmul: three n x n float32 matrices, 3 GiB
MAX_REPEATS = 10_000
MAX_TIMEOUT = 7 * 24 * 3600.0


def _check_args(args: argparse.Namespace) -> None:
    """FlagError (one line, exit 2) unless every number flag lies in its range and the --json / --table
    outputs are safe to write (`sg2v.safety.check_outputs`), before anything is measured."""
    import math

    from sg2v.errors import shown

    check_shared(args, FlagError, ("steps", "seed", "threads"))
    for flag, value, low, high in (("--repeats", args.repeats, 1, MAX_REPEATS),
                                   ("--batch", min(args.batch), 1, MAX_BENCH_BATCH),
                                   ("--batch", max(args.batch), 1, MAX_BENCH_BATCH),
                                   ("--warmup", args.warmup, 0, MAX_REPEATS),
                                   ("--peak-size", args.peak_size, 0, MAX_PEAK_SIZE)):
        if not low <= value <= high:
            raise FlagError(f"{flag} {shown(value)}: must be an integer in [{low}, {high}]")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT):
        raise FlagError(f"--timeout {args.timeout}: must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    steps = getattr(args, "compare_steps", None)
    if steps is not None:
        compare = getattr(args, "compare", [])
        if not compare:
            raise Sg2vError("--compare-steps sets the steps of the --compare bundles; add --compare BUNDLE")
        if len(steps) not in (1, len(compare)):
            raise Sg2vError(f"--compare-steps: {len(steps)} values for {len(compare)} --compare bundles; "
                            "give one for all or one per bundle")
        if min(steps) < 1:
            raise Sg2vError(f"--compare-steps {min(steps)}: must be >= 1")
    _check_outputs(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --table: never the bundle (nor inside it), --graph, --ckpt or a --compare bundle; an
    existing file replaced only when sg2v-bench wrote it (its mark key / first line)."""
    from sg2v.safety import Output, OutputError, check_outputs, inputs, is_marked_json, is_marked_table

    outputs = []
    if getattr(args, "json", None):
        outputs.append(Output("--json", Path(args.json), ours=is_marked_json))
    if getattr(args, "table", None):
        outputs.append(Output("--table", Path(args.table), ours=is_marked_table))
    if not outputs:
        return
    reads = inputs((args.bundle, "the bundle", True), (args.graph, "the --graph file"),
                   (args.ckpt, "the --ckpt checkpoint", bool(args.ckpt) and Path(args.ckpt).is_dir()),
                   *[(c, "a --compare bundle", True) for c in getattr(args, "compare", [])])
    try:
        check_outputs(outputs, reads, force_flag=None)
    except OutputError as e:
        raise FlagError(str(e)) from None


def batch_sizes(args: argparse.Namespace) -> list[int]:
    """The batch sizes to time, B=1 first (every other size is reported against it), each once."""
    return list(dict.fromkeys([1, *sorted(args.batch)]))


def make_random_bundle(size: str, out: str | os.PathLike, seed: int = 0) -> Path:
    """Export a random-weight SG2V of the named size (shapes vocabulary) to the bundle folder `out`."""
    from sg2v.export.bundle_writer import read_bundle_manifest

    out = Path(out)
    old = read_bundle_manifest(out) if out.is_dir() else None
    if old is not None and old.get("model_config", {}).get("name") == size and \
            (out / "model.safetensors").is_file():
        print(f"sg2v-bench: reusing the {size} bundle at {out}", file=sys.stderr)
        return out
    import torch

    from sg2v.config import model_config
    from sg2v.export import export_bundle
    from sg2v.models.sg2v import build_model
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.vocab import shapes_vocab

    torch.manual_seed(seed)
    model = build_model(model_config(size))
    with torch.no_grad():  # the zero-initialised temporal outputs get weights too: never time on zeros
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    print(f"sg2v-bench: exporting a random-weight {size} bundle to {out} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="sg2v-bench-ckpt-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / f"random_{size}.pt", model, model.cfg, shapes_vocab())
        export_bundle(ckpt, out, include_weights=True, seed=seed)
    return out


def default_graph(vocab: Any, max_objects: int, max_relationships: int) -> dict[str, Any]:
    """Two objects and one relationship from the vocabulary (fewer where the bundle allows fewer)."""
    objects = list(vocab.object_names[:min(2, max_objects)])
    rels = []
    if len(objects) == 2 and max_relationships >= 1 and vocab.pred_names:
        rels = [[0, vocab.pred_names[0], 1]]
    return {"objects": objects, "relationships": rels}


def unavailable_reason(v: Variant, bundle: Any, ckpt: str | None) -> str | None:
    """None when `v` can run here, else why not (one line): the backend table's own check of its runtime on
    its device kind, then a PyTorch row's weights and CUDA tools."""
    from sg2v.runtime.backends import SPECS

    reason = SPECS[v.runtime].check("gpu" if v.gpu else "cpu")
    if reason is None and v.runtime in ("torch", "torch-cuda"):
        return _torch_unavailable_reason(v, bundle, ckpt)
    return reason


def _torch_unavailable_reason(v: Variant, bundle: Any, ckpt: str | None) -> str | None:
    """None when a PyTorch variant can run here (torch, weights, and for CUDA a device and its compiler)."""
    have = importlib.util.find_spec
    if have("torch") is None:
        return "torch is not installed"
    from sg2v import bundle_spec as spec

    if ckpt is None and not bundle.has_file(spec.MODEL_WEIGHTS):
        return (f"bundle has no {spec.MODEL_WEIGHTS} (export with --include-weights) "
                "and no --ckpt was given")
    if v.runtime != "torch-cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    if v.mode == "compile" and have("triton") is None:
        return "torch.compile on CUDA needs triton, which is not installed"
    if v.mode == "torch_tensorrt" and have("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install 'sg2v[torch-trt]')"
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, memory and library versions (versions read without importing torch)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    versions = {}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "cupy-cuda12x",
                "cupy-cuda13x"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": affinity, "memory_bytes": mem,
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "loadavg_start": _loadavg()}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure_cpu_peak(n: int, reps: int = 5) -> dict[str, Any]:
    """fp32 n x n x n matmul rate (TFLOP/s, median of `reps` after a warm-up): numpy, and torch if present."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out: dict[str, Any] = {"n": n, "numpy_fp32_tflops": _rate(lambda: a @ b, n, reps)}
    if importlib.util.find_spec("torch") is not None:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch_fp32_tflops"] = _rate(lambda: ta @ tb, n, reps)
    out["tflops"] = max(v for k, v in out.items() if k.endswith("_tflops"))
    return out


def _rate(fn: Any, n: int, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e12


def measure_gpu_peak(n: int, reps: int = 10) -> dict[str, Any]:
    """fp16 (and fp32) torch.matmul rate on random data, timed with CUDA events, median after warm-up."""
    import torch

    out: dict[str, Any] = {"n": n, "device": torch.cuda.get_device_name(0)}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype, key in ((torch.float16, "fp16_tflops"), (torch.float32, "fp32_tflops")):
        a = torch.randn(n, n, device="cuda", dtype=dtype, generator=gen)
        b = torch.randn(n, n, device="cuda", dtype=dtype, generator=gen)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        out[key] = 2.0 * n ** 3 / statistics.median(times) / 1e12
        del a, b
    torch.cuda.empty_cache()
    out["tflops"] = out["fp16_tflops"]
    out["fp32_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def unet_step_flops(config: Any, rows: int = 2) -> dict[str, Any]:
    """FLOPs of one UNet call on one video's `rows` (the CFG batch of 2; a student's 1), or why they are
    unknown."""
    if importlib.util.find_spec("torch") is None:
        return {"flops": None, "batch": rows,
                "method": "unknown: torch is not installed (the FLOP counter needs it)"}
    from sg2v.models.unet import unet_flops

    return {"flops": unet_flops(config, batch=rows), "batch": rows,
            "method": f"torch.utils.flop_counter on meta tensors, UNet at batch {rows} "
                      "(sg2v.models.unet.unet_flops)"}


def run_bench(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every requested backend (each in a fresh process); JSON-ready report with a markdown table."""
    from sg2v.graph import parse_graph
    from sg2v.runtime.bundle import Bundle

    _check_args(args)
    bundle = Bundle.open(args.bundle, verify=not args.no_verify)
    from sg2v.errors import ConfigError

    try:  # refuse a step count the model cannot take (a student: one it was not distilled for) before a run
        args.steps = bundle.settings(steps=args.steps).steps  # unset: the bundle's
    except ConfigError as e:
        raise Sg2vError(f"bundle {bundle.path}: {e}") from None
    data = bundle.config.data
    names = list(VARIANTS) if "all" in args.backends else list(dict.fromkeys(args.backends))
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="sg2v-bench-") as tmp:
        tmp = Path(tmp)
        if args.graph is None:
            graph = default_graph(bundle.vocab, data.max_objects, data.max_relationships)
        else:
            graph = json.loads(json.dumps(parse_graph(args.graph, bundle.vocab, data.max_objects,
                                                      data.max_relationships).to_dict()))
        graph_path = tmp / "graph.json"
        graph_path.write_text(json.dumps(graph))
        parse_graph(graph, bundle.vocab, data.max_objects, data.max_relationships)  # fail here, not per child

        backends, runnable = _availability(names, bundle, args.ckpt)
        flops = unet_step_flops(bundle.config, bundle.guidance.rows_per_video)
        peak = _peaks(args, runnable, machine)
        for name in runnable:
            print(f"sg2v-bench: {name} ...", file=sys.stderr, flush=True)
            backends[name].update(_run_child(name, args, graph_path, tmp))
        _compare_frames(backends, runnable, tmp)
    machine["loadavg_end"] = _loadavg()
    summarise(backends, flops["flops"], peak)
    report = {
        "sg2v_bench": BENCH_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": ["sg2v-bench", *(argv or [])],
        "machine": machine,
        "bundle": {"path": str(bundle.path), "name": bundle.config.name, "precision": bundle.precision,
                   "shapes": {k: bundle.shapes[k] for k in ("frames", "channels", "height", "width")},
                   "sampler": bundle.sampler_defaults, "student": bundle.student},
        "settings": {"steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed,
                     "batch": batch_sizes(args),
                     "threads": args.threads, "write": args.write, "graph": graph,
                     "compile_mode": args.compile_mode, "verify": not args.no_verify},
        "flops": flops,
        "peak": peak,
        "baseline": BASELINE,
        "backends": backends,
    }
    report["targets"] = check_targets(report)
    report["table"] = format_table(report)
    if getattr(args, "compare", None):
        others = [run_bench(_compare_args(args, path, steps)) for path, steps in compare_plan(args)]
        report["compare"] = compare_bundles([report, *others])
        report["targets"] += compare_targets(report["compare"])
        report["table"] = format_table(report) + "\n" + "\n".join(compare_table(report["compare"]))
    if args.json:
        atomic_write_text(args.json, json.dumps({JSON_MARK: "sg2v-bench", **report}, indent=1) + "\n")
    if args.table:
        atomic_write_text(args.table, f"{TABLE_MARK}\n{report['table']}\n")
    return report


def _availability(names: list[str], bundle: Any,
                  ckpt: str | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each requested backend's entry (available, or why not) and the names that can run here."""
    backends: dict[str, dict[str, Any]] = {}
    runnable = []
    for name in names:
        reason = unavailable_reason(VARIANTS[name], bundle, ckpt)
        backends[name] = {"description": VARIANTS[name].help, "available": reason is None}
        if reason is None:
            runnable.append(name)
        else:
            backends[name]["reason"] = reason
    return backends, runnable


def _peaks(args: argparse.Namespace, runnable: list[str], machine: dict[str, Any]) -> dict[str, Any]:
    """Matmul peaks: the CPU's always, the GPU's when a GPU backend runs and PyTorch sees a device."""
    peak = {"cpu": measure_cpu_peak(args.peak_size or 2048)}
    if any(VARIANTS[n].gpu for n in runnable) and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            peak["gpu"] = measure_gpu_peak(args.peak_size or 8192)
            machine["gpu"] = peak["gpu"]["device"]
    return peak


def _compare_frames(backends: dict[str, dict[str, Any]], runnable: list[str], tmp: Path) -> None:
    """Each backend's frames against the baseline's (max and mean absolute difference), where both exist."""
    frames = {n: tmp / f"{n}.npy" for n in runnable if (tmp / f"{n}.npy").is_file()}
    ref = frames.get(BASELINE)
    for name, path in frames.items():
        if ref is not None and name != BASELINE:
            a = np.load(path, allow_pickle=False).astype(np.int16)
            b = np.load(ref, allow_pickle=False).astype(np.int16)
            backends[name]["frames_vs_baseline"] = {"max_abs": int(np.abs(a - b).max()),
                                                     "mean_abs": float(np.abs(a - b).mean())}


def _run_child(name: str, args: argparse.Namespace, graph_path: Path, tmp: Path) -> dict[str, Any]:
    """Start one backend's process, wait, and return its figures (or the error it reported)."""
    cmd = [sys.executable]
    if getattr(sys.flags, "safe_path", False):
        cmd.append("-P")  # keep the parent's import layout (e.g. a linked tree on PYTHONPATH)
    cmd += ["-m", "sg2v.export.bench", "--child", name, "--bundle", str(args.bundle), "--graph",
            str(graph_path),
            "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--seed", str(args.seed), "--write", args.write, "--compile-mode", args.compile_mode,
            "--batch", *[str(b) for b in batch_sizes(args)],
            "--frames-out", str(tmp / f"{name}.npy")]
    if args.ckpt:
        cmd += ["--ckpt", str(args.ckpt)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_verify:
        cmd.append("--no-verify")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    spawn = time.time()
    cmd += ["--spawn-time", repr(spawn)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s (raise --timeout)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            out = json.loads(line[len(CHILD_MARK):])
            if proc.returncode != 0 and "error" not in out:
                out["error"] = f"exit status {proc.returncode}"
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}


# ------------------------------------------------------------------------------------------------- compare

def compare_plan(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(bundle, steps) of each --compare bundle; steps None: that bundle's own default."""
    steps = args.compare_steps or [None]
    if len(steps) == 1:
        steps = steps * len(args.compare)
    return list(zip(args.compare, steps))


def _compare_args(args: argparse.Namespace, path: str, steps: int | None) -> argparse.Namespace:
    """The arguments of one --compare bundle's measurement: its own bundle and steps, B=1 only, no files."""
    from sg2v.runtime.bundle import Bundle

    if steps is None:
        steps = int(Bundle.open(path, verify=False).sampler_defaults["steps"])
    return argparse.Namespace(**{**vars(args), "bundle": path, "steps": steps, "batch": [1], "compare": [],
                                 "compare_steps": None, "json": None, "table": None, "random_size": None})


def compare_bundles(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per bundle: its kind, steps, UNet calls and FLOPs per video and each backend's end-to-end time, with
    the first bundle's figure / this one's (> 1: this one is faster, or does fewer FLOPs)."""
    rows = []
    for rep in reports:
        b = rep["bundle"]
        measured = {n: x["results"] for n, x in rep["backends"].items() if x.get("results")}
        calls = next((r["unet_calls"] for r in measured.values()), rep["settings"]["steps"])
        flops = rep["flops"]["flops"]
        rows.append({
            "bundle": b["path"], "name": b["name"], "precision": b.get("precision", "fp32"),
            "student": b.get("student") is not None, "kind": guidance_for(b.get("student")).label,
            "steps": rep["settings"]["steps"], "unet_calls_per_video": calls,
            "unet_rows_per_call": rep["flops"]["batch"],
            "unet_flops_per_video": None if flops is None else flops * calls,
            "shapes": b["shapes"],
            "backends": {n: {"total_s": r["total_s"], "denoiser_step_s": r["denoiser_step_s"]}
                         for n, r in measured.items()},
        })
    first = rows[0]
    for row in rows:
        f0, f = first["unet_flops_per_video"], row["unet_flops_per_video"]
        row["vs_first"] = {"flops_ratio": f0 / f if f0 and f else None,
                           "calls_ratio": (first["unet_calls_per_video"] * first["unet_rows_per_call"])
                           / (row["unet_calls_per_video"] * row["unet_rows_per_call"]),
                           "total_speedup": {n: first["backends"][n]["total_s"] / r["total_s"]
                                             for n, r in row["backends"].items() if n in first["backends"]}}
    return {"first": first["bundle"], "bundles": rows}


STUDENT_SPEEDUP = 3.5  # a guidance-distilled few-step student against its CFG teacher, end to end
STUDENT_CPU_SECONDS = 0.3  # a 16 x 64 x 64 video from the student on ort-cpu


def compare_targets(compare: dict[str, Any]) -> list[dict[str, Any]]:
    """The student's targets: end-to-end speed-up over a CFG first bundle per backend, and seconds on ort-cpu
    at 16 x 64 x 64."""
    rows = compare["bundles"]
    first, out = rows[0], []

    def add(target: str, backend: str, value: float, threshold: float, higher: bool, unit: str) -> None:
        ok = value >= threshold if higher else value < threshold
        margin = (value / threshold - 1.0) * 100.0 if higher else (1.0 - value / threshold) * 100.0
        out.append({"target": target, "backend": backend, "value": value, "threshold": threshold,
                    "unit": unit, "pass": bool(ok), "margin_pct": margin})

    for row in rows[1:]:
        if not row["student"]:
            continue
        if not first["student"]:
            for name, x in row["vs_first"]["total_speedup"].items():
                add(f"student {row['name']} at {row['steps']} steps >= {STUDENT_SPEEDUP:g}x faster "
                    f"end-to-end than {first['name']} at {first['steps']} steps", name, x, STUDENT_SPEEDUP,
                    True, "x")
        sh = row["shapes"]
        if (sh["frames"], sh["height"], sh["width"]) == (16, 64, 64) and "ort-cpu" in row["backends"]:
            add(f"CPU: student {row['name']} at {row['steps']} steps, a 16 x 64 x 64 video under "
                f"{STUDENT_CPU_SECONDS:g} s", "ort-cpu", row["backends"]["ort-cpu"]["total_s"],
                STUDENT_CPU_SECONDS, False, "s")
    return out


def compare_table(compare: dict[str, Any]) -> list[str]:
    """Markdown rows of the bundle comparison: one per bundle and backend."""
    lines = ["", "Bundles compared (x: the first bundle's figure / this one's; > 1 = faster, fewer FLOPs):",
             "",
             "| bundle | kind | steps | UNet calls x rows per video | UNet GFLOP per video | x fewer FLOPs | "
             "backend | end-to-end s | x faster |", "|" + "---|" * 9]
    for row in compare["bundles"]:
        kind = row["kind"]  # Guidance.label
        flops = row["unet_flops_per_video"]
        name = row["name"] + ("" if row.get("precision", "fp32") == "fp32" else f" ({row['precision']})")
        head = (f"| {name} | {kind} | {row['steps']} | {row['unet_calls_per_video']} x "
                f"{row['unet_rows_per_call']} | {_fmt(flops, 1e-9, 2)} | "
                f"{_fmt(row['vs_first']['flops_ratio'], digits=2)} |")
        if not row["backends"]:
            lines.append(head + " - | - | - |")
        for name, r in row["backends"].items():
            x = row["vs_first"]["total_speedup"].get(name)
            lines.append(f"{head} {name} | {_fmt(r['total_s'], digits=3)} | {_fmt(x, digits=2)} |")
    return lines


# ------------------------------------------------------------------------------------------------ child side

def _child_main(args: argparse.Namespace) -> int:
    """Run one backend: cold first video, warm-up, timed repeats; print one JSON line with the figures."""
    try:
        out = _child_run(args)
        code = 0
    except Exception as e:  # reported to the parent as data; the other backends still run
        out = {"error": f"{type(e).__name__}: {first_line(e)}"}
        code = 1
    print(CHILD_MARK + json.dumps(out), flush=True)
    return code


def peak_rss_bytes() -> int:
    """This process's host-memory high-water mark: VmHWM, else ru_maxrss.

    VmHWM belongs to the address space exec made; Linux's ru_maxrss also keeps the high-water mark of the one
    exec replaced (with vfork/posix_spawn, the parent's), so it would charge the parent's memory.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child_run(args: argparse.Namespace) -> dict[str, Any]:
    v = VARIANTS[args.child]
    spawn = args.spawn_time if args.spawn_time is not None else time.time()
    t_main = time.time()
    graph = Path(args.graph).read_text() if args.graph else None
    pipe = _open(v, args)
    t_loaded = time.time()
    if graph is None:
        d = pipe.bundle.config.data
        graph = default_graph(pipe.bundle.vocab, d.max_objects, d.max_relationships)
    frames = pipe(graph, seed=args.seed, steps=args.steps)
    t_first = time.time()
    if args.frames_out:
        np.save(args.frames_out, np.ascontiguousarray(frames), allow_pickle=False)
    for _ in range(args.warmup):
        pipe(graph, seed=args.seed, steps=args.steps)
    runs = _timed_runs(pipe, graph, args)
    batches = _timed_batches(pipe, graph, args)
    out: dict[str, Any] = {
        "backend_name": getattr(pipe, "backend_name", v.name),
        "cold_start_s": t_first - spawn,
        "cold": {"start_to_main_s": t_main - spawn, "load_s": t_loaded - t_main,
                 "first_video_s": t_first - t_loaded},
        "peak_rss_bytes": peak_rss_bytes(),
        "runs": runs,
        "batches": batches,
        "max_batch": pipe.max_batch,
    }
    out.update(_device_memory())
    torch = sys.modules.get("torch")
    if torch is not None and v.device != "cpu":
        # What "eager fp32" means on this card: cuDNN convolutions use TF32 by default, matmuls do not.
        out["torch_flags"] = {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                              "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                              "torch": torch.__version__}
    notes = getattr(getattr(pipe, "backend", None), "notes", None)
    if notes:
        out["notes"] = list(notes)
    return out


def _timed_runs(pipe: Any, graph: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The stage timings of `args.repeats` single-video runs, each with its video write when asked."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="sg2v-bench-write-") as wdir:
        for i in range(args.repeats):
            frames = pipe(graph, seed=args.seed, steps=args.steps)
            timings = {k: v for k, v in pipe.last_timings.items() if k != "backend"}
            if args.write != "none":
                from sg2v.video import write_video

                t0 = time.perf_counter()
                write_video(Path(wdir) / f"bench_{i}.{args.write}", frames)
                timings["write_s"] = time.perf_counter() - t0
            runs.append(timings)
    return runs


def _timed_batches(pipe: Any, graph: Any, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The stage timings of batched generate calls, per batch size above 1 (after warm-up calls)."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for b in batch_sizes(args)[1:]:
        graphs, seeds = [graph] * b, [args.seed + i for i in range(b)]
        for _ in range(args.warmup):
            pipe.generate(graphs, seeds, steps=args.steps)
        batches[str(b)] = []
        for _ in range(args.repeats):
            pipe.generate(graphs, seeds, steps=args.steps)
            batches[str(b)].append({k: v for k, v in pipe.last_timings.items() if k != "backend"})
    return batches


def _open(v: Variant, args: argparse.Namespace) -> Any:
    """The row's `sg2v.runtime.Pipeline`: the bundle on the row's runtime backend."""
    from sg2v.runtime import Pipeline
    from sg2v.runtime.backends import make_backend
    from sg2v.runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle, verify=not args.no_verify)
    if v.runtime == "torch-cuda":
        from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

        backend = make_torch_cuda_backend(bundle, device=v.device, mode=v.mode or "graphs",
                                          precision=v.precision, ckpt=args.ckpt,
                                          compile_mode=args.compile_mode, threads=args.threads)
    else:
        backend = make_backend(bundle, v.runtime, device=v.device, threads=args.threads, ckpt=args.ckpt)
    return Pipeline(bundle, backend)


def _device_memory() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"cuda_peak_bytes": int(torch.cuda.max_memory_allocated()),
                "cuda_peak_source": "torch.cuda.max_memory_allocated"}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        with contextlib.suppress(Exception):
            return {"cuda_peak_bytes": int(cupy.get_default_memory_pool().total_bytes()),
                    "cuda_peak_source": "bytes held by CuPy's default pool at the end"}
    return {}


# ----------------------------------------------------------------------------------------------- summarising

STAGES = ("total_s", "encoder_s", "layout_s", "denoiser_s", "sampler_overhead_s", "decode_s", "write_s")


def summarise(backends: dict[str, dict[str, Any]], flops: int | None, peak: dict[str, Any]) -> None:
    """Add `results` (medians), `ratios` (against the baseline and the GPU reference) to each measured row."""
    for b in backends.values():
        runs = b.get("runs")
        if not runs:
            continue
        r: dict[str, Any] = {}
        for key in STAGES:
            values = [run[key] for run in runs if key in run]
            r[key] = statistics.median(values) if values else None
        r["denoiser_step_s"] = statistics.median([s for run in runs for s in run["denoiser_steps_s"]])
        r["sampler_overhead_pct"] = statistics.median(
            [100.0 * run["sampler_overhead_s"] / run["total_s"] for run in runs])
        r["unet_calls"] = runs[0]["unet_calls"]
        draws = [sum(run["layout_draws"]) for run in runs if "layout_draws" in run]
        r["layout_draws"] = statistics.median(draws) if draws else None
        r["cold_start_s"] = b["cold_start_s"]
        r["startup_s"] = b["cold"]["start_to_main_s"] + b["cold"]["load_s"]
        r["peak_rss_mib"] = b["peak_rss_bytes"] / 2 ** 20
        r["cuda_peak_mib"] = b["cuda_peak_bytes"] / 2 ** 20 if "cuda_peak_bytes" in b else None
        if flops:
            r["achieved_tflops"] = flops / r["denoiser_step_s"] / 1e12
        r["batches"] = {"1": {"total_s": r["total_s"], "videos_per_s": 1.0 / r["total_s"],
                              "speedup_vs_b1": 1.0, "chunks": runs[0].get("chunks", 1)}}
        for size, bruns in b.get("batches", {}).items():
            total = statistics.median(run["total_s"] for run in bruns)
            vps = int(size) / total
            r["batches"][size] = {"total_s": total, "videos_per_s": vps, "speedup_vs_b1": vps * r["total_s"],
                                  "chunks": bruns[0].get("chunks", 1)}
        b["results"] = r
    for name, b in backends.items():
        if "results" not in b:
            continue
        side = "gpu" if VARIANTS[name].gpu else "cpu"
        p = peak.get(side, {}).get("tflops")
        res = b["results"]
        if res.get("achieved_tflops") is not None and p:
            res["peak_tflops"] = p
            res["peak_fraction"] = res["achieved_tflops"] / p
        refs = [BASELINE] + ([GPU_REFERENCE] if VARIANTS[name].gpu else [])
        b["ratios"] = {ref: ratios(res, backends[ref]["results"]) for ref in refs
                       if "results" in backends.get(ref, {})}


def ratios(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Reference time / this row's time (> 1 = faster), and this row's memory / the reference's."""
    out = {}
    for key, name in (("total_s", "total_speedup"), ("denoiser_step_s", "step_speedup"),
                      ("cold_start_s", "cold_start_speedup")):
        if row.get(key) and ref.get(key):
            out[name] = ref[key] / row[key]
    if row.get("peak_rss_mib") and ref.get("peak_rss_mib"):
        out["rss_ratio"] = row["peak_rss_mib"] / ref["peak_rss_mib"]
    return out


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets, each with its value, the threshold, pass/miss and the margin in percent."""
    b = report["backends"]
    shape = report["bundle"]["shapes"]
    what = f"{shape['frames']} x {shape['height']} x {shape['width']}, {report['settings']['steps']} steps"
    out = []

    def add(target: str, backend: str, value: float | None, threshold: float, higher_is_better: bool,
            unit: str) -> None:
        if value is None:
            return
        ok = value >= threshold if higher_is_better else value < threshold
        margin = (value / threshold - 1.0) * 100.0 if higher_is_better else (1.0 - value / threshold) * 100.0
        out.append({"target": target, "backend": backend, "value": value, "threshold": threshold,
                    "unit": unit, "pass": bool(ok), "margin_pct": margin})

    def get(name: str, *keys: str) -> Any:
        node: Any = b.get(name, {})
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    add("CPU: ONNX Runtime >= 1.5x faster than PyTorch eager (end-to-end)", "ort-cpu",
        get("ort-cpu", "ratios", BASELINE, "total_speedup"), 1.5, True, "x")
    add(f"CPU: end-to-end under 5 s ({what})", "ort-cpu", get("ort-cpu", "results", "total_s"), 5.0, False,
        "s")
    add("CPU: cold start under 2 s (process start to first video)", "ort-cpu",
        get("ort-cpu", "results", "cold_start_s"), 2.0, False, "s")
    add("CPU: cold start under 2 s, read as startup (process start to a ready pipeline)", "ort-cpu",
        get("ort-cpu", "results", "startup_s"), 2.0, False, "s")
    add("GPU: denoiser step >= 3x faster than eager fp32", "torch-cuda-fast",
        get("torch-cuda-fast", "ratios", GPU_REFERENCE, "step_speedup"), 3.0, True, "x")
    fast = get("torch-cuda-fast", "results", "denoiser_step_s")
    comp = get("torch-cuda-compile-fp16", "results", "denoiser_step_s")
    add("GPU: denoiser step faster than torch.compile fp16", "torch-cuda-fast",
        comp / fast if fast and comp else None, 1.0, True, "x")
    add("GPU: sampler overhead under 3% of end-to-end", "torch-cuda-fast",
        get("torch-cuda-fast", "results", "sampler_overhead_pct"), 3.0, False, "%")
    return out


def _fmt(x: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The markdown table of the report: one row per measured backend, then targets and skipped backends."""
    m, s, sh = report["machine"], report["settings"], report["bundle"]["shapes"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; load average {m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end.",
        f"Bundle: {report['bundle']['name']} ({report['bundle']['precision']}), "
        f"{sh['frames']} x {sh['channels']} x {sh['height']} x {sh['width']}; {s['steps']} steps, "
        f"{s['repeats']} timed runs after {s['warmup']} "
        f"warm-up (+1 cold); medians.",
    ]
    lines.append(_floor_line(report))
    lines += ["", "| backend | end-to-end s | x base | encoder ms | layout ms (draws) | denoiser step ms | "
              "step x base | sampler overhead ms (%) | decode / write ms | startup / cold start s | "
              "peak RSS MiB | CUDA peak MiB | TFLOP/s (% peak) |", "|" + "---|" * 13]
    lines += [_backend_row(name, b) for name, b in report["backends"].items() if b.get("results")]
    lines += _batch_table(report)
    if report["targets"]:
        lines += ["", "| target | backend | measured | needed | verdict |", "|---|---|---|---|---|"]
        for t in report["targets"]:
            verdict = ("pass" if t["pass"] else "MISS") + f" ({t['margin_pct']:+.0f}%)"
            lines.append(f"| {t['target']} | {t['backend']} | {t['value']:.3g} {t['unit']} | "
                         f"{'>=' if t['unit'] == 'x' else '<'} {t['threshold']:g} {t['unit']} | {verdict} |")
    other = [f"- {n}: {b.get('reason') or b.get('error')}" for n, b in report["backends"].items()
             if not b.get("results")]
    if other:
        lines += ["", "Not measured:", *other]
    return "\n".join(lines)


def _floor_line(report: dict[str, Any]) -> str:
    """The UNet step's FLOPs and, per measured matmul peak, the step time it allows."""
    peak, flops = report["peak"], report["flops"]["flops"]
    floor = []
    if flops:
        floor.append(f"UNet step (batch {report['flops'].get('batch', 2)}): {flops / 1e9:.2f} GFLOP")
    for side in ("cpu", "gpu"):
        if side in peak:
            t = peak[side]["tflops"]
            dtype = "fp32" if side == "cpu" else "fp16"
            line = f"{side.upper()} matmul peak {t:.3g} TFLOP/s ({dtype}, n={peak[side]['n']})"
            if flops:
                line += f", step floor {flops / (t * 1e12) * 1e3:.2f} ms"
            floor.append(line)
    return "; ".join(floor) + "."


def _backend_row(name: str, b: dict[str, Any]) -> str:
    """One measured backend's row of the markdown table."""
    r = b["results"]
    ra = b.get("ratios", {})
    base = ra.get(BASELINE, {})
    gref = ra.get(GPU_REFERENCE, {})
    step_x = _fmt(base.get("step_speedup"), digits=2)
    if gref:
        step_x += f" ({_fmt(gref.get('step_speedup'), digits=2)} vs {GPU_REFERENCE})"
    tf = "-"
    if r.get("achieved_tflops") is not None:
        tf = f"{r['achieved_tflops']:.3g}"
        if r.get("peak_fraction") is not None:
            tf += f" ({100 * r['peak_fraction']:.1f}%)"
    layout = _fmt(r.get("layout_s"), 1e3)
    if r.get("layout_draws") is not None:
        layout += f" ({r['layout_draws']:g})"
    return (
        f"| {name} | {_fmt(r['total_s'], digits=3)} | {_fmt(base.get('total_speedup'), digits=2)} | "
        f"{_fmt(r['encoder_s'], 1e3)} | {layout} | {_fmt(r['denoiser_step_s'], 1e3, 2)} | {step_x} | "
        f"{_fmt(r['sampler_overhead_s'], 1e3)} ({_fmt(r['sampler_overhead_pct'])}%) | "
        f"{_fmt(r['decode_s'], 1e3, 2)} / {_fmt(r.get('write_s'), 1e3)} | "
        f"{_fmt(r.get('startup_s'), digits=2)} / {_fmt(r['cold_start_s'], digits=2)} | "
        f"{_fmt(r['peak_rss_mib'], digits=0)} | {_fmt(r.get('cuda_peak_mib'), digits=0)} | {tf} |")


def _batch_table(report: dict[str, Any]) -> list[str]:
    """Videos/s per batch size, each against the same row's B=1 figure (none when only B=1 was timed)."""
    sizes = [str(b) for b in report["settings"]["batch"]]
    if len(sizes) < 2:
        return []
    lines = ["", "Videos per second by batch size (one generate call of B videos; x: against the same row's "
             "B=1; 'n calls' where the backend runs the batch in chunks):", "",
             "| backend | " + " | ".join(f"B={b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, b in report["backends"].items():
        r = b.get("results")
        if not r:
            continue
        cells = []
        for size in sizes:
            e = r["batches"].get(size)
            if e is None:
                cells.append("-")
                continue
            cell = f"{e['videos_per_s']:.3g}"
            if size != "1":
                cell += f" ({e['speedup_vs_b1']:.2f}x"
                cell += f", {e['chunks']} calls)" if e["chunks"] > 1 else ")"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
