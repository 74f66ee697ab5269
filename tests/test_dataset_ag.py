"""Action Genome -> converted data set (clips with per-frame boxes), and the restricted unpickler it uses."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from dataset_fixtures import color, write_ag

from sg2v.dataset import AGOptions, CommonOptions, ConvertedDataset, convert
from sg2v.dataset.action_genome import name_key
from sg2v.dataset.unpickle import RefusedGlobal, load_data_pickle, loads_data
from sg2v.errors import DatasetError
from sg2v.vocab import load_vocab


def _convert(src, out, seed=0, frames=2, **kw) -> dict:
    return convert("action-genome", src, out, CommonOptions(size="tiny", frames=frames, seed=seed),
                   AGOptions(val_fraction=0.5, **kw), log=lambda line: None)


@pytest.fixture(scope="module")
def ag(tmp_path_factory):
    root = tmp_path_factory.mktemp("ag")
    facts = write_ag(root / "src")
    return root, facts, _convert(root / "src", root / "out")


def _all(root):
    return [ConvertedDataset(root, s)[i] for s in ("train", "val", "test")
            for i in range(len(ConvertedDataset(root, s)))]


# ------------------------------------------------------------------------------------------------ unpickler
class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.path}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    for proto in (0, 2, 4, 5):
        p = tmp_path / f"evil{proto}.pkl"
        p.write_bytes(pickle.dumps({"a.mp4/000001.png": [_RunsCode(marker)]}, protocol=proto))
        with pytest.raises(DatasetError) as e:
            load_data_pickle(p)
        msg = str(e.value)
        assert "refused" in msg and ("posix.system" in msg or "os.system" in msg) and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(RefusedGlobal, match="builtins.eval"):
        loads_data(pickle.dumps([_CallsEval()]))


def test_data_pickles_load_arrays_scalars_and_containers():
    data = {"k": [{"bbox": np.arange(8, dtype=np.float32).reshape(2, 4), "s": np.float32(0.5), "t": (1, None),
                   "set": {1, 2}, "f": frozenset({3}), "b": b"x", "n": True}]}
    for proto in (2, 3, 4, 5):
        back = loads_data(pickle.dumps(data, protocol=proto))
        np.testing.assert_array_equal(back["k"][0]["bbox"], data["k"][0]["bbox"])
        assert back["k"][0]["s"] == np.float32(0.5) and back["k"][0]["set"] == {1, 2}
    # a pickle written by NumPy 1 names numpy.core.multiarray; one written by NumPy 2 names numpy._core
    raw = pickle.dumps(np.arange(3, dtype=np.int64), protocol=2)
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        other = raw.replace(b"numpy._core.multiarray", module).replace(b"numpy.core.multiarray", module)
        np.testing.assert_array_equal(loads_data(other), [0, 1, 2])


def test_truncated_pickle_is_a_one_line_error(tmp_path):
    p = tmp_path / "cut.pkl"
    p.write_bytes(pickle.dumps({"a": np.zeros(100)}, protocol=4)[:50])
    with pytest.raises(DatasetError, match="cut.pkl: not a readable annotation pickle .*download it again"):
        load_data_pickle(p)


# -------------------------------------------------------------------------------------------------- convert
def test_names_match_across_class_files_and_pickles(ag):
    root, _, _ = ag
    assert name_key("closet/cabinet") == name_key("closetcabinet") == "closetcabinet"
    assert name_key("looking_at") == name_key("lookingat")
    vocab = load_vocab(root / "out" / "vocab.json")
    assert vocab.num_objs == 37 and vocab.num_preds == 27
    assert vocab.object_idx_to_name[1] == "person" and vocab.object_idx_to_name[9] == "closet/cabinet"
    assert "looking at" in vocab.pred_names and "have it on the back" in vocab.pred_names


def test_clips_are_consecutive_usable_annotated_frames(ag):
    root, facts, info = ag
    got = {}
    for s in _all(root / "out"):
        got.setdefault(s["source"]["video"], []).append(s["source"]["frames"])
    assert got == facts["clips"]
    assert info["splits"]["test"]["samples"] == 1  # DDDD4
    train_val = {ConvertedDataset(root / "out", s)[i]["source"]["video"] for s in ("train", "val")
                 for i in range(len(ConvertedDataset(root / "out", s)))}
    assert train_val == {"AAAA1.mp4", "BBBB2.mp4"}
    assert info["splits"]["train"]["samples"] and info["splits"]["val"]["samples"]  # val carved by seed


def test_clip_boxes_visibility_and_per_frame_relationships(ag):
    root, facts, _ = ag
    (s,) = [s for s in _all(root / "out") if s["source"]["frames"] == ["000030.png", "000040.png"]]
    fact = facts["clip_a2"]
    assert s["graph"]["objects"] == fact["objects"]
    np.testing.assert_allclose(s["boxes"], np.array(fact["boxes"]), atol=1e-6)
    np.testing.assert_array_equal(s["visible"], np.array(fact["visible"], dtype=bool))
    got = {(sub, p, o): s["rel_frames"][j].astype(int).tolist() for j, (sub, p, o) in
           enumerate(s["graph"]["relationships"])}
    assert got == fact["relationships"]
    # frames 3 and 4 of AAAA1 are solid colors; PNG stays exact through the resize
    np.testing.assert_array_equal(s["frames"][0], np.broadcast_to(color(facts["colors_a"][2]), (16, 16, 3)))
    np.testing.assert_array_equal(s["frames"][1], np.broadcast_to(color(facts["colors_a"][3]), (16, 16, 3)))


def test_highest_scoring_person_detection_is_kept(ag):
    root, facts, info = ag
    (s,) = [s for s in _all(root / "out") if s["source"]["video"] == "DDDD4.mp4"]
    np.testing.assert_allclose(s["boxes"][0], facts["person_d"], atol=1e-6)
    assert s["graph"]["objects"] == ["person", "phone/camera"] and s["visible"].all()  # NumPy-typed entry
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    assert notes[("person", "more than one detected box in a frame; the highest-scoring one kept")] == 2


def test_drop_table(ag):
    _, facts, info = ag
    drops = {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}
    for key, n in facts["drops"].items():
        assert drops.get(key) == n, (key, drops.get(key))
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    # the sofa of AAAA1's third frame; the laptop of CCCC3's 000007 is not counted: that frame is dropped
    assert notes[("object in a frame", "not visible (visible False); marked not visible in that frame")] == 1


def test_keep_flags_keep_the_frames_sttran_drops(ag, tmp_path):
    root, _, _ = ag
    info = _convert(root / "src", tmp_path / "out", keep_frames_without_person=True,
                    keep_frames_without_objects=True)
    drops = {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}
    assert not any("STTran drops these" in r for _, r in drops)
    clips = {tuple(s["source"]["frames"]) for s in _all(tmp_path / "out") if s["source"]["video"] in
             ("BBBB2.mp4", "CCCC3.mp4")}
    assert clips == {("000003.png", "000004.png"), ("000007.png", "000008.png")}
    (b,) = [s for s in _all(tmp_path / "out") if s["source"]["video"] == "BBBB2.mp4"]
    assert b["visible"][0].all()  # the person box of 000005 is missing, but 000005 ends up after the clip


def test_longer_clips_and_strides(ag, tmp_path):
    root, _, _ = ag
    info = _convert(root / "src", tmp_path / "out", frames=3, clip_stride=1)
    got = sorted(tuple(s["source"]["frames"]) for s in _all(tmp_path / "out"))
    assert got == [("000010.png", "000020.png", "000030.png"), ("000020.png", "000030.png", "000040.png"),
                   ("000030.png", "000040.png", "000050.png")]
    assert info["frames"] == 3


def test_malicious_annotation_file_stops_conversion(ag, tmp_path):
    root, _, _ = ag
    shutil.copytree(root / "src", tmp_path / "src")
    marker = tmp_path / "pwned"
    (tmp_path / "src" / "annotations" / "person_bbox.pkl").write_bytes(pickle.dumps({"x": _RunsCode(marker)}))
    with pytest.raises(DatasetError, match="person_bbox.pkl: refused to load"):
        _convert(tmp_path / "src", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_spatial_direction_flag_writes_every_relationship_person_to_object(ag, tmp_path):
    root, facts, _ = ag
    _convert(root / "src", tmp_path / "out", spatial_direction="person-to-object")
    (s,) = [s for s in _all(tmp_path / "out") if s["source"]["frames"] == ["000030.png", "000040.png"]]
    got = {(sub, p, o): s["rel_frames"][j].astype(int).tolist() for j, (sub, p, o) in
           enumerate(s["graph"]["relationships"])}
    rels = facts["clip_a2"]["relationships"]
    want = {(0, p, o if sub == 0 else sub): frames for (sub, p, o), frames in rels.items()}
    assert got == want and all(sub == 0 for sub, _, _ in got)


def test_notes_count_only_frames_in_written_clips(ag, tmp_path):
    """With --frames 3 and no overlap, AAAA1 writes frames 1-3 only: the notes of frames 4 and 5 (dropped
    after the last full clip) are not counted, the invisible sofa of frame 3 is."""
    root, _, _ = ag
    info = _convert(root / "src", tmp_path / "out", frames=3)
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    assert notes[("object in a frame", "not visible (visible False); marked not visible in that frame")] == 1
    assert ("person", "more than one detected box in a frame; the highest-scoring one kept") not in notes


def _hostile(tmp_path, root, which, change):
    shutil.copytree(root / "src", tmp_path / "src")
    path = tmp_path / "src" / "annotations" / which
    data = pickle.loads(path.read_bytes())
    change(data)
    path.write_bytes(pickle.dumps(data, protocol=3))
    return tmp_path / "src"


FIRST = "AAAA1.mp4/000010.png"


@pytest.mark.parametrize("which, change, why", [
    ("person_bbox.pkl", lambda d: d[FIRST].update(bbox=[[1e400, 0, 1, 1]]), "'bbox' must be a"),
    ("person_bbox.pkl", lambda d: d[FIRST].update(bbox=[[10 ** 400, 0, 1, 1]]), "'bbox' must be a"),
    ("person_bbox.pkl", lambda d: d[FIRST].update(bbox="abcd"), "'bbox' must be a"),
    ("object_bbox_and_relationship.pkl", lambda d: d[FIRST][0].update(bbox=(10 ** 400, 0, 1, 1)),
     "'bbox' must be None or"),
    ("object_bbox_and_relationship.pkl", lambda d: d[FIRST][0].update(bbox=("a", "b", "c", "d")),
     "'bbox' must be None or"),
    ("object_bbox_and_relationship.pkl", lambda d: d[FIRST][0].update(spatial_relationship="beneath"),
     "'spatial_relationship' must be a list"),
    ("object_bbox_and_relationship.pkl",
     lambda d: d[FIRST][0].update(attention_relationship=np.zeros((2, 2))), "'attention_relationship' must"),
])
def test_hostile_annotation_fields_are_one_line(ag, tmp_path, which, change, why):
    src = _hostile(tmp_path, ag[0], which, change)
    with pytest.raises(DatasetError, match=why) as e:
        _convert(src, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", [
    lambda d: d[FIRST].update(bbox_size=("a", "b")), lambda d: d[FIRST].update(bbox_size=(float("nan"), 3)),
    lambda d: d[FIRST].update(bbox_size=None), lambda d: d[FIRST].update(bbox_size=(10 ** 400, 2)),
    lambda d: d["DDDD4.mp4/000100.png"].update(bbox_score=["x", "y"]),
    lambda d: d["DDDD4.mp4/000100.png"].update(bbox_score=np.array(["x", "y"])),
])
def test_unusable_person_side_fields_are_noted_not_fatal(ag, tmp_path, change):
    """bbox_size is only compared with the decoded frame and bbox_score only ranks detections: strings, NaN
    or None there are noted and the conversion goes on."""
    src = _hostile(tmp_path, ag[0], "person_bbox.pkl", change)
    info = _convert(src, tmp_path / "out")
    assert info["splits"]["train"]["samples"] + info["splits"]["val"]["samples"] >= 1


def test_an_array_of_relationship_names_is_read_as_its_list(ag, tmp_path):
    def change(d):
        for obj in d[FIRST]:
            if obj["class"] == "sofa/couch":
                obj["attention_relationship"] = np.array(["looking_at"])

    src = _hostile(tmp_path, ag[0], "object_bbox_and_relationship.pkl", change)
    _convert(src, tmp_path / "out")
    (s,) = [s for s in _all(tmp_path / "out") if s["source"]["frames"] == ["000010.png", "000020.png"]]
    assert [0, "looking at", 2] in s["graph"]["relationships"]


def test_unicode_digit_frame_names_sort_after_numbers(tmp_path):
    from sg2v.dataset.action_genome import _frame_number

    names = ["000010.png", "²³.png", "000002.png", "٣.png"]
    assert sorted(names, key=_frame_number)[:2] == ["000002.png", "000010.png"]
