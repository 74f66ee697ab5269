"""Visual Genome 1.4 (or 1.2) as distributed -> converted data set (images as one-frame clips), sg2im's
preprocessing. The release is detected and recorded in dataset.json's "source": 1.4 lists merged_object_ids
on its objects (its cleaner objects.json, per its readme), 1.2 has none and names relationship endpoints by
"name".

Sources of the facts used here:
- Files and layout: google/sg2im `scripts/download_vg.sh` (objects.json, relationships.json, attributes.json,
  image_data.json, object_alias.txt, relationship_alias.txt from visualgenome.org; images.zip and images2.zip
  unpacked into `images/`, giving `images/VG_100K/ID.jpg` and `images/VG_100K_2/ID.jpg`).
- Record keys: huggingface/datasets `datasets/visual_genome/visual_genome.py` (image_data: image_id, url,
  width, height, coco_id, flickr_id; objects 1.4: object_id, x, y, w, h, names, synsets, merged_object_ids;
  relationships: relationship_id, predicate, synsets, subject / object; per-image records keyed "image_id" in
  some files and "id" in others; the image path is the url's last two parts, VG_100K(_2)/ID.jpg);
  ranjaykrishna/visual_genome_python_driver `visual_genome/utils.py: parse_image_data` ("id" or "image_id").
  Relationship endpoints carry "name" in some releases and "names" in others (loaders that read them test for
  both); this converter identifies endpoints by object_id only, as sg2im does, and reads objects' names from
  "names" (a list) or "name" (a string).
- Preprocessing and its defaults: google/sg2im `scripts/preprocess_vg.py` - images whose shorter side is under
  200 px are removed; aliases: each line of an alias file is comma-separated names, stripped, all mapped to
  the first; the object vocabulary counts, over training images, each object's set of aliased names and keeps
  names with >= 2000 instances (most common first, `__image__` at 0); an object keeps the first of its aliased
  names that is in the vocabulary and is dropped if w or h < 32 px; the predicate vocabulary counts, over
  training images, predicates (lower-cased, stripped, aliased) of relationships whose subject and object were
  both kept, keeps those with >= 500 (in order of first appearance, `__in_image__` at 0); an image is dropped
  with < 3 or > 30 kept objects, or < 1 or > 30 kept relationships; a relationship is dropped when its
  predicate is not in the vocabulary or its subject or object is not a kept object of the image. sg2im's split
  file is `sg2im/data/vg_splits.json` ({"train", "val", "test"}: lists of image ids).
- Boxes: google/sg2im `sg2im/data/vg.py` - [x / W, y / H, (x + w) / W, (y + h) / H] with (W, H) the size of
  the decoded image.

Where this converter differs from sg2im, on purpose: predicates are normalised and aliased in every split
(sg2im's script writes the aliased predicate back only for training relationships it counted, so validation
and test relationships with an aliased or capitalised predicate fail its vocabulary lookup); ties in the
object vocabulary's counts are ordered deterministically (sg2im adds each object's names as a Python set,
whose order depends on the string hash seed); relationships joining an object to itself and repeats of the
same (subject, predicate, object) are dropped and counted (the project's graph format refuses both) before the
per-image relationship limits apply. attributes.json is not read: the graph format has no attributes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sg2v.dataset.common import (
    MAX_COORD,
    MAX_ID,
    MAX_IMAGE_SIDE,
    DropTable,
    Plan,
    bad_source,
    frames_job,
    is_int,
    is_number,
    load_source_json,
    read_lines,
    seeded_split,
)
from sg2v.dataset.format import SPLITS
from sg2v.dataset.options import OptionError, VGOptions
from sg2v.errors import DatasetError
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab

FIX = "download Visual Genome 1.4 from visualgenome.org into SOURCE (see google/sg2im scripts/download_vg.sh)"


def load_aliases(path: Path) -> dict[str, str]:
    """sg2im's alias files: comma-separated names per line, each stripped and mapped to the line's first."""
    aliases: dict[str, str] = {}
    for line in read_lines(path, "alias file", f"{FIX}, or pass --no-aliases"):
        names = [s.strip() for s in line.split(",")]
        for s in names:
            aliases[s] = names[0]
    return aliases


def _image_id(entry: Any, path: Path, i: int) -> int:
    if not isinstance(entry, dict):
        raise bad_source(path, f"[{i}]", f"expected a JSON object per image, got {type(entry).__name__}", FIX)
    iid = entry.get("image_id", entry.get("id"))
    if not isinstance(iid, int) or isinstance(iid, bool):
        raise bad_source(path, f"[{i}]", "no integer \"image_id\" (or \"id\")", FIX)
    return iid


def _list_of(data: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise bad_source(path, "top level", f"expected a JSON list of {what}, got {type(data).__name__}", FIX)
    return data


def _num(v: Any) -> bool:
    """A finite number within +-MAX_COORD pixels (10**30 or 10**400 is not a box coordinate)."""
    return is_number(v, MAX_COORD)


def _object(obj: Any, path: Path, where: str, notes: DropTable) -> tuple[int, list[str], tuple[Any, ...]]:
    """(object_id, names, (x, y, w, h)) of one objects.json object."""
    if not isinstance(obj, dict):
        raise bad_source(path, where, "an object must be a JSON object", FIX)
    oid = obj.get("object_id", obj.get("id"))
    box = tuple(obj.get(k) for k in ("x", "y", "w", "h"))
    if not is_int(oid, -MAX_ID, MAX_ID) or not all(_num(v) for v in box):
        raise bad_source(path, where, "an object needs an integer object_id and numbers x, y, w, h (finite, "
                                      f"within +-{MAX_COORD:g} px)", FIX)
    if "names" in obj:
        names = obj["names"]
    elif "name" in obj:
        names = [obj["name"]]
        notes.add("object", "named by \"name\" (not \"names\"); read as a one-name list")
    else:
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad_source(path, where, "\"names\" must be a list of strings", FIX)
    return oid, names, box


def _endpoint(rel: dict[Any, Any], role: str, path: Path, where: str, naming: Counter[str]) -> int:
    end = rel.get(role)
    oid = end.get("object_id", end.get("id")) if isinstance(end, dict) else None
    if not is_int(oid, -MAX_ID, MAX_ID):
        raise bad_source(path, where, f"relationship {role} has no integer object_id", FIX)
    naming.update(k for k in ("name", "names") if isinstance(end, dict) and k in end)
    return oid


def version(has_merged: bool, naming: Counter[str]) -> str:
    """The release the files are from: 1.4 lists merged_object_ids on its objects (its cleaner objects.json);
    1.2 has none and names relationship endpoints by "name"; anything else is not recognised."""
    if has_merged:
        return "1.4"
    if naming["name"] and not naming["names"]:
        return "1.2"
    return "unrecognised version"


@dataclass
class _Images:
    """image_data.json read and split: id -> (width, height, url), the split lists after --min-image-size."""

    meta: dict[int, tuple[int, int, str]]
    split_ids: dict[str, list[int]]
    split_of: dict[int, str] = field(default_factory=dict)
    train: set[int] = field(default_factory=set)


@dataclass
class _Objects:
    """objects.json read for the split images, then filtered against the object vocabulary."""

    parsed: dict[int, list[tuple[int, list[str], tuple[Any, ...]]]] = field(default_factory=dict)
    merged: dict[int, dict[int, int]] = field(default_factory=dict)  # per image: merged id -> object id
    has_merged: bool = False
    counter: Counter[str] = field(default_factory=Counter)  # aliased names over training objects
    kept: dict[int, list[tuple[int, str, tuple[Any, ...]]]] = field(default_factory=dict)
    dropped: dict[int, dict[int, str]] = field(default_factory=dict)  # per image: dropped id -> why
    kept_ids: set[int] = field(default_factory=set)


@dataclass
class _Relationships:
    """relationships.json read for the split images: (subject id, predicate, object id, as written)."""

    parsed: dict[int, list[tuple[int, str, int, str]]] = field(default_factory=dict)
    pred_counter: dict[str, int] = field(default_factory=dict)  # first appearance order
    naming: Counter[str] = field(default_factory=Counter)  # endpoints named by "name" / "names"


def plan(source: Path, o: VGOptions, seed: int, frames: int) -> Plan:
    """Visual Genome -> Plan (images are one-frame samples; `frames` is not used): the image list and its
    splits, the objects and their vocabulary, the relationships and theirs, then one payload per image."""
    drops, notes = DropTable(), DropTable()
    source = Path(source)
    _check_source(source, o)
    images = _read_images(source, o, seed, drops)
    obj_alias, rel_alias = _aliases(source, o)
    objects = _read_objects(source, o, images, obj_alias, notes)
    in_vocab = _object_names(source / "objects.json", o, objects.counter, len(images.train))
    _filter_objects(o, images, objects, obj_alias, set(in_vocab[1:]), drops)
    rels = _read_relationships(source, o, images, objects, rel_alias, notes)
    vocab = _vocab(source / "relationships.json", o, in_vocab, rels.pred_counter)
    roots = [Path(o.images_dir)] if o.images_dir else [source / "images", source]
    payloads = _payloads(o, images, objects, rels, set(vocab.pred_names), roots, drops)
    release = version(objects.has_merged, rels.naming)
    return Plan(vocab=vocab, job=frames_job, payloads=payloads, drops=drops, notes=notes,
                source={"format": "vg", "name": f"Visual Genome {release}", "version": release,
                        "path": str(source)},
                frames_estimate=len(payloads))


def _check_source(source: Path, o: VGOptions) -> None:
    """The three annotation files exist; the split fractions fit."""
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder; pass the folder holding objects.json, "
                           f"relationships.json and image_data.json ({FIX})")
    for name in ("image_data.json", "objects.json", "relationships.json"):
        if not (source / name).is_file():
            raise DatasetError(f"{source / name}: not found; {FIX}")
    _check_fractions(o.val_fraction, o.test_fraction)


def _image_entry(entry: Any, path: Path, i: int) -> tuple[int, tuple[int, int, str]]:
    """(image id, (width, height, url)) of one image_data.json record, checked."""
    iid = _image_id(entry, path, i)
    w, h, url = entry.get("width"), entry.get("height"), entry.get("url")
    if not (is_int(w, 1, MAX_IMAGE_SIDE) and is_int(h, 1, MAX_IMAGE_SIDE)):
        raise bad_source(path, f"[{i}]", f"width and height must be integers in 1..{MAX_IMAGE_SIDE}", FIX)
    rel = image_file(url if isinstance(url, str) else "", iid)
    if any(p in (".", "..") for p in rel.split("/")):
        raise bad_source(path, f"[{i}]", f"url {str(url)[:120]!r} ends in {rel!r}, which is not a file "
                                         "under the images folder (VG_100K/ID.jpg)", FIX)
    return iid, (w, h, url if isinstance(url, str) else "")


def _read_images(source: Path, o: VGOptions, seed: int, drops: DropTable) -> _Images:
    """image_data.json, its splits (--splits-json or seeded) and the --min-image-size filter."""
    path = source / "image_data.json"
    images: dict[int, tuple[int, int, str]] = {}
    for i, entry in enumerate(_list_of(load_source_json(path, "image list", FIX), path, "images")):
        iid, meta = _image_entry(entry, path, i)
        if iid in images:
            drops.add("image", "image_id repeated in image_data.json")
            continue
        images[iid] = meta
    split_ids = _splits(images, o, seed, drops)
    for split in SPLITS:
        kept = [i for i in split_ids[split] if min(images[i][:2]) >= o.min_image_size]
        drops.add("image", f"shorter side under --min-image-size ({o.min_image_size} px)",
                  len(split_ids[split]) - len(kept))
        split_ids[split] = kept
    split_of = {iid: s for s in SPLITS for iid in split_ids[s]}
    return _Images(images, split_ids, split_of, set(split_ids["train"]))


def _aliases(source: Path, o: VGOptions) -> tuple[dict[str, str], dict[str, str]]:
    """The object and relationship alias maps (empty with --no-aliases)."""
    if not o.aliases:
        return {}, {}
    return load_aliases(source / "object_alias.txt"), load_aliases(source / "relationship_alias.txt")


def _read_objects(source: Path, o: VGOptions, images: _Images, obj_alias: dict[str, str],
                  notes: DropTable) -> _Objects:
    """objects.json for the split images (first entry per image), counting training objects' aliased names."""
    path = source / "objects.json"
    out = _Objects()
    for i, entry in enumerate(_list_of(load_source_json(path, "objects file", FIX), path, "images")):
        iid = _image_id(entry, path, i)
        if iid not in images.split_of or iid in out.parsed:
            continue
        objs = entry.get("objects")
        if not isinstance(objs, list):
            raise bad_source(path, f"[{i}]", "\"objects\" must be a list", FIX)
        parsed = [_object(obj, path, f"[{i}].objects[{j}]", notes) for j, obj in enumerate(objs)]
        out.parsed[iid] = parsed
        out.has_merged = out.has_merged or any("merged_object_ids" in obj for obj in objs)
        if o.resolve_merged_ids:
            out.merged[iid] = _merged_ids(objs)
        if iid in images.train:
            for _, names, _ in parsed:
                out.counter.update(sorted({obj_alias.get(n, n) for n in names}))
    return out


def _object_names(path: Path, o: VGOptions, counter: Counter[str], n_train: int) -> list[str]:
    """The object vocabulary: `__image__`, then names of >= --min-object-instances training objects."""
    object_names = [IMAGE_OBJECT] + [n for n, c in counter.most_common() if c >= o.min_object_instances
                                     and n != IMAGE_OBJECT]
    if len(object_names) == 1:
        raise DatasetError(f"{path}: no object name has --min-object-instances ({o.min_object_instances}) "
                           f"instances in the {n_train} training images; lower it (e.g. for a sample of "
                           "Visual Genome) or check that objects.json matches image_data.json")
    return object_names


def _filter_objects(o: VGOptions, images: _Images, objects: _Objects, obj_alias: dict[str, str],
                    in_vocab: set[str], drops: DropTable) -> None:
    """Per image: keep each object id once, of --min-object-size, with a name in the vocabulary."""
    for iid in images.split_of:
        if iid not in objects.parsed:
            continue
        kept: list[tuple[int, str, tuple[Any, ...]]] = []
        seen: set[int] = set()
        dropped: dict[int, str] = {}
        for oid, names, box in objects.parsed[iid]:
            if oid in seen:
                drops.add("object", "object_id repeated within the image")
                continue
            seen.add(oid)
            final = next((a for a in (obj_alias.get(n, n) for n in names) if a in in_vocab), None)
            why = _object_drop(o, names, box, final, drops)
            if why:
                dropped[oid] = why
            else:
                kept.append((oid, str(final), box))
                objects.kept_ids.add(oid)
        objects.kept[iid] = kept
        objects.dropped[iid] = dropped


def _object_drop(o: VGOptions, names: list[str], box: tuple[Any, ...], final: str | None,
                 drops: DropTable) -> str:
    """Why an object is dropped (counted in `drops`), or "" when it is kept."""
    if box[2] < o.min_object_size or box[3] < o.min_object_size:
        drops.add("object", f"narrower or shorter than --min-object-size ({o.min_object_size} px)")
        return "narrower or shorter than --min-object-size"
    if final is None:
        drops.add("object", "has no name" if not names else "no name in the vocabulary (names with "
                            f"fewer than --min-object-instances ({o.min_object_instances}) training "
                            "objects)")
        return "no name in the vocabulary"
    return ""


def _read_relationships(source: Path, o: VGOptions, images: _Images, objects: _Objects,
                        rel_alias: dict[str, str], notes: DropTable) -> _Relationships:
    """relationships.json for the split images (first entry per image), counting training predicates
    between kept objects."""
    path = source / "relationships.json"
    out = _Relationships()
    for i, entry in enumerate(_list_of(load_source_json(path, "relationships file", FIX), path, "images")):
        iid = _image_id(entry, path, i)
        if iid not in images.split_of or iid in out.parsed:
            continue
        rels = entry.get("relationships")
        if not isinstance(rels, list):
            raise bad_source(path, f"[{i}]", "\"relationships\" must be a list", FIX)
        mmap = objects.merged.get(iid, {})
        listed = {x for x, _, _ in objects.parsed.get(iid, ())}
        out.parsed[iid] = [_relationship(rel, path, f"[{i}].relationships[{j}]", mmap, listed, rel_alias,
                                         out.naming, notes) for j, rel in enumerate(rels)]
        if iid in images.train:
            for sid, pred, oid, _ in out.parsed[iid]:
                if sid in objects.kept_ids and oid in objects.kept_ids:
                    out.pred_counter[pred] = out.pred_counter.get(pred, 0) + 1
    return out


def _relationship(rel: Any, path: Path, where: str, mmap: dict[int, int], listed: set[int],
                  rel_alias: dict[str, str], naming: Counter[str], notes: DropTable
                  ) -> tuple[int, str, int, str]:
    """(subject id, aliased predicate, object id, predicate as written) of one relationship."""
    if not isinstance(rel, dict) or not isinstance(rel.get("predicate"), str):
        raise bad_source(path, where, "a relationship needs a string \"predicate\"", FIX)
    sid, oid = _endpoint(rel, "subject", path, where, naming), _endpoint(rel, "object", path, where, naming)
    if mmap:
        sid, oid = (_resolve_merged(x, mmap, listed, notes) for x in (sid, oid))
    pred = rel["predicate"].lower().strip()
    return sid, rel_alias.get(pred, pred), oid, rel["predicate"]


def _resolve_merged(x: int, mmap: dict[int, int], listed: set[int], notes: DropTable) -> int:
    """--resolve-merged-ids: an endpoint naming a merged (unlisted) object id -> the object that lists it."""
    if x in mmap and x not in listed:
        notes.add("relationship endpoint", "a merged object id; mapped to the object that lists it "
                                           "(--resolve-merged-ids)")
        return mmap[x]
    return x


def _vocab(path: Path, o: VGOptions, object_names: list[str], pred_counter: dict[str, int]) -> Vocab:
    """The vocabulary: the object names and the predicates of >= --min-relationship-instances training
    relationships between kept objects (in order of first appearance)."""
    pred_names = [IN_IMAGE_PRED] + [p for p, c in pred_counter.items() if c >= o.min_relationship_instances
                                    and p != IN_IMAGE_PRED]
    if len(pred_names) == 1:
        raise DatasetError(f"{path}: no predicate has --min-relationship-instances "
                           f"({o.min_relationship_instances}) training relationships between kept objects; "
                           "lower it (e.g. for a sample of Visual Genome)")
    return Vocab.from_dict({
        "object_name_to_idx": {n: i for i, n in enumerate(object_names)},
        "object_idx_to_name": object_names,
        "pred_name_to_idx": {n: i for i, n in enumerate(pred_names)},
        "pred_idx_to_name": pred_names,
    }, where="Visual Genome vocabulary")


def _payloads(o: VGOptions, images: _Images, objects: _Objects, rels: _Relationships, preds: set[str],
              roots: list[Path], drops: DropTable) -> list[dict[str, Any]]:
    """One payload per image that passes the per-image filters, in split order."""
    payloads = []
    for split in SPLITS:
        for iid in images.split_ids[split]:
            payload = _image_payload(iid, split, images.meta[iid], objects, rels.parsed, preds, roots, o,
                                     drops)
            if payload is not None:
                payloads.append(payload)
    if not payloads and drops.count("image", "image file not found"):
        raise DatasetError(f"no image file found under {' or '.join(map(str, roots))} (looked for the "
                           "url's VG_100K/ID.jpg or VG_100K_2/ID.jpg, and ID.jpg); unpack images.zip and "
                           "images2.zip there or pass --images-dir")
    return payloads


def image_file(url: str, iid: int) -> str:
    """The image's path under the images folder: the url's last two parts (VG_100K(_2)/ID.jpg)."""
    parts = [p for p in url.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"VG_100K/{iid}.jpg"


def _check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise OptionError(f"--val-fraction {val} and --test-fraction {test}: each in [0, 1) and together "
                          "below 1, so training keeps some data")


def _splits(images: dict[int, tuple[Any, ...]], o: VGOptions, seed: int, drops: DropTable
            ) -> dict[str, list[int]]:
    split_ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    if not o.splits_json:
        split_of = seeded_split(list(images), seed, o.val_fraction, o.test_fraction)
        for iid in images:  # image_data.json order
            split_ids[split_of[iid]].append(iid)
        return split_ids
    path = Path(o.splits_json)
    fix = "give sg2im's sg2im/data/vg_splits.json, or leave --splits-json out for a seeded split"
    raw = load_source_json(path, "split file", fix)
    if not isinstance(raw, dict) or not set(raw) <= set(SPLITS) or not raw:
        raise DatasetError(f"{path}: a split file maps \"train\", \"val\" and \"test\" to lists of image "
                           f"ids; {fix}")
    listed: set[int] = set()
    for split in SPLITS:
        ids = raw.get(split, [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DatasetError(f"{path}: \"{split}\" must be a list of integer image ids; {fix}")
        for iid in ids:
            if iid in listed:
                drops.add("image", "listed twice in --splits-json (first listing kept)")
            elif iid not in images:
                drops.add("image", "listed in --splits-json but not in image_data.json")
            else:
                listed.add(iid)
                split_ids[split].append(iid)
    drops.add("image", "in image_data.json but not in --splits-json", len(images) - len(listed))
    return split_ids


def _merged_ids(objs: list[Any]) -> dict[int, int]:
    """One image's merged object ids -> the object that lists them in its merged_object_ids."""
    out: dict[int, int] = {}
    for obj in objs:
        if isinstance(obj, dict) and isinstance(obj.get("merged_object_ids"), list):
            for mid in obj["merged_object_ids"]:
                if isinstance(mid, int) and isinstance(obj.get("object_id"), int):
                    out.setdefault(mid, obj["object_id"])
    return out


def _image_payload(iid: int, split: str, meta: tuple[int, int, str], objects: _Objects,
                   rels_of: dict[int, list[tuple[int, str, int, str]]], preds: set[str], roots: list[Path],
                   o: VGOptions, drops: DropTable) -> dict[str, Any] | None:
    """One image's payload, or None (counted in `drops`) when a per-image filter or its file drops it."""
    if not _image_listed(iid, objects, rels_of, o, drops):
        return None
    objs = objects.kept[iid]
    rels = _image_relationships(objs, {oid for oid, _, _ in objects.parsed[iid]}, rels_of[iid], preds, o,
                                drops, objects.dropped.get(iid, {}))
    if not _relationship_count_ok(len(rels), o, drops):
        return None
    w, h, url = meta
    rel = image_file(url, iid)
    path = next((p for root in roots for p in (root / rel, root / Path(rel).name) if p.is_file()), None)
    if path is None:
        drops.add("image", "image file not found")
        return None
    n, r = len(objs), len(rels)
    boxes = np.array([[[x, y, x + bw, y + bh]] for _, _, (x, y, bw, bh) in objs])  # (n, 1, 4) pixels
    return {
        "split": split,
        "unit": "image",
        "graph": {"objects": [name for _, name, _ in objs], "relationships": rels},
        "boxes": boxes,
        "boxes_unit": "px",
        "visible": np.ones((n, 1), dtype=bool),
        "has_layout": np.ones(n, dtype=bool),
        "rel_frames": np.ones((r, 1), dtype=bool),
        "source": {"image_id": iid, "file": rel},
        "files": [str(path)],
        "sizes": [(w, h)],
    }


def _image_listed(iid: int, objects: _Objects, rels_of: dict[int, Any], o: VGOptions,
                  drops: DropTable) -> bool:
    """The image has objects and relationships entries and --min/--max-objects-per-image kept objects."""
    if iid not in objects.parsed:
        drops.add("image", "no entry in objects.json")
        return False
    if iid not in rels_of:
        drops.add("image", "no entry in relationships.json")
        return False
    if len(objects.kept[iid]) < o.min_objects_per_image:
        drops.add("image", f"fewer than --min-objects-per-image ({o.min_objects_per_image}) objects left")
        return False
    if len(objects.kept[iid]) > o.max_objects_per_image:
        drops.add("image", f"more than --max-objects-per-image ({o.max_objects_per_image}) objects left")
        return False
    return True


def _image_relationships(objs: list[tuple[int, str, tuple[Any, ...]]], listed: set[int],
                         parsed: list[tuple[int, str, int, str]], preds: set[str], o: VGOptions,
                         drops: DropTable, dropped: dict[int, str]) -> list[list[Any]]:
    """The image's relationships as [subject index, predicate, object index], each drop counted."""
    index = {oid: k for k, (oid, _, _) in enumerate(objs)}
    rels: list[list[Any]] = []
    seen: set[tuple[int, str, int]] = set()
    for sid, pred, oid, _ in parsed:
        # endpoints first: a relationship of a dropped object is counted as such, whatever its predicate
        # (a predicate seen only between dropped objects never reaches the vocabulary)
        missing = [(role, x) for role, x in (("subject", sid), ("object", oid)) if x not in index]
        if missing:
            drops.add("relationship", _missing_endpoint(*missing[0], dropped, listed))
            continue
        if pred not in preds:
            drops.add("relationship", "predicate not in the vocabulary (fewer than --min-relationship-"
                                      f"instances ({o.min_relationship_instances}) training relationships)")
            continue
        s, t = index[sid], index[oid]
        if s == t:
            drops.add("relationship", "subject and object are the same object")
        elif (s, pred, t) in seen:
            drops.add("relationship", "repeats a (subject, predicate, object) of the image")
        else:
            seen.add((s, pred, t))
            rels.append([s, pred, t])
    return rels


def _missing_endpoint(role: str, x: int, dropped: dict[int, str], listed: set[int]) -> str:
    """Why a relationship's endpoint is not a kept object of the image."""
    if x in dropped:
        return f"{role} is an object that was dropped ({dropped[x]})"
    if x in listed:
        return f"{role} is an object that was dropped (object_id repeated)"
    return f"{role} id is not among the image's objects in objects.json"


def _relationship_count_ok(r: int, o: VGOptions, drops: DropTable) -> bool:
    """--min/--max-relationships-per-image; a drop counted when outside."""
    if r < o.min_relationships_per_image:
        drops.add("image", f"fewer than --min-relationships-per-image ({o.min_relationships_per_image}) "
                           "relationships left")
        return False
    if r > o.max_relationships_per_image:
        drops.add("image", f"more than --max-relationships-per-image ({o.max_relationships_per_image}) "
                           "relationships left")
        return False
    return True
