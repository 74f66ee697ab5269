"""Oracle: 100% on the generator's own videos, and each kind of damage is detected."""

from __future__ import annotations

import numpy as np
import pytest

from sg2v.errors import GraphError
from sg2v.shapes import COLORS, SHAPES, ShapesDataset, ShapesWorld, score_batch, score_video, shape_template
from sg2v.shapes.oracle import classify_shape, color_labels
from sg2v.video import VideoError

COLOR_TABLE_FOR_TEST = np.array(list(COLORS.values()), dtype=np.uint8)  # (7, 3)


@pytest.mark.parametrize("frames,size,n", [(4, 16, 150), (16, 32, 60), (16, 64, 25)])
def test_self_test_scores_generated_videos_perfectly(frames, size, n, rng):
    ds = ShapesDataset(seed=int(rng.integers(1 << 30)), length=n, frames=frames, height=size, width=size)
    samples = [ds[i] for i in range(n)]
    r = score_batch([s.video for s in samples], [s.graph for s in samples])
    assert r.presence == 1.0 and r.relation_accuracy == 1.0 and r.shape_accuracy == 1.0
    assert r.stability == 1.0 and r.smoothness in (None, 1.0)
    assert r.relations == sum(len(s.graph["relationships"]) for s in samples)


def test_batch_report_pools_the_per_video_counts(rng):
    w = ShapesWorld(6, 24, 24)
    samples = [w.sample(int(s)) for s in rng.integers(0, 1 << 30, size=12)]
    vids = [s.video.copy() for s in samples]
    vids[0][:] = 0  # one blank video, so the pooled numbers are not all 1
    reps = [score_video(v, s.graph) for v, s in zip(vids, samples)]
    b = score_batch(vids, [s.graph for s in samples])
    objs = [o for r in reps for o in r.objects]
    rels = [x for r in reps for x in r.relations]
    assert b.objects == len(objs) and b.presence == pytest.approx(np.mean([o.present for o in objs]))
    if rels:
        assert b.relation_accuracy == pytest.approx(np.mean([x.holds for x in rels]))
    assert b.presence < 1.0


def test_noise_within_color_tolerance_is_tolerated(rng):
    s = ShapesWorld(8, 32, 32).sample(int(rng.integers(1 << 30)))
    noisy = np.clip(s.video.astype(int) + rng.integers(-12, 13, s.video.shape), 0, 255).astype(np.uint8)
    r = score_video(noisy, s.graph)
    assert r.presence == 1.0 and r.shape_accuracy == 1.0 and r.relation_accuracy in (None, 1.0)


@pytest.mark.parametrize("size,limit", [(16, 0.05), (32, 0.0), (64, 0.0)])
def test_scattered_noise_is_no_object(size, limit, rng):
    """An untrained model's output is noise: pixels of every color, nowhere an object-sized blob.

    At 16 x 16 an object is 2-3 px wide, so a chance clump of noise passes for one about 0.5% of the time.
    """
    samples = [ShapesWorld(8, size, size).sample(int(rng.integers(1 << 30))) for _ in range(40)]
    uniform = [rng.integers(0, 256, s.video.shape, dtype=np.uint8) for s in samples]
    saturated = [(rng.random(s.video.shape) < 0.5).astype(np.uint8) * 255 for s in samples]
    graphs = [s.graph for s in samples]
    assert score_batch(uniform, graphs).presence <= limit
    assert score_batch(saturated, graphs).presence <= limit


def test_object_survives_scattered_pixels_of_other_colors(rng):
    """Stray pixels elsewhere do not hide a drawn object nor move its centroid out of its box."""
    s = ShapesWorld(8, 64, 64).sample(int(rng.integers(1 << 30)))
    video = s.video.copy()
    stray = (rng.random(video.shape[:3]) < 0.01) & (video.sum(-1) == 0)  # (F, H, W): 1% of background pixels
    video[stray] = COLOR_TABLE_FOR_TEST[rng.integers(0, len(COLOR_TABLE_FOR_TEST), int(stray.sum()))]
    r = score_video(video, s.graph)
    assert r.presence == 1.0 and r.relation_accuracy in (None, 1.0)


def _samples_with(world: ShapesWorld, want, count: int, rng) -> list:
    out, seed = [], int(rng.integers(1 << 30))
    while len(out) < count:
        s = world.sample(seed)
        seed += 1
        if want(s):
            out.append(s)
    return out


def test_removed_object_is_absent_and_its_relations_fail(rng):
    w = ShapesWorld(8, 32, 32)
    for s in _samples_with(w, lambda s: len(s.graph["relationships"]) > 0, 10, rng):
        k = s.graph["relationships"][0][0]
        v = s.video.copy()
        v[s.masks[k]] = 0
        r = score_video(v, s.graph)
        assert not r.objects[k].present and r.presence < 1.0
        for x in r.relations:
            if k in (x.subject, x.object):
                assert not x.holds


def _swap_colors(s, a: int, b: int) -> np.ndarray:
    v = s.video.copy()
    ca = COLORS[s.graph["objects"][a].split()[0]]
    cb = COLORS[s.graph["objects"][b].split()[0]]
    v[s.masks[a]] = cb
    v[s.masks[b]] = ca
    return v


def test_color_swap_is_detected_by_shape_or_relation(rng):
    w = ShapesWorld(8, 32, 32)
    spatial = ("left of", "right of", "above", "below")

    def swappable(s):
        rels = s.graph["relationships"]
        if not rels or rels[0][1] not in spatial:
            return False
        a, _, b = rels[0]
        return s.graph["objects"][a].split()[1] != s.graph["objects"][b].split()[1]

    for s in _samples_with(w, swappable, 10, rng):
        a, _, b = s.graph["relationships"][0]
        r = score_video(_swap_colors(s, a, b), s.graph)
        assert r.presence == 1.0
        assert not r.objects[a].shape_ok and not r.objects[b].shape_ok
        assert not r.relations[0].holds  # a spatial relation reverses when the objects trade places


def test_frozen_motion_breaks_motion_relations(rng):
    w = ShapesWorld(16, 32, 32)
    motion = ("approaching", "moving away from")
    picked = _samples_with(w, lambda s: any(p in motion for _, p, _ in s.graph["relationships"]), 10, rng)
    for s in picked:
        frozen = np.repeat(s.video[:1], len(s.video), axis=0)
        r = score_video(frozen, s.graph)
        for x in r.relations:
            if x.predicate in motion:
                assert not x.holds
        assert r.relation_accuracy < 1.0


def test_shuffled_frames_break_smoothness(rng):
    w = ShapesWorld(16, 32, 32)

    def moving(s):  # some object moves at least 1.5 px per frame
        return (np.linalg.norm(np.diff(s.centroids, axis=1), axis=-1).mean(1) >= 1.5).any()

    for s in _samples_with(w, moving, 10, rng):
        perm = rng.permutation(len(s.video))
        while (perm == np.arange(len(perm))).all() or (perm == np.arange(len(perm))[::-1]).all():
            perm = rng.permutation(len(s.video))
        r = score_video(s.video[perm], s.graph)
        assert r.smoothness < 1.0
        assert score_video(s.video, s.graph).smoothness == 1.0


def test_flicker_breaks_stability(rng):
    s = ShapesWorld(8, 32, 32).sample(int(rng.integers(1 << 30)))
    v = s.video.copy()
    v[3][s.masks[0, 3]] = 0  # object 0 vanishes for one frame
    r = score_video(v, s.graph)
    assert r.stability < 1.0 and r.objects[0].present  # 7 of 8 frames still >= 80%


def test_classify_shape_recognises_templates_at_any_box(rng):
    for _ in range(60):
        h, w = (int(x) for x in rng.integers(3, 30, size=2))
        sh = SHAPES[int(rng.integers(3))]
        canvas = np.zeros((40, 40), dtype=bool)
        y, x = (int(v) for v in rng.integers(0, 10, size=2))
        canvas[y:y + h, x:x + w] = shape_template(sh, h, w)
        assert classify_shape(canvas) == sh, (sh, h, w)
    assert classify_shape(np.zeros((5, 5), dtype=bool)) is None


def test_color_labels_match_a_per_pixel_reference(rng):
    table = np.array(list(COLORS.values()), dtype=np.int64)
    v = rng.integers(0, 256, size=(2, 5, 7, 3)).astype(np.uint8)
    v[0, 0, :4] = table[:4] + rng.integers(-20, 21, size=(4, 3))
    lab = color_labels(v)
    for idx in np.ndindex(v.shape[:3]):
        d = np.sqrt(((table - v[idx].astype(np.int64)) ** 2).sum(1))
        want = int(d.argmin()) if d.min() <= 60 else -1
        assert lab[idx] == want


def test_bad_inputs_raise_project_errors():
    s = ShapesWorld(4, 16, 16).sample(1)
    with pytest.raises(VideoError, match="uint8"):
        score_video(s.video.astype(np.float32), s.graph)
    with pytest.raises(VideoError, match="shape"):
        score_video(s.video[..., 0], s.graph)
    with pytest.raises(GraphError):
        score_video(s.video, {"objects": ["red blob"], "relationships": []})
    with pytest.raises(VideoError, match="one graph per video"):
        score_batch([s.video], [])
