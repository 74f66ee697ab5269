"""Property test: malformed graphs end in GraphError, never another exception; accepted ones are sound."""

import copy
import json

import numpy as np
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


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_graphs(draw):
    """A valid graph with a few spots replaced by random JSON, deleted, or given an extra key."""
    g = draw(valid_graphs())
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(g))
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
