"""Input reading and output safety for every sg2v command (torch-free).

Reading: `open_input` / `read_input` take regular files only (a FIFO, device, socket or folder is refused
without opening it for long or blocking), and read at most a bound of bytes actually read (never trusting the
size a file reports). Errors are `OSError`s naming the path, so each caller's one-line wrapper shows them.

Writing: `check_outputs` runs before a command does its work. An output may not be, hold or (for a folder
input) lie inside any input the command reads; `--force` does not change that. An existing output is replaced
only when it is this command's earlier output or with `--force`. sg2v marks what it writes: a folder holds a
`.sg2v-output` file (`MARKER`), a JSON file has a top-level `"sg2v_output"` key (`JSON_MARK`), a Markdown
table starts with `TABLE_MARK`, PNG images carry sg2v's Software text, gif/webp/mp4 files the frame-count
mark, and a .npy video ends with `NPY_TRAILER` after its data. Writes go through `sg2v.io.atomic_path`
(temporary name, fsync, rename). `describe_os_error` turns an OS error into one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from sg2v.errors import Sg2vError

MARKER = ".sg2v-output"  # the file in every folder an sg2v command writes
JSON_MARK = "sg2v_output"  # the top-level key of every JSON report an sg2v command writes
TABLE_MARK = "<!-- sg2v output -->"  # the first line of every Markdown table an sg2v command writes
NPY_TRAILER = b"\n#sg2v-output\n"  # the bytes after the array data of every .npy video sg2v writes
SYSTEM_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))  # never a place for outputs (Linux)
MAX_INPUT_BYTES = 64 << 20  # a user-named JSON file (graph, layout, vocabulary, manifest): 64 MiB at most


class OutputError(Sg2vError):
    """An output path a command must not write (an input, something it did not write, a device) (exit 2)."""

    exit_code = 2


class WriteError(Sg2vError):
    """The operating system refused to create or write an output (exit 1)."""


# ------------------------------------------------------------------------------------------------ messages
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(32), 127, 0x85]}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028",
                  0x2029: "\\u2029"})


def one_line(text: object) -> str:
    """`text` with line breaks and other control characters escaped, so a message stays one line."""
    return str(text).translate(_CONTROLS)


def shown_path(path: object) -> str:
    """A path for a one-line message: control characters escaped, undecodable bytes as \\x.."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return one_line(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


_HINTS = {
    errno.ENOSPC: "the disk is full; free space or choose another output folder",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EIO: "an input/output error from the device; check the disk",
    errno.EXDEV: "a rename across file systems; keep the output on one file system",
    errno.EBUSY: "the path is busy (a mount point or in use); choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder, not a file; choose another path",
    errno.EACCES: "permission denied; check the path's permissions",
    errno.EPERM: "operation not permitted; check the path's permissions",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop); choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EFBIG: "the file is too large",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OS error: the path(s) it names, what happened and what to do."""
    where = " -> ".join(shown_path(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno or -1)
    text = f"{where}: {what}" if where else what
    return one_line(f"{text}; {hint}" if hint and hint.split(";")[0] != what.lower() else text)


def safe_stdio() -> None:
    """Make stdout and stderr print any path, whatever their encoding (PYTHONIOENCODING=ascii)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            # a stream other than a TextIOWrapper raises AttributeError here, suppressed
            cast(io.TextIOWrapper, stream).reconfigure(errors="backslashreplace")


# ------------------------------------------------------------------------------------------------- reading
def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: Any, mode: int) -> OSError:
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    return OSError(code, f"{_kind_of(mode)}, not a regular file; give a file", os.fspath(path))


def open_input(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a user-named file for reading, binary: a regular file only (FIFOs, devices, sockets and
    folders are refused before anything could block); OSError naming the path otherwise."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode  # the file opened, should the name have been swapped since the stat
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a user-named regular file, at most `limit` of them (counted as read: the size a file
    reports is not trusted); OSError (EFBIG) naming the path when it holds more."""
    with open_input(path) as f:
        hint = os.fstat(f.fileno()).st_size  # only sizes the first read: reading stops at the real end
        data = f.read(min(hint, limit) + 1)
        if len(data) <= limit and len(data) == min(hint, limit) + 1:  # more than it said: read on, bounded
            parts = [data]
            total = len(data)
            while total <= limit and (block := f.read(min(1 << 24, limit + 1 - total))):
                parts.append(block)
                total += len(block)
            data = b"".join(parts)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than the {limit} bytes such a file may have", os.fspath(path))
    return data


# ------------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class Output:
    """One path a command writes: its flag, whether it is a folder, and how to recognise an earlier one."""

    flag: str
    path: Path
    folder: bool = False
    ours: Callable[[Path], bool] | None = None


@dataclass(frozen=True)
class Input:
    """One path a command reads, said in words; a folder input may not hold an output either."""

    path: Path
    what: str
    folder: bool = False


def inputs(*named: tuple[Any, str] | tuple[Any, str, bool]) -> list[Input]:
    """`Input`s from (path, what[, folder]) tuples, skipping empty paths."""
    out = []
    for item in named:
        if item[0] is None or item[0] == "":
            continue
        out.append(Input(Path(item[0]), item[1], bool(item[2]) if len(item) > 2 else False))
    return out


def resolved(path: Path, flag: str = "") -> Path:
    """`path` made absolute with symlinks followed; OutputError for a symlink loop."""
    try:
        return Path(os.path.abspath(path)).resolve()
    except (RuntimeError, OSError) as e:  # Python < 3.13: RuntimeError on a loop; later: OSError ELOOP
        if isinstance(e, OSError) and e.errno not in (errno.ELOOP, None):
            raise
        raise OutputError(f"{flag} {shown_path(path)}: a symlink loop; choose another path".strip()) from None


def has_marker(folder: Path) -> bool:
    """Whether `folder` (not a symlink) holds sg2v's output marker file."""
    try:
        return (not folder.is_symlink() and folder.is_dir()
                and stat.S_ISREG(os.lstat(folder / MARKER).st_mode))
    except OSError:
        return False


def write_marker(folder: Path, what: str) -> None:
    """Write the output marker into a folder being written (fsync'd by `atomic_path`)."""
    (folder / MARKER).write_text(json.dumps({JSON_MARK: what}) + "\n", encoding="utf-8")


def ensure_marker(folder: Path, what: str) -> None:
    """Write the output marker into a folder a command writes in place (a training run), if missing."""
    from sg2v.io import atomic_write_text

    if not has_marker(folder):
        atomic_write_text(folder / MARKER, json.dumps({JSON_MARK: what}) + "\n")


def is_marked_json(path: Path, limit: int = MAX_INPUT_BYTES) -> bool:
    """Whether `path` is a JSON object with sg2v's `JSON_MARK` key (a report an sg2v command wrote)."""
    try:
        if path.is_symlink():
            return False
        data = json.loads(read_input(path, limit).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get(JSON_MARK), str)


def is_marked_table(path: Path) -> bool:
    """Whether `path` is a Markdown table an sg2v command wrote (its first line is `TABLE_MARK`)."""
    try:
        if path.is_symlink():
            return False
        with open_input(path) as f:
            return f.read(len(TABLE_MARK) + 1).decode("utf-8", "replace").rstrip("\r\n") == TABLE_MARK
    except OSError:
        return False


def check_outputs(outputs: Sequence[Output], reads: Sequence[Input], force: bool = False,
                  create_parents: bool = True, force_flag: str | None = "--force") -> None:
    """Before a command works: each output's path is usable and safe, else one line.

    OutputError (exit 2): an output that is, holds or lies inside a folder input of what the command reads
    (with or without --force), the root folder, a symlink loop, a device/FIFO/socket, two outputs on one
    path, or an existing path that is not this command's earlier output (without --force), a file where a
    folder goes or a folder where a file goes. WriteError (exit 1): its folder cannot be created or written
    (read-only, no permission, a file in the way). Missing parent folders are created.
    """
    sources = [(resolved(i.path, "input"), i) for i in reads]
    seen: dict[Path, str] = {}
    for out in outputs:
        name = f"{out.flag} {shown_path(out.path)}"
        where = resolved(out.path, out.flag)
        if where == Path(where.anchor) or str(out.path).strip() == "":
            raise OutputError(f"{name}: is the root folder; choose a path for the output")
        shm = Path("/dev/shm") in where.parents  # a tmpfs meant for files
        system = next((d for d in SYSTEM_FOLDERS if (where == d or d in where.parents) and not shm), None)
        if system is not None:
            raise OutputError(f"{name}: lies in {system}, the system's device / kernel folder; choose a path "
                              "for the output")
        if where in seen:
            raise OutputError(f"{name}: {seen[where]} writes there too; give each output its own path")
        seen[where] = out.flag
        for src, inp in sources:
            if where == src or where in src.parents:
                raise OutputError(f"{name}: would replace {inp.what} ({shown_path(inp.path)}); choose "
                                  "another path (--force never replaces an input)")
            if inp.folder and src in where.parents:
                raise OutputError(f"{name}: lies inside {inp.what} ({shown_path(inp.path)}); write outputs "
                                  "elsewhere")
        _check_existing(out, name, force, force_flag)
        _check_parent(out, name, create_parents)


def _check_existing(out: Output, name: str, force: bool, force_flag: str | None) -> None:
    try:
        st = os.lstat(out.path)
    except (FileNotFoundError, NotADirectoryError):  # a missing folder or a file on the way: _check_parent
        return
    except OSError as e:
        raise WriteError(f"{name}: {describe_os_error(e)}") from None
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(out.path).st_mode
        except OSError:  # a dangling link: replaced only with --force
            mode = stat.S_IFLNK
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise OutputError(f"{name}: is {_kind_of(mode)}; sg2v writes regular files and folders only, "
                          "choose another path")
    if out.ours is not None and out.ours(out.path):
        return
    if force:
        return
    is_dir = stat.S_ISDIR(mode)
    fix = f"pass {force_flag} to replace it, or choose another path" if force_flag else "choose another path"
    if out.folder and not is_dir:
        raise OutputError(f"{name} exists and is a file, and a folder is written here; {fix}")
    what = "a folder" if is_dir else "a file"
    raise OutputError(f"{name} exists and is {what} that is not an earlier sg2v output; {fix}")


def _check_parent(out: Output, name: str, create: bool) -> None:
    parent = Path(os.path.abspath(out.path)).parent
    try:
        if create:
            parent.mkdir(parents=True, exist_ok=True)
        elif not parent.is_dir():
            raise WriteError(f"{name}: its folder {shown_path(parent)} does not exist; create it first")
    except WriteError:
        raise
    except (FileExistsError, NotADirectoryError):
        raise WriteError(f"{name}: cannot create output folder {shown_path(parent)} (a file is in the way, "
                         "not a folder); choose another path") from None
    except OSError as e:
        raise WriteError(f"{name}: cannot create output folder {shown_path(parent)} "
                         f"({describe_os_error(e)})") from None
    if not os.access(parent, os.W_OK | os.X_OK):  # no probe file: nothing is created in /dev or elsewhere
        code = errno.EACCES
        with contextlib.suppress(OSError, AttributeError):
            if os.statvfs(parent).f_flag & os.ST_RDONLY:
                code = errno.EROFS
        raise WriteError(f"{name}: cannot write to output folder {shown_path(parent)} ({os.strerror(code)}); "
                         "choose another path")


@contextlib.contextmanager
def output_lock(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on an output folder a command writes in place (a training run); a second
    command on the same folder gets one line instead of interleaving its writes."""
    path = folder / ".sg2v-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{flag} {shown_path(folder)}: another sg2v command is writing there; wait "
                                  "for it to finish or choose another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


RUN_CHECKPOINTS = ("last.pt", "pretrain.pt")  # what a training run folder of an sg2v without markers holds


def is_run_folder(path: Path) -> bool:
    """Whether `path` can take a training run in place: marked by sg2v, empty, or a run folder written
    before markers existed (it holds a run checkpoint, which resuming validates before writing)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        names = set(os.listdir(path))
    except OSError:
        return False
    return MARKER in names and has_marker(path) or not names or any(
        n in names and (path / n).is_file() for n in RUN_CHECKPOINTS)


@contextlib.contextmanager
def run_folder(out: Path, reads: Sequence[Input], what: str, flag: str = "--out") -> Iterator[Path]:
    """A training run's output folder, written in place: checked (`check_outputs`: never an input, the root,
    a file, or a folder of other things), created, locked against a second command, and marked."""
    out = Path(out)
    check_outputs([Output(flag, out, folder=True, ours=is_run_folder)], reads, force_flag=None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{flag} {shown_path(out)}: cannot create the folder ({describe_os_error(e)})"
                         ) from None
    with output_lock(out, flag):
        ensure_marker(out, what)
        yield out


def write_json_report(path: str | os.PathLike[str], writer: str, report: dict[str, Any],
                      reads: Sequence[Input] = (), flag: str = "--json") -> None:
    """Write a benchmark's JSON report through the output rules: never an input or inside a folder input,
    an existing file replaced only when it is an sg2v report (its `JSON_MARK` key); atomic. `writer` names
    the tool in the mark."""
    from sg2v.io import atomic_write_text

    check_json_report(path, reads, flag)
    atomic_write_text(Path(path), json.dumps({JSON_MARK: writer, **report}, indent=1) + "\n")


def check_json_report(path: str | os.PathLike[str], reads: Sequence[Input] = (),
                      flag: str = "--json") -> None:
    """`write_json_report`'s rules, checked before the work (OutputError: one line, exit 2)."""
    check_outputs([Output(flag, Path(path), ours=is_marked_json)], reads, force_flag=None)
