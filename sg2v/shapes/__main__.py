"""`python -m sg2v.shapes`: render graphs, write random samples, score videos with the oracle, self-test."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sg2v.errors import Sg2vError
from sg2v.io import atomic_write_text
from sg2v.shapes.oracle import score_batch, score_video
from sg2v.shapes.world import SPLITS, ShapesDataset, ShapesWorld
from sg2v.video import read_video, write_contact_sheet, write_video


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels (square canvas)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(prog="python -m sg2v.shapes", formatter_class=fmt,
                                 description="The shapes world: procedural scene-graph videos, their oracle.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("render", formatter_class=fmt,
                       help="render a graph JSON with random motion that satisfies its relationships")
    p.add_argument("--graph", required=True, help="scene graph JSON file (sg2im form)")
    p.add_argument("--out", required=True,
                   help="output video: .mp4, .gif, .webp, .npy, or a path without extension for PNG frames")
    p.add_argument("--seed", type=int, default=0, help="random seed of the motion")
    _world_args(p)
    p.add_argument("--tries", type=int, default=20000,
                   help="motions to try before calling the graph unsatisfiable")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the video file")
    p.add_argument("--lossless", action="store_true",
                   help="lossless RGB H.264 for .mp4 (ffmpeg players only)")
    p.add_argument("--sheet", default=None, help="also write a contact sheet PNG here")
    p.add_argument("--scale", type=int, default=4, help="contact sheet upscaling factor")

    p = sub.add_parser("sample", formatter_class=fmt,
                       help="write N random samples: video, graph JSON and contact sheet each")
    p.add_argument("--n", type=int, default=8, help="number of samples")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="ShapesDataset seed (sample i is ds[i])")
    p.add_argument("--split", choices=sorted(SPLITS), default="train", help="ShapesDataset split")
    _world_args(p)
    p.add_argument("--format", choices=["gif", "webp", "mp4", "npy", "png"], default="gif",
                   help="video format (png: a folder of frames)")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the video files")
    p.add_argument("--scale", type=int, default=4, help="contact sheet upscaling factor")

    p = sub.add_parser("score", formatter_class=fmt,
                       help="score a video file against its graph with the oracle")
    p.add_argument("video", help="video file (.mp4, .gif, .webp, .npy, or a folder of PNG frames); lossy mp4 "
                                 "smears small shapes and lowers the scores, so prefer lossless files")
    p.add_argument("--graph", required=True, help="scene graph JSON file the video should show")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("selftest", formatter_class=fmt,
                       help="score N generated samples with the oracle; fails unless presence and "
                            "relations are 100%%")
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="ShapesDataset seed")
    _world_args(p)
    return ap


def _render(a: argparse.Namespace) -> int:
    world = ShapesWorld(frames=a.frames, height=a.size, width=a.size)
    s = world.render_graph(a.graph, seed=a.seed, tries=a.tries)
    for target in (a.out, a.sheet):
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_video(a.out, s.video, fps=a.fps, lossless=a.lossless)
    if a.sheet:
        write_contact_sheet(a.sheet, s.video, scale=a.scale)
    print(f"wrote {a.out}" + (f" and {a.sheet}" if a.sheet else ""))
    print(score_video(s.video, s.graph).summary())
    return 0


def _sample(a: argparse.Namespace) -> int:
    if a.n < 1:
        raise Sg2vError(f"--n {a.n}: give at least 1 sample")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = ShapesDataset(seed=a.seed, length=a.n, split=a.split, frames=a.frames, height=a.size, width=a.size)
    digits = max(3, len(str(a.n - 1)))
    for i in range(a.n):
        s = ds[i]
        stem = out / f"sample_{i:0{digits}d}"
        write_video(stem if a.format == "png" else stem.with_suffix(f".{a.format}"), s.video, fps=a.fps)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(s.graph) + "\n")
        write_contact_sheet(stem.with_suffix(".png"), s.video, scale=a.scale)
        print(f"{stem.name}: {json.dumps(s.graph)}")
    print(f"wrote {a.n} samples to {out}/")
    return 0


def _score(a: argparse.Namespace) -> int:
    report = score_video(read_video(a.video), a.graph)
    print(json.dumps(report.to_dict(), indent=1) if a.json else report.summary())
    return 0


def _selftest(a: argparse.Namespace) -> int:
    ds = ShapesDataset(seed=a.seed, length=a.n, frames=a.frames, height=a.size, width=a.size)
    t0 = time.perf_counter()
    samples = [ds[i] for i in range(a.n)]
    t1 = time.perf_counter()
    r = score_batch([s.video for s in samples], [s.graph for s in samples])
    t2 = time.perf_counter()
    print(f"{a.n} samples of {a.frames}x{a.size}x{a.size}: generated {a.n / (t1 - t0):.0f}/s, "
          f"scored {a.n / (t2 - t1):.0f}/s")
    print(r.summary())
    ok = r.presence == 1.0 and r.relation_accuracy in (None, 1.0)
    print("self-test " + ("passed" if ok else "FAILED: the oracle disagrees with the generator"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors become one line on stderr and an exit status (`sg2v.options.run_cli`)."""
    from sg2v.options import run_cli

    def run() -> int:
        a = _parser().parse_args(argv)
        return {"render": _render, "sample": _sample, "score": _score, "selftest": _selftest}[a.cmd](a)

    return run_cli("python -m sg2v.shapes", run)


if __name__ == "__main__":
    sys.exit(main())
