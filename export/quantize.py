"""INT8 UNet through explicit Q/DQ: an fp32 bundle's UNet quantised by ONNX Runtime's static quantization.

The graph keeps float I/O; QuantizeLinear/DequantizeLinear pairs (int8, symmetric, zero points 0, weights
per output channel) sit on the inputs of Conv and MatMul nodes only, and the first convs (`conv_in`,
`layout_in`), the last ones (`conv_out`, the full-resolution pixel head), the object maps and everything
after them (the conversion to v, the output) stay float: quantising those loses objects. Scales come from
the bundle's own generations: graphs of its training distribution (the shapes world's training split, or
random graphs of its vocabulary) drawn through its layout stage and sampled at several step counts of its
sampler, every UNet call's inputs recorded. ONNX Runtime runs the result on CPUs; TensorRT builds the same
graph with INT8 kernels (explicit quantization: the Q/DQ nodes carry the precision, no calibrator).

    python -m sg2v.export.quantize models/demo --out bundles/demo-int8
    sg2v-export --ckpt CKPT --out OUT --precision int8     (the fp32 export, then this)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sg2v import bundle_spec as spec
from sg2v.export.onnx_export import ExportError

QUANT_OPS = ("Conv", "MatMul")
# Name fragments of the UNet's nodes kept in float (torch's exporter names nodes by module path).
KEEP_FLOAT = ("/conv_in/", "/layout_in/", "/conv_out/", "/pixel_head/", "/object_maps/")
CALIBRATION_GRAPHS = 32
PARITY_GRAPHS = 8
# The int8 UNet's output against fp32 on held-out calls: max |int8 - fp32| / max |fp32|.
INT8_TOLERANCE = 0.25


def calibration_graphs(bundle: Any, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
    """`n` graphs of the bundle's training distribution: the shapes world's `split` for a shapes-world
    vocabulary, else random graphs of the vocabulary (objects and predicates drawn uniformly)."""
    from sg2v.shapes import ShapesDataset
    from sg2v.vocab import shapes_vocab

    d, vocab = bundle.config.data, bundle.vocab
    shapes = shapes_vocab()
    if list(vocab.object_names) == list(shapes.object_names) and list(vocab.pred_names) == list(
            shapes.pred_names):
        ds = ShapesDataset(seed=seed, length=n, split=split, frames=d.frames, height=d.height, width=d.width,
                           max_objects=d.max_objects, max_relationships=d.max_relationships)
        return [ds.scene(i)[0] for i in range(n)]
    rng = np.random.default_rng([seed, spec.FORMAT_VERSION, 0 if split == "train" else 1])
    objects = [o for o in vocab.object_names if not o.startswith("__")]
    preds = [p for p in vocab.pred_names if not p.startswith("__")]
    graphs = []
    for _ in range(n):
        k = int(rng.integers(1, d.max_objects + 1))
        names = [objects[int(i)] for i in rng.integers(0, len(objects), k)]
        rels = []
        if k > 1 and preds:
            for _ in range(int(rng.integers(0, d.max_relationships + 1))):
                s, o = rng.choice(k, 2, replace=False)
                rels.append([int(s), preds[int(rng.integers(0, len(preds)))], int(o)])
        graphs.append({"objects": names, "relationships": rels})
    return graphs


def sampler_steps(bundle: Any) -> list[int]:
    """Step counts whose timesteps the calibration covers: a student's first three distilled counts, else
    the bundle's default, half of it and one step."""
    student = bundle.student
    if student is not None:
        return sorted(int(s) for s in student["steps"][:3])
    default = int(bundle.sampler_defaults["steps"])
    return sorted({1, max(1, default // 2), default})


class _Recorder:
    """A stage that records a copy of every feed dict before running the stage it wraps."""

    def __init__(self, stage: Any):
        self.stage, self.calls = stage, []

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.calls.append({k: np.array(v, dtype=np.float32, copy=True) for k, v in feeds.items()})
        return self.stage.run(feeds)


def record_unet_calls(bundle: Any, graphs: list[dict[str, Any]], seed: int, steps: list[int],
                      threads: int | None = None) -> tuple[list[dict[str, np.ndarray]], Any]:
    """Every UNet call's inputs while the bundle (ONNX Runtime CPU) samples `graphs` at each of `steps`,
    graph i with seed `seed + i`; and the videos of the last step count."""
    from sg2v.runtime.backends import make_backend
    from sg2v.runtime.pipeline import Pipeline

    backend = make_backend(bundle, "ort", device="cpu", threads=threads)
    recorder = _Recorder(backend.unet)
    backend.unet = recorder
    pipe = Pipeline(bundle, backend)
    seeds = [seed + i for i in range(len(graphs))]
    videos = None
    for s in steps:
        videos = pipe.generate(graphs, seeds, steps=int(s))
    return recorder.calls, videos


def kept_float(model: Any) -> list[str]:
    """The Conv/MatMul nodes of a UNet graph that stay float (`KEEP_FLOAT`)."""
    return [n.name for n in model.graph.node
            if n.op_type in QUANT_OPS and any(part in n.name for part in KEEP_FLOAT)]


def float32_weights(model: Any) -> int:
    """Replace every float16-stored weight behind a Cast to float32 (`--weights fp16` bundles) by the float32
    initializer itself, in place, so the quantizer sees Conv and MatMul weights as constants; returns how
    many."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep, swapped = [], 0
    for n in g.node:
        src = inits.get(n.input[0]) if n.op_type == "Cast" and n.input else None
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if src is not None and to == onnx.TensorProto.FLOAT and src.data_type == onnx.TensorProto.FLOAT16:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float32),
                                                         n.output[0]))
            swapped += 1
        else:
            keep.append(n)
    used = {name for n in keep for name in n.input}
    del g.node[:]
    g.node.extend(keep)
    live = [i for i in g.initializer if i.name in used or i.name in {o.name for o in g.output}]
    del g.initializer[:]
    g.initializer.extend(live)
    return swapped


def float_side_inputs(model: Any, keep: list[str]) -> int:
    """Give every consumer of a quantised activation other than a quantised Conv/MatMul the float tensor
    again, in place (ONNX Runtime's quantizer hands the dequantised copy to all consumers: norms, residual
    adds, gathers and the kept-float convs would read int8-rounded values); returns the inputs rewired."""
    g = model.graph
    q_input = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: q_input[n.input[0]] for n in g.node
                if n.op_type == "DequantizeLinear" and n.input[0] in q_input}
    kept, rewired = set(keep), 0
    for n in g.node:
        if n.op_type in QUANT_OPS and n.name not in kept:
            continue
        for i, name in enumerate(n.input):
            if name in float_of:
                n.input[i] = float_of[name]
                rewired += 1
    # Q/DQ pairs no node reads any more go.
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    for _ in range(2):  # DequantizeLinear first, then the QuantizeLinear that fed it
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    live = [i for i in g.initializer if i.name in used]  # and the scales and zero points they read
    del g.initializer[:]
    g.initializer.extend(live)
    return rewired


def quantize_unet(fp32_path: Path, out_path: Path, calls: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write the Q/DQ int8 UNet of `fp32_path` to `out_path`, calibrated (min-max) on `calls`; returns the
    manifest's `quantization` entry."""
    import onnx

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise ExportError("INT8 quantization runs ONNX Runtime's quantization tools, and no ONNX Runtime is "
                          "installed: pip install 'sg2v[cpu]'") from None
    import onnxruntime

    model = onnx.load(str(fp32_path))
    keep = kept_float(model)
    total = sum(n.op_type in QUANT_OPS for n in model.graph.node)
    if not keep or len(keep) == total:
        raise ExportError(f"{fp32_path}: found {len(keep)} of {total} Conv/MatMul nodes to keep float; the "
                          "UNet's node names no longer follow its module paths (conv_in, conv_out, ...)")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calls)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    float32_weights(model)
    # Symmetric int8 (zero points 0, as TensorRT's explicit quantization requires); the calibrator's augmented
    # model goes to a temporary folder of ONNX Runtime's own.
    quantize_static(
        model, str(out_path), Reader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANT_OPS), per_channel=True, reduce_range=False,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       # Biases stay float: TensorRT dequantises int8 (not int32) tensors only.
                       "QuantizeBias": False})
    q = onnx.load(str(out_path))
    rewired = float_side_inputs(q, keep)
    onnx.save(q, str(out_path))
    counts = {op: sum(n.op_type == op for n in q.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {"method": "onnxruntime static quantization, QDQ format", "onnxruntime": onnxruntime.__version__,
            "ops": list(QUANT_OPS), "activations": "int8 symmetric per tensor",
            "weights": "int8 symmetric per output channel", "calibration": "min-max",
            "quantized_nodes": total - len(keep), "float_nodes": keep, "float_inputs_restored": rewired,
            **{k.lower(): v for k, v in counts.items()}}



def unet_parity(fp32_path: Path, int8_path: Path, calls: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The int8 UNet against the fp32 one on held-out calls: worst and mean error relative to the output."""
    from sg2v.export.onnx_export import run_ort

    want = run_ort(fp32_path.read_bytes(), calls)
    got = run_ort(int8_path.read_bytes(), calls)
    worst, worst_abs, mean, finite = 0.0, 0.0, 0.0, True
    for g, w in zip(got, want):
        ref = w[spec.UNET_OUTPUTS[0]].astype(np.float64)
        out = g[spec.UNET_OUTPUTS[0]].astype(np.float64)
        finite = finite and bool(np.isfinite(out).all())
        scale = max(float(np.abs(ref).max()), 1e-12)
        worst_abs = max(worst_abs, float(np.abs(out - ref).max()))
        worst = max(worst, float(np.abs(out - ref).max()) / scale)
        mean = max(mean, float(np.abs(out - ref).mean()) / float(np.abs(ref).mean() or 1e-12))
    return {"max_abs_err": worst_abs, "max_rel_err": worst, "mean_rel_err": mean, "tolerance": INT8_TOLERANCE,
            "ok": finite and worst <= INT8_TOLERANCE, "finite": finite, "trials": len(calls),
            "definition": "max_rel_err: max |int8 - fp32| / max |fp32| of v, worst call; mean_rel_err: "
                          "mean |int8 - fp32| / mean |fp32|, worst call",
            "checked": "unet.onnx int8 (ONNX Runtime CPU) vs the fp32 bundle's unet.onnx on the UNet calls "
                       "of held-out graphs"}


def frame_parity(fp32: list[np.ndarray] | np.ndarray, int8: list[np.ndarray] | np.ndarray,
                 graphs: list[dict[str, Any]], shapes_world: bool) -> dict[str, Any]:
    """Frames of the int8 bundle against the fp32 one (same graphs and seeds), with the oracle's scores of
    both when the vocabulary is the shapes world's."""
    a = np.asarray(fp32, dtype=np.int16)
    b = np.asarray(int8, dtype=np.int16)
    diff = np.abs(a - b)
    out: dict[str, Any] = {"graphs": len(graphs), "mean_abs_levels": float(diff.mean()),
                           "max_abs_levels": int(diff.max()),
                           "fraction_over_16_levels": float((diff > 16).mean())}
    if shapes_world:
        from sg2v.quality import score_videos

        out["oracle_fp32"] = score_videos(list(a.astype(np.uint8)), graphs)
        out["oracle_int8"] = score_videos(list(b.astype(np.uint8)), graphs)
    return out


def quantize_bundle(src: str | Path, out: str | Path, graphs: int = CALIBRATION_GRAPHS, seed: int = 0,
                    parity_graphs: int = PARITY_GRAPHS, force: bool = False, strict_trt: bool = False,
                    trt_target: str | None = None, threads: int | None = None, log: Any = None) -> Any:
    """Write bundle `out`: bundle `src` (fp32) with its UNet quantised to int8 Q/DQ, precision `int8`."""
    from sg2v.export import bundle_writer
    from sg2v.export.onnx_export import ExportResult
    from sg2v.export.opcheck import check_model
    from sg2v.runtime.bundle import Bundle
    from sg2v.vocab import shapes_vocab

    say = log or (lambda s: None)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    bundle = Bundle.open(src)
    if bundle.precision != "fp32":
        raise ExportError(f"bundle {src} has precision {bundle.precision}; quantize an fp32 bundle (export "
                          "it with --precision fp32)")
    if graphs < 1 or parity_graphs < 1:
        raise ExportError(f"calibration graphs {graphs} / parity graphs {parity_graphs}: need >= 1 each")
    bundle_writer.check_output(out, force=force, reads=[src])
    steps = sampler_steps(bundle)
    shapes = shapes_vocab()
    shapes_world = list(bundle.vocab.object_names) == list(shapes.object_names)
    ts = time.perf_counter()
    calls, _ = record_unet_calls(bundle, calibration_graphs(bundle, graphs, seed), seed, steps, threads)
    say(f"calibration: {len(calls)} UNet calls from {graphs} graphs at {steps} steps "
        f"({time.perf_counter() - ts:.1f}s)")
    held = calibration_graphs(bundle, parity_graphs, seed, split="heldout")
    held_calls, fp32_videos = record_unet_calls(bundle, held, seed, [int(bundle.sampler_defaults["steps"])],
                                                threads)
    manifest = bundle_writer.read_bundle_manifest(src)
    assert manifest is not None  # Bundle.open read it
    unet_file = manifest["stages"][spec.UNET_STAGE]["file"]
    with bundle_writer.staging(out) as tmp:
        for rel in manifest["files"]:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel != unet_file:
                shutil.copyfile(src / rel, dst)
        ts = time.perf_counter()
        quant = quantize_unet(src / unet_file, tmp / unet_file, calls)
        quant["calibration_data"] = {"graphs": graphs, "split": "train" if shapes_world else "random",
                                     "seed": seed, "steps": steps, "unet_calls": len(calls)}
        say(f"unet: {quant['quantized_nodes']} Conv/MatMul nodes quantised, {len(quant['float_nodes'])} kept "
            f"float ({time.perf_counter() - ts:.1f}s)")
        par = unet_parity(src / unet_file, tmp / unet_file, held_calls)
        if not par["ok"]:
            raise ExportError(f"int8 unet parity failed: max relative error {par['max_rel_err']:.3g} against "
                              f"fp32 (tolerance {INT8_TOLERANCE:g}), finite={par['finite']}; nothing written")
        target = trt_target or manifest["trt_op_check"].get("target", "10.3")
        report = check_model(tmp / unet_file, target=target)
        if strict_trt and not report["ok"]:
            first = report["unsupported"][0]
            raise ExportError(f"--strict-trt: the int8 unet has {len(report['unsupported'])} node(s) "
                              f"TensorRT {target} cannot parse, e.g. {first['op']} ({first['reason']}); "
                              "nothing written")
        manifest["precision"] = "int8"
        manifest["quantization"] = quant
        manifest["stages"][spec.UNET_STAGE]["cache_key"] = dict(
            manifest["stages"][spec.UNET_STAGE].get("cache_key", {}), precision="int8")
        manifest["files"] = bundle_writer.file_entries(tmp)
        manifest["parity"][spec.UNET_STAGE] = par
        trt = manifest["trt_op_check"]
        trt["stages"][spec.UNET_STAGE] = report
        trt["unsupported"] = [dict(u, stage=s) for s, r in trt["stages"].items() for u in r["unsupported"]]
        trt["ok"] = not trt["unsupported"]
        bundle_writer.write_manifest(tmp, manifest)
        # Frames of the finished bundle against fp32: the same held-out graphs and seeds.
        from sg2v.runtime.pipeline import Pipeline

        pipe = Pipeline.from_bundle(tmp, backend="ort", device="cpu", threads=threads)
        int8_videos = pipe.generate(held, [seed + i for i in range(len(held))],
                                    steps=int(bundle.sampler_defaults["steps"]))
        par["frames"] = frame_parity(fp32_videos, int8_videos, held, shapes_world)
        manifest["files"] = bundle_writer.file_entries(tmp)
        bundle_writer.write_manifest(tmp, manifest)
    return ExportResult(out, manifest, [], time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from sg2v.export.cli import FlagError, summary
    from sg2v.options import add_shared, check_shared, run_cli

    p = argparse.ArgumentParser(prog="python -m sg2v.export.quantize",
                                description="Quantise an fp32 bundle's UNet to int8 Q/DQ, calibrated on the "
                                            "bundle's own generations; writes a new bundle (precision int8).")
    p.add_argument("bundle", help="fp32 bundle folder from sg2v-export")
    p.add_argument("--out", required=True, help="bundle folder to write (replaced atomically)")
    p.add_argument("--graphs", type=int, default=CALIBRATION_GRAPHS, help="calibration graphs")
    p.add_argument("--parity-graphs", type=int, default=PARITY_GRAPHS,
                   help="held-out graphs whose frames are compared with fp32 (the manifest's parity entry)")
    add_shared(p, "seed", what="the calibration graphs and their noise")
    add_shared(p, "threads")
    p.add_argument("--strict-trt", action="store_true", help="fail unless TensorRT parses every node")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a bundle")

    def run() -> int:
        args = p.parse_args(argv)
        check_shared(args, FlagError, ("seed", "threads"))
        result = quantize_bundle(args.bundle, args.out, graphs=args.graphs, seed=args.seed,
                                 parity_graphs=args.parity_graphs, force=args.force,
                                 strict_trt=args.strict_trt,
                                 threads=args.threads, log=lambda s: print(s, file=sys.stderr))
        print(summary(result))
        return 0

    return run_cli(p.prog, run, os_error="nothing was written to --out")


if __name__ == "__main__":
    raise SystemExit(main())
