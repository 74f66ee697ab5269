"""Layouts: per object, one box per frame (torch-free): parse, validate, expand, write.

A box is `[x0, y0, x1, y1]` in [0, 1] of the frame (x right, y down), x0 < x1 and y0 < y1. A layout maps
object indices, written as strings ("0", "1", ...), to one of three forms:
- F boxes, one per frame;
- one box: the object stands still;
- `{"start": box, "end": box}`: linear motion from the first frame to the last.
In a graph JSON it is the optional `"layout"` key; objects left out are drawn by the layout stage, the given
ones are kept exactly. Every mistake raises `GraphError` naming the place and the fix (CLI exit status 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import GraphError, shown

_FORMS = '(F boxes, one box [x0, y0, x1, y1], or {"start": box, "end": box})'
MAX_LAYOUT_FRAMES = 4096  # bound on the boxes a layout may list before anything is allocated


@dataclass(frozen=True)
class Track:
    """One object's given track: `boxes` (k, 4) with `kind` "frames" (k = F), "static" (k = 1) or "motion"
    (k = 2: start, end)."""

    kind: str
    boxes: tuple[tuple[float, float, float, float], ...]  # k boxes (tuples, so tracks compare by value)

    def expand(self, frames: int, where: str = "layout") -> NDArray[Any]:
        """The track as (F, 4) float32 boxes."""
        b = np.asarray(self.boxes, dtype=np.float64)  # (k, 4)
        if self.kind == "static":
            return np.repeat(b.astype(np.float32), frames, axis=0)
        if self.kind == "motion":
            t = (np.arange(frames) / max(frames - 1, 1))[:, None]  # (F, 1)
            out: NDArray[Any] = (b[0] + (b[1] - b[0]) * t).astype(np.float32)
            return out
        if b.shape[0] != frames:
            raise GraphError(f"{where}: {b.shape[0]} boxes, but this model makes {frames} frames; give "
                             f"{frames} boxes (one per frame), one box or {{\"start\": box, \"end\": box}}")
        return b.astype(np.float32)

    def to_json(self) -> Any:
        rows = [list(b) for b in self.boxes]
        if self.kind == "static":
            return rows[0]
        if self.kind == "motion":
            return {"start": rows[0], "end": rows[1]}
        return rows


def _show(value: Any, limit: int = 40) -> str:
    if not isinstance(value, str):
        return shown(value, limit)
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def parse_box(value: Any, where: str) -> tuple[float, float, float, float]:
    """One box [x0, y0, x1, y1] in [0, 1] with x0 < x1, y0 < y1."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise GraphError(f"{where}: a box is [x0, y0, x1, y1] (4 numbers in [0, 1]), got {_show(value)}")
    for k, v in enumerate(value):
        if not _is_number(v):
            raise GraphError(f"{where}[{k}]: expected a number in [0, 1], got {_show(v)}")
        if not 0.0 <= v <= 1.0:  # compared as they are: float() of a huge integer overflows
            text = _show(v) if isinstance(v, int) and abs(v) > 1e300 else repr(float(v))
            raise GraphError(f"{where}[{k}]: {text} is outside [0, 1]; box coordinates are fractions "
                             "of the frame (x right, y down)")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 <= x0:
        raise GraphError(f"{where}: x1 {x1} <= x0 {x0}; a box is [x0, y0, x1, y1] with x0 < x1")
    if y1 <= y0:
        raise GraphError(f"{where}: y1 {y1} <= y0 {y0}; a box is [x0, y0, x1, y1] with y0 < y1")
    return (x0, y0, x1, y1)


def parse_track(value: Any, where: str, frames: int | None = None) -> Track:
    """One object's track in any of the three forms (module note); `frames` checks a per-frame count."""
    if isinstance(value, Mapping):
        keys = set(value)
        if keys != {"start", "end"}:
            raise GraphError(f"{where}: a moving box is {{\"start\": box, \"end\": box}}, got keys "
                             f"{sorted(map(str, keys))}")
        return Track("motion", (parse_box(value["start"], f"{where}.start"),
                                parse_box(value["end"], f"{where}.end")))
    if not isinstance(value, (list, tuple)) or not value:
        raise GraphError(f"{where}: expected a track {_FORMS}, got {_show(value)}")
    if not any(isinstance(v, (list, tuple, Mapping)) for v in value):  # scalars: one box
        return Track("static", (parse_box(value, where),))
    if len(value) > MAX_LAYOUT_FRAMES:
        raise GraphError(f"{where}: {len(value)} boxes; a track has one per frame (at most "
                         f"{MAX_LAYOUT_FRAMES})")
    if frames is not None and len(value) != frames:
        raise GraphError(f"{where}: {len(value)} boxes, but this model makes {frames} frames; give {frames} "
                         "boxes (one per frame), one box or {\"start\": box, \"end\": box}")
    return Track("frames", tuple(parse_box(b, f"{where}[{i}]") for i, b in enumerate(value)))


def is_index_key(key: Any) -> bool:
    """Whether `key` is an object index written as a string: ASCII digits ("²".isdigit() is True, yet int()
    refuses it), no leading zero, at most 9 digits."""
    return isinstance(key, str) and 0 < len(key) <= 9 and key.isascii() and key.isdigit() and \
        (len(key) == 1 or key[0] != "0")


def parse_layout(data: Any, num_objects: int, frames: int | None = None, where: str = "layout"
                 ) -> dict[int, Track]:
    """A layout mapping (object index string -> track) for a graph of `num_objects` objects."""
    if not isinstance(data, Mapping):
        raise GraphError(f"{where}: expected an object mapping object indices to tracks, e.g. "
                         '{"0": [0.1, 0.1, 0.3, 0.3]}; got ' + _show(data))
    out: dict[int, Track] = {}
    for key, value in data.items():
        w = f"{where}[{_show(key)}]"
        if not is_index_key(key):
            raise GraphError(f"{w}: keys are object indices written as strings of ASCII digits (\"0\" .. "
                             f"\"{num_objects - 1}\"), got {_show(key)}")
        index = int(key)
        if index >= num_objects:
            raise GraphError(f"{w}: object index {index} out of range; the graph has {num_objects} "
                             f"object(s), indices 0..{num_objects - 1}")
        out[index] = parse_track(value, w, frames)
    return out


def expand_layout(tracks: Mapping[int, Track], frames: int, where: str = "layout") -> dict[int, NDArray[Any]]:
    """Each given track as (F, 4) float32 boxes."""
    return {i: t.expand(frames, f"{where}[\"{i}\"]") for i, t in sorted(tracks.items())}


def layout_json(tracks: NDArray[Any]) -> dict[str, list[list[float]]]:
    """Tracks (n, F, 4) as a layout mapping with F boxes per object (what `--save-layout` writes).

    Each value is written as the shortest decimal that reads back to the same float32, so a saved layout
    loads again to exactly the tracks that were used (the same video for the same seed).
    """
    def exact(v: np.float32) -> float:
        return float(np.format_float_positional(v, unique=True, trim="0"))

    t = np.asarray(tracks, dtype=np.float32)
    return {str(i): [[exact(v) for v in box] for box in track] for i, track in enumerate(t)}


def layout_from_file_data(data: Any, num_objects: int, frames: int | None, where: str) -> dict[int, Track]:
    """A `--layout` file's data: a layout mapping, or a whole graph carrying a "layout" key."""
    if isinstance(data, Mapping) and "objects" in data:
        if "layout" not in data:
            raise GraphError(f"{where}: a graph without a \"layout\" key; give a layout mapping like "
                             '{"0": [0.1, 0.1, 0.3, 0.3]} or a graph that has one')
        n = len(data["objects"]) if isinstance(data["objects"], (list, tuple)) else num_objects
        if n != num_objects:
            raise GraphError(f"{where}: its graph has {n} objects, the graph being generated has "
                             f"{num_objects}; use the layout saved for this graph")
        return parse_layout(data["layout"], num_objects, frames, f"{where}: layout")
    return parse_layout(data, num_objects, frames, where)
