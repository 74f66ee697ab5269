"""Atomic file and folder writes (torch-free): write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

MAX_ARRAY_BYTES = 1 << 30  # an array read from an untrusted .npy / .npz member: 1 GiB at most


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, on error remove it.

    Works for files and folders: the caller creates whatever it likes at the yielded path. A file target is
    replaced by one atomic rename; an existing folder by an atomic exchange of the two names where the
    kernel offers one (Linux renameat2 RENAME_EXCHANGE), else by rename-aside, rename-in, remove-aside. The
    temporary and set-aside names carry this host and process id, so a later write to the same target
    removes what a killed writer left (`clean_stale`) and puts a set-aside folder back if the kill came
    between the two renames.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {parent} is not writable; choose another output path")
    clean_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_tag(target, os.getpid()) + "-", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the caller decides whether it is a file or a folder
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary path for {target}")
        fsync_tree(tmp)  # every format's bytes on disk before the rename makes them the output
        folder = tmp.is_dir() or (target.is_dir() and not target.is_symlink())
        if folder and (target.exists() or target.is_symlink()):  # a folder replaced, or replacing one
            if exchange_paths(tmp, target):
                _remove(tmp)  # the old folder, now under the temporary name
            else:
                aside = parent / f"{_tag(target, os.getpid())}.old"
                os.replace(target, aside)
                os.replace(tmp, target)
                _remove(aside)
        else:
            os.replace(tmp, target)
        _fsync_dir(parent)
    except BaseException:
        _remove(tmp)
        raise


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every file and folder under a folder (symlinks are not followed)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            for name in files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    _fsync_file(p)
            _fsync_dir(Path(root))
    elif not path.is_symlink():
        _fsync_file(path)


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """fsync a folder so a rename in it is on disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


_NAME_PREFIX = 100  # characters of the target's name kept in temporary names (NAME_MAX is 255)


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _tag(target: Path, pid: int) -> str:
    """The start of a temporary name for `target` written by process `pid` of this host."""
    digest = hashlib.sha256(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f".{target.name[:_NAME_PREFIX]}.sg2v-{_host()}-{digest}-{pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid at all
        return True
    return True


def clean_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders that killed writers (dead processes of this host) left
    beside `target`; a folder they had set aside while the target was missing is renamed back onto it.
    Returns the paths removed or restored."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    head = _tag(target, 0)[:-1]  # up to the pid
    pattern = re.compile(re.escape(head) + r"(\d{1,10})(?:-[A-Za-z0-9_]+\.tmp|\.old)")
    done: list[Path] = []
    try:
        names = [e.name for e in os.scandir(parent) if e.name.startswith(head)]
    except OSError:
        return done
    for name in sorted(names, key=lambda n: not n.endswith(".old")):  # set-aside folders first
        m = pattern.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = parent / name
        if name.endswith(".old") and not target.exists() and not target.is_symlink():
            with contextlib.suppress(OSError):
                os.replace(path, target)
                done.append(path)
                continue
        _remove(path)
        done.append(path)
    return done


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the names `a` and `b` in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where
    the C library, kernel or file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # no such call or flag here
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `target` through a temporary file and an fsync'd rename."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        with contextlib.suppress(OSError):
            p.unlink()


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran order, dtype) from a .npy header; ValueError unless it is a plain numeric array."""
    fmt: Any = np.lib.format  # numpy's stubs leave its functions untyped
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"{where}: .npy format version {version} is not 1.0 - 3.0")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    try:
        got_shape, fortran, got_dtype = read_header(f, max_header_size=10_000)
    except TypeError:  # numpy < 1.24 has no max_header_size (and reads any header length)
        got_shape, fortran, got_dtype = read_header(f)
    if got_dtype.hasobject or got_dtype.fields is not None or got_dtype.subdtype is not None:
        raise ValueError(f"{where}: dtype {got_dtype} is not a plain numeric type")
    return tuple(got_shape), bool(fortran), got_dtype


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) a .npy file declares, read without loading its data."""
    from sg2v.safety import open_input

    with open_input(path) as f:
        shape, _, dtype = _npy_header(f, str(path))
    return shape, dtype


def _read_npy(f: IO[bytes], where: str, dtype: Any = None, shape: tuple[int, ...] | None = None,
              max_bytes: int = MAX_ARRAY_BYTES) -> NDArray[Any]:
    """One .npy array from `f`, its header checked (no pickles, the dtype, the shape or a size bound) before
    anything of its size is allocated; ValueError naming the problem."""
    got_shape, fortran, got_dtype = _npy_header(f, where)
    if dtype is not None and got_dtype != np.dtype(dtype):
        raise ValueError(f"{where}: dtype {got_dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise ValueError(f"{where}: shape {tuple(got_shape)}, expected {tuple(shape)}")
    nbytes = math.prod(got_shape) * got_dtype.itemsize
    if nbytes > max_bytes:
        raise ValueError(f"{where}: its header declares {tuple(got_shape)} {got_dtype} ({nbytes} bytes), "
                         f"more than the {max_bytes} allowed")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{where}: {len(data)} data bytes, its header declares {nbytes} (truncated)")
    arr = np.frombuffer(data, dtype=got_dtype).reshape(got_shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr)


def load_npy_checked(path: str | os.PathLike[str], dtype: Any = None, shape: tuple[int, ...] | None = None,
                     max_bytes: int = MAX_ARRAY_BYTES) -> NDArray[Any]:
    """`np.load(path, allow_pickle=False)` for untrusted files: header checked before allocating."""
    from sg2v.safety import open_input

    with open_input(path) as f:
        return _read_npy(f, str(path), dtype, shape, max_bytes)


def load_npz_checked(path: str | os.PathLike[str], max_bytes: int = MAX_ARRAY_BYTES,
                     max_members: int = 10_000) -> dict[str, NDArray[Any]]:
    """Every array of an untrusted .npz: member count, each header and the total size bounded first."""
    out: dict[str, NDArray[Any]] = {}
    total = 0
    from sg2v.safety import open_input

    with open_input(path) as raw, zipfile.ZipFile(raw) as z:
        members = z.infolist()
        if len(members) > max_members:
            raise ValueError(f"{path}: {len(members)} members, more than {max_members}")
        for info in members:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename!r} is not a .npy array")
            total += info.file_size  # the uncompressed size the archive declares
            if total > max_bytes:
                raise ValueError(f"{path}: its arrays declare more than {max_bytes} bytes")
            with z.open(info) as f:
                out[info.filename[:-4]] = _read_npy(f, f"{path}:{info.filename}", max_bytes=info.file_size)
    return out
