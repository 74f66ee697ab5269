"""Quality of an exported bundle by the shapes oracle on held-out graphs, stage by stage.

    python bench/quality.py --bundle models/demo-teacher --n 200 --steps 4 8 25 \
        --json bench/quality_demo_teacher.json --table bench/quality_demo_teacher.md --sheet out/q.png
    python bench/quality.py --bundle models/demo --steps 1 2 4 --compare models/demo-teacher \
        --compare-steps 4 8 25

Samples every graph through the runtime (`sg2v.runtime.Pipeline`, ONNX Runtime CPU by default, in batches of
the bundle's max_batch): the shipped artifact, not the training checkpoint. Graph i of the held-out stream
(disjoint from training) uses noise seed `--seed + i`. Torch-free. For a layout-grounded bundle three stages
are measured: the layout stage alone (relation accuracy of its tracks by the relation rules, on the first draw
and with the relation check, how often the check redrew, diversity across seeds), the video given the true
tracks at `--true-steps` (the UNet's ceiling), and end to end at each of `--steps`. A guidance-distilled
student is sampled as its manifest allows (DDIM, its distilled step counts, guidance in its range);
`--compare` measures a second bundle (its teacher) on the same graphs and seeds and tables the end-to-end rows
side by side. `--geometry-rows` replaces the end-to-end rows of a grounded bundle with rows that also count
the layouts' overlap frames (one box covering at least a quarter of another), how often the later object (on
top by the world's rule) is drawn whole in them, and a row per step count with object 0's true track pinned
(its pixels inside its box, the drawn objects clear of it), for each `--layout-variant`: the bundle's own
layout check, or `unchecked` (8 candidates a round and no geometric constraints: the check before the data's
geometry). The geometry rows also judge each object's shape from its pixels alone
(`sg2v.quality.shape_by_fill`: fill of its box and vertical centroid against the world's drawing), strictly,
as the nearest shape, and in its layout box. `--occlusion-scenes N` samples N two-object scenes with both
tracks pinned, the later object moving onto the earlier, at each step count, and tables how often the later
object is drawn whole where the boxes overlap (the world's renders: always). Prints each row as it finishes,
then the markdown tables.

    python bench/quality.py --bundle models/demo --steps 1 2 4 --compare models/demo-teacher \
        --compare-steps 8 --n 100 --seed 4242 --geometry-rows --layout-variant unchecked bundle \
        --no-layout-stage --true-steps
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
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="sampler step counts (None: 4 8 25, or a guidance-distilled student's first three "
                        "distilled step counts)")
    p.add_argument("--seed", type=int, default=0, help="held-out stream seed; graph i uses noise seed + i")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance weight of every bundle measured (None: each bundle's own default)")
    p.add_argument("--backend", default="ort", choices=list(BACKENDS),
                   help="runtime backend")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (None: one per core)")
    p.add_argument("--batch", type=int, default=None,
                   help="most videos per generate call (None: the bundle's max_batch)")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--table", default=None, help="write the markdown table here")
    p.add_argument("--sheet", default=None,
                   help="contact sheet PNG of the first 8 videos at the middle step count")
    p.add_argument("--true-steps", type=int, nargs="*", default=None,
                   help="grounded bundles: sampler steps of the true-tracks rows (none: skip them; None: 8, "
                        "or a student's default steps)")
    p.add_argument("--no-layout-stage", action="store_true",
                   help="grounded bundles: skip the layout-stage row")
    p.add_argument("--layout-tries", type=int, default=None,
                   help="grounded bundles: most layouts drawn per graph (None: the bundle's)")
    p.add_argument("--compare", default=None, metavar="BUNDLE",
                   help="a second bundle (e.g. the teacher of a student) measured the same way on the same "
                        "graphs and seeds; its end-to-end rows are tabled beside the first's")
    p.add_argument("--compare-steps", type=int, nargs="+", default=None,
                   help="step counts of the --compare bundle (None: as for --steps)")
    p.add_argument("--geometry-rows", action="store_true",
                   help="grounded bundles: end-to-end rows with overlap frames, occlusion and a pinned-track "
                        "row instead of the plain end-to-end rows, for each --layout-variant")
    p.add_argument("--layout-variant", nargs="+", default=["bundle"], choices=list(LAYOUT_VARIANTS),
                   help="layout checks the --geometry-rows measure: the bundle's own, or unchecked (8 a "
                        "round, no geometric constraints)")
    p.add_argument("--layout-timing", type=int, default=None, metavar="REPEATS",
                   help="grounded bundles: only time the layout stage alone for each --layout-variant, "
                        "interleaved REPEATS times (ms per graph in batches and one graph at a time, with "
                        "relations, constraints and overlap frames), and print that table")
    p.add_argument("--occlusion-scenes", type=int, default=0, metavar="N",
                   help="grounded bundles: also sample N two-object scenes with both tracks pinned, the "
                        "later object moving onto the earlier one, and table how often the later object (on "
                        "top by the world's rule) is drawn whole where the boxes overlap, at each step count")
    args = p.parse_args(argv)
    if args.layout_timing is not None:
        from sg2v.runtime import Pipeline

        pipe = Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
        print(layout_timing_table(pipe, args.n, args.seed, args.layout_timing, args.layout_variant))
        pipe.close()
        return 0
    steps = [*(args.steps or []), *(args.compare_steps or []), *(args.true_steps or [])]
    if (args.n < 1 or any(s < 1 for s in steps) or (args.batch is not None and args.batch < 1)
            or args.occlusion_scenes < 0):
        p.error("--n, --steps, --compare-steps, --true-steps and --batch must be positive, "
                "--occlusion-scenes >= 0")
    if args.compare_steps is not None and args.compare is None:
        p.error("--compare-steps sets the steps of the --compare bundle; add --compare BUNDLE")

    from sg2v.errors import Sg2vError
    from sg2v.io import atomic_write_text

    try:
        first = measure_bundle(args, args.bundle, args.steps)
        second = measure_bundle(args, args.compare, args.compare_steps) if args.compare else None
    except Sg2vError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 1
    table = first["table"]
    if second is not None:
        side = [] if args.geometry_rows else ["", "End to end, side by side:", "",
                                              compare_markdown([first, second])]
        table = "\n".join([f"{first['title']}:", "", table, "", f"{second['title']}:", "", second["table"],
                           *side])
    print(table)
    if args.json:
        keys = ("bundle", "bundle_files", "rows", "true_layout_rows", "layout_stage", "occlusion_rows")
        meta = {key: first[key] for key in keys}
        if second is not None:
            meta["compare"] = {key: second[key] for key in keys}
        atomic_write_text(Path(args.json), json.dumps(meta, indent=2) + "\n")
    if args.table:
        atomic_write_text(Path(args.table), table + "\n")
    if args.sheet:
        from sg2v.video import write_contact_sheet

        videos = first["videos"]
        mid = sorted(videos)[len(videos) // 2]
        shown = videos[mid][:8]  # (k, F, H, W, 3): one row per video
        k, f, h, w, c = shown.shape
        write_contact_sheet(Path(args.sheet), shown.reshape(k * f, h, w, c), cols=f)
    return 0


def default_steps(student: dict | None) -> list[int]:
    """4, 8 and 25 steps, or a guidance-distilled student's first three distilled step counts."""
    from sg2v.kinds import guidance_for

    return guidance_for(student).step_counts([4, 8, 25])


def measure_bundle(args: argparse.Namespace, path: str, steps: list[int] | None) -> dict:
    """The three-stage quality of one bundle (layout stage, true tracks, end to end), rows printed as they
    finish; a student's step counts and guidance are checked before anything is sampled."""
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(path, backend=args.backend, threads=args.threads)
    guidance = pipe.bundle.guidance
    steps = list(steps or guidance.step_counts([4, 8, 25]))
    true_steps = args.true_steps
    if true_steps is None:
        true_steps = [guidance.reference_steps(8, int(pipe.bundle.sampler_defaults["steps"]))]
    for s in dict.fromkeys([*steps, *true_steps]):  # a student refuses what it was not distilled for
        pipe.generator.settings(steps=s, guidance=args.guidance)
    title = f"{path} ({guidance.description})"
    print(f"bundle {title} on {pipe.backend_name}: {args.n} held-out graphs, steps {steps}")
    measure = MEASURES[pipe.bundle.grounding.name]
    layout_row, true_rows, rows, videos, table = measure(pipe, args, steps, true_steps)
    occlusion = []
    if getattr(args, "occlusion_scenes", 0) and pipe.bundle.grounding.name == "layout-grounded":
        print(f"occlusion scenes: {args.occlusion_scenes} two-object scenes, both tracks pinned")
        occlusion = occlusion_rows(pipe, args.occlusion_scenes, steps, args.seed, args.guidance, args.batch)
        table += "\n\nOcclusion scenes (both tracks pinned, the later object moving onto the earlier):\n\n"
        table += format_occlusion_markdown(occlusion)
    pipe.close()
    return {"bundle": os.fspath(path), "bundle_files": pipe.bundle.manifest["files"], "rows": rows,
            "true_layout_rows": true_rows, "layout_stage": layout_row, "occlusion_rows": occlusion,
            "table": table, "videos": videos,
            "title": title, "student": guidance.entry is not None, "kind": guidance.short,
            "name": pipe.bundle.config.name}


def _measure_ungrounded(pipe, args: argparse.Namespace, steps: list[int], true_steps: list[int]) -> tuple:
    """End-to-end rows only (no layout stage, no true tracks)."""
    from sg2v.quality import evaluate_pipeline, format_markdown, format_table

    print("")
    print(format_table([]))
    rows, videos = evaluate_pipeline(pipe, n=args.n, steps=steps, seed=args.seed, guidance=args.guidance,
                                     log=print, max_batch=args.batch)
    return None, [], rows, videos, format_markdown(rows)


def _measure_grounded(pipe, args: argparse.Namespace, steps: list[int], true_steps: list[int]) -> tuple:
    """The layout stage alone, the video given the true tracks, then end to end (or the geometry rows)."""
    from sg2v.quality import evaluate_pipeline, format_markdown, format_table

    layout_row = None
    if not args.no_layout_stage:
        layout_row = layout_stage_row(pipe, args.n, args.seed, args.layout_tries, args.batch)
        print(format_layout_markdown([layout_row]))
    true_rows = []
    if true_steps:
        print("video given the true tracks:")
        print(format_table([]))
        true_rows, _ = evaluate_pipeline(pipe, n=args.n, steps=true_steps, seed=args.seed,
                                         guidance=args.guidance, log=print, max_batch=args.batch,
                                         true_layouts=True)
    if getattr(args, "geometry_rows", False):
        rows, videos = [], {}
        for variant in args.layout_variant:
            got, vids = geometry_rows(pipe, args.n, steps, args.seed, args.guidance, args.batch, variant)
            rows += got
            videos.update(vids)
        table = format_geometry_markdown(rows)
    else:
        print("end to end:")
        print(format_table([]))
        rows, videos = evaluate_pipeline(pipe, n=args.n, steps=steps, seed=args.seed, guidance=args.guidance,
                                         log=print, max_batch=args.batch)
        table = format_markdown(rows)
    parts = []
    if layout_row is not None:
        parts += ["Layout stage alone (relation rules on the sampled tracks):", "",
                  format_layout_markdown([layout_row]), ""]
    if true_rows:
        parts += ["Video given the true tracks:", "", format_markdown(true_rows), ""]
    return layout_row, true_rows, rows, videos, "\n".join(parts + ["End to end:", "", table])


MEASURES = {"ungrounded": _measure_ungrounded, "layout-grounded": _measure_grounded}  # by Grounding.name


LAYOUT_VARIANTS = {"bundle": {}, "unchecked": {"per_round": 8, "geometry": None},
                   "bundle-6-steps": {"steps": 6}, "bundle-1-per-round": {"per_round": 1},
                   "bundle-16-tries": {"tries": 16}, "bundle-32-tries": {"tries": 32},
                   "bundle-64-tries": {"tries": 64}}
COVER = 0.25  # an overlap frame: one box covers at least this fraction of another
WHOLE = 0.9  # the later object is drawn whole where it shows this fraction of its unoverlapped pixels


def geometry_rows(pipe, n: int, steps: list[int], seed: int, guidance: float | None, max_batch: int | None,
                  variant: str) -> tuple[list[dict], dict[int, object]]:
    """End-to-end rows of a grounded bundle with its layout check set to `variant`: the oracle's metrics,
    overlap frames and occlusion, seconds per video; then the same graphs (those with two or more objects)
    with object 0's true track pinned: its pixels inside its box, drawn objects clear of it."""
    import time

    import numpy as np

    from sg2v.quality import heldout_graphs, heldout_tracks, pixel_shape_accuracy, score_videos

    cfg = pipe.bundle.config
    graphs = heldout_graphs(cfg, n, seed)
    seeds = [seed + i for i in range(n)]
    truth = heldout_tracks(cfg, n, seed)
    base = dict(pipe.generator.layout)
    pipe.generator.layout = {**base, **LAYOUT_VARIANTS[variant]}
    rows, videos = [], {}
    try:
        for pinned in (False, True):
            idx = [i for i in range(n) if not pinned or len(graphs[i]["objects"]) > 1]
            gs, ss = [graphs[i] for i in idx], [seeds[i] for i in idx]
            lay = [{0: truth[i][0]} for i in idx] if pinned else None
            for s in steps:
                t0 = time.perf_counter()
                gen = pipe.run(gs, ss, steps=int(s), guidance=guidance, max_batch=max_batch, layouts=lay)
                secs = (time.perf_counter() - t0) / len(gs)
                row = score_videos(gen.frames, gs)
                tracks = [r.tracks for r in gen.layouts]
                row.update(layout_geometry_metrics(gen.frames, gs, tracks, [0] if pinned else []))
                row.update(pixel_shape=pixel_shape_accuracy(gen.frames, gs),
                           pixel_shape_nearest=pixel_shape_accuracy(gen.frames, gs, within=False),
                           pixel_shape_layout_box=pixel_shape_accuracy(gen.frames, gs, tracks))
                row.update(n=len(gs), steps=int(s), seed=int(seed), variant=variant, pinned=pinned,
                           seconds_per_video=secs, backend=pipe.backend_name)
                rows.append(row)
                if not pinned:
                    videos[int(s)] = np.asarray(gen.frames)
                print(format_geometry_markdown([row]).splitlines()[-1], flush=True)
    finally:
        pipe.generator.layout = base
    return rows, videos


def occlusion_scenes(frames: int, height: int, width: int, n: int, seed: int) -> tuple[list[dict], list]:
    """`n` two-object graphs (distinct colors, shapes at random, no relation) and their `Motion`s: object 0
    still, object 1 moving in a straight line from a box apart from it onto it (each side off by at most a
    third of object 0's side), both inside the canvas; drawn by the world, object 1 lies on top."""
    import numpy as np

    from sg2v.shapes.world import COLOR_NAMES, SHAPES, Motion, size_range

    rng = np.random.default_rng(seed)
    lo, hi = size_range(height, width)
    graphs, motions = [], []
    for _ in range(n):
        colors = rng.choice(len(COLOR_NAMES), 2, replace=False)
        names = [f"{COLOR_NAMES[c]} {SHAPES[rng.integers(len(SHAPES))]}" for c in colors]
        sizes = rng.integers(lo, hi + 1, size=2)
        room = np.array([[width, height]] * 2, np.float64) - sizes[:, None]  # (2, 2) top-left limits
        still = np.rint(rng.random(2) * room[0])
        end = np.clip(still + rng.uniform(-1 / 3, 1 / 3, 2) * sizes[0], 0, room[1])
        while True:  # a start whose box is apart from object 0's
            start = np.rint(rng.random(2) * room[1])
            if (np.abs(start - still + (sizes[1] - sizes[0]) / 2) >= (sizes[0] + sizes[1]) / 2).any():
                break
        graphs.append({"objects": names, "relationships": []})
        motions.append(Motion(sizes, np.stack([still, start]), np.stack([still, end])))
    return graphs, motions


def occlusion_rows(pipe, n: int, steps: list[int], seed: int, guidance: float | None,
                   max_batch: int | None) -> list[dict]:
    """Per step count, `occlusion_scenes` sampled with both tracks pinned (scene i: seed + i): the overlap
    frames' occlusion by `layout_geometry_metrics` (the later object whole where it is on top), the oracle's
    presence, and both figures on the world's own renders of the scenes."""
    import numpy as np

    from sg2v.quality import score_videos
    from sg2v.shapes.world import ShapesWorld

    d = pipe.bundle.config.data
    graphs, motions = occlusion_scenes(d.frames, d.height, d.width, n, seed)
    scale = np.array([d.width, d.height, d.width, d.height], np.float32)
    tracks = [m.boxes(d.frames) / scale for m in motions]  # (2, F, 4) each
    world = ShapesWorld(d.frames, d.height, d.width, max_objects=max(2, d.max_objects))
    drawn = [world.render(g, m).video for g, m in zip(graphs, motions)]
    ref = layout_geometry_metrics(drawn, graphs, tracks, [])
    ref_presence = score_videos(drawn, graphs)["presence"]
    seeds = [seed + i for i in range(n)]
    rows = []
    for s in steps:
        gen = pipe.run(graphs, seeds, steps=int(s), guidance=guidance, max_batch=max_batch,
                       layouts=[dict(enumerate(t)) for t in tracks])
        row = layout_geometry_metrics(gen.frames, graphs, tracks, [])
        row.update(presence=score_videos(gen.frames, graphs)["presence"], world_presence=ref_presence,
                   world_whole=ref["later_whole"],
                   n=n, steps=int(s), seed=int(seed), backend=pipe.backend_name)
        rows.append(row)
        print(format_occlusion_markdown([row]).splitlines()[-1], flush=True)
    return rows


def format_occlusion_markdown(rows: list[dict]) -> str:
    """The --occlusion-scenes table: steps, scenes, overlap frames, the later object whole (and the world)."""
    lines = ["| steps | scenes | presence (the world's renders) | overlap frames | later object whole | "
             "the world's renders | the same test where it overlaps nothing (noise) |", "|" + " --- |" * 7]

    def share(v, pairs):
        return "n/a" if v is None else f"{100 * v:.1f}% of {pairs}"

    for r in rows:
        lines.append(f"| {r['steps']} | {r['n']} | {100 * r['presence']:.1f}% "
                     f"({100 * r['world_presence']:.1f}%) | {r['overlap_frames']} | "
                     f"{share(r['later_whole'], r['occluded_pairs'])} | "
                     f"{share(r['world_whole'], r['occluded_pairs'])} | "
                     f"{share(r.get('later_whole_alone'), r.get('alone_frames', 'n/a'))} |")
    return "\n".join(lines)


def layout_timing_table(pipe, n: int, seed: int, repeats: int, variants: list[str]) -> str:
    """The layout stage alone on `n` held-out graphs for each variant, interleaved `repeats` times: the
    fastest ms per graph in batches (the bundle's max_batch) and one graph at a time, and what the kept
    layouts hold (relations, every constraint of the bundle's geometry, overlap frames), mean draws."""
    import time

    import numpy as np

    from sg2v.geometry import check_geometry, from_entry, pair_overlaps
    from sg2v.graph import pad_graphs
    from sg2v.quality import heldout_graphs

    cfg = pipe.bundle.config
    parsed = [pipe.parse(g) for g in heldout_graphs(cfg, n, seed)]
    feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
    seeds = [seed + i for i in range(n)]
    base = dict(pipe.generator.layout)
    geometry = from_entry(base["geometry"]) if base.get("geometry") else None
    batched = {v: [] for v in variants}
    alone = {v: [] for v in variants}
    kept = {}
    try:
        for _ in range(repeats):
            for v in variants:
                pipe.generator.layout = {**base, **LAYOUT_VARIANTS[v]}
                t0 = time.perf_counter()
                kept[v] = pipe.generator.draw_layouts(feeds, seeds, parsed)
                batched[v].append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                for i in range(n):
                    pipe.generator.draw_layouts({k: a[i:i + 1] for k, a in feeds.items()}, seeds[i:i + 1],
                                                parsed[i:i + 1])
                alone[v].append((time.perf_counter() - t0) / n)
    finally:
        pipe.generator.layout = base
    cols = ("layout check", "ms/graph, batched", "ms/graph, one at a time", "relations held",
            "all constraints held", "overlap frames", "mean draws")
    lines = [f"{pipe.bundle.path}: {n} held-out graphs (seed {seed}), {pipe.backend_name}, fastest of "
             f"{repeats}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for v in variants:
        r = kept[v]
        rel = [c.holds for x in r for c in x.relations if c.holds is not None]
        held = np.mean([all(c.holds for c in check_geometry(x.tracks, geometry)) for x in r])
        over = sum(int((pair_overlaps(x.tracks).max(axis=(0, 1)) >= COVER).sum()) for x in r)
        share = f"{100 * np.mean(rel):.1f}% of {len(rel)}" if rel else "n/a"
        lines.append(f"| {v} | {1000 * min(batched[v]):.1f} | {1000 * min(alone[v]):.1f} | {share} | "
                     f"{100 * held:.1f}% | {over} | {np.mean([x.draws for x in r]):.2f} |")
    return "\n".join(lines)


def _occlusion_counts(ov, counts, px, names) -> tuple[int, int, int, int]:
    """Over one video's overlap frames (pair i < j, j drawn on top): how many, and in how many j shows
    >= WHOLE of its reference pixel count (its median where its box overlaps none, else its shape's); and
    the same test as a noise control on those objects j in their own frames where their box overlaps none:
    how many such frames, and in how many it passes."""
    import numpy as np

    from sg2v.shapes.world import shape_template

    pairs = whole = alone_frames = alone_whole = 0
    for j in range(1, len(names)):  # j is drawn after every i < j: on top of them
        covers = (ov[:j, j] >= COVER).sum(axis=0)  # (F,) how many earlier objects j lies on, per frame
        if not covers.any():
            continue
        alone = ov[j].max(axis=0) == 0  # (F,) frames where j's box overlaps none
        ref = float(np.median(counts[j, alone])) if alone.any() else None
        for fr in np.flatnonzero(covers):
            k = int(covers[fr])  # one per such pair
            if ref is None:
                x0, y0, x1, y1 = px[j, fr]
                r = float(shape_template(names[j][1], max(y1 - y0, 1), max(x1 - x0, 1)).sum())
            else:
                r = ref
            pairs += k
            whole += k * bool(counts[j, fr] >= WHOLE * r)
        if ref is not None:
            alone_frames += int(alone.sum())
            alone_whole += int((counts[j, alone] >= WHOLE * ref).sum())
    return pairs, whole, alone_frames, alone_whole


def layout_geometry_metrics(videos, graphs, tracks, pinned: list[int]) -> dict:
    """Overlap frames of the layouts (one box covering >= COVER of another), the share of those pairs in
    which the later object shows >= WHOLE of its pixel count in the frames where its box overlaps none (the
    median; without such frames, its shape's at its box size): occlusion drawn by the world's rule; the same
    test on those objects in their own frames that overlap nothing (`later_whole_alone`: the noise that bounds
    the occlusion figure from above); and with
    `pinned` objects, the share of their frames with >= 90% of their pixels inside their box, and the frames
    in which a drawn object overlaps a pinned one at all."""
    import numpy as np

    from sg2v.geometry import pair_overlaps
    from sg2v.shapes.oracle import color_labels
    from sg2v.shapes.world import COLOR_NAMES, split_name

    over_frames = whole = pairs = alone_frames = alone_whole = 0
    inside = seen = clear_breaks = 0
    for video, graph, t in zip(videos, graphs, tracks):
        f, h, w, _ = video.shape
        lab = color_labels(np.asarray(video))  # (F, H, W)
        names = [split_name(nm) for nm in graph["objects"]]
        ov = pair_overlaps(t)  # (n, n, F)
        px = np.rint(np.asarray(t, np.float64) * [w, h, w, h]).astype(int)  # (n, F, 4)
        over_frames += int((ov >= COVER).any(axis=(0, 1)).sum())
        n = len(names)
        counts = np.stack([(lab == COLOR_NAMES.index(c)).sum(axis=(1, 2)) for c, _ in names])  # (n, F)
        n_pairs, n_whole, n_alone, n_alone_whole = _occlusion_counts(ov, counts, px, names)
        pairs += n_pairs
        whole += n_whole
        alone_frames += n_alone
        alone_whole += n_alone_whole
        for k in pinned:
            color = COLOR_NAMES.index(names[k][0])
            for fr in range(f):
                ys, xs = np.nonzero(lab[fr] == color)
                if len(ys):
                    x0, y0, x1, y1 = px[k, fr]
                    ok = (xs >= x0 - 1) & (xs < x1 + 1) & (ys >= y0 - 1) & (ys < y1 + 1)
                    inside += bool(ok.mean() >= 0.9)
                seen += 1
            others = [j for j in range(n) if j not in pinned]
            if others:
                clear_breaks += int((ov[k, others] > 0).any(axis=0).sum())
    out = {"overlap_frames": over_frames, "occluded_pairs": pairs,
           "later_whole": whole / pairs if pairs else None,
           "later_whole_alone": alone_whole / alone_frames if alone_frames else None,
           "alone_frames": alone_frames}
    if pinned:
        out.update(pinned_in_box=inside / seen if seen else None, pinned_overlap_frames=clear_breaks)
    return out


def format_geometry_markdown(rows: list[dict]) -> str:
    """The --geometry-rows table: variant, pinned, steps, the oracle's metrics, overlap, occlusion, time."""
    cols = ("layout check", "pinned", "steps", "presence", "relations", "shape", "shape by fill",
            "nearest by fill", "shape by fill, layout box", "overlap frames", "later object whole",
            "pinned in box", "drawn over pinned (frames)", "s/video")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    for r in rows:
        whole = "n/a" if r["later_whole"] is None else f"{pct(r['later_whole'])} of {r['occluded_pairs']}"
        lines.append("| " + " | ".join([
            r["variant"], "object 0" if r["pinned"] else "none", str(r["steps"]), pct(r["presence"]),
            pct(r["relation_accuracy"]), pct(r["shape_accuracy"]), pct(r.get("pixel_shape")),
            pct(r.get("pixel_shape_nearest")), pct(r.get("pixel_shape_layout_box")), str(r["overlap_frames"]),
            whole,
            pct(r.get("pinned_in_box")), str(r.get("pinned_overlap_frames", "n/a")),
            f"{r['seconds_per_video']:.3f}"]) + " |")
    return "\n".join(lines)


def compare_markdown(results: list[dict]) -> str:
    """The end-to-end rows of several bundles in one table (model name, kind, guidance, steps, then the
    metrics)."""
    from sg2v.quality import format_markdown

    lines = []
    for i, r in enumerate(results):
        kind = r["kind"]  # Guidance.short
        body = format_markdown(r["rows"]).splitlines()
        if i == 0:
            lines += ["| model | kind | guidance " + body[0], "| --- | --- | --- " + body[1]]
        for row, line in zip(r["rows"], body[2:]):
            lines.append(f"| {r['name']} | {kind} | {row['guidance']:g} {line}")
    return "\n".join(lines)


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
