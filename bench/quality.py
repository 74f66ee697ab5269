"""Quality of an exported bundle by the shapes oracle on held-out graphs, stage by stage.

    python bench/quality.py --bundle models/demo --n 200 --steps 4 8 25 \
        --json bench/quality_demo.json --table bench/quality_demo.md --sheet out/quality_sheet.png

Samples every graph through the runtime (`sg2v.runtime.Pipeline`, ONNX Runtime CPU by default, in batches of
the bundle's max_batch): the shipped artifact, not the training checkpoint. Graph i of the held-out stream
(disjoint from training) uses noise seed `--seed + i`. Torch-free. For a layout-grounded bundle three stages
are measured: the layout stage alone (relation accuracy of its tracks by the relation rules, on the first draw
and with the relation check, how often the check redrew, diversity across seeds), the video given the true
tracks at `--true-steps` (the UNet's ceiling), and end to end at each of `--steps`. Prints each row as it
finishes, then the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sg2v.runtime.backends import BACKENDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default="models/demo", help="bundle folder from sg2v-export")
    p.add_argument("--n", type=int, default=200, help="held-out graphs per step count")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 25], help="sampler step counts")
    p.add_argument("--seed", type=int, default=0, help="held-out stream seed; graph i uses noise seed + i")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight (None: the bundle's)")
    p.add_argument("--backend", default="ort", choices=list(BACKENDS),
                   help="runtime backend")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (None: one per core)")
    p.add_argument("--batch", type=int, default=None,
                   help="most videos per generate call (None: the bundle's max_batch)")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--table", default=None, help="write the markdown table here")
    p.add_argument("--sheet", default=None,
                   help="contact sheet PNG of the first 8 videos at the middle step count")
    p.add_argument("--true-steps", type=int, nargs="*", default=[8],
                   help="grounded bundles: sampler steps of the true-tracks rows (none: skip them)")
    p.add_argument("--no-layout-stage", action="store_true",
                   help="grounded bundles: skip the layout-stage row")
    p.add_argument("--layout-tries", type=int, default=None,
                   help="grounded bundles: most layouts drawn per graph (None: the bundle's)")
    args = p.parse_args(argv)
    if args.n < 1 or any(s < 1 for s in args.steps) or (args.batch is not None and args.batch < 1):
        p.error("--n, --steps and --batch must be positive")

    from sg2v.errors import Sg2vError
    from sg2v.io import atomic_write_text
    from sg2v.quality import evaluate_pipeline, format_markdown, format_table
    from sg2v.runtime import Pipeline

    try:
        pipe = Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
    except Sg2vError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 1
    print(f"bundle {args.bundle} on {pipe.backend_name}: {args.n} held-out graphs, steps {args.steps}")
    grounded = pipe.generator.grounded
    layout_row = None
    if grounded and not args.no_layout_stage:
        layout_row = layout_stage_row(pipe, args.n, args.seed, args.layout_tries, args.batch)
        print(format_layout_markdown([layout_row]))
    true_rows = []
    if grounded and args.true_steps:
        print("video given the true tracks:")
        print(format_table([]))
        true_rows, _ = evaluate_pipeline(pipe, n=args.n, steps=args.true_steps, seed=args.seed,
                                         guidance=args.guidance, log=print, max_batch=args.batch,
                                         true_layouts=True)
    print("end to end:" if grounded else "")
    print(format_table([]))
    rows, videos = evaluate_pipeline(pipe, n=args.n, steps=args.steps, seed=args.seed, guidance=args.guidance,
                                     log=print, max_batch=args.batch)
    table = format_markdown(rows)
    if grounded:
        parts = []
        if layout_row is not None:
            parts += ["Layout stage alone (relation rules on the sampled tracks):", "",
                      format_layout_markdown([layout_row]), ""]
        if true_rows:
            parts += ["Video given the true tracks:", "", format_markdown(true_rows), ""]
        table = "\n".join(parts + ["End to end:", "", table])
    print(table)
    if args.json:
        meta = {"bundle": os.fspath(args.bundle), "bundle_files": pipe.bundle.manifest["files"], "rows": rows,
                "true_layout_rows": true_rows, "layout_stage": layout_row}
        atomic_write_text(Path(args.json), json.dumps(meta, indent=2) + "\n")
    if args.table:
        atomic_write_text(Path(args.table), table + "\n")
    if args.sheet:
        from sg2v.video import write_contact_sheet

        mid = sorted(videos)[len(videos) // 2]
        shown = videos[mid][:8]  # (k, F, H, W, 3): one row per video
        k, f, h, w, c = shown.shape
        write_contact_sheet(Path(args.sheet), shown.reshape(k * f, h, w, c), cols=f)
    return 0


def layout_stage_row(pipe, n: int, seed: int, tries: int | None, max_batch: int | None) -> dict:
    """`sg2v.quality.layout_quality` on the held-out graphs through the bundle's own layout stage."""
    from sg2v.graph import pad_graphs
    from sg2v.quality import heldout_graphs, layout_quality

    data = pipe.bundle.config.data
    parsed = [pipe.parse(g) for g in heldout_graphs(pipe.bundle.config, n, seed)]
    feeds = pad_graphs(parsed, data.max_objects, data.max_relationships).as_feeds()
    row = layout_quality(pipe.generator, parsed, feeds, [seed + i for i in range(n)], tries=tries,
                         max_batch=max_batch)
    row.update(seed=seed, tries=tries or pipe.generator.layout["tries"], backend=pipe.backend_name)
    return row


def format_layout_markdown(rows: list[dict]) -> str:
    """The layout-stage table: relation accuracy without / with the check, redraws, diversity."""
    cols = ("relation accuracy, first draw", "relation accuracy, with the check",
            "all relations held, first draw", "all relations held, with the check", "redrawn", "mean draws",
            "diversity (frame widths)")
    keys = ("layout_relation_accuracy_first_draw", "layout_relation_accuracy", "layout_satisfied_first_draw",
            "layout_satisfied", "layout_redrawn", "layout_mean_draws", "layout_diversity")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if v is None:
                cells.append("n/a")
            elif k == "layout_mean_draws":
                cells.append(f"{v:.2f}")
            elif k == "layout_diversity":
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{100 * v:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
