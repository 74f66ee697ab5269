"""sg2v.graph: parsing, error messages, padding against a slow reference, round trips, the JSON Schema."""

import json
from pathlib import Path

import numpy as np
import pytest

from sg2v.config import DataConfig, model_config
from sg2v.errors import GraphError
from sg2v.graph import (
    GraphBatch,
    SceneGraph,
    graph_schema,
    load_graphs,
    pad_for_config,
    pad_graphs,
    parse_graph,
)
from sg2v.vocab import Vocab, shapes_vocab

VOCAB = shapes_vocab()
SPEC_EXAMPLE = {"objects": ["red circle", "blue square"],
                "relationships": [[0, "left of", 1], [1, "approaching", 0]]}
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "graphs").glob("*.json"))


def _gap_vocab() -> Vocab:
    """A vocabulary with placeholder ids and multi-word names, so ids differ from positions."""
    i2n = ["__image__", "man", "NONE", "tree", "NONE", "window", "red car"]
    n2i = {n: i for i, n in enumerate(i2n) if n != "NONE"}
    preds = ["__in_image__", "on", "has", "next to", "behind"]
    return Vocab.from_dict({"object_name_to_idx": n2i, "object_idx_to_name": i2n,
                            "pred_name_to_idx": {n: i for i, n in enumerate(preds)},
                            "pred_idx_to_name": preds})


def random_graph_dict(rng, vocab, max_objects, max_relationships):
    """A valid graph: duplicate object names allowed, relationships unique and never self-relations."""
    n = int(rng.integers(1, max_objects + 1))
    names = [vocab.object_names[i] for i in rng.integers(0, len(vocab.object_names), n)]
    rels = []
    want = int(rng.integers(0, max_relationships + 1))
    for _ in range(4 * want):
        if len(rels) == want or n < 2:
            break
        s, o = (int(x) for x in rng.choice(n, 2, replace=False))
        rel = [s, vocab.pred_names[int(rng.integers(len(vocab.pred_names)))], o]
        if rel not in rels:
            rels.append(rel)
    return {"objects": names, "relationships": rels}


def test_spec_example_internal_arrays():
    g = parse_graph(SPEC_EXAMPLE, VOCAB)
    # red circle = 1, blue square = 2 * 3 + 1 + 1 = 8; left of = 1, approaching = 5; __image__ at position 2
    np.testing.assert_array_equal(g.objs, [1, 8, 0])
    np.testing.assert_array_equal(g.triples, [[0, 1, 1], [1, 5, 0], [0, 0, 2], [1, 0, 2]])
    assert g.objs.dtype == np.int64 and g.triples.dtype == np.int64
    assert g.object_names == ("red circle", "blue square")
    assert g.relationships == ((0, "left of", 1), (1, "approaching", 0))
    with pytest.raises(ValueError):
        g.objs[0] = 3  # the arrays are read-only: a SceneGraph is a value


def test_every_source_kind_gives_the_same_graph(tmp_path):
    text = json.dumps(SPEC_EXAMPLE, indent=2)
    path = tmp_path / "g.json"
    path.write_text(text)
    ref = parse_graph(SPEC_EXAMPLE, VOCAB)
    bom = b"\xef\xbb\xbf"
    for src in (text, text.encode(), bom + text.encode(), bytearray(text.encode()), path, str(path),
                "  " + text + "\n"):
        g = parse_graph(src, VOCAB)
        assert g == ref
        np.testing.assert_array_equal(g.objs, ref.objs)
        np.testing.assert_array_equal(g.triples, ref.triples)


def test_relationships_optional_duplicates_and_description():
    g = parse_graph({"objects": ["red circle", "red circle"], "description": "two of a kind"}, VOCAB)
    assert g.relationships == () and g.description == "two of a kind"
    np.testing.assert_array_equal(g.triples, [[0, 0, 2], [1, 0, 2]])
    assert parse_graph(g.to_dict(), VOCAB) == g


def test_numpy_integers_are_indices():
    g = parse_graph({"objects": ["red circle", "blue square"],
                     "relationships": [(np.int64(0), "above", np.int32(1))]}, VOCAB)
    assert g.relationships == ((0, "above", 1),) and type(g.relationships[0][0]) is int


OK2 = ["red circle", "blue square"]
BAD_CASES = [
    # (source, max_objects, max_relationships, expected text)
    ({"objects": ["red circle", "blue sqare"]}, None, None,
     'objects[1]: object "blue sqare" not in vocabulary; did you mean "blue square"'),
    ({"objects": ["Red Circle"]}, None, None, 'did you mean "red circle"'),
    ({"objects": ["zebra"]}, None, None,
     'objects[0]: object "zebra" not in vocabulary; the vocabulary has 21 names'),
    ({"objects": OK2, "relationships": [[0, "left of", 1], [1, "rightof", 0]]}, None, None,
     'relationships[1]: predicate "rightof" not in vocabulary; did you mean "right of"?'),
    ({"objects": OK2, "relationships": [[0, "left of", 2]]}, None, None,
     "relationships[0]: object index 2 out of range; the graph has 2 object(s), indices 0..1"),
    ({"objects": OK2, "relationships": [[-1, "left of", 1]]}, None, None,
     "relationships[0]: subject index -1 out of range"),
    ({"objects": OK2, "relationships": [[True, "left of", 0]]}, None, None,
     "relationships[0]: subject index must be an integer position in \"objects\", got bool True"),
    ({"objects": OK2, "relationships": [[0, "left of", 1.0]]}, None, None,
     "relationships[0]: object index must be an integer position in \"objects\", got float 1.0"),
    ({"objects": OK2, "relationships": [[0, "left of", "1"]]}, None, None,
     "relationships[0]: object index must be an integer"),
    ({"objects": OK2, "relationships": [[1, "above", 1]]}, None, None,
     "relationships[0]: object 1 is related to itself"),
    ({"objects": OK2, "relationships": [[0, 3, 1]]}, None, None,
     "relationships[0]: predicate must be a string"),
    ({"objects": ["red circle"] * 5}, 4, None,
     "objects: 5 objects, but this model takes at most 4; remove 1 or use a model with "
     "DataConfig.max_objects >= 5"),
    ({"objects": OK2, "relationships": [[0, "above", 1], [1, "above", 0], [0, "below", 1]]}, 4, 2,
     "relationships: 3 relationships, but this model takes at most 2"),
    ({"objects": "red circle"}, None, None, 'objects: expected a list of object names, got "red circle"'),
    ({"objects": OK2, "relationships": {"0": "left of"}}, None, None,
     "relationships: expected a list of [subject"),
    ({"objects": OK2, "relationships": [[0, "left of"]]}, None, None,
     'relationships[0]: expected [subject index, "predicate", object index], got list'),
    ({"objects": OK2, "relationships": [[0, "left of", 1, 2]]}, None, None,
     "relationships[0]: expected [subject"),
    ({"objects": OK2, "relationships": ["0 left of 1"]}, None, None, "relationships[0]: expected [subject"),
    ({"objects": [["red circle"]]}, None, None, "objects[0]: expected an object name (string), got list"),
    ({"objects": []}, None, None, "objects: the graph is empty; give at least one object"),
    ({"relationships": []}, None, None, 'graph: missing "objects"'),
    ({"objects": ["red circle", "__image__"]}, None, None,
     "objects[1]: '__image__' is added by sg2v itself; remove it"),
    ({"objects": OK2, "relationships": [[0, "__in_image__", 1]]}, None, None,
     "relationships[0]: '__in_image__' is added by sg2v itself"),
    ({"objects": OK2, "relationships": [[0, "above", 1], [1, "below", 0], [0, "above", 1]]}, None, None,
     'relationships[2]: duplicates relationships[0] [0, "above", 1]; remove one'),
    ({"objects": OK2, "edges": []}, None, None, 'graph: unknown key "edges"'),
    ({"objects": OK2, "description": 3}, None, None, "description: expected a string, got int 3"),
    (b'{"objects": ["caf\xe9"]}', None, None,
     "graph: not UTF-8 text (byte 0xe9 at offset 17); save the graph as UTF-8"),
    ('{\n  "objects": ["red circle",]\n}', None, None, "graph: invalid JSON at line 2, column 28"),
    ('{"objects": ["red circle"], "objects": []}', None, None,
     'graph: invalid JSON: duplicate key "objects"'),
    ('{"objects": ["red circle"], "relationships": [[0, "above", NaN]]}', None, None,
     "NaN is not valid JSON"),
    ('["red circle"]', None, None, "graph: top level is a list; parse_graph takes one graph object"),
    ("42", None, None, "graph: a graph must be a JSON object like"),
    ("[" * 50000, None, None, "graph: JSON nested too deeply"),
    ('{"objects": ["red circle"], "relationships": [[0, "above", ' + "9" * 5000 + "]]}", None, None,
     "graph: a number in the JSON has too many digits"),
    ("no/such/graph.json", None, None, '"no/such/graph.json": no such graph file; check the path'),
    (3.5, None, None, "graph source must be a dict, JSON text, bytes or a path, got float"),
]


@pytest.mark.parametrize("source, max_o, max_r, expected", BAD_CASES, ids=[c[3][:50] for c in BAD_CASES])
def test_error_names_the_place_and_the_fix(source, max_o, max_r, expected):
    with pytest.raises(GraphError) as e:
        parse_graph(source, VOCAB, max_objects=max_o, max_relationships=max_r)
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg and len(msg) < 400
    assert e.value.exit_code == 2


def test_file_errors_carry_the_path(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"objects": ["red circle", "purple circle"]}))
    with pytest.raises(GraphError, match=r"bad\.json: objects\[1\]: object \"purple circle\" not in vocab"):
        parse_graph(path, VOCAB)
    with pytest.raises(GraphError, match="cannot read graph file"):
        parse_graph(tmp_path, VOCAB)  # a folder


def test_load_graphs_single_and_list(tmp_path):
    rng = np.random.default_rng(7)
    dicts = [random_graph_dict(rng, VOCAB, 4, 4) for _ in range(6)]
    graphs = load_graphs(json.dumps(dicts), VOCAB, 4, 4)
    assert [g.to_dict() for g in graphs] == dicts
    assert load_graphs(dicts[0], VOCAB) == [parse_graph(dicts[0], VOCAB)]
    bad = [dict(d) for d in dicts]
    bad[3] = {"objects": [dicts[3]["objects"][0], "grey circle"]}
    path = tmp_path / "many.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(GraphError, match=r"many\.json: graphs\[3\]\.objects\[1\]: object \"grey circle\""):
        load_graphs(path, VOCAB)
    with pytest.raises(GraphError, match=r"graphs\[1\]: a graph must be a JSON object"):
        load_graphs([dicts[0], "red circle"], VOCAB)
    five = {"objects": OK2, "relationships": [[0, p, 1] for p in VOCAB.pred_names[:5]]}
    with pytest.raises(GraphError, match=r"graphs\[0\]\.relationships: 5 relationships, but this model takes "
                                         r"at most 4"):
        load_graphs([five], VOCAB, 4, 4)
    with pytest.raises(GraphError, match="the list of graphs is empty"):
        load_graphs("[]", VOCAB)
    with pytest.raises(GraphError, match="expected a graph object or a list of graphs"):
        load_graphs('"red circle"', VOCAB)


@pytest.mark.parametrize("vocab", [VOCAB, _gap_vocab()], ids=["shapes", "gaps"])
def test_round_trip_random_graphs(vocab):
    rng = np.random.default_rng(3)
    for _ in range(30):
        d = random_graph_dict(rng, vocab, 6, 8)
        g = parse_graph(d, vocab)
        assert g.to_dict() == d
        again = parse_graph(g.to_json(), vocab)
        assert again == g
        np.testing.assert_array_equal(again.triples, g.triples)


def _reference_pad(dicts, vocab, max_objects, max_relationships):
    """Slow, obvious version of ARCHITECTURE.md "Graph tensors", straight from names."""
    o_slots, t_slots = max_objects + 1, max_relationships + max_objects
    objs = [[0] * o_slots for _ in dicts]
    obj_mask = [[0.0] * o_slots for _ in dicts]
    triples = [[[0, 0, 0] for _ in range(t_slots)] for _ in dicts]
    triple_mask = [[0.0] * t_slots for _ in dicts]
    for b, d in enumerate(dicts):
        names = list(d["objects"]) + ["__image__"]
        for k, name in enumerate(names):
            objs[b][k] = vocab.object_name_to_idx[name]
            obj_mask[b][k] = 1.0
        internal = [[s, vocab.pred_name_to_idx[p], o] for s, p, o in d["relationships"]]
        n = len(d["objects"])
        internal += [[i, vocab.pred_name_to_idx["__in_image__"], n] for i in range(n)]
        for k, t in enumerate(internal):
            triples[b][k] = t
            triple_mask[b][k] = 1.0
    return objs, obj_mask, triples, triple_mask


@pytest.mark.parametrize("vocab", [VOCAB, _gap_vocab()], ids=["shapes", "gaps"])
def test_padding_matches_slow_reference(vocab):
    rng = np.random.default_rng(11)
    for _ in range(20):
        max_o, max_r = int(rng.integers(1, 7)), int(rng.integers(0, 9))
        dicts = [random_graph_dict(rng, vocab, max_o, max_r) for _ in range(int(rng.integers(1, 6)))]
        batch = pad_graphs([parse_graph(d, vocab, max_o, max_r) for d in dicts], max_o, max_r)
        ref = _reference_pad(dicts, vocab, max_o, max_r)
        b, o_slots, t_slots = len(dicts), max_o + 1, max_r + max_o
        feeds = batch.as_feeds()
        assert list(feeds) == ["objs", "obj_mask", "triples", "triple_mask"]
        for (name, arr), want, dtype, shape in zip(
            feeds.items(), ref, [np.int64, np.float32, np.int64, np.float32],
            [(b, o_slots), (b, o_slots), (b, t_slots, 3), (b, t_slots)],
        ):
            assert arr.dtype == dtype and arr.shape == shape, name
            np.testing.assert_array_equal(arr, np.asarray(want), err_msg=name)
        assert batch.batch_size == b
        # every real triple points at real objects; the image object gets one __in_image__ edge per object
        t_real = batch.triples[batch.triple_mask == 1]
        o_mask = batch.obj_mask
        rows = np.repeat(np.arange(b), batch.triple_mask.sum(1).astype(int))
        assert np.all(o_mask[rows, t_real[:, 0]] == 1) and np.all(o_mask[rows, t_real[:, 2]] == 1)


def test_pad_for_config_and_limits():
    rng = np.random.default_rng(5)
    data = DataConfig(max_objects=3, max_relationships=2)
    dicts = [random_graph_dict(rng, VOCAB, 3, 2) for _ in range(4)]
    graphs = [parse_graph(d, VOCAB) for d in dicts]
    batch = pad_for_config(graphs, data)
    assert batch.objs.shape == (4, data.padded_objects) and batch.triples.shape == (4, data.padded_triples, 3)
    cfg = model_config("tiny")
    batch = pad_for_config(graphs, cfg)
    assert isinstance(batch, GraphBatch) and batch.triple_mask.shape == (4, cfg.data.padded_triples)
    big = parse_graph({"objects": ["red circle"] * 4}, VOCAB)
    with pytest.raises(GraphError, match=r"graphs\[1\]\.objects: 4 objects, but this model takes at most 3"):
        pad_graphs([graphs[0], big], 3, 2)
    with pytest.raises(GraphError, match="nothing to pad"):
        pad_graphs([], 3, 2)
    with pytest.raises(GraphError, match=r"graphs\[0\]: expected a SceneGraph"):
        pad_graphs([SPEC_EXAMPLE], 3, 2)


def test_scene_graph_equality_is_by_content():
    a = parse_graph(SPEC_EXAMPLE, VOCAB)
    b = SceneGraph(a.object_names, a.relationships, a.objs.copy(), a.triples.copy())
    assert a == b and a != parse_graph({"objects": ["red circle"]}, VOCAB)


# --- the JSON Schema ---------------------------------------------------------------------------------------

# Structural cases on which schema and parser must agree (vocabulary-independent: names are all in the vocab).
SCHEMA_TABLE = [
    (SPEC_EXAMPLE, True),
    ({"objects": ["red circle"]}, True),
    ({"objects": ["red circle", "red circle"], "relationships": [], "description": "x"}, True),
    ({"objects": []}, False),
    ({}, False),
    ({"objects": ["red circle"], "extra": 1}, False),
    ({"objects": "red circle"}, False),
    ({"objects": [1]}, False),
    ({"objects": ["red circle", "__image__"]}, False),
    ({"objects": OK2, "relationships": [[0, "__in_image__", 1]]}, False),
    ({"objects": OK2, "relationships": [[0, "above"]]}, False),
    ({"objects": OK2, "relationships": [[0, "above", 1, 0]]}, False),
    ({"objects": OK2, "relationships": [[0, "above", -1]]}, False),
    ({"objects": OK2, "relationships": [[0, "above", True]]}, False),
    ({"objects": OK2, "relationships": [[0, "above", "1"]]}, False),
    ({"objects": OK2, "relationships": [[0, 1, 1]]}, False),
    ({"objects": OK2, "relationships": [[0, "above", 1], [0, "above", 1]]}, False),
    ({"objects": OK2, "relationships": {"a": 1}}, False),
    ({"objects": OK2, "description": None}, False),
    ([SPEC_EXAMPLE], False),
]


def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed: pip install 'sg2v[dev]'")
    schema = graph_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _parser_accepts(data) -> bool:
    try:
        parse_graph(data, VOCAB)
    except GraphError:
        return False
    return True


@pytest.mark.parametrize("data, ok", SCHEMA_TABLE, ids=[str(i) for i in range(len(SCHEMA_TABLE))])
def test_schema_and_parser_agree(data, ok):
    v = _validator()
    assert v.is_valid(data) == ok
    assert _parser_accepts(data) == ok


def test_schema_accepts_every_parsed_graph():
    v = _validator()
    rng = np.random.default_rng(2)
    for _ in range(30):
        g = parse_graph(random_graph_dict(rng, VOCAB, 5, 6), VOCAB)
        v.validate(g.to_dict())


def test_schema_documents_what_only_the_parser_checks():
    # JSON Schema cannot see vocabularies, index ranges, self-relations or tell 1 from 1.0; the parser does
    v = _validator()
    for data in ({"objects": ["zebra"]}, {"objects": OK2, "relationships": [[0, "above", 5]]},
                 {"objects": OK2, "relationships": [[1, "above", 1]]},
                 {"objects": OK2, "relationships": [[0, "above", 1.0]]}):
        assert v.is_valid(data) and not _parser_accepts(data)
    assert "1.0" in graph_schema()["description"]


@pytest.mark.skipif(not EXAMPLES, reason="no examples/graphs/*.json in this checkout yet")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_graphs_parse_and_match_schema(path):
    g = parse_graph(path, VOCAB, max_objects=4, max_relationships=4)
    assert g.description, f"{path.name}: examples carry a one-line purpose in \"description\""
    _validator().validate(json.loads(path.read_text()))
