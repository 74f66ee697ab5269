"""Quality of an exported bundle by the shapes oracle on held-out graphs, at several sampler step counts.

    python bench/quality.py --bundle models/demo --n 200 --steps 4 8 25 \
        --json bench/quality_demo.json --table bench/quality_demo.md --sheet out/quality_sheet.png

Samples every graph through the runtime (`sg2v.runtime.Pipeline`, ONNX Runtime CPU by default, in batches of
the bundle's max_batch): the shipped artifact, not the training checkpoint. Graph i of the held-out stream
(disjoint from training) uses noise seed `--seed + i`. Torch-free. Prints one row per step count as it
finishes, then the markdown table.
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
    print(format_table([]))
    rows, videos = evaluate_pipeline(pipe, n=args.n, steps=args.steps, seed=args.seed, guidance=args.guidance,
                                     log=print, max_batch=args.batch)
    table = format_markdown(rows)
    print(table)
    if args.json:
        meta = {"bundle": os.fspath(args.bundle), "bundle_files": pipe.bundle.manifest["files"], "rows": rows}
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


if __name__ == "__main__":
    sys.exit(main())
