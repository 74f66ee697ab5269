"""The converted data set on disk: reader checks, atomic writes, worker-count independence, torch-free use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import write_vg

from sg2v.dataset import CommonOptions, ConvertedDataset, VGOptions, convert
from sg2v.dataset.format import NPY_HEADER_BYTES, npy_header
from sg2v.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _opts(src: Path) -> VGOptions:
    return VGOptions(splits_json=str(src / "vg_splits.json"), min_object_instances=2,
                     min_relationship_instances=2)


def _convert(src, out, **common) -> dict:
    return convert("vg", src, out, CommonOptions(size="tiny", **common), _opts(src), log=lambda line: None)


@pytest.fixture(scope="module")
def vg(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    write_vg(root / "src")
    _convert(root / "src", root / "out")
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_frames_file_is_plain_npy_with_a_fixed_header(vg, tmp_path):
    a = np.load(vg / "out" / "train.frames.npy", allow_pickle=False)
    m = np.load(vg / "out" / "train.frames.npy", mmap_mode="r")
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, m)
    assert len(npy_header(10**12, 4096, 4096)) == NPY_HEADER_BYTES == 128
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    (tmp_path / "x.npy").write_bytes(npy_header(3, 9, 7) + x.tobytes())
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)


def test_dataset_items_are_copies_with_documented_dtypes(vg):
    ds = ConvertedDataset(vg / "out", "train")
    s = ds[-1]
    assert s["index"] == 1 and s["frames"].flags.writeable and s["frames"].dtype == np.uint8
    assert s["boxes"].dtype == np.float32 and s["visible"].dtype == bool and s["rel_frames"].dtype == bool
    s["frames"][:] = 0
    assert ds[1]["frames"].any()
    assert ds.graph(0) == ds[0]["graph"] and len(list(ds)) == len(ds) == 2
    with pytest.raises(IndexError):
        ds[2]


def test_pickled_dataset_carries_the_index_not_the_frames(vg):
    import pickle

    ds = ConvertedDataset(vg / "out", "train")
    raw = pickle.dumps(ds)
    assert ds[0]["frames"].tobytes() not in raw  # the frames stay in the file
    back = pickle.loads(raw)
    np.testing.assert_array_equal(back[1]["frames"], ds[1]["frames"])
    assert back[0]["graph"] == ds[0]["graph"] and back.vocab == ds.vocab


def _edit_line(path: Path, i: int, fn) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[i])
    fn(rec)
    lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train.frames.npy").write_bytes((d / "train.frames.npy").read_bytes()[:-10]),
     "train.frames.npy: 1654 bytes, but its header promises 2 frames (1664 bytes)"),
    (lambda d: (d / "dataset.json").write_text(
        (d / "dataset.json").read_text().replace('"format_version": 1', '"format_version": 99')),
     "format_version 99, this sg2v reads 1..1"),
    (lambda d: _edit_line(d / "train.jsonl", 0, lambda r: r["graph"]["objects"].__setitem__(0, "unicorn")),
     "train.jsonl:1: objects[0] 'unicorn' is not in vocab.json"),
    (lambda d: _edit_line(d / "train.jsonl", 1, lambda r: r["graph"]["relationships"].append([0, "near", 9])),
     "train.jsonl:2: relationships[3] [0, 'near', 9] is not [subject, predicate, object]"),
    (lambda d: _edit_line(d / "train.jsonl", 1, lambda r: r.__setitem__("frame_offset", 0)),
     "train.jsonl:2: frame_offset 0, expected 1"),
    (lambda d: _edit_line(d / "train.jsonl", 0, lambda r: r["boxes"][0][0].__setitem__(2, 1.5)),
     "boxes must be [x0, y0, x1, y1] in [0, 1]"),
    (lambda d: (d / "train.jsonl").write_text("{nope\n"), "train.jsonl:1: not a JSON sample"),
    (lambda d: (d / "train.jsonl").write_text("[" * (5 << 20) + "\n"), "line longer than 4194304 bytes"),
    (lambda d: (d / "vocab.json").unlink(), "vocab.json: cannot read vocabulary"),
    (lambda d: (d / "dataset.json").write_text(
        (d / "dataset.json").read_text().replace('"samples": 2', '"samples": 5', 1)),
     "splits.train says 5 samples / 2 frames, the files hold 2 / 2"),
])
def test_damaged_files_are_refused_in_one_line(vg, tmp_path, damage, message):
    d = _copy(vg / "out", tmp_path / "d")
    damage(d)
    with pytest.raises(DatasetError) as e:
        ConvertedDataset(d, "train")
    msg = str(e.value)
    assert message in msg and "\n" not in msg
    assert "convert the data set again" in msg or "sg2v-data convert" in msg


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        ConvertedDataset(tmp_path / "nope", "train")
    (tmp_path / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DatasetError, match="not an sg2v data set description"):
        ConvertedDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="split 'dev': choose one of train, val, test"):
        ConvertedDataset(tmp_path, "dev")


def test_existing_output_is_kept_unless_forced(vg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="is a folder that is not an earlier sg2v output; pass --force"):
        _convert(vg / "src", out)
    assert (out / "mine.txt").read_text() == "keep me"
    _convert(vg / "src", out, force=True)
    assert not (out / "mine.txt").exists() and len(ConvertedDataset(out, "train")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it


def test_failed_conversion_leaves_the_old_output_and_nothing_else(vg, tmp_path):
    src = _copy(vg / "src", tmp_path / "src")
    out = tmp_path / "out"
    _convert(src, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (src / "images" / "VG_100K" / "10.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="10.jpg: cannot decode"):
        _convert(src, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_interrupt_mid_conversion_writes_nothing(vg, tmp_path, monkeypatch):
    from sg2v.dataset import common

    calls = []

    def job(payload):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return common.frames_job(payload)

    import sg2v.dataset.vg as vgmod

    real_plan = vgmod.plan
    monkeypatch.setattr(vgmod, "plan", lambda *a: (lambda p: (setattr(p, "job", job), p)[1])(real_plan(*a)))
    with pytest.raises(KeyboardInterrupt):
        _convert(vg / "src", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_output_that_holds_the_source_is_refused(vg, tmp_path):
    with pytest.raises(DatasetError, match="would replace the source data set"):
        _convert(vg / "src", vg / "src", force=True)
    with pytest.raises(DatasetError, match="would replace the source data set"):
        _convert(vg / "src", vg, force=True)


def test_worker_processes_give_the_same_bytes(vg, tmp_path):
    _convert(vg / "src", tmp_path / "w2", workers=2)
    for name in sorted(p.name for p in (vg / "out").iterdir()):
        assert (tmp_path / "w2" / name).read_bytes() == (vg / "out" / name).read_bytes(), name


@pytest.mark.parametrize("common, message", [
    (dict(frames=-1), "--frames -1: must be in 1..4096"), (dict(height=4), "--height 4: must be in 8..4096"),
    (dict(workers=0), "--workers 0: must be in 1..64"), (dict(size="huge"), "--size 'huge': choose one of"),
])
def test_absurd_option_values_are_refused(vg, tmp_path, common, message):
    with pytest.raises(DatasetError) as e:
        convert("vg", vg / "src", tmp_path / "o", CommonOptions(**{"size": "tiny", **common}),
                _opts(vg / "src"))
    assert message in str(e.value) and e.value.exit_code == 2


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "cupy", "tensorrt"):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""


def test_convert_and_read_without_torch(vg, tmp_path):
    code = BLOCKER + f"""
from sg2v.dataset import CommonOptions, ConvertedDataset, VGOptions, convert
src = {str(vg / 'src')!r}
convert("vg", src, {str(tmp_path / 'o')!r}, CommonOptions(size="tiny"),
        VGOptions(splits_json=src + "/vg_splits.json", min_object_instances=2, min_relationship_instances=2),
        log=lambda line: None)
ds = ConvertedDataset({str(tmp_path / 'o')!r}, "train")
assert ds[0]["frames"].shape == (1, 16, 16, 3)
import sg2v.dataset.cli, sg2v.dataset.show, sg2v.dataset.coco, sg2v.dataset.action_genome, sg2v.dataset.folder
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime"))
assert not heavy, heavy
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


# ------------------------------------------------------------------------------- corrupted converted sets
def _corrupt(src: Path, dst: Path, target: str, change) -> Path:
    _copy(src, dst)
    path = dst / target
    if target.endswith(".json"):
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    else:
        path.write_text(change(path.read_text()))
    return dst


CORRUPT = {
    "source": ("dataset.json", lambda d: d.update(source="x"), "source 'x' is not an object"),
    "vocab": ("dataset.json", lambda d: d.update(vocab=[]), r"vocab \[\] is not an object of counts"),
    "samples": ("dataset.json", lambda d: d["splits"]["train"].update(samples=[1, 2]), "splits.train"),
    "objects": ("dataset.json", lambda d: d["splits"]["val"].update(objects={"a": 1}), "splits.val"),
    "negative": ("dataset.json", lambda d: d["splits"]["test"].update(frames=-3), "splits.test"),
    "drops": ("dataset.json", lambda d: d.update(drops=[{"kind": [1], "reason": 2, "count": [3]}]),
              "drops is not a list"),
    "notes": ("dataset.json", lambda d: d.update(notes="many"), "notes is not a list"),
    "source_format": ("dataset.json", lambda d: d.update(source_format=7), "source_format 7"),
    "frames": ("dataset.json", lambda d: d.update(frames=5), "2 frames, dataset.json says clips of 5"),
    "box400": ("train.jsonl", lambda t: t.replace('"boxes":[[[', '"boxes":[[[' + "9" * 400 + ",", 1),
               "not regular arrays of numbers"),
    "box400b": ("train.jsonl", lambda t: t.replace('"boxes":[[[0', '"boxes":[[[1' + "0" * 400, 1),
                r"boxes must be \[x0, y0, x1, y1\] in \[0, 1\]"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_stats_and_show_on_a_corrupted_set_are_one_line(converted, tmp_path, capsys, name):
    """`sg2v-data stats` / `show` (and `ConvertedDataset`, which `sg2v-train --data` opens) on a converted
    Action Genome set with one field corrupted: exit 1 and one error line naming the file, no traceback."""
    import re

    from sg2v.dataset.cli import main

    target, change, why = CORRUPT[name]
    root = _corrupt(converted["ag"], tmp_path / "ds", target, change)
    codes = []
    for argv in (["stats", str(root)], ["show", str(root), "--split", "train", "--index", "0"]):
        capsys.readouterr()
        codes.append(main(argv))
        err = capsys.readouterr().err.strip().splitlines()
        if codes[-1] != 0:
            assert len(err) == 1 and re.search(why, err[0]) and "Traceback" not in err[0], err
    assert codes[1] == 1 and (codes[0] == 1 or target != "dataset.json" or name == "frames")
    with pytest.raises(DatasetError, match=why):
        ConvertedDataset(root, "train")
