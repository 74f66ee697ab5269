"""The converted data set on disk (docs/ARCHITECTURE.md "Converted data set"): writer and validating reader.

```
DIR/dataset.json          format "sg2v-dataset", format_version, source format and options,
                          frames/height/width, counts per split, the drop table and the notes, versions
DIR/vocab.json            sg2im vocabulary (`sg2v.vocab.load_vocab` reads it)
DIR/<split>.jsonl         one sample per line: graph, per-frame boxes and visibility, source, frame range
DIR/<split>.frames.npy    uint8 (N_frames, H, W, 3), every sample's frames back to back, memory-mappable
```
`ConvertedDataset(dir, split)` opens one split torch-free: the index is parsed and checked once (sizes
bounded, names in the vocabulary, indices and frame ranges in range), the frames are memory-mapped, and an
item costs one copy of its own frames.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import DatasetError, VocabError, first_line
from sg2v.safety import open_input, read_input
from sg2v.vocab import Vocab

FORMAT = "sg2v-dataset"
FORMAT_VERSION = 1  # bump on an incompatible change of the files or their keys
SPLITS = ("train", "val", "test")
INFO_FILE = "dataset.json"
VOCAB_FILE = "vocab.json"
NPY_HEADER_BYTES = 128  # fixed, so the frame count can be rewritten in place once the last frame is written

# Bounds checked before anything is allocated from a file's word.
MAX_JSON_BYTES = 64 << 20  # dataset.json, vocab.json
MAX_LINE_BYTES = 4 << 20  # one index line
MAX_OBJECTS = 4096  # per sample
MAX_RELATIONSHIPS = 1 << 16  # per sample
MAX_CLIP_FRAMES = 4096  # per sample
MAX_SIDE = 4096  # frame height / width


def index_file(split: str) -> str:
    return f"{split}.jsonl"


def frames_file(split: str) -> str:
    return f"{split}.frames.npy"


def npy_header(n: int, height: int, width: int) -> bytes:
    """A NumPy format 1.0 header for uint8 (n, height, width, 3), padded to exactly NPY_HEADER_BYTES."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {height}, {width}, 3), }}"
    body_len = NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(text) + 1 > body_len:
        raise DatasetError(f"frame count {n} too large for the frames file header")
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


def versions() -> dict[str, str]:
    """The software that wrote a data set (stored in dataset.json)."""
    import PIL

    import sg2v

    return {"sg2v": sg2v.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------- writing
class DatasetWriter:
    """Streams samples into a fresh folder: frames appended to `<split>.frames.npy`, one index line each.

    The folder is a temporary one (`sg2v.dataset.convert` renames it into place when everything is written),
    so a failure at any point leaves no half-written data set behind.
    """

    def __init__(self, root: Path, height: int, width: int):
        self.root, self.height, self.width = Path(root), height, width
        self._frames: dict[str, BinaryIO] = {}
        self._index: dict[str, Any] = {}
        self.counts = {s: {"samples": 0, "frames": 0, "objects": 0, "relationships": 0} for s in SPLITS}

    def _open(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        f = open(self.root / frames_file(split), "wb")  # noqa: SIM115 - closed in close()
        f.write(npy_header(0, self.height, self.width))
        self._frames[split] = f
        self._index[split] = open(self.root / index_file(split), "w", encoding="utf-8")  # noqa: SIM115

    def add(self, split: str, record: dict[str, Any], frames: NDArray[Any]) -> None:
        """Append one sample: `frames` (F, H, W, 3) uint8; `record` without frame_offset / frame_count."""
        if split not in self._frames:
            self._open(split)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (self.height, self.width, 3), frames.shape
        c = self.counts[split]
        record = dict(record, frame_offset=c["frames"], frame_count=int(frames.shape[0]))
        self._frames[split].write(np.ascontiguousarray(frames).tobytes())
        self._index[split].write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        c["samples"] += 1
        c["frames"] += int(frames.shape[0])
        c["objects"] += len(record["graph"]["objects"])
        c["relationships"] += len(record["graph"]["relationships"])

    def close(self) -> None:
        """Write every split's files (empty ones too), fix the frame counts in the headers, flush to disk."""
        for split in SPLITS:
            if split not in self._frames:
                self._open(split)
        for split, f in self._frames.items():
            f.seek(0)
            f.write(npy_header(self.counts[split]["frames"], self.height, self.width))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for f in self._index.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._frames.clear()
        self._index.clear()

    def abort(self) -> None:
        for f in [*self._frames.values(), *self._index.values()]:
            f.close()
        self._frames.clear()
        self._index.clear()

    def write_json(self, name: str, data: Any) -> None:
        path = self.root / name
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------- reading
def read_json(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A bounded, strict JSON file of a converted data set, or a one-line DatasetError naming it."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror or e}); is this a folder written by "
                           "`sg2v-data convert`?") from None
    if size > limit:
        raise DatasetError(f"{path}: {size} bytes, more than the {limit} a {what} may have; the file is not "
                           "one sg2v wrote, convert the data set again")
    try:
        raw = read_input(path, limit)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror or e}); is this a folder written by "
                           "`sg2v-data convert`?") from None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DatasetError(f"{path}: {what} is not valid JSON ({first_line(e)}); the file is damaged, "
                           "convert the data set again") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")



def read_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """dataset.json of a converted data set, checked for its format, version and shape fields."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; pass a folder written by `sg2v-data convert`")
    path = root / INFO_FILE
    info = read_json(path, "data set description")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an sg2v data set description (format {_get(info, 'format')!r}, "
                           f"expected {FORMAT!r}); pass a folder written by `sg2v-data convert`")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise DatasetError(f"{path}: format_version {version!r}, this sg2v reads 1..{FORMAT_VERSION}; "
                           "upgrade sg2v or convert the data set again")
    for key, hi in (("frames", MAX_CLIP_FRAMES), ("height", MAX_SIDE), ("width", MAX_SIDE)):
        v = info.get(key)
        if not _is_int(v) or not 1 <= v <= hi:
            raise DatasetError(f"{path}: {key} {v!r} is not an integer in 1..{hi}; the file is damaged, "
                               "convert the data set again")
    splits = info.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise DatasetError(f"{path}: splits must list {', '.join(SPLITS)}; the file is damaged, convert the "
                           "data set again")
    _check_info_fields(info, path)
    return info


COUNT_KEYS = ("samples", "frames", "objects", "relationships")
MAX_COUNT = 1 << 53  # a count in dataset.json (a float64 holds every integer up to this)


def _check_info_fields(info: dict[str, Any], path: Path) -> None:
    """The fields `stats` and the readers print or use: each of its JSON type, counts integers >= 0."""
    def bad(what: str) -> DatasetError:
        return DatasetError(f"{path}: {what}; the file is damaged, convert the data set again")

    def count(v: Any) -> bool:
        return _is_int(v) and 0 <= v <= MAX_COUNT

    if not isinstance(info.get("source_format"), str):
        raise bad(f"source_format {_short(info.get('source_format'))} is not a string")
    source = info.get("source")
    if not isinstance(source, dict) or not all(isinstance(source.get(k, ""), str) for k in ("name", "path")):
        raise bad(f"source {_short(source)} is not an object with a string name and path")
    vocab = info.get("vocab")
    keys = ("objects", "predicates", "object_ids", "predicate_ids")
    if not isinstance(vocab, dict) or not all(count(vocab.get(k)) for k in keys):
        raise bad(f"vocab {_short(vocab)} is not an object of counts {', '.join(keys)}")
    for split in SPLITS:
        c = info["splits"][split]
        if not isinstance(c, dict) or not all(count(c.get(k)) for k in COUNT_KEYS):
            raise bad(f"splits.{split} {_short(c)} is not an object of counts {', '.join(COUNT_KEYS)}")
    for table in ("drops", "notes"):
        rows = info.get(table, [])
        if not isinstance(rows, list) or not all(
                isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("reason"), str)
                and count(d.get("count")) for d in rows):
            raise bad(f"{table} is not a list of {{kind, reason, count}}")


def _short(v: Any) -> str:
    """A JSON value for a message: its repr cut to 60 characters (a 400-digit number prints whole)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10 ** 30 else f"<{len(str(abs(v)))}-digit number>"
    return text if len(text) <= 60 else text[:57] + "..."


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def read_vocab(root: Path) -> Vocab:
    path = Path(root) / VOCAB_FILE
    data = read_json(path, "vocabulary")
    try:
        return Vocab.from_dict(data, where=str(path))
    except VocabError as e:
        raise DatasetError(f"{e}; convert the data set again") from None


def open_frames(path: Path, height: int, width: int) -> NDArray[Any]:
    """Memory-map a `<split>.frames.npy` after checking its header against the expected shape and its size."""
    try:
        npy_format: Any = np.lib.format  # numpy's stubs leave its functions untyped
        with open_input(path) as f:
            major, minor = npy_format.read_magic(f)
            if (major, minor) != (1, 0):
                raise ValueError(f"npy version {major}.{minor}, expected 1.0")
            shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=NPY_HEADER_BYTES)
            offset = f.tell()
        size = path.stat().st_size
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the frames ({e.strerror or e}); convert the data set again"
                           ) from None
    except ValueError as e:
        raise DatasetError(f"{path}: not a frames file ({first_line(e)}); convert the data set again"
                           ) from None
    if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != (height, width, 3):
        raise DatasetError(f"{path}: frames of {dtype} {tuple(shape)}, expected uint8 "
                           f"(N, {height}, {width}, 3) as dataset.json says; convert the data set again")
    n = int(shape[0])
    expected = offset + n * height * width * 3
    if size != expected:
        raise DatasetError(f"{path}: {size} bytes, but its header promises {n} frames ({expected} bytes); "
                           "the file is truncated or damaged, convert the data set again")
    if n == 0:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(n, height, width, 3))


class ConvertedDataset:
    """One split of a converted data set (torch-free); `ds[i]` is a plain dict of numpy arrays.

    An item: `graph` (the project's graph dict: objects, relationships), `frames` uint8 (F, H, W, 3), `boxes`
    float32 (n_objects, F, 4) [x0, y0, x1, y1] in [0, 1] (x right, y down), `visible` bool (n_objects, F),
    `has_layout` bool (n_objects,) (False: the source gave no box, `boxes` are zeros), `rel_frames` bool
    (n_relationships, F) (the frames in which each relationship holds), `source` (where it came from),
    `split`, `index`. `vocab` is the data set's vocabulary, `info` its dataset.json.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        if split not in SPLITS:
            raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
        self.root, self.split = Path(root), split
        self.info = read_info(self.root)
        self.vocab = read_vocab(self.root)
        self.frames_per_clip = int(self.info["frames"])
        self.height, self.width = int(self.info["height"]), int(self.info["width"])
        self._frames = open_frames(self.root / frames_file(split), self.height, self.width)
        self._items = _read_index(self.root / index_file(split), self.vocab, len(self._frames),
                                  self.frames_per_clip)
        expected = self.info["splits"][split]
        if not isinstance(expected, dict) or expected.get("samples") != len(self._items) \
                or expected.get("frames") != len(self._frames):
            raise DatasetError(f"{self.root / INFO_FILE}: splits.{split} says {_get(expected, 'samples')!r} "
                               f"samples / {_get(expected, 'frames')!r} frames, the files hold "
                               f"{len(self._items)} / {len(self._frames)}; convert the data set again")

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn receive the dataset pickled: send the checked index and reopen
        # the frames file there (a pickled memmap would carry every frame)
        state = dict(self.__dict__)
        state["_frames"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._frames = open_frames(self.root / frames_file(self.split), self.height, self.width)

    def __len__(self) -> int:
        return len(self._items)

    def _item(self, index: int | np.integer[Any]) -> tuple[Any, ...]:
        if not _is_int(index) and not isinstance(index, np.integer):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        n = len(self._items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for the {self.split} split ({n} samples)")
        return self._items[int(index) % n]

    def graph(self, index: int) -> dict[str, Any]:
        """Sample `index`'s scene graph (no frames read)."""
        return _copy_graph(self._item(index)[0])

    def counts(self) -> dict[str, NDArray[Any]]:
        """Per sample, from the index alone: "frames", "objects" and "relationships", each (N,) int64."""
        items = self._items
        return {"frames": np.array([it[7] for it in items], dtype=np.int64),
                "objects": np.array([len(it[0]["objects"]) for it in items], dtype=np.int64),
                "relationships": np.array([len(it[0]["relationships"]) for it in items], dtype=np.int64)}

    def __getitem__(self, index: int | np.integer[Any]) -> dict[str, Any]:
        offset, count = self._item(index)[6:8]
        # (F, H, W, 3) uint8, a copy
        return {**self.annotation(index), "frames": np.array(self._frames[offset:offset + count])}

    def annotation(self, index: int | np.integer[Any]) -> dict[str, Any]:
        """Sample `index` without its frames (every key of `ds[index]` but "frames"; no frame is read)."""
        graph, boxes, visible, has_layout, rel_frames, source, offset, count = self._item(index)
        return {
            "graph": _copy_graph(graph),
            "boxes": boxes.copy(),  # (n, F, 4) float32
            "visible": visible.copy(),  # (n, F) bool
            "has_layout": has_layout.copy(),  # (n,) bool
            "rel_frames": rel_frames.copy(),  # (r, F) bool
            "source": json.loads(json.dumps(source)),
            "split": self.split,
            "index": int(index) % len(self._items),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def _copy_graph(g: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"objects": list(g["objects"]),
                           "relationships": [list(r) for r in g["relationships"]]}
    if "description" in g:
        out["description"] = g["description"]
    return out


def _read_index(path: Path, vocab: Vocab, n_frames: int, clip: int) -> list[tuple[Any, ...]]:
    """The split's samples, each checked; a sample holds one frame (an image) or `clip` (dataset.json's
    frames per clip)."""
    items: list[tuple[Any, ...]] = []
    try:
        f = open_input(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the sample index ({e.strerror or e}); convert the data set "
                           "again") from None
    with f:
        covered = 0
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            where = f"{path}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise DatasetError(f"{where}: line longer than {MAX_LINE_BYTES} bytes; the index is damaged, "
                                   "convert the data set again")
            try:
                rec = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise DatasetError(f"{where}: not a JSON sample ({first_line(e)}); the index is damaged, "
                                   "convert the data set again") from None
            item = _check_record(rec, where, vocab, n_frames)
            if item[7] not in (1, clip):
                raise DatasetError(f"{where}: {item[7]} frames, dataset.json says clips of {clip} (or "
                                   "one-frame images); the files do not belong together, convert the data "
                                   "set again")
            if item[6] != covered:
                raise DatasetError(f"{where}: frame_offset {item[6]}, expected {covered} (samples lie back "
                                   "to back); the index is damaged, convert the data set again")
            covered += item[7]
            items.append(item)
    if covered != n_frames:
        raise DatasetError(f"{path}: the samples cover {covered} frames, the frames file holds {n_frames}; "
                           "convert the data set again")
    return items


def _bad(where: str, what: str) -> DatasetError:
    return DatasetError(f"{where}: {what}; the index is damaged, convert the data set again")


def _check_record(rec: Any, where: str, vocab: Vocab, n_frames: int) -> tuple[Any, ...]:
    """Check one index line: (graph, boxes, visible, has_layout, rel_frames, source, offset, count)."""
    if not isinstance(rec, dict):
        raise _bad(where, "a sample must be a JSON object")
    for key in ("graph", "boxes", "visible", "has_layout", "rel_frames", "source", "frame_offset",
                "frame_count"):
        if key not in rec:
            raise _bad(where, f"missing key {key!r}")
    offset, count = rec["frame_offset"], rec["frame_count"]
    if not _is_int(offset) or not _is_int(count) or not 1 <= count <= MAX_CLIP_FRAMES or offset < 0 \
            or offset + count > n_frames:
        raise _bad(where, f"frames [{offset!r}, +{count!r}) outside the {n_frames} frames of the split")
    graph = rec["graph"]
    objects, rels = _check_record_graph(graph, where, vocab)
    boxes, visible, has_layout, rel_frames = _check_record_arrays(rec, where, len(objects), len(rels), count)
    source = rec["source"]
    if not isinstance(source, dict):
        raise _bad(where, "source must be a JSON object")
    out_graph: dict[str, Any] = {"objects": objects, "relationships": rels}
    if isinstance(graph.get("description"), str):
        out_graph["description"] = graph["description"]
    return (out_graph, boxes.astype(np.float32), visible.astype(bool), has_layout.astype(bool),
            rel_frames.astype(bool), source, offset, count)


def _check_record_graph(graph: Any, where: str, vocab: Vocab) -> tuple[list[Any], list[Any]]:
    """A record's graph: (objects, relationships), names in the vocabulary, within the limits, no repeat."""
    if not isinstance(graph, dict) or not isinstance(graph.get("objects"), list) \
            or not isinstance(graph.get("relationships"), list):
        raise _bad(where, "graph must have lists 'objects' and 'relationships'")
    objects, rels = graph["objects"], graph["relationships"]
    n, r = len(objects), len(rels)
    if not 1 <= n <= MAX_OBJECTS or r > MAX_RELATIONSHIPS:
        raise _bad(where, f"{n} objects / {r} relationships (limits 1..{MAX_OBJECTS} / {MAX_RELATIONSHIPS})")
    for i, name in enumerate(objects):
        if not isinstance(name, str) or name not in vocab.object_name_to_idx or name == "__image__":
            raise _bad(where, f"objects[{i}] {name!r} is not in vocab.json")
    seen = set()
    for j, rel in enumerate(rels):
        if not isinstance(rel, list) or len(rel) != 3 or not _is_int(rel[0]) or not _is_int(rel[2]) \
                or not 0 <= rel[0] < n or not 0 <= rel[2] < n or rel[0] == rel[2]:
            raise _bad(where, f"relationships[{j}] {rel!r} is not [subject, predicate, object] of two "
                              f"different objects in 0..{n - 1}")
        if not isinstance(rel[1], str) or rel[1] not in vocab.pred_name_to_idx or rel[1] == "__in_image__":
            raise _bad(where, f"relationships[{j}] predicate {rel[1]!r} is not in vocab.json")
        if tuple(rel) in seen:
            raise _bad(where, f"relationships[{j}] {rel!r} is a duplicate")
        seen.add(tuple(rel))
    return objects, rels


def _check_record_arrays(rec: dict[Any, Any], where: str, n: int, r: int, count: int
                         ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """A record's boxes (n, count, 4) in [0, 1], visible (n, count), has_layout (n,), rel_frames
    (r, count), the last three of 0 / 1."""
    try:
        boxes = np.asarray(rec["boxes"], dtype=np.float64)
        visible = np.asarray(rec["visible"])
        has_layout = np.asarray(rec["has_layout"])
        rel_frames = np.asarray(rec["rel_frames"]).reshape(r, -1) if r else np.zeros((0, count), bool)
    except (ValueError, TypeError, OverflowError):
        raise _bad(where, "boxes / visible / has_layout / rel_frames are not regular arrays of numbers"
                   ) from None
    if boxes.shape != (n, count, 4) or visible.shape != (n, count) or has_layout.shape != (n,) \
            or rel_frames.shape != (r, count):
        raise _bad(where, f"boxes {boxes.shape}, visible {visible.shape}, has_layout {has_layout.shape}, "
                          f"rel_frames {rel_frames.shape}; expected ({n}, {count}, 4), ({n}, {count}), "
                          f"({n},), ({r}, {count})")
    for name, a in (("visible", visible), ("has_layout", has_layout), ("rel_frames", rel_frames)):
        if a.size and (a.dtype.kind not in "iub" or not np.isin(a, (0, 1)).all()):
            raise _bad(where, f"{name} must hold 0 / 1")
    if not np.isfinite(boxes).all() or (boxes < 0).any() or (boxes > 1).any() \
            or (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
        raise _bad(where, "boxes must be [x0, y0, x1, y1] in [0, 1] with x0 <= x1, y0 <= y1")
    return boxes, visible, has_layout, rel_frames


def frames_bytes(n_frames: int, height: int, width: int) -> int:
    return NPY_HEADER_BYTES + n_frames * height * width * 3


def describe_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0 if n < 1 else min(int(math.log(n, 1024)), len(units) - 1)
    return f"{n / 1024 ** k:.1f} {units[k]}" if k else f"{int(n)} B"
