"""COCO 2017 instances + COCO-Stuff -> converted data set (images as one-frame clips), sg2im's scene graphs.

Sources of the facts used here:
- Files and layout: google/sg2im `scripts/download_coco.sh` and `scripts/train.py` (annotations unpacked to
  `annotations/instances_{train,val}2017.json` and `annotations/stuff_{train,val}2017.json`, images to
  `images/train2017/` and `images/val2017/`); nightrome/cocostuff `README.md` (stuff-only COCO-style
  annotations; COCO-Stuff ids: things 1-91 with gaps - 80 of the 91 thing ids are used -, stuff 92-182, and in
  the stuff files a class "other" with id 183 covering all thing pixels).
- Record keys: the COCO format as sg2im reads it (`sg2im/data/coco.py`): images {id, file_name, width,
  height}, categories {id, name}, annotations {image_id, category_id, bbox [x, y, w, h], segmentation,
  iscrowd}; segmentation is a list of polygons [x0, y0, x1, y1, ...], an uncompressed RLE {"counts": [ints],
  "size": [h, w]} (crowd annotations) or a compressed RLE {"counts": "string", "size": [h, w]} (stuff).
- RLE: cocodataset/cocoapi `common/maskApi.c` - counts alternate runs of 0 and 1 starting with 0, over the
  mask in column-major order; the string form writes each count in 6-bit characters offset by 48: 5 data bits
  per character, 0x20 marks a following character, 0x10 in the last character sign-extends, and from the
  fourth count on the value is a difference to the count two places earlier.
- sg2im's choices, the defaults here (`sg2im/data/coco.py`, `scripts/train.py`): the vocabulary uses the
  category ids as object ids, `__image__` at 0 and "NONE" at unused ids; predicates `__in_image__`, left of,
  right of, above, below, inside, surrounding; an object is kept when its box covers more than 0.02 of the
  image (w * h / (W * H) from the JSON's image size), its category is whitelisted and it is not "other"; crowd
  annotations are kept; with stuff, only images that have stuff annotations are used; images keep 3..8
  objects; train2017 is the training split, the first 1024 val2017 images (in the JSON's order, after
  filtering) are the validation split and the rest of val2017 the test split; boxes are [x / W, y / H, (x + w)
  / W, (y + h) / H] with (W, H) the decoded image's size. Relationships: each object in turn picks another at
  random and a coin decides which is the subject; with boxes s, o and centers c_s, c_o: "surrounding" if s
  strictly contains o on all four sides, "inside" if o strictly contains s, else by the angle theta =
  atan2(dy, dx) of c_s - c_o (y down): "left of" if theta >= 3pi/4 or theta <= -3pi/4, "above" if -3pi/4 <=
  theta < -pi/4, "right of" if -pi/4 <= theta < pi/4, "below" if pi/4 <= theta < 3pi/4; a center is the mean
  position of the object's mask inside its box, or the box center when that is empty.

Where this converter differs from sg2im: the relationships are drawn once, at conversion, from a generator
seeded by (--seed, image id), not anew at every epoch; a draw that repeats an earlier (subject, predicate,
object) of the image is dropped and counted (the graph format refuses repeats); mask centers are taken over
the mask at full resolution (sg2im resamples the box's crop of the mask to 16 x 16 first), so an object whose
center lies within about a sixteenth of the box of a 45-degree boundary may get the neighbouring predicate;
a polygon covers the pixels whose centers lie inside it (even-odd rule), not pycocotools' rasteriser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.dataset.common import (
    MAX_COORD,
    MAX_ID,
    MAX_IMAGE_SIDE,
    DropTable,
    JobResult,
    Plan,
    UnreadableImage,
    bad_source,
    clip_boxes,
    context,
    finish_record,
    is_int,
    is_number,
    load_frame,
    load_source_json,
    unreadable_error,
)
from sg2v.dataset.options import CocoOptions, OptionError
from sg2v.errors import DatasetError
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab

FIX = ("download annotations_trainval2017.zip and stuff_annotations_trainval2017.zip from cocodataset.org "
       "and unpack them into SOURCE (see google/sg2im scripts/download_coco.sh)")
PREDICATES = [IN_IMAGE_PRED, "left of", "right of", "above", "below", "inside", "surrounding"]
OTHER = "other"
MAX_CATEGORY_ID = 65535  # COCO-Stuff's highest is 183; the vocabulary has one slot per id up to the highest
MAX_POLYGONS = 1000  # polygons of one annotation (COCO's have a few, at most a few dozen)
MAX_POLYGON_POINTS = 1 << 14  # points of one annotation's polygons together (COCO's have hundreds at most)
_ROW_EDGE_CHUNK = 1 << 20  # (rows x edges) cells rasterised at once: bounded memory for any polygon


# ---------------------------------------------------------------------------------------------------- masks
class MaskError(ValueError):
    """A segmentation that cannot be decoded."""


def rle_string_counts(s: str) -> list[int]:
    """Counts of a compressed COCO RLE string (cocoapi maskApi.c rleFrString, see the module note)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise MaskError("RLE string ends inside a count")
            if k >= 13:  # 13 characters hold 65 bits: no count of a real mask is that long
                raise MaskError("RLE string holds a count longer than 64 bits")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise MaskError(f"RLE string has a character {s[p]!r} outside '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts: list[int], h: int, w: int) -> NDArray[Any]:
    """Uncompressed RLE counts -> bool mask (h, w); runs of 0 and 1 alternate over column-major pixels.
    The counts are checked (each an integer in [0, h w], as many as h w + 1 at most, summing to h w) before
    anything of their size is allocated."""
    if len(counts) > h * w + 1:
        raise MaskError(f"{len(counts)} RLE counts, more than the {h} x {w} mask has pixels")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= h * w for v in counts):
        raise MaskError(f"RLE counts must be integers in [0, {h * w}] (the mask's pixels)")
    if sum(counts) != h * w:
        raise MaskError(f"RLE counts sum to {sum(counts)}, the mask has {h} x {w} = {h * w} pixels")
    c = np.asarray(counts, dtype=np.int64)
    values = (np.arange(len(c)) % 2).astype(bool)
    mask: NDArray[Any] = np.repeat(values, c).reshape(w, h).T
    return mask


def polygons_mask(polys: list[Any], h: int, w: int) -> NDArray[Any]:
    """Union of polygons [x0, y0, x1, y1, ...] on an (h, w) grid: the pixels whose centers lie inside.
    At most MAX_POLYGONS polygons of MAX_POLYGON_POINTS points together; rasterised in chunks of edges."""
    if len(polys) > MAX_POLYGONS:
        raise MaskError(f"{len(polys)} polygons in one segmentation, more than {MAX_POLYGONS}")
    points = 0
    for poly in polys:
        if not isinstance(poly, list) or len(poly) % 2:
            raise MaskError("a polygon must be a list of (x, y) number pairs")
        points += len(poly) // 2
        if points > MAX_POLYGON_POINTS:
            raise MaskError(f"polygons of more than {MAX_POLYGON_POINTS} points in one segmentation")
        if not all(is_number(v) for v in poly):
            raise MaskError(f"a polygon must be a list of (x, y) number pairs within +-{MAX_COORD:g}")
    mask = np.zeros((h, w), dtype=bool)
    yc = np.arange(h, dtype=np.float64)[:, None] + 0.5  # (H, 1) pixel-center rows
    chunk = max(1, _ROW_EDGE_CHUNK // max(h, 1))
    for poly in polys:
        if len(poly) < 6:  # fewer than 3 points (COCO has a few): no area
            continue
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        ends = np.roll(pts, -1, axis=0)
        toggles = np.zeros((h, w + 1), dtype=np.int32)
        for lo in range(0, len(pts), chunk):
            (x0, y0), (x1, y1) = pts[lo:lo + chunk].T, ends[lo:lo + chunk].T  # edges (E,)
            crosses = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))  # (H, E)
            with np.errstate(divide="ignore", invalid="ignore"):
                xc = x0 + (yc - y0) / (y1 - y0) * (x1 - x0)  # (H, E) where an edge crosses a row's centers
            first = np.clip(np.floor(xc - 0.5) + 1, 0, w)  # first pixel whose center is right of the crossing
            rows, cols = np.nonzero(crosses)
            np.add.at(toggles, (rows, first[rows, cols].astype(np.int64)), 1)
        mask |= (np.cumsum(toggles, axis=1)[:, :w] % 2).astype(bool)
    return mask


def segmentation_mask(seg: Any, h: int, w: int) -> NDArray[Any]:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> bool mask (h, w)."""
    if isinstance(seg, list):
        return polygons_mask(seg, h, w)
    if isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2
                and all(is_int(v, 1, MAX_IMAGE_SIDE) for v in size)):
            raise MaskError(f"an RLE needs \"size\": [height, width], each in 1..{MAX_IMAGE_SIDE}")
        rh, rw = size
        if (rh, rw) != (h, w):  # checked first: the counts are then bounded by the image's pixels
            raise MaskError(f"RLE size {rh} x {rw} differs from the image's {h} x {w}")
        counts = seg["counts"]
        if isinstance(counts, str):
            if len(counts) > 13 * (h * w + 1):
                raise MaskError("RLE string longer than any count of the image's pixels needs")
            counts = rle_string_counts(counts)
        elif not isinstance(counts, list):
            raise MaskError("RLE counts must be a string or a list of integers")
        return rle_decode(counts, rh, rw)
    raise MaskError("segmentation must be a list of polygons or an RLE object")


def mask_center(mask: NDArray[Any], bbox: list[float], w: int, h: int) -> tuple[float, float] | None:
    """Mean pixel-center position of the mask inside the box's pixel crop, as fractions of (w, h)."""
    x, y, bw, bh = bbox
    x0, x1 = int(round(x)), int(round(x + bw))
    y0, y1 = int(round(y)), int(round(y + bh))
    x1, y1 = max(x0 + 1, x1), max(y0 + 1, y1)
    crop = mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    ys, xs = np.nonzero(crop)
    if len(xs) == 0:
        return None
    return (float(xs.mean()) + max(x0, 0) + 0.5) / w, (float(ys.mean()) + max(y0, 0) + 0.5) / h


def predicate(sbox: NDArray[Any], obox: NDArray[Any], sc: tuple[float, float], oc: tuple[float, float]
              ) -> str:
    """sg2im's geometric predicate of subject box/center vs object box/center (see the module note)."""
    sx0, sy0, sx1, sy1 = sbox
    ox0, oy0, ox1, oy1 = obox
    if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
        return "surrounding"
    if sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
        return "inside"
    theta = math.atan2(sc[1] - oc[1], sc[0] - oc[0])
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if -3 * math.pi / 4 <= theta < -math.pi / 4:
        return "above"
    if -math.pi / 4 <= theta < math.pi / 4:
        return "right of"
    return "below"


# ---------------------------------------------------------------------------------------------------- job
def coco_job(payload: dict[str, Any]) -> JobResult:
    """Decode one image, normalise its boxes, draw its relationships (seeded by --seed and the image id)."""
    ctx = context()
    res = JobResult()
    try:
        frame, (W, H) = load_frame(payload["path"], ctx.height, ctx.width)
    except UnreadableImage as e:
        if not ctx.skip_unreadable:
            raise unreadable_error(str(e)) from None
        res.drops.add("image", "image file cannot be decoded (--skip-unreadable)")
        return res
    if tuple(payload["size"]) != (W, H):
        res.notes.add("image", "decoded size differs from the JSON's; boxes scaled by the decoded size (as "
                               "sg2im's loader does)")
    objs = payload["objects"]
    n = len(objs)
    boxes = np.array([[x / W, y / H, (x + bw) / W, (y + bh) / H] for _, (x, y, bw, bh), _ in objs],
                     dtype=np.float64)  # (n, 4)
    centers = _centers(objs, boxes, W, H, ctx.extra.get("centers", "mask") == "mask", res)
    rels = _draw_relationships(boxes, centers, np.random.default_rng([ctx.seed, int(payload["image_id"])]),
                               res)
    visible = np.ones((n, 1), dtype=bool)
    clipped, visible = clip_boxes(boxes[:, None, :], visible, res.notes)
    record = finish_record({
        "graph": {"objects": [name for name, _, _ in objs], "relationships": rels},
        "has_layout": np.ones(n, dtype=bool),
        "rel_frames": np.ones((len(rels), 1), dtype=bool),
        "source": {"image_id": payload["image_id"], "file": payload["file"]},
    }, clipped, visible)
    res.samples.append((payload["split"], record, frame[None]))
    # counted where the image is written: an image dropped by a filter or unreadable notes none
    res.notes.add("object", "crowd annotation (iscrowd 1) kept as one object, as sg2im does",
                  payload.get("crowd", 0))
    return res


def _centers(objs: list[Any], boxes: NDArray[Any], W: int, H: int, mask: bool, res: JobResult
             ) -> list[Any]:
    """Each object's center for the relationship rule: its mask's centroid (`mask`), else its box's."""
    centers = []
    for (_, bbox, seg), box in zip(objs, boxes):
        c = None
        if mask:
            try:
                c = mask_center(segmentation_mask(seg, H, W), bbox, W, H)
                if c is None:
                    res.notes.add("object", "mask empty inside its box; box center used for relationships")
            except MaskError:
                res.notes.add("object", "segmentation unreadable; box center used for its relationships")
        centers.append(c if c is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    return centers


def _draw_relationships(boxes: NDArray[Any], centers: list[Any], rng: np.random.Generator, res: JobResult
                        ) -> list[list[Any]]:
    """sg2im's relationships: per object, one other object drawn, the direction drawn, the geometric
    predicate; a repeated (subject, predicate, object) is counted and dropped."""
    n = len(boxes)
    rels: list[list[Any]] = []
    seen: set[tuple[int, str, int]] = set()
    for cur in range(n):
        choices = [k for k in range(n) if k != cur]
        if not choices:
            break
        other = choices[int(rng.integers(len(choices)))]
        s, o = (cur, other) if rng.random() > 0.5 else (other, cur)
        p = predicate(boxes[s], boxes[o], centers[s], centers[o])
        if (s, p, o) in seen:
            res.drops.add("relationship", "drawn twice for the image (same subject, predicate, object)")
            continue
        seen.add((s, p, o))
        rels.append([s, p, o])
    return rels


# ---------------------------------------------------------------------------------------------------- plan
def _categories(data: dict[Any, Any], path: Path) -> dict[int, str]:
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise bad_source(path, "categories", "expected a list of {id, name}", FIX)
    out: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not (isinstance(c, dict) and is_int(c.get("id"), -MAX_ID, MAX_ID)
                and isinstance(c.get("name"), str)):
            raise bad_source(path, f"categories[{i}]", "expected {\"id\": integer, \"name\": string}", FIX)
        if not 0 < c["id"] <= MAX_CATEGORY_ID or c["id"] in out:
            raise bad_source(path, f"categories[{i}]", f"id {str(c['id'])[:24]} is not a new id in 1.."
                                                       f"{MAX_CATEGORY_ID}", FIX)
        out[c["id"]] = c["name"]
    return out


def _vocab(things: dict[int, str], stuff: dict[int, str], path: Path) -> Vocab:
    name_to_idx: dict[str, int] = {}
    for cid, name in [*things.items(), *stuff.items()]:
        if name in name_to_idx or name == IMAGE_OBJECT:
            raise DatasetError(f"{path}: category name {name!r} is used twice across the instance and stuff "
                               f"categories; the files do not belong together, {FIX}")
        name_to_idx[name] = cid
    name_to_idx[IMAGE_OBJECT] = 0
    idx_to_name = ["NONE"] * (1 + max(name_to_idx.values()))
    for name, idx in name_to_idx.items():
        idx_to_name[idx] = name
    return Vocab.from_dict({"object_name_to_idx": name_to_idx, "object_idx_to_name": idx_to_name,
                            "pred_name_to_idx": {p: i for i, p in enumerate(PREDICATES)},
                            "pred_idx_to_name": list(PREDICATES)}, where="COCO-Stuff vocabulary")


def _whitelist(text: str, known: set[str], flag: str) -> set[str]:
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = sorted(names - known)
    if unknown:
        raise OptionError(f"{flag}: {', '.join(map(repr, unknown))} not among the categories; use the "
                          "category names of the annotation files")
    return names


def _num4(b: Any) -> bool:
    """A bbox [x, y, w, h]: four finite numbers within +-MAX_COORD, w and h not negative."""
    return isinstance(b, list) and len(b) == 4 and all(is_number(v) for v in b) and b[2] >= 0 and b[3] >= 0


@dataclass
class _Part:
    """One part of COCO (train2017 or val2017): its instance and stuff files read, their categories."""

    src: str
    inst_path: Path
    stuff_path: Path
    inst: Any
    stuff: Any  # None with --no-stuff
    things: dict[int, str]
    stuffs: dict[int, str]


def plan(source: Path, o: CocoOptions, seed: int, frames: int) -> Plan:
    """COCO-Stuff -> Plan (images are one-frame samples; `frames` is not used; relationships are drawn in
    the job, seeded by `seed` and the image id): per part (train2017, val2017), the annotation files and
    their categories (the vocabulary, the same for both), the objects filtered per image, then the images."""
    source = Path(source)
    ann_dir, roots = _check_source(source, o)
    drops, notes = DropTable(), DropTable()
    payloads: list[dict[str, Any]] = []
    vocab = None
    cats_seen: tuple[Any, ...] | None = None
    for src in ("train2017", "val2017"):
        part = _read_part(ann_dir, src, o)
        if vocab is None:
            vocab = _vocab(part.things, part.stuffs, part.inst_path)
            cats_seen = (part.things, part.stuffs)
        elif (part.things, part.stuffs) != cats_seen:
            raise DatasetError(f"{part.inst_path}: its categories differ from train2017's; the annotation "
                               f"files do not belong together, {FIX}")
        images, objects = _index_objects(part, o, drops)
        del part
        payloads += _image_payloads(src, images, objects, roots, o, drops)
    if not payloads and drops.count("image", "image file not found"):
        raise DatasetError(f"no image file found under {' or '.join(map(str, roots))} (looked for "
                           "train2017/FILE and val2017/FILE); unpack train2017.zip and val2017.zip there or "
                           "pass --images-dir")
    return Plan(vocab=vocab, job=coco_job, payloads=payloads, drops=drops, notes=notes,
                source={"format": "coco-stuff", "name": "COCO 2017 + COCO-Stuff" if o.stuff else "COCO 2017",
                        "path": str(source)},
                frames_estimate=len(payloads))


def _check_source(source: Path, o: CocoOptions) -> tuple[Path, list[Path]]:
    """(annotations folder, image roots); the options checked."""
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder; pass the COCO folder holding annotations/ and images/")
    ann_dir = Path(o.annotations_dir) if o.annotations_dir else source / "annotations"
    roots = [Path(o.images_dir)] if o.images_dir else [source / "images", source]
    if not 0 <= o.min_object_size < 1:
        raise OptionError(f"--min-object-size {o.min_object_size}: a fraction of the image in [0, 1)")
    if o.val_images < 0:
        raise OptionError(f"--val-images {o.val_images}: must be >= 0")
    return ann_dir, roots


def _read_part(ann_dir: Path, src: str, o: CocoOptions) -> _Part:
    """instances_SRC.json and (unless --no-stuff) stuff_SRC.json, checked, with their categories."""
    inst_path = ann_dir / f"instances_{src}.json"
    stuff_path = ann_dir / f"stuff_{src}.json"
    if not inst_path.is_file():
        raise DatasetError(f"{inst_path}: not found; {FIX}")
    if o.stuff and not stuff_path.is_file():
        raise DatasetError(f"{stuff_path}: not found; {FIX}, or pass --no-stuff for things only")
    inst = load_source_json(inst_path, "instance annotations", FIX)
    stuff = load_source_json(stuff_path, "stuff annotations", FIX) if o.stuff else None
    for data, path, read in ((inst, inst_path, True), (stuff, stuff_path, o.stuff)):
        if read and not (isinstance(data, dict) and isinstance(data.get("annotations"), list)):
            raise bad_source(path, "top level", "expected a COCO object with \"images\", \"annotations\" "
                                                "and \"categories\"", FIX)
    things = _categories(inst, inst_path)
    stuffs = _categories(stuff, stuff_path) if stuff is not None else {}
    return _Part(src, inst_path, stuff_path, inst, stuff, things, stuffs)


@dataclass
class _ImageObjects:
    """A part's kept objects per image (name, bbox, segmentation or None), crowd counts, stuff images."""

    objects: dict[int, list[Any]]
    crowd: dict[int, int] = field(default_factory=dict)  # crowd annotations kept (noted where written)
    with_stuff: set[int] = field(default_factory=set)


def _index_objects(part: _Part, o: CocoOptions, drops: DropTable
                   ) -> tuple[dict[int, tuple[str, tuple[int, int]]], _ImageObjects]:
    """The part's images and, per image, the annotations that pass the object filters."""
    thing_ok = _whitelist(o.instance_whitelist, set(part.things.values()), "--instance-whitelist") \
        or set(part.things.values())
    stuff_ok = _whitelist(o.stuff_whitelist, set(part.stuffs.values()), "--stuff-whitelist") \
        or set(part.stuffs.values())
    names = {**part.things, **part.stuffs}
    images = _images(part.inst, part.inst_path)
    out = _ImageObjects({iid: [] for iid in images})
    for data, path, is_stuff in ((part.inst, part.inst_path, False), (part.stuff, part.stuff_path, True)):
        if data is None:
            continue
        for j, ann in enumerate(data["annotations"]):
            _check_annotation(ann, path, j)
            iid = ann["image_id"]
            if iid not in images:
                drops.add("object", "annotation of an image id not in the images list")
                continue
            if is_stuff:
                out.with_stuff.add(iid)
            name = names.get(ann["category_id"])
            why = _object_drop(ann, name, is_stuff, images[iid][1], stuff_ok if is_stuff else thing_ok, o)
            if why:
                drops.add("object", why)
                continue
            seg = ann.get("segmentation") if o.centers == "mask" else None
            out.objects[iid].append((name, [float(v) for v in ann["bbox"]], seg))
            out.crowd[iid] = out.crowd.get(iid, 0) + bool(ann.get("iscrowd"))
    return images, out


def _check_annotation(ann: Any, path: Path, j: int) -> None:
    """An annotation has integer image_id and category_id and a bbox [x, y, w, h] of finite numbers."""
    if not (isinstance(ann, dict) and is_int(ann.get("image_id"), -MAX_ID, MAX_ID)
            and is_int(ann.get("category_id"), -MAX_ID, MAX_ID) and _num4(ann.get("bbox"))):
        raise bad_source(path, f"annotations[{j}]", "expected image_id, category_id (integers) and bbox "
                                                    f"[x, y, w, h] (finite, within +-{MAX_COORD:g}, w and h "
                                                    ">= 0)", FIX)


def _object_drop(ann: dict[Any, Any], name: str | None, is_stuff: bool, size: tuple[int, int], ok: set[str],
                 o: CocoOptions) -> str:
    """Why an annotation is not kept as an object, or "" when it is."""
    _, _, bw, bh = ann["bbox"]
    W, H = size
    if name is None:
        return "category id not in the categories"
    if not bw * bh / (W * H) > o.min_object_size:
        return f"box covers no more than --min-object-size ({o.min_object_size}) of the image"
    if name not in ok:
        return "category not in --instance-whitelist / --stuff-whitelist"
    if name == OTHER and is_stuff and not o.include_other:
        return "stuff class 'other' (--include-other keeps it)"
    if ann.get("iscrowd") and o.skip_crowd:
        return "crowd annotation (--skip-crowd)"
    return ""


def _image_payloads(src: str, images: dict[int, tuple[str, tuple[int, int]]], objects: _ImageObjects,
                    roots: list[Path], o: CocoOptions, drops: DropTable) -> list[dict[str, Any]]:
    """One payload per image of the part that passes the image filters (images list order); val2017's
    first --val-images form val, the rest test."""
    payloads = []
    n_val = 0
    for iid, (file_name, size) in images.items():
        if not _image_kept(iid, objects, o, drops):
            continue
        image_path = next((p for root in roots for p in (root / src / file_name, root / file_name)
                           if p.is_file()), None)
        if image_path is None:
            drops.add("image", "image file not found")
            continue
        split = "train" if src == "train2017" else "val" if n_val < o.val_images else "test"
        n_val += split != "train"
        payloads.append({"split": split, "unit": "image", "image_id": iid, "file": f"{src}/{file_name}",
                         "path": str(image_path), "size": size, "objects": objects.objects[iid],
                         "crowd": objects.crowd.get(iid, 0)})
    return payloads


def _image_kept(iid: int, objects: _ImageObjects, o: CocoOptions, drops: DropTable) -> bool:
    """--all-images and the objects-per-image limits; a drop counted when the image is not kept."""
    if o.stuff and o.stuff_only and iid not in objects.with_stuff:
        drops.add("image", "no stuff annotation (--all-images keeps such images)")
        return False
    n = len(objects.objects[iid])
    if n < o.min_objects_per_image:
        drops.add("image", f"fewer than --min-objects-per-image ({o.min_objects_per_image}) objects left")
        return False
    if n > o.max_objects_per_image:
        drops.add("image", f"more than --max-objects-per-image ({o.max_objects_per_image}) objects left")
        return False
    return True


def _images(data: dict[Any, Any], path: Path) -> dict[int, tuple[str, tuple[int, int]]]:
    images = data.get("images")
    if not isinstance(images, list):
        raise bad_source(path, "images", "expected a list of {id, file_name, width, height}", FIX)
    out: dict[int, tuple[str, tuple[int, int]]] = {}
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and is_int(im.get("id")) and isinstance(im.get("file_name"), str)
                and is_int(im.get("width"), 1, MAX_IMAGE_SIDE)
                and is_int(im.get("height"), 1, MAX_IMAGE_SIDE)):
            raise bad_source(path, f"images[{i}]", "expected id (an integer >= 0), file_name, width and "
                                                   f"height (integers in 1..{MAX_IMAGE_SIDE})", FIX)
        if "/" in im["file_name"] or "\\" in im["file_name"] or im["file_name"] in ("", ".", ".."):
            raise bad_source(path, f"images[{i}]", f"file_name {im['file_name']!r} is not a plain file name",
                             FIX)
        out.setdefault(im["id"], (im["file_name"], (im["width"], im["height"])))
    return out
