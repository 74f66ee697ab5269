"""`sg2v-data convert / stats / show`: output, exit statuses, contact sheet, --help from the option fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import write_ag, write_vg
from PIL import Image

from sg2v.dataset import ConvertedDataset
from sg2v.dataset.cli import main
from sg2v.video import BOX_SHEET_CELL as SHEET_CELL
from sg2v.video import PALETTE

VG_FLAGS = ["--min-object-instances", "2", "--min-relationship-instances", "2", "--size", "tiny"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_vg(root / "vg")
    write_ag(root / "ag")
    assert main(["convert", "vg", str(root / "vg"), "--out", str(root / "vg_out"), "--splits-json",
                 str(root / "vg" / "vg_splits.json"), *VG_FLAGS]) == 0
    assert main(["convert", "action-genome", str(root / "ag"), "--out", str(root / "ag_out"), "--frames", "2",
                 "--size", "tiny", "--val-fraction", "0.5"]) == 0
    return root


def test_convert_prints_counts_and_drop_table(converted, tmp_path, capsys):
    assert main(["convert", "vg", str(converted / "vg"), "--out", str(tmp_path / "o"), "--splits-json",
                 str(converted / "vg" / "vg_splits.json"), *VG_FLAGS]) == 0
    err = capsys.readouterr().err
    assert "wrote " in err and "samples/s" in err
    assert "  train         2        2        6             5" in err
    assert "shorter side under --min-image-size (200 px)" in err


def test_stats_text_and_json(converted, capsys):
    assert main(["stats", str(converted / "vg_out")]) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 3 object names, 2 predicates" in out and "dropped (each item counted once" in out
    assert main(["stats", str(converted / "vg_out"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"]["samples"] == 2 and info["format"] == "sg2v-dataset"


def test_show_text_json_and_sheet(converted, tmp_path, capsys):
    assert main(["show", str(converted / "vg_out"), "--index", "0"]) == 0
    out = capsys.readouterr().out
    assert "train[0] of" in out and "image 1 (VG_100K/1.jpg); 1 frame" in out
    assert "  0 man --wearing--> 1 shirt" in out and "  2 tree --near--> 0 man" in out
    assert "frame 0: 0 [0.031 0.083 0.344 0.708]" in out
    assert main(["show", str(converted / "ag_out"), "--index", "0", "--split", "test", "--json",
                 "--sheet", str(tmp_path / "s" / "sheet.png")]) == 0
    sample = json.loads(capsys.readouterr().out)
    ds = ConvertedDataset(converted / "ag_out", "test")
    assert sample["graph"] == ds[0]["graph"] and sample["source"]["video"] == "DDDD4.mp4"
    np.testing.assert_allclose(sample["boxes"], ds[0]["boxes"], atol=1e-6)
    sheet = np.asarray(Image.open(tmp_path / "s" / "sheet.png").convert("RGB"))
    scale = SHEET_CELL // 16  # 16 x 16 frames are drawn 256 x 256
    assert sheet.shape == (2 * 4 + 256, 3 * 4 + 2 * 256, 3)  # 1 row, 2 columns, 4 px padding
    # the person's box (object 0) is outlined in the first palette color at its left edge
    x0, y0, x1, y1 = ds[0]["boxes"][0, 0] * 16 * scale
    row = int((y0 + y1) / 2) + 4
    assert (sheet[row, int(x0) + 4] == PALETTE[0]).all()


def test_exit_statuses_and_one_line_errors(converted, tmp_path, capsys):
    assert main(["show", str(converted / "vg_out"), "--index", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sg2v-data: error: --index 9: the train split has 2 samples (0..1)"
    assert main(["convert", "vg", str(converted / "vg"), "--out", str(converted / "vg_out"), *VG_FLAGS]) == 2
    assert "is a folder that is not an earlier sg2v output; pass --force" in capsys.readouterr().err
    assert main(["convert", "vg", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["stats", str(tmp_path)]) == 1
    assert "is this a folder written by `sg2v-data convert`" in capsys.readouterr().err
    assert main(["show", str(converted / "vg_out"), "--index", "0", "--sheet", str(tmp_path / "x.jpg")]) == 2


def test_help_shows_every_option_with_its_default():
    r = subprocess.run([sys.executable, "-m", "sg2v.dataset.cli", "convert", "vg", "--help"],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag in ("--min-object-instances", "--max-objects-per-image", "--splits-json", "--no-aliases",
                 "--workers", "--skip-unreadable", "--resolve-merged-ids"):
        assert flag in text, flag
    assert "training objects (default: 2000)" in text and "(default: 200)" in text


def test_conversion_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "data_convert.py"
    args = ["--images", "12", "--source-size", "120x90", "--size", "tiny", "--workers", "1",
            "--json", str(out)]
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["samples"] == 12 and row["samples_per_s"] > 0 and "samples/s" in r.stdout

