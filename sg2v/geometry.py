"""Geometric constraints of a data set's layouts (torch-free): what its training scenes obey, on tracks.

The layout stage checks these beside the relation rules (`sg2v.relations`). Three constraints, each judged in
every frame on boxes [x0, y0, x1, y1] in [0, 1] of the frame:

- `overlap`: no box covers more than `max_overlap` of another (the intersection's area over the smaller box's
  area; boxes that only touch cover 0). The shapes world's generator rejects every motion in which two boxes
  overlap at all, so its limit is 0.
- `size`: every box's width is within `width` and its height within `height` (fractions of the canvas width
  and height). The shapes world draws sides of 12% to 20% of the shorter canvas side, in whole pixels, so its
  range is those sides widened by half a pixel (a box that rounds to an allowed side).
- `inside`: every box lies wholly inside the canvas (the shapes world renders nothing else).

A bundle's manifest declares them in its `layout` entry (`geometry`: `to_entry` / `from_entry`); a
shapes-world bundle without the entry gets `shapes_geometry` of its canvas, another bundle without it none.
For a converted data set the limits are measured from its training split (`measure_geometry`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

CONSTRAINTS = ("overlap", "size", "inside")
SOURCES = ("shapes world", "measured")
INSIDE_TOLERANCE = 1e-6  # float32 boxes at the canvas edge
MEASURE_QUANTILE = 0.99  # the overlap a measured data set's scenes stay within (its frames' largest overlaps)
SIZE_QUANTILES = (0.001, 0.999)  # the box widths and heights a measured data set's boxes stay within


@dataclass(frozen=True)
class Geometry:
    """The geometric constraints of a data set's layouts (module note); None: a constraint not checked."""

    max_overlap: float | None  # 0: boxes never overlap
    width: tuple[float, float] | None  # box width range, fractions of the canvas width
    height: tuple[float, float] | None  # box height range, fractions of the canvas height
    inside: bool
    source: str

    @property
    def constraints(self) -> tuple[str, ...]:
        """The constraints this geometry checks, in `CONSTRAINTS` order."""
        on = {"overlap": self.max_overlap is not None,
              "size": self.width is not None or self.height is not None, "inside": self.inside}
        return tuple(c for c in CONSTRAINTS if on[c])


@dataclass(frozen=True)
class GeometryCheck:
    """One constraint judged on a layout: the frames and objects that break it (none when it holds)."""

    constraint: str
    holds: bool
    frames: int  # frames with at least one breach
    objects: tuple[int, ...]  # objects involved in a breach (both of an overlapping pair)
    worst: float  # overlap: the largest covered fraction; size / inside: the largest distance outside

    def to_dict(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "holds": self.holds, "frames": self.frames,
                "objects": list(self.objects), "worst": self.worst}


def shapes_geometry(height: int, width: int) -> Geometry:
    """The shapes world's constraints on a height x width canvas: no overlap, its sizes, inside the canvas."""
    from sg2v.shapes.world import size_range

    lo, hi = size_range(int(height), int(width))
    return Geometry(0.0, ((lo - 0.5) / width, (hi + 0.5) / width), ((lo - 0.5) / height, (hi + 0.5) / height),
                    True, "shapes world")


def overlap_fraction(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    """Fraction of the smaller box that boxes a and b (..., 4) share: intersection area / min area (...)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area = np.minimum((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]),
                      (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / np.maximum(area, 1e-12), 0.0)


def pair_overlaps(tracks: NDArray[Any]) -> NDArray[Any]:
    """Covered fraction of every pair of objects in every frame: tracks (..., n, F, 4) -> (..., n, n, F),
    symmetric, 0 on the diagonal."""
    t = np.asarray(tracks, dtype=np.float64)
    out = overlap_fraction(t[..., :, None, :, :], t[..., None, :, :, :])
    n = t.shape[-3]
    return np.where(np.eye(n, dtype=bool)[:, :, None], 0.0, out)


def _size_excess(tracks: NDArray[Any], geometry: Geometry) -> NDArray[Any]:
    """How far each box's width or height is outside its range (..., n, F), 0 inside it."""
    t = np.asarray(tracks, dtype=np.float64)
    out = np.zeros(t.shape[:-1])
    for rng, side in ((geometry.width, t[..., 2] - t[..., 0]), (geometry.height, t[..., 3] - t[..., 1])):
        if rng is not None:
            out = np.maximum(out, np.maximum(rng[0] - side, side - rng[1]))
    return np.clip(out, 0.0, None)


def _outside(tracks: NDArray[Any]) -> NDArray[Any]:
    """How far each box reaches outside the canvas (..., n, F), 0 inside it."""
    t = np.asarray(tracks, dtype=np.float64)
    out = np.maximum.reduce([-t[..., 0], -t[..., 1], t[..., 2] - 1.0, t[..., 3] - 1.0])
    return np.where(out > INSIDE_TOLERANCE, out, 0.0)


def _pair_mask(n: int, free: NDArray[Any] | None) -> NDArray[Any]:
    """(n, n) pairs i < j to judge: those with at least one free object (all pairs when free is None)."""
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    if free is None:
        return upper
    f = np.asarray(free, dtype=bool)
    out: NDArray[Any] = upper & (f[:, None] | f[None, :])
    return out


def breaches(tracks: NDArray[Any], geometry: Geometry, free: NDArray[Any] | None = None
             ) -> dict[str, NDArray[Any]]:
    """Per constraint, where it is broken: overlap (..., n, n, F) pairs over the limit (i < j), size and
    inside (..., n, F). `free` (n,) bool limits the judgement to objects drawn (a pair with one free object
    counts); None judges every object."""
    t = np.asarray(tracks, dtype=np.float64)
    n = t.shape[-3]
    keep = np.ones(n, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    out = {}
    if geometry.max_overlap is not None:
        over = pair_overlaps(t) > geometry.max_overlap
        out["overlap"] = over & _pair_mask(n, free)[:, :, None]
    if geometry.width is not None or geometry.height is not None:
        out["size"] = (_size_excess(t, geometry) > 0) & keep[:, None]
    if geometry.inside:
        out["inside"] = (_outside(t) > 0) & keep[:, None]
    return out


def batch_geometry_ok(tracks: NDArray[Any], geometry: Geometry | None, free: NDArray[Any] | None = None
                      ) -> NDArray[Any]:
    """(K,) True for each candidate layout (K, n, F, 4) that keeps every constraint (vectorised)."""
    t = np.asarray(tracks)
    ok = np.ones(t.shape[0], dtype=bool)
    if geometry is None:
        return ok
    for hit in breaches(t, geometry, free).values():
        ok &= ~hit.reshape(t.shape[0], -1).any(axis=1)
    return ok


def check_geometry(tracks: NDArray[Any], geometry: Geometry | None, free: NDArray[Any] | None = None
                   ) -> list[GeometryCheck]:
    """Judge each constraint of `geometry` on one layout (n, F, 4) (only objects in `free`, and pairs with
    one, when given); [] when there is no geometry."""
    if geometry is None:
        return []
    t = np.asarray(tracks, dtype=np.float64)
    hits = breaches(t, geometry, free)
    out = []
    for name in geometry.constraints:
        hit = hits[name]
        if name == "overlap":
            frames = int(hit.any(axis=(0, 1)).sum())
            pairs = np.argwhere(hit.any(axis=-1))
            objects = tuple(sorted({int(k) for p in pairs for k in p}))
            worst = float((pair_overlaps(t) * hit).max()) if hit.any() else 0.0
        else:
            frames = int(hit.any(axis=0).sum())
            objects = tuple(int(k) for k in np.flatnonzero(hit.any(axis=1)))
            amount = _size_excess(t, geometry) if name == "size" else _outside(t)
            worst = float((amount * hit).max()) if hit.any() else 0.0
        out.append(GeometryCheck(name, frames == 0, frames, objects, worst))
    return out


def geometry_failures(checks: Sequence[GeometryCheck]) -> list[str]:
    """Short phrases for the broken constraints ("objects 0 and 1 overlap in 3 frames", ...)."""
    out = []
    for c in checks:
        if c.holds:
            continue
        who = " and ".join(str(k) for k in c.objects)
        what = {"overlap": f"objects {who} overlap (up to {c.worst:.0%} of a box)",
                "size": f"object(s) {who} outside the data's box sizes (by up to {c.worst:.3f} of the frame)",
                "inside": f"object(s) {who} leave the canvas (by up to {c.worst:.3f} of the frame)"}
        out.append(f"{what[c.constraint]} in {c.frames} frame(s)")
    return out


def measure_geometry(layouts: Iterable[NDArray[Any]], quantile: float = MEASURE_QUANTILE,
                     size_quantiles: tuple[float, float] = SIZE_QUANTILES) -> Geometry | None:
    """The limits a data set's layouts keep, measured on its training split: each layout (n, F, 4) boxes in
    [0, 1] (NaN or all-zero rows: object not seen in that frame). Overlap: the `quantile` of every frame's
    largest covered fraction (frames with two or more objects; None when there are none); size: the
    `size_quantiles` of the widths and heights; inside: whether every box lies in the canvas. None when
    there are no boxes."""
    worst, widths, heights, inside = [], [], [], True
    for tracks in layouts:
        t = np.asarray(tracks, dtype=np.float64).reshape(-1, *np.shape(tracks)[-2:])  # (n, F, 4)
        seen = np.isfinite(t).all(-1) & ((t[..., 2] > t[..., 0]) & (t[..., 3] > t[..., 1]))  # (n, F)
        if not seen.any():
            continue
        widths.append((t[..., 2] - t[..., 0])[seen])
        heights.append((t[..., 3] - t[..., 1])[seen])
        inside &= not bool((_outside(np.where(seen[..., None], t, 0.5)) > 0).any())
        if t.shape[0] > 1:
            pairs = pair_overlaps(np.where(seen[..., None], t, 0.0))
            over = np.where(seen[:, None] & seen[None, :], pairs, 0.0)
            both = (seen.sum(0) >= 2)  # (F,) frames with two objects
            if both.any():
                worst.append(over.max(axis=(0, 1))[both])
    if not widths:
        return None
    w, h = np.concatenate(widths), np.concatenate(heights)
    lo, hi = size_quantiles
    max_overlap = float(np.quantile(np.concatenate(worst), quantile)) if worst else None
    return Geometry(max_overlap, (float(np.quantile(w, lo)), float(np.quantile(w, hi))),
                    (float(np.quantile(h, lo)), float(np.quantile(h, hi))), inside, "measured")


def to_entry(geometry: Geometry) -> dict[str, Any]:
    """The manifest's `layout.geometry` entry (JSON)."""
    return {"source": geometry.source, "max_overlap": geometry.max_overlap,
            "width": None if geometry.width is None else [float(v) for v in geometry.width],
            "height": None if geometry.height is None else [float(v) for v in geometry.height],
            "inside": bool(geometry.inside)}


ENTRY_KEYS = ("source", "max_overlap", "width", "height", "inside")


def from_entry(entry: Mapping[str, Any]) -> Geometry:
    """A `Geometry` from a manifest's `layout.geometry` entry; ValueError naming the first bad field."""
    if not isinstance(entry, Mapping) or sorted(map(str, entry)) != sorted(ENTRY_KEYS):
        raise ValueError(f"geometry must be an object with keys {list(ENTRY_KEYS)}")
    if entry["source"] not in SOURCES:
        raise ValueError(f"geometry source {entry['source']!r:.40} is not one of {list(SOURCES)}")

    def number(v: Any, what: str) -> float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ValueError(f"geometry {what} {v!r:.40} is not a number in [0, 1]")
        return float(v)

    mo = entry["max_overlap"]
    ranges: list[tuple[float, float] | None] = []
    for key in ("width", "height"):
        r = entry[key]
        if r is None:
            ranges.append(None)
            continue
        if not isinstance(r, list) or len(r) != 2:
            raise ValueError(f"geometry {key} {r!r:.40} is not null or [low, high]")
        a, b = number(r[0], key), number(r[1], key)
        if a > b:
            raise ValueError(f"geometry {key} [{a}, {b}] has low > high")
        ranges.append((a, b))
    if not isinstance(entry["inside"], bool):
        raise ValueError(f"geometry inside {entry['inside']!r:.40} is not true or false")
    return Geometry(None if mo is None else number(mo, "max_overlap"), ranges[0], ranges[1], entry["inside"],
                    str(entry["source"]))


def geometry_for(config: Any, object_names: Sequence[str], entry: Mapping[str, Any] | None = None
                 ) -> Geometry | None:
    """The constraints a bundle's layout stage checks: its manifest entry when it has one, else the shapes
    world's for a shapes-world model (the shapes world's objects, its rule family "shapes"; the canvas of its
    data config), else None (another data set's bundle without recorded limits)."""
    if entry is not None:
        return from_entry(entry)
    from sg2v.shapes.world import OBJECT_NAMES

    if getattr(config.layout, "rules", None) == "shapes" and set(object_names) == set(OBJECT_NAMES):
        return shapes_geometry(config.data.height, config.data.width)
    return None


def model_geometry(config: Any, object_names: Sequence[str]) -> Geometry | None:
    """The constraints a model's layouts keep: those measured on its converted data set (its config's
    `layout.geometry`), else the shapes world's for a shapes-world model, else None."""
    import json

    recorded = getattr(config.layout, "geometry", "")
    return geometry_for(config, object_names, json.loads(recorded) if recorded else None)


def compact_entry(geometry: Geometry) -> str:
    """`to_entry` as JSON without spaces, the form a model config records (within its 256 characters)."""
    import json

    return json.dumps(to_entry(geometry), separators=(",", ":"))


def dataset_geometry(annotations: Iterable[Mapping[str, Any]], quantile: float = MEASURE_QUANTILE
                     ) -> Geometry | None:
    """`measure_geometry` of a converted data set's training split: its annotations (`boxes` (n, F, 4) in
    [0, 1], `visible` (n, F), `has_layout` (n,), as `ConvertedDataset.annotation` gives them), each object's
    box counted only in the frames where it is visible and has one."""
    def layouts() -> Iterable[NDArray[Any]]:
        for a in annotations:
            boxes = np.asarray(a["boxes"], dtype=np.float64)
            known = np.asarray(a["visible"], bool) & np.asarray(a["has_layout"], bool)[:, None]
            yield np.where(known[..., None], boxes, np.nan)

    return measure_geometry(layouts(), quantile)
