"""The input-reading layer (`sg2v.safety.open_input` / `read_input`): regular files only, refused without
blocking (FIFOs, devices, folders), reads bounded by the bytes actually read, and every command's user-named
reads going through it (graphs, --layout, --vocab, dataset.json, vocab.json, the index, the frames header)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sg2v import safety
from sg2v.errors import Sg2vError

GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


@pytest.fixture(autouse=True)
def no_hang():
    """Each test fails (instead of hanging CI) if a read blocks for 60 s."""
    def stuck(*_):
        raise TimeoutError("a read blocked")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_read_input_matches_the_file_and_bounds_by_bytes_read(tmp_path, rng):
    data = rng.integers(0, 256, int(rng.integers(1, 50_000)), dtype="uint8").tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert safety.read_input(path, len(data)) == data
    with pytest.raises(OSError) as e:
        safety.read_input(path, len(data) - 1)
    assert e.value.errno == errno.EFBIG and str(path) in str(e.value)
    # a file reporting size 0 yet holding bytes (/proc): read to its end, still bounded
    status = safety.read_input("/proc/self/status")
    assert status.startswith(b"Name:") and len(status) > 100
    with pytest.raises(OSError, match="more than the 10 bytes"):
        safety.read_input("/proc/self/status", 10)


def test_sparse_huge_file_is_refused_after_reading_only_the_bound(tmp_path):
    big = tmp_path / "g.json"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # 3 GiB of holes
    with pytest.raises(OSError, match="more than the 1024 bytes"):
        safety.read_input(big, 1024)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null", "folder", "link to /dev/zero"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, kind):
    path = {"fifo": lambda: _fifo(tmp_path / "p"), "folder": lambda: tmp_path,
            "link to /dev/zero": lambda: (tmp_path / "l").symlink_to("/dev/zero") or tmp_path / "l",
            }.get(kind, lambda: Path(kind))()
    with pytest.raises(OSError, match="not a regular file"):
        safety.read_input(path)
    with pytest.raises(OSError, match="not a regular file"):
        safety.open_input(path)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_run_layout_and_graph_from_a_fifo_or_device_are_one_line(grounded_bundle, tmp_path, capsys, kind):
    from sg2v.runtime.cli import main

    g = _write(tmp_path / "g.json", GRAPH)
    bad = _fifo(tmp_path / "in.json") if kind == "fifo" else Path(kind)
    out = str(tmp_path / "v.npy")
    assert main([str(g), "--bundle", str(grounded_bundle), "--layout", str(bad), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read layout file" in err and "not a regular file" in err
    if kind == "fifo":  # the graph itself
        assert main([str(bad), "--bundle", str(grounded_bundle), "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert "not a regular file" in err or "no such file" in err


def test_vocab_from_a_device_or_fifo_is_one_line(tmp_path):
    from sg2v.errors import VocabError
    from sg2v.vocab import load_vocab

    for bad in (Path("/dev/zero"), _fifo(tmp_path / "v.json")):
        with pytest.raises(VocabError, match="not a regular file"):
            load_vocab(bad)


@pytest.mark.parametrize("name", ["dataset.json", "vocab.json", "train.jsonl", "train.frames.npy"])
@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_converted_set_files_that_are_fifos_or_devices_are_one_line(converted, tmp_path, capsys, name, kind):
    from sg2v.dataset.cli import main as data_main
    from sg2v.dataset.format import ConvertedDataset

    src = next(iter(converted.values()))
    root = tmp_path / "set"
    shutil.copytree(src, root)
    (root / name).unlink()
    if kind == "fifo":
        _fifo(root / name)
    else:
        (root / name).symlink_to("/dev/zero")
    with pytest.raises(Sg2vError, match="not a regular file"):
        ConvertedDataset(root, "train")
    assert data_main(["stats", str(root)]) in (0, 1)  # stats reads dataset.json and vocab.json only
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 1 and "Traceback" not in err


def test_train_data_fifo_is_one_line_in_a_child(converted, tmp_path):
    """`sg2v-train diffusion --data SET` with a FIFO train.jsonl: one line, exit non-zero, no hang (a
    child process, so a hang would be a timeout here)."""
    src = next(iter(converted.values()))
    root = tmp_path / "set"
    shutil.copytree(src, root)
    (root / "train.jsonl").unlink()
    _fifo(root / "train.jsonl")
    proc = subprocess.run([sys.executable, "-m", "sg2v.cli.train", "diffusion", "--data", str(root),
                           "--steps", "1", "--workers", "0", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and len(err.splitlines()) == 1 and "not a regular file" in err, err
