"""Action Genome v1.0 -> converted data set: clips of consecutive annotated frames with per-frame boxes.

Sources of the facts used here:
- Files and layout: JingweiJ/ActionGenome `README.md` and `tools/dump_frames.py` (annotations/
  object_bbox_and_relationship.pkl, person_bbox.pkl, frame_list.txt, object_classes.txt,
  relationship_classes.txt; frames dumped by ffmpeg to `frames/VIDEO.mp4/%06d.png`, only the frames listed in
  frame_list.txt kept; keys and frame_list entries are "VIDEO.mp4/FRAME.png").
- Pickle structure: the same README (a dict from "VIDEO.mp4/FRAME.png" to a list of objects {class, bbox,
  attention_relationship, spatial_relationship, contacting_relationship, visible, metadata {tag, set}});
  JingweiJ/ActionGenome issues #7 (object bbox is (x, y, w, h) with (x, y) the top-left corner; person_bbox
  entries are {bbox: float32 array (k, 4) in xyxy, bbox_score, bbox_size (w, h), bbox_mode 'xyxy', keypoints,
  keypoints_logits}; metadata tags read "VIDEO.mp4/CLASS/FRAME"), #4 and #6 (objects not visible in a frame
  have bbox None, relationships None and visible False) and #2 (one person, detected, not annotated);
  yrcong/STTran issue #40 (person boxes xyxy, object boxes xywh).
- Class lists and names: yrcong/STTran `dataloader/action_genome.py` - object_classes.txt and
  relationship_classes.txt spell names without separators ("closetcabinet", "lookingat") while the pickles
  write "closet/cabinet" and "looking_at"; relationship classes 0-2 are attention, 3-8 spatial, 9- contacting;
  the set of a frame is its first object's metadata 'set' ("train" or "test"); its defaults drop frames with
  no visible object and frames with no person box (`filter_nonperson_box_frame=True`), and it converts object
  boxes from xywh to xyxy.

Conversion: names are matched across the files by their letters and digits only; the vocabulary lists the
class files' classes in order, written readably ("closet/cabinet", "looking at"; predicates with spaces like
the project's other vocabularies). A clip is --frames consecutive usable annotated frames of one video (a
dropped frame ends a run); its graph is the person (object 0, one box per frame from person_bbox.pkl) and
every class visible in at least one of its frames, and one relationship [person, predicate, object] per
predicate the clip annotates between them, with `rel_frames` marking the frames where it is annotated. The
paper (Ji et al., "Action Genome: Actions as Composition of Spatio-temporal Scene Graphs", CVPR 2020, section
3) defines attention relationships as whether the person looks at the object, spatial relationships as where
the object is relative to the person, and contacting relationships as how the person contacts the object
(JingweiJ/ActionGenome issue #8 asks the same question of the pickles, which store all three on the object).
So attention and contacting relationships are written person -> object ([person, sitting on, chair]) and
spatial ones object -> person ([chair, beneath, person]); --spatial-direction person-to-object writes them
person -> object as STTran's evaluation forms its triplets. Splits: the metadata's train / test, with val
carved from the training videos by --seed.

Notes about a frame (an object not visible in it, a person box missing or of no area, several person
detections) are counted once per frame that a written clip holds: a frame dropped later (no visible object,
in a run too short for a clip, after the last full clip) adds none. Field types are checked before use
(bbox_size, bbox_score, relationship lists as arrays, coordinates within +-1e7 px).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.dataset.common import (
    MAX_COORD,
    MAX_IMAGE_SIDE,
    DropTable,
    Plan,
    bad_source,
    clip_starts,
    frames_job,
    is_number,
    read_lines,
    seeded_split,
)
from sg2v.dataset.options import AGOptions, OptionError
from sg2v.dataset.unpickle import load_data_pickle
from sg2v.errors import DatasetError
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab

FIX = ("download the Action Genome annotations into SOURCE/annotations and dump the frames with its "
       "tools/dump_frames.py into SOURCE/frames (JingweiJ/ActionGenome README)")
READABLE = {
    "closetcabinet": "closet/cabinet", "cupglassbottle": "cup/glass/bottle",
    "papernotebook": "paper/notebook", "phonecamera": "phone/camera", "sofacouch": "sofa/couch",
    "lookingat": "looking at", "notlookingat": "not looking at", "infrontof": "in front of",
    "onthesideof": "on the side of", "coveredby": "covered by", "drinkingfrom": "drinking from",
    "haveitontheback": "have it on the back", "leaningon": "leaning on", "lyingon": "lying on",
    "notcontacting": "not contacting", "otherrelationship": "other relationship", "sittingon": "sitting on",
    "standingon": "standing on", "writingon": "writing on",
}
REL_FIELDS = ("attention_relationship", "spatial_relationship", "contacting_relationship")
SPATIAL_FIELD = "spatial_relationship"  # where the object is relative to the person (the paper, section 3)
PERSON = "person"


def name_key(name: str) -> str:
    """The letters and digits of a class name, lower-cased: 'closet/cabinet' and 'closetcabinet' match."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _classes(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in read_lines(path, "class list", FIX):
        k = name_key(line)
        if not k or k in out:
            raise DatasetError(f"{path}: class {line!r} is empty or repeats an earlier one; {FIX}")
        out[k] = READABLE.get(k, line)
    if not out:
        raise DatasetError(f"{path}: no classes; {FIX}")
    return out


def _frame_number(frame: str) -> tuple[Any, ...]:
    stem = frame.rsplit(".", 1)[0]
    numeric = stem.isascii() and stem.isdigit() and len(stem) <= 18  # "²".isdigit(), yet int() refuses it
    return (int(stem), frame) if numeric else (float("inf"), frame)


def _numbers(b: Any, shape: tuple[int, ...] | None = None) -> NDArray[Any]:
    """float64 values of a list/tuple/array of numbers, each finite within +-MAX_COORD; ValueError if not."""
    if isinstance(b, np.ndarray):
        if b.dtype.kind not in "iuf" or b.size > 4096:
            raise ValueError("not an array of numbers")
        a = b.astype(np.float64)
    elif isinstance(b, (list, tuple)) and len(b) <= 4096 and all(is_number(v, float("inf")) or
                                                                 isinstance(v, np.number) for v in b):
        try:
            a = np.asarray([float(v) for v in b], dtype=np.float64)
        except OverflowError:
            raise ValueError("a number too large for a float") from None
    else:
        raise ValueError("not a list of numbers")
    if not np.isfinite(a).all() or (np.abs(a) > MAX_COORD).any():
        raise ValueError(f"numbers must be finite and within +-{MAX_COORD:g}")
    return a if shape is None else a.reshape(shape)


def _xyxy_from_xywh(b: Any) -> NDArray[Any] | None:
    if b is None:
        return None
    a = _numbers(b).reshape(-1)
    if a.shape != (4,):
        raise ValueError("bbox must be 4 finite numbers (x, y, w, h)")
    return np.array([a[0], a[1], a[0] + a[2], a[1] + a[3]])


class _Frame:
    """One usable annotated frame: where it is and what is visible in it."""

    def __init__(self, name: str, path: Path, person: NDArray[Any] | None, size: tuple[int, int] | None,
                 objects: dict[str, tuple[NDArray[Any], list[tuple[str, bool]]]], invisible: set[str],
                 notes: DropTable):
        self.name, self.path, self.person, self.size = name, path, person, size
        self.objects, self.invisible = objects, invisible  # objects: name -> (box, [(predicate, spatial)])
        self.notes = notes  # about this frame: counted once it is in a written clip


def _person(entry: Any, pkl: Path, key: str, notes: DropTable
            ) -> tuple[NDArray[Any] | None, tuple[Any, ...] | None]:
    """(person box xyxy or None, bbox_size (w, h) or None) of one person_bbox.pkl entry."""
    if not isinstance(entry, dict) or "bbox" not in entry:
        raise bad_source(pkl, repr(key), "a person entry must be a dict with 'bbox'", FIX)
    boxes = _person_boxes(entry["bbox"], pkl, key)
    size = _person_size(entry, notes)
    if len(boxes) == 0:
        return None, size
    k = _person_pick(entry, boxes, notes)
    if not np.isfinite(boxes[k]).all():
        raise bad_source(pkl, repr(key), "person box is not finite", FIX)
    return boxes[k], size


def _person_boxes(raw: Any, pkl: Path, key: str) -> NDArray[Any]:
    """A person entry's 'bbox' as (k, 4) xyxy: one box or rows of 4 (a list of boxes)."""
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(r, (list, tuple, np.ndarray)) for r in raw):
        raw = [v for r in raw for v in (list(r) if len(r) == 4 else [None])]  # rows of 4 (a list of boxes)
    try:
        return _numbers(raw).reshape(-1, 4)  # (k, 4) xyxy
    except (ValueError, TypeError):
        raise bad_source(pkl, repr(key), "'bbox' must be a (k, 4) array of finite numbers within "
                                         f"+-{MAX_COORD:g}", FIX) from None


def _person_size(entry: dict[Any, Any], notes: DropTable) -> tuple[Any, ...] | None:
    """bbox_size as (w, h) pixels, or None (noted when given but not usable)."""
    size: tuple[Any, ...] | None
    try:
        size = tuple(int(v) for v in _numbers(entry.get("bbox_size"), (2,)))
        if not all(1 <= v <= MAX_IMAGE_SIDE for v in size):
            size = None
    except (ValueError, TypeError):
        size = None  # the decoded frame's size is what boxes are scaled by; bbox_size is only compared
    if size is None and entry.get("bbox_size") is not None:
        notes.add("person", "bbox_size is not (w, h) in pixels; ignored (the decoded frame's size is used)")
    return size


def _person_pick(entry: dict[Any, Any], boxes: NDArray[Any], notes: DropTable) -> int:
    """Which of several detected person boxes to keep: the highest bbox_score, else the first."""
    if len(boxes) == 1:
        return 0
    try:
        scores = _numbers(entry.get("bbox_score", np.zeros(len(boxes))))
    except (ValueError, TypeError):
        scores = np.zeros(0)
    if len(scores) == len(boxes):
        notes.add("person", "more than one detected box in a frame; the highest-scoring one kept")
        return int(np.argmax(scores))
    notes.add("person", "more than one detected box and no usable bbox_score; the first one kept")
    return 0


@dataclass
class _Source:
    """The annotations read: folders, class lists (name key -> name), both pickles."""

    ann: Path
    frames_root: Path
    obj_names: dict[str, str]
    rel_names: dict[str, str]
    person_pkl: Path
    object_pkl: Path
    person_anno: dict[str, Any]
    object_anno: dict[str, Any]


def plan(source: Path, o: AGOptions, seed: int, frames: int) -> Plan:
    """Action Genome -> Plan: the class lists (the vocabulary) and pickles, the frames listed in
    frame_list.txt grouped by video, each frame checked and each video's set read, then clips of `frames`
    consecutive usable frames per video, in split order."""
    source = Path(source)
    ann, frames_root = _check_source(source, o)
    stride = o.clip_stride or frames
    drops, notes = DropTable(), DropTable()
    obj_names, rel_names, vocab = _vocab(ann)
    src = _read_pickles(ann, frames_root, obj_names, rel_names)
    videos = _index_frames(src, drops)
    video_set, usable = _read_videos(src, videos, o, drops, notes)
    train_videos = [v for v, s in video_set.items() if s == "train"]
    carve = seeded_split(train_videos, seed, o.val_fraction, 0.0)
    payloads: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for video, frames_out in usable.items():
        split = "test" if video_set[video] == "test" else carve[video]
        for run in _runs(frames_out):
            payloads[split].extend(_run_clips(split, video, run, frames, stride, o, drops, notes))
    ordered = payloads["train"] + payloads["val"] + payloads["test"]
    return Plan(vocab=vocab, job=frames_job, payloads=ordered, drops=drops, notes=notes,
                source={"format": "action-genome", "name": "Action Genome v1.0", "path": str(source)},
                frames_estimate=len(ordered) * frames)


def _check_source(source: Path, o: AGOptions) -> tuple[Path, Path]:
    """(annotations folder, frames folder), both present; the options checked."""
    ann = Path(o.annotations_dir) if o.annotations_dir else source / "annotations"
    frames_root = Path(o.frames_dir) if o.frames_dir else source / "frames"
    if not ann.is_dir():
        raise DatasetError(f"{ann}: no such folder; {FIX}")
    if not frames_root.is_dir():
        raise DatasetError(f"{frames_root}: no such folder; {FIX}")
    if not 0 <= o.val_fraction < 1:
        raise OptionError(f"--val-fraction {o.val_fraction}: must be in [0, 1)")
    if o.clip_stride < 0:
        raise OptionError(f"--clip-stride {o.clip_stride}: must be >= 0 (0: --frames)")
    return ann, frames_root


def _vocab(ann: Path) -> tuple[dict[str, str], dict[str, str], Vocab]:
    """The class lists (name key -> name) and the vocabulary they make (the data set's own order)."""
    obj_names = _classes(ann / "object_classes.txt")
    rel_names = _classes(ann / "relationship_classes.txt")
    if PERSON not in obj_names:
        raise DatasetError(f"{ann / 'object_classes.txt'}: no class 'person'; {FIX}")
    objects_list = [IMAGE_OBJECT, *obj_names.values()]
    preds_list = [IN_IMAGE_PRED, *rel_names.values()]
    vocab = Vocab.from_dict({"object_name_to_idx": {n: i for i, n in enumerate(objects_list)},
                             "object_idx_to_name": objects_list,
                             "pred_name_to_idx": {n: i for i, n in enumerate(preds_list)},
                             "pred_idx_to_name": preds_list}, where="Action Genome vocabulary")
    return obj_names, rel_names, vocab


def _read_pickles(ann: Path, frames_root: Path, obj_names: dict[str, str], rel_names: dict[str, str]
                  ) -> _Source:
    """person_bbox.pkl and object_bbox_and_relationship.pkl, each a dict keyed by 'VIDEO.mp4/FRAME.png'."""
    person_pkl, object_pkl = ann / "person_bbox.pkl", ann / "object_bbox_and_relationship.pkl"
    for p in (person_pkl, object_pkl):
        if not p.is_file():
            raise DatasetError(f"{p}: not found; {FIX}")
    person_anno = load_data_pickle(person_pkl)
    object_anno = load_data_pickle(object_pkl)
    for data, p in ((person_anno, person_pkl), (object_anno, object_pkl)):
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise bad_source(p, "top level", "expected a dict keyed by 'VIDEO.mp4/FRAME.png'", FIX)
    return _Source(ann, frames_root, obj_names, rel_names, person_pkl, object_pkl, person_anno, object_anno)


def _index_frames(src: _Source, drops: DropTable) -> dict[str, list[tuple[str, str]]]:
    """frame_list.txt's frames in both pickles, by video: video -> [(frame, key)], each key once."""
    frame_list = read_lines(src.ann / "frame_list.txt", "frame list", FIX)
    listed = set(frame_list)
    drops.add("frame", "in the pickles but not in frame_list.txt",
              len((set(src.person_anno) | set(src.object_anno)) - listed))
    videos: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for key in frame_list:
        if key in seen:
            drops.add("frame", "listed twice in frame_list.txt")
            continue
        seen.add(key)
        parts = key.split("/")
        if len(parts) != 2 or not all(parts) or parts[0] in (".", "..") or parts[1] in (".", ".."):
            drops.add("frame", "frame_list.txt entry is not VIDEO/FRAME")
            continue
        if key not in src.person_anno or key not in src.object_anno:
            drops.add("frame", "in frame_list.txt but missing from person_bbox.pkl or "
                               "object_bbox_and_relationship.pkl")
            continue
        videos.setdefault(parts[0], []).append((parts[1], key))
    return videos


def _read_videos(src: _Source, videos: dict[str, list[tuple[str, str]]], o: AGOptions, drops: DropTable,
                 notes: DropTable) -> tuple[dict[str, str], dict[str, list[_Frame | None]]]:
    """Per video (sorted), its frames in order checked (None: not usable) and its set (train / test)."""
    video_set: dict[str, str] = {}
    usable: dict[str, list[_Frame | None]] = {}
    for video in sorted(videos):
        sets: list[str] = []
        frames_out: list[_Frame | None] = []
        for frame, key in sorted(videos[video], key=lambda e: _frame_number(e[0])):
            objs = src.object_anno[key]
            if not isinstance(objs, list):
                raise bad_source(src.object_pkl, repr(key), "expected a list of objects", FIX)
            sets.extend(_frame_set(objs))
            frames_out.append(_frame(video, frame, key, src, objs, o, drops))
        set_ = _video_set(sets, drops, notes)
        if set_:
            video_set[video] = set_
            usable[video] = frames_out
    return video_set, usable


def _frame_set(objs: list[Any]) -> list[str]:
    """The set (train / test) the first object with metadata names, as a list of none or one."""
    for obj in objs:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("set"), str):
            return [meta["set"]]
    return []


def _video_set(sets: list[str], drops: DropTable, notes: DropTable) -> str:
    """A video's set from its frames' (the first frame's), or "" (counted in `drops`) when none fits."""
    if not sets:
        drops.add("video", "no frame's metadata gives its set (train / test)")
        return ""
    if len(set(sets)) > 1:
        notes.add("video", "frames disagree on the set; the first frame's set used")
    if sets[0] not in ("train", "test"):
        drops.add("video", f"metadata set {sets[0]!r} is neither 'train' nor 'test'")
        return ""
    return sets[0]


def _runs(frames_out: list[_Frame | None]) -> list[list[_Frame]]:
    """A video's runs of consecutive usable frames (an unusable frame ends a run)."""
    runs: list[list[_Frame]] = [[]]
    for fr in frames_out:
        if fr is None:
            runs.append([])
        else:
            runs[-1].append(fr)
    return [run for run in runs if run]


def _run_clips(split: str, video: str, run: list[_Frame], frames: int, stride: int, o: AGOptions,
               drops: DropTable, notes: DropTable) -> list[dict[str, Any]]:
    """The clips of one run (every `stride` frames, `frames` long); frames in no clip counted, notes about
    the frames in a clip merged."""
    starts = clip_starts(len(run), frames, stride)
    if not starts:
        drops.add("frame", f"in a run of consecutive usable annotated frames shorter than --frames "
                           f"({frames})", len(run))
        return []
    covered: set[int] = set()
    clips = []
    for s in starts:
        covered.update(range(s, s + frames))
        clips.append(_clip_payload(split, video, run[s:s + frames], drops, o))
    drops.add("frame", "after the last full clip of its run", len(run) - len(covered))
    for t in sorted(covered):
        notes.merge(run[t].notes.rows())
    return clips


def _frame(video: str, frame: str, key: str, src: _Source, objs: list[Any], o: AGOptions,
           drops: DropTable) -> _Frame | None:
    """Check one annotated frame; None (counted in `drops`) if it is not usable. Notes about it are kept
    on the frame, counted once it is in a written clip."""
    notes = DropTable()
    path = src.frames_root / video / frame
    if not path.is_file():
        drops.add("frame", "frame file missing on disk")
        return None
    person, size = _person(src.person_anno[key], src.person_pkl, key, notes)
    if person is not None and not (person[2] > person[0] and person[3] > person[1]):
        notes.add("person", "box of zero area; the person is not visible in that frame")
        person = None
    if person is None:
        if not o.keep_frames_without_person:
            drops.add("frame", "no person box (STTran drops these; --keep-frames-without-person keeps them)")
            return None
        notes.add("person", "no box in a kept frame; the person is not visible in it")
    visible: dict[str, tuple[NDArray[Any], list[tuple[str, bool]]]] = {}
    invisible: set[str] = set()
    for j, obj in enumerate(objs):
        _frame_object(obj, f"{key!r}[{j}]", src, visible, invisible, drops, notes)
    if not visible and not o.keep_frames_without_objects:
        drops.add("frame", "no visible object (STTran drops these; --keep-frames-without-objects keeps them)")
        return None
    return _Frame(frame, path, person, size, visible, invisible, notes)


def _frame_object(obj: Any, where: str, src: _Source,
                  visible: dict[str, tuple[NDArray[Any], list[tuple[str, bool]]]], invisible: set[str],
                  drops: DropTable, notes: DropTable) -> None:
    """One object annotation of a frame into `visible` (name -> (box, predicates)) or `invisible`."""
    if not isinstance(obj, dict):
        raise bad_source(src.object_pkl, where, "an object must be a dict", FIX)
    cls = obj.get("class")
    if not isinstance(cls, str) or name_key(cls) not in src.obj_names:
        drops.add("object annotation", "class not in object_classes.txt")
        return
    name = src.obj_names[name_key(cls)]
    if name in visible or name in invisible:
        drops.add("object annotation", "a second annotation of the same class in one frame")
        return
    try:
        box = _xyxy_from_xywh(obj.get("bbox"))
    except (ValueError, TypeError):
        raise bad_source(src.object_pkl, where, "'bbox' must be None or (x, y, w, h)", FIX) from None
    if not (isinstance(obj.get("visible"), (bool, np.bool_)) and obj["visible"]):
        notes.add("object in a frame", "not visible (visible False); marked not visible in that frame")
        invisible.add(name)
        return
    if box is None or not (box[2] > box[0] and box[3] > box[1]):
        notes.add("object in a frame", "visible but without a box of positive area; marked not visible")
        invisible.add(name)
        return
    visible[name] = (box, _object_predicates(obj, where, src, drops))


def _object_predicates(obj: dict[Any, Any], where: str, src: _Source, drops: DropTable
                       ) -> list[tuple[str, bool]]:
    """An object's (predicate, spatial) pairs from its attention, spatial and contacting lists, each once."""
    preds: list[tuple[str, bool]] = []
    for field in REL_FIELDS:
        rels = obj.get(field)
        if isinstance(rels, np.ndarray) and rels.ndim == 1 and rels.size <= 4096:
            rels = rels.tolist()  # an array of names: read as the list it holds
        if rels is None:
            rels = []
        if not isinstance(rels, (list, tuple)) or len(rels) > 4096:
            raise bad_source(src.object_pkl, where, f"'{field}' must be a list of names or None", FIX)
        for r in rels:
            k = name_key(r) if isinstance(r, str) else ""
            if k not in src.rel_names:
                drops.add("relationship", "predicate not in relationship_classes.txt")
            elif (src.rel_names[k], field == SPATIAL_FIELD) not in preds:
                preds.append((src.rel_names[k], field == SPATIAL_FIELD))
    return preds


def _clip_payload(split: str, video: str, clip: list[_Frame], drops: DropTable, o: AGOptions
                  ) -> dict[str, Any]:
    """One clip's payload: the person first, then the objects in order of first appearance."""
    f = len(clip)
    names = [PERSON]
    for fr in clip:
        names.extend(n for n in fr.objects if n not in names)
    never = {n for fr in clip for n in fr.invisible} - set(names)
    drops.add("object", "not visible in any frame of its clip", len(never))
    n = len(names)
    boxes = np.zeros((n, f, 4))  # (n, F, 4) pixels xyxy
    visible = np.zeros((n, f), dtype=bool)
    rel_frames: dict[tuple[int, str, int], NDArray[Any]] = {}  # (subject, predicate, object) -> frames
    to_person = o.spatial_direction == "object-to-person"
    for t, fr in enumerate(clip):
        if fr.person is not None:
            boxes[0, t], visible[0, t] = fr.person, True
        for name, (box, preds) in fr.objects.items():
            k = names.index(name)
            boxes[k, t], visible[k, t] = box, True
            for p, spatial in preds:
                triple = (k, p, 0) if spatial and to_person else (0, p, k)
                rel_frames.setdefault(triple, np.zeros(f, dtype=bool))[t] = True
    triples = list(rel_frames)
    rels = [list(triple) for triple in triples]
    return {
        "split": split,
        "unit": "clip",
        "graph": {"objects": names, "relationships": rels},
        "boxes": boxes,
        "boxes_unit": "px",
        "visible": visible,
        "has_layout": np.ones(n, dtype=bool),
        "rel_frames": np.array([rel_frames[t] for t in triples], dtype=np.bool_).reshape(len(rels), f),
        "source": {"video": video, "frames": [fr.name for fr in clip]},
        "files": [str(fr.path) for fr in clip],
        "sizes": [fr.size for fr in clip],
    }
