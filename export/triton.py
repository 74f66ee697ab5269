"""`sg2v-export triton BUNDLE --out REPO`: a Triton Inference Server model repository for a bundle.

The repository holds one model per stage and the orchestrator:
- `sg2v_encoder`, `sg2v_layout` (layout-grounded bundles), `sg2v_unet`: each stage's graph with a
  `config.pbtxt` derived from the manifest's stage I/O (`sg2v.bundle_spec.stage_io`: names, dtypes, shapes;
  dim 0 is Triton's batch axis, up to the stage's most rows) and dynamic batching, so concurrent requests'
  stage calls (above all the UNet's sampler steps) run as one batch. Stage backends: `onnxruntime`
  (platform onnxruntime_onnx with the TensorRT execution accelerator, for NVIDIA's tritonserver container),
  `tensorrt` (platform tensorrt_plan: plans built on the serving GPU by `python -m sg2v.export.tensorrt`),
  or `python` (python-backend models wrapping ONNX Runtime: the CPU server of the nvidia-pytriton wheel,
  which has no onnxruntime backend).
- `sg2v`: a python-backend model that runs sg2v's one generation loop (`sg2v.runtime.pipeline.Pipeline`) on
  stages that call the stage models through BLS (`sg2v.runtime.triton_model`). Request: `graphs` (one graph
  JSON per video), `seeds`, optional `steps`, `guidance`, `guidance_rescale`, `sampler`, `layout_tries`,
  `layouts`.
  Response: `frames` uint8 (B, F, H, W, 3) and `layout_results` (one JSON per video).

The bundle is copied to `sg2v/1/bundle/`; the stage files are hard links to its ONNX files (copies across
file systems). Hashes are checked against the manifest when the repository is written and again when the
`sg2v` model initialises. The python models import sg2v: the server's Python must see it (pip install sg2v
in the container; for a venv, `python -m sg2v.runtime.triton_server` sets it up).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError
from sg2v.io import atomic_path, sha256_file
from sg2v.runtime.triton_model import BUNDLE_DIR, ORCHESTRATOR, REPOSITORY_FORMAT, REPOSITORY_RECORD

STAGE_MODEL_PREFIX = "sg2v_"
STAGE_BACKENDS = ("onnxruntime", "tensorrt", "python")
DEFAULT_INSTANCES = 8  # orchestrator instances: requests generated at the same time
DEFAULT_QUEUE_DELAY_US = 2000
TRITON_DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}

# The orchestrator's request and response tensors (max_batch_size 0: shapes are the whole tensors).
REQUEST_INPUTS = (
    ("graphs", "TYPE_STRING", [-1], False),  # one scene-graph JSON per video
    ("seeds", "TYPE_INT64", [-1], False),  # one seed per video
    ("steps", "TYPE_INT32", [1], True),
    ("guidance", "TYPE_FP64", [1], True),  # float64: the local run's Python float, bit for bit
    ("guidance_rescale", "TYPE_FP64", [1], True),
    ("sampler", "TYPE_STRING", [1], True),
    ("layout_tries", "TYPE_INT32", [1], True),  # layout draws per graph at most (grounded bundles)
    ("layouts", "TYPE_STRING", [-1], True),  # one layout JSON per video ("{}": none given)
)
STAGE_SHIM = '''"""Triton python-backend model: sg2v's {what} (sg2v.runtime.triton_model)."""

import os
import site

for _path in os.environ.get("SG2V_TRITON_SITE", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)  # the venv holding sg2v (its .pth files included)
try:
    from sg2v.runtime.triton_model import {cls} as TritonPythonModel  # noqa: F401
except ImportError as e:
    raise ImportError(f"sg2v is not importable in Triton's python stub ({{e}}); pip install sg2v into the "
                      "server's Python, or start the server with SG2V_TRITON_SITE set to the site-packages "
                      "folder holding sg2v (python -m sg2v.runtime.triton_server does)") from None
'''


def stage_model(stage: str) -> str:
    """The repository's model name of a stage ("unet" -> "sg2v_unet")."""
    return STAGE_MODEL_PREFIX + stage


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
    extra = ""
    if not dims:  # a (rows,) tensor: Triton takes [rows, 1] and hands the model [rows]
        dims, extra = [1], " reshape: { shape: [ ] }"
    opt = " optional: true" if optional else ""
    return f"  {{ name: {_quote(name)} data_type: {dtype} dims: {_dims(dims)}{extra}{opt} }}"


def _parameters(values: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}\n"
                   for k, v in values.items())


def stage_rows(stage: str, shapes: dict[str, Any]) -> int:
    """The most batch rows one call of `stage` takes (Triton's max_batch_size for its model)."""
    if stage == spec.LAYOUT_STAGE:
        return int(shapes["max_layout_batch"])
    return spec.rows_per_video(stage, shapes) * spec.max_batch(shapes)


def stage_config(stage: str, io: dict[str, Any], shapes: dict[str, Any], backend: str, precision: str,
                 sha256: str, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """config.pbtxt of a stage model: its I/O from the manifest, dynamic batching, and the backend's
    platform (onnxruntime with the TensorRT accelerator, a TensorRT plan, or sg2v's python ORT model)."""
    lines = [f"name: {_quote(stage_model(stage))}"]
    if backend == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
    elif backend == "tensorrt":
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append('backend: "python"')
    lines.append(f"max_batch_size: {stage_rows(stage, shapes)}")
    for kind in ("inputs", "outputs"):
        tensors = [_tensor(d["name"], TRITON_DTYPES[d["dtype"]], list(d["shape"][1:])) for d in io[kind]]
        lines.append(f"{kind[:-1]} [\n" + ",\n".join(tensors) + "\n]")
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}")
    kind = "KIND_CPU" if backend == "python" else "KIND_GPU"
    lines.append(f"instance_group [ {{ count: 1 kind: {kind} }} ]")
    if backend == "onnxruntime":
        mode = "FP16" if precision == "fp16" else "FP32"
        lines.append("optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "
                     f'"tensorrt" parameters {{ key: "precision_mode" value: "{mode}" }} }} ] }} }}')
    text = "\n".join(lines) + "\n"
    params = {"sha256": sha256}
    if backend == "python":
        params.update(stage=stage, io=json.dumps(io, separators=(",", ":")))
    return text + _parameters(params)


def orchestrator_config(shapes: dict[str, Any], stages: list[str], instances: int) -> str:
    """config.pbtxt of the `sg2v` python model: the request/response tensors and its instances."""
    f, h, w = shapes["frames"], shapes["height"], shapes["width"]
    inputs = [_tensor(n, t, d, opt) for n, t, d, opt in REQUEST_INPUTS]
    outputs = [_tensor("frames", "TYPE_UINT8", [-1, f, h, w, 3]),
               _tensor("layout_results", "TYPE_STRING", [-1])]
    text = (f"name: {_quote(ORCHESTRATOR)}\nbackend: \"python\"\nmax_batch_size: 0\n"
            "input [\n" + ",\n".join(inputs) + "\n]\noutput [\n" + ",\n".join(outputs) + "\n]\n"
            f"instance_group [ {{ count: {int(instances)} kind: KIND_CPU }} ]\n")
    return text + _parameters({"stages": json.dumps({s: stage_model(s) for s in stages})})


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _engine_plans(bundle: Any, engines: Path) -> dict[str, Path]:
    """The TensorRT plans in `engines` (a bundle's engines/<fingerprint>/), checked against the bundle's ONNX
    files and their recorded hashes."""
    from sg2v.export.tensorrt import ENGINE_INFO, PLAN_SUFFIX, check_engine_dir, engine_sources

    try:
        info = json.loads((engines / ENGINE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"--engines {engines}: cannot read {ENGINE_INFO} ({e}); build the plans on the "
                          "serving GPU with: python -m sg2v.export.tensorrt BUNDLE") from None
    fingerprint = info.get("fingerprint") if isinstance(info, dict) else None
    check_engine_dir(engines, str(fingerprint), sources=engine_sources(bundle))
    plans = {stage: engines / f"{stage}{PLAN_SUFFIX}" for stage in bundle.stages}
    for stage, plan in plans.items():
        want = (info.get("plan_sha256") or {}).get(stage)
        if not plan.is_file() or sha256_file(plan) != want:
            raise BundleError(f"--engines {engines}: {plan.name} is missing or does not match its sha256 in "
                              f"{ENGINE_INFO}; rebuild with: python -m sg2v.export.tensorrt BUNDLE --force")
    return plans


def is_repository(path: Path) -> bool:
    """Whether `path` is a repository this module wrote (its record file names the format)."""
    try:
        record = json.loads((path / REPOSITORY_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == REPOSITORY_FORMAT


def write_repository(bundle_path: str | os.PathLike, out: str | os.PathLike,
                     stage_backend: str = "onnxruntime", engines: str | os.PathLike | None = None,
                     instances: int = DEFAULT_INSTANCES, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                     force: bool = False,
                     log: Callable[[str], None] | None = None) -> Path:
    """Write the model repository for the bundle at `bundle_path` to `out` (atomically); returns `out`."""
    from sg2v.runtime.bundle import Bundle

    log = log or (lambda msg: None)
    out = Path(out)
    _check_request(stage_backend, engines, instances, queue_delay_us)
    _check_out(out, bundle_path, engines, force)
    bundle = Bundle.open(bundle_path, verify=True)  # every file against its manifest sha256
    _check_bundle(bundle, stage_backend)
    plans = _engine_plans(bundle, Path(engines)) if engines is not None else {}
    files = bundle.manifest["files"]
    stages = list(bundle.stages)
    record = {"format": REPOSITORY_FORMAT, "stage_backend": stage_backend, "bundle": str(bundle.path),
              "models": [ORCHESTRATOR, *(stage_model(s) for s in stages)], "stage_files": {}}
    out.parent.mkdir(parents=True, exist_ok=True)  # --out out/repo on a fresh checkout
    with atomic_path(out) as tmp:
        tmp.mkdir()
        copy = tmp / ORCHESTRATOR / "1" / BUNDLE_DIR
        copy.mkdir(parents=True)
        for rel in files:
            dst = copy / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.file(rel), dst)
        shutil.copy2(bundle.path / spec.MANIFEST, copy / spec.MANIFEST)
        (tmp / ORCHESTRATOR / "1" / "model.py").write_text(
            STAGE_SHIM.format(what="generation loop", cls="OrchestratorModel"), encoding="utf-8")
        (tmp / ORCHESTRATOR / "config.pbtxt").write_text(
            orchestrator_config(bundle.shapes, stages, instances), encoding="utf-8")
        for stage in stages:
            record["stage_files"][stage_model(stage)] = _write_stage(
                tmp, copy, bundle, stage, stage_backend, plans.get(stage), queue_delay_us)
        (tmp / REPOSITORY_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log(f"wrote Triton model repository {out}: models {', '.join(record['models'])} (stages on "
        f"{stage_backend}; {instances} generation instances, UNet dynamic batching up to "
        f"{stage_rows(spec.UNET_STAGE, bundle.shapes)} rows)")
    return out


def _check_request(stage_backend: str, engines, instances: int, queue_delay_us: int) -> None:
    """Refuse a stage backend, engine folder or batching setting the repository cannot use."""
    if stage_backend not in STAGE_BACKENDS:
        raise Sg2vError(f"--stage-backend {stage_backend!r}: choose one of {list(STAGE_BACKENDS)}")
    if (engines is None) != (stage_backend != "tensorrt"):
        raise Sg2vError("--engines ENGINE_DIR goes with --stage-backend tensorrt (and only with it): the "
                        "plans built on the serving GPU by python -m sg2v.export.tensorrt BUNDLE")
    if not 1 <= int(instances) <= 256 or not 0 <= int(queue_delay_us) <= 10_000_000:
        raise Sg2vError(f"--instances {instances} / --queue-delay-us {queue_delay_us}: instances must be in "
                        "[1, 256], the queue delay in [0, 10000000] microseconds")


def _check_out(out: Path, bundle_path, engines, force: bool) -> None:
    """`sg2v.safety.check_outputs`: --out is never the bundle or engine folder read, nor a folder holding
    them (even with --force); an existing path is replaced only when it is an sg2v model repository, or with
    --force."""
    from sg2v.safety import Output, OutputError, WriteError, check_outputs, inputs

    reads = inputs((bundle_path, "the bundle being served", True), (engines, "the engine folder", True))
    try:
        check_outputs([Output("--out", out, folder=True, ours=is_repository)], reads, force=force)
    except (OutputError, WriteError) as e:
        raise Sg2vError(str(e)) from None


def _check_bundle(bundle, stage_backend: str) -> None:
    """Refuse a bundle Triton cannot batch, or whose encoder the stage backend cannot run."""
    if "max_batch" not in bundle.shapes:
        raise Sg2vError(f"bundle {bundle.path} has format 1's fixed batches, which Triton cannot batch; "
                        f"re-export it: sg2v-export --ckpt {bundle.path} --out NEW_BUNDLE")
    if bundle.pooling == "plugin" and stage_backend != "tensorrt":
        raise Sg2vError(f"bundle {bundle.path} has the sg2v::ScatterMeanPool plugin in its encoder, which "
                        "ONNX Runtime cannot run; export with --pooling portable, or serve TensorRT plans")


def _write_stage(tmp: Path, copy: Path, bundle, stage: str, stage_backend: str, plan: Path | None,
                 queue_delay_us: int) -> dict[str, str]:
    """Write one stage's model folder (plan or ONNX file, shim, config); returns its record entry."""
    files = bundle.manifest["files"]
    folder = tmp / stage_model(stage) / "1"
    folder.mkdir(parents=True)
    if stage_backend == "tensorrt":
        target = folder / "model.plan"
        shutil.copy2(plan, target)
    else:
        target = folder / "model.onnx"
        _link_or_copy(copy / bundle.stages[stage]["file"], target)
    digest = sha256_file(target)
    want = files[bundle.stages[stage]["file"]]["sha256"].lower()
    if stage_backend != "tensorrt" and digest != want:
        raise BundleError(f"bundle {bundle.path}: {bundle.stages[stage]['file']} changed while the "
                          "repository was written (its sha256 no longer matches the manifest)")
    if stage_backend == "python":
        (folder / "model.py").write_text(STAGE_SHIM.format(what=f"{stage} stage on ONNX Runtime",
                                                           cls="OrtStageModel"), encoding="utf-8")
    (tmp / stage_model(stage) / "config.pbtxt").write_text(
        stage_config(stage, bundle.stages[stage], bundle.shapes, stage_backend, bundle.precision,
                     digest, queue_delay_us), encoding="utf-8")
    return {"file": f"{stage_model(stage)}/1/{target.name}", "sha256": digest}


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="sg2v-export triton",
        description="Write a Triton Inference Server model repository for a bundle: a model per stage with "
                    "dynamic batching and a python-backend model running sg2v's generation loop over them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bundle", help="bundle folder written by sg2v-export")
    p.add_argument("--out", required=True, help="model repository folder to write (replaced atomically)")
    p.add_argument("--stage-backend", choices=STAGE_BACKENDS, default="onnxruntime",
                   help="onnxruntime: ONNX Runtime with the TensorRT accelerator (NVIDIA's container); "
                        "tensorrt: plans from --engines; python: ONNX Runtime inside python-backend models "
                        "(the CPU server of the nvidia-pytriton wheel)")
    p.add_argument("--engines", default=None,
                   help="with --stage-backend tensorrt: the bundle's engines/<fingerprint>/ folder, built on "
                        "the serving GPU with Triton's TensorRT version")
    p.add_argument("--instances", type=int, default=DEFAULT_INSTANCES,
                   help="instances of the sg2v model: requests generated at the same time")
    p.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help="how long a stage waits for other requests' calls to batch with (microseconds)")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a repository")
    return p


def main(argv: list[str]) -> int:
    """`sg2v-export triton ...`; errors become one line on stderr and an exit status (`run_cli`)."""
    from sg2v.options import run_cli

    def write() -> int:
        args = build_parser().parse_args(argv)
        write_repository(args.bundle, args.out, args.stage_backend, args.engines, args.instances,
                         args.queue_delay_us, args.force, log=print)
        return 0

    return run_cli("sg2v-export triton", write, os_error="check --out's folder and free space")
