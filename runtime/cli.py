"""`sg2v-run`: scene graph(s) in, video file(s) out, on the best backend available (no torch needed).

Exit status: 0 done, 2 an invalid graph (the graph module's one-line message), 1 any other error (a missing or
broken bundle, a backend that cannot start, an unwritable output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sg2v.errors import GraphError, Sg2vError
from sg2v.runtime.backends import BACKENDS

DEMO_BUNDLE = Path("models") / "demo"
OUTPUT_KINDS = ".mp4, .gif, .webp, .npy, or no extension for a folder of PNG frames"


def default_bundle() -> Path | None:
    """The shipped demo bundle: ./models/demo, else models/demo beside the source tree, if either exists."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / DEMO_BUNDLE
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; options whose default is "the bundle's" say so in their own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or action.required:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    demo = default_bundle()
    ap = argparse.ArgumentParser(
        prog="sg2v-run",
        description="Generate a short video from a scene graph with an exported sg2v bundle.",
        formatter_class=_Help,
        epilog=('Graph JSON: {"objects": ["red circle", "blue square"], '
                '"relationships": [[0, "left of", 1]]}. Several graphs (several files, or one file holding'
                " a JSON list) are generated as one batch (--batch videos per call, each from --seed) and "
                "give numbered outputs (video_0.mp4, video_1.mp4, ...)."),
    )
    ap.add_argument("graphs", nargs="+", metavar="graph.json",
                    help="scene-graph JSON file(s); a file may hold one graph or a list of graphs")
    ap.add_argument("--bundle", default=str(demo) if demo else None, required=demo is None,
                    help="bundle folder written by sg2v-export"
                    + (f" (default: {demo})" if demo else " (required: no demo bundle at models/demo)"))
    ap.add_argument("--out", default="video.mp4",
                    help=f"output path; format from the extension: {OUTPUT_KINDS}")
    ap.add_argument("--contact-sheet", default=None, metavar="SHEET.png",
                    help="also write the frames in a grid as one PNG (default: none)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance weight (default: the bundle's)")
    ap.add_argument("--guidance-rescale", type=float, default=None,
                    help="guidance rescale in [0, 1] (default: the bundle's)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the initial noise")
    ap.add_argument("--batch", type=int, default=None,
                    help="most videos per batched call (default: the bundle's max_batch; format-1 bundles "
                         "take 1)")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="auto tries TensorRT, then ONNX Runtime GPU, then ONNX Runtime CPU; torch is the "
                         "PyTorch reference, torch-cuda the CUDA-graph fp16 path")
    ap.add_argument("--sampler", choices=("dpmpp2m", "ddim"), default=None,
                    help="sampler (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for ONNX Runtime / torch (default: one per core)")
    ap.add_argument("--device", default=None,
                    help="cpu, cuda or cuda:N (default: the backend's choice, GPU 0 when it uses one)")
    ap.add_argument("--ckpt", default=None,
                    help="checkpoint for --backend torch or torch-cuda (default: the bundle's "
                         "model.safetensors)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second of the written video")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the bundle's sha256 checks (sizes still checked)")
    return ap


def numbered(path: Path, i: int, n: int) -> Path:
    """`path` itself for a single output, else `stem_i.ext` (a PNG folder gets `name_i`)."""
    return path if n == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except GraphError as e:
        print(f"sg2v-run: invalid graph: {e}", file=sys.stderr)
        return 2
    except Sg2vError as e:
        print(f"sg2v-run: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # an unwritable output, a full disk: one line, not a traceback
        print(f"sg2v-run: error: {e}; check the output path's permissions and free space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sg2v-run: interrupted", file=sys.stderr)
        return 130


def _run(args: Any) -> int:
    from sg2v.graph import load_graphs
    from sg2v.runtime.bundle import Bundle
    from sg2v.runtime.pipeline import Pipeline
    from sg2v.video import write_contact_sheet, write_video

    for name, value in (("--threads", args.threads), ("--steps", args.steps), ("--batch", args.batch)):
        if value is not None and value < 1:
            raise Sg2vError(f"{name} {value}: must be >= 1")
    if args.seed < 0:
        raise Sg2vError(f"--seed {args.seed}: must be >= 0")
    if args.ckpt is not None and args.backend not in ("torch", "torch-cuda"):
        raise Sg2vError(f"--ckpt is for --backend torch or torch-cuda; the {args.backend} backend runs the "
                        "bundle's graphs")
    bundle = Bundle.open(args.bundle, verify=not args.no_verify)
    data = bundle.config.data
    graphs = []
    for path in args.graphs:
        if not Path(path).is_file():
            raise GraphError(f"{path}: no such file; pass a scene-graph JSON file")
        graphs.extend(load_graphs(Path(path), bundle.vocab, data.max_objects, data.max_relationships))
    out = Path(args.out)
    for target in (out, *([Path(args.contact_sheet)] if args.contact_sheet else [])):
        try:  # `--out out/video.mp4` on a fresh checkout: make the folder, as users expect
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Sg2vError(f"cannot create output folder {target.parent} ({e.strerror or e}); "
                            "choose another output path") from None
    pipe = Pipeline(bundle, _backend(bundle, args))
    print(f"sg2v-run: bundle {bundle.path}, backend {pipe.backend_name}"
          + "".join(f" ({note})" for note in pipe.backend.notes))
    if len(graphs) > 1 and bundle.max_batch == 1:
        print(f"sg2v-run: this bundle takes one video per call (format {bundle.manifest['format_version']}): "
              f"the {len(graphs)} graphs run one after another; for batched calls re-export it: sg2v-export "
              f"--ckpt {bundle.path} --out NEW_BUNDLE")
    videos = pipe.generate(graphs, [args.seed] * len(graphs), steps=args.steps, guidance=args.guidance,
                           guidance_rescale=args.guidance_rescale, sampler=args.sampler, max_batch=args.batch)
    t = pipe.last_timings
    for i, frames in enumerate(videos):
        target = write_video(numbered(out, i, len(graphs)), frames, fps=args.fps)
        sheet = None
        if args.contact_sheet:
            sheet = write_contact_sheet(numbered(Path(args.contact_sheet), i, len(graphs)), frames)
        f, h, w, _ = frames.shape
        print(f"wrote {target} ({f} frames {h}x{w})" + (f" and {sheet}" if sheet else ""))
    calls = t["unet_calls"] // max(t["chunks"], 1)
    batch = f"{t['videos']} videos in {t['chunks']} call(s): " if t["videos"] > 1 else ""
    print(f"  {batch}encoder {_ms(t['encoder_s'])}, denoiser {_ms(t['denoiser_s'])} for {calls} steps "
          f"({_ms(t['denoiser_per_step_s'])}/step), sampler {_ms(t['sampler_overhead_s'])}, "
          f"decode {_ms(t['decode_s'])}, total {_ms(t['total_s'])}")
    return 0


def _backend(bundle: Any, args: Any) -> Any:
    from sg2v.runtime.backends import make_backend

    return make_backend(bundle, args.backend, device=args.device, threads=args.threads, ckpt=args.ckpt)


if __name__ == "__main__":
    sys.exit(main())
