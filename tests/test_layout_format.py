"""Layouts in graph JSON and `--layout` files: the three track forms, expansion, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sg2v.errors import GraphError
from sg2v.graph import graph_schema, parse_graph
from sg2v.layout import layout_from_file_data, layout_json, parse_layout
from sg2v.vocab import shapes_vocab

VOCAB = shapes_vocab()
GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


def test_three_forms_expand_to_per_frame_boxes():
    rng = np.random.default_rng(11)
    frames = 5
    per_frame = [[float(a), float(b), float(a) + 0.2, float(b) + 0.1]
                 for a, b in rng.uniform(0.0, 0.7, size=(frames, 2))]
    motion = {"start": [0.6, 0.6, 0.85, 0.85], "end": [0.6, 0.1, 0.85, 0.35]}
    g = parse_graph({**GRAPH, "layout": {"0": [0.05, 0.1, 0.3, 0.35], "1": motion}}, VOCAB, frames=frames)
    tracks = g.tracks(frames)
    assert sorted(tracks) == [0, 1]
    np.testing.assert_array_equal(tracks[0], np.tile(np.float32([0.05, 0.1, 0.3, 0.35]), (frames, 1)))
    # linear motion: frame k is start + (end - start) k / (F - 1), computed in float64 by hand
    start, end = np.array([0.6, 0.6, 0.85, 0.85]), np.array([0.6, 0.1, 0.85, 0.35])
    want = np.stack([start + (end - start) * k / (frames - 1) for k in range(frames)]).astype(np.float32)
    np.testing.assert_allclose(tracks[1], want, rtol=0, atol=1e-7)
    g2 = parse_graph({**GRAPH, "layout": {"1": per_frame}}, VOCAB, frames=frames)
    np.testing.assert_array_equal(g2.tracks(frames)[1], np.float32(per_frame))


def test_layout_round_trips_through_to_dict_and_schema():
    jsonschema = pytest.importorskip("jsonschema")
    data = {**GRAPH, "layout": {"1": {"start": [0.6, 0.6, 0.85, 0.85], "end": [0.6, 0.1, 0.85, 0.35]},
                                "0": [0.05, 0.1, 0.3, 0.35]}}
    g = parse_graph(data, VOCAB)
    again = parse_graph(json.loads(g.to_json()), VOCAB)
    assert again == g and again.layout == g.layout
    jsonschema.validate(g.to_dict(), graph_schema())


def test_saved_layout_loads_again_to_the_same_tracks():
    rng = np.random.default_rng(5)
    lo = rng.uniform(0.0, 0.6, size=(3, 7, 2))
    tracks = np.concatenate([lo, lo + rng.uniform(0.05, 0.3, size=(3, 7, 2))], -1)  # (n, F, 4)
    saved = json.loads(json.dumps(layout_json(tracks)))
    back = layout_from_file_data(saved, 3, 7, "tracks.json")
    for i in range(3):  # float32 tracks come back bit for bit
        np.testing.assert_array_equal(back[i].expand(7), tracks[i].astype(np.float32))
    assert len(json.dumps(saved)) < 3 * 7 * 4 * 13  # shortest round-trip decimals, not 17 digits
    # a whole graph carrying a "layout" key is accepted too
    graph = {"objects": ["red circle", "blue square", "green triangle"], "layout": saved}
    assert layout_from_file_data(graph, 3, 7, "g.json") == back


@pytest.mark.parametrize("layout, message", [
    ({"0": [0.3, 0.1, 0.2, 0.4]}, 'layout["0"]: x1 0.2 <= x0 0.3'),
    ({"0": [0.1, 0.5, 0.2, 0.4]}, "y1 0.4 <= y0 0.5"),
    ({"0": [0.1, 0.1, 1.2, 0.4]}, 'layout["0"][2]: 1.2 is outside [0, 1]'),
    ({"0": [0.1, 0.1, 0.2]}, "a box is [x0, y0, x1, y1]"),
    ({"0": [[0.1, 0.1, 0.2, 0.2]] * 3}, "3 boxes, but this model makes 4 frames"),
    ({"2": [0.1, 0.1, 0.2, 0.2]}, "object index 2 out of range; the graph has 2 object(s)"),
    ({"a": [0.1, 0.1, 0.2, 0.2]}, 'keys are object indices written as strings of ASCII digits ("0" .. "1")'),
    ({"01": [0.1, 0.1, 0.2, 0.2]}, "keys are object indices"),
    ({"0": {"start": [0.1, 0.1, 0.2, 0.2]}}, 'a moving box is {"start": box, "end": box}'),
    ({"0": "box"}, "expected a track"),
    ([[0.1, 0.1, 0.2, 0.2]], "expected an object mapping object indices to tracks"),
    ({"0": [0.1, 0.1, True, 0.2]}, 'layout["0"][2]: expected a number in [0, 1]'),
])
def test_bad_layouts_get_one_line_errors(layout, message):
    with pytest.raises(GraphError) as e:
        parse_graph({**GRAPH, "layout": layout}, VOCAB, frames=4)
    text = str(e.value)
    assert message in text and "\n" not in text


def test_nan_is_refused_in_python_data():
    with pytest.raises(GraphError, match=r"nan is outside \[0, 1\]"):
        parse_layout({"0": [0.1, 0.1, float("nan"), 0.2]}, 1)
