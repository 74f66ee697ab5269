"""`sg2v-run`: scene graph(s) in, video file(s) out, on the best backend available (no torch needed).

Exit status: 0 done, 2 an invalid graph or layout file (the graph module's one-line message) or an unusable
flag value (a number out of range, an output format it cannot write, an output that would replace something
that is not an earlier sg2v output), 1 any other error (a missing or broken bundle, a backend that cannot
start, an unwritable output). Every output path is checked before generation starts; an existing output is
replaced only when sg2v wrote it (or with --force), and never the bundle or an input file. A layout-grounded
bundle draws each video's object tracks first; `--layout` gives some or all of them, `--save-layout` writes
the ones used, `--draw-layout` draws them on the contact sheet, and a warning line names the relations a
layout could not meet. Ctrl-C stops the generation at its next stage or sampler step (a second one at once)
and exits 130, writing nothing for the videos under way; `--progress` shows each stage and step on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from sg2v.errors import GraphError, Sg2vError
from sg2v.options import SHARED, HelpFormatter, Shared, add_shared, check_shared, run_cli
from sg2v.runtime.backends import BACKENDS, SPECS, backend_help, checkpoint_backends

DEMO_BUNDLE = Path("models") / "demo"


class LayoutFileError(GraphError):
    """A `--layout` file that does not hold tracks for its graph (exit status 2, as for graphs)."""

    what = "layout"


class FlagError(Sg2vError):
    """A flag value sg2v-run cannot use, or an output path it must not write (exit status 2)."""

    exit_code = 2

OUTPUT_KINDS = ".mp4, .gif, .webp, .npy, or no extension for a folder of PNG frames"


def default_bundle() -> Path | None:
    """The shipped demo bundle: ./models/demo, else models/demo beside the source tree, if either exists."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / DEMO_BUNDLE
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


BACKEND = Shared("--backend", backend_help, default="auto", choices=BACKENDS)  # the runtime's backend table


def build_parser() -> argparse.ArgumentParser:
    demo = default_bundle()
    ap = argparse.ArgumentParser(
        prog="sg2v-run",
        description="Generate a short video from a scene graph with an exported sg2v bundle.",
        formatter_class=HelpFormatter,
        epilog=('Graph JSON: {"objects": ["red circle", "blue square"], '
                '"relationships": [[0, "left of", 1]]}. Several graphs (several files, or one file holding'
                " a JSON list) are generated as one batch (--batch videos per call, each from --seed) and "
                "give numbered outputs (video_0.mp4, video_1.mp4, ...)."),
    )
    ap.add_argument("graphs", nargs="+", metavar="graph.json",
                    help="scene-graph JSON file(s); a file may hold one graph or a list of graphs")
    add_shared(ap, "bundle", default=str(demo) if demo else None,
               help=SHARED["bundle"].help_text()
               + (f" (default: {demo})" if demo else " (required: no demo bundle at models/demo)"))
    ap.add_argument("--server", default=None, metavar="URL",
                    help="generate on a Triton Inference Server (host:port of its HTTP endpoint) serving a "
                         "repository written by sg2v-export triton, instead of locally (default: local)")
    ap.add_argument("--out", default="video.mp4",
                    help=f"output path; format from the extension: {OUTPUT_KINDS}")
    ap.add_argument("--contact-sheet", default=None, metavar="SHEET.png",
                    help="also write the frames in a grid as one PNG (default: none)")
    ap.add_argument("--layout", nargs="+", action="extend", default=None, metavar="LAYOUT.json",
                    help="given object tracks, one file per graph (in the graphs' order; --layout a b, or "
                         "--layout a --layout b): a layout mapping "
                         '({"0": [x0, y0, x1, y1], ...}: F boxes, one box or {"start": box, "end": box} per '
                         'object; objects left out are drawn) or a whole graph with a "layout" key; kept '
                         "exactly (layout-grounded bundles; default: none)")
    ap.add_argument("--save-layout", default=None, metavar="LAYOUT.json",
                    help="write the tracks each video was drawn with (F boxes per object, numbered like the "
                         "outputs), loadable again with --layout (layout-grounded bundles; default: none)")
    ap.add_argument("--draw-layout", action="store_true",
                    help="draw each object's box and label on the --contact-sheet, upscaled to a readable "
                         "size (layout-grounded bundles)")
    ap.add_argument("--layout-tries", type=int, default=None,
                    help="layouts drawn per graph at most until every relation with a geometric rule holds "
                         "(default: the bundle's)")
    for name in ("steps", "guidance", "guidance_rescale", "seed"):
        add_shared(ap, name)
    ap.add_argument("--batch", type=int, default=None,
                    help="most videos per batched call (default: the bundle's max_batch; format-1 bundles "
                         "take 1)")
    for opt in (BACKEND, "sampler", "threads"):
        add_shared(ap, opt)
    ap.add_argument("--device", default=None,
                    help="cpu, cuda or cuda:N (default: the backend's choice, GPU 0 when it uses one)")
    ap.add_argument("--ckpt", default=None,
                    help="checkpoint for --backend torch or torch-cuda (default: the bundle's "
                         "model.safetensors)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second of the written video")
    add_shared(ap, "no_verify")
    ap.add_argument("--progress", action="store_true",
                    help="show progress on stderr: a bar on a terminal, else one line per stage and step "
                         "(encoder, layout round k of at most K, sampler step i of n, decode); with or "
                         "without it, Ctrl-C stops at the next stage or step and writes nothing for the "
                         "videos under way")
    ap.add_argument("--force", action="store_true",
                    help="replace existing output paths even when they are not earlier sg2v outputs (a "
                         "folder of other files, a file sg2v did not write); never the bundle or an input "
                         "file")
    return ap


def numbered(path: Path, i: int, n: int) -> Path:
    """`path` itself for a single output, else `stem_i.ext` (a PNG folder gets `name_i`)."""
    if n == 1:
        return path
    if not path.name or path.name in (".", ".."):
        from sg2v.safety import OutputError, shown_path

        raise OutputError(f"{shown_path(path)}: {n} outputs are numbered after the path's name, and this "
                          "path has none; give a name like out/video.mp4")
    return path.with_name(f"{path.stem}_{i}{path.suffix}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sg2v-run`; errors become one line on stderr and an exit status (`run_cli`)."""
    return run_cli("sg2v-run", lambda: _run(build_parser().parse_args(argv)))


LAYOUT_FLAGS = ("--layout", "--save-layout", "--draw-layout", "--layout-tries")


def _layout_flags(args: Any) -> list[str]:
    """The layout flags given on the command line."""
    given = (args.layout is not None, args.save_layout is not None, args.draw_layout,
             args.layout_tries is not None)
    return [flag for flag, on in zip(LAYOUT_FLAGS, given) if on]


def _run(args: Any) -> int:
    """Check the flags, open the bundle, read the graphs and layouts, check the outputs, generate, report."""
    from sg2v.runtime.pipeline import Pipeline

    check_numbers(args)
    if args.server is not None:
        from sg2v.runtime.triton_client import run_cli as run_on_server

        return run_on_server(args)
    bundle = _open_bundle(args)
    graphs = _read_graphs(args, bundle)
    layouts = _read_layouts(args, graphs, bundle.config.data.frames)
    check_outputs(args, len(graphs))
    pipe = Pipeline(bundle, _backend(bundle, args))
    print(f"sg2v-run: bundle {bundle.path}, backend {pipe.backend_name}"
          + "".join(f" ({note})" for note in pipe.backend.notes))
    if len(graphs) > 1 and bundle.max_batch == 1:
        print(f"sg2v-run: this bundle takes one video per call (format {bundle.manifest['format_version']}): "
              f"the {len(graphs)} graphs run one after another; for batched calls re-export it: sg2v-export "
              f"--ckpt {bundle.path} --out NEW_BUNDLE")
    print(_timing_line(_generate(args, bundle, pipe, graphs, layouts)))
    return 0


def _open_bundle(args: Any) -> Any:
    """The bundle, once the flags that need no bundle agree with each other and those that need one (a
    student's settings, the layout flags) agree with it."""
    from sg2v.runtime.bundle import Bundle

    if args.bundle is None:
        raise FlagError("--bundle is required: there is no demo bundle at models/demo")
    if args.ckpt is not None and args.backend not in checkpoint_backends():
        raise Sg2vError(f"--ckpt is for --backend {' or '.join(checkpoint_backends())}; the {args.backend} "
                        "backend runs the bundle's graphs")
    if args.draw_layout and not args.contact_sheet:
        raise Sg2vError("--draw-layout draws the boxes on the contact sheet; add --contact-sheet SHEET.png")
    bundle = Bundle.open(args.bundle, verify=not args.no_verify)
    check_student_flags(bundle, args)
    flags = _layout_flags(args)
    if flags and not bundle.grounded:
        raise Sg2vError(f"{' and '.join(flags)}: bundle {bundle.path} has no layout stage (format "
                        f"{bundle.manifest['format_version']}, a model that is not layout-grounded); drop "
                        f"{'the flag' if len(flags) == 1 else 'those flags'} or use a layout-grounded bundle "
                        "(format 3)")
    return bundle


def _read_graphs(args: Any, bundle: Any) -> list[Any]:
    """Every graph of every graph file, parsed against the bundle's vocabulary and shapes."""
    from sg2v.graph import load_graphs

    data = bundle.config.data
    graphs: list[Any] = []
    for path in args.graphs:
        if not Path(path).is_file():
            raise GraphError(f"{path}: no such file; pass a scene-graph JSON file")
        graphs.extend(load_graphs(Path(path), bundle.vocab, data.max_objects, data.max_relationships,
                                  data.frames))
        if len(graphs) > MAX_GRAPHS:
            raise FlagError(f"more than {MAX_GRAPHS} graphs in one call; split them over several sg2v-run "
                            "calls")
    return graphs


def _read_layouts(args: Any, graphs: list[Any], frames: int) -> list[Any] | None:
    """The --layout files' tracks, one file per graph in order (None without --layout)."""
    from sg2v.graph import load_layout

    if args.layout is None:
        return None
    if len(args.layout) != len(graphs):
        raise LayoutFileError(f"{len(args.layout)} --layout file(s) for {len(graphs)} graph(s); give one "
                              "layout file per graph, in the order the graphs are given")
    try:
        return [load_layout(path, g, frames) for path, g in zip(args.layout, graphs)]
    except GraphError as e:
        raise LayoutFileError(str(e)) from None


def _generate(args: Any, bundle: Any, pipe: Any, graphs: list[Any], layouts: list[Any] | None
              ) -> dict[str, Any]:
    """Generate and write every video, CHUNK_CALLS batched calls at a time; the run's summed timings."""
    from sg2v.runtime.progress import ProgressBar, cancel_on_sigint

    out, n = Path(args.out), len(graphs)
    chunk = (args.batch or bundle.max_batch) * CHUNK_CALLS  # videos generated, then written, at a time
    t: dict[str, Any] = {}
    bar, cancel = ProgressBar(sys.stderr, "sg2v-run", enabled=args.progress), threading.Event()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        with cancel_on_sigint(cancel), bar:  # Ctrl-C: Cancelled at the next stage or step
            result = pipe.run(graphs[start:stop], [args.seed] * (stop - start), steps=args.steps,
                              guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                              sampler=args.sampler, max_batch=args.batch,
                              layouts=None if layouts is None else layouts[start:stop],
                              layout_tries=args.layout_tries, progress=bar.part(start, stop, n),
                              cancel=cancel)
        for key, value in result.timings.items():
            t[key] = t.get(key, 0) + value if isinstance(value, (int, float)) else value
        for j, frames in enumerate(result.frames):
            drawn = result.layouts[j] if result.layouts is not None else None
            _write_outputs(args, out, start + j, n, frames, graphs[start + j], drawn)
        del result
    if n > chunk:  # per-step figures of the whole run, not a sum over its chunks
        t["denoiser_per_step_s"] = t["denoiser_s"] / max(t["unet_calls"], 1)
    return t


def _timing_line(t: dict[str, Any]) -> str:
    """The run's stage times in one line."""
    calls = t["unet_calls"] // max(t["chunks"], 1)
    batch = f"{t['videos']} videos in {t['chunks']} call(s): " if t["videos"] > 1 else ""
    layout = f"layout {_ms(t['layout_s'])}, " if "layout_s" in t else ""
    return (f"  {batch}encoder {_ms(t['encoder_s'])}, {layout}denoiser {_ms(t['denoiser_s'])} for {calls} "
            f"steps ({_ms(t['denoiser_per_step_s'])}/step), sampler {_ms(t['sampler_overhead_s'])}, "
            f"decode {_ms(t['decode_s'])}, total {_ms(t['total_s'])}")


def check_student_flags(bundle: Any, args: Any) -> None:
    """A guidance-distilled student samples only as it was distilled (the manifest's "student" entry):
    --sampler, --steps, --guidance and --guidance-rescale outside that are refused in one line."""
    if bundle.student is None:
        return
    from sg2v.errors import ConfigError

    try:
        bundle.settings(steps=args.steps, guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                        sampler=args.sampler)
    except ConfigError as e:
        raise FlagError(f"{e} (bundle {bundle.path} is a guidance-distilled student)") from None


MAX_LAYOUT_TRIES = 4096
MAX_GRAPHS = 10_000  # graphs in one call
CHUNK_CALLS = 4  # batched calls generated before their videos are written (memory stays bounded)


def check_numbers(args: Any) -> None:
    """FlagError (one line) unless every number flag is finite and within what a run can use, checked
    before the bundle is opened (argparse's float() takes nan and inf)."""
    from sg2v.errors import shown
    from sg2v.video import VideoError, check_fps

    check_shared(args, FlagError, ("steps", "seed", "guidance", "guidance_rescale", "threads"))
    for name, value, hi in (("--batch", args.batch, 1 << 20), ("--layout-tries", args.layout_tries,
                                                                MAX_LAYOUT_TRIES)):
        if value is not None and not 1 <= value <= hi:
            raise FlagError(f"{name} {shown(value)}: must be an integer in [1, {hi}]")
    try:
        check_fps(args.fps)
    except VideoError as e:
        raise FlagError(f"--{e}") from None


def _inputs(args: Any) -> list[Any]:
    """The paths sg2v-run reads, with what they are: no output may replace or hold them."""
    from sg2v.safety import inputs

    return inputs((args.bundle, "the bundle", True), (args.ckpt, "the --ckpt checkpoint"),
                  *[(g, "a graph file") for g in args.graphs],
                  *[(f, "a --layout file") for f in args.layout or ()])


def _targets(args: Any, n: int) -> list[tuple[str, Path, str]]:
    """(flag, path, kind) of every file sg2v-run writes for n videos, in writing order."""
    out = [("--out", numbered(Path(args.out), i, n), "video") for i in range(n)]
    if args.contact_sheet:
        out += [("--contact-sheet", numbered(Path(args.contact_sheet), i, n), "image") for i in range(n)]
    if args.save_layout:
        out += [("--save-layout", numbered(Path(args.save_layout), i, n), "layout") for i in range(n)]
    return out


def check_outputs(args: Any, n: int) -> None:
    """Before generating: each output's format is one sg2v writes (an image format Pillow can write), and
    `sg2v.safety.check_outputs` passes: its folder exists (made if missing) and takes files, no two outputs
    share a path, none is, holds or lies inside an input (the bundle, a graph, layout or checkpoint file;
    --force does not change that), and an existing output is replaced only when it is an earlier sg2v
    output of its kind (`sg2v.video.is_sg2v_output`; a saved layout) or with --force."""
    from sg2v.errors import MissingDependencyError, require
    from sg2v.safety import Output, OutputError, is_marked_json
    from sg2v.safety import check_outputs as check_paths
    from sg2v.video import VideoError, image_format, is_sg2v_output, output_kind

    outputs = []
    try:
        targets = _targets(args, n)
    except OutputError as e:
        raise FlagError(str(e)) from None
    for flag, path, kind in targets:
        try:
            fmt = output_kind(path) if kind == "video" else kind
            if kind == "image":
                image_format(path)
        except VideoError as e:
            raise FlagError(f"{flag} {e}") from None
        if fmt == "mp4":
            try:
                require("imageio_ffmpeg", "video")
            except MissingDependencyError as e:
                raise FlagError(f"{flag} {path}: {e}") from None
        ours = is_marked_json if fmt == "layout" else (lambda p, f=fmt: is_sg2v_output(p, f))
        outputs.append(Output(flag, path, folder=fmt == "png", ours=ours))
    check_paths(outputs, _inputs(args), force=args.force)


def _write_outputs(args: Any, out: Path, i: int, n: int, frames: Any, graph: Any, drawn: Any) -> None:
    """Video i's files: the video, its contact sheet (boxes drawn with --draw-layout), its saved layout; and
    one warning line when its relations could not all be met in its layout."""
    from sg2v.io import atomic_write_text
    from sg2v.layout import layout_json
    from sg2v.layout_sampler import relation_summary
    from sg2v.safety import JSON_MARK
    from sg2v.video import box_sheet, contact_sheet, write_image, write_video

    target = write_video(numbered(out, i, n), frames, fps=args.fps)
    wrote = [str(target)]
    if args.contact_sheet:
        if args.draw_layout:
            labels = [f"{k} {name}" for k, name in enumerate(graph.object_names)]
            image = box_sheet(frames, drawn.tracks, labels)
        else:
            image = contact_sheet(frames)
        wrote.append(str(write_image(numbered(Path(args.contact_sheet), i, n), image)))
    if args.save_layout:
        path = numbered(Path(args.save_layout), i, n)
        saved = {JSON_MARK: "sg2v-run --save-layout", "objects": list(graph.object_names),
                 "layout": layout_json(drawn.tracks)}
        atomic_write_text(path, json.dumps(saved) + "\n")
        wrote.append(str(path))
    f, h, w, _ = frames.shape
    print(f"wrote {wrote[0]} ({f} frames {h}x{w})" + "".join(f" and {p}" for p in wrote[1:]))
    summary = relation_summary(drawn) if drawn is not None else ""
    if summary:
        which = f"video {i}: " if n > 1 else ""
        print(f"sg2v-run: warning: {which}{summary}", file=sys.stderr)


def _backend(bundle: Any, args: Any) -> Any:
    from sg2v.runtime.backends import make_backend

    try:
        return make_backend(bundle, args.backend, device=args.device, threads=args.threads, ckpt=args.ckpt)
    except ImportError as e:  # a backend whose library is missing (torch for torch and torch-cuda)
        if isinstance(e, Sg2vError):
            raise
        extra = SPECS[args.backend].extra if args.backend in SPECS else "gpu"
        raise Sg2vError(f"--backend {args.backend} needs {e.name or 'a library'}, which is not installed; "
                        f"install it (pip install 'sg2v[{extra}]') or choose another --backend") from None


if __name__ == "__main__":
    sys.exit(main())
