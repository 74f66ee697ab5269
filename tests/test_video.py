"""Video IO: round trips, atomic writes, contact-sheet layout, pixel scaling."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from sg2v.errors import MissingDependencyError
from sg2v.shapes import ShapesWorld
from sg2v.video import (
    VideoError,
    contact_sheet,
    frames_to_unit,
    read_video,
    unit_to_frames,
    write_contact_sheet,
    write_video,
)

HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None
needs_ffmpeg = pytest.mark.skipif(not HAS_FFMPEG,
                                  reason="imageio-ffmpeg not installed (pip install 'sg2v[video]')")


def _frames(rng, f=6, h=13, w=17, colors=None) -> np.ndarray:
    """Random frames from `rng`; with `colors`, drawn from that many random colors (GIF's palette limit), and
    with a repeated frame run, which GIF/WebP encoders merge."""
    if colors is None:
        a = rng.integers(0, 256, size=(f, h, w, 3), dtype=np.uint8)
    else:
        pal = rng.integers(0, 256, size=(colors, 3), dtype=np.uint8)
        a = pal[rng.integers(0, colors, size=(f, h, w))]
    if f >= 4:
        a[2] = a[1]
        a[3] = a[1]
    return a


@pytest.mark.parametrize("name,colors", [("v.npy", None), ("frames", None), ("v.webp", None), ("v.gif", 200)])
def test_lossless_round_trips_are_exact(tmp_path, name, colors, rng):
    a = _frames(rng, colors=colors)
    write_video(tmp_path / name, a, fps=10)
    b = read_video(tmp_path / name)
    assert b.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize("name", ["s.gif", "s.webp"])
def test_static_video_keeps_its_frame_count(tmp_path, name, rng):
    a = np.repeat(_frames(rng, 1, 8, 8, colors=5), 9, axis=0)  # encoders collapse it into one stored frame
    write_video(tmp_path / name, a, fps=8)
    assert np.array_equal(read_video(tmp_path / name), a)


@needs_ffmpeg
def test_mp4_round_trip_within_tolerance_and_lossless_mode_exact(tmp_path, rng):
    v = ShapesWorld(8, 32, 32).sample(int(rng.integers(1 << 30))).video
    write_video(tmp_path / "v.mp4", v)
    b = read_video(tmp_path / "v.mp4")
    assert b.shape == v.shape and np.abs(b.astype(int) - v).mean() < 4.0
    odd = _frames(rng, 5, 15, 21)
    write_video(tmp_path / "o.mp4", odd)  # odd sides: 4:4:4, no resize
    assert read_video(tmp_path / "o.mp4").shape == odd.shape
    write_video(tmp_path / "l.mp4", odd, lossless=True)
    assert np.array_equal(read_video(tmp_path / "l.mp4"), odd)


def test_mp4_without_imageio_ffmpeg_names_the_extra(tmp_path, monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'sg2v\[video\]'"):
        write_video(tmp_path / "v.mp4", _frames(rng))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["v.gif", "v.webp", "frames", "v.npy"])
def test_failing_write_leaves_nothing(tmp_path, monkeypatch, name, rng):
    import numpy
    from PIL import Image

    fail_at = 3 if name == "frames" else 1  # a frame folder fails part-way, after two frames were written
    calls = {"n": 0}
    real_save, real_np_save = Image.Image.save, numpy.save

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        real_save(self, fp, *args, **kwargs)
        if calls["n"] == fail_at:
            raise OSError("disk full")

    def np_save(f, arr, *args, **kwargs):
        real_np_save(f, arr[:1], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(numpy, "save", np_save)
    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(VideoError, match=r"cannot write .* \(disk full\); check free space"):
        write_video(tmp_path / name, _frames(rng, colors=9))
    assert list(tmp_path.iterdir()) == []


def _fake_ffmpeg(folder, monkeypatch, body):
    """imageio-ffmpeg's binary replaced by a script: `body` gets the output path as $last."""
    import imageio_ffmpeg

    script = folder / "fake-ffmpeg"
    script.write_text("#!/bin/sh\nfor last; do :; done\ncat > /dev/null\n" + body)
    script.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(script))


@pytest.mark.parametrize("body, why", [
    # ffmpeg on a full disk: a truncated file and a failing exit status
    ('printf "trunc" > "$last"\necho "Error writing trailer: No space left on device" >&2\nexit 1\n',
     r"exit status 1: Error writing trailer: No space left on device"),
    ('exit 0\n', "wrote no mp4 data"),  # an encoder that claims success and writes nothing
    (': > "$last"\nexit 0\n', "wrote no mp4 data"),
])
def test_mp4_failure_keeps_the_existing_video(tmp_path, monkeypatch, body, why, rng):
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the video extra")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    good = out_dir / "v.mp4"
    write_video(good, _frames(rng))
    before = good.read_bytes()
    _fake_ffmpeg(tmp_path, monkeypatch, body)
    with pytest.raises(VideoError, match=why + r".*the existing file was kept"):
        write_video(good, _frames(rng, colors=5))
    assert good.read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["v.mp4"]  # no temporary file left
    np.testing.assert_array_equal(read_video(good).shape, _frames(rng).shape)


def test_sg2v_run_on_a_full_disk_exits_1_with_one_line(tmp_path, monkeypatch, capsys, rng):
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the video extra")
    import json

    from helpers import make_fake_bundle

    from sg2v.runtime import cli

    root, _ = make_fake_bundle(tmp_path / "bundle", seed=2)
    (tmp_path / "g.json").write_text(json.dumps({"objects": ["red circle"], "relationships": []}))
    good = tmp_path / "v.mp4"
    write_video(good, _frames(rng))
    before = good.read_bytes()
    _fake_ffmpeg(tmp_path, monkeypatch, 'echo "av_interleaved_write_frame(): No space left on device" >&2\n'
                                        "exit 1\n")
    rc = cli.main([str(tmp_path / "g.json"), "--bundle", str(root), "--out", str(good), "--steps", "1",
                   "--backend", "ort"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "No space left on device" in err and "existing file was kept" in err
    assert good.read_bytes() == before


def test_bad_frames_and_paths_raise_video_error(tmp_path, rng):
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "v.npy", _frames(rng).astype(np.float32))
    with pytest.raises(VideoError, match="shape"):
        write_video(tmp_path / "v.npy", _frames(rng)[0])
    with pytest.raises(VideoError, match="unknown video format"):
        write_video(tmp_path / "v.avi", _frames(rng))
    with pytest.raises(VideoError, match="no such video"):
        read_video(tmp_path / "missing.gif")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a not really")
    with pytest.raises(VideoError, match="cannot read"):
        read_video(tmp_path / "broken.gif")
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.parametrize("name", ["v.gif", "v.webp", "v.mp4", "v.npy"])
def test_absurd_frame_rates_are_refused_before_writing(tmp_path, name, rng):
    """GIF keeps a frame's duration in 16-bit centiseconds and mp4 the rate as a fraction: fps inf, 1e-9 or
    an integer too large for a float used to end in OverflowError."""
    for fps in (float("inf"), float("nan"), 1e-9, 0, -8, 1e6, 10**5000, "8", True):
        with pytest.raises(VideoError, match=r"fps .*: must be a number of frames per second in \[0.01, "):
            write_video(tmp_path / name, _frames(rng, colors=5), fps=fps)
    assert list(tmp_path.iterdir()) == []
    write_video(tmp_path / "edge.gif", _frames(rng, colors=5), fps=0.01)  # the ends of the range work
    write_video(tmp_path / "edge.webp", _frames(rng, colors=5), fps=1000)
    assert read_video(tmp_path / "edge.gif").shape == _frames(rng).shape


def test_contact_sheets_too_large_to_allocate_are_refused(rng):
    a = _frames(rng, 4, 6, 6)
    for kwargs in ({"scale": 10**6}, {"cols": 10**5000}, {"pad": 10**9}):
        with pytest.raises(VideoError, match=r"would take .* bytes, more than 1073741824; lower cols"):
            contact_sheet(a, **kwargs)
    for kwargs in ({"cols": 1.5}, {"scale": "2"}, {"pad": -1}, {"cols": 0}):
        with pytest.raises(VideoError, match="contact sheet needs integers cols >= 1"):
            contact_sheet(a, **kwargs)


def _slow_sheet(frames, cols, pad, scale, pad_value):
    f, h, w, _ = frames.shape
    rows = math.ceil(f / cols)
    out = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), pad_value, np.uint8)
    for k in range(f):
        r, c = divmod(k, cols)
        for y in range(h * scale):
            for x in range(w * scale):
                out[pad + r * (h * scale + pad) + y, pad + c * (w * scale + pad) + x] = frames[k, y // scale,
                                                                                            x // scale]
    return out


@pytest.mark.parametrize("f,cols,pad,scale", [(7, None, 2, 1), (5, 2, 0, 2), (4, 4, 3, 1), (1, None, 1, 3)])
def test_contact_sheet_matches_slow_reference(f, cols, pad, scale, rng):
    a = _frames(rng, f, 5, 6)
    got = contact_sheet(a, cols=cols, pad=pad, scale=scale)
    want = _slow_sheet(a, cols or math.ceil(math.sqrt(f)), pad, scale, 48)
    assert np.array_equal(got, want)


def test_write_contact_sheet_png(tmp_path, rng):
    from PIL import Image

    a = _frames(rng, 4, 6, 6)
    write_contact_sheet(tmp_path / "s.png", a, cols=2, scale=2)
    with Image.open(tmp_path / "s.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), contact_sheet(a, cols=2, scale=2))


def test_box_sheet_outlines_visible_boxes_on_the_upscaled_frames(rng):
    """Box sheets: frames upscaled to >= min_cell px, each visible box outlined in its palette color (2 px,
    inside the box), hidden boxes not drawn, elsewhere the plain upscaled sheet; bad shapes are one line."""
    from sg2v.video import PALETTE, VideoError, box_sheet

    a = _frames(rng, 3, 8, 16)  # (F, H, W, 3)
    boxes = np.zeros((2, 3, 4))
    boxes[0] = [0.25, 0.5, 0.75, 1.0]
    boxes[1] = [0.0, 0.0, 0.5, 0.5]
    shown = np.array([[True, True, False], [True, False, True]])
    got = box_sheet(a, boxes, ["0 a", "1 b"], shown, min_cell=64, cols=3, pad=4)
    scale = 4  # 64 / max(8, 16)
    plain = contact_sheet(a, cols=3, pad=4, scale=scale)
    assert got.shape == plain.shape
    changed = np.any(got != plain, axis=-1)  # (sheet rows, sheet cols)

    def cell(t, y, x):  # the sheet pixel of frame t's upscaled pixel (y, x)
        return 4 + y, 4 + t * (16 * scale + 4) + x

    for t in range(3):
        x0, y0, x1, y1 = (boxes[0, t] * [64, 32, 64, 32]).astype(int)
        bottom = [cell(t, y1 - 1, x) for x in range(x0 + 20, x1 - 2)]  # right of the label plate
        assert all((got[p] == PALETTE[0]).all() for p in bottom) == shown[0, t]
        right = [cell(t, y, 31) for y in range(14, 16)]  # object 1's right edge, below its label
        assert all((got[p] == PALETTE[1]).all() for p in right) == shown[1, t]
    assert changed.sum() < 0.25 * changed.size  # outlines and labels only
    hidden = box_sheet(a, boxes, ["0 a", "1 b"], np.zeros((2, 3), bool), min_cell=64, cols=3, pad=4)
    assert np.array_equal(hidden, plain)
    with pytest.raises(VideoError, match=r"boxes of shape \(2, 2, 4\) and 2 labels for 3 frames"):
        box_sheet(a, boxes[:, :2], ["a", "b"])


def test_unit_scaling_matches_formula_and_round_trips(rng):
    a = _frames(rng)
    x = frames_to_unit(a)
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_allclose(x, a.astype(np.float64) / 127.5 - 1.0, atol=1e-6)
    assert np.array_equal(unit_to_frames(x), a)
    y = rng.uniform(-1.5, 1.5, size=(3, 4, 5, 3)).astype(np.float32)
    want = np.clip(np.round((y.astype(np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.abs(unit_to_frames(y).astype(int) - want).max() <= 1  # float32 vs float64 at .5 ties


def test_unit_scaling_accepts_torch_tensors(rng):
    torch = pytest.importorskip("torch", reason="torch not installed")
    a = _frames(rng)
    x = frames_to_unit(torch.from_numpy(a))
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), frames_to_unit(a), atol=1e-6)
    back = unit_to_frames(x)
    assert back.dtype == torch.uint8 and np.array_equal(back.numpy(), a)
