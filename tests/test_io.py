"""Atomic writes (sg2v.io): a folder target is replaced in one step where the kernel can, and what a killed
writer leaves behind (temporary files, a folder set aside between two renames) is cleaned up or put back by
the next write to the same target. Kills are real: a child process SIGKILLs itself at the chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sg2v import io as sio
from sg2v.video import read_video, write_video

REPO = Path(__file__).resolve().parents[1]

# The child writes `frames` (seeded) as a PNG folder at `target`, dying by SIGKILL at `moment`:
#   write    - after two frames of the new folder are on disk (the temporary folder is left)
#   between  - with the kernel's exchange unavailable, after the old folder was renamed aside
#   exchange - right after the atomic exchange, before the old folder (now under the temp name) is removed
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import sg2v.io as sio
    import sg2v.video as video
    from PIL import Image

    target, seed, moment = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    frames = np.random.default_rng(seed).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if moment == "write":
        real, n = Image.Image.save, [0]
        def save(self, *a, **k):
            real(self, *a, **k)
            n[0] += 1
            if n[0] == 2:
                die()
        Image.Image.save = save
    elif moment == "between":
        sio.exchange_paths = lambda a, b: False
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".old"):
                die()
        sio.os.replace = replace
    elif moment == "exchange":
        real_exchange = sio.exchange_paths
        def exchange(a, b):
            assert real_exchange(a, b)
            die()
        sio.exchange_paths = exchange
    video.write_video(target, frames)
""")


def _frames(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)


def _killed_writer(target: Path, seed: int, moment: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(target), str(seed), moment], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


def _leftovers(folder: Path, target: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != target.name)


def _exchange_works(folder: Path) -> bool:
    a, b = folder / "xa", folder / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return sio.exchange_paths(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def test_a_png_folder_is_replaced_without_a_moment_of_absence(tmp_path, monkeypatch, test_seed):
    if not _exchange_works(tmp_path):
        pytest.skip("no renameat2 RENAME_EXCHANGE on this kernel or file system (fallback: tested below)")
    target = tmp_path / "frames"
    write_video(target, _frames(test_seed))
    seen = []
    real_exchange, real_replace = sio.exchange_paths, os.replace

    def exchange(a, b):
        seen.append(("exchange", Path(b).is_dir()))
        ok = real_exchange(a, b)
        seen.append(("exchanged", Path(b).is_dir()))
        return ok

    def replace(src, dst):
        seen.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(sio, "exchange_paths", exchange)
    monkeypatch.setattr(sio.os, "replace", replace)
    new = _frames(test_seed + 1)
    write_video(target, new)
    assert seen == [("exchange", True), ("exchanged", True)]  # one atomic step, no rename pair
    np.testing.assert_array_equal(read_video(target), new)
    assert _leftovers(tmp_path, target) == []


def test_a_kill_between_the_two_renames_is_undone_by_the_next_write(tmp_path, test_seed):
    """Without the exchange, replacing a folder is rename-aside then rename-in; a writer killed in between
    leaves no target, only the set-aside folder, which the next write to that target puts back first."""
    target = tmp_path / "frames"
    old = _frames(test_seed)
    write_video(target, old)
    _killed_writer(target, test_seed + 1, "between")
    assert not target.exists()
    aside = _leftovers(tmp_path, target)
    assert sorted(Path(n).suffix for n in aside) == [".old", ".tmp"], aside  # old frames; new, complete
    restored = sio.clean_stale(target)
    assert len(restored) == 2
    np.testing.assert_array_equal(read_video(target), old)  # the user's folder is back, intact
    assert _leftovers(tmp_path, target) == []


def test_a_kill_after_the_exchange_leaves_the_new_folder_and_garbage_the_next_write_removes(tmp_path,
                                                                                           test_seed):
    if not _exchange_works(tmp_path):
        pytest.skip("this kernel or file system has no renameat2 RENAME_EXCHANGE")
    target = tmp_path / "frames"
    write_video(target, _frames(test_seed))
    _killed_writer(target, test_seed + 1, "exchange")
    np.testing.assert_array_equal(read_video(target), _frames(test_seed + 1))
    assert len(_leftovers(tmp_path, target)) == 1  # the old frames under the dead writer's temp name
    write_video(target, _frames(test_seed + 2))
    np.testing.assert_array_equal(read_video(target), _frames(test_seed + 2))
    assert _leftovers(tmp_path, target) == []


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path, test_seed):
    target = tmp_path / "frames"
    _killed_writer(target, test_seed, "write")
    left = _leftovers(tmp_path, target)
    assert not target.exists() and len(left) == 1 and left[0].endswith(".tmp")
    assert len(list((tmp_path / left[0]).iterdir())) == 3  # the marker and two frames, before the kill
    write_video(target, _frames(test_seed))
    assert _leftovers(tmp_path, target) == []
    np.testing.assert_array_equal(read_video(target), _frames(test_seed))


def test_live_writers_other_hosts_and_other_targets_keep_their_temporary_files(tmp_path):
    """Only this host's dead processes' leftovers for this very target are touched: a live process's write
    in progress, another machine's (a shared file system) and another target's stay."""
    target = tmp_path / "v.npy"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / (sio._tag(target, sleeper.pid) + "-abc123.tmp")
        other_host = tmp_path / (sio._tag(target, 999_999_999).replace(sio._host(), "0badc0de") + "-x.tmp")
        other_target = tmp_path / (sio._tag(tmp_path / "w.npy", _dead_pid()) + "-x.tmp")
        dead = tmp_path / (sio._tag(target, _dead_pid()) + "-x.tmp")
        for p in (live, other_host, other_target, dead):
            p.write_bytes(b"partial")
        sio.atomic_write_bytes(target, b"done")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            p.name for p in (live, other_host, other_target, target))
    finally:
        sleeper.kill()
        sleeper.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_checkpoint_temporaries_of_a_killed_run_are_removed(tmp_path):
    """A run killed while writing last.pt leaves its temporary file; the next checkpoint write removes it."""
    target = tmp_path / "last.pt"
    dead = tmp_path / (sio._tag(target, _dead_pid()) + "-k1.tmp")
    dead.write_bytes(os.urandom(1024))
    sio.atomic_write_bytes(target, b"checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_file_and_a_folder_replace_each_other_in_one_step(tmp_path, rng):
    """What `sg2v-run --force` asks for: a file where a folder of frames goes, a folder where a file goes."""
    frames = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    target = tmp_path / "frames"
    target.write_bytes(b"a file in the way")
    write_video(target, frames)
    np.testing.assert_array_equal(read_video(target), frames)
    folder = tmp_path / "v.npy"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.txt").write_text("a folder in the way")
    write_video(folder, frames)
    np.testing.assert_array_equal(np.load(folder), frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "v.npy"]
