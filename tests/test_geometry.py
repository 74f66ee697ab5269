"""The data's geometric constraints (sg2v.geometry) against hand-made layouts and the shapes world's rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sg2v.config import ModelConfig
from sg2v.geometry import (
    Geometry,
    batch_geometry_ok,
    check_geometry,
    compact_entry,
    from_entry,
    geometry_failures,
    geometry_for,
    measure_geometry,
    model_geometry,
    pair_overlaps,
    shapes_geometry,
    to_entry,
)
from sg2v.shapes import ShapesDataset
from sg2v.shapes.world import OBJECT_NAMES, ShapesWorld, size_range

ROOT = Path(__file__).resolve().parents[1]
F = 5
SHAPES = shapes_geometry(64, 64)


def _track(x0, y0, side, frames=F, dx=0.0, dy=0.0):
    """A square box of `side` moving by (dx, dy) per frame, (frames, 4)."""
    t = np.arange(frames)[:, None]
    x, y = x0 + dx * t, y0 + dy * t
    return np.concatenate([x, y, x + side, y + side], -1).astype(np.float64)


def _holds(tracks, geometry=SHAPES, free=None):
    return {c.constraint: c.holds for c in check_geometry(np.stack(tracks), geometry, free)}


def _slow_overlap(a, b):
    """Covered fraction of the smaller box, one pair of boxes, plain Python."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def test_shapes_world_limits_are_the_generators():
    lo, hi = size_range(64, 64)
    assert SHAPES.max_overlap == 0.0 and SHAPES.inside
    assert SHAPES.width == ((lo - 0.5) / 64, (hi + 0.5) / 64) == SHAPES.height
    g = shapes_geometry(48, 80)  # the world's sides come from the shorter canvas side
    lo, hi = size_range(48, 80)
    assert g.width == ((lo - 0.5) / 80, (hi + 0.5) / 80) and g.height == ((lo - 0.5) / 48, (hi + 0.5) / 48)


def test_overlap_boundaries_touching_is_apart():
    s = 10 / 64
    a = _track(0.2, 0.2, s)
    touching = _track(0.2 + s, 0.2, s)  # shares the edge x = 0.2 + s: no area in common
    assert _holds([a, touching])["overlap"]
    into = _track(0.2 + s - 1e-4, 0.2, s)  # a sliver inside
    checks = {c.constraint: c for c in check_geometry(np.stack([a, into]), SHAPES)}
    c = checks["overlap"]
    assert not c.holds and c.frames == F and c.objects == (0, 1)
    # a box that crosses another in the middle frame only
    mover = _track(0.0, 0.2, s, dx=0.2)  # x0 = 0, 0.2, 0.4, ...: on top of `a` in frame 1 only
    c = {c.constraint: c for c in check_geometry(np.stack([a, mover]), SHAPES)}["overlap"]
    assert c.frames == 1 and c.worst == pytest.approx(1.0)
    # a limit of a quarter: a box covering exactly a quarter of the other holds, a little more does not
    quarter = Geometry(0.25, None, None, False, "measured")
    half_x = _track(0.2 + s / 2, 0.2 + s / 2, s)  # covers (s/2)^2 = a quarter of `a`
    assert _holds([a, half_x], quarter) == {"overlap": True}
    assert _holds([a, _track(0.2 + s / 2 - 1e-3, 0.2 + s / 2, s)], quarter) == {"overlap": False}


def test_pair_overlaps_match_a_plain_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.8, size=(3, 4, F, 2))
    wh = rng.uniform(0.05, 0.4, size=(3, 4, F, 2))
    tracks = np.concatenate([xy, xy + wh], -1)  # (K, n, F, 4)
    got = pair_overlaps(tracks)
    for k in range(3):
        for i in range(4):
            for j in range(4):
                for f in range(F):
                    want = 0.0 if i == j else _slow_overlap(tracks[k, i, f], tracks[k, j, f])
                    assert got[k, i, j, f] == pytest.approx(want, abs=1e-12)


def test_size_and_inside_boundaries():
    lo, hi = SHAPES.width
    assert _holds([_track(0.3, 0.3, lo)])["size"] and _holds([_track(0.3, 0.3, hi)])["size"]
    assert not _holds([_track(0.3, 0.3, lo - 1e-4)])["size"]
    assert not _holds([_track(0.3, 0.3, hi + 1e-4)])["size"]
    tall = _track(0.3, 0.3, lo)
    tall[:, 3] += hi  # width in range, height not
    assert not _holds([tall])["size"]
    at_edge = _track(1.0 - 0.15, 1.0 - 0.15, 0.15)  # x1 = y1 = 1 exactly
    assert _holds([at_edge])["inside"]
    out = _track(1.0 - 0.15 + 1e-3, 0.3, 0.15)
    c = {c.constraint: c for c in check_geometry(out[None], SHAPES)}["inside"]
    assert not c.holds and c.worst == pytest.approx(1e-3) and c.objects == (0,)
    assert not _holds([_track(-1e-3, 0.3, 0.15)])["inside"]
    phrases = geometry_failures(check_geometry(out[None], SHAPES))
    assert phrases == ["object(s) 0 leave the canvas (by up to 0.001 of the frame) in 5 frame(s)"]


def test_free_objects_only_pairs_of_given_tracks_are_not_judged():
    s = 10 / 64
    a, b = _track(0.2, 0.2, s), _track(0.21, 0.21, s)  # a and b overlap
    far = _track(0.7, 0.7, s)
    tracks = np.stack([a, b, far])
    assert not _holds(list(tracks))["overlap"]
    free = np.array([False, False, True])  # a and b given: their overlap is not the drawing's fault
    assert _holds(list(tracks), free=free)["overlap"]
    free_b = np.array([False, True, True])  # b drawn onto the given a: judged
    assert not _holds(list(tracks), free=free_b)["overlap"]
    assert batch_geometry_ok(tracks[None], SHAPES, free).tolist() == [True]
    assert batch_geometry_ok(tracks[None], SHAPES, free_b).tolist() == [False]
    assert batch_geometry_ok(tracks[None], None).tolist() == [True] and check_geometry(tracks, None) == []


def test_the_worlds_scenes_keep_and_its_rejections_break_the_constraints():
    # every scene the generator emits passes; its own overlap test and the constraint agree on candidates
    ds = ShapesDataset(seed=11, length=40)
    scale = np.array([64, 64, 64, 64], np.float64)
    for i in range(len(ds)):
        _, motion = ds.scene(i)
        tracks = motion.boxes(16) / scale
        assert all(c.holds for c in check_geometry(tracks, SHAPES)), i
    world = ShapesWorld()
    rng = np.random.default_rng(5)
    agree = 0
    for n in (2, 3, 4):
        sizes, _, _, tl = world._candidates(rng, n, 200)  # (k, n, F, 2) integer top-left corners
        boxes = np.concatenate([tl, tl + sizes[None, :, None, None]], -1) / 64.0  # (k, n, F, 4)
        apart = world._apart(tl, sizes)
        over = Geometry(0.0, None, None, False, "shapes world")
        np.testing.assert_array_equal(batch_geometry_ok(boxes, over), apart)
        agree += int(apart.sum()) * int((~apart).sum())
        sized = [c.holds for k in range(5) for c in check_geometry(boxes[k], SHAPES)
                 if c.constraint == "size"]
        assert all(sized) and sized
    assert agree > 0  # both kinds occurred


def test_measure_geometry_quantiles_and_unseen_boxes():
    rng = np.random.default_rng(2)
    layouts, worst, widths = [], [], []
    for _ in range(30):
        n = int(rng.integers(1, 4))
        xy = rng.uniform(0, 0.6, size=(n, F, 2))
        wh = rng.uniform(0.05, 0.35, size=(n, F, 2))
        t = np.concatenate([xy, xy + wh], -1)
        if n > 1:
            t[1, 0] = 0.0  # object 1 not seen in frame 0 (an all-zero row)
        layouts.append(t)
        for f in range(F):
            seen = [i for i in range(n) if t[i, f, 2] > t[i, f, 0]]
            widths += [t[i, f, 2] - t[i, f, 0] for i in seen]
            if len(seen) >= 2:
                worst.append(max(_slow_overlap(t[i, f], t[j, f]) for i in seen for j in seen if i != j))
    g = measure_geometry(layouts, quantile=0.9, size_quantiles=(0.05, 0.95))
    assert g.source == "measured" and g.inside
    assert g.max_overlap == pytest.approx(np.quantile(worst, 0.9))
    assert g.width == pytest.approx((np.quantile(widths, 0.05), np.quantile(widths, 0.95)))
    outside = [np.array([[[0.9, 0.1, 1.2, 0.3]] * F])]
    assert not measure_geometry(outside).inside and measure_geometry(outside).max_overlap is None
    assert measure_geometry([np.zeros((2, F, 4))]) is None


def test_entries_round_trip_and_bad_entries_name_the_field():
    for g in (SHAPES, Geometry(0.31, (0.01, 0.9), None, True, "measured"), Geometry(None, None, None, False,
                                                                                   "measured")):
        assert from_entry(json.loads(json.dumps(to_entry(g)))) == g
    worst = Geometry(1 / 3, (0.0123456789012345, 0.987654321098765), (1 / 7, 2 / 3), True, "measured")
    text = compact_entry(worst)
    assert len(text) <= 256 and from_entry(json.loads(text)) == worst  # a config's string holds it exactly
    entry = to_entry(SHAPES)
    bad = (("max_overlap", 1.5, "max_overlap"), ("width", [0.3, 0.1], "low > high"),
           ("source", "guess", "source"), ("inside", 1, "inside"), ("height", "x", "height"))
    for key, value, words in bad:
        with pytest.raises(ValueError, match=words):
            from_entry({**entry, key: value})
    with pytest.raises(ValueError, match="keys"):
        from_entry({**entry, "extra": 1})


def test_a_bundle_without_the_entry_gets_the_shapes_worlds_from_its_config():
    manifest = json.loads((ROOT / "models" / "demo" / "manifest.json").read_text())
    cfg = ModelConfig.from_dict(manifest["model_config"])
    assert geometry_for(cfg, OBJECT_NAMES) == shapes_geometry(cfg.data.height, cfg.data.width)
    assert model_geometry(cfg, OBJECT_NAMES) == SHAPES
    assert geometry_for(cfg, ("person", "dog")) is None  # another vocabulary: nothing to derive
    coco = cfg.replace(layout=cfg.layout.__class__(**{**cfg.layout.__dict__, "rules": "coco"}))
    assert geometry_for(coco, OBJECT_NAMES) is None
    measured = Geometry(0.2, (0.05, 0.8), (0.05, 0.8), True, "measured")
    recorded = coco.replace(layout=coco.layout.__class__(**{**coco.layout.__dict__,
                                                            "geometry": compact_entry(measured)}))
    assert model_geometry(recorded, ("person",)) == measured
    assert ModelConfig.from_dict(recorded.to_dict()).layout.geometry == compact_entry(measured)


def test_bundle_reader_derives_reads_and_refuses_the_entry(grounded_bundle, tmp_path):
    import shutil

    from sg2v.errors import BundleError
    from sg2v.runtime.bundle import Bundle

    shipped = Bundle.open(ROOT / "models" / "demo", verify=False)
    assert shipped.manifest["layout"]["geometry"] == to_entry(SHAPES)
    copy = tmp_path / "b"
    shutil.copytree(grounded_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    cfg = ModelConfig.from_dict(manifest["model_config"])
    derived = to_entry(shapes_geometry(cfg.data.height, cfg.data.width))
    assert manifest["layout"]["geometry"] == derived
    older = dict(manifest, layout={k: v for k, v in manifest["layout"].items() if k != "geometry"})
    (copy / "manifest.json").write_text(json.dumps(older))  # a bundle written before the entry
    assert Bundle.open(copy, verify=False).layout["geometry"] == derived
    measured = Geometry(0.2, (0.05, 0.5), None, True, "measured")
    manifest["layout"]["geometry"] = to_entry(measured)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle.open(copy, verify=False).layout["geometry"] == to_entry(measured)
    manifest["layout"]["geometry"]["max_overlap"] = -1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest 'layout': geometry max_overlap -1 is not a number"):
        Bundle.open(copy, verify=False)


def test_the_shipped_student_draws_a_free_object_clear_of_a_pinned_one():
    pytest.importorskip("onnxruntime")
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(ROOT / "models" / "demo", backend="ort", threads=1)
    f = pipe.bundle.config.data.frames
    pinned = np.tile(np.array([0.4, 0.4, 0.58, 0.58], np.float32), (f, 1))  # a world-sized box mid-frame
    graphs = [{"objects": ["red square", "blue circle"], "relationships": []},
              {"objects": ["green triangle", "white square", "cyan circle"],
               "relationships": [[1, "left of", 2]]}]
    seeds, given = [10, 8], [{0: pinned}, {0: pinned}]
    gen = pipe.run(graphs, seeds, steps=1, layouts=given)
    base = dict(pipe.generator.layout)
    pipe.generator.layout = {**base, "geometry": None}  # these seeds' first draws run into the pinned box
    loose = pipe.run(graphs, seeds, steps=1, layouts=given)
    pipe.generator.layout = base
    assert all(pair_overlaps(r.tracks)[0, 1:].max() > 0.5 for r in loose.layouts)
    for r in gen.layouts:
        np.testing.assert_array_equal(r.tracks[0], pinned)
        assert r.satisfied and not r.given_breaks
        assert pair_overlaps(r.tracks)[0, 1:].max() == 0.0  # every drawn object clear of the pinned one
        assert all(c.holds for c in check_geometry(r.tracks, SHAPES))
    pipe.close()
