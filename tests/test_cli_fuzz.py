"""Seeded fuzzing of every command's outputs and number flags: sg2v-run, sg2v-export, sg2v-train (training and
eval), sg2v-bench and sg2v-data (convert, show --sheet) get random hostile output paths (an input, the folder
holding one, a path inside a bundle or source, /, ., a device, a FIFO, a symlink loop, a path under a file,
a user's file or folder, an earlier sg2v output, names with newlines or non-ASCII characters) and random
hostile numbers, with and without --force.

Every case must end in exit 0, 1 or 2 with at most one stderr line and no traceback, leave every input and
every file the user made byte for byte (a user's file may go only with --force, an input never), create
nothing in / or /dev, and never block. The heavy part of each command (generation aside: sg2v-run really
generates with a toy bundle) is replaced by a sentinel, so a case that passes every check counts as "reached
the work". The fast run tries 40 cases per surface; SG2V_FUZZ_LONG=1 multiplies the counts by 20. The
outcome counts per surface are printed (pytest -s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle

from sg2v import safety
from sg2v.errors import Sg2vError

LONG = os.environ.get("SG2V_FUZZ_LONG") == "1"
CASES = 40 * (20 if LONG else 1)
GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1", "2", "7", "1e7", "100000", "99999999999999999999999",
           "1e-300"]
INTS = ["-1", "0", "1", "2", "3", "64", "65", "1000", "100000", str(2 ** 63), str(2 ** 64)]


class Reached(Sg2vError):
    """Raised by the stubbed heavy part of a command: every check before it passed."""

    exit_code = 0


def _reached(*_a, **_k):
    raise Reached("reached the work")


def _tree(root: Path) -> dict[str, str]:
    out = {}
    if root.is_file() and not root.is_symlink():
        return {str(root): hashlib.sha256(root.read_bytes()).hexdigest()}
    for p in sorted(root.rglob("*") if root.is_dir() else ()):
        if p.is_symlink() or not p.is_file():
            continue
        try:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            continue
    return out


@pytest.fixture
def world(tmp_path, converted, test_seed):
    """The inputs, the user's own files and the earlier sg2v outputs the cases aim at."""
    w = tmp_path
    bundle = make_fake_bundle(w / "in" / "bundle", seed=test_seed % 1000)[0]
    (w / "in" / "g.json").write_text(json.dumps(GRAPH))
    (w / "in" / "g2.json").write_text(json.dumps(GRAPH))
    ckpt = w / "in" / "run" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(os.urandom(512))
    src = w / "in" / "src"
    for sub in ("images", "annotations", "frames"):
        (src / sub).mkdir(parents=True)
        (src / sub / "a.bin").write_bytes(os.urandom(32))
    (w / "in" / "vocab.json").write_text('{"object_idx_to_name": ["x"]}')
    data = w / "in" / "data"
    shutil.copytree(next(iter(converted.values())), data)
    user = w / "user"
    (user / "photos").mkdir(parents=True)
    (user / "photos" / "frame_0000.png").write_bytes(b"not sg2v's")
    (user / "notes.md").write_text("# mine\n")
    (user / "table.json").write_text('{"0": [0.1, 0.1, 0.2, 0.2]}')
    np.save(user / "clip.npy", np.zeros((2, 4, 4, 3), np.uint8))
    (user / "afile").write_text("x")
    (w / "loop").symlink_to(w / "loop")
    os.mkfifo(w / "fifo")
    ours = w / "ours"
    ours.mkdir()
    from sg2v.video import write_video

    write_video(ours / "v.npy", np.full((2, 4, 4, 3), 7, np.uint8))
    (ours / "r.json").write_text(json.dumps({safety.JSON_MARK: "sg2v-bench"}))
    (ours / "t.md").write_text(f"{safety.TABLE_MARK}\n|x|\n")
    return {"root": w, "bundle": bundle, "graph": w / "in" / "g.json", "graph2": w / "in" / "g2.json",
            "ckpt": ckpt, "src": src, "vocab": w / "in" / "vocab.json", "data": data, "user": user,
            "ours": ours}


def _paths(w: dict, ext: str) -> list[str]:
    """Hostile and ordinary output paths for an output of extension `ext`."""
    r, u, o = w["root"], w["user"], w["ours"]
    return [str(p) for p in (
        w["graph"], w["ckpt"], w["ckpt"].parent, w["bundle"], w["bundle"] / "manifest.json",
        w["bundle"].parent,
        w["src"], w["src"] / "images", w["src"] / "annotations" / "x", w["data"], w["data"] / f"s{ext}",
        w["vocab"].parent, w["graph"].parent.parent, "/", ".", "..", "/dev/full", "/dev/null", r / "fifo",
        r / "loop" / f"x{ext}", u / "afile" / f"x{ext}", u / "afile", u / "photos", u / "notes.md",
        u / "table.json", u / "clip.npy", o / "v.npy", o / "r.json", o / "t.md", r / "new" / f"a{ext}",
        r / f"fresh{ext}", r / f"line\nbreak{ext}", r / f"vidé😀{ext}", r / ("n" * 300 + ext), "")]


class Fuzz:
    """Runs cases against one surface and checks the invariants."""

    def __init__(self, w: dict, capsys, rng: np.random.Generator, prog: str):
        self.w, self.capsys, self.rng, self.prog = w, capsys, rng, prog
        self.outcomes: Counter = Counter()
        self.original = {**_tree(w["root"] / "in"), **_tree(w["user"])}  # what the user made, not sg2v
        self.top = (sorted(os.listdir("/")), sorted(os.listdir("/dev")))

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def case(self, main, argv: list[str], force: bool, reads: list[Path]) -> None:
        """One call; `reads` are the paths this call reads (never changed, --force or not); without --force
        nothing the user has (under in/ and user/) may change either."""
        def files(paths):
            return {k: v for p in paths for k, v in _tree(p).items()
                    if p.is_dir() or k == str(p)} if paths else {}

        kept = files(reads)
        mine = {k: v for k, v in files([self.w["root"] / "in", self.w["user"]]).items()
                if self.original.get(k) == v}

        def stuck(*_):
            raise TimeoutError(f"case blocked: {argv}")

        signal.signal(signal.SIGALRM, stuck)
        signal.alarm(60)
        try:
            rc = main(argv + (["--force"] if force else []))
        except SystemExit as e:  # argparse: a value its type refuses
            rc = e.code
        finally:
            signal.alarm(0)
        captured = self.capsys.readouterr()
        err = captured.err.strip()
        assert rc in (0, 1, 2), (rc, argv, err)
        assert "Traceback" not in err, (argv, err)
        if err.startswith("usage:"):  # argparse: its usage block, then one error line
            assert rc == 2 and err.splitlines()[-1].startswith(f"{self.prog}: error: argument"), (argv, err)
        else:  # progress lines may come first (convert's "reading ..."); one error line, the last
            errors = [line for line in err.splitlines() if line.startswith(f"{self.prog}")]
            assert len(errors) <= 1 and (rc == 0 or err.splitlines()[-1] in errors), (argv, err)
        assert files(reads) == kept, ("an input changed", " ".join(argv), err)
        if not force:
            now = files([self.w["root"] / "in", self.w["user"]])
            changed = [k for k, v in mine.items() if now.get(k) != v]
            assert not changed, ("a user's file changed", changed, " ".join(argv), err)
        assert (sorted(os.listdir("/")), sorted(os.listdir("/dev"))) == self.top, argv
        kind = ("reached the work" if "reached the work" in err else "wrote its outputs" if rc == 0 else
                "usage error (argparse)" if "usage:" in captured.err else f"refused, exit {rc}")
        self.outcomes[kind] += 1


def _report(name: str, fuzz: Fuzz) -> None:
    print(f"\n{name}: {sum(fuzz.outcomes.values())} cases: "
          + ", ".join(f"{k} {v}" for k, v in sorted(fuzz.outcomes.items())))
    assert sum(fuzz.outcomes.values()) == CASES


def test_fuzz_run(world, capsys, rng, monkeypatch):
    from sg2v.runtime.cli import main

    monkeypatch.chdir(world["root"])
    fuzz = Fuzz(world, capsys, rng, "sg2v-run")
    for _ in range(CASES):
        ext = fuzz.pick([".npy", ".gif", ".webp", "", ".png", ".xpm", ".avi"])
        argv = [str(world["graph"])] + ([str(world["graph2"])] if rng.random() < 0.4 else [])
        argv += ["--bundle", str(world["bundle"]), "--backend", "ort",
                 "--steps", fuzz.pick(["1", "1", "0", "-1", "100001"]),
                 "--out", fuzz.pick(_paths(world, ext if ext in (".npy", ".gif", ".webp", "") else ".npy"))]
        if rng.random() < 0.3:
            argv += ["--contact-sheet", fuzz.pick(_paths(world, fuzz.pick([".png", ".xpm", ".blp", ".jpg"])))]
        if rng.random() < 0.3:
            argv += [fuzz.pick(["--guidance", "--guidance-rescale", "--fps"]), fuzz.pick(NUMBERS)]
        if rng.random() < 0.3:
            argv += [fuzz.pick(["--seed", "--batch", "--threads"]), fuzz.pick(INTS)]
        fuzz.case(main, argv, bool(rng.random() < 0.3), [world["bundle"], world["graph"], world["graph2"]])
    _report("sg2v-run", fuzz)


def test_fuzz_export(world, capsys, rng, monkeypatch):
    from sg2v.export import onnx_export
    from sg2v.export.cli import main

    monkeypatch.chdir(world["root"])
    monkeypatch.setattr(onnx_export, "load_for_export", _reached)
    fuzz = Fuzz(world, capsys, rng, "sg2v-export")
    for _ in range(CASES):
        ckpt = fuzz.pick([world["ckpt"], world["bundle"]])
        argv = ["--ckpt", str(ckpt), "--out", fuzz.pick(_paths(world, ""))]
        if rng.random() < 0.4:
            argv += [fuzz.pick(["--guidance", "--seed", "--trt-target", "--max-batch", "--opset"]),
                     fuzz.pick([*NUMBERS, "garbage", "10.3", "8.6", "10.x"])]
        fuzz.case(main, argv, bool(rng.random() < 0.5), [ckpt])
    _report("sg2v-export", fuzz)


def test_fuzz_train(world, capsys, rng, monkeypatch):
    from sg2v.cli.train import main
    from sg2v.training import checkpoint, train

    monkeypatch.chdir(world["root"])
    monkeypatch.setattr(train, "_train", _reached)
    monkeypatch.setattr(checkpoint, "load_model", _reached)
    fuzz = Fuzz(world, capsys, rng, "sg2v-train")
    for _ in range(CASES):
        if rng.random() < 0.35:
            argv = ["eval", "--ckpt", str(world["ckpt"]), "--steps", fuzz.pick(["1", "0", "10001"])]
            if rng.random() < 0.7:
                argv += ["--json", fuzz.pick(_paths(world, ".json"))]
            if rng.random() < 0.3:
                argv += ["--contact-sheet", fuzz.pick(_paths(world, ".png"))]
            if rng.random() < 0.3:
                argv += [fuzz.pick(["--n", "--seed"]), fuzz.pick(INTS)]
            fuzz.case(main, argv, False, [world["ckpt"]])
            continue
        argv = ["diffusion", "--size", "tiny", "--out", fuzz.pick(_paths(world, ""))]
        if rng.random() < 0.3:
            argv += ["--data", str(world["data"])]
        if rng.random() < 0.3:
            argv += ["--init", str(world["ckpt"])]
        if rng.random() < 0.5:
            flag = fuzz.pick(["--workers", "--batch", "--seed", "--steps", "--grad-accum"])
            argv += [flag, fuzz.pick(INTS)]
        reads = [world["data"]] * ("--data" in argv) + [world["ckpt"]] * ("--init" in argv)
        fuzz.case(main, argv, False, reads)
    _report("sg2v-train", fuzz)


def test_fuzz_bench(world, capsys, rng, monkeypatch):
    from sg2v.export import bench
    from sg2v.runtime.bundle import Bundle

    monkeypatch.chdir(world["root"])
    monkeypatch.setattr(Bundle, "open", classmethod(_reached))
    fuzz = Fuzz(world, capsys, rng, "sg2v-bench")
    for _ in range(CASES):
        argv = ["--bundle", str(world["bundle"]), "--graph", str(world["graph"]), "--backends", "ort-cpu"]
        if rng.random() < 0.7:
            argv += ["--json", fuzz.pick(_paths(world, ".json"))]
        if rng.random() < 0.5:
            argv += ["--table", fuzz.pick(_paths(world, ".md"))]
        if rng.random() < 0.5:
            argv += [fuzz.pick(["--batch", "--peak-size", "--seed", "--repeats", "--warmup", "--steps"]),
                     fuzz.pick(INTS)]
        if rng.random() < 0.3:
            argv += ["--timeout", fuzz.pick(NUMBERS)]
        fuzz.case(bench.main, argv, False, [world["bundle"], world["graph"]])
    _report("sg2v-bench", fuzz)


def test_fuzz_data(world, capsys, rng, monkeypatch):
    import importlib

    from sg2v.dataset.cli import main

    convert = importlib.import_module("sg2v.dataset.convert")

    monkeypatch.chdir(world["root"])
    monkeypatch.setattr(convert, "make_plan", _reached)
    fuzz = Fuzz(world, capsys, rng, "sg2v-data")
    for _ in range(CASES):
        if rng.random() < 0.3:
            argv = ["show", str(world["data"]), "--index", "0", "--sheet", fuzz.pick(_paths(world, ".png"))]
            fuzz.case(main, argv, False, [world["data"]])
            continue
        fmt = fuzz.pick(["vg", "coco-stuff", "action-genome", "folder"])
        argv = ["convert", fmt, str(world["src"]), "--out", fuzz.pick(_paths(world, ""))]
        dirs = {"vg": ["--images-dir", "--splits-json"], "coco-stuff": ["--images-dir", "--annotations-dir"],
                "action-genome": ["--frames-dir", "--annotations-dir"], "folder": ["--vocab"]}[fmt]
        if rng.random() < 0.5:
            flag = fuzz.pick(dirs)
            named = world["vocab"] if flag in ("--vocab", "--splits-json") else world["src"] / "images"
            argv += [flag, str(named)]
        if rng.random() < 0.3:
            argv += ["--workers", fuzz.pick(INTS)]
        fuzz.case(main, argv, bool(rng.random() < 0.5), [world["src"], world["vocab"]])
    _report("sg2v-data", fuzz)
