"""The user's own recordings -> converted data set: NAME.json (a scene graph, optional layout) + its frames.

SOURCE holds, at any depth, `NAME.json` files in the project's graph format (docs/ARCHITECTURE.md,
docs/DESIGN.md: {"objects": [...], "relationships": [[s, "predicate", o], ...], "description": "..."}) with an
optional "layout": {"<object index>": boxes}, where boxes is a list with one [x0, y0, x1, y1] box in [0, 1]
per frame of the recording (null: the object is out of view in that frame), one box (static), or {"start":
box, "end": box} (linear motion over the recording). Beside each graph: `NAME.mp4` (read through
imageio-ffmpeg, the `video` extra), a folder `NAME/` of frame images (.png, .jpg, .jpeg, in name order) or one
image `NAME.png` / `NAME.jpg` / `NAME.jpeg` (a one-frame sample). Objects without a layout have `has_layout`
False (zero boxes, visible in every frame: the graph says they are there). A recording gives clips of --frames
consecutive taken frames (every --frame-step-th frame), --clip-stride apart; frames after the last full clip
are counted. The vocabulary is the names the graphs use (sorted), or the one --vocab names, in which case
every name must be in it. Splits are seeded by recording.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.dataset.common import (
    DropTable,
    JobResult,
    Plan,
    UnreadableImage,
    clip_starts,
    context,
    finish_record,
    frames_job,
    resize_frame,
    seeded_split,
    unreadable_error,
)
from sg2v.dataset.options import FolderOptions, OptionError
from sg2v.errors import DatasetError, GraphError, VocabError, require
from sg2v.graph import parse_graph
from sg2v.layout import is_index_key
from sg2v.safety import read_input
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab, load_vocab

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LAYOUT_HELP = ('a layout maps an object index ("0") to one box per frame, one static box or '
               '{"start": box, "end": box}; a box is [x0, y0, x1, y1] in [0, 1] with x0 < x1, y0 < y1')


class _Invalid(Exception):
    """A recording whose graph, layout or media is invalid (message names the file and the fix)."""

    def __init__(self, message: str, reason: str, exit2: bool = True):
        super().__init__(message)
        self.reason, self.exit2 = reason, exit2


def _strict_json(path: Path) -> Any:
    def no_dupes(pairs: list[Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        text = read_input(path).decode("utf-8-sig")
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constant)
    except OSError as e:
        raise _Invalid(f"{path}: cannot read ({e.strerror or e}); check its permissions", "graph unreadable",
                       exit2=False) from None
    except UnicodeDecodeError as e:
        raise _Invalid(f"{path}: not UTF-8 text (byte at offset {e.start}); save it as UTF-8",
                       "graph file invalid") from None
    except json.JSONDecodeError as e:
        raise _Invalid(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; a graph looks "
                       'like {"objects": ["robot arm", "cup"], "relationships": [[0, "holding", 1]]}',
                       "graph file invalid") from None
    except (ValueError, RecursionError) as e:
        raise _Invalid(f"{path}: invalid JSON ({e})", "graph file invalid") from None


def _box(v: Any, where: str) -> NDArray[Any]:
    if not (isinstance(v, (list, tuple)) and len(v) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        raise _Invalid(f"{where}: expected a box [x0, y0, x1, y1], got {json.dumps(v)[:60]}; {LAYOUT_HELP}",
                       "layout invalid")
    inside = all(0 <= x <= 1 for x in v)  # exact for ints of any size (float(10**400) overflows); NaN fails
    b = np.asarray(v, dtype=np.float64) if inside else np.zeros(4)
    if not inside or not (b[0] < b[2] and b[1] < b[3]):
        raise _Invalid(f"{where}: box {json.dumps(v)[:120]} is not inside [0, 1] with x0 < x1 and y0 < y1; "
                       "boxes are fractions of the frame (x right, y down)", "layout invalid")
    return b


def check_layout(layout: Any, n_objects: int, where: str) -> dict[int, Any]:
    """Structure of a graph's "layout" (frame counts are checked once the recording's length is known)."""
    if layout is None:
        return {}
    if not isinstance(layout, dict):
        raise _Invalid(f"{where}: expected an object; {LAYOUT_HELP}", "layout invalid")
    out: dict[int, Any] = {}
    for key, value in layout.items():
        w = f"{where}[{json.dumps(key)}]"
        if not (is_index_key(key) and int(key) < n_objects):
            raise _Invalid(f"{w}: not an object index of the graph (0..{n_objects - 1})", "layout invalid")
        if isinstance(value, dict):
            if set(value) != {"start", "end"}:
                raise _Invalid(f"{w}: a moving box is {{\"start\": box, \"end\": box}}", "layout invalid")
            out[int(key)] = ("move", _box(value["start"], f"{w}.start"), _box(value["end"], f"{w}.end"))
        elif isinstance(value, list) and value and all(v is None or isinstance(v, list) for v in value):
            out[int(key)] = ("frames", [None if v is None else _box(v, f"{w}[{t}]")
                                        for t, v in enumerate(value)])
        else:
            out[int(key)] = ("static", _box(value, w))
    return out


def resolve_layout(layout: dict[int, Any], n_objects: int, n_frames: int,
                   where: str) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Checked layout -> boxes (n, N, 4), visible (n, N), has_layout (n,) over the recording's N frames."""
    boxes = np.zeros((n_objects, n_frames, 4))
    visible = np.ones((n_objects, n_frames), dtype=bool)
    has = np.zeros(n_objects, dtype=bool)
    for k, spec in layout.items():
        has[k] = True
        kind = spec[0]
        if kind == "static":
            boxes[k] = spec[1]
        elif kind == "move":
            t = np.linspace(0.0, 1.0, n_frames)[:, None] if n_frames > 1 else np.zeros((1, 1))
            boxes[k] = spec[1] + (spec[2] - spec[1]) * t
        else:
            per = spec[1]
            if len(per) != n_frames:
                raise _Invalid(f"{where}[\"{k}\"]: {len(per)} boxes, but the recording has {n_frames} "
                               "frames; give one box per frame (null where the object is out of view), one "
                               "static box or {\"start\": box, \"end\": box}", "layout invalid")
            for f, b in enumerate(per):
                if b is None:
                    visible[k, f] = False
                else:
                    boxes[k, f] = b
    return boxes, visible, has


def _media(js: Path) -> list[Path]:
    stem = js.with_suffix("")
    found = []
    if js.with_suffix(".mp4").is_file():
        found.append(js.with_suffix(".mp4"))
    if stem.is_dir():
        found.append(stem)
    found += [js.with_suffix(e) for e in IMAGE_EXTS if js.with_suffix(e).is_file()]
    return found


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


class _Invalids:
    """Where an invalid recording goes: an error (the default), or with --skip-invalid a drop and a
    warning line."""

    def __init__(self, skip: bool, drops: DropTable):
        self.skip, self.drops = skip, drops
        self.warnings: list[str] = []

    def __call__(self, e: _Invalid) -> None:
        if not self.skip:
            raise (GraphError if e.exit2 else DatasetError)(str(e))
        self.drops.add("recording", f"{e.reason} (--skip-invalid)")
        self.warnings.append(str(e))


def plan(source: Path, o: FolderOptions, seed: int, frames: int) -> Plan:
    """Recordings -> Plan: the NAME.json graphs and the recording beside each, the vocabulary (--vocab or
    the graphs'), each graph checked against it, seeded splits by recording, then the clips (or the one
    image) of each recording, in split order."""
    source = Path(source)
    _check_source(source, o)
    drops, notes = DropTable(), DropTable()
    invalid = _Invalids(o.skip_invalid, drops)
    entries = _read_graphs(source, invalid)
    vocab = _vocab(o, entries)
    checked = _check_graphs(source, entries, vocab, invalid)
    split_of = seeded_split([c[0] for c in checked], seed, o.val_fraction, o.test_fraction)
    stride = o.clip_stride or frames
    payloads: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    estimate = 0
    for name, js, media, graph, layout in checked:
        split = split_of[name]
        new = _recording_payloads(split, name, js, media, graph, layout, frames, stride, o, drops, invalid)
        payloads[split] += new
        estimate += sum(len(p["files"]) for p in new if p.get("kind") != "video")
    ordered = payloads["train"] + payloads["val"] + payloads["test"]
    return Plan(vocab=vocab, job=folder_job, payloads=ordered, drops=drops, notes=notes,
                source={"format": "folder", "name": "recordings with scene graphs", "path": str(source)},
                frames_estimate=None if any(p.get("kind") == "video" for p in ordered) else estimate,
                warnings=invalid.warnings)


def _check_source(source: Path, o: FolderOptions) -> None:
    """SOURCE is a folder; the options fit."""
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder; pass the folder of NAME.json graphs and their "
                           "recordings")
    if o.frame_step < 1:
        raise OptionError(f"--frame-step {o.frame_step}: must be >= 1")
    if o.clip_stride < 0:
        raise OptionError(f"--clip-stride {o.clip_stride}: must be >= 0 (0: --frames)")
    if not (0 <= o.val_fraction < 1 and 0 <= o.test_fraction < 1 and o.val_fraction + o.test_fraction < 1):
        raise OptionError(f"--val-fraction {o.val_fraction} and --test-fraction {o.test_fraction}: each in "
                          "[0, 1) and together below 1")


def _read_graphs(source: Path, invalid: _Invalids) -> list[tuple[Path, Path, dict[Any, Any], Any]]:
    """Every NAME.json under SOURCE (hidden folders skipped, sorted): (json, recording, graph, layout)."""
    graphs = sorted(p for p in source.rglob("*.json")
                    if not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not graphs:
        raise DatasetError(f"{source}: no NAME.json graph files; put each recording's scene graph beside "
                           "it as NAME.json")
    entries = []
    for js in graphs:
        try:
            entries.append(_read_graph(js))
        except _Invalid as e:
            invalid(e)
    return entries


def _read_graph(js: Path) -> tuple[Path, Path, dict[Any, Any], Any]:
    """(json, recording, graph without its layout, layout checked); _Invalid naming the problem."""
    found = _media(js)
    if not found:
        raise _Invalid(f"{js}: no NAME.mp4, NAME/ folder of frames or NAME.png / .jpg beside it; add "
                       "the recording or move the graph away", "no recording beside the graph", exit2=False)
    if len(found) > 1:
        raise _Invalid(f"{js}: {' and '.join(p.name for p in found)} both belong to it; keep one",
                       "more than one recording beside the graph", exit2=False)
    data = _strict_json(js)
    if not isinstance(data, dict):
        raise _Invalid(f"{js}: a graph must be a JSON object", "graph file invalid")
    data = dict(data)
    raw_layout = data.pop("layout", None)
    objs = data.get("objects")
    n = len(objs) if isinstance(objs, list) else 0
    return js, found[0], data, check_layout(raw_layout, n, f"{js}: layout")


def _vocab(o: FolderOptions, entries: list[tuple[Path, Path, dict[Any, Any], Any]]) -> Vocab:
    """--vocab, or the sorted names the graphs use."""
    if o.vocab:
        try:
            return load_vocab(o.vocab)
        except VocabError as e:
            raise OptionError(f"--vocab: {e}") from None
    obj_names = sorted({n for _, _, d, _ in entries for n in d.get("objects") or [] if isinstance(n, str)}
                       - {IMAGE_OBJECT})
    preds = sorted({r[1] for _, _, d, _ in entries for r in d.get("relationships") or []
                    if isinstance(r, list) and len(r) == 3 and isinstance(r[1], str)} - {IN_IMAGE_PRED})
    objects_list, preds_list = [IMAGE_OBJECT, *obj_names], [IN_IMAGE_PRED, *preds]
    return Vocab.from_dict({"object_name_to_idx": {n: i for i, n in enumerate(objects_list)},
                            "object_idx_to_name": objects_list,
                            "pred_name_to_idx": {n: i for i, n in enumerate(preds_list)},
                            "pred_idx_to_name": preds_list}, where="folder vocabulary")


def _check_graphs(source: Path, entries: list[tuple[Path, Path, dict[Any, Any], Any]], vocab: Vocab,
                  invalid: _Invalids) -> list[tuple[str, Path, Path, dict[str, Any], Any]]:
    """The graphs parsed against the vocabulary: (name, json, recording, graph, layout)."""
    checked = []
    for js, media, data, layout in entries:
        try:
            graph = parse_graph(data, vocab).to_dict()
        except GraphError as e:
            invalid(_Invalid(f"{js}: {e}", "graph invalid"))
            continue
        checked.append((js.relative_to(source).with_suffix("").as_posix(), js, media, graph, layout))
    if not checked:
        raise DatasetError(f"{source}: no valid recording left; see the drop table")
    return checked


def _recording_payloads(split: str, name: str, js: Path, media: Path, graph: dict[str, Any], layout: Any,
                        frames: int, stride: int, o: FolderOptions, drops: DropTable, invalid: _Invalids
                        ) -> list[dict[str, Any]]:
    """One recording's payloads: an mp4 as one job (decoded into its clips), else one per clip of its
    frame folder (every --frame-step-th frame) or one for its image."""
    if media.suffix.lower() == ".mp4":
        return [{"split": split, "name": name, "graph": graph, "layout": layout, "json": str(js),
                 "media": str(media), "frames": frames, "step": o.frame_step, "stride": stride,
                 "skip_invalid": o.skip_invalid, "kind": "video"}]
    files = _frame_files(media) if media.is_dir() else [media]
    if not files:
        invalid(_Invalid(f"{media}: no .png / .jpg frames in this folder", "recording has no frames",
                         exit2=False))
        return []
    try:
        boxes, visible, has = resolve_layout(layout, len(graph["objects"]), len(files), f"{js}: layout")
    except _Invalid as e:
        invalid(e)
        return []
    taken = list(range(0, len(files), o.frame_step))
    if not media.is_dir():  # one image: one one-frame sample
        windows, length = [0], 1
    else:
        windows, length = clip_starts(len(taken), frames, stride), frames
        left = len(taken) - len({i for s in windows for i in range(s, s + frames)})
        if not windows:
            drops.add("recording", f"fewer taken frames than --frames ({frames})")
        drops.add("frame", "after the last full clip of its recording", left if windows else 0)
    out = []
    for s in windows:
        idx = taken[s:s + length]
        out.append(_payload(split, name, graph, boxes[:, idx], visible[:, idx], has, [files[i] for i in idx],
                            {"recording": name, "file": media.name, "frames": idx}))
    return out


def _payload(split: str, name: str, graph: dict[Any, Any], boxes: NDArray[Any], visible: NDArray[Any],
             has: NDArray[Any], files: list[Path], source: dict[Any, Any]) -> dict[str, Any]:
    n, f = boxes.shape[:2]
    return {
        "split": split, "unit": "clip" if f > 1 else "image", "graph": graph, "boxes": boxes,
        "boxes_unit": "norm", "visible": visible, "has_layout": has,
        "rel_frames": np.ones((len(graph["relationships"]), f), dtype=bool), "source": source,
        "files": [str(p) for p in files], "sizes": None,
    }


def folder_job(payload: dict[str, Any]) -> JobResult:
    """Frame folders and images via `frames_job`; an mp4 recording is decoded once into all its clips."""
    if payload.get("kind") != "video":
        return frames_job(payload)
    ctx = context()
    res = JobResult()
    media, step = Path(payload["media"]), payload["step"]
    frames, stride = payload["frames"], payload["stride"]
    try:
        taken, total = _read_mp4(media, step, ctx.height, ctx.width)
    except UnreadableImage as e:
        if not ctx.skip_unreadable:
            raise unreadable_error(str(e)) from None
        res.drops.add("recording", "video cannot be decoded (--skip-unreadable)")
        return res
    graph = payload["graph"]
    try:
        boxes, visible, has = resolve_layout(payload["layout"], len(graph["objects"]), total,
                                             f"{payload['json']}: layout")
    except _Invalid as e:
        if not payload["skip_invalid"]:
            raise GraphError(str(e)) from None
        res.drops.add("recording", f"{e.reason} (--skip-invalid)")
        return res
    idx = list(range(0, total, step))
    starts = clip_starts(len(idx), frames, stride)
    if not starts:
        res.drops.add("recording", f"fewer taken frames than --frames ({frames})")
    covered = {i for s in starts for i in range(s, s + frames)}
    res.drops.add("frame", "after the last full clip of its recording",
                  len(idx) - len(covered) if starts else 0)
    for s in starts:
        sel = idx[s:s + frames]
        p = _payload(payload["split"], payload["name"], graph, boxes[:, sel], visible[:, sel], has, [],
                     {"recording": payload["name"], "file": media.name, "frames": sel})
        res.samples.append((payload["split"], finish_record(p, p["boxes"], p["visible"]),
                            np.stack([taken[i] for i in range(s, s + frames)])))
    return res


def _read_mp4(path: Path, step: int, height: int, width: int) -> tuple[list[NDArray[Any]], int]:
    """Every step-th frame of an mp4, resized, and the frame count (streamed: one full frame in memory)."""
    ffmpeg = require("imageio_ffmpeg", "video")
    gen = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    taken: list[NDArray[Any]] = []
    total = 0
    try:
        meta = next(gen)
        w, h = meta["size"]
        for raw in gen:
            if total % step == 0:
                frame = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
                taken.append(resize_frame(frame, height, width))
            total += 1
    except (RuntimeError, StopIteration, OSError, ValueError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(f"{path}: ffmpeg cannot decode it ({why})") from None
    finally:
        gen.close()
    if total == 0:
        raise UnreadableImage(f"{path}: the video holds no frames")
    return taken, total
