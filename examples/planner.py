"""A planner's use of sg2v: many futures of a scene at once, keep those whose relations hold, pick one.

Each future is the scene graph generated from its own seed (seed + i). They are submitted in calls of
--per-call futures through `Pipeline.submit`, so several calls are in flight while the planner waits; results
are read as they complete. A future is kept when every relationship with a geometric rule holds in the layout
it was drawn with (`Generation.layouts[i].satisfied`, sg2v.layout_sampler.LayoutResult). Of those kept, the
planner picks the one whose relations hold with the most room (the largest smallest slack beyond each rule's
margin), the earliest on a tie, and writes its video. With --enough K it stops once K futures are kept and
cancels the calls still queued or running.

    python examples/planner.py                      # 16 futures of examples/graphs/09_stack_and_chase.json
    python examples/planner.py GRAPH.json --futures 32 --enough 4 --out plan.mp4
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = ROOT / "models" / "demo"
DEMO_GRAPH = ROOT / "examples" / "graphs" / "09_stack_and_chase.json"
MAX_FUTURES = 4096


@dataclass
class Candidate:
    """One generated future: its number, seed, frames (F, H, W, 3) uint8 and layout (a LayoutResult)."""

    index: int
    seed: int
    frames: Any
    layout: Any

    @property
    def held(self) -> tuple[int, int]:
        """(relations that hold, relations with a geometric rule) in its layout."""
        checked = [c for c in self.layout.relations if c.holds is not None]
        return sum(c.holds for c in checked), len(checked)

    @property
    def room(self) -> float:
        """The smallest slack beyond its rule's margin over the checked relations (inf when none is)."""
        from sg2v.relations import margin_of

        gaps = [c.slack - margin_of(c.rule) for c in self.layout.relations
                if c.rule is not None and c.slack is not None]
        return min(gaps, default=float("inf"))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: options whose help names their default keep their own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default:" in text else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="planner.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=_Help)
    ap.add_argument("graph", nargs="?", default=str(DEMO_GRAPH), help="the scene-graph JSON file")
    ap.add_argument("--bundle", default=str(DEMO_BUNDLE), help="a layout-grounded bundle folder")
    ap.add_argument("--futures", type=int, default=16, help="futures to generate (seeds seed .. seed+N-1)")
    ap.add_argument("--per-call", type=int, default=4, help="futures per submitted call (one batched call)")
    ap.add_argument("--enough", type=int, default=0,
                    help="stop once this many futures are kept and cancel the rest (0: generate all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first future")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    ap.add_argument("--layout-tries", type=int, default=None,
                    help="layouts drawn per future at most until its relations hold (default: the bundle's)")
    ap.add_argument("--backend", default="auto", help="runtime backend (sg2v-run --help lists them)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    ap.add_argument("--out", default="planned.mp4",
                    help="the picked future's video (.mp4, .gif, .webp, .npy, or a folder of PNG frames)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second of the video")
    ap.add_argument("--force", action="store_true",
                    help="replace --out even if sg2v did not write it (default: only an earlier sg2v output)")
    return ap


def plan(args: argparse.Namespace) -> int:
    from sg2v.errors import Sg2vError
    from sg2v.runtime import Pipeline
    from sg2v.safety import Output, check_outputs, inputs
    from sg2v.video import is_sg2v_output, output_kind, write_video

    for flag, value, lo in (("--futures", args.futures, 1), ("--per-call", args.per_call, 1),
                            ("--enough", args.enough, 0)):
        if not lo <= value <= MAX_FUTURES:
            raise Sg2vError(f"{flag} {value}: must be an integer in [{lo}, {MAX_FUTURES}]")
    out = Path(args.out)
    kind = output_kind(out)
    check_outputs([Output("--out", out, folder=kind == "png", ours=lambda p: is_sg2v_output(p, kind))],
                  inputs((args.bundle, "the bundle", True), (args.graph, "the graph file")), force=args.force)
    calls = -(-args.futures // args.per_call)
    with Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads,
                              max_pending=calls) as pipe:
        if not pipe.bundle.grounded:
            raise Sg2vError(f"bundle {args.bundle} has no layout stage, so its futures have no layouts to "
                            "judge; use a layout-grounded bundle such as models/demo")
        graph = pipe.parse(Path(args.graph))
        seeds = [args.seed + i for i in range(args.futures)]
        jobs = {}  # job -> index of its first future
        for lo in range(0, args.futures, args.per_call):
            part = seeds[lo:lo + args.per_call]
            job = pipe.submit([graph] * len(part), part, steps=args.steps, layout_tries=args.layout_tries)
            jobs[job] = lo
        print(f"planner: {args.futures} futures of {args.graph} in {calls} call(s) on {pipe.backend_name}")
        candidates: list[Candidate] = []
        for job in as_completed(jobs):
            if job.cancelled():
                continue
            generation = job.result()
            for j, (frames, layout) in enumerate(zip(generation.frames, generation.layouts)):
                c = Candidate(jobs[job] + j, seeds[jobs[job] + j], frames, layout)
                candidates.append(c)
                held, checked = c.held
                print(f"  future {c.index} (seed {c.seed}): {held}/{checked} relations hold"
                      + (f", room {c.room:.3f}" if layout.satisfied else ", dropped"))
            if args.enough and sum(c.layout.satisfied for c in candidates) >= args.enough:
                dropped = sum(other.cancel() for other in jobs if not other.done())
                print(f"planner: {args.enough} kept; cancelled {dropped} call(s) still queued or running")
                break
    kept = [c for c in candidates if c.layout.satisfied]
    if not kept:
        print(f"planner: none of {len(candidates)} futures has all its relations holding; ask for more "
              "(--futures) or raise --layout-tries", file=sys.stderr)
        return 1
    pick = max(kept, key=lambda c: (c.room, -c.index))
    target = write_video(out, pick.frames, fps=args.fps)
    print(f"planner: kept {len(kept)} of {len(candidates)}; picked future {pick.index} (seed {pick.seed}), "
          f"its relations hold with the most room ({pick.room:.3f}); wrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from sg2v.errors import GraphError, Sg2vError

    args = build_parser().parse_args(argv)
    try:
        return plan(args)
    except GraphError as e:
        print(f"planner: invalid graph: {e}", file=sys.stderr)
        return 2
    except Sg2vError as e:
        print(f"planner: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("planner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
