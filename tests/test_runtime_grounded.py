"""The layout-grounded chain through the runtime (format 3: the encoder with object vectors, the layout
network, the UNet grounded on objects and boxes): every CPU backend against the in-memory model's generation
loop (`sg2v.training.backend.model_generator`) for the same seeds, pinned tracks kept exactly and fed to the
UNet, batches equal to single calls, the bundle reader's view of format 3, and sg2v-run's layout flags.

Measured here on the tiny grounded bundle (6 trials of 3 random graphs, 3 steps): the torch backends give the
in-memory model's tracks and frames bit for bit; ONNX Runtime's tracks differ by at most 2.4e-7, its frames
not at all, and every graph is drawn the same number of times. The tolerances below leave room for other CPUs.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import checked_graphs, checkpoint_generator

from sg2v import bundle_spec as spec
from sg2v.errors import Sg2vError
from sg2v.graph import pad_graphs
from sg2v.runtime import Pipeline
from sg2v.runtime.bundle import Bundle
from sg2v.runtime.cli import main

torch = pytest.importorskip("torch")

TRACK_ATOL = 1e-5  # tracks of two backends (seen: 2.4e-7, ONNX Runtime vs torch)
FRAME_LEVELS = 1  # frames of two backends, in levels of 255 (seen: 0)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(grounded_checkpoint):
    """The in-memory model's generation loop (torch tensors), the contract every backend is held to."""
    return checkpoint_generator(grounded_checkpoint)


def _graphs(seed: int, n: int = 3):
    graphs, seeds, _ = checked_graphs(seed, n)
    return graphs, seeds


def _reference_run(reference, pipe, graphs, seeds, steps=3, **kw):
    gen, cfg = reference
    parsed = [pipe.parse(g) for g in graphs]
    feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
    return gen.run(feeds, seeds, gen.settings(steps=steps), graphs=parsed, **kw)


def _agree(got, want):
    assert len(got.layouts) == len(want.layouts)
    for a, b in zip(got.layouts, want.layouts):
        assert a.draws == b.draws and a.satisfied == b.satisfied and a.pinned == b.pinned
        assert a.tracks.shape == b.tracks.shape
        np.testing.assert_allclose(a.tracks, b.tracks, rtol=0, atol=TRACK_ATOL)
        assert [c.holds for c in a.relations] == [c.holds for c in b.relations]
    assert np.abs(got.frames.astype(np.int16) - want.frames.astype(np.int16)).max() <= FRAME_LEVELS


def test_format_3_bundle_opens_with_its_layout_stage(grounded_bundle):
    b = Bundle.open(grounded_bundle)
    assert b.grounded and b.manifest["format_version"] == 3
    assert list(b.stages) == ["encoder", "layout", "unet"]
    assert b.stages == {name: {"file": file, **spec.stage_io(b.shapes)[name]}
                        for name, file in spec.GROUNDED_STAGE_FILES.items()}
    assert [d["name"] for d in b.stages["encoder"]["outputs"]] == list(spec.GROUNDED_ENCODER_OUTPUTS)
    assert [d["name"] for d in b.stages["unet"]["inputs"]] == list(spec.GROUNDED_UNET_INPUTS)
    assert b.stages["layout"]["inputs"][0]["shape"][0] == spec.LAYOUT_BATCH_DIM
    assert b.layout == b.manifest["layout"] and b.layout["tries"] == b.config.layout.default_tries
    assert b.shapes["max_layout_batch"] == b.max_batch * spec.LAYOUT_PER_ROUND


@pytest.mark.parametrize("backend", ["ort", "torch", "torch-cuda-eager"])
def test_every_cpu_backend_agrees_with_the_in_memory_model(grounded_bundle, reference, backend):
    if backend == "torch-cuda-eager":  # the torch-cuda backend's fused step and device-side loop, on the CPU
        from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

        bundle = Bundle.open(grounded_bundle)
        pipe = Pipeline(bundle, make_torch_cuda_backend(bundle, device="cpu", mode="eager", precision="fp32"))
    else:
        pipe = Pipeline.from_bundle(grounded_bundle, backend=backend, threads=1)
    for trial in (11, 12):
        graphs, seeds = _graphs(trial)
        got = pipe.run(graphs, seeds, steps=3)
        _agree(got, _reference_run(reference, pipe, graphs, seeds))
        t = got.timings
        assert t["layout_s"] > 0 and t["layout_draws"] == [r.draws for r in got.layouts]
        parts = t["encoder_s"] + t["layout_s"] + t["denoiser_s"] + t["sampler_overhead_s"] + t["decode_s"]
        assert parts == pytest.approx(t["total_s"], rel=1e-9)
    assert pipe.last_generation is not None and pipe.last_generation.layouts is not None


def test_pinned_tracks_come_back_exactly_and_reach_the_unet(grounded_bundle, reference):
    """Tracks given by the caller (and by the graph's own "layout" key) are the tracks used, bit for bit,
    and the UNet's conditional rows get exactly them as boxes (padded slots, `__image__` and the
    unconditional rows none)."""
    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort", threads=1)
    f = pipe.bundle.shapes["frames"]
    rng = np.random.default_rng(21)
    lo = rng.uniform(0.05, 0.5, size=(f, 2))
    given = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, size=(f, 2))], -1).astype(np.float32)  # (F, 4)
    graphs, seeds = _graphs(22, n=2)
    graphs[1] = {"objects": ["red circle", "blue square"], "relationships": [[0, "right of", 1]],
                 "layout": {"1": {"start": [0.1, 0.2, 0.3, 0.4], "end": [0.5, 0.6, 0.7, 0.8]}}}
    seen = []
    run_unet = pipe.backend.unet.run

    def spy(feeds):
        seen.append({k: np.array(feeds[k]) for k in ("objects", "boxes")})
        return run_unet(feeds)

    pipe.backend.unet.run = spy
    got = pipe.run(graphs, seeds, steps=2, layouts=[{2: given}, None])
    np.testing.assert_array_equal(got.layouts[0].tracks[2], given)
    start, end = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8])
    motion = start + (end - start) * (np.arange(f) / max(f - 1, 1))[:, None]  # linear from start to end
    np.testing.assert_array_equal(got.layouts[1].tracks[1], motion.astype(np.float32))
    assert got.layouts[0].pinned == [2] and got.layouts[1].pinned == [1]
    for feeds in seen:  # every step: (2B, O, F, 4), the B conditional rows then the B unconditional ones
        boxes = feeds["boxes"]
        for i, r in enumerate(got.layouts):
            n = len(r.tracks)
            np.testing.assert_array_equal(boxes[i, :n], r.tracks)
            assert not boxes[i, n:].any()
        assert not boxes[2:].any() and not feeds["objects"][2:].any()
    pipe.backend.unet.run = run_unet
    want = _reference_run(reference, pipe, graphs, seeds, steps=2, layouts=[{2: given}, {}])
    _agree(got, want)
    # every track given: nothing is drawn, the relations are still checked on them
    every = pipe.run(graphs[1:], seeds[1:], steps=2, layouts=[{0: given}])
    assert every.layouts[0].draws == 0 and every.layouts[0].pinned == [0, 1]
    assert every.layouts[0].satisfied == all(c.holds for c in every.layouts[0].relations)


def test_batches_equal_single_calls(grounded_bundle):
    graphs, seeds = _graphs(31, n=4)
    for backend in ("ort", "torch"):
        pipe = Pipeline.from_bundle(grounded_bundle, backend=backend, threads=1)
        singles = [pipe.run([g], [s], steps=3) for g, s in zip(graphs, seeds)]
        batch = pipe.run(graphs, seeds, steps=3)
        assert batch.timings["chunks"] == 1 and batch.timings["unet_calls"] == 3
        frames = np.stack([s.frames[0] for s in singles])
        np.testing.assert_array_equal(pipe.generate(graphs, seeds, steps=3), batch.frames)
        assert np.abs(batch.frames.astype(np.int16) - frames.astype(np.int16)).max() <= FRAME_LEVELS
        for one, r in zip(singles, batch.layouts):
            assert one.layouts[0].draws == r.draws
            np.testing.assert_allclose(one.layouts[0].tracks, r.tracks, rtol=0, atol=TRACK_ATOL)
        chunked = pipe.run(graphs, seeds, steps=3, max_batch=3)
        assert chunked.timings["chunks"] == 2 and [r.draws for r in chunked.layouts] == \
            [r.draws for r in batch.layouts]


def test_layout_tries_caps_the_draws_and_is_checked(grounded_bundle):
    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort", threads=1)
    graphs, seeds = _graphs(41, n=3)
    default = pipe.run(graphs, seeds, steps=1)
    assert max(r.draws for r in default.layouts) <= pipe.bundle.layout["tries"]
    one = pipe.run(graphs, seeds, steps=1, layout_tries=1)
    assert all(r.draws == 1 for r in one.layouts)
    first = [r for r, d in zip(one.layouts, default.layouts) if d.draws == 1]
    for r in first:  # the first draw is the same draw whatever the cap
        assert r.satisfied
    for bad in (0, 5000, 2.5, True):
        with pytest.raises(Sg2vError, match=r"layout tries must be an integer in \[1, 4096\]"):
            pipe.run(graphs, seeds, steps=1, layout_tries=bad)
    with pytest.raises(Sg2vError, match=r"layout for graph 0: object 7"):
        box = np.float32([0.1, 0.1, 0.3, 0.3])  # a valid track, for an object the graph does not have
        pipe.run(graphs[:1], seeds[:1], steps=1, layouts=[{7: np.tile(box, (2, 1))}])


# ------------------------------------------------------------------------------------------------ sg2v-run
def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_cli_save_layout_loads_again_to_the_same_video(grounded_bundle, tmp_path, capsys):
    graphs, _ = _graphs(51, n=2)
    a, b = _write(tmp_path / "a.json", graphs[0]), _write(tmp_path / "b.json", graphs[1])
    run = [str(a), str(b), "--bundle", str(grounded_bundle), "--steps", "2", "--seed", "6",
           "--backend", "ort"]
    assert main([*run, "--out", str(tmp_path / "v.npy"), "--save-layout", str(tmp_path / "lay" / "l.json"),
                 "--contact-sheet", str(tmp_path / "s.png"), "--draw-layout"]) == 0
    out = capsys.readouterr().out
    assert "layout " in out and "l_1.json" in out and "s_0.png" in out
    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort")
    want = pipe.run(graphs, [6, 6], steps=2)
    for i in range(2):
        saved = json.loads((tmp_path / "lay" / f"l_{i}.json").read_text())
        assert saved["sg2v_output"] == "sg2v-run --save-layout" and saved["objects"] == graphs[i]["objects"]
        saved = saved["layout"]
        assert sorted(saved, key=int) == [str(k) for k in range(len(graphs[i]["objects"]))]
        np.testing.assert_array_equal(np.asarray(list(saved.values()), np.float32), want.layouts[i].tracks)
        np.testing.assert_array_equal(np.load(tmp_path / f"v_{i}.npy"), want.frames[i])
    assert main([*run, "--out", str(tmp_path / "w.npy"), "--layout", str(tmp_path / "lay" / "l_0.json"),
                 "--layout", str(tmp_path / "lay" / "l_1.json")]) == 0
    for i in range(2):  # the same tracks and seed: the same video, bit for bit
        np.testing.assert_array_equal(np.load(tmp_path / f"w_{i}.npy"), np.load(tmp_path / f"v_{i}.npy"))
    # a whole graph with a "layout" key is a layout file too
    whole = _write(tmp_path / "whole.json", dict(graphs[0], layout=json.loads(
        (tmp_path / "lay" / "l_0.json").read_text())["layout"]))
    assert main([str(a), "--bundle", str(grounded_bundle), "--steps", "2", "--seed", "6", "--backend", "ort",
                 "--out", str(tmp_path / "x.npy"), "--layout", str(whole)]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.load(tmp_path / "v_0.npy"))


def test_cli_draw_layout_outlines_each_box(grounded_bundle, tmp_path, capsys):
    from PIL import Image

    from sg2v.video import BOX_SHEET_CELL, PALETTE

    graph = {"objects": ["red circle", "blue square"], "relationships": []}
    g = _write(tmp_path / "g.json", graph)
    lay = _write(tmp_path / "l.json", {"0": [0.25, 0.25, 0.75, 0.625], "1": [0.0, 0.5, 0.5, 1.0]})
    assert main([str(g), "--bundle", str(grounded_bundle), "--steps", "1", "--backend", "ort", "--out",
                 str(tmp_path / "v.npy"), "--layout", str(lay), "--contact-sheet", str(tmp_path / "s.png"),
                 "--draw-layout"]) == 0
    capsys.readouterr()
    sheet = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    frames = np.load(tmp_path / "v.npy")
    f, h, w, _ = frames.shape
    scale = -(-BOX_SHEET_CELL // max(h, w))  # 8 x 8 frames: drawn 256 x 256
    cols = int(np.ceil(np.sqrt(f)))
    assert sheet.shape == (4 + int(np.ceil(f / cols)) * (h * scale + 4), 4 + cols * (w * scale + 4), 3)
    # object 1's left edge (x0 = 0) runs down the first cell's left column, in its palette color, below its
    # label plate; object 0's bottom edge sits at y1 = 0.625 of the frame
    x = 4
    ys = range(4 + int(0.5 * h * scale) + 20, 4 + h * scale - 2)
    assert all((sheet[y, x] == PALETTE[1]).all() for y in ys)
    y = 4 + int(0.625 * h * scale) - 1
    assert (sheet[y, 4 + int(0.5 * w * scale)] == PALETTE[0]).all()
    plain = tmp_path / "plain.png"
    assert main([str(g), "--bundle", str(grounded_bundle), "--steps", "1", "--backend", "ort", "--out",
                 str(tmp_path / "v2.npy"), "--layout", str(lay), "--contact-sheet", str(plain)]) == 0
    assert np.asarray(Image.open(plain)).shape[0] < sheet.shape[0]  # without --draw-layout: not upscaled


def test_cli_warns_once_per_video_whose_relations_fail(grounded_bundle, tmp_path, capsys):
    contra = {"objects": ["red circle", "blue square"],
              "relationships": [[0, "left of", 1], [1, "left of", 0]]}
    fine = {"objects": ["red circle"], "relationships": []}
    unmet = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    paths = [_write(tmp_path / f"{k}.json", g) for k, g in (("c", contra), ("f", fine), ("u", unmet))]
    lay = [_write(tmp_path / "lc.json", {}), _write(tmp_path / "lf.json", {}),
           _write(tmp_path / "lu.json", {"0": [0.6, 0.1, 0.9, 0.4], "1": [0.1, 0.1, 0.3, 0.3]})]
    assert main([*map(str, paths), "--bundle", str(grounded_bundle), "--steps", "1", "--backend", "ort",
                 "--out", str(tmp_path / "v.npy"), "--layout", *map(str, lay)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("sg2v-run: warning: video 0: contradictory relationships:")
    # the tiny model's draws may miss the shapes world's box sizes (one line for it, on video 1)
    assert all("video 1: the layout after 12 draws breaks the data's geometry" in line for line in err[1:-1])
    assert len(err) in (2, 3)
    # the given tracks: the unmet relation, and (one line, not a refusal) the world's sizes they break
    assert err[-1] == ("sg2v-run: warning: video 2: 1 relationship(s) not met by the given tracks: "
                       "[0, 'left of', 1]; change those tracks; the given tracks break the data's geometry "
                       "(object(s) 0 and 1 outside the data's box sizes (by up to 0.112 of the frame) in 2 "
                       "frame(s)): the model never saw such scenes, expect a blend there")


def test_cli_layout_errors(grounded_bundle, real_bundle, tmp_path, capsys):
    g = _write(tmp_path / "g.json", {"objects": ["red circle", "blue square"], "relationships": []})
    base = [str(g), "--bundle", str(grounded_bundle), "--out", str(tmp_path / "v.npy"), "--steps", "1"]
    cases = [
        ({"0": [0.5, 0.1, 0.2, 0.3]}, r'invalid layout: .*bad.json\["0"\]: x1 0.2 <= x0 0.5'),
        ({"5": [0.1, 0.1, 0.2, 0.2]}, r"object index 5 out of range; the graph has 2 object"),
        ({"0": [[0.1, 0.1, 0.2, 0.2]] * 3}, r"3 boxes, but this model makes 2 frames"),
        ({"objects": ["red circle"], "layout": {}}, r"its graph has 1 objects, the graph being generated"),
        ([1, 2], r"expected an object mapping object indices to tracks"),
    ]
    for data, message in cases:
        bad = _write(tmp_path / "bad.json", data)
        assert main([*base, "--layout", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("sg2v-run: invalid layout:"), err
        assert re.search(message, err), (message, err)
    (tmp_path / "broken.json").write_text('{"0": [0.1, 0.1,')
    assert main([*base, "--layout", str(tmp_path / "broken.json")]) == 2
    assert "invalid JSON at line 1" in capsys.readouterr().err
    assert main([*base, "--layout", str(tmp_path / "nope.json")]) == 2
    assert "cannot read layout file" in capsys.readouterr().err
    assert main([*base, "--layout", str(g), str(g)]) == 2
    assert "2 --layout file(s) for 1 graph(s)" in capsys.readouterr().err
    assert main([*base, "--draw-layout"]) == 1
    assert "add --contact-sheet SHEET.png" in capsys.readouterr().err
    assert not (tmp_path / "v.npy").exists()
    plain = [str(g), "--bundle", str(real_bundle), "--out", str(tmp_path / "v.npy")]
    for flags in (["--layout", str(g)], ["--save-layout", "l.json"], ["--layout-tries", "3"],
                  ["--save-layout", "l.json", "--contact-sheet", "s.png", "--draw-layout"]):
        assert main([*plain, *flags]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "has no layout stage (format 2" in err and "layout-grounded bundle" in err
    assert not (tmp_path / "v.npy").exists()
