"""TensorRT engines from a bundle's ONNX graphs: build, cache, checks (torch-free, so it runs on the target).

Written against the documented TensorRT 10.x / 11 Python API (Builder, strongly typed network, OnnxParser,
optimization profiles, timing cache, build_serialized_network) and UNVERIFIED: TensorRT cannot be installed on
this project's build, CI or GPU test machines, so no engine has been built by this code there. Precision lives
in the ONNX graph (strong typing; TensorRT 11 builds nothing else), so no precision flags are set.

The engines take the bundle's batch axis: one optimisation profile per stage from 1 to `max_batch` videos
(the UNet's rows are 2 per video; a layout-grounded bundle's layout engine takes 1 to `max_layout_batch`
candidate layouts), tuned for `--opt-batch`; the runtime sets the input shapes per call.
Plans are cached per machine under `engines/<fingerprint>/` (fingerprint = GPU name, compute capability,
TensorRT version, precision; `sg2v.bundle_spec.engine_fingerprint`) with `engine.json` recording what they
were built from, and one timing cache per fingerprint. `python -m sg2v.export.tensorrt BUNDLE` builds them
ahead of time; the TensorRT backend (`sg2v.runtime.backends.trt`) builds, checks and loads them through here.
The export reaches these names through `sg2v.export.tensorrt`; this module never imports the export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError, require
from sg2v.io import atomic_write_bytes, atomic_write_text, sha256_file

PLAN_SUFFIX = ".plan"
ROUTE_ONNX = "onnx"  # plans parsed from the bundle's ONNX files (this module)
ROUTE_TORCH_TRT = "torch_tensorrt"  # plans converted from the PyTorch modules (sg2v.export.torch_trt)
TIMING_CACHE = "timing.cache"
ENGINE_INFO = "engine.json"
_BUILD_HINT = "build engines for this machine with: python -m sg2v.export.tensorrt <bundle>"


MIN_TENSORRT = (10, 3)  # JetPack 6.1 / 6.2; JetPack 6.0 ships 8.6, whose API lacks STRONGLY_TYPED


def tensorrt_version_problem(version: str) -> str | None:
    """None when TensorRT `version` is one sg2v builds and runs engines with (10.3 or newer), else why not."""
    try:
        have = tuple(int(p) for p in str(version).split(".")[:2])
    except ValueError:
        return f"cannot read the TensorRT version {version!r}"
    if len(have) < 2 or have < MIN_TENSORRT:
        return (f"TensorRT {version} is older than the 10.3 sg2v needs; use --backend ort with "
                "onnxruntime-gpu, or upgrade TensorRT (on a Jetson: JetPack 6.1 or newer)")
    return None


def require_tensorrt() -> Any:
    """The `tensorrt` module, if it is 10.3 or newer (MissingDependencyError / Sg2vError in one line)."""
    trt = require("tensorrt", "trt")
    problem = tensorrt_version_problem(getattr(trt, "__version__", "?"))
    if problem:
        raise Sg2vError(problem)
    return trt


def _trt() -> Any:
    return require_tensorrt()


def device_info(device_id: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of CUDA device `device_id`, read through CuPy."""
    cp = require("cupy", "gpu")
    props = cp.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name, (int(props["major"]), int(props["minor"]))


def current_fingerprint(precision: str, device_id: int = 0) -> str:
    """The engines/ folder name for this GPU, this TensorRT and `precision`."""
    version = _trt().__version__  # first: without TensorRT, say so rather than that CuPy is missing
    name, cc = device_info(device_id)
    return spec.engine_fingerprint(name, cc, version, precision)


def engine_dir(bundle: Any, fingerprint: str) -> Path:
    return Path(bundle.engines_dir) / fingerprint


def profile_shapes(bundle: Any, stage: str, opt_batch: int = 1
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Each input's optimisation profile (min, opt, max) from the manifest: over the batch axis 1, `opt_batch`
    and the bundle's max_batch videos (`bundle_spec.rows_per_video`: the UNet's rows are 2 per video (a
    student's 1, whose `guidance` input gets the same profile), the
    layout stage's a round of candidate layouts per graph, from 1 row up to `max_layout_batch`); a format-1
    bundle's fixed shapes as min = opt = max."""
    max_batch = bundle.max_batch
    if not 1 <= opt_batch <= max_batch:
        raise Sg2vError(f"--opt-batch {opt_batch}: choose 1..{max_batch} (the bundle's max_batch)")
    rows = spec.rows_per_video(stage, bundle.shapes)  # a student's UNet: 1 row per video
    out: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    for d in bundle.stages[stage]["inputs"]:
        rest = tuple(int(n) for n in d["shape"][1:])
        if stage == spec.LAYOUT_STAGE:  # a graph's last round, or a graph without rules, draws fewer
            top = bundle.shapes["max_layout_batch"]
            out[d["name"]] = ((1, *rest), (rows * opt_batch, *rest), (top, *rest))
        elif isinstance(d["shape"][0], str):
            out[d["name"]] = ((rows, *rest), (rows * opt_batch, *rest), (rows * max_batch, *rest))
        else:
            fixed = (int(d["shape"][0]), *rest)
            out[d["name"]] = (fixed, fixed, fixed)
    return out


def engine_sources(bundle: Any) -> dict[str, Any]:
    """What this bundle's plans must have been built from: its ONNX files' and source checkpoint's hashes."""
    files = bundle.manifest["files"]
    source = bundle.manifest.get("source_checkpoint")
    return {
        "onnx_sha256": {stage: files[entry["file"]]["sha256"] for stage, entry in bundle.stages.items()},
        "checkpoint": {k: source.get(k) for k in ("sha256", "ema")} if isinstance(source, dict) else None,
        "weight_storage": bundle.manifest.get("weight_storage", "fp32"),
    }


def check_engine_dir(path: str | os.PathLike[str], expected: str, onnx_sha256: dict[str, str] | None = None,
                     *, sources: dict[str, Any] | None = None, kernel_sha256: str | None = None,
                     driver_cuda: tuple[int, int] | None = None) -> dict[str, Any]:
    """Read `engine.json` in `path`; BundleError unless its plans fit this machine and this bundle.

    `expected` is this machine's fingerprint. `onnx_sha256` (or `sources`, from `engine_sources`) are what the
    plans must come from: the ONNX files for plans built by this module, the same checkpoint, weight storage
    and precision for plans from the Torch-TensorRT route. For a plugin bundle, `kernel_sha256` is the CUDA
    source an ahead-of-time plan must have baked in and `driver_cuda` the driver's CUDA version, which must
    load the plan's PTX.
    """
    info = _read_engine_info(path)
    got = info.get("fingerprint")
    if got != expected:
        raise BundleError(f"engines {path} were built for {got!r}, this machine needs {expected!r} (TensorRT "
                          "plans only run on the GPU, compute capability and TensorRT version they were "
                          f"built with); {_BUILD_HINT}")
    if sources is None and onnx_sha256 is not None:
        sources = {"onnx_sha256": onnx_sha256}
    if sources is not None:
        _check_sources(path, info, sources)
    _check_plugin(path, info, kernel_sha256, driver_cuda)
    return info


def _read_engine_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in `path`'s engine.json; BundleError if it is missing or not one."""
    info_path = Path(path) / ENGINE_INFO
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"engines {path}: no {ENGINE_INFO}, so their build target is unknown; "
                          f"{_BUILD_HINT}") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, or a number over 4300 digits
        raise BundleError(f"engines {path}: {ENGINE_INFO} is corrupt ({e}); {_BUILD_HINT}") from None
    if not isinstance(info, dict):
        raise BundleError(f"engines {path}: {ENGINE_INFO} is not a JSON object; {_BUILD_HINT}")
    return info


def _check_plugin(path: str | os.PathLike[str], info: dict[str, Any], kernel_sha256: str | None,
                  driver_cuda: tuple[int, int] | None) -> None:
    """BundleError unless the plans' recorded plugin is this bundle's kernel, in PTX the driver loads."""
    plugin = info.get("plugin")
    onnx_route = info.get("route", ROUTE_ONNX) == ROUTE_ONNX
    if kernel_sha256 is not None and onnx_route and not isinstance(plugin, dict):
        raise BundleError(f"engines {path} record no sg2v plugin although this bundle's encoder has plugin "
                          "nodes (built by an older sg2v?); rebuild with: python -m sg2v.export.tensorrt "
                          "<bundle> --force")
    if isinstance(plugin, dict) and plugin.get("impl") == "aot":
        if kernel_sha256 is not None and plugin.get("kernel_sha256") != kernel_sha256:
            raise BundleError(f"engines {path} have another version of sg2v's CUDA kernel baked in (built "
                              "before sg2v was updated); rebuild with: python -m sg2v.export.tensorrt "
                              "<bundle> --force")
        if driver_cuda is not None:
            from sg2v.runtime.cuda_kernels import ptx_loadable

            nvrtc = _major_minor(plugin.get("nvrtc"))
            if nvrtc is None or not ptx_loadable(nvrtc, driver_cuda):
                raise BundleError(f"engines {path} hold plugin PTX from NVRTC {plugin.get('nvrtc')}, which "
                                  f"the driver (CUDA {driver_cuda[0]}.{driver_cuda[1]}) cannot load; update "
                                  "the driver or rebuild here with: python -m sg2v.export.tensorrt <bundle> "
                                  "--force")


def _check_sources(path: Any, info: dict[str, Any], sources: dict[str, Any]) -> None:
    stale = "rebuild with: python -m sg2v.export.tensorrt <bundle> --force"
    if info.get("route", ROUTE_ONNX) == ROUTE_TORCH_TRT:
        built = info.get("checkpoint")
        want = sources.get("checkpoint")
        if not isinstance(built, dict) or want is None or built != want \
                or info.get("weight_storage") != sources.get("weight_storage"):
            raise BundleError(f"engines {path} were built by Torch-TensorRT from checkpoint {built!r}, this "
                              f"bundle was exported from {want!r} (weights {sources.get('weight_storage')}); "
                              "rebuild them from this bundle's checkpoint: python -m sg2v.export.torch_trt "
                              "--ckpt <model.pt> --bundle <bundle> --force")
        return
    if info.get("onnx_sha256") != sources.get("onnx_sha256"):
        raise BundleError(f"engines {path} were built from other ONNX graphs than this bundle's (re-exported "
                          f"since?); {stale}")


def _major_minor(text: Any) -> tuple[int, int] | None:
    try:
        major, minor = (int(p) for p in str(text).split(".")[:2])
    except ValueError:
        return None
    return major, minor


def engine_io_mismatches(engine_io: dict[str, tuple[tuple[int, ...], str]],
                         stage_io: dict[str, Any]) -> list[str]:
    """Tensors whose engine shape or dtype (name -> (shape, numpy dtype name)) differ from the manifest's; a
    named dimension of the manifest (the batch axis) matches any size, the engine's dynamic -1 included."""
    want = {d["name"]: (tuple(n if isinstance(n, str) else int(n) for n in d["shape"]), d["dtype"])
            for d in stage_io["inputs"] + stage_io["outputs"]}

    def same(shape: tuple[int, ...], manifest: tuple[Any, ...]) -> bool:
        return len(shape) == len(manifest) and all(isinstance(m, str) or int(d) == m
                                                   for d, m in zip(shape, manifest))

    out = []
    for name in sorted(set(want) | set(engine_io)):
        if name not in engine_io or name not in want:
            where = "engine" if name in engine_io else "manifest"
            out.append(f"{name!r} only in the {where}")
        elif not same(tuple(engine_io[name][0]), want[name][0]) or engine_io[name][1] != want[name][1]:
            shape, dtype = engine_io[name]
            out.append(f"{name!r} is {dtype} {tuple(shape)}, the manifest says "
                       f"{want[name][1]} {want[name][0]}")
    return out


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def register_plugins() -> None:
    """Register the `sg2v::ScatterMeanPool` plugin (plugin pooling) before parsing or deserializing."""
    from sg2v.runtime.trt_plugin import register

    register()


def build_engine(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str],
                 profiles: Mapping[str, tuple[tuple[int, ...], ...]],
                 timing_cache: str | os.PathLike[str] | None = None,
                 workspace_bytes: int | None = None, plugin_impl: str | None = None, log: Any = None) -> Path:
    """Parse `onnx_path` into a strongly typed network, build a serialized plan, write it atomically.

    `profiles` gives each input's (min, opt, max) shape (`profile_shapes`): one optimisation profile for
    the inputs with dynamic dimensions; fixed inputs must have the one shape min = max.

    `plugin_impl` ("aot"/"jit") registers sg2v's plugin first and sets the matching PREFER_*_PYTHON_PLUGINS
    network flag (a node's own `aot` attribute takes precedence in the parser).
    """
    from sg2v.runtime.onnx_guard import check_onnx_file

    trt = _trt()
    # static, bounded shapes at every batch size the profiles allow, before the parser and builder see it
    check_onnx_file(onnx_path, max_rows=max((int(p[-1][0]) for p in profiles.values() if p and p[-1]),
                                            default=1))
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if plugin_impl is not None:
        from sg2v.runtime.trt_plugin import effective_impl, network_flags

        register_plugins()
        flags |= network_flags(trt, effective_impl(plugin_impl, trt.__version__))
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED: required on 10.x for precision-in-the-graph; accepted and ignored on 11.x (always on).
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise BundleError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}; check the "
                          "export's trt_op_check in manifest.json (plugin bundles need sg2v's TensorRT "
                          "plugin)")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    _add_profile(builder, network, config, profiles, onnx_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cached = cache_path is not None and attach_timing_cache(config, cache_path, log)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; see the "
                          "TensorRT log above")
    plan_path = Path(plan_path)
    atomic_write_bytes(plan_path, memoryview(plan).tobytes())
    if cached and cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write_bytes(cache_path, memoryview(cache.serialize()).tobytes())
    return plan_path


def _add_profile(builder: Any, network: Any, config: Any,
                 profiles: Mapping[str, tuple[tuple[int, ...], ...]], onnx_path: Any) -> None:
    """Give `config` one optimisation profile for the dynamic inputs; BundleError on an input the manifest
    lacks or a fixed one whose shape differs from it."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        want = profiles.get(tensor.name)
        if want is None:
            raise BundleError(f"{onnx_path}: input {tensor.name!r} is not in the manifest; "
                              "re-export the bundle")
        have = tuple(tensor.shape)
        if any(d < 0 for d in have):
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, *want)  # (min, opt, max)
        elif not have == want[0] == want[2]:
            raise BundleError(f"{onnx_path}: input {tensor.name!r} is {have}, the manifest says {want[2]}; "
                              "re-export the bundle")
    if profile is not None:
        config.add_optimization_profile(profile)


def attach_timing_cache(config: Any, path: Path, log: Any = None) -> bool:
    """Give the builder `config` the timing cache in `path` (a fresh one when there is none); True if it
    holds one to save after the build.

    TensorRT refuses a cache from another device or version: `create_timing_cache` then returns None or
    `set_timing_cache(cache, False)` (no ignore_mismatch) returns False (documented in NVIDIA/TensorRT's
    python/docstrings/infer/pyCoreDoc.h, v10.3.0 to v11.1; not run against TensorRT here), and the build
    starts a fresh cache, saying so in one line, which then replaces the file."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        return True
    if data:
        log(f"sg2v: TensorRT rejected the timing cache {path} (another GPU or TensorRT version, or a corrupt "
            "file); starting a fresh one")
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, False):
            return True
    log("sg2v: TensorRT accepts no timing cache here; building without one")
    return False


def build_engines(bundle: Any, device_id: int = 0, force: bool = False, workspace_bytes: int | None = None,
                  log: Any = None, opt_batch: int = 1) -> dict[str, Path]:
    """Plans for every stage under engines/<fingerprint>/, reusing ones built from the same ONNX files with
    the same profiles (batch 1 to the bundle's max_batch, tuned for `opt_batch`)."""
    from sg2v.runtime.bundle import Bundle

    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    fingerprint = current_fingerprint(bundle.precision, device_id)
    out_dir = engine_dir(bundle, fingerprint)
    sources = engine_sources(bundle)
    plugin = bundle.pooling == "plugin"
    kernel_sha, driver_cuda = _plugin_checks(bundle) if plugin else (None, None)
    plans = {stage: out_dir / f"{stage}{PLAN_SUFFIX}" for stage in bundle.stages}
    profiles = {stage: profile_shapes(bundle, stage, opt_batch) for stage in bundle.stages}
    batches = {"max_batch": bundle.max_batch, "opt_batch": opt_batch}
    if not force and all(p.is_file() for p in plans.values()):
        try:
            info = check_engine_dir(out_dir, fingerprint, sources=sources, kernel_sha256=kernel_sha,
                                    driver_cuda=driver_cuda)
            if {k: info.get(k) for k in batches} != batches:
                raise BundleError(f"engines {out_dir} were built for batches "
                                  f"{[info.get(k) for k in batches]}, not {list(batches.values())}")
            log(f"sg2v: reusing TensorRT engines in {out_dir}")
            return plans
        except BundleError as e:
            log(f"sg2v: rebuilding TensorRT engines: {e}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Sg2vError(f"cannot create {out_dir} for TensorRT engines ({e.strerror}); make the bundle "
                        "writable or copy it somewhere writable") from None
    version = _trt().__version__
    record = None
    impl = bundle.plugin_impl if plugin else None
    cp = require("cupy", "gpu")
    with cp.cuda.Device(device_id):  # TensorRT builds for the current device, and the AOT PTX targets it
        if plugin:
            from sg2v.runtime.cuda_kernels import check_nvrtc_against_driver
            from sg2v.runtime.trt_plugin import effective_impl, plugin_record

            if effective_impl(bundle.plugin_impl, version) == "aot":
                check_nvrtc_against_driver()  # here: inside TensorRT's build callback it would be a log line
            record = plugin_record(bundle.plugin_impl, version)
        for stage, plan in plans.items():
            log(f"sg2v: building TensorRT engine {plan} (this takes a while once per machine)")
            build_engine(bundle.stage_file(stage), plan, profiles[stage], out_dir / TIMING_CACHE,
                         workspace_bytes, impl, log)
    name, cc = device_info(device_id)
    info = {"fingerprint": fingerprint, "route": ROUTE_ONNX, "gpu": name,
            "compute_capability": f"{cc[0]}.{cc[1]}", "tensorrt": version, "precision": bundle.precision,
            "pooling": bundle.pooling, "onnx_sha256": sources["onnx_sha256"], **batches,
            "plan_sha256": {stage: sha256_file(p) for stage, p in plans.items()}}
    if record is not None:
        info["plugin"] = record
    atomic_write_text(out_dir / ENGINE_INFO, json.dumps(info, indent=1) + "\n")
    return plans


def _plugin_checks(bundle: Any) -> tuple[str, tuple[int, int]]:
    """(kernel source sha256, driver CUDA version) that an AOT plugin plan of `bundle` must match."""
    from sg2v.runtime import cuda_kernels

    return cuda_kernels.kernel_sha256(), cuda_kernels.driver_cuda_version()


def main(argv: list[str] | None = None) -> int:
    """`python -m sg2v.export.tensorrt BUNDLE`: build (or reuse) this machine's engines for a bundle."""
    ap = argparse.ArgumentParser(prog="python -m sg2v.export.tensorrt", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("bundle", help="bundle folder written by sg2v-export")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--force", action="store_true", help="rebuild even when matching plans exist")
    ap.add_argument("--workspace-mb", type=int, default=0,
                    help="builder workspace limit in MiB (0: TensorRT's default)")
    ap.add_argument("--opt-batch", type=int, default=1,
                    help="videos per call the engines are tuned for (profiles span 1 to the bundle's "
                         "max_batch)")
    from sg2v.options import run_cli

    def build() -> int:
        args = ap.parse_args(argv)
        plans = build_engines(args.bundle, args.device, args.force, args.workspace_mb * (1 << 20) or None,
                              opt_batch=args.opt_batch)
        for stage, plan in plans.items():
            print(f"{stage}: {plan}")
        return 0

    return run_cli(ap.prog, build)


if __name__ == "__main__":
    sys.exit(main())
