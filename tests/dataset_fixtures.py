"""Small data sets in the exact formats `sg2v-data convert` reads, with the real files' irregularities.

Each writer returns a dict of facts the tests check the conversion against (kept samples, drop counts, boxes).
Frames are solid colors (one per image / frame, `color(i)`), so a converted frame must be exactly (PNG) or
nearly (JPEG) that color whatever the resize filter. `python tests/dataset_fixtures.py OUT` writes all four
under OUT; `bench/data_convert.py` writes a larger Visual Genome one with `write_vg_scaled`.

Formats, as their sources document them (see the module notes in sg2v/dataset/*.py):
- Visual Genome 1.4: image_data.json, objects.json, relationships.json, attributes.json, object_alias.txt,
  relationship_alias.txt, images/VG_100K{,_2}/ID.jpg; sg2im's vg_splits.json form for the split file.
- COCO 2017 + COCO-Stuff: annotations/instances_{train,val}2017.json, annotations/stuff_{train,val}2017.json,
  images/{train,val}2017/FILE.jpg; polygons, uncompressed RLE (crowd) and compressed RLE strings (stuff).
- Action Genome v1.0: annotations/{person_bbox.pkl, object_bbox_and_relationship.pkl, frame_list.txt,
  object_classes.txt, relationship_classes.txt}, frames/VIDEO.mp4/NNNNNN.png.
- folder: NAME.json (+ layout) beside NAME.mp4, NAME/ frames or NAME.png.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def color(i: int) -> tuple[int, int, int]:
    """A distinct solid color per index (away from 0/255 so JPEG rounding cannot clip)."""
    return (20 + (i * 47) % 200, 20 + (i * 89) % 200, 20 + (i * 131) % 200)


def solid(path: Path, w: int, h: int, i: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color(i)).save(path, format=fmt, quality=95) if fmt == "JPEG" else \
        Image.new("RGB", (w, h), color(i)).save(path, format=fmt)


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- VG
def _vg_obj(oid: int, names: list[str] | str, x: int, y: int, w: int, h: int, merged=()) -> dict:
    obj = {"object_id": oid, "x": x, "y": y, "w": w, "h": h, "synsets": [], "merged_object_ids": list(merged)}
    if isinstance(names, str):
        obj["name"] = names  # older records name an object by "name"
    else:
        obj["names"] = names
    return obj


def _vg_rel(rid: int, s: dict | int, pred: str, o: dict | int, name_key: str = "name") -> dict:
    def end(x):
        if isinstance(x, int):
            return {"object_id": x, "x": 0, "y": 0, "w": 1, "h": 1, name_key: "ghost" if name_key == "name"
                    else ["ghost"], "synsets": []}
        e = {k: x[k] for k in ("object_id", "x", "y", "w", "h")}
        names = x.get("names") or [x.get("name")]
        e.update({name_key: names[0] if name_key == "name" else names, "synsets": []})
        return e

    return {"relationship_id": rid, "predicate": pred, "synsets": [], "subject": end(s), "object": end(o)}


def write_vg(root: Path) -> dict[str, Any]:
    """Visual Genome 1.4 files for 10 images; convert with --min-object-instances 2
    --min-relationship-instances 2 and --splits-json ROOT/vg_splits.json."""
    root = Path(root)
    images, objects, rels, attrs = [], [], [], []

    def image(iid, w, h, folder="VG_100K", write=True, key="image_id"):
        images.append({key: iid, "url": f"https://cs.stanford.edu/people/rak248/{folder}/{iid}.jpg",
                       "width": w, "height": h, "coco_id": None, "flickr_id": None})
        if write:
            solid(root / "images" / folder / f"{iid}.jpg", w, h, iid, "JPEG")

    # image 1 (train, 320 x 240): alias variants, "name" vs "names", a tiny object, a rare name, a box past
    # the right edge; relationships: kept, an aliased repeat, a dangling subject id, a subject that is
    # dropped, a rare predicate, a self-relation, kept.
    image(1, 320, 240)
    man, shirt = _vg_obj(101, ["men"], 10, 20, 100, 150), _vg_obj(102, ["shirt"], 40, 50, 60, 60)
    tree, cup = _vg_obj(103, "tree", 200, 10, 150, 200), _vg_obj(104, ["cup"], 5, 5, 20, 40)
    blob = _vg_obj(105, ["blob"], 100, 100, 50, 50)
    objects.append({"image_id": 1, "objects": [man, shirt, tree, cup, blob]})
    rels.append({"image_id": 1, "relationships": [
        _vg_rel(1, man, "Wearing ", shirt), _vg_rel(2, man, "wears", shirt, "names"),
        _vg_rel(3, 999, "near", tree),
        _vg_rel(4, cup, "near", man), _vg_rel(5, tree, "behind", man), _vg_rel(6, man, "near", man),
        _vg_rel(7, tree, "near", man),
        _vg_rel(19, cup, "under", tree)]})  # only between a dropped cup and a tree: not a predicate drop
    # image 2 (train, "id" instead of "image_id" in image_data.json): three objects, three relationships
    image(2, 300, 250, key="id")
    m2, s2, t2 = _vg_obj(201, ["guy"], 0, 0, 100, 200), _vg_obj(202, ["shirt"], 20, 40, 50, 60), \
        _vg_obj(203, ["trees"], 150, 0, 100, 240)
    objects.append({"image_id": 2, "objects": [m2, s2, t2]})
    rels.append({"image_id": 2, "relationships": [_vg_rel(8, m2, "wearing", s2), _vg_rel(9, t2, "near", m2),
                                                  _vg_rel(10, m2, "NEAR", t2, "names")]})
    # image 3 (train): shorter side 150 < 200; its two cups must not reach the vocabulary
    image(3, 150, 300)
    objects.append({"image_id": 3, "objects": [_vg_obj(301, ["cup"], 0, 0, 50, 50),
                                               _vg_obj(302, ["cup"], 60, 60, 50, 50)]})
    rels.append({"image_id": 3, "relationships": [_vg_rel(11, 301, "near", 302)]})
    # image 4 (val): two objects only
    image(4, 400, 300)
    objects.append({"image_id": 4, "objects": [_vg_obj(401, ["man"], 0, 0, 100, 100),
                                               _vg_obj(402, ["shirt"], 10, 10, 50, 50)]})
    rels.append({"image_id": 4, "relationships": [_vg_rel(12, 401, "wearing", 402)]})
    # image 5 (test): its only relationship has a predicate outside the vocabulary
    image(5, 320, 240)
    objs5 = [_vg_obj(501, ["man"], 0, 0, 100, 100), _vg_obj(502, ["shirt"], 10, 10, 50, 50),
             _vg_obj(503, ["tree"], 150, 0, 100, 200)]
    objects.append({"image_id": 5, "objects": objs5})
    rels.append({"image_id": 5, "relationships": [_vg_rel(13, 501, "flying", 503)]})
    # image 6 (val): file missing on disk
    image(6, 320, 240, write=False)
    objects.append({"image_id": 6, "objects": [_vg_obj(601, ["man"], 0, 0, 100, 100),
                                               _vg_obj(602, ["shirt"], 10, 10, 50, 50),
                                               _vg_obj(603, ["tree"], 150, 0, 100, 200)]})
    rels.append({"image_id": 6, "relationships": [_vg_rel(14, 601, "wearing", 602)]})
    # image 7 (test, in VG_100K_2): kept; relationship endpoint 799 is merged into 703
    image(7, 320, 240, folder="VG_100K_2")
    objects.append({"image_id": 7, "objects": [_vg_obj(701, ["man"], 0, 0, 100, 100),
                                               _vg_obj(702, ["shirt"], 10, 10, 50, 50),
                                               _vg_obj(703, ["tree"], 150, 0, 100, 200, merged=[799])]})
    rels.append({"image_id": 7, "relationships": [_vg_rel(15, 701, "wearing", 702),
                                                  _vg_rel(16, 799, "near", 701)]})
    # image 8: not in the split file
    image(8, 320, 240)
    objects.append({"image_id": 8, "objects": []})
    rels.append({"image_id": 8, "relationships": []})
    # image 10 (val): kept
    image(10, 256, 256)
    objects.append({"image_id": 10, "objects": [_vg_obj(1001, ["man"], 30, 40, 64, 128),
                                                _vg_obj(1002, ["shirt"], 40, 60, 40, 40),
                                                _vg_obj(1003, ["tree"], 128, 0, 128, 256)]})
    rels.append({"image_id": 10, "relationships": [_vg_rel(17, 1001, "wearing", 1002),
                                                   _vg_rel(18, 1003, "near", 1001)]})
    for entry in objects:
        attrs.append({"image_id": entry["image_id"], "attributes": [
            {**o, "attributes": ["blue"]} for o in entry["objects"][:1]]})
    _dump(root / "image_data.json", images)
    _dump(root / "objects.json", objects)
    _dump(root / "relationships.json", rels)
    _dump(root / "attributes.json", attrs)
    (root / "object_alias.txt").write_text("man,men,guy\ntree,trees\n", encoding="utf-8")
    (root / "relationship_alias.txt").write_text("wearing,wears\n", encoding="utf-8")
    _dump(root / "vg_splits.json", {"train": [1, 2, 3], "val": [4, 6, 10], "test": [5, 7, 9999]})
    return {
        "vocab_objects": ["__image__", "man", "shirt", "tree"],
        "vocab_preds": ["__in_image__", "wearing", "near"],
        "samples": {"train": [1, 2], "val": [10], "test": [7]},
        "image1": {"objects": ["man", "shirt", "tree"], "relationships": [[0, "wearing", 1], [2, "near", 0]],
                   "boxes": [[10 / 320, 20 / 240, 110 / 320, 170 / 240],
                             [40 / 320, 50 / 240, 100 / 320, 110 / 240],
                             [200 / 320, 10 / 240, 1.0, 210 / 240]]},
        "drops": {
            ("image", "in image_data.json but not in --splits-json"): 1,
            ("image", "listed in --splits-json but not in image_data.json"): 1,
            ("image", "shorter side under --min-image-size (200 px)"): 1,
            ("object", "narrower or shorter than --min-object-size (32 px)"): 1,
            ("image", "fewer than --min-objects-per-image (3) objects left"): 1,
            ("image", "fewer than --min-relationships-per-image (1) relationships left"): 1,
            ("image", "image file not found"): 1,
            ("relationship", "subject and object are the same object"): 1,
            ("relationship", "repeats a (subject, predicate, object) of the image"): 1,
            ("relationship", "subject id is not among the image's objects in objects.json"): 2,
            ("relationship", "subject is an object that was dropped (narrower or shorter than "
                             "--min-object-size)"): 2,
        },
        "colors": {1: color(1), 2: color(2), 7: color(7), 10: color(10)},
    }


def write_vg_scaled(root: Path, n_images: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> None:
    """A larger Visual Genome 1.4 fixture for timing: noisy JPEGs, 8 objects and 6 relationships each."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ["man", "shirt", "tree", "car", "window", "sign", "building", "sky", "grass", "dog"]
    preds = ["on", "near", "wearing", "behind", "has"]
    w, h = size
    images, objects, rels = [], [], []
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i in range(1, n_images + 1):
        images.append({"image_id": i, "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg",
                       "width": w, "height": h, "coco_id": None, "flickr_id": None})
        p = root / "images" / "VG_100K" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(p, quality=90)
        objs = []
        for k in range(8):
            bw, bh = int(rng.integers(w // 10, w // 4)) + 1, int(rng.integers(h // 10, h // 4)) + 1
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            objs.append(_vg_obj(i * 100 + k, [names[int(rng.integers(len(names)))]], x, y, bw, bh))
        objects.append({"image_id": i, "objects": objs})
        rels.append({"image_id": i, "relationships": [
            _vg_rel(i * 100 + k, objs[k], preds[int(rng.integers(len(preds)))], objs[k + 1])
            for k in range(6)]})
    _dump(root / "image_data.json", images)
    _dump(root / "objects.json", objects)
    _dump(root / "relationships.json", rels)
    (root / "object_alias.txt").write_text("man,men\n", encoding="utf-8")
    (root / "relationship_alias.txt").write_text("wearing,wears\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- COCO
def rle_string(counts: list[int]) -> str:
    """Compressed COCO RLE string of `counts` (the encoding cocoapi maskApi.c rleToString documents)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if ch & 0x10 else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_counts(mask: np.ndarray) -> list[int]:
    """Runs of 0 and 1 (starting with 0) over a bool mask (h, w) in column-major order."""
    flat = mask.T.reshape(-1).astype(np.int8)
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def _rect_mask(w: int, h: int, x: int, y: int, bw: int, bh: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y:y + bh, x:x + bw] = True
    return m


def write_coco(root: Path) -> dict[str, Any]:
    """COCO 2017 + COCO-Stuff files: 4 train2017 and 3 val2017 images; convert with --val-images 1."""
    root = Path(root)
    things = [{"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "vehicle", "id": 3, "name": "car"},
              {"supercategory": "vehicle", "id": 5, "name": "airplane"}]  # ids with gaps, as COCO's
    stuff_cats = [{"supercategory": "sky", "id": 157, "name": "sky-other"},
                  {"supercategory": "plant", "id": 124, "name": "grass"},
                  {"supercategory": "other", "id": 183, "name": "other"}]
    ann_id = [0]

    def poly(iid, cid, x, y, w, h, crowd=0, W=None, H=None):
        ann_id[0] += 1
        seg: Any = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        if crowd:
            seg = {"counts": rle_counts(_rect_mask(W, H, x, y, w, h)), "size": [H, W]}
        return {"id": ann_id[0], "image_id": iid, "category_id": cid, "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": crowd, "segmentation": seg}

    def stuff(iid, cid, x, y, w, h, W, H):
        ann_id[0] += 1
        seg = {"counts": rle_string(rle_counts(_rect_mask(W, H, x, y, w, h))), "size": [H, W]}
        return {"id": ann_id[0], "image_id": iid, "category_id": cid, "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": 0, "segmentation": seg}

    def img(iid, w, h, split, write=True):
        name = f"{iid:012d}.jpg"
        if write:
            solid(root / "images" / split / name, w, h, iid, "JPEG")
        return {"id": iid, "file_name": name, "width": w, "height": h, "license": 1}

    train_images = [img(1, 200, 100, "train2017"), img(2, 100, 100, "train2017"),
                    img(3, 100, 100, "train2017"), img(4, 100, 100, "train2017")]
    inst = [poly(1, 1, 10, 10, 50, 80), poly(1, 3, 120, 40, 70, 50),
            poly(1, 1, 70, 5, 40, 90, crowd=1, W=200, H=100),
            poly(1, 3, 0, 0, 5, 5),  # 25 / 20000 of the image: too small
            poly(2, 1, 0, 0, 50, 50), poly(2, 3, 50, 50, 50, 50), poly(2, 5, 10, 60, 30, 30),  # no stuff
            *[poly(3, 1, 10 * k, 10 * k, 20, 20) for k in range(9)],  # image 3: 9 objects
            poly(4, 1, 0, 0, 50, 50),
            poly(3, 1, 60, 0, 40, 50, crowd=1, W=100, H=100),  # a crowd in an image dropped: not noted
            poly(999, 1, 0, 0, 50, 50)]  # an image id not in the images list
    stuff_train = [stuff(1, 157, 0, 0, 200, 50, 200, 100), stuff(1, 124, 0, 50, 200, 50, 200, 100),
                   stuff(1, 183, 0, 0, 200, 100, 200, 100),  # 'other': dropped by default
                   stuff(3, 124, 0, 50, 100, 50, 100, 100), stuff(4, 124, 0, 50, 100, 50, 100, 100)]
    val_images = [img(11, 120, 90, "val2017"), img(12, 120, 90, "val2017", write=False),
                  img(13, 120, 90, "val2017"), img(14, 120, 90, "val2017")]
    inst_val, stuff_val = [], []
    for iid in (11, 12, 13, 14):
        inst_val += [poly(iid, 1, 5, 5, 40, 60), poly(iid, 3, 60, 30, 50, 40)]
        stuff_val += [stuff(iid, 157, 0, 0, 120, 30, 120, 90)]
    head = {"info": {"description": "fixture"}, "licenses": [{"id": 1, "name": "x"}]}
    ann = root / "annotations"
    _dump(ann / "instances_train2017.json", {**head, "images": train_images, "annotations": inst,
                                             "categories": things})
    _dump(ann / "stuff_train2017.json", {**head, "images": train_images, "annotations": stuff_train,
                                         "categories": stuff_cats})
    _dump(ann / "instances_val2017.json", {**head, "images": val_images, "annotations": inst_val,
                                           "categories": things})
    _dump(ann / "stuff_val2017.json", {**head, "images": val_images, "annotations": stuff_val,
                                       "categories": stuff_cats})
    return {
        "samples": {"train": [1], "val": [11], "test": [13, 14]},
        "image1": {"objects": ["person", "car", "person", "sky-other", "grass"],
                   "boxes_px": [[10, 10, 60, 90], [120, 40, 190, 90], [70, 5, 110, 95], [0, 0, 200, 50],
                                [0, 50, 200, 100]], "size": (200, 100)},
        "drops": {
            ("object", "box covers no more than --min-object-size (0.02) of the image"): 1,
            ("object", "stuff class 'other' (--include-other keeps it)"): 1,
            ("object", "annotation of an image id not in the images list"): 1,
            ("image", "no stuff annotation (--all-images keeps such images)"): 1,
            ("image", "more than --max-objects-per-image (8) objects left"): 1,
            ("image", "fewer than --min-objects-per-image (3) objects left"): 1,
            ("image", "image file not found"): 1,
        },
        "crowd": 1,
    }


# ---------------------------------------------------------------------------------------------------- AG
AG_OBJECTS = ["person", "bag", "bed", "blanket", "book", "box", "broom", "chair", "closetcabinet", "clothes",
              "cupglassbottle", "dish", "door", "doorknob", "doorway", "floor", "food", "groceries", "laptop",
              "light", "medicine", "mirror", "papernotebook", "phonecamera", "picture", "pillow",
              "refrigerator", "sandwich", "shelf", "shoe", "sofacouch", "table", "television", "towel",
              "vacuum", "window"]
AG_RELATIONS = ["lookingat", "notlookingat", "unsure", "above", "beneath", "infrontof", "behind",
                "onthesideof", "in", "carrying", "coveredby", "drinkingfrom", "eating", "haveitontheback",
                "holding", "leaningon", "lyingon", "notcontacting", "otherrelationship", "sittingon",
                "standingon", "touching", "twisting", "wearing", "wiping", "writingon"]
AG_SIZE = (96, 54)  # (w, h) of the fixture's frames; Charades 480p frames are e.g. 480 x 270


def _person(boxes: list[list[float]], scores: list[float] | None = None) -> dict:
    k = len(boxes)
    return {"bbox": np.array(boxes, dtype=np.float32).reshape(k, 4),
            "bbox_score": np.array(scores if scores is not None else [0.9] * k, dtype=np.float32),
            "bbox_size": AG_SIZE, "bbox_mode": "xyxy",
            "keypoints": np.zeros((k, 17, 3), dtype=np.float32),
            "keypoints_logits": np.zeros((k, 17), dtype=np.float32)}


def _ag_obj(video: str, frame: str, cls: str, bbox: tuple | None, att=None, spa=None, con=None,
            split: str = "train", numpy_values: bool = False) -> dict:
    visible: Any = bbox is not None
    if numpy_values and bbox is not None:  # some entries hold NumPy values: an array box, a NumPy bool
        bbox, visible = np.array(bbox, dtype=np.float32), np.bool_(True)
    return {"class": cls, "bbox": bbox, "attention_relationship": att if visible else None,
            "spatial_relationship": spa if visible else None,
            "contacting_relationship": con if visible else None,
            "metadata": {"tag": f"{video}/{cls.replace('/', '_')}/{frame[:-4]}", "set": split},
            "visible": visible}


def write_ag(root: Path) -> dict[str, Any]:
    """Action Genome files for 4 videos (+ stray entries); convert with --frames 2 --val-fraction 0.5."""
    root = Path(root)
    person: dict[str, dict] = {}
    objects: dict[str, list] = {}
    frame_list: list[str] = []
    counter = [0]

    def frame(video, name, person_boxes, objs, write=True, listed=True, scores=None):
        key = f"{video}/{name}"
        person[key] = _person(person_boxes, scores)
        objects[key] = objs
        if listed:
            frame_list.append(key)
        counter[0] += 1
        if write:
            solid(root / "frames" / video / name, *AG_SIZE, counter[0], "PNG")
        return counter[0]

    v = "AAAA1.mp4"  # train: 5 frames; the sofa is not visible in the third
    colors_a = []
    for t, name in enumerate(["000010.png", "000020.png", "000030.png", "000040.png", "000050.png"]):
        att = ["looking_at"] if t < 3 else ["not_looking_at"]
        sofa = _ag_obj(v, name, "sofa/couch", None) if t == 2 else \
            _ag_obj(v, name, "sofa/couch", (0.0, 30.0, 96.0, 24.0), [], ["beneath"], ["sitting_on"])
        colors_a.append(frame(v, name, [[10.0 + t, 5.0, 40.0 + t, 50.0]], [
            _ag_obj(v, name, "cup/glass/bottle", (50.0 + 2 * t, 20.0, 10.0, 12.0), att, ["in_front_of"],
                    ["holding"]), sofa]))
    v = "BBBB2.mp4"  # train: 000002 missing on disk, 000005 without a person box
    for name in ("000001.png", "000002.png", "000003.png", "000004.png", "000005.png"):
        frame(v, name, [] if name == "000005.png" else [[1.0, 1.0, 30.0, 50.0]],
              [_ag_obj(v, name, "book", (5.0, 5.0, 20.0, 10.0), ["looking_at"], ["in_front_of"],
                       ["holding"])],
              write=name != "000002.png")
    v = "CCCC3.mp4"  # test: the only object of 000007 is not visible; 000008 alone is too short for a clip
    frame(v, "000007.png", [[1.0, 1.0, 30.0, 50.0]], [_ag_obj(v, "000007.png", "laptop", None, split="test")])
    frame(v, "000008.png", [[1.0, 1.0, 30.0, 50.0]],
          [_ag_obj(v, "000008.png", "laptop", (30.0, 30.0, 30.0, 20.0), ["unsure"], [], ["touching"],
                   "test")])
    v = "DDDD4.mp4"  # test: an unknown class, an unknown predicate, two person detections
    for name in ("000100.png", "000101.png"):
        frame(v, name, [[0.0, 0.0, 10.0, 10.0], [20.0, 2.0, 60.0, 52.0]], [
            _ag_obj(v, name, "phone/camera", (60.0, 10.0, 8.0, 8.0), ["looking_at"], ["on_the_side_of"],
                    ["holding", "dancing_with"], "test", numpy_values=True),
            _ag_obj(v, name, "unicorn", (1.0, 1.0, 5.0, 5.0), [], [], [], "test")], scores=[0.3, 0.8])
    frame("EEEE5.mp4", "000001.png", [[1.0, 1.0, 30.0, 50.0]],
          [_ag_obj("EEEE5.mp4", "000001.png", "book", (5.0, 5.0, 20.0, 10.0), [], [], [])], listed=False)
    frame_list.append("FFFF6.mp4/000001.png")  # listed, but in neither pickle
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    with open(ann / "person_bbox.pkl", "wb") as f:
        pickle.dump(person, f, protocol=3)
    with open(ann / "object_bbox_and_relationship.pkl", "wb") as f:
        pickle.dump(objects, f, protocol=3)
    (ann / "frame_list.txt").write_text("\n".join(frame_list) + "\n", encoding="utf-8")
    (ann / "object_classes.txt").write_text("\n".join(AG_OBJECTS) + "\n", encoding="utf-8")
    (ann / "relationship_classes.txt").write_text("\n".join(AG_RELATIONS) + "\n", encoding="utf-8")
    W, H = AG_SIZE
    return {
        "clips": {"AAAA1.mp4": [["000010.png", "000020.png"], ["000030.png", "000040.png"]],
                  "BBBB2.mp4": [["000003.png", "000004.png"]], "DDDD4.mp4": [["000100.png", "000101.png"]]},
        "colors_a": colors_a,
        # clip AAAA1 #2 (frames 000030, 000040): person, cup, sofa (not visible in 000030)
        "clip_a2": {
            "objects": ["person", "cup/glass/bottle", "sofa/couch"],
            "boxes": [[[12 / W, 5 / H, 42 / W, 50 / H], [13 / W, 5 / H, 43 / W, 50 / H]],
                      [[54 / W, 20 / H, 64 / W, 32 / H], [56 / W, 20 / H, 66 / W, 32 / H]],
                      [[0, 0, 0, 0], [0, 30 / H, 1.0, 54 / H]]],
            "visible": [[1, 1], [1, 1], [0, 1]],
            # (subject, predicate, object): spatial relationships say where the object is relative to the
            # person (object -> person), attention and contacting ones what the person does (person -> object)
            "relationships": {(0, "looking at", 1): [1, 0], (1, "in front of", 0): [1, 1],
                              (0, "holding", 1): [1, 1], (0, "not looking at", 1): [0, 1],
                              (2, "beneath", 0): [0, 1], (0, "sitting on", 2): [0, 1]},
        },
        "drops": {
            ("frame", "in the pickles but not in frame_list.txt"): 1,
            ("frame", "in frame_list.txt but missing from person_bbox.pkl or "
                      "object_bbox_and_relationship.pkl"): 1,
            ("frame", "frame file missing on disk"): 1,
            ("frame", "no person box (STTran drops these; --keep-frames-without-person keeps them)"): 1,
            ("frame", "no visible object (STTran drops these; --keep-frames-without-objects keeps them)"): 1,
            ("frame", "in a run of consecutive usable annotated frames shorter than --frames (2)"): 2,
            ("frame", "after the last full clip of its run"): 1,
            ("object annotation", "class not in object_classes.txt"): 2,
            ("relationship", "predicate not in relationship_classes.txt"): 2,
        },
        "person_d": [[20 / W, 2 / H, 60 / W, 52 / H]] * 2,
    }


# ---------------------------------------------------------------------------------------------------- folder
def write_folder(root: Path, mp4: bool = True) -> dict[str, Any]:
    """Recordings: walk.mp4 (10 frames), seq/ (6 PNG frames), still.png; convert with --frames 4."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    walk = {"objects": ["robot arm", "cup", "table", "lamp"],
            "relationships": [[0, "holding", 1], [1, "on", 2]],
            "description": "the arm lifts the cup",
            "layout": {"0": [[0.1, 0.1, 0.3, 0.5]] * 3 + [None] + [[0.2, 0.1, 0.4, 0.5]] * 6,
                       "1": [0.4, 0.5, 0.5, 0.6],
                       "3": {"start": [0.0, 0.0, 0.1, 0.1], "end": [0.9, 0.0, 1.0, 0.1]}}}
    seq = {"objects": ["cup", "table"], "relationships": [[0, "on", 1]],
           "layout": {"0": {"start": [0.0, 0.5, 0.2, 0.7], "end": [0.5, 0.5, 0.7, 0.7]}}}
    still = {"objects": ["lamp", "table"], "relationships": [[0, "on", 1]],
             "layout": {"1": [0.0, 0.6, 1.0, 1.0]}}
    if mp4:
        from sg2v.video import write_video

        frames = np.stack([np.full((48, 64, 3), color(40 + t), np.uint8) for t in range(10)])
        write_video(root / "walk.mp4", frames, fps=8, lossless=True)
        _dump(root / "walk.json", walk)
    for t in range(6):
        solid(root / "seq" / f"frame_{t:03d}.png", 64, 48, 60 + t, "PNG")
    _dump(root / "seq.json", seq)
    solid(root / "still.png", 80, 60, 70, "PNG")
    _dump(root / "still.json", still)
    return {"walk": walk, "seq": seq, "still": still}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    for name, writer in (("vg", write_vg), ("coco", write_coco), ("ag", write_ag), ("folder", write_folder)):
        writer(out / name)
        print(f"wrote {out / name}")
