"""sg2v.vocab: sg2im layout, the packaged shapes vocabulary, and one-line errors for malformed files."""

import copy
import json

import numpy as np
import pytest

from sg2v.config import EncoderConfig
from sg2v.errors import VocabError
from sg2v.vocab import Vocab, load_vocab, save_vocab, shapes_vocab

# shapes-world.md, in its table order
COLORS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white"]
SHAPES = ["circle", "square", "triangle"]
PREDICATES = ["left of", "right of", "above", "below", "approaching", "moving away from"]


def _sg2im_dict(objects, preds):
    return {
        "object_name_to_idx": {n: i for i, n in enumerate(objects)},
        "object_idx_to_name": list(objects),
        "pred_name_to_idx": {n: i for i, n in enumerate(preds)},
        "pred_idx_to_name": list(preds),
    }


def _random_vocab_dict(rng):
    objects = ["__image__"] + [f"obj{i}_{rng.integers(1000)}" for i in range(rng.integers(2, 40))]
    preds = ["__in_image__"] + [f"pred{i}" for i in range(rng.integers(1, 12))]
    return _sg2im_dict(objects, preds)


def test_shapes_vocab_follows_the_spec():
    v = shapes_vocab()
    expected_objs = ["__image__"]
    for c in COLORS:
        for s in SHAPES:
            expected_objs.append(f"{c} {s}")
    assert list(v.object_idx_to_name) == expected_objs
    assert list(v.pred_idx_to_name) == ["__in_image__", *PREDICATES]
    assert all(v.object_name_to_idx[n] == i for i, n in enumerate(expected_objs))
    assert all(v.pred_name_to_idx[n] == i for i, n in enumerate(v.pred_idx_to_name))
    assert list(v.object_names) == expected_objs[1:]
    assert list(v.pred_names) == PREDICATES
    # the default encoder is sized for the shapes world
    assert (v.num_objs, v.num_preds) == (EncoderConfig().num_objs, EncoderConfig().num_preds)


def test_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(5):
        d = _random_vocab_dict(rng)
        v = Vocab.from_dict(d)
        assert v.to_dict() == d
        assert Vocab.from_dict(json.loads(v.to_json())) == v
        path = tmp_path / f"v{k}.json"
        save_vocab(v, path)
        assert load_vocab(path) == v
    s = shapes_vocab()
    assert Vocab.from_dict(s.to_dict()) == s


def test_to_dict_is_plain_and_detached():
    v = shapes_vocab()
    d = v.to_dict()
    assert {type(x) for x in d.values()} == {dict, list}
    d["object_name_to_idx"]["red circle"] = 5  # must not reach the vocab
    assert v.object_name_to_idx["red circle"] == 1


def test_sg2im_visual_genome_layout_with_attributes_loads(tmp_path):
    # sg2im's VG vocab.json carries attribute tables as well; they are ignored
    d = _sg2im_dict(["__image__", "man", "tree", "window"], ["__in_image__", "on", "has", "next to"])
    d["attribute_name_to_idx"] = {"red": 0}
    d["attribute_idx_to_name"] = ["red"]
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(d))
    v = load_vocab(path)
    assert v.object_names == ("man", "tree", "window")
    assert v.pred_names == ("on", "has", "next to")
    assert "attribute_name_to_idx" not in v.to_dict()


def test_coco_layout_with_placeholder_ids_loads():
    # sg2im's COCO vocab: category ids have gaps filled with "NONE" in object_idx_to_name
    i2n = ["__image__", "person", "NONE", "NONE", "car", "NONE", "sky-other"]
    n2i = {"__image__": 0, "person": 1, "car": 4, "sky-other": 6}
    d = {"object_name_to_idx": n2i, "object_idx_to_name": i2n,
         "pred_name_to_idx": {"__in_image__": 0, "left of": 1},
         "pred_idx_to_name": ["__in_image__", "left of"]}
    v = Vocab.from_dict(d)
    assert v.num_objs == 7
    assert v.object_names == ("person", "car", "sky-other")  # placeholders cannot be written in a graph


def _mutate(d, key, value):
    d = copy.deepcopy(d)
    if value is _DELETE:
        del d[key]
    else:
        d[key] = value
    return d


_DELETE = object()
_BASE = _sg2im_dict(["__image__", "a", "b"], ["__in_image__", "p"])

BAD = [
    (["not", "a", "dict"], "expected a JSON object"),
    (_mutate(_BASE, "pred_idx_to_name", _DELETE), "missing key(s) pred_idx_to_name"),
    (_mutate(_BASE, "object_idx_to_name", "abc"), "object_idx_to_name: expected a non-empty list"),
    (_mutate(_BASE, "object_idx_to_name", []), "object_idx_to_name: expected a non-empty list"),
    (_mutate(_BASE, "object_idx_to_name", ["__image__", 3, "b"]), "object_idx_to_name[1]: expected a name"),
    (_mutate(_BASE, "pred_name_to_idx", [1, 2]), "pred_name_to_idx: expected a non-empty object"),
    (_mutate(_BASE, "object_name_to_idx", {"__image__": 0, "a": "1", "b": 2}),
     "object_name_to_idx['a']: expected an integer index"),
    (_mutate(_BASE, "object_name_to_idx", {"__image__": 0, "a": True, "b": 2}),
     "object_name_to_idx['a']: expected an integer index"),
    (_mutate(_BASE, "object_name_to_idx", {"__image__": 0, "a": 1, "b": 7}),
     "object_name_to_idx['b']: index 7 is outside object_idx_to_name"),
    (_mutate(_BASE, "object_name_to_idx", {"__image__": 0, "a": 2, "b": 1}),
     "object_name_to_idx['a']: index 2 names 'b'"),
    (_mutate(_BASE, "object_name_to_idx", {"__image__": 0, "a": 1, "b": -1}),
     "object_name_to_idx['b']: index -1 is outside"),
    (_sg2im_dict(["a", "__image__"], ["__in_image__", "p"]), "'__image__' must be index 0"),
    (_sg2im_dict(["a", "b"], ["__in_image__", "p"]),
     "'__image__' must be index 0 (sg2im convention), it is missing"),
    (_sg2im_dict(["__image__", "a"], ["p", "__in_image__"]),
     "pred_name_to_idx: '__in_image__' must be index 0"),
]


@pytest.mark.parametrize("d, expected", BAD, ids=[b[1][:40] for b in BAD])
def test_malformed_vocab_names_the_key(d, expected):
    with pytest.raises(VocabError) as e:
        Vocab.from_dict(d)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_load_vocab_file_errors(tmp_path):
    with pytest.raises(VocabError, match="cannot read vocabulary file"):
        load_vocab(tmp_path / "missing.json")
    bad = tmp_path / "latin1.json"
    raw = b'{"object_idx_to_name": ["caf\xe9"]}'
    bad.write_bytes(raw)
    with pytest.raises(VocabError, match=rf"not UTF-8 text \(byte 0xe9 at offset {raw.index(0xE9)}\)"):
        load_vocab(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "object_idx_to_name": [1,\n}')
    with pytest.raises(VocabError, match="invalid JSON at line 3, column 1"):
        load_vocab(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_mutate(_BASE, "pred_name_to_idx", {"__in_image__": 0, "p": 3})))
    with pytest.raises(VocabError, match=r"wrong\.json\.pred_name_to_idx\['p'\]: index 3 is outside"):
        load_vocab(wrong)
