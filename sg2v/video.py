"""Frames <-> files (torch-free): mp4, gif, webp, a folder of PNG frames, npy; contact sheets; pixel scaling.

Frames are uint8 (F, H, W, 3) RGB. `write_video` / `read_video` pick the format by extension (no extension: a
folder of PNG frames). Every write is atomic (`sg2v.io.atomic_path`): a failed write leaves nothing behind.
GIF and WebP encoders merge identical consecutive frames into one longer frame; the writer records the
frame count in the file's metadata and the reader expands merged frames by duration, so round trips keep every
frame.
mp4 (H.264 through imageio-ffmpeg, the `video` extra) is lossy by default (4:2:0 chroma plays everywhere but
smears small colored shapes: score lossless files); `lossless=True` writes RGB H.264 at qp 0 (libx264rgb),
exact but playable only by ffmpeg-based players. PNG, npy, WebP (lossless) and GIF (up to 256 colors per
frame) are exact. What sg2v writes is recognisable as its own (`is_sg2v_output`: the frame-count mark in gif,
webp and mp4 files, "sg2v" as a PNG's Software text, `sg2v.safety.NPY_TRAILER` after an npy's frames, the
`sg2v.safety.MARKER` file in a folder of frame_NNNN.png files), so `sg2v-run` replaces earlier outputs and
nothing else without --force.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import Sg2vError, first_line, require, shown
from sg2v.io import atomic_path
from sg2v.safety import MARKER, NPY_TRAILER, has_marker, write_marker

VIDEO_FORMATS = (".mp4", ".gif", ".webp", ".npy", "<folder of PNG frames>")
MP4_CRF = 12  # H.264 constant rate factor: visually lossless for flat-colored frames, still small
_META = re.compile(rb"sg2v-frames=(\d+)")
_FRAME_FILE = re.compile(r"frame_\d{4,}\.png")
SOFTWARE = "sg2v"  # the Software text of the PNG images sg2v writes
MIN_FPS, MAX_FPS = 0.01, 1000.0
MAX_SHEET_BYTES = 1 << 30  # a contact sheet's pixels: 1 GiB at most


class VideoError(Sg2vError, ValueError):
    """Frames of the wrong shape or dtype, or a video file that cannot be read or written."""


def check_frames(frames: Any) -> NDArray[Any]:
    """Frames as a C-contiguous uint8 (F, H, W, 3) array, or a VideoError saying what is wrong."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        raise VideoError(f"frames have shape {a.shape}; expected (frames, height, width, 3) RGB, none empty")
    if a.dtype != np.uint8:
        raise VideoError(f"frames have dtype {a.dtype}; expected uint8 (convert model output in [-1, 1] with "
                         "sg2v.video.unit_to_frames)")
    return np.ascontiguousarray(a)


def check_fps(fps: Any) -> float:
    """`fps` as a float, or a VideoError unless it is a number in [MIN_FPS, MAX_FPS] (GIF stores a frame's
    duration in centiseconds of 16 bits, mp4 the rate as a fraction: outside this range they overflow)."""
    ok = isinstance(fps, (int, float, np.integer, np.floating)) and not isinstance(fps, (bool, np.bool_))
    if not ok or not MIN_FPS <= fps <= MAX_FPS:
        raise VideoError(f"fps {shown(fps)}: must be a number of frames per second in [{MIN_FPS:g}, "
                         f"{MAX_FPS:g}]")
    return float(fps)


def output_kind(path: str | os.PathLike[str]) -> str:
    """The format `write_video` writes to `path` ("mp4", "gif", "webp", "npy" or "png" for a folder of PNG
    frames), or a VideoError naming the extensions it knows."""
    return _kind(Path(path))


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".mp4", ".gif", ".webp", ".npy"):
        return ext[1:]
    if ext == "":
        return "png"
    raise VideoError(f"{path}: unknown video format {ext!r}; use one of {', '.join(VIDEO_FORMATS)} "
                     "(write_contact_sheet writes a single image)")


# ---------------------------------------------------------------------------------------------------- write
def write_video(path: str | os.PathLike[str], frames: Any, fps: float = 8, lossless: bool = False) -> Path:
    """Write frames (F, H, W, 3) uint8 to `path`, the format picked by its extension; returns the path.

    `lossless` only changes mp4 (see the module note); the other formats are exact already.
    """
    path = Path(path)
    a = check_frames(frames)
    check_fps(fps)
    kind = _kind(path)
    if kind == "mp4":
        ffmpeg = require("imageio_ffmpeg", "video")  # fail before creating anything
    existed = path.exists()
    try:
        with atomic_path(path) as tmp:
            if kind == "npy":
                with open(tmp, "wb") as f:
                    np.save(f, a)
                    f.write(NPY_TRAILER)  # after the data: np.load ignores it, is_sg2v_output looks for it
            elif kind == "png":
                _write_png_folder(tmp, a)
            elif kind == "mp4":
                _write_mp4(ffmpeg, tmp, a, fps, lossless)
            else:
                _write_animation(tmp, a, fps, kind)
    except VideoError as e:
        raise VideoError(f"{path}: {e}" + ("; the existing file was kept" if existed else "")) from None
    except OSError as e:  # a full disk or a vanished folder while writing: nothing was renamed onto `path`
        raise VideoError(f"cannot write {path} ({e.strerror or e})"
                         + ("; the existing file was kept" if existed else "")
                         + "; check free space and permissions") from None
    return path


def _write_png_folder(folder: Path, a: NDArray[Any]) -> None:
    from PIL import Image

    folder.mkdir()
    write_marker(folder, "frames")
    digits = max(4, len(str(len(a) - 1)))
    for i, frame in enumerate(a):
        Image.fromarray(frame).save(folder / f"frame_{i:0{digits}d}.png", format="PNG")


def _write_animation(tmp: Path, a: NDArray[Any], fps: float, kind: str) -> None:
    from PIL import Image

    ims = [Image.fromarray(f) for f in a]
    duration = 1000.0 / fps  # ms per frame
    meta = f"sg2v-frames={len(a)}".encode()
    if kind == "gif":
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=duration, loop=0,
                    comment=meta, optimize=False, disposal=1)
    else:
        ims[0].save(tmp, format="WEBP", save_all=True, append_images=ims[1:], duration=round(duration),
                    loop=0, lossless=True, quality=100, method=4, xmp=meta)


def _write_mp4(ffmpeg: Any, tmp: Path, a: NDArray[Any], fps: float, lossless: bool) -> None:
    """H.264 by imageio-ffmpeg's ffmpeg, raw RGB frames on stdin; VideoError unless ffmpeg exits 0 with a
    non-empty file (on a full disk ffmpeg fails mid-file, and its output must not replace anything)."""
    _, h, w, _ = a.shape
    if lossless:
        codec, pix_fmt, rate = "libx264rgb", "rgb24", ["-qp", "0"]
    else:
        # 4:2:0 chroma needs even sides; odd ones fall back to 4:4:4 rather than resizing the frames
        codec, pix_fmt = "libx264", "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        rate = ["-crf", str(MP4_CRF)]
    cmd = [ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-vcodec", "rawvideo",
           "-s", f"{w}x{h}", "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-",
           "-an", "-vcodec", codec, "-pix_fmt", pix_fmt, *rate, "-metadata", f"comment=sg2v-frames={len(a)}",
           "-f", "mp4", str(tmp)]
    try:
        proc = subprocess.run(cmd, input=a.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
    except OSError as e:
        raise VideoError(f"cannot start ffmpeg ({e.strerror or e}); reinstall imageio-ffmpeg") from None
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1].strip() if lines else "no message"
        raise VideoError(f"ffmpeg failed writing the mp4 (exit status {proc.returncode}: {why}); check free "
                         "space and permissions where the video goes")
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise VideoError("ffmpeg exited 0 but wrote no mp4 data; check free space where the video goes")
    with open(tmp, "rb+") as f:  # a delayed write error (a full disk) surfaces here, before the rename
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------- read
def read_video(path: str | os.PathLike[str]) -> NDArray[Any]:
    """Read frames (F, H, W, 3) uint8 back from any format `write_video` writes."""
    path = Path(path)
    kind = _kind(path)
    if not path.exists():
        raise VideoError(f"{path}: no such video; check the path")
    try:
        if kind == "npy":
            a = np.load(path, allow_pickle=False)
        elif kind == "png":
            a = _read_png_folder(path)
        elif kind == "mp4":
            a = _read_mp4(path)
        else:
            a = _read_animation(path)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, VideoError):
            raise
        raise VideoError(f"{path}: cannot read as {kind} ({e}); is it a complete {kind} file?") from None
    try:
        return check_frames(a)
    except VideoError as e:
        raise VideoError(f"{path}: {e}") from None


def _read_png_folder(folder: Path) -> NDArray[Any]:
    from PIL import Image

    if not folder.is_dir():
        raise VideoError(f"{folder}: a path without extension is read as a folder of PNG frames, and this is "
                         "not a folder; give the video's extension")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise VideoError(f"{folder}: no .png frames in this folder")
    frames = []
    for f in files:
        with Image.open(f) as im:
            frames.append(np.asarray(im.convert("RGB")))
    if len({fr.shape for fr in frames}) != 1:
        raise VideoError(f"{folder}: the PNG frames differ in size; all frames must be the same size")
    return np.stack(frames)


def _read_animation(path: Path) -> NDArray[Any]:
    """All frames of a GIF / animated WebP, merged frames expanded using the sg2v frame count if present."""
    from PIL import Image

    with Image.open(path) as im:
        meta = im.info.get("comment", b"") or im.info.get("xmp", b"")
        frames, durations = [], []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            im.load()  # WebP sets the frame's duration on load
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(float(im.info.get("duration") or 0.0))
    m = _META.search(meta if isinstance(meta, bytes) else str(meta).encode())
    if m is None or len(frames) == int(m.group(1)):
        return np.stack(frames)
    return np.repeat(np.stack(frames), _expand_counts(durations, int(m.group(1))), axis=0)


def _expand_counts(durations: list[float], total: int) -> NDArray[np.int64]:
    """How many original frames each stored frame stands for, given their durations and the original count.

    The writer gave every frame the same duration, so stored durations are near multiples of their mean;
    rounding error (GIF keeps centiseconds) is settled by largest remainder so the counts sum to `total`.
    """
    d = np.asarray(durations, dtype=np.float64)
    if len(d) == 1:  # every frame was the same; the encoder may have written a still image without a duration
        return np.array([total])
    if (d <= 0).any() or len(d) > total:
        raise VideoError(f"cannot recover {total} frames from {len(d)} stored frames with durations "
                         f"{d.tolist()}; the file was not written by sg2v.video or was edited")
    exact = d / d.sum() * total  # (n,)
    counts: NDArray[np.int64] = np.maximum(np.floor(exact).astype(np.int64), 1)
    for i in np.argsort(-(exact - counts))[: max(total - counts.sum(), 0)]:
        counts[i] += 1
    if counts.sum() != total:
        raise VideoError(f"cannot recover {total} frames from durations {d.tolist()}; the file was not "
                         "written by sg2v.video or was edited")
    return counts


def _read_mp4(path: Path) -> NDArray[Any]:
    ffmpeg = require("imageio_ffmpeg", "video")
    gen = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in gen]
    except (RuntimeError, StopIteration) as e:
        why = first_line(e)
        raise VideoError(f"{path}: ffmpeg cannot decode it ({why})") from None
    finally:
        gen.close()
    if not frames:
        raise VideoError(f"{path}: the mp4 holds no frames")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------- sheets
def contact_sheet(frames: Any, cols: int | None = None, pad: int = 2, scale: int = 1,
                  pad_value: int = 48) -> NDArray[Any]:
    """Frames row-major in a grid: (rows*(H*s+pad)+pad, cols*(W*s+pad)+pad, 3) uint8.

    `cols` defaults to ceil(sqrt(F)); `pad` px of `pad_value` lie between and around the cells; each frame is
    upscaled `scale` x by pixel repetition; cells past the last frame are `pad_value`.
    """
    a = check_frames(frames)
    f, h, w, _ = a.shape
    if cols is None:
        cols = math.ceil(math.sqrt(f))
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (cols, scale, pad))
    if not ints or cols < 1 or scale < 1 or pad < 0:
        raise VideoError(f"contact sheet needs integers cols >= 1, scale >= 1, pad >= 0; got "
                         f"cols={shown(cols)}, scale={shown(scale)}, pad={shown(pad)}")
    rows = -(-f // cols)  # ceil(f / cols) in integers: cols may be huge
    nbytes = (rows * (h * scale + pad) + pad) * (cols * (w * scale + pad) + pad) * 3
    if nbytes > MAX_SHEET_BYTES:
        raise VideoError(f"a contact sheet of {shown(rows)} x {shown(cols)} frames of {shown(h * scale)} x "
                         f"{shown(w * scale)} pixels would take {shown(nbytes)} bytes, more than "
                         f"{MAX_SHEET_BYTES}; lower cols or scale")
    if scale > 1:
        a = a.repeat(scale, 1).repeat(scale, 2)  # (F, H*s, W*s, 3)
    hs, ws = h * scale, w * scale
    cells = np.full((rows * cols, hs + pad, ws + pad, 3), pad_value, dtype=np.uint8)  # each cell: frame + gap
    cells[:f, pad:, pad:] = a
    grid = cells.reshape(rows, cols, hs + pad, ws + pad, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (hs + pad), cols * (ws + pad), 3)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=pad_value)


# Distinct, readable on photos and on the shapes world: one color per object index (cycled).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255))
BOX_SHEET_CELL = 256  # box sheets upscale frames (pixel repetition) until the longer side is at least this


def box_sheet(frames: Any, boxes: Any, labels: list[str], visible: Any = None, min_cell: int = BOX_SHEET_CELL,
              cols: int | None = None, pad: int = 4) -> NDArray[Any]:
    """A contact sheet with each object's box drawn and labelled on every frame where it is visible.

    frames (F, H, W, 3) uint8; boxes (n, F, 4) [x0, y0, x1, y1] in [0, 1] of the frame (x right, y down);
    labels: n strings (e.g. "0 red circle"); visible (n, F) bool or None (every box drawn). Frames are
    upscaled by pixel repetition until their longer side is at least `min_cell` px, so labels are readable
    on 64 x 64 video; object k is drawn in PALETTE[k] (cycled), its label on a black plate at the box's
    top-left corner.
    """
    from PIL import Image, ImageDraw, ImageFont

    a = check_frames(frames)
    f, h, w, _ = a.shape
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 3 or b.shape[1:] != (f, 4) or len(labels) != b.shape[0]:
        raise VideoError(f"box sheet: boxes of shape {b.shape} and {len(labels)} labels for {f} frames; give "
                         "(n, F, 4) boxes and n labels")
    shown = np.ones(b.shape[:2], bool) if visible is None else np.asarray(visible, bool)  # (n, F)
    scale = max(1, math.ceil(min_cell / max(h, w)))
    font = ImageFont.load_default()
    drawn = []
    for t in range(f):
        im = Image.fromarray(a[t]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(im)
        for k, label in enumerate(labels):
            if not shown[k, t]:
                continue
            x0, y0, x1, y1 = (b[k, t] * [w * scale, h * scale, w * scale, h * scale]).tolist()
            color = PALETTE[k % len(PALETTE)]
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=2)
            tx, ty = x0 + 2, y0 + 1
            left, top, right, bottom = draw.textbbox((tx, ty), label, font=font)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
            draw.text((tx, ty), label, fill=color, font=font)
        drawn.append(np.asarray(im))
    return contact_sheet(np.stack(drawn), cols=cols, pad=pad)


def write_image(path: str | os.PathLike[str], image: Any) -> Path:
    """Write one uint8 (H, W, 3) image, format from the extension (PNG recommended), atomically."""
    from PIL import Image

    path = Path(path)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise VideoError(f"image has shape {img.shape} dtype {img.dtype}; expected uint8 (H, W, 3)")
    fmt = image_format(path)
    extra: dict[str, Any] = {}
    if fmt == "PNG":  # a text chunk that says sg2v wrote it (sg2v-run replaces such files without --force)
        from PIL.PngImagePlugin import PngInfo

        extra["pnginfo"] = PngInfo()
        extra["pnginfo"].add_text("Software", SOFTWARE)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format=fmt, **extra)
    return path


def image_format(path: str | os.PathLike[str]) -> str:
    """PIL's format name for an image path's extension, or a VideoError naming the extension to use."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or path.suffix.lower() in (".mp4", ".npy"):
        raise VideoError(f"{path}: unknown image extension {path.suffix!r}; use .png")
    if fmt not in _WRITABLE:
        import io

        try:  # Pillow may list a writer that takes no RGB image (BLP, ...): try one pixel first
            Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
            _WRITABLE.add(fmt)
        except (KeyError, OSError, ValueError) as e:
            raise VideoError(f"{path}: Pillow cannot write RGB {path.suffix!r} ({fmt}) images "
                             f"({first_line(e)}); use .png") from None
    return fmt


_WRITABLE: set[str] = set()  # image formats Pillow wrote an RGB pixel in, this process


def is_sg2v_output(path: str | os.PathLike[str], kind: str) -> bool:
    """Whether `path` holds what sg2v writes for `kind` ("mp4", "gif", "webp", "npy", "png": a folder of PNG
    frames, or "image": a contact sheet), so replacing it loses nothing the user made: a frame folder holds
    only frame_NNNN.png files; an npy is a uint8 (F, H, W, 3) array; gif, webp and mp4 files carry the
    sg2v frame-count mark and PNG images sg2v's Software text. Symlinks are not outputs."""
    path = Path(path)
    try:
        if path.is_symlink():
            return False
        if kind == "png":
            return has_marker(path) and all(
                e.name == MARKER or _FRAME_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                for e in os.scandir(path))
        if not path.is_file():
            return False
        if kind == "npy":
            return _is_npy_video(path)
        if kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                return bool(im.info.get("Software") == SOFTWARE)
        return kind in ("gif", "webp", "mp4") and _has_mark(path)
    except (OSError, ValueError, SyntaxError):
        return False


def _is_npy_video(path: Path) -> bool:
    """Whether `path` is a .npy video sg2v wrote: uint8 (F, H, W, 3), its data then `NPY_TRAILER`, nothing
    more."""
    from sg2v.io import _npy_header
    from sg2v.safety import open_input

    with open_input(path) as f:
        shape, _, dtype = _npy_header(f, str(path))
        end = f.tell() + math.prod(shape) * dtype.itemsize
        size = os.fstat(f.fileno()).st_size
        if not (dtype == np.uint8 and len(shape) == 4 and shape[-1] == 3) or size != end + len(NPY_TRAILER):
            return False
        f.seek(end)
        return f.read(len(NPY_TRAILER)) == NPY_TRAILER


def _has_mark(path: Path, limit: int = 64 << 20) -> bool:
    """Whether the file holds the sg2v frame-count mark (searched in its first and last `limit` bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= 2 * limit:
            return _META.search(f.read()) is not None
        head = f.read(limit)
        f.seek(size - limit)
        return _META.search(head) is not None or _META.search(f.read()) is not None


def write_contact_sheet(path: str | os.PathLike[str], frames: Any, cols: int | None = None, pad: int = 2,
                        scale: int = 1) -> Path:
    """`contact_sheet` written as an image (PNG by extension), atomically."""
    return write_image(path, contact_sheet(frames, cols, pad, scale))


# ---------------------------------------------------------------------------------------------------- scaling
def _astype(x: Any, name: str) -> Any:
    if hasattr(x, "astype"):  # numpy, CuPy
        return x.astype(name)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.to(getattr(torch, name))
    return np.asarray(x).astype(name)


def frames_to_unit(u8: Any) -> Any:
    """uint8 frames -> float32 in [-1, 1]: x = u8 / 127.5 - 1 (numpy, CuPy or torch in, same kind out)."""
    return _astype(u8, "float32") / 127.5 - 1.0


def unit_to_frames(x: Any) -> Any:
    """[-1, 1] floats -> uint8 frames: clip(round((x + 1) * 127.5), 0, 255) (numpy, CuPy or torch)."""
    return _astype(((x + 1.0) * 127.5).round().clip(0, 255), "uint8")
