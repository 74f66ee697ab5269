"""Property test: malformed graphs end in GraphError, never another exception; accepted ones are sound."""

import copy
import json

import numpy as np
from helpers import json_paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sg2v.errors import GraphError
from sg2v.graph import graph_schema, load_graphs, parse_graph
from sg2v.vocab import shapes_vocab

VOCAB = shapes_vocab()
FUZZ = settings(derandomize=True, max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

try:
    import jsonschema

    SCHEMA = jsonschema.Draft202012Validator(graph_schema())
except ImportError:  # the structural cross-check below is then skipped; the GraphError property still runs
    SCHEMA = None

# Leaves biased towards values that sit near the format's edges.
NEAR_NAMES = [*VOCAB.object_names[:4], *VOCAB.pred_names, "__image__", "__in_image__", "Red Circle", "", " "]
leaves = (
    st.none() | st.booleans() | st.integers(-3, 6) | st.integers() | st.floats(allow_nan=True)
    | st.sampled_from(NEAR_NAMES) | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=14), inner, max_size=4),
    max_leaves=25,
)
# Integers Python will not print (over 4300 digits), that overflow float(), int64 and uint64; a Python
# caller can pass them where JSON text could not (the JSON reader refuses such numbers itself).
# (Built by .map: hypothesis cannot print such a number in a strategy's description.)
HUGE = st.sampled_from([(10, 5000), (-10, 5001), (10, 400), (2, 64), (2, 63)]).map(lambda b: b[0] ** b[1])
hostile_values = st.recursive(
    leaves | HUGE,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=14), inner, max_size=4),
    max_leaves=25,
)


@st.composite
def valid_graphs(draw):
    n = draw(st.integers(1, 5))
    objects = draw(st.lists(st.sampled_from(VOCAB.object_names), min_size=n, max_size=n))
    rels = draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(VOCAB.pred_names),
                                   st.integers(0, n - 1)), max_size=5))
    unique = [r for i, r in enumerate(rels) if r[0] != r[2] and r not in rels[:i]]
    g = {"objects": objects, "relationships": [list(r) for r in unique]}
    if draw(st.booleans()):
        g["description"] = draw(st.text(max_size=20))
    return g


@st.composite
def graphs_with_layouts(draw):
    """A valid graph with a "layout" for some of its objects: static boxes, motion or one box per frame."""
    g = draw(valid_graphs())
    box = st.lists(st.floats(0, 1), min_size=4, max_size=4).map(sorted)
    track = box | st.fixed_dictionaries({"start": box, "end": box}) | st.lists(box, min_size=4, max_size=4)
    keys = st.sampled_from([str(i) for i in range(len(g["objects"]))])
    g["layout"] = draw(st.dictionaries(keys, track, max_size=len(g["objects"])))
    return g


@st.composite
def mutated_graphs(draw, values=json_values, base=None):
    """A valid graph with a few spots replaced by random JSON, deleted, or given an extra key."""
    g = draw(base if base is not None else valid_graphs())
    json_values = values
    for _ in range(draw(st.integers(1, 3))):
        paths = list(json_paths(g))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "add_key"]))
        if not path:
            if op == "add_key" and isinstance(g, dict):
                g = {**g, draw(st.text(max_size=8)): draw(json_values)}
            elif op == "replace":
                g = draw(json_values)
            continue
        parent = g
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op == "delete":
            del parent[last]
        elif op == "add_key" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent[last] = draw(json_values)
    return g


def _check_outcome(call):
    """Either a well-formed result or GraphError; anything else fails the test."""
    try:
        result = call()
    except GraphError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        return None
    graphs = result if isinstance(result, list) else [result]
    for g in graphs:
        n, r = g.num_objects, g.num_relationships
        assert g.objs.shape == (n + 1,) and g.objs.dtype == np.int64 and g.objs[-1] == 0
        assert g.triples.shape == (r + n, 3) and g.triples.dtype == np.int64
        assert np.all((g.triples[:, [0, 2]] >= 0) & (g.triples[:, [0, 2]] <= n))
        assert np.all(g.triples[:r, 0] != g.triples[:r, 2]) and np.all(g.triples[r:, 2] == n)
        assert np.all(g.triples[:r, 1] > 0) and np.all(g.triples[r:, 1] == 0)
        assert len(set(g.relationships)) == r
    return result


@FUZZ
@given(json_values)
def test_random_json_values(value):
    _check_outcome(lambda: parse_graph(value, VOCAB, max_objects=4, max_relationships=4))
    _check_outcome(lambda: load_graphs(value, VOCAB))
    text = json.dumps(value)
    _check_outcome(lambda: parse_graph(text, VOCAB))


@FUZZ
@given(st.binary(max_size=120))
def test_random_bytes(raw):
    _check_outcome(lambda: parse_graph(raw, VOCAB))
    _check_outcome(lambda: load_graphs(raw, VOCAB))


@FUZZ
@given(st.text(max_size=80))
def test_random_text(text):
    _check_outcome(lambda: parse_graph(text, VOCAB))
    _check_outcome(lambda: load_graphs(text, VOCAB))


@FUZZ
@given(mutated_graphs(), st.integers(1, 5), st.integers(0, 5))
def test_mutated_graphs(g, max_o, max_r):
    before = copy.deepcopy(g)
    result = _check_outcome(lambda: parse_graph(g, VOCAB, max_objects=max_o, max_relationships=max_r))
    assert g == before  # the parser never edits its input
    text = json.dumps(g)
    from_text = _check_outcome(lambda: parse_graph(text, VOCAB, max_objects=max_o, max_relationships=max_r))
    assert (result is None) == (from_text is None)
    if result is not None:
        assert from_text == result
        if SCHEMA is not None:
            assert SCHEMA.is_valid(g), "the parser accepted a graph the published schema rejects"
    _check_outcome(lambda: load_graphs(json.dumps([before, g]), VOCAB, max_o, max_r))
    if isinstance(g, dict):  # truncated or byte-damaged JSON text
        raw = text.encode()
        _check_outcome(lambda: parse_graph(raw[: len(raw) // 2], VOCAB))
        _check_outcome(lambda: parse_graph(raw[:-1] + b"\xff", VOCAB))


@FUZZ
@given(valid_graphs())
def test_valid_graphs_parse_and_round_trip(g):
    got = _check_outcome(lambda: parse_graph(g, VOCAB))
    assert got is not None and got.to_dict() == g
    assert parse_graph(got.to_json(), VOCAB) == got


@st.composite
def huge_at_a_leaf(draw):
    """A graph with a layout whose leaves (an object name, an index, a coordinate, ...) are huge integers at
    one to three random spots."""
    g = draw(graphs_with_layouts())
    for _ in range(draw(st.integers(1, 3))):
        leaves = [p for p in json_paths(g) if p and not isinstance(_at(g, p), (dict, list))]
        path = draw(st.sampled_from(leaves))
        _at(g, path[:-1])[path[-1]] = draw(HUGE)
    return g


def _at(value, path):
    for step in path:
        value = value[step]
    return value


@FUZZ
@given(huge_at_a_leaf() | mutated_graphs(hostile_values, graphs_with_layouts()), st.integers(1, 5),
       st.integers(0, 5))
def test_huge_integers_anywhere_in_a_graph_or_its_layout(g, max_o, max_r):
    """Integers too large to print or to convert to float, at any spot of a graph or its layout: a one-line
    GraphError (Python's own ValueError for >4300 digits and OverflowError used to escape)."""
    before = copy.deepcopy(g)
    _check_outcome(lambda: parse_graph(g, VOCAB, max_objects=max_o, max_relationships=max_r, frames=4))
    _check_outcome(lambda: load_graphs([g], VOCAB, max_o, max_r))
    assert g == before


UNICODE_DIGITS = ["²", "٣", "１", "𝟙", "߀", "1²", "0٣"]  # str.isdigit() is True for each; int() refuses some


@FUZZ
@given(valid_graphs(), st.text(alphabet=st.sampled_from("0123²٣１𝟙߀"), min_size=1, max_size=3))
def test_unicode_digits_as_layout_keys_are_one_line(g, key):
    """A layout key of digits that are not ASCII ("²".isdigit() is True, int("²") raises ValueError) is a
    GraphError naming the key, in a graph's layout and in a layout file alike; ASCII keys still parse."""
    g = dict(g, layout={key: [0.1, 0.1, 0.3, 0.3]})
    if key.isascii() and (key == "0" or not key.startswith("0")) and int(key) < len(g["objects"]):
        assert dict(parse_graph(g, VOCAB, frames=4).layout)[int(key)]
        return
    _check_outcome(lambda: parse_graph(g, VOCAB, frames=4))
    try:
        parse_graph(g, VOCAB, frames=4)
    except GraphError as e:
        assert "\n" not in str(e) and ("ASCII digits" in str(e) or "out of range" in str(e))
    else:
        raise AssertionError(f"layout key {key!r} accepted")


def test_unicode_digit_keys_in_a_layout_file(tmp_path):
    from sg2v.graph import load_layout

    g = parse_graph({"objects": ["red circle", "blue square"], "relationships": []}, VOCAB)
    for key in UNICODE_DIGITS:
        path = tmp_path / "layout.json"
        path.write_text(json.dumps({key: [0.1, 0.1, 0.3, 0.3]}), encoding="utf-8")
        try:
            load_layout(path, g, frames=4)
        except GraphError as e:
            assert "\n" not in str(e) and "ASCII digits" in str(e), key
        else:
            raise AssertionError(f"layout key {key!r} accepted")


def test_unicode_digit_keys_in_pipeline_layouts():
    """Pipeline.run(layouts=...) keys: ints or ASCII digit strings; "²" is one line before anything runs."""
    import pytest

    pytest.importorskip("onnxruntime")
    from pathlib import Path

    from sg2v.errors import Sg2vError
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(Path(__file__).resolve().parents[1] / "models" / "demo", backend="ort")
    g = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    track = np.tile(np.array([0.1, 0.1, 0.3, 0.3], np.float32), (pipe.bundle.shapes["frames"], 1))
    for key in [*UNICODE_DIGITS, True, "-1", 1.5]:
        with pytest.raises(Sg2vError, match="is not an object index") as e:
            pipe.run([g], [3], steps=1, layouts=[{key: track}])
        assert "\n" not in str(e.value), key
