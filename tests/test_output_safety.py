"""The output-safety layer (`sg2v.safety`) as every command uses it: never over, into or around an input, an
existing path replaced only when that command wrote it (marked) or with --force, OS errors as one line,
bounds on counts, and the regression cases of each command that used to destroy or hang."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle

from sg2v import safety
from sg2v.errors import GraphError, Sg2vError

GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (and `root` itself if a file) with its sha256: what must not change."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(prog) and "Traceback" not in err, err
    return err


@pytest.fixture
def fake(tmp_path, test_seed):
    return make_fake_bundle(tmp_path / "bundle", seed=test_seed % 10_000)[0]


@pytest.fixture
def ckpt(tmp_path, rng) -> Path:
    """A file standing for a checkpoint: the commands must refuse before reading it, and never change it."""
    path = tmp_path / "runs" / "d1" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


# ------------------------------------------------------------------------------------ inputs never replaced
def test_eval_json_never_replaces_the_checkpoint(ckpt, capsys):
    from sg2v.cli.train import main

    before = _snapshot(ckpt.parent)
    for out in (ckpt, ckpt.parent):
        assert main(["eval", "--ckpt", str(ckpt), "--steps", "1", "--n", "1", "--json", str(out)]) == 2
        assert "would replace the --ckpt checkpoint" in _one_line(capsys, "sg2v-train eval")
    mine = _write(ckpt.parent / "notes.json", {"a": 1})  # a JSON the user wrote: not an eval table
    assert main(["eval", "--ckpt", str(ckpt), "--steps", "1", "--json", str(mine)]) == 2
    assert "not an earlier sg2v output" in _one_line(capsys, "sg2v-train eval")
    assert _snapshot(ckpt.parent) == {**before, **_snapshot(mine)}


def test_bench_json_and_table_never_replace_the_bundle_the_graph_or_a_users_file(fake, tmp_path, capsys):
    from sg2v.export import bench

    graph = _write(tmp_path / "g.json", GRAPH)
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    before = {**_snapshot(fake), **_snapshot(graph), **_snapshot(notes)}
    base = ["--bundle", str(fake), "--graph", str(graph), "--backends", "ort-cpu"]
    for flag, out, why in (("--json", fake / "manifest.json", "lies inside the bundle"),
                           ("--json", fake, "would replace the bundle"),
                           ("--table", graph, "would replace the --graph file"),
                           ("--table", notes, "not an earlier sg2v output"),
                           ("--json", tmp_path, "would replace the bundle")):
        assert bench.main([*base, flag, str(out)]) == 2, (flag, out)
        assert why in _one_line(capsys, "sg2v-bench"), (flag, out)
    assert {**_snapshot(fake), **_snapshot(graph), **_snapshot(notes)} == before
    # what sg2v-bench wrote before is recognised by its mark and may be replaced
    table, report = tmp_path / "t.md", tmp_path / "r.json"
    table.write_text(f"{safety.TABLE_MARK}\n| backend |\n")
    report.write_text(json.dumps({safety.JSON_MARK: "sg2v-bench", "backends": {}}))
    args = bench.build_parser().parse_args([*base, "--json", str(report), "--table", str(table)])
    bench._check_args(args)  # no error


def test_export_never_replaces_the_folder_holding_the_checkpoint(ckpt, capsys):
    from sg2v.export.cli import main

    before = _snapshot(ckpt.parent.parent)
    for out in (ckpt.parent, ckpt.parent.parent, ckpt):
        assert main(["--ckpt", str(ckpt), "--out", str(out), "--force"]) == 1
        assert "would replace the checkpoint being exported" in _one_line(capsys, "sg2v-export")
    assert _snapshot(ckpt.parent.parent) == before


def test_export_never_writes_into_a_bundle_it_reads(fake, capsys):
    from sg2v.export.cli import main

    before = _snapshot(fake)
    assert main(["--ckpt", str(fake), "--out", str(fake / "again"), "--force"]) == 1
    assert "lies inside the checkpoint being exported" in _one_line(capsys, "sg2v-export")
    assert _snapshot(fake) == before


@pytest.mark.parametrize("fmt, flag, inside", [
    ("vg", None, "images"), ("vg", None, "annotations"), ("vg", "--images-dir", ""),
    ("vg", "--images-dir", "sub"), ("coco-stuff", "--annotations-dir", ""),
    ("coco-stuff", "--images-dir", "x"), ("action-genome", "--frames-dir", ""),
    ("action-genome", "--annotations-dir", "deep/er"), ("vg", "--splits-json", ".."),
    ("folder", "--vocab", "..")])
def test_convert_never_replaces_its_sources(tmp_path, capsys, fmt, flag, inside):
    """`sg2v-data convert vg src --out src/images --force` replaced the source images; now SOURCE, every
    folder it names and the folder of a file it reads are refused, inside or around, with --force too."""
    from sg2v.dataset.cli import main

    src = tmp_path / "src"
    for sub in ("images/VG_100K", "annotations", "frames/v.mp4"):
        (src / sub).mkdir(parents=True)
        (src / sub / "keep.bin").write_bytes(os.urandom(64))
    extra = tmp_path / "elsewhere"
    (extra / "deep").mkdir(parents=True)
    (extra / "vocab.json").write_text('{"object_idx_to_name": []}')
    before = {**_snapshot(src), **_snapshot(extra)}
    argv = ["convert", fmt, str(src), "--force"]
    if flag is None:
        out = src / inside
    elif flag in ("--vocab", "--splits-json"):
        argv += [flag, str(extra / "vocab.json")]
        out = (extra / "vocab.json" / inside).resolve()
    else:
        argv += [flag, str(extra)]
        out = extra / inside if inside else extra
    assert main([*argv, "--out", str(out)]) == 2
    err = _one_line(capsys, "sg2v-data")
    assert "would replace" in err or "lies inside" in err
    assert {**_snapshot(src), **_snapshot(extra)} == before


# -------------------------------------------------------------------------------------- sg2v-run outputs
@pytest.mark.parametrize("out", [".", "/", "..", "loop", "dev"])
def test_run_refuses_unusable_outs_in_one_line_before_generating(fake, tmp_path, capsys, monkeypatch, out):
    from sg2v.runtime.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    graphs = [str(_write(tmp_path / f"g{i}.json", GRAPH)) for i in range(1 if out == "dev" else 2)]
    target = {"loop": str(tmp_path / "loop" / "v.npy"), "dev": "/dev/full"}.get(out, out)
    import tempfile

    def no_probe(*a, **k):
        raise AssertionError("no probe file may be created")

    monkeypatch.setattr(tempfile, "mkstemp", no_probe)
    before = _snapshot(tmp_path)
    assert main([*graphs, "--bundle", str(fake), "--steps", "1", "--out", target]) in (1, 2)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "backend" not in captured.out
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("ext", [".xpm", ".psd", ".blp", ".cur", ".fli"])
def test_run_refuses_a_sheet_format_pillow_cannot_write_before_generating(fake, tmp_path, capsys, ext):
    from sg2v.runtime.cli import main

    g = _write(tmp_path / "g.json", GRAPH)
    assert main([str(g), "--bundle", str(fake), "--out", str(tmp_path / "v.npy"), "--contact-sheet",
                 str(tmp_path / f"s{ext}")]) == 2
    captured = capsys.readouterr()
    assert "cannot write" in captured.err and "backend" not in captured.out
    assert not (tmp_path / "v.npy").exists()


def test_run_torch_backends_without_torch_are_one_line(fake, tmp_path, capsys, monkeypatch):
    from sg2v.runtime.cli import main

    g = _write(tmp_path / "g.json", GRAPH)
    monkeypatch.setitem(sys.modules, "torch", None)
    for backend in ("torch", "torch-cuda"):
        out = str(tmp_path / "v.npy")
        assert main([str(g), "--bundle", str(fake), "--backend", backend, "--out", out]) == 1
        err = _one_line(capsys, "sg2v-run")
        assert "torch" in err and "--backend" in err


def test_run_non_ascii_out_under_an_ascii_terminal(fake, tmp_path):
    g = _write(tmp_path / "g.json", GRAPH)
    out = tmp_path / "vidéo_ü.npy"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "sg2v.runtime.cli", str(g), "--bundle", str(fake), "--steps",
                           "1", "--backend", "ort", "--out", str(out)], capture_output=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"vid\\xe9o_\\xfc.npy" in proc.stdout and out.is_file()


def test_run_streams_videos_chunk_by_chunk_and_bounds_graphs_per_call(fake, tmp_path, capsys, monkeypatch,
                                                                      rng):
    """Videos are generated a few batched calls at a time and written before the next chunk; the files
    are those of one call over all graphs; more than MAX_GRAPHS graphs are refused first."""
    from sg2v.runtime import Pipeline, cli
    from sg2v.video import read_video

    graphs = [{"objects": [["red circle", "blue square", "green triangle"][int(k)]], "relationships": []}
              for k in rng.integers(0, 3, 5)]
    path = _write(tmp_path / "many.json", graphs)
    calls = []
    real_run = Pipeline.run

    def run(self, gs, *a, **k):
        calls.append((len(gs), sorted(p.name for p in tmp_path.glob("v_*.npy"))))
        return real_run(self, gs, *a, **k)

    monkeypatch.setattr(Pipeline, "run", run)
    monkeypatch.setattr(cli, "CHUNK_CALLS", 1)
    assert cli.main([str(path), "--bundle", str(fake), "--steps", "2", "--batch", "2", "--backend", "ort",
                     "--out", str(tmp_path / "v.npy")]) == 0
    assert [n for n, _ in calls] == [2, 2, 1]
    assert calls[2][1] == [f"v_{i}.npy" for i in range(4)]  # written before the last chunk ran
    monkeypatch.setattr(Pipeline, "run", real_run)
    want = Pipeline.from_bundle(fake, backend="ort").run(graphs, [0] * 5, steps=2).frames
    for i in range(5):
        np.testing.assert_array_equal(read_video(tmp_path / f"v_{i}.npy"), want[i])
    capsys.readouterr()
    monkeypatch.setattr(cli, "MAX_GRAPHS", 4)
    assert cli.main([str(path), "--bundle", str(fake), "--out", str(tmp_path / "w.npy")]) == 2
    assert "more than 4 graphs in one call" in _one_line(capsys, "sg2v-run")


# ------------------------------------------------------------------------------------ marks, not guesses
def test_only_marked_outputs_count_as_earlier_sg2v_outputs(tmp_path, rng):
    """A folder of frame_0001.png, a uint8 (F, H, W, 3) .npy and a JSON of digit keys are not sg2v's unless
    marked; what sg2v writes is."""
    from PIL import Image

    from sg2v.video import is_sg2v_output, write_video

    frames = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(frames[i]).save(folder / f"frame_{i:04d}.png")
    np.save(tmp_path / "mine.npy", frames)
    _write(tmp_path / "boxes.json", {"0": [0.1, 0.1, 0.2, 0.2]})
    assert not is_sg2v_output(folder, "png") and not is_sg2v_output(tmp_path / "mine.npy", "npy")
    assert not safety.is_marked_json(tmp_path / "boxes.json")
    write_video(tmp_path / "ours", frames)
    write_video(tmp_path / "ours.npy", frames)
    assert is_sg2v_output(tmp_path / "ours", "png") and is_sg2v_output(tmp_path / "ours.npy", "npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ours.npy"), frames)  # the mark does not change the data
    with open(tmp_path / "ours.npy", "ab") as f:  # bytes appended by someone else: no longer ours
        f.write(b"x")
    assert not is_sg2v_output(tmp_path / "ours.npy", "npy")
    (tmp_path / "ours" / "notes.txt").write_text("mine")  # a file added to a frame folder: no longer ours
    assert not is_sg2v_output(tmp_path / "ours", "png")


def test_show_sheet_replaces_only_a_sheet_sg2v_wrote(converted, tmp_path, capsys):
    from PIL import Image

    from sg2v.dataset.cli import main

    data = next(iter(converted.values()))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), (9, 8, 7)).save(photo)
    before = _snapshot(photo)
    assert main(["show", str(data), "--index", "0", "--sheet", str(photo)]) == 2
    assert "not an earlier sg2v output" in _one_line(capsys, "sg2v-data")
    assert _snapshot(photo) == before
    assert main(["show", str(data), "--index", "0", "--sheet", str(data / "sheet.png")]) == 2
    assert "lies inside the converted data set" in _one_line(capsys, "sg2v-data")
    sheet = tmp_path / "sheet.png"
    for _ in range(2):  # the second run replaces the first one's sheet
        assert main(["show", str(data), "--index", "0", "--sheet", str(sheet)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("case", ["root", "file", "user folder", "data", "init"])
def test_train_out_must_be_a_run_folder(tmp_path, capsys, converted, case):
    from sg2v.cli.train import main

    user = tmp_path / "thesis"
    user.mkdir()
    (user / "metrics.jsonl").write_text("my own numbers\n")
    (tmp_path / "a_file").write_text("x")
    data = next(iter(converted.values()))
    init = tmp_path / "runs" / "last.pt"
    init.parent.mkdir()
    init.write_bytes(b"weights")
    out, extra, why = {"root": ("/", [], "is the root folder"),
                       "file": (tmp_path / "a_file", [], "exists and is a file"),
                       "user folder": (user, [], "not an earlier sg2v output; choose another path"),
                       "data": (data, ["--data", str(data)], "would replace a --data folder"),
                       "init": (init.parent, ["--init", str(init)], "would replace a weights file read"),
                       }[case]
    before = {**_snapshot(user), **_snapshot(data), **_snapshot(init)}
    assert main(["diffusion", "--size", "tiny", "--steps", "1", "--workers", "0", "--out", str(out),
                 *extra]) == 2
    assert why in _one_line(capsys, "sg2v-train diffusion")
    assert {**_snapshot(user), **_snapshot(data), **_snapshot(init)} == before
    assert not Path("/last.pt").exists()


def test_a_second_command_on_a_locked_run_folder_gets_one_line(tmp_path, capsys):
    from sg2v.cli.train import main

    out = tmp_path / "run"
    with safety.run_folder(out, [], "sg2v-train diffusion"):
        assert (out / safety.MARKER).is_file()
        assert main(["diffusion", "--size", "tiny", "--steps", "1", "--workers", "0", "--out", str(out)]) == 2
        assert "another sg2v command is writing there" in _one_line(capsys, "sg2v-train diffusion")
        with pytest.raises(safety.OutputError, match="another sg2v command"):
            with safety.run_folder(out, [], "sg2v-train pretrain"):
                pass
    with safety.run_folder(out, [], "sg2v-train diffusion"):  # released with the first holder
        pass


# --------------------------------------------------------------------------------------- bounds and flags
@pytest.mark.parametrize("argv, why", [
    (["diffusion", "--workers", "1000"], "--workers 1000: at most 64"),
    (["diffusion", "--batch", "100000"], "--batch 100000: at most 4096"),
    (["diffusion", "--seed", "-1"], "--seed must be an integer in [0,"),
    (["pretrain", "--batch", "100000"], "--batch 100000: at most 4096"),
    (["eval", "--ckpt", "x.pt", "--steps", "0"], "--steps 0: must be an integer in [1, 100000]"),
    (["eval", "--ckpt", "x.pt", "--seed", "-1"], "--seed -1: must be an integer in [0,")])
def test_train_bounds(tmp_path, capsys, argv, why):
    from sg2v.cli.train import main

    assert main([*argv, "--out", str(tmp_path / "r")] if argv[0] != "eval" else argv) == 2
    assert why in _one_line(capsys, "sg2v-train")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, why", [
    (["--batch", "100000"], "--batch 100000: must be an integer in [1, 1024]"),
    (["--batch", "0"], "--batch 0: must be an integer in [1, 1024]"),
    (["--peak-size", "100000"], "--peak-size 100000: must be an integer in [0, 16384]"),
    (["--timeout", "nan"], "--timeout nan: must be a number of seconds"),
    (["--timeout", "-1"], "--timeout -1.0: must be a number of seconds"),
    (["--seed", "-1"], "--seed -1: must be an integer in [0,"),
    (["--repeats", "100000000"], "--repeats 100000000: must be an integer in [1, 10000]")])
def test_bench_bounds(fake, capsys, argv, why):
    from sg2v.export import bench

    assert bench.main(["--bundle", str(fake), *argv]) == 2
    assert why in _one_line(capsys, "sg2v-bench")


@pytest.mark.parametrize("argv, why", [
    (["--trt-target", "garbage"], "--trt-target 'garbage': a TensorRT version MAJOR.MINOR"),
    (["--trt-target", "8.6"], "the operator table starts at TensorRT 10.3"),
    (["--seed", "-1"], "--seed -1: must be an integer in [0,"),
    (["--guidance", "1e7"], "--guidance 10000000.0: must be a finite number in [0, 1e6]; 1 is no guidance"),
    (["--guidance", "nan"], "--guidance nan: must be a finite number")])
def test_export_flags(ckpt, tmp_path, capsys, argv, why):
    from sg2v.export.cli import main

    assert main(["--ckpt", str(ckpt), "--out", str(tmp_path / "b"), *argv]) == 2
    assert why in _one_line(capsys, "sg2v-export")
    assert not (tmp_path / "b").exists()


# -------------------------------------------------------------------------------- OS errors as one line
def _cli_cases(tmp_path: Path):
    """(prog, module attribute to make fail, argv) of each command's main."""
    g = _write(tmp_path / "g.json", GRAPH)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    return [
        ("sg2v-run", "sg2v.runtime.cli._run", [str(g)], "sg2v.runtime.cli"),
        ("sg2v-export", "sg2v.export.onnx_export.export_bundle",
         ["--ckpt", str(g), "--out", str(tmp_path / "b")], "sg2v.export.cli"),
        ("sg2v-train", "sg2v.training.train.train", ["diffusion", "--out", str(tmp_path / "r")],
         "sg2v.cli.train"),
        ("sg2v-bench", "sg2v.export.bench.run_bench", ["--bundle", str(tmp_path / "x")],
         "sg2v.export.bench"),
        ("sg2v-data", "sg2v.dataset.convert.convert",
         ["convert", "vg", str(src), "--out", str(tmp_path / "o")], "sg2v.dataset.cli"),
    ]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EXDEV, errno.EBUSY,
                                  errno.ENOTDIR, errno.EISDIR, errno.EDQUOT, errno.EACCES])
def test_os_errors_are_one_line_naming_the_path_in_every_command(tmp_path, capsys, monkeypatch, code):
    import importlib

    where = tmp_path / "out\nsecond line" / "v.npy"  # a newline in the path stays escaped

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), str(where))

    for prog, target, argv, module in _cli_cases(tmp_path):
        mod, _, name = target.rpartition(".")
        monkeypatch.setattr(importlib.import_module(mod), name, fail)
        assert importlib.import_module(module).main(argv) == 1, prog
        err = _one_line(capsys, prog)
        assert os.strerror(code) in err and "out\\nsecond line" in err, err
        monkeypatch.undo()


def test_a_failed_write_leaves_the_earlier_output_and_nothing_else(tmp_path, rng, monkeypatch):
    from sg2v.video import VideoError, read_video, write_video

    frames = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for name in ("v.gif", "v.webp", "v.npy", "v"):
        write_video(tmp_path / name, frames)
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        with pytest.raises(VideoError, match="No space.*the existing file was kept"):
            write_video(tmp_path / name, frames[::-1])
        monkeypatch.undo()
        np.testing.assert_array_equal(read_video(tmp_path / name), frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v", "v.gif", "v.npy", "v.webp"]


def test_every_format_is_fsynced_before_its_rename(tmp_path, rng, monkeypatch):
    from sg2v.io import atomic_write_text
    from sg2v.video import write_image, write_video

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    frames = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for name in ("v.gif", "v.webp", "v.npy"):
        write_video(tmp_path / name, frames)
        assert any(".tmp" in s and name in s for s in synced), (name, synced)
    write_video(tmp_path / "frames", frames)
    assert sum("frame_000" in s for s in synced) == 2
    write_image(tmp_path / "s.png", frames[0])
    atomic_write_text(tmp_path / "t.json", "{}")
    assert any("s.png" in s for s in synced) and any("t.json" in s for s in synced)
    assert str(tmp_path) in synced  # the folder, so the renames are on disk too


# -------------------------------------------------------------------- Pipeline.run layouts and guidance
@pytest.mark.parametrize("box, why", [
    ([float("nan"), 0.1, 0.3, 0.3], "[0][0]: nan is outside [0, 1]"),
    ([0.1, 0.1, float("inf"), 0.3], "[0][2]: inf is outside [0, 1]"),
    ([0.1, 0.1, 1.5, 0.3], "[0][2]: 1.5 is outside [0, 1]"),
    ([0.5, 0.1, 0.25, 0.75], "[0]: x1 0.25 <= x0 0.5"),
    ([0.125, 0.5, 0.25, 0.375], "[0]: y1 0.375 <= y0 0.5")])
def test_pipeline_layouts_are_checked_like_layout_files(grounded_bundle, tmp_path, box, why):
    """The same check (sg2v.layout.parse_box) as a --layout file: the same message (NaN and inf come from
    Python here; strict JSON files cannot hold them and are refused as text)."""
    from sg2v.graph import load_layout, parse_graph
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort")
    frames = pipe.bundle.config.data.frames
    with pytest.raises(GraphError) as api:
        pipe.run([GRAPH], [0], steps=1, layouts=[{0: np.asarray([box] * frames, np.float32)}])
    g = parse_graph(GRAPH, pipe.bundle.vocab)
    with pytest.raises(GraphError) as file:
        load_layout(_write(tmp_path / "l.json", {"0": [box] * frames}), g, frames)
    assert why in str(api.value)
    if all(np.isfinite(box)):
        assert str(api.value).split("]: ", 1)[1] == str(file.value).split("]: ", 1)[1]
    with pytest.raises(GraphError, match="is outside"):
        pipe.run([GRAPH], [0], steps=1, layouts=[{"1": [0.1, 0.1, 1.2, 0.2]}])


@pytest.mark.parametrize("name, value", [("guidance", "2"), ("guidance", True), ("guidance_rescale", "0.5"),
                                         ("guidance", [2.0])])
def test_pipeline_guidance_must_be_a_real_number(fake, name, value):
    from sg2v.runtime import Pipeline

    with pytest.raises(Sg2vError, match="must be a real number"):
        Pipeline.from_bundle(fake, backend="ort").run([GRAPH], [0], steps=1, **{name: value})


def test_diverging_training_stops_without_a_nan_in_its_metrics(tmp_path, monkeypatch):
    import torch

    from sg2v.training import train as tr

    def nan_loss(*a, **k):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(tr, "compute_loss", nan_loss)
    out = tmp_path / "run"
    tc = tr.TrainConfig(size="tiny", steps=3, batch=2, workers=0, eval_every=0, log_every=1, out=str(out))
    with pytest.raises(tr.DivergedError, match="step 1: the loss is nan") as e:
        tr.train(tc, progress=False)
    assert e.value.exit_code == 1 and not (out / tr.LAST).exists()
    text = (out / tr.METRICS).read_text() if (out / tr.METRICS).exists() else ""
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(tr.json_record({"loss": float("nan"), "x": [float("inf"), 1.0]})) == {"loss": None,
                                                                                          "x": [None, 1.0]}


def test_a_path_with_a_newline_is_shown_escaped_in_one_line(fake, tmp_path, capsys):
    from sg2v.dataset.cli import main as data_main
    from sg2v.runtime.cli import main as run_main

    odd = tmp_path / "two\nlines"
    odd.mkdir()
    g = _write(odd / "g.json", GRAPH)
    (odd / "taken.npy").write_bytes(b"mine")
    assert run_main([str(g), "--bundle", str(fake), "--out", str(odd / "taken.npy")]) == 2
    assert "two\\nlines" in _one_line(capsys, "sg2v-run")
    assert run_main([str(odd / "missing.json"), "--bundle", str(fake)]) == 2
    assert "two\\nlines" in _one_line(capsys, "sg2v-run")
    assert data_main(["stats", str(odd)]) == 1
    assert "two\\nlines" in _one_line(capsys, "sg2v-data")


def test_json_reports_of_the_bench_scripts_follow_the_output_rules(tmp_path):
    """bench/ros_latency.py and bench/triton_serving.py write --json through write_json_report: never the
    bundle or inside it, an unmarked file never, their own (marked) report replaced."""
    from sg2v.safety import JSON_MARK, OutputError, inputs, write_json_report

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"format": "sg2v-bundle"}')
    reads = inputs((bundle, "the bundle", True))
    for target in (bundle / "manifest.json", bundle / "report.json", bundle):
        with pytest.raises(OutputError):
            write_json_report(target, "ros_latency", {"p50_ms": 1.0}, reads)
    assert (bundle / "manifest.json").read_text() == '{"format": "sg2v-bundle"}'
    user = tmp_path / "notes.json"
    user.write_text('{"mine": 1}')
    with pytest.raises(OutputError, match="not"):
        write_json_report(user, "ros_latency", {"p50_ms": 1.0}, reads)
    assert json.loads(user.read_text()) == {"mine": 1}
    report = tmp_path / "out" / "ros.json"
    write_json_report(report, "ros_latency", {"p50_ms": 1.5}, reads)
    write_json_report(report, "ros_latency", {"p50_ms": 2.5}, reads)  # its own report: replaced
    assert json.loads(report.read_text()) == {JSON_MARK: "ros_latency", "p50_ms": 2.5}
