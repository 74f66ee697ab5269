"""Scene-graph JSON (the sg2im convention): parse, validate, and pad into the encoder's tensors (torch-free).

A graph is `{"objects": ["red circle", ...], "relationships": [[s, "left of", o], ...]}` with 0-based indices
into `objects`, and an optional one-line `"description"`. Inside the model an `__image__` object is appended
and one `[i, "__in_image__", image]` triple per object (sg2im, SGDiff); `pad_graphs` lays a batch out exactly
as docs/ARCHITECTURE.md "Graph tensors" specifies. Every mistake raises `GraphError` naming the place and the
fix.
The published JSON Schema (`graph_schema()`) checks structure; vocabulary, index range, self-relations and
model limits need the vocabulary and config, so only the parser checks those.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import GraphError, shown
from sg2v.layout import Track, expand_layout, layout_from_file_data, parse_layout
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab

GRAPH_KEYS = ("objects", "relationships", "description", "layout")
GRAPH_TENSORS = ("objs", "obj_mask", "triples", "triple_mask")  # GraphBatch's arrays: the encoder's inputs
_EXAMPLE = '{"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}'


@dataclass(frozen=True)
class SceneGraph:
    """One validated graph: the user's names plus its internal id arrays (`__image__` appended)."""

    object_names: tuple[str, ...]
    relationships: tuple[tuple[int, str, int], ...]  # user-level (subject, predicate, object)
    objs: NDArray[Any] = field(compare=False, repr=False)  # (n + 1,) int64, `__image__` last
    triples: NDArray[Any] = field(compare=False, repr=False)  # (r + n, 3) int64, `__in_image__` triples last
    description: str | None = None
    layout: tuple[tuple[int, Track], ...] = ()  # the given tracks, by object index (`sg2v.layout`)

    def tracks(self, frames: int) -> dict[int, NDArray[Any]]:
        """The given tracks as (F, 4) float32 boxes by object index (objects left out are sampled)."""
        return expand_layout(dict(self.layout), frames)

    @property
    def num_objects(self) -> int:
        return len(self.object_names)

    @property
    def num_relationships(self) -> int:
        return len(self.relationships)

    def to_dict(self) -> dict[str, Any]:
        """The graph as sg2im JSON data; `parse_graph(g.to_dict(), vocab)` gives back an equal graph."""
        d: dict[str, Any] = {
            "objects": list(self.object_names),
            "relationships": [[s, p, o] for s, p, o in self.relationships],
        }
        if self.description is not None:
            d["description"] = self.description
        if self.layout:
            d["layout"] = {str(i): t.to_json() for i, t in self.layout}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass(frozen=True)
class GraphBatch:
    """Padded encoder inputs (ARCHITECTURE.md "Graph tensors"): O = max_obj + 1, T = max_rel + max_obj."""

    objs: NDArray[Any]  # (B, O) int64, padding 0
    obj_mask: NDArray[Any]  # (B, O) float32, 1 real / 0 padding
    triples: NDArray[Any]  # (B, T, 3) int64 (s, p, o) into the padded object axis, padding (0, 0, 0)
    triple_mask: NDArray[Any]  # (B, T) float32

    @property
    def batch_size(self) -> int:
        return int(self.objs.shape[0])

    def as_feeds(self) -> dict[str, NDArray[Any]]:
        """The encoder's inputs by name (`GRAPH_TENSORS`)."""
        return {name: getattr(self, name) for name in GRAPH_TENSORS}


def padded_slots(max_objects: int, max_relationships: int) -> tuple[int, int]:
    """(O, T): object slots with `__image__` appended, triple slots with one `__in_image__` per object."""
    return max_objects + 1, max_relationships + max_objects


def _show(value: Any, limit: int = 60) -> str:
    """A short, one-line, printable rendering of a user value for messages."""
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= limit else value[:limit] + "...", ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{type(value).__name__} {shown(value, limit + 3)}"


class _JsonRuleError(ValueError):
    """Raised by the strict-JSON hooks; its message is already user-facing."""


def _reject_constant(name: str) -> Any:
    raise _JsonRuleError(f"{name} is not valid JSON; write a number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _JsonRuleError(f"duplicate key {_show(k)}; keep one")
        d[k] = v
    return d


def _decode_json(raw: bytes | str, origin: str, what: str = "graph", example: str = _EXAMPLE) -> Any:
    """Strict JSON: UTF-8 (BOM allowed), no NaN/Infinity, no duplicate keys; errors carry line and column."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise GraphError(f"{origin}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                             f"save the {what} as UTF-8") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise GraphError(f"{origin}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                         f"a {what} looks like {example}") from None
    except RecursionError:
        raise GraphError(f"{origin}: JSON nested too deeply; a {what} looks like {example}") from None
    except _JsonRuleError as e:
        raise GraphError(f"{origin}: invalid JSON: {e}") from None
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise GraphError(f"{origin}: a number in the JSON has too many digits; indices are small "
                         "integers") from None


def _read_path(path: str | os.PathLike[str]) -> Any:
    from sg2v.safety import read_input

    origin = os.fspath(path)
    try:
        raw = read_input(path, MAX_GRAPH_FILE_BYTES)
    except OSError as e:
        raise GraphError(f"{origin}: cannot read graph file ({e.strerror or e}); check the path") from None
    return _decode_json(raw, origin)


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith(".json") or os.sep in text or "/" in text)


def _read_source(source: Any) -> tuple[Any, str]:
    """Turn a dict / list / JSON text / bytes / path into JSON data and a label for messages."""
    if isinstance(source, (Mapping, list, tuple)):
        return source, ""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_json(bytes(source), "graph"), ""
    if isinstance(source, os.PathLike):
        return _read_path(source), os.fspath(source)
    if isinstance(source, str):
        stripped = source.strip()
        if stripped.startswith(("{", "[")):
            return _decode_json(source, "graph"), ""
        if stripped and os.path.isfile(stripped):
            return _read_path(stripped), stripped
        if _looks_like_path(stripped):
            raise GraphError(f"{_show(stripped)}: no such graph file; check the path (or pass the JSON text)")
        return _decode_json(source, "graph"), ""
    raise GraphError(f"graph source must be a dict, JSON text, bytes or a path, got {type(source).__name__}")


def _lookup(where: str, kind: str, name: str, reserved: str, table: dict[str, int], names: Sequence[str],
            fix: str) -> int:
    """Vocabulary id of `name`, or a GraphError naming the place and the fix (closest names)."""
    if name == reserved:
        raise GraphError(f"{where}: {reserved!r} is added by sg2v itself; {fix}")
    idx = table.get(name)
    if idx is None:
        raise GraphError(f"{where}: {kind} {_show(name)} not in vocabulary{_suggest(name, names)}")
    return idx


def _suggest(name: str, known: Sequence[str]) -> str:
    """Closest known names (difflib ratio, case-insensitive) as a "did you mean" clause."""
    lowered: dict[str, str] = {}
    for k in known:
        lowered.setdefault(k.lower(), k)
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    if close:
        names = [json.dumps(lowered[c], ensure_ascii=False) for c in close]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return f"; did you mean {listed}?"
    sample = ", ".join(json.dumps(k, ensure_ascii=False) for k in known[:5])
    more = ", ..." if len(known) > 5 else ""
    return f"; the vocabulary has {len(known)} names ({sample}{more})"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_limit(where: str, what: str, count: int, limit: int | None, cfg_field: str) -> None:
    if limit is not None and count > limit:
        noun = what if count != 1 else what[:-1]
        raise GraphError(f"{where}: {count} {noun}, but this model takes at most {limit}; remove "
                         f"{count - limit} or use a model with DataConfig.{cfg_field} >= {count}")


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _check_top(data: Any, where: str) -> str | None:
    """A graph's top level: a JSON object with known keys only; returns its description."""
    top = where or "graph"
    if not isinstance(data, Mapping):
        raise GraphError(f"{top}: a graph must be a JSON object like {_EXAMPLE}, got {_show(data)}")
    for key in data:
        if key not in GRAPH_KEYS:
            raise GraphError(f"{top}: unknown key {_show(key)}; a graph has \"objects\", \"relationships\", "
                             "an optional \"description\" and an optional \"layout\"")
    description = data.get("description")
    if "description" in data and not isinstance(description, str):
        raise GraphError(f"{_join(where, 'description')}: expected a string, got {_show(description)}")
    return description


def _objects(data: Mapping[str, Any], vocab: Vocab, where: str,
             max_objects: int | None) -> tuple[Sequence[str], NDArray[np.int64]]:
    """The graph's object names and their vocabulary indices, the image object's last: (n + 1,)."""
    w_objs = _join(where, "objects")
    if "objects" not in data:
        raise GraphError(f"{where or 'graph'}: missing \"objects\"; a graph looks like {_EXAMPLE}")
    objects = data["objects"]
    if not isinstance(objects, (list, tuple)):
        raise GraphError(f"{w_objs}: expected a list of object names, got {_show(objects)}")
    if not objects:
        raise GraphError(f"{w_objs}: the graph is empty; give at least one object, e.g. [\"red circle\"]")
    _check_limit(w_objs, "objects", len(objects), max_objects, "max_objects")
    n = len(objects)
    objs = np.empty(n + 1, dtype=np.int64)  # (n + 1,)
    for i, name in enumerate(objects):
        w = f"{w_objs}[{i}]"
        if not isinstance(name, str):
            raise GraphError(f"{w}: expected an object name (string), got {_show(name)}")
        objs[i] = _lookup(w, "object", name, IMAGE_OBJECT, vocab.object_name_to_idx, vocab.object_names,
                          "remove it from the graph")
    objs[n] = vocab.object_name_to_idx[IMAGE_OBJECT]
    return objects, objs


def _relationship(rel: Any, w: str, n: int, vocab: Vocab) -> tuple[int, str, int, int]:
    """One [subject, "predicate", object] checked against `n` objects and `vocab`: (s, pred, o, pred id)."""
    if not isinstance(rel, (list, tuple)) or len(rel) != 3:
        raise GraphError(f"{w}: expected [subject index, \"predicate\", object index], got {_show(rel)}")
    s, pred, o = rel
    for role, v in (("subject", s), ("object", o)):
        if not _is_int(v):
            raise GraphError(f"{w}: {role} index must be an integer position in \"objects\", "
                             f"got {_show(v)}")
        if not 0 <= v < n:
            raise GraphError(f"{w}: {role} index {shown(int(v))} out of range; the graph has {n} "
                             f"object(s), indices 0..{n - 1}")
    s, o = int(s), int(o)
    if not isinstance(pred, str):
        raise GraphError(f"{w}: predicate must be a string, got {_show(pred)}")
    p = _lookup(w, "predicate", pred, IN_IMAGE_PRED, vocab.pred_name_to_idx, vocab.pred_names,
                "remove this relationship")
    if s == o:
        raise GraphError(f"{w}: object {s} is related to itself; a relationship joins two different "
                         "objects")
    return s, pred, o, p


def _validate(data: Any, vocab: Vocab, where: str, max_objects: int | None,
              max_relationships: int | None, frames: int | None = None) -> SceneGraph:
    """Check one graph's JSON data against the format and `vocab`; build its internal arrays."""
    description = _check_top(data, where)
    objects, objs = _objects(data, vocab, where, max_objects)
    n = len(objects)

    w_rels = _join(where, "relationships")
    rels = data.get("relationships", [])
    if not isinstance(rels, (list, tuple)):
        raise GraphError(f"{w_rels}: expected a list of [subject, \"predicate\", object], got {_show(rels)}")
    _check_limit(w_rels, "relationships", len(rels), max_relationships, "max_relationships")
    triples = np.empty((len(rels) + n, 3), dtype=np.int64)  # (r + n, 3)
    out: list[tuple[int, str, int]] = []
    seen: dict[tuple[int, str, int], int] = {}
    for j, rel in enumerate(rels):
        w = f"{w_rels}[{j}]"
        s, pred, o, p = _relationship(rel, w, n, vocab)
        key = (s, pred, o)
        if key in seen:
            raise GraphError(f"{w}: duplicates {w_rels}[{seen[key]}] {json.dumps(list(key))}; remove one")
        seen[key] = j
        out.append(key)
        triples[j] = (s, p, o)
    in_image = vocab.pred_name_to_idx[IN_IMAGE_PRED]
    r = len(out)
    triples[r:, 0] = np.arange(n)
    triples[r:, 1] = in_image
    triples[r:, 2] = n
    layout: tuple[tuple[int, Track], ...] = ()
    if "layout" in data:
        layout = tuple(sorted(parse_layout(data["layout"], n, frames, _join(where, "layout")).items()))
    objs.setflags(write=False)
    triples.setflags(write=False)
    return SceneGraph(tuple(objects), tuple(out), objs, triples, description, layout)


def parse_graph(source: Any, vocab: Vocab, max_objects: int | None = None,
                max_relationships: int | None = None, frames: int | None = None) -> SceneGraph:
    """Parse one graph from a dict, JSON text, bytes or a path; `GraphError` names the place and the fix.

    `frames` (the model's) also checks that per-frame layout tracks have one box per frame."""
    data, origin = _read_source(source)
    if isinstance(data, (list, tuple)):
        raise GraphError(f"{origin or 'graph'}: top level is a list; parse_graph takes one graph object like "
                         f"{_EXAMPLE} (load_graphs takes a list)")
    return _validate_at(data, vocab, origin, "", max_objects, max_relationships, frames)


def _validate_at(data: Any, vocab: Vocab, origin: str, path: str, max_objects: int | None,
                 max_relationships: int | None, frames: int | None = None) -> SceneGraph:
    try:
        return _validate(data, vocab, path, max_objects, max_relationships, frames)
    except GraphError as e:
        if origin:
            raise GraphError(f"{origin}: {e}") from None
        raise


def load_graphs(source: Any, vocab: Vocab, max_objects: int | None = None,
                max_relationships: int | None = None, frames: int | None = None) -> list[SceneGraph]:
    """One graph or a JSON list of graphs (errors then name `graphs[i]...`) from any `parse_graph` source."""
    data, origin = _read_source(source)
    if isinstance(data, Mapping):
        return [_validate_at(data, vocab, origin, "", max_objects, max_relationships, frames)]
    if not isinstance(data, (list, tuple)):
        raise GraphError(f"{origin or 'graphs'}: expected a graph object or a list of graphs, "
                         f"got {_show(data)}")
    if not data:
        raise GraphError(f"{origin or 'graphs'}: the list of graphs is empty; give at least one graph")
    return [_validate_at(g, vocab, origin, f"graphs[{i}]", max_objects, max_relationships, frames)
            for i, g in enumerate(data)]


_LAYOUT_EXAMPLE = '{"0": [0.1, 0.1, 0.3, 0.3], "1": {"start": [0.6, 0.6, 0.9, 0.9], "end": [0, 0, 0.3, 0.3]}}'
MAX_LAYOUT_FILE_BYTES = 64 << 20  # a layout of 1024 objects x 1024 frames is about 50 MiB of JSON
MAX_GRAPH_FILE_BYTES = 64 << 20  # a graph file (or a list of graphs), read at most this far


def load_layout(path: str | os.PathLike[str], graph: SceneGraph, frames: int) -> dict[int, NDArray[Any]]:
    """Given tracks for `graph` from a layout file (`sg2v-run --layout`): a layout mapping, or a whole graph
    with a "layout" key (`sg2v.layout.layout_from_file_data`), as (F, 4) float32 boxes by object index."""
    from sg2v.safety import read_input

    origin = os.fspath(path)
    try:
        raw = read_input(path, MAX_LAYOUT_FILE_BYTES)
    except OSError as e:
        raise GraphError(f"{origin}: cannot read layout file ({e.strerror or e}); check the path") from None
    data = _decode_json(raw, origin, "layout", _LAYOUT_EXAMPLE)
    tracks = layout_from_file_data(data, graph.num_objects, frames, origin)
    return expand_layout(tracks, frames, origin)


def pad_graphs(graphs: Sequence[SceneGraph], max_objects: int, max_relationships: int) -> GraphBatch:
    """Stack graphs into fixed-size arrays with masks (ARCHITECTURE.md "Graph tensors")."""
    if not graphs:
        raise GraphError("graphs: nothing to pad; give at least one graph")
    b = len(graphs)
    o_slots, t_slots = padded_slots(max_objects, max_relationships)
    objs = np.zeros((b, o_slots), dtype=np.int64)  # (B, O)
    obj_mask = np.zeros((b, o_slots), dtype=np.float32)  # (B, O)
    triples = np.zeros((b, t_slots, 3), dtype=np.int64)  # (B, T, 3)
    triple_mask = np.zeros((b, t_slots), dtype=np.float32)  # (B, T)
    for i, g in enumerate(graphs):
        if not isinstance(g, SceneGraph):
            raise GraphError(f"graphs[{i}]: expected a SceneGraph (from parse_graph), got {type(g).__name__}")
        _check_limit(f"graphs[{i}].objects", "objects", g.num_objects, max_objects, "max_objects")
        _check_limit(f"graphs[{i}].relationships", "relationships", g.num_relationships, max_relationships,
                     "max_relationships")
        n_obj, n_tri = len(g.objs), len(g.triples)
        objs[i, :n_obj] = g.objs
        obj_mask[i, :n_obj] = 1.0
        triples[i, :n_tri] = g.triples
        triple_mask[i, :n_tri] = 1.0
    return GraphBatch(objs, obj_mask, triples, triple_mask)


def pad_for_config(graphs: Sequence[SceneGraph], config: Any) -> GraphBatch:
    """`pad_graphs` at a `DataConfig`'s (or a `ModelConfig`'s `.data`) maximum objects and relationships."""
    data = getattr(config, "data", config)
    return pad_graphs(graphs, data.max_objects, data.max_relationships)


def graph_schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of the graph format, `sg2v/data/graph.schema.json`."""
    text = (resources.files("sg2v") / "data" / "graph.schema.json").read_text(encoding="utf-8")
    out: dict[str, Any] = json.loads(text)
    return out
