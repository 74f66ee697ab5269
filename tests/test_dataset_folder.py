"""The user's recordings (NAME.json + NAME.mp4 / NAME/ / NAME.png) -> converted data set, with layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from dataset_fixtures import color, write_folder

from sg2v.dataset import CommonOptions, ConvertedDataset, FolderOptions, convert
from sg2v.errors import DatasetError, GraphError
from sg2v.vocab import load_vocab

pytest.importorskip("imageio_ffmpeg", reason="the folder format's mp4 needs the `video` extra")


def _convert(src, out, frames=4, **kw) -> dict:
    return convert("folder", src, out, CommonOptions(size="tiny", frames=frames), FolderOptions(**kw),
                   log=lambda line: None)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    facts = write_folder(root / "src")
    return root, facts, _convert(root / "src", root / "out")


def _samples(root):
    ds = ConvertedDataset(root, "train")
    return [ds[i] for i in range(len(ds))]


def test_recordings_become_clips_and_images_one_frame_samples(rec):
    root, facts, info = rec
    got = [(s["source"]["recording"], s["source"]["frames"]) for s in _samples(root / "out")]
    assert got == [("seq", [0, 1, 2, 3]), ("still", [0]), ("walk", [0, 1, 2, 3]), ("walk", [4, 5, 6, 7])]
    drops = {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}
    assert drops == {("frame", "after the last full clip of its recording"): 4}  # walk 8, 9 and seq 4, 5
    vocab = load_vocab(root / "out" / "vocab.json")
    assert vocab.object_names == ("cup", "lamp", "robot arm", "table")
    assert vocab.pred_names == ("holding", "on")


def test_layout_forms_per_frame_static_moving_and_missing(rec):
    root, facts, _ = rec
    walk = [s for s in _samples(root / "out") if s["source"]["recording"] == "walk"]
    a, b = walk
    assert a["graph"] == {k: facts["walk"][k] for k in ("objects", "relationships", "description")}
    # object 0: one box per frame, null at frame 3 (out of view)
    np.testing.assert_allclose(a["boxes"][0, :3], [[0.1, 0.1, 0.3, 0.5]] * 3, atol=1e-6)
    assert a["visible"][0].tolist() == [True, True, True, False] and b["visible"][0].all()
    np.testing.assert_allclose(b["boxes"][0], [[0.2, 0.1, 0.4, 0.5]] * 4, atol=1e-6)
    # object 1: static; object 2: no layout; object 3: start -> end over the 10 frames (x0 = 0.1 k)
    np.testing.assert_allclose(b["boxes"][1], [[0.4, 0.5, 0.5, 0.6]] * 4, atol=1e-6)
    assert a["has_layout"].tolist() == [True, True, False, True] and a["visible"][2].all()
    assert not a["boxes"][2].any()
    for clip, start in ((a, 0), (b, 4)):
        k = np.arange(start, start + 4)
        expect = np.stack([0.1 * k, 0 * k, 0.1 + 0.1 * k, 0.1 + 0 * k], 1)
        np.testing.assert_allclose(clip["boxes"][3], expect, atol=1e-6)
    seq = _samples(root / "out")[0]
    np.testing.assert_allclose(seq["boxes"][0, :, 0], [0.0, 0.1, 0.2, 0.3], atol=1e-6)


def test_frames_are_the_recordings_frames_in_order(rec):
    root, _, _ = rec
    s = _samples(root / "out")
    for clip, first in ((s[2], 40), (s[3], 44)):  # walk.mp4 is lossless RGB; solid colors survive resizing
        for t in range(4):
            assert np.abs(clip["frames"][t].astype(int) - color(first + t)).max() <= 1
    for t in range(4):
        np.testing.assert_array_equal(s[0]["frames"][t], np.broadcast_to(color(60 + t), (16, 16, 3)))
    np.testing.assert_array_equal(s[1]["frames"][0], np.broadcast_to(color(70), (16, 16, 3)))


def test_vocab_option_checks_names_with_did_you_mean(rec, tmp_path):
    root, _, _ = rec
    vocab = {"object_idx_to_name": ["__image__", "robot arm", "cup", "table", "lamp"],
             "pred_idx_to_name": ["__in_image__", "holds", "on"]}
    vocab["object_name_to_idx"] = {n: i for i, n in enumerate(vocab["object_idx_to_name"])}
    vocab["pred_name_to_idx"] = {n: i for i, n in enumerate(vocab["pred_idx_to_name"])}
    (tmp_path / "v.json").write_text(json.dumps(vocab))
    with pytest.raises(GraphError) as e:
        _convert(root / "src", tmp_path / "out", vocab=str(tmp_path / "v.json"))
    assert "walk.json: relationships[0]: predicate \"holding\" not in vocabulary; did you mean \"holds\"?" \
        in str(e.value)
    info = _convert(root / "src", tmp_path / "out", vocab=str(tmp_path / "v.json"), skip_invalid=True)
    drops = {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}
    assert drops[("recording", "graph invalid (--skip-invalid)")] == 1
    assert load_vocab(tmp_path / "out" / "vocab.json").pred_names == ("holds", "on")


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["layout"].update({"9": [0, 0, 1, 1]}),
     'layout["9"]: not an object index of the graph (0..3)'),
    (lambda g: g["layout"].update({"1": [0.5, 0, 0.4, 1]}), "is not inside [0, 1] with x0 < x1"),
    (lambda g: g["layout"].update({"0": [[0.1, 0.1, 0.3, 0.5]] * 7}),
     "7 boxes, but the recording has 10 frames"),
    (lambda g: g["relationships"].append([0, "on", 7]), "relationships[2]: object index 7 out of range"),
    # unicode digits: "²".isdigit() is True, int("²") raises ValueError
    (lambda g: g["layout"].update({"²": [0.1, 0.1, 0.3, 0.5]}), "layout["),
    (lambda g: g["layout"].update({"٣": [0.1, 0.1, 0.3, 0.5]}), "layout["),
    (lambda g: g["layout"].update({"1": [0, 0, 10 ** 400, 1]}), 'layout["1"]'),
])
def test_invalid_graphs_and_layouts_name_the_file_and_place(rec, tmp_path, edit, message):
    root, facts, _ = rec
    shutil.copytree(root / "src", tmp_path / "src")
    g = json.loads(json.dumps(facts["walk"]))
    edit(g)
    (tmp_path / "src" / "walk.json").write_text(json.dumps(g))
    with pytest.raises(GraphError) as e:
        _convert(tmp_path / "src", tmp_path / "out")
    assert "walk.json" in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_graph_without_recording_and_bad_json(rec, tmp_path):
    root, _, _ = rec
    shutil.copytree(root / "src", tmp_path / "src")
    (tmp_path / "src" / "orphan.json").write_text('{"objects": ["cup"]}')
    with pytest.raises(DatasetError, match="orphan.json: no NAME.mp4, NAME/ folder of frames"):
        _convert(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "orphan.png").write_bytes((tmp_path / "src" / "still.png").read_bytes())
    (tmp_path / "src" / "orphan.json").write_text('{"objects": ["cup"], "objects": ["lamp"]}')
    with pytest.raises(GraphError, match="orphan.json: invalid JSON .*duplicate key 'objects'"):
        _convert(tmp_path / "src", tmp_path / "out")


def test_frame_step_and_too_short_recordings(rec, tmp_path):
    root, _, _ = rec
    info = _convert(root / "src", tmp_path / "out", frames=3, frame_step=2)
    got = [(s["source"]["recording"], s["source"]["frames"]) for s in _samples(tmp_path / "out")]
    assert got == [("seq", [0, 2, 4]), ("still", [0]), ("walk", [0, 2, 4])]
    info = _convert(root / "src", tmp_path / "out2", frames=8)
    drops = {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}
    assert drops[("recording", "fewer taken frames than --frames (8)")] == 1  # seq has 6


def test_output_inside_the_recordings_is_refused(rec):
    root, _, _ = rec
    with pytest.raises(DatasetError, match="lies inside the source data set"):
        _convert(root / "src", root / "src" / "converted")
