"""`sg2v-export`: checkpoint -> bundle folder (ONNX graphs, manifest, parity, TensorRT op check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sg2v import bundle_spec as spec
from sg2v.errors import Sg2vError
from sg2v.options import HelpFormatter, add_shared, check_shared, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sg2v-export",
        description="Export a trained sg2v checkpoint to a bundle: encoder.onnx, layout.onnx "
                    "(layout-grounded models), unet.onnx, manifest.json, null context, encoder weights. "
                    "Every graph is checked against PyTorch through ONNX Runtime and against the operators "
                    "TensorRT's ONNX parser supports.",
        formatter_class=HelpFormatter,
        epilog="sg2v-export triton BUNDLE --out REPO writes a Triton Inference Server model repository for a "
               "bundle (sg2v-export triton --help).",
    )
    p.add_argument("--ckpt", required=True,
                   help="checkpoint from sg2v-train (model.pt or .safetensors), or a bundle folder exported "
                        "with --include-weights (re-exported in this sg2v's bundle format)")
    p.add_argument("--out", default="bundle", help="bundle folder to write (replaced atomically)")
    p.add_argument("--precision", choices=spec.PRECISIONS, default="fp32",
                   help="compute precision set in the graphs (I/O stays float32; norms, softmax stay fp32); "
                        "int8: the fp32 bundle with its UNet quantised to int8 Q/DQ (Conv and MatMul "
                        "inputs), calibrated on the bundle's own generations (python -m sg2v.export.quantize "
                        "does it for an existing fp32 bundle)")
    p.add_argument("--weights", choices=["fp32", "fp16"], default="fp32",
                   help="storage of the weights in the bundle: fp16 halves its size (the model is rounded to "
                        "float16 weights before export, so parity and quality describe what ships); compute "
                        "stays as --precision says")
    p.add_argument("--pooling", choices=spec.POOLINGS, default="portable",
                   help="encoder pooling: standard ops (one-hot MatMul) or the sg2v::ScatterMeanPool plugin")
    p.add_argument("--plugin-impl", choices=["aot", "jit"], default="aot",
                   help="with --pooling plugin: aot bakes the kernel's PTX into the TensorRT engine "
                        "(TensorRT >= 10.9, no Python at inference); jit calls the CuPy kernel from Python "
                        "per run (TensorRT >= 10.6)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20")
    p.add_argument("--include-weights", action="store_true",
                   help="also write model.safetensors for the runtime's PyTorch reference backend")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--strict-trt", action="store_true",
                   help="fail if a node is outside the TensorRT ONNX parser's supported operators")
    p.add_argument("--trt-target", default=None,
                   help="TensorRT version to check operators against (default: 10.3, JetPack 6; with "
                        "--pooling plugin the first TensorRT with that plugin form: 10.9 aot, 10.6 jit)")
    p.add_argument("--allow-parity-failure", action="store_true",
                   help="write the bundle even if ONNX Runtime disagrees with PyTorch (noted in manifest)")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a bundle")
    add_shared(p, "seed", what="the random parity inputs")
    p.add_argument("--max-batch", type=int, default=spec.MAX_BATCH,
                   help="most videos one call of the exported graphs takes (their batch axis; TensorRT "
                        "optimisation profiles span 1 to this)")
    add_shared(p, "guidance", source="the model config's default_guidance; stored as the bundle's default")
    add_shared(p, "steps", source="the model config's default_steps; stored as the bundle's default "
                                  "(sampler_defaults.steps)")
    p.add_argument("--layout-tries", type=int, default=None,
                   help="layout-grounded models: the layout check's most draws per graph, stored as the "
                        "bundle's layout.tries (default: the model config's default_tries; sg2v-run "
                        "--layout-tries overrides it per run)")
    return p


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def summary(result) -> str:
    """Files and sizes, parity per stage, op check verdict: what the CLI prints after an export."""
    m = result.manifest
    lines = [f"wrote bundle {result.path} ({m['precision']}, {m.get('weight_storage', 'fp32')} weights, "
             f"pooling {m['pooling']}, opset {m['opset']}, 1 to {m['shapes']['max_batch']} videos per call) "
             f"in {result.seconds:.1f}s"]
    d = m["sampler_defaults"]
    lines.append(f"sampler defaults: {d['sampler']}, {d['steps']} steps, guidance {d['guidance']:g} "
                 f"(rescale {d['guidance_rescale']:g})")
    st = m.get("student")
    if st is not None:
        lo, hi = st["guidance_range"]
        lines.append(f"student: guidance-distilled ({st['method']}), one UNet row per video, "
                     f"{st['sampler']} on {st['steps']} steps, guidance in [{lo:g}, {hi:g}] (rescale "
                     f"{st['guidance_rescale']:g})")
    lay = m.get("layout")
    if lay is not None:
        geo = lay.get("geometry")
        keeps = "" if geo is None else (f" and the boxes keep the data's geometry ({geo['source']}: "
                                        f"overlap <= {geo['max_overlap']}, sizes, inside the canvas)")
        lines.append(f"layout stage: {lay['sampler']}, {lay['steps']} steps, up to {lay['tries']} draws per "
                     f"graph ({lay['per_round']} per round at first) until the relations of the "
                     f"{len(lay['relation_rules'])} predicates with a geometric rule hold{keeps}")
    if result.reused:
        lines.append(f"reused stages: {', '.join(result.reused)}")
    for rel, info in m["files"].items():
        lines.append(f"  {rel:24s} {_size(info['bytes']):>10s}  sha256 {info['sha256'][:12]}")
    for stage, p in m["parity"].items():
        verdict = "ok" if p["ok"] else "FAILED"
        lines.append(f"parity {stage}: max rel err {p['max_rel_err']:.2e} (abs {p['max_abs_err']:.2e}, "
                     f"tol {p['tolerance']:g}) {verdict}")
    trt = m["trt_op_check"]
    plugins = sum(p["count"] for p in trt["plugins"])
    verdict = "all nodes supported" if trt["ok"] else f"{len(trt['unsupported'])} unsupported node(s)"
    lines.append(f"TensorRT {trt['target']} op check: {verdict}"
                 + (f", {plugins} plugin node(s) need the sg2v plugin" if plugins else ""))
    return "\n".join(lines)


class FlagError(Sg2vError):
    """A flag value sg2v-export cannot use (exit status 2)."""

    exit_code = 2


def check_flags(args: argparse.Namespace) -> None:
    """FlagError naming the flag unless --seed, --guidance and --trt-target can be used, before any work."""
    import re

    from sg2v.errors import shown

    check_shared(args, FlagError, ("seed", "guidance", "steps"))
    if args.trt_target is not None:
        from sg2v.export.opcheck import load_table

        base = load_table()["target"]
        if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){1,2}", args.trt_target):
            raise FlagError(f"--trt-target {shown(args.trt_target)}: a TensorRT version MAJOR.MINOR, e.g. "
                            f"{base}")
        if tuple(map(int, args.trt_target.split("."))) < tuple(map(int, base.split("."))):
            raise FlagError(f"--trt-target {args.trt_target}: the operator table starts at TensorRT {base}; "
                            f"choose {base} or later")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["triton"]:  # sg2v-export triton BUNDLE --out REPO: a Triton model repository
        from sg2v.export.triton import main as triton_main

        return triton_main(argv[1:])
    from sg2v.safety import safe_stdio

    safe_stdio()  # before argparse prints a path in its usage error
    args = build_parser().parse_args(argv)
    return run_cli("sg2v-export", lambda: _export(args), interrupted=f"nothing was written to {args.out}",
                   os_error="nothing was written to --out")


def _export(args: argparse.Namespace) -> int:
    """Check the flags, export the bundle, print its summary."""
    from sg2v.export.onnx_export import export_bundle

    check_flags(args)
    result = export_bundle(
        args.ckpt, Path(args.out), precision=args.precision, pooling=args.pooling, opset=args.opset,
        include_weights=args.include_weights, weights=args.weights, ema=not args.no_ema,
        strict_trt=args.strict_trt,
        allow_parity_failure=args.allow_parity_failure, force=args.force, trt_target=args.trt_target,
        seed=args.seed, log=print, guidance=args.guidance, plugin_impl=args.plugin_impl,
        max_batch=args.max_batch, steps=args.steps, layout_tries=args.layout_tries,
    )
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
