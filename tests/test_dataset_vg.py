"""Visual Genome 1.4 -> converted data set, checked against the fixture's facts (dataset_fixtures.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import write_vg

from sg2v.dataset import CommonOptions, ConvertedDataset, VGOptions, convert
from sg2v.dataset.vg import load_aliases
from sg2v.errors import DatasetError
from sg2v.vocab import load_vocab

OPTS = dict(min_object_instances=2, min_relationship_instances=2)


def _convert(src: Path, out: Path, **kw) -> dict:
    opts = VGOptions(splits_json=str(src / "vg_splits.json"), **{**OPTS, **kw})
    return convert("vg", src, out, CommonOptions(size="tiny"), opts, log=lambda line: None)


@pytest.fixture(scope="module")
def vg(tmp_path_factory):
    root = tmp_path_factory.mktemp("vg")
    facts = write_vg(root / "src")
    info = _convert(root / "src", root / "out")
    return root, facts, info


def _drops(info: dict) -> dict:
    return {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}


def test_vocabulary_follows_sg2im_thresholds_and_loads(vg):
    root, facts, info = vg
    vocab = load_vocab(root / "out" / "vocab.json")
    # image 3 (shorter side 150 px) is removed before counting, so its two cups stay out of the vocabulary
    assert list(vocab.object_idx_to_name) == facts["vocab_objects"]
    assert list(vocab.pred_idx_to_name) == facts["vocab_preds"]
    assert info["vocab"] == {"objects": 3, "predicates": 2, "object_ids": 4, "predicate_ids": 3}


def test_samples_per_split_and_their_sources(vg):
    root, facts, info = vg
    for split, ids in facts["samples"].items():
        ds = ConvertedDataset(root / "out", split)
        assert [ds[i]["source"]["image_id"] for i in range(len(ds))] == ids
        assert info["splits"][split]["samples"] == len(ids) == info["splits"][split]["frames"]
    assert ConvertedDataset(root / "out", "test")[0]["source"]["file"] == "VG_100K_2/7.jpg"


def test_image_one_graph_boxes_and_frame(vg):
    root, facts, _ = vg
    s = ConvertedDataset(root / "out", "train")[0]
    fact = facts["image1"]
    assert s["graph"] == {"objects": fact["objects"], "relationships": fact["relationships"]}
    np.testing.assert_allclose(s["boxes"][:, 0], np.array(fact["boxes"]), atol=1e-6)
    assert s["visible"].all() and s["has_layout"].all() and s["rel_frames"].shape == (2, 1)
    assert s["frames"].shape == (1, 16, 16, 3) and s["frames"].dtype == np.uint8
    # a solid-color JPEG stays that color (within JPEG rounding) whatever the resize filter
    assert np.abs(s["frames"].astype(int) - facts["colors"][1]).max() <= 3


def test_every_drop_is_counted_by_reason(vg):
    _, facts, info = vg
    drops = _drops(info)
    for key, n in facts["drops"].items():
        assert drops.get(key) == n, (key, drops.get(key))
    # image 1's "behind" and image 5's "flying" have fewer than 2 training relationships
    pred_key = [k for k in drops if k[0] == "relationship"
                and k[1].startswith("predicate not in the vocabulary")]
    assert len(pred_key) == 1 and drops[pred_key[0]] == 2
    name_key = [k for k in drops if k[0] == "object" and k[1].startswith("no name in the vocabulary")]
    assert drops[name_key[0]] == 1  # the "blob"
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    assert notes[("box", "reaches outside the image; clipped to it")] == 1  # the tree of image 1
    assert notes[("object", 'named by "name" (not "names"); read as a one-name list')] == 1


def test_defaults_are_sg2ims_preprocess_vg_flags():
    # google/sg2im scripts/preprocess_vg.py argparse defaults
    o = VGOptions()
    assert (o.min_image_size, o.min_object_instances, o.min_object_size, o.min_objects_per_image,
            o.max_objects_per_image, o.min_relationship_instances, o.min_relationships_per_image,
            o.max_relationships_per_image, o.aliases) == (200, 2000, 32, 3, 30, 500, 1, 30, True)


def test_alias_file_maps_every_name_to_the_lines_first(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("man,men , guy\n\nwearing,wears\n", encoding="utf-8")
    assert load_aliases(p) == {"man": "man", "men": "man", "guy": "man", "wearing": "wearing",
                               "wears": "wearing"}


def test_merged_ids_resolved_on_request(vg, tmp_path):
    root, _, _ = vg
    info = _convert(root / "src", tmp_path / "out", resolve_merged_ids=True)
    s = ConvertedDataset(tmp_path / "out", "test")[0]
    assert s["source"]["image_id"] == 7
    assert s["graph"]["relationships"] == [[0, "wearing", 1], [2, "near", 0]]  # 799 is merged into tree 703
    assert _drops(info)[("relationship", "subject id is not among the image's objects in objects.json")] == 1


def test_seeded_split_without_a_split_file(vg, tmp_path):
    root, _, _ = vg
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    (src / "vg_splits.json").unlink()
    opts = VGOptions(**OPTS, val_fraction=0.3, test_fraction=0.2)
    outs = []
    for k in range(2):
        info = convert("vg", src, tmp_path / f"out{k}", CommonOptions(size="tiny", seed=3), opts,
                       log=lambda line: None)
        outs.append({s: [ConvertedDataset(tmp_path / f"out{k}", s)[i]["source"]["image_id"]
                         for i in range(info["splits"][s]["samples"])] for s in ("train", "val", "test")})
    assert outs[0] == outs[1]  # same seed, same split
    assert "in image_data.json but not in --splits-json" not in str(info["drops"])


def test_no_aliases_keeps_names_as_written(vg, tmp_path):
    root, _, _ = vg
    _convert(root / "src", tmp_path / "out", aliases=False, min_object_instances=1,
             min_relationship_instances=1)
    vocab = load_vocab(tmp_path / "out" / "vocab.json")
    assert {"men", "guy", "trees"} <= set(vocab.object_names) and "man" not in vocab.object_names
    assert {"wears", "wearing"} <= set(vocab.pred_names)


def test_corrupt_image_is_one_line_error_or_counted_when_skipping(vg, tmp_path):
    root, _, _ = vg
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    bad = src / "images" / "VG_100K" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DatasetError) as e:
        _convert(src, tmp_path / "out")
    msg = str(e.value)
    assert "2.jpg" in msg and "--skip-unreadable" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written
    opts = VGOptions(splits_json=str(src / "vg_splits.json"), **OPTS)
    info = convert("vg", src, tmp_path / "out", CommonOptions(size="tiny", skip_unreadable=True), opts,
                   log=lambda line: None)
    assert _drops(info)[("image", "frame file cannot be decoded (--skip-unreadable)")] == 1
    assert info["splits"]["train"]["samples"] == 1


@pytest.mark.parametrize("damage, expect", [
    (lambda s: (s / "objects.json").write_text('[{"image_id": 1, "objects": [', encoding="utf-8"),
     "objects.json: objects file is not valid JSON (line 1"),
    (lambda s: (s / "relationships.json").unlink(), "relationships.json: not found"),
    (lambda s: (s / "object_alias.txt").unlink(), "object_alias.txt: alias file not found"),
    (lambda s: (s / "image_data.json").write_text('{"a": 1}', encoding="utf-8"),
     "expected a JSON list of images"),
])
def test_malformed_or_missing_source_files_name_the_file(vg, tmp_path, damage, expect):
    root, _, _ = vg
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    damage(src)
    with pytest.raises(DatasetError) as e:
        _convert(src, tmp_path / "out")
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_thresholds_too_high_for_the_data_say_so(vg, tmp_path):
    root, _, _ = vg
    with pytest.raises(DatasetError, match="no object name has --min-object-instances"):
        _convert(root / "src", tmp_path / "out", min_object_instances=2000)


def test_options_are_recorded(vg):
    root, _, info = vg
    on_disk = json.loads((root / "out" / "dataset.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert on_disk["options"]["vg"]["min_object_instances"] == 2
    assert set(on_disk["options"]["vg"]) == {f.name for f in dataclasses.fields(VGOptions)}
    assert on_disk["source_format"] == "vg" and on_disk["frames"] == 4 and on_disk["height"] == 16


# ------------------------------------------------------------------------------------- version and hostile
def _rewrite_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))), encoding="utf-8")


def test_the_release_is_detected_and_labelled(vg, tmp_path):
    """1.4 lists merged_object_ids on its objects; 1.2 has none and names relationship endpoints by "name"."""
    _, _, info = vg
    assert info["source"]["name"] == "Visual Genome 1.4" and info["source"]["version"] == "1.4"
    src = tmp_path / "src"
    shutil.copytree(vg[0] / "src", src)

    def strip_merged(entries):
        for e in entries:
            for o in e["objects"]:
                o.pop("merged_object_ids", None)
        return entries

    def name_only(entries):
        for e in entries:
            for r in e["relationships"]:
                for end in (r["subject"], r["object"]):
                    if "names" in end:
                        end["name"] = end.pop("names")[0]
        return entries

    _rewrite_json(src / "objects.json", strip_merged)
    _rewrite_json(src / "relationships.json", name_only)
    info = _convert(src, tmp_path / "out12")
    assert info["source"]["name"] == "Visual Genome 1.2" and info["source"]["version"] == "1.2"
    assert json.loads((tmp_path / "out12" / "dataset.json").read_text())["source"]["version"] == "1.2"


@pytest.mark.parametrize("where, change, why", [
    ("objects.json", lambda e: e[0]["objects"][0].update(x=10 ** 30), r"\[0\].objects\[0\]: .*finite"),
    ("objects.json", lambda e: e[0]["objects"][0].update(w=10 ** 400), r"\[0\].objects\[0\]: .*finite"),
    ("objects.json", lambda e: e[0]["objects"][0].update(object_id=2 ** 64), r"\[0\].objects\[0\]"),
    ("image_data.json", lambda e: e[0].update(url="https://x/VG_100K/../x.png"), r"ends in '\.\./x\.png'"),
    ("image_data.json", lambda e: e[0].update(url="https://x/VG_100K/.."), r"ends in 'VG_100K/\.\.'"),
    ("image_data.json", lambda e: e[0].update(url="https://x/images/../1.jpg"), r"ends in '\.\./1\.jpg'"),
    ("image_data.json", lambda e: e[0].update(width=10 ** 400), r"\[0\]: width and height"),
    ("relationships.json", lambda e: e[0]["relationships"][0]["subject"].update(object_id=1.5),
     "no integer object_id"),
])
def test_hostile_fields_are_one_line(vg, tmp_path, where, change, why):
    src = tmp_path / "src"
    shutil.copytree(vg[0] / "src", src)

    def apply(entries):
        change(entries)
        return entries

    _rewrite_json(src / where, apply)
    with pytest.raises(DatasetError, match=why) as e:
        _convert(src, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
