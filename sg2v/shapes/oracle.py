"""The shapes-world oracle (specs/shapes-world.md): read objects and relations back out of any video.

Each pixel is given to the nearest palette color within `color_tol` (RGB Euclidean distance; the palette's
closest pair, blue/cyan, is 130 apart). An object is seen in a frame where its color covers at least
`20 * H * W / 64^2` pixels inside one object-sized window, and present where it is seen in at least 80% of
frames. The window (side 0.4 x the canvas side, twice the largest object, centred on the per-axis median
of the color's pixels) must also hold at least half of that color's pixels: scattered pixels of the right
color, as an untrained model's noise has, are no object (the spec finds objects by color; this makes
"finds" mean one blob). Centroids are taken over the windowed pixels of seen frames; relations are judged
by `sg2v.shapes.world.relation_score`, the rules the generator uses, and a relation with an absent object
fails. Shape is classified per seen frame by the best IoU between the mask
cropped to its bounding box and each shape's template rasterised at that box size (exact for the generator's
drawings at any canvas, and graceful for noisy ones), then by majority over frames.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.shapes.world import (
    COLOR_NAMES,
    COLOR_TABLE,
    PREDICATES,
    SHAPES,
    graph_parts,
    relation_score,
    shape_template,
    split_name,
)
from sg2v.video import VideoError, check_frames

COLOR_TOL = 60.0  # RGB distance to the palette color
PRESENT_PIXELS_64 = 20  # pixels an object must cover in a frame at 64 x 64 (scaled with canvas area)
MIN_PIXELS = 4  # floor on small canvases: the smallest drawn object (3 px box) covers at least this many
PRESENT_FRAMES = 0.8  # fraction of frames an object must be seen in to be present
WINDOW_FRAC = 0.4  # object window side / canvas side: twice the largest object (20% of the side)
CONCENTRATION = 0.5  # fraction of a color's pixels the window must hold for that color to be one object
AREA_CHANGE = 0.3  # stability: largest relative area change between consecutive frames
ACCEL_TOL = 1.5  # smoothness: largest centroid second difference (px) for constant velocity on a pixel grid


@dataclass
class ObjectReport:
    """What the oracle found for one graph object."""

    name: str
    present: bool
    seen_fraction: float  # frames in which it covers enough pixels
    shape: str | None  # majority shape over seen frames; None when never seen
    shape_ok: bool | None  # None when absent
    centroids: NDArray[Any] = field(repr=False)  # (F, 2) float64 (x, y), NaN where not seen
    areas: NDArray[Any] = field(repr=False)  # (F,) int64 pixel counts


@dataclass
class RelationReport:
    subject: int
    predicate: str
    object: int
    holds: bool
    slack: float | None  # relation_score (> 0 holds); None when an object is absent


@dataclass
class OracleReport:
    """Oracle verdict on one video against its graph; accuracies are None where nothing was there to judge."""

    objects: list[ObjectReport]
    relations: list[RelationReport]
    presence: float  # fraction of graph objects present
    shape_accuracy: float | None  # fraction of present objects whose shape is right
    relation_accuracy: float | None  # fraction of graph relationships that hold (absent object: fails)
    stability: float | None  # fraction of consecutive frame pairs without jumps, flicker or area changes
    smoothness: float | None  # fraction of frame triples whose present objects move at constant velocity
    stable_pairs: tuple[int, int] = (0, 0)  # (stable, total) consecutive frame pairs
    smooth_triples: tuple[int, int] = (0, 0)  # (smooth, total) consecutive frame triples

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for o in d["objects"]:
            o.pop("centroids")
            o.pop("areas")
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"presence {_pct(self.presence)}  shape {_pct(self.shape_accuracy)}  "
                 f"relations {_pct(self.relation_accuracy)}  stability {_pct(self.stability)}  "
                 f"smoothness {_pct(self.smoothness)}"]
        for i, o in enumerate(self.objects):
            if o.present:
                state = (f"present ({o.seen_fraction:.0%} of frames), looks like a {o.shape}"
                         f"{'' if o.shape_ok else ' (WRONG)'}")
            else:
                state = f"ABSENT (seen in {o.seen_fraction:.0%} of frames)"
            lines.append(f"  [{i}] {o.name}: {state}")
        for r in self.relations:
            s = self.objects[r.subject].name
            o_name = self.objects[r.object].name
            slack = "" if r.slack is None or math.isnan(r.slack) else f" (slack {r.slack:+.2f})"
            lines.append(f"  {s} {r.predicate} {o_name}: {'holds' if r.holds else 'FAILS'}{slack}")
        return "\n".join(lines)


@dataclass
class BatchReport:
    """Micro-averaged oracle scores over many videos (each object / relation / frame pair counts once)."""

    videos: int
    objects: int
    relations: int
    presence: float
    shape_accuracy: float | None
    relation_accuracy: float | None
    stability: float | None
    smoothness: float | None
    relation_accuracy_by_predicate: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        per = "  ".join(f"{p}: {_pct(a)}" for p, a in self.relation_accuracy_by_predicate.items())
        return (f"{self.videos} videos, {self.objects} objects, {self.relations} relations: presence "
                f"{_pct(self.presence)}  shape {_pct(self.shape_accuracy)}  relations "
                f"{_pct(self.relation_accuracy)}  stability {_pct(self.stability)}  smoothness "
                f"{_pct(self.smoothness)}\n  by predicate: {per or 'n/a'}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def color_labels(video: NDArray[Any], color_tol: float = COLOR_TOL) -> NDArray[Any]:
    """Per-pixel palette index (nearest color within `color_tol`) or -1, (F, H, W) int8."""
    rgb = [video[..., ch].astype(np.int32) for ch in range(3)]  # 3 x (F, H, W)
    best = np.full(video.shape[:-1], int(color_tol ** 2), dtype=np.int32)  # (F, H, W): farther is no color
    lab = np.full(video.shape[:-1], -1, dtype=np.int8)
    for k, col in enumerate(COLOR_TABLE.astype(np.int32)):  # 7 colors: a loop over planes beats (N, 7, 3)
        d2 = (rgb[0] - col[0]) ** 2 + (rgb[1] - col[1]) ** 2 + (rgb[2] - col[2]) ** 2
        closer = d2 <= best
        best = np.where(closer, d2, best)
        lab[closer] = k
    return lab


def classify_shape(mask: NDArray[Any]) -> str | None:
    """Circle / square / triangle by best IoU with templates at the mask's bounding-box size (None: empty)."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # (h, w)
    h, w = crop.shape
    best, best_iou = None, -1.0
    for sh in SHAPES:
        t = shape_template(sh, h, w)
        iou = np.count_nonzero(crop & t) / max(int(np.count_nonzero(crop | t)), 1)
        if iou > best_iou:
            best, best_iou = sh, iou
    return best


def _median_index(counts: NDArray[Any]) -> NDArray[Any]:
    """Per row, the index where the cumulative count first reaches half the row's total: (F, N) -> (F,)."""
    c = np.cumsum(counts, axis=1)  # (F, N)
    half = c[:, -1:] / 2.0
    out: NDArray[Any] = np.argmax(c >= half, axis=1)  # (F,)
    return out


def _object_window(m: NDArray[Any], frac: float) -> NDArray[Any]:
    """The pixels of mask m (F, H, W) inside a square window of side frac x canvas around their median."""
    f, h, w = m.shape
    half = max(1, int(math.ceil(frac * max(h, w) / 2)))
    my = _median_index(m.sum(2))  # (F,)
    mx = _median_index(m.sum(1))  # (F,)
    ys = np.arange(h)[None, :, None]
    xs = np.arange(w)[None, None, :]
    inside = (np.abs(ys - my[:, None, None]) <= half) & (np.abs(xs - mx[:, None, None]) <= half)
    out: NDArray[Any] = m & inside
    return out


def score_video(video: Any, graph: Any, color_tol: float = COLOR_TOL) -> OracleReport:
    """Score one uint8 video (F, H, W, 3) against its shapes-world graph."""
    v = check_frames(video)
    names, rels = graph_parts(graph)
    f, h, w, _ = v.shape
    lab = color_labels(v, color_tol)
    min_px = max(PRESENT_PIXELS_64 * h * w / (64 * 64), MIN_PIXELS)
    ys = np.arange(h) + 0.5
    xs = np.arange(w) + 0.5
    objects: list[ObjectReport] = []
    seen_all = np.zeros((len(names), f), dtype=bool)
    for k, name in enumerate(names):
        color, shape = split_name(name)
        raw = lab == COLOR_NAMES.index(color)  # (F, H, W)
        m = _object_window(raw, WINDOW_FRAC)  # (F, H, W): the color's pixels near their median
        area = m.sum((1, 2))  # (F,)
        total = raw.sum((1, 2))  # (F,)
        seen = (area >= min_px) & (area >= CONCENTRATION * total)
        seen_all[k] = seen
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (m.sum(1) * xs).sum(-1) / area  # (F,)
            cy = (m.sum(2) * ys).sum(-1) / area
        cent = np.where(seen[:, None], np.stack([cx, cy], -1), np.nan)  # (F, 2)
        frac = float(seen.mean())
        is_present = frac >= PRESENT_FRAMES
        votes = Counter(classify_shape(m[t]) for t in np.flatnonzero(seen))
        guess = votes.most_common(1)[0][0] if votes else None
        objects.append(ObjectReport(name, is_present, frac, guess, (guess == shape) if is_present else None,
                                    cent, area.astype(np.int64)))
    relations: list[RelationReport] = []
    for s, p, o in rels:
        if not (objects[s].present and objects[o].present):
            relations.append(RelationReport(s, p, o, False, None))
            continue
        slack = float(relation_score(p, objects[s].centroids, objects[o].centroids, w))
        relations.append(RelationReport(s, p, o, bool(slack > 0), slack))
    n = len(objects)
    present = [o for o in objects if o.present]
    stab, smooth = _stability(objects, seen_all, h, w)
    return OracleReport(
        objects=objects,
        relations=relations,
        presence=len(present) / n,
        shape_accuracy=(sum(bool(o.shape_ok) for o in present) / len(present)) if present else None,
        relation_accuracy=(sum(r.holds for r in relations) / len(relations)) if relations else None,
        stability=stab[0] / stab[1] if stab[1] else None,
        smoothness=smooth[0] / smooth[1] if smooth[1] else None,
        stable_pairs=stab,
        smooth_triples=smooth,
    )


def _stability(objects: list[ObjectReport], seen: NDArray[Any], h: int, w: int) -> tuple[tuple[int, int],
                                                                                         tuple[int, int]]:
    """(stable, total) frame pairs and (smooth, total) frame triples.

    A pair is stable when every object seen in either frame is seen in both, moves at most the fastest the
    generator allows (a canvas diagonal over the clip, plus rounding) and changes area by at most 30%. A
    triple is smooth when every object seen in all three has a centroid second difference of at most 1.5 px.
    """
    n, f = seen.shape
    if f < 2:
        return (0, 0), (0, 0)
    c = np.stack([o.centroids for o in objects])  # (n, F, 2)
    a = np.stack([o.areas for o in objects]).astype(np.float64)  # (n, F)
    step = math.hypot(h, w) / (f - 1) + 1.5
    either = seen[:, 1:] | seen[:, :-1]  # (n, F-1)
    both = seen[:, 1:] & seen[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        move = np.linalg.norm(c[:, 1:] - c[:, :-1], axis=-1)  # (n, F-1), NaN unless seen in both
        da = np.abs(a[:, 1:] - a[:, :-1]) / np.maximum(np.maximum(a[:, 1:], a[:, :-1]), 1)
    ok = ~either | (both & (move <= step) & (da <= AREA_CHANGE))  # (n, F-1)
    stable = (int(ok.all(0).sum()), f - 1)
    if f < 3:
        return stable, (0, 0)
    all3 = seen[:, 2:] & seen[:, 1:-1] & seen[:, :-2]  # (n, F-2)
    with np.errstate(invalid="ignore"):
        acc = np.linalg.norm(c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2], axis=-1)  # (n, F-2)
    sm = ~all3 | (acc <= ACCEL_TOL)
    return stable, (int(sm.all(0).sum()), f - 2)


def score_batch(videos: Sequence[Any] | NDArray[Any], graphs: Sequence[Any],
                color_tol: float = COLOR_TOL) -> BatchReport:
    """Score many videos (a sequence or a (B, F, H, W, 3) array) against their graphs and pool the counts."""
    if len(videos) != len(graphs):
        raise VideoError(f"{len(videos)} videos but {len(graphs)} graphs; give one graph per video")
    if len(videos) == 0:
        raise VideoError("no videos to score; give at least one")
    n_obj = n_present = n_shape_ok = n_rel = n_rel_ok = 0
    stab = [0, 0]
    smooth = [0, 0]
    per: dict[str, list[int]] = {}
    for video, graph in zip(videos, graphs):
        r = score_video(video, graph, color_tol)
        n_obj += len(r.objects)
        n_present += sum(o.present for o in r.objects)
        n_shape_ok += sum(bool(o.shape_ok) for o in r.objects if o.present)
        n_rel += len(r.relations)
        n_rel_ok += sum(x.holds for x in r.relations)
        for x in r.relations:
            cnt = per.setdefault(x.predicate, [0, 0])
            cnt[0] += x.holds
            cnt[1] += 1
        for acc, (k, t) in ((stab, r.stable_pairs), (smooth, r.smooth_triples)):
            acc[0] += k
            acc[1] += t
    return BatchReport(
        videos=len(videos),
        objects=n_obj,
        relations=n_rel,
        presence=n_present / n_obj,
        shape_accuracy=n_shape_ok / n_present if n_present else None,
        relation_accuracy=n_rel_ok / n_rel if n_rel else None,
        stability=stab[0] / stab[1] if stab[1] else None,
        smoothness=smooth[0] / smooth[1] if smooth[1] else None,
        relation_accuracy_by_predicate={p: per[p][0] / per[p][1] for p in PREDICATES if p in per},
    )
