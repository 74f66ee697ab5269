"""A second TensorRT engine route: Torch-TensorRT from the trained PyTorch modules to raw plans that the
torch-free runtime loads like the ONNX route's (`python -m sg2v.export.torch_trt --ckpt model.pt --bundle B`).

For a graph TensorRT's ONNX parser rejects, or to compare the two compilers: the bundle's stages (the same
`EncoderGraph` / `LayoutGraph` / `UNetGraph` wrappers, precision and weight rounding as the ONNX export,
portable pooling) are captured with `torch.export.export` at the bundle's static shapes (the layout stage with
a dynamic batch of candidate layouts, `layout_batch_range`) and compiled by
`torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine` into serialized engines, written to
the bundle's `engines/<fingerprint>/` with an `engine.json` (route "torch_tensorrt") that names the source
checkpoint: the TensorRT backend accepts them only for a bundle exported from that checkpoint.

UNVERIFIED: written to Torch-TensorRT's documented API ("Extracting a Raw TensorRT Engine", engine binding
names); Torch-TensorRT and TensorRT cannot be installed on this project's machines, so no engine has been
built by this module. Inputs are named after the wrappers' forward arguments (the manifest's names); outputs
get the manifest's names where the installed Torch-TensorRT takes `output_binding_names`, else its defaults
(output0, ...), which `engine.json`'s `bindings` maps back.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError, require
from sg2v.io import atomic_write_bytes, atomic_write_text, sha256_file

ROUTE = "torch_tensorrt"


def stage_modules(model: Any, precision: str) -> dict[str, Any]:
    """The bundle's stages as PyTorch modules: the ONNX export's wrappers, encoder pooling portable (a
    layout-grounded model: the encoder with object vectors, the layout network, the grounded UNet)."""
    from sg2v.export.onnx_export import EncoderGraph, LayoutGraph, unet_graph
    from sg2v.kinds import kinds_of_config

    guidance, grounding = kinds_of_config(model.cfg)
    encoder = copy.deepcopy(model.encoder)
    encoder.set_pooling_form("onehot")  # the one-hot MatMul form: standard ops for every compiler
    out = {spec.ENCODER_STAGE: EncoderGraph(encoder, precision, grounding.layout_stage).eval()}
    if model.layout_net is not None:
        out[spec.LAYOUT_STAGE] = LayoutGraph(copy.deepcopy(model.layout_net), precision).eval()
    out[spec.UNET_STAGE] = unet_graph(copy.deepcopy(model.unet), precision, grounding.layout_stage,
                                      guidance.entry is not None).eval()  # a student: + guidance input
    return out


def example_inputs(bundle: Any, device: str = "cpu", seed: int = 0) -> dict[str, tuple[Any, ...]]:
    """Inputs of the bundle's shapes and dtypes per stage at one video (a real padded graph, random x, t,
    tracks): the encoder and UNet plans of this route take one video per call, whatever the bundle's batch
    axis allows; the layout stage's example is one round of candidate layouts (its batch axis stays
    dynamic, `layout_batch_range`)."""
    import numpy as np
    import torch

    from sg2v.export.onnx_export import random_tracks, user_objects
    from sg2v.graph import pad_graphs, parse_graph

    data = bundle.config.data
    names, preds = bundle.vocab.object_names, bundle.vocab.pred_names
    objects = [names[0], names[-1]][:data.max_objects]
    rels = [[0, preds[0], 1]] if len(objects) == 2 and data.max_relationships >= 1 else []
    g = parse_graph({"objects": objects, "relationships": rels}, bundle.vocab, data.max_objects,
                    data.max_relationships)
    feeds = pad_graphs([g], data.max_objects, data.max_relationships).as_feeds()
    rng = np.random.default_rng(seed)
    num_train = bundle.config.diffusion.num_train_timesteps
    stage_names = spec.stage_names(bundle.shapes)

    def random_feeds(stage: str, rows: int) -> dict[str, np.ndarray]:
        io = bundle.stages[stage]["inputs"]
        return {d["name"]: rng.standard_normal((rows if isinstance(d["shape"][0], str) else d["shape"][0],
                                                *d["shape"][1:])).astype(d["dtype"]) for d in io}

    # one video: its cond and uncond rows (a student's one row, at a guidance weight in its range)
    unet = random_feeds(spec.UNET_STAGE, spec.rows_per_video(spec.UNET_STAGE, bundle.shapes))
    unet["t"] = rng.integers(0, num_train, size=unet["t"].shape).astype(np.float32)
    unet["context_mask"] = np.ones_like(unet["context_mask"])
    unet.update(bundle.guidance.random_extra_inputs(rng, len(unet["t"])))  # a student's guidance weight
    if "boxes" in unet:
        unet["boxes"] = random_tracks(rng, unet["boxes"].shape[:2], data.frames)
    out = {spec.ENCODER_STAGE: feeds, spec.UNET_STAGE: unet}
    if spec.LAYOUT_STAGE in stage_names:
        k = spec.LAYOUT_PER_ROUND
        lay = random_feeds(spec.LAYOUT_STAGE, k)
        lay["t"] = rng.integers(0, num_train, size=k).astype(np.float32)
        lay["track_mask"] = np.repeat(user_objects(feeds["obj_mask"]), k, axis=0)
        lay["known_mask"] = lay["track_mask"] * (rng.random(lay["track_mask"].shape) < 0.5)
        lay["known"] = 2.0 * random_tracks(rng, lay["known_mask"].shape, data.frames) - 1.0
        mask = np.concatenate([np.ones_like(feeds["triple_mask"][:, :1]), feeds["triple_mask"]], axis=1)
        lay["context_mask"] = np.repeat(mask, k, axis=0)  # (K, 1 + T): the global token, then the triples
        lay["triples"] = np.repeat(feeds["triples"], k, axis=0)
        out[spec.LAYOUT_STAGE] = lay
    return {stage: tuple(torch.from_numpy(np.ascontiguousarray(out[stage][n], dtype=_dtype(bundle, stage, n)))
                         .to(device) for n in stage_names[stage][0]) for stage in stage_names}


def _dtype(bundle: Any, stage: str, name: str) -> str:
    return next(d["dtype"] for d in bundle.stages[stage]["inputs"] if d["name"] == name)


def layout_batch_range(bundle: Any) -> tuple[int, int, int]:
    """(min, opt, max) rows of the layout engine's batch axis: 1, one round for one graph, the bundle's
    `max_layout_batch` (the runtime draws fewer in a graph's last round, one for a graph without rules)."""
    return 1, spec.LAYOUT_PER_ROUND, int(bundle.shapes["max_layout_batch"])


def exported_programs(model: Any, bundle: Any, device: str = "cpu") -> dict[str, Any]:
    """`torch.export.export` of each stage at the bundle's shapes: what Torch-TensorRT converts (the layout
    stage with a dynamic batch axis, `layout_batch_range`)."""
    import torch

    modules = stage_modules(model, bundle.precision)
    inputs = example_inputs(bundle, device)
    names = spec.stage_names(bundle.shapes)
    out = {}
    for stage, module in modules.items():
        dynamic = None
        if stage == spec.LAYOUT_STAGE:
            lo, _, hi = layout_batch_range(bundle)
            rows = torch.export.Dim(spec.LAYOUT_BATCH_DIM, min=lo, max=hi)
            dynamic = tuple({0: rows} for _ in names[stage][0])
        with torch.no_grad():
            out[stage] = torch.export.export(module.to(device), inputs[stage], dynamic_shapes=dynamic)
        got = tuple(out[stage].graph_signature.user_inputs)
        if got != names[stage][0]:
            raise Sg2vError(f"{stage}: the exported program's inputs are {got}, the manifest's "
                            f"{names[stage][0]}; the engine's bindings would not match")
    return out


def converter_inputs(bundle: Any, stage: str, inputs: tuple[Any, ...]) -> list[Any]:
    """`arg_inputs` for the converter: the example tensors (static shapes), or for the layout stage
    `torch_tensorrt.Input`s spanning `layout_batch_range` on dim 0."""
    if stage != spec.LAYOUT_STAGE:
        return list(inputs)
    torch_tensorrt = require("torch_tensorrt", "torch-trt")
    lo, opt, hi = layout_batch_range(bundle)
    return [torch_tensorrt.Input(min_shape=(lo, *a.shape[1:]), opt_shape=(opt, *a.shape[1:]),
                                 max_shape=(hi, *a.shape[1:]), dtype=a.dtype) for a in inputs]


def binding_options(converter: Any, outputs: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """(keyword arguments naming a stage's `outputs`, engine name -> manifest name map) for `converter`."""
    if "output_binding_names" in inspect.signature(converter).parameters:
        names = outputs if len(outputs) > 1 else outputs[0]  # a pytree shaped like the stage's return value
        return {"output_binding_names": names}, {}
    return {}, {f"output{i}": name for i, name in enumerate(outputs)}


def converter_options(converter: Any, precision: str, device_id: int, version: str
                      ) -> tuple[dict[str, Any], str | None]:
    """(keyword arguments for `converter`, one line on what Torch-TensorRT `version` leaves out, or None).

    Built from the converter's own signature, whose **kwargs swallows unknown names silently, so only named
    parameters are passed: `device` as a torch.device (which `torch_tensorrt.Device._from` takes from 2.5 on;
    the default, evaluated at import, is GPU 0 whatever --device says); the graph's
    own dtypes kept (the fp32 islands of fp16 bundles) by `use_explicit_typing=True` where it exists (2.6 to
    2.12; `enabled_precisions` then stays at its {float32} default, as the converter requires), else by
    nothing at all from 2.13, which removed both options (strong typing always), while 2.5 has only
    `enabled_precisions`. Read from pytorch/TensorRT's py/torch_tensorrt/dynamo/_compiler.py at v2.5.0 to
    v2.13.0; not run against Torch-TensorRT here.
    """
    import torch

    params = inspect.signature(converter).parameters
    options: dict[str, Any] = {}
    missing = []
    if "device" in params:
        options["device"] = torch.device("cuda", device_id)
    else:
        missing.append(f"no device option (building on the current device, cuda:{device_id})")
    if "use_explicit_typing" in params:
        options["use_explicit_typing"] = True
    elif "enabled_precisions" in params:
        fp16 = {torch.float16} if precision == "fp16" else set()
        options["enabled_precisions"] = {torch.float32} | fp16
        if precision == "fp16":
            missing.append("no use_explicit_typing, so enabled_precisions {float32, float16} lets TensorRT "
                           "pick float16 kernels for the graph's float32 parts too")
    else:
        missing.append("neither use_explicit_typing nor enabled_precisions (strongly typed only): the "
                       "graph's own dtypes decide, as sg2v wants")
    note = f"sg2v: Torch-TensorRT {version} has {'; '.join(missing)}" if missing else None
    return options, note


def engine_info(bundle: Any, fingerprint: str, gpu: str, cc: tuple[int, int], versions: dict[str, str],
                plans: dict[str, Path], bindings: dict[str, dict[str, str]]) -> dict[str, Any]:
    """`engine.json` for plans of this route: what `sg2v.export.tensorrt.check_engine_dir` checks."""
    from sg2v.export.tensorrt import engine_sources

    sources = engine_sources(bundle)
    return {"fingerprint": fingerprint, "route": ROUTE, "gpu": gpu, "compute_capability": f"{cc[0]}.{cc[1]}",
            **versions, "precision": bundle.precision, "pooling": "portable",
            "checkpoint": sources["checkpoint"], "weight_storage": sources["weight_storage"],
            "plan_sha256": {stage: sha256_file(p) for stage, p in plans.items()},
            "bindings": {stage: b for stage, b in bindings.items() if b}}


def load_bundle_model(ckpt: str | Path, bundle: Any) -> Any:
    """The bundle's model from `ckpt`, refused unless it is the checkpoint the bundle was exported from."""
    from sg2v.export.onnx_export import load_for_export, round_weights_fp16

    source = bundle.manifest.get("source_checkpoint") or {}
    model, _, _, got = load_for_export(ckpt, ema=bool(source.get("ema", True)))
    if got["sha256"] != source.get("sha256") or got["ema"] != bool(source.get("ema", True)):
        want = f"{str(source.get('sha256'))[:12]}, ema {source.get('ema')}"
        raise BundleError(f"--ckpt {ckpt} is not the checkpoint bundle {bundle.path} was exported from "
                          f"(sha256 {got['sha256'][:12]}, ema {got['ema']}; the bundle says {want}); pass "
                          "that checkpoint, or re-export the bundle from this one")
    if bundle.manifest.get("weight_storage", "fp32") == "fp16":
        round_weights_fp16(model)  # the bundle ships float16-rounded weights: build the engines from those
    return model


def build_torch_trt_engines(ckpt: str | Path, bundle: Any, device_id: int = 0, force: bool = False,
                            log: Any = None) -> dict[str, Path]:
    """Plans for every stage of `bundle` from checkpoint `ckpt` through Torch-TensorRT. UNVERIFIED."""
    from sg2v.export.tensorrt import ENGINE_INFO, PLAN_SUFFIX, ROUTE_ONNX, engine_dir
    from sg2v.runtime.bundle import Bundle

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    model = load_bundle_model(ckpt, bundle)
    torch_tensorrt = require("torch_tensorrt", "torch-trt")
    import tensorrt
    import torch

    if not torch.cuda.is_available():
        raise Sg2vError("Torch-TensorRT builds engines on a CUDA GPU and PyTorch sees none here; run this on "
                        "the machine the engines are for")

    device = f"cuda:{device_id}"
    gpu = torch.cuda.get_device_name(device_id)
    cc = torch.cuda.get_device_capability(device_id)
    fingerprint = spec.engine_fingerprint(gpu, cc, tensorrt.__version__, bundle.precision)
    out_dir = engine_dir(bundle, fingerprint)
    info_path = out_dir / ENGINE_INFO
    if info_path.is_file() and not force:
        try:
            route = json.loads(info_path.read_text(encoding="utf-8")).get("route", ROUTE_ONNX)
        except (OSError, ValueError, AttributeError, RecursionError):
            route = "unreadable"
        raise BundleError(f"{out_dir} already holds engines (route {route}); pass --force to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    converter = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine
    options, note = converter_options(converter, bundle.precision, device_id, torch_tensorrt.__version__)
    if note:
        log(note)
    plans, bindings = {}, {}
    with torch.cuda.device(device_id):  # TensorRT builds for the current device; the option names it too
        programs = exported_programs(model.to(device), bundle, device)
        inputs = example_inputs(bundle, device)
        for stage, program in programs.items():
            names, bindings[stage] = binding_options(converter, spec.stage_names(bundle.shapes)[stage][1])
            log(f"sg2v: Torch-TensorRT {torch_tensorrt.__version__}: converting {stage} (this takes a while)")
            engine = converter(program, arg_inputs=converter_inputs(bundle, stage, inputs[stage]), **names,
                               **options)
            plans[stage] = out_dir / f"{stage}{PLAN_SUFFIX}"
            atomic_write_bytes(plans[stage], bytes(engine))
    versions = {"tensorrt": tensorrt.__version__, "torch_tensorrt": torch_tensorrt.__version__,
                "torch": torch.__version__}
    info = engine_info(bundle, fingerprint, gpu, cc, versions, plans, bindings)
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    return plans


def main(argv: list[str] | None = None) -> int:
    """`python -m sg2v.export.torch_trt`: TensorRT engines for a bundle through Torch-TensorRT."""
    ap = argparse.ArgumentParser(prog="python -m sg2v.export.torch_trt", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="the checkpoint the bundle was exported from")
    ap.add_argument("--bundle", required=True, help="bundle folder written by sg2v-export")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--force", action="store_true", help="replace engines already built for this machine")
    from sg2v.options import run_cli

    def build() -> int:
        args = ap.parse_args(argv)
        plans = build_torch_trt_engines(args.ckpt, args.bundle, args.device, args.force)
        for stage, plan in plans.items():
            print(f"{stage}: {plan}")
        return 0

    return run_cli(ap.prog, build)


if __name__ == "__main__":
    sys.exit(main())
