"""`sg2v-data stats` / `show`: what a converted data set holds; one sample as text, JSON or contact sheet."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.dataset.format import ConvertedDataset, read_info
from sg2v.video import BOX_SHEET_CELL


def stats_lines(root: str | os.PathLike[str]) -> list[str]:
    from sg2v.dataset.convert import summary_lines

    info = read_info(root)
    return [f"converted data set {Path(root)} (format {info['format']} v{info['format_version']})",
            *summary_lines(info)]


def _box_text(box: Any) -> str:
    return "[" + " ".join(f"{v:.3f}" for v in box) + "]"


def _source_text(source: dict[str, Any], count: int) -> str:
    frames = f"{count} frame{'s' if count != 1 else ''}"
    if "image_id" in source:
        return f"image {source['image_id']} ({source.get('file', '?')}); {frames}"
    if "video" in source:
        names = source.get("frames", [])
        span = f"{names[0]} .. {names[-1]}" if len(names) > 1 else "".join(names)
        return f"video {source['video']}, annotated frames {span}; {frames}"
    if "recording" in source:
        idx = source.get("frames", [])
        span = f"{idx[0]} .. {idx[-1]}" if len(idx) > 1 else "".join(map(str, idx))
        return f"recording {source['recording']} ({source.get('file', '?')}), frames {span}; {frames}"
    return f"{source}; {frames}"


def sample_lines(ds: ConvertedDataset, index: int) -> list[str]:
    """One sample as text: where it came from, objects, relationships (and frames they hold in), layout."""
    s = ds[index]
    g, boxes, visible = s["graph"], s["boxes"], s["visible"]
    has, rel_frames = s["has_layout"], s["rel_frames"]
    f = s["frames"].shape[0]
    lines = [f"{ds.split}[{s['index']}] of {ds.root} ({ds.info.get('source_format')}): "
             f"{_source_text(s['source'], f)}"]
    if "description" in g:
        lines.append(f"description: {g['description']}")
    width = max(len(n) for n in g["objects"])
    lines.append(f"objects ({len(g['objects'])}):")
    for k, name in enumerate(g["objects"]):
        seen = "no layout" if not has[k] else f"visible in {int(visible[k].sum())}/{f} frames"
        lines.append(f"  {k:>3} {name:<{width}}  {seen}")
    lines.append(f"relationships ({len(g['relationships'])}):")
    for j, (a, p, b) in enumerate(g["relationships"]):
        holds = "" if rel_frames[j].all() else f"  (frames {_frame_set(rel_frames[j])})"
        lines.append(f"  {a} {g['objects'][a]} --{p}--> {b} {g['objects'][b]}{holds}")
    names = s["source"].get("frames") if isinstance(s["source"].get("frames"), list) else None
    lines.append("layout ([x0 y0 x1 y1] in [0, 1], x right, y down; - not visible, ? no layout):")
    for t in range(f):
        label = f"frame {t}" + (f" ({names[t]})" if names and len(names) == f else "")
        cells = [f"{k} " + ("?" if not has[k] else _box_text(boxes[k, t]) if visible[k, t] else "-")
                 for k in range(len(g["objects"]))]
        lines.append(f"  {label}: " + "  ".join(cells))
    return lines


def _frame_set(mask: NDArray[Any]) -> str:
    idx = np.flatnonzero(mask).tolist()
    if not idx:
        return "none"
    runs, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(runs)


def sample_json(ds: ConvertedDataset, index: int) -> dict[str, Any]:
    s = ds[index]
    return {"split": ds.split, "index": s["index"], "graph": s["graph"], "source": s["source"],
            "frames": int(s["frames"].shape[0]), "height": ds.height, "width": ds.width,
            "boxes": np.round(s["boxes"].astype(np.float64), 6).tolist(),
            "visible": s["visible"].astype(int).tolist(), "has_layout": s["has_layout"].astype(int).tolist(),
            "rel_frames": s["rel_frames"].astype(int).tolist()}


def sheet(sample: dict[str, Any], min_cell: int = BOX_SHEET_CELL) -> NDArray[Any]:
    """The sample's frames in a grid, upscaled for reading, each visible box drawn and labelled 'k name'."""
    from sg2v.video import box_sheet

    shown = np.asarray(sample["has_layout"], bool)[:, None] & np.asarray(sample["visible"], bool)  # (n, F)
    labels = [f"{k} {name}" for k, name in enumerate(sample["graph"]["objects"])]
    return box_sheet(sample["frames"], sample["boxes"], labels, shown, min_cell)


def write_sheet(ds: ConvertedDataset, index: int, path: str | os.PathLike[str]) -> Path:
    from sg2v.video import write_image

    return write_image(path, sheet(ds[index]))
