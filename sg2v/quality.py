"""Quality by the shapes oracle, torch-free: held-out graphs, scores of sampled videos, and a bundle's table.

`evaluate_pipeline` samples videos for the shapes world's held-out graphs through a runtime `Pipeline` (the
shipped artifact: ONNX Runtime, TensorRT or the torch reference) and scores them with the oracle; the torch
training-time evaluation (`sg2v.training.evaluate`) scores the same graphs with the same per-graph noise
seeds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.config import ModelConfig
from sg2v.shapes import COLOR_NAMES, SHAPES, ShapesDataset, score_batch, score_video
from sg2v.shapes.world import graph_parts, split_name

METRIC_KEYS = ("presence", "false_presence", "relation_accuracy", "shape_accuracy", "stability")


def heldout_graphs(cfg: ModelConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` graphs of the shapes world's held-out split (disjoint from the training stream)."""
    d = cfg.data
    ds = ShapesDataset(seed=seed, length=n, split="heldout", frames=d.frames, height=d.height, width=d.width,
                       max_objects=d.max_objects, max_relationships=d.max_relationships)
    return [ds.scene(i)[0] for i in range(n)]


def heldout_tracks(cfg: ModelConfig, n: int, seed: int = 0) -> list[dict[int, NDArray[Any]]]:
    """The true tracks of the first `n` held-out graphs: object index -> (F, 4) boxes in [0, 1]."""
    d = cfg.data
    ds = ShapesDataset(seed=seed, length=n, split="heldout", frames=d.frames, height=d.height, width=d.width,
                       max_objects=d.max_objects, max_relationships=d.max_relationships)
    scale = np.array([d.width, d.height, d.width, d.height], dtype=np.float32)
    return [dict(enumerate(ds.scene(i)[1].boxes(d.frames) / scale)) for i in range(n)]


LAYOUT_KEYS = ("layout_relation_accuracy", "layout_relation_accuracy_first_draw", "layout_satisfied",
               "layout_satisfied_first_draw", "layout_redrawn", "layout_mean_draws", "layout_diversity")


def layout_quality(generator: Any, graphs: Sequence[Any], feeds: dict[str, NDArray[Any]],
                   seeds: Sequence[int], tries: int | None = None, diversity_graphs: int = 16,
                   diversity_seeds: int = 8, max_batch: int | None = None) -> dict[str, Any]:
    """The layout stage alone on parsed `graphs`: relation accuracy of its tracks by the relation rules with
    the check (up to `tries` draws) and without it (the first draw), how often the check redrew (the first
    draw failed a rule), mean draws to the kept layout, and diversity: the mean standard deviation, in frame
    widths, of each object's mean box centre across `diversity_seeds` seeds, over the first
    `diversity_graphs` graphs without relationships (where nothing pins the objects down)."""
    runs = {}
    for name, t in (("first_draw", 1), ("check", tries)):
        runs[name] = generator.draw_layouts(feeds, seeds, graphs, layout_tries=t, max_batch=max_batch)

    def rel_acc(results: Sequence[Any]) -> float | None:
        checks = [c for r in results for c in r.relations if c.holds is not None]
        return sum(c.holds for c in checks) / len(checks) if checks else None

    checked = [i for i, r in enumerate(runs["check"]) if any(c.holds is not None for c in r.relations)]
    free = [i for i, g in enumerate(graphs) if not g.relationships][:diversity_graphs]
    spread = []
    if free:
        rep = np.repeat(np.asarray(free), diversity_seeds)
        sub = {k: v[rep] for k, v in feeds.items()}
        dseeds = [int(seeds[i]) * diversity_seeds + k for i in free for k in range(diversity_seeds)]
        drawn = generator.draw_layouts(sub, dseeds, [graphs[i] for i in rep], max_batch=max_batch)
        for j in range(len(free)):
            tracks = np.stack([r.tracks for r in drawn[j * diversity_seeds:(j + 1) * diversity_seeds]])
            centres = np.stack([(tracks[..., 0] + tracks[..., 2]) / 2, (tracks[..., 1] + tracks[..., 3]) / 2],
                               -1).mean(2)  # (seeds, n, 2): each object's mean centre
            spread.append(float(centres.std(axis=0).mean()))
    kept = runs["check"]
    return {
        "layout_relation_accuracy": rel_acc(kept),
        "layout_relation_accuracy_first_draw": rel_acc(runs["first_draw"]),
        "layout_satisfied": float(np.mean([kept[i].satisfied for i in checked])) if checked else None,
        "layout_satisfied_first_draw": (float(np.mean([runs["first_draw"][i].satisfied for i in checked]))
                                        if checked else None),
        "layout_redrawn": float(np.mean([kept[i].draws > 1 for i in checked])) if checked else None,
        "layout_mean_draws": float(np.mean([kept[i].draws for i in checked])) if checked else None,
        "layout_diversity": float(np.mean(spread)) if spread else None,
        "layout_contradictory": sum(bool(r.contradictions) for r in kept),
        "n": len(graphs),
    }


def false_presence(videos: Sequence[NDArray[Any]], graphs: Sequence[Any]) -> float:
    """Fraction of palette colors absent from a video's graph that the oracle nevertheless finds present.

    Presence counts a color only where it forms one object-sized blob, so noise mostly scores none; asking the
    same oracle about the colors the graph does not have catches the rest: objects drawn that were not asked
    for (a clean, faithful video shows none).
    """
    hits = total = 0
    for video, graph in zip(videos, graphs):
        used = {split_name(name)[0] for name in graph_parts(graph)[0]}
        absent = [c for c in COLOR_NAMES if c not in used]
        if not absent:
            continue
        report = score_video(video, {"objects": [f"{c} {SHAPES[0]}" for c in absent], "relationships": []})
        hits += sum(o.present for o in report.objects)
        total += len(absent)
    return hits / total if total else 0.0


def score_videos(videos: Sequence[NDArray[Any]], graphs: Sequence[Any]) -> dict[str, Any]:
    """The oracle's batch metrics (`METRIC_KEYS`) of videos (F, H, W, 3) uint8 against their graphs."""
    report = score_batch(list(videos), graphs)
    out: dict[str, Any] = {k: getattr(report, k) for k in METRIC_KEYS if k != "false_presence"}
    out["false_presence"] = false_presence(videos, graphs)
    return out


def evaluate_pipeline(pipe: Any, n: int = 200, steps: Sequence[int] = (4, 8, 25), seed: int = 0,
                      guidance: float | None = None, log: Callable[[str], None] | None = None,
                      max_batch: int | None = None, true_layouts: bool = False
                      ) -> tuple[list[dict[str, Any]], dict[int, NDArray[Any]]]:
    """Rows of oracle metrics, one per step count, for `n` held-out graphs sampled through `pipe`.

    Graph i uses noise seed `seed + i` (as `sg2v.training.evaluate` does); the graphs go through
    `pipe.generate` in batches of at most `max_batch` (and the bundle's limit). `true_layouts` gives a
    grounded model every object's true track (the UNet's ceiling) instead of drawing them. Returns (rows,
    videos per step count).
    """
    cfg = pipe.bundle.config
    graphs = heldout_graphs(cfg, n, seed)
    seeds = [seed + i for i in range(n)]
    layouts = heldout_tracks(cfg, n, seed) if true_layouts else None
    rows, videos = [], {}
    for s in steps:
        settings = pipe.generator.settings(steps=int(s), guidance=guidance)
        t0 = time.perf_counter()
        vids = pipe.generate(graphs, seeds, steps=int(s), guidance=guidance, max_batch=max_batch,
                             layouts=layouts)  # (n, F, H, W, 3) uint8
        row = score_videos(vids, graphs)
        row.update(n=n, steps=int(s), seed=int(seed), backend=pipe.backend_name, guidance=settings.guidance,
                   sampler=settings.sampler, seconds_per_video=(time.perf_counter() - t0) / n,
                   layout="true" if true_layouts else "sampled")
        rows.append(row)
        videos[int(s)] = vids
        if log is not None:
            log(format_table([row]).splitlines()[-1] + f"   ({row['seconds_per_video']:.2f} s/video)")
    return rows, videos


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of evaluation rows (one per sampler step count)."""
    cols = ("steps", *METRIC_KEYS)
    lines = ["  ".join(f"{c:>17}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:>17}" if isinstance(v, int) else f"{'n/a' if v is None else f'{v:.3f}':>17}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The quality table as markdown: steps, presence, relation accuracy, shape accuracy, stability, ..."""
    cols = ("steps", "presence", "relation_accuracy", "shape_accuracy", "false_presence", "stability")
    lines = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = [str(r["steps"])] + ["n/a" if r.get(c) is None else f"{100 * r[c]:.1f}%" for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Shape judged from the pixels alone (fill of the box, vertical centroid), against the features of the shapes
# world's own drawing of each shape at the same box size: a check independent of the oracle's template IoU.
SHAPE_FILL_TOL = 0.08  # |fill - the drawn shape's fill|; drawn circles fill 0.75-0.81, triangles 0.58-0.63
SHAPE_CENTROID_TOL = 0.06  # |centroid y / h - the drawn shape's|; half the circle-to-triangle gap (~0.13)


def fill_features(mask: NDArray[Any], box: Sequence[int] | None = None) -> tuple[float, float] | None:
    """(fill, vertical centroid) of a bool mask (H, W) in a pixel box (x0, y0, x1, y1), x1/y1 exclusive
    (None: the mask's bounding box): the share of the box it covers and its pixels' mean y as a fraction of
    the box height from the top. None where the box holds no pixel."""
    if box is None:
        rows = np.flatnonzero(mask.any(1))
        cols = np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return None
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    ii = np.nonzero(crop)[0]
    if ii.size == 0 or x1 <= x0 or y1 <= y0:
        return None
    return ii.size / ((x1 - x0) * (y1 - y0)), float((ii + 0.5 + max(y0, 0) - y0).mean() / (y1 - y0))


def shape_by_fill(mask: NDArray[Any], box: Sequence[int] | None = None, within: bool = True) -> str | None:
    """The shape whose drawing by the shapes world at the box's size has the nearest fill and vertical
    centroid (distances in units of SHAPE_FILL_TOL and SHAPE_CENTROID_TOL), if `within` those tolerances of
    it (else None); None for an empty box."""
    from sg2v.shapes.world import shape_template

    feats = fill_features(mask, box)
    if feats is None:
        return None
    if box is None:
        rows = np.flatnonzero(mask.any(1))
        cols = np.flatnonzero(mask.any(0))
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    else:
        h, w = int(box[3]) - int(box[1]), int(box[2]) - int(box[0])
    best, best_d = None, 1.0 if within else float("inf")
    for sh in SHAPES:
        t = shape_template(sh, h, w)
        want = fill_features(t)
        assert want is not None  # a template is never empty
        d = max(abs(feats[0] - want[0]) / SHAPE_FILL_TOL, abs(feats[1] - want[1]) / SHAPE_CENTROID_TOL)
        if d <= best_d:
            best, best_d = sh, d
    return best


def pixel_shape_accuracy(videos: Sequence[NDArray[Any]], graphs: Sequence[Any],
                         boxes: Sequence[Any] | None = None, within: bool = True) -> float | None:
    """Share of the oracle's present objects whose shape by `shape_by_fill`, majority over the frames the
    oracle sees them, is the asked-for one. The mask is the oracle's (the object's color near its median);
    the box is the mask's own bounding box, or with `boxes` (per video (n, F, 4) in [0, 1]) the object's
    box in that frame; `within` as for `shape_by_fill`. None when no object is present."""
    from sg2v.shapes.oracle import WINDOW_FRAC, _object_window, color_labels

    right = judged = 0
    for k, (video, graph) in enumerate(zip(videos, graphs)):
        v = np.asarray(video)
        f, h, w, _ = v.shape
        report = score_video(v, graph)
        lab = color_labels(v)
        for i, obj in enumerate(report.objects):
            if not obj.present:
                continue
            color, shape = split_name(obj.name)
            m = _object_window(lab == COLOR_NAMES.index(color), WINDOW_FRAC)  # (F, H, W)
            seen = np.flatnonzero(~np.isnan(obj.centroids[:, 0]))
            votes: Counter[str | None] = Counter()
            for t in seen:
                box = None
                if boxes is not None:
                    box = np.rint(np.asarray(boxes[k][i][t], np.float64) * [w, h, w, h]).astype(int)
                votes[shape_by_fill(m[t], box, within)] += 1
            judged += 1
            right += bool(votes) and votes.most_common(1)[0][0] == shape
    return right / judged if judged else None
