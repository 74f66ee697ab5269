"""The data-format registry (`sg2v.dataset.formats.DATA_FORMATS`): sg2v-data's choices, help and flags, the
docs table, sg2v-train's rule family per source, one plan signature, and a format added by one row."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sg2v.dataset import FORMATS, ConvertedDataset, convert
from sg2v.dataset.cli import build_parser, main
from sg2v.dataset.common import DropTable, Plan, frames_job
from sg2v.dataset.formats import DATA_FORMATS, DataFormat, data_format, docs_rows, source_rules
from sg2v.dataset.options import CommonOptions
from sg2v.errors import DatasetError
from sg2v.options import option
from sg2v.relations import FAMILIES
from sg2v.vocab import IMAGE_OBJECT, IN_IMAGE_PRED, Vocab

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


def test_cli_formats_and_flags_come_from_the_registry():
    conv = _subparsers(build_parser()).choices["convert"]
    fmts = _subparsers(conv)
    assert list(fmts.choices) == list(DATA_FORMATS) == list(FORMATS)
    helps = {a.dest: a.help for a in fmts._choices_actions}
    for name, f in DATA_FORMATS.items():
        assert helps[name] == f.help and fmts.choices[name].description == f.help
        dests = {a.dest for a in fmts.choices[name]._actions}
        assert {fl.name for fl in dataclasses.fields(f.options)} <= dests


def test_docs_table_is_the_registry():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- formats -->")[1].split("<!-- /formats -->")[0]
    rows = [line for line in block.splitlines() if re.match(r"^\| `", line)]
    assert rows == docs_rows()
    assert "## A data format" in (ROOT / "docs" / "EXTENDING.md").read_text()


def test_every_plan_has_one_signature_and_rules_are_known():
    for f in DATA_FORMATS.values():
        plan = importlib.import_module(f.module).plan
        assert list(inspect.signature(plan).parameters) == ["source", "o", "seed", "frames"], f.name
        assert dataclasses.is_dataclass(f.options)
        assert f.rules in (*FAMILIES, "none")
        assert {name for name, _ in f.inputs} <= {fl.name for fl in dataclasses.fields(f.options)}, f.name
    assert source_rules("coco-stuff") == "coco"
    assert source_rules("vg") == source_rules("folder") == source_rules("nope") == "none"
    with pytest.raises(DatasetError, match="unknown format 'nope'; choose one of vg, coco-stuff"):
        data_format("nope")


# a format added through the registry alone: this module is its converter


@dataclass
class ToyOptions:
    """A folder of PNG images, one object each."""

    name: str = option("thing", "the one object name every image holds")
    extra_dir: str = option("", "a folder it reads besides SOURCE (its content is not used)")


def plan(source: Path, o: ToyOptions, seed: int, frames: int) -> Plan:
    """One image sample per PNG, sorted by name; the first is val, the rest train."""
    files = sorted(Path(source).glob("*.png"))
    vocab = Vocab.from_dict({"object_idx_to_name": [IMAGE_OBJECT, o.name],
                             "object_name_to_idx": {IMAGE_OBJECT: 0, o.name: 1},
                             "pred_idx_to_name": [IN_IMAGE_PRED], "pred_name_to_idx": {IN_IMAGE_PRED: 0}})
    payloads = []
    for k, path in enumerate(files):
        w, h = Image.open(path).size
        payloads.append({"split": "val" if k == 0 else "train", "unit": "image",
                         "graph": {"objects": [o.name], "relationships": []},
                         "boxes": np.array([[[1, 2, w - 1, h - 3]]], dtype=np.float64), "boxes_unit": "px",
                         "visible": np.ones((1, 1), dtype=bool), "has_layout": np.ones(1, dtype=bool),
                         "rel_frames": np.ones((0, 1), dtype=bool), "source": {"file": path.name},
                         "files": [str(path)], "sizes": [(w, h)]})
    return Plan(vocab=vocab, job=frames_job, payloads=payloads, drops=DropTable(), notes=DropTable(),
                source={"format": "toy", "name": "toy", "path": str(source)}, frames_estimate=len(payloads))


def test_a_format_added_by_one_registry_row(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    src = tmp_path / "src"
    src.mkdir()
    sizes = [(int(rng.integers(20, 60)), int(rng.integers(20, 60))) for _ in range(3)]
    for k, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"{k}.png")
    row = DataFormat(name="toy", help="PNG images, one object each", module=__name__, options=ToyOptions,
                     samples="images", splits="first image val", defaults="none", rules="coco",
                     inputs=(("extra_dir", True),))
    monkeypatch.setitem(DATA_FORMATS, "toy", row)
    assert main(["convert", "toy", str(src), "--out", str(tmp_path / "out"), "--name", "box",
                 "--height", "16", "--width", "24", "--frames", "1"]) == 0
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["source_format"] == "toy" and info["options"]["toy"] == {"name": "box", "extra_dir": ""}
    assert info["splits"]["train"]["samples"] == 2 and info["splits"]["val"]["samples"] == 1
    ds = ConvertedDataset(tmp_path / "out", "train")
    w, h = sizes[1]
    np.testing.assert_allclose(ds[0]["boxes"][0, 0], [1 / w, 2 / h, (w - 1) / w, (h - 3) / h], atol=1e-4)
    assert list(ds.vocab.object_names) == ["box"] and source_rules("toy") == "coco"
    extra = tmp_path / "extra"
    extra.mkdir()
    with pytest.raises(DatasetError, match="--extra-dir"):  # --out inside a folder its options name
        convert("toy", src, extra / "out", CommonOptions(), ToyOptions(extra_dir=str(extra)))
    assert not (extra / "out").exists()
    with pytest.raises(TypeError, match="options for 'toy' must be ToyOptions"):
        convert("toy", src, tmp_path / "o2", CommonOptions(), DATA_FORMATS["vg"].options())
