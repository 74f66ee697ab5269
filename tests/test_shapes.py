"""Shapes world: the generator against specs/shapes-world.md, checked by slow obvious reimplementations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sg2v.errors import GraphError
from sg2v.shapes import (
    COLORS,
    OBJECT_NAMES,
    PREDICATES,
    SHAPES,
    Motion,
    ShapesDataset,
    ShapesError,
    ShapesWorld,
    score_video,
    shape_template,
)
from sg2v.shapes.__main__ import main
from sg2v.shapes.world import size_range

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "graphs").glob("*.json"))
SIZES = [(4, 16, 16), (16, 32, 32), (16, 64, 64), (5, 24, 40)]


def _ref_holds(pred: str, cs: list[tuple[float, float]], co: list[tuple[float, float]], width: int) -> bool:
    """The spec's predicate table, written out with Python floats."""
    f = len(cs)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    if pred == "left of":
        return mean([c[0] for c in cs]) < mean([c[0] for c in co]) - 0.1 * width
    if pred == "right of":
        return mean([c[0] for c in cs]) > mean([c[0] for c in co]) + 0.1 * width
    if pred == "above":
        return mean([c[1] for c in cs]) < mean([c[1] for c in co]) - 0.1 * width
    if pred == "below":
        return mean([c[1] for c in cs]) > mean([c[1] for c in co]) + 0.1 * width
    q = max(1, f // 4)
    d = [((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 for a, b in zip(cs, co)]
    first, last = mean(d[:q]), mean(d[f - q:])
    return last < 0.75 * first if pred == "approaching" else last > 1.33 * first


def _ref_centroids(mask: np.ndarray) -> list[tuple[float, float]]:
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        out.append((float(np.mean(xs + 0.5)), float(np.mean(ys + 0.5))))
    return out


@pytest.mark.parametrize("frames,height,width", SIZES)
def test_samples_follow_the_spec(frames, height, width, rng):
    world = ShapesWorld(frames, height, width)
    lo, hi = size_range(height, width)
    palette = {(r << 16) | (g << 8) | b for r, g, b in [*COLORS.values(), (0, 0, 0)]}
    seeds = rng.integers(0, 2**31, size=25 if height * width <= 1024 else 8)
    for seed in seeds:
        s = world.sample(int(seed))
        names = s.graph["objects"]
        n = len(names)
        assert 1 <= n <= 4 and all(nm in OBJECT_NAMES for nm in names)
        colors = [nm.split()[0] for nm in names]
        assert len(set(colors)) == n
        assert s.video.shape == (frames, height, width, 3) and s.video.dtype == np.uint8
        assert s.masks.shape == (n, frames, height, width) and s.masks.dtype == bool
        assert s.centroids.shape == (n, frames, 2) and s.boxes.shape == (n, frames, 4)
        v = s.video.astype(np.int64)
        packed = (v[..., 0] << 16) | (v[..., 1] << 8) | v[..., 2]
        assert set(np.unique(packed).tolist()) <= palette
        # masks are exactly the pixels of each object's color, and the rest is black
        for i in range(n):
            col = np.array(COLORS[colors[i]], dtype=np.uint8)
            assert np.array_equal((s.video == col).all(-1), s.masks[i])
        assert np.array_equal(s.masks.any(0), s.video.any(-1))
        for i, nm in enumerate(names):
            shape = nm.split()[1]
            x0, y0, x1, y1 = s.boxes[i].T.astype(int)
            side = x1 - x0
            assert (side == y1 - y0).all() and (side == side[0]).all() and lo <= side[0] <= hi
            assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
            # straight line at constant velocity on the pixel grid: rounding moves a corner by at most 1 px
            if frames >= 3:
                assert np.abs(np.diff(x0, 2)).max() <= 1 and np.abs(np.diff(y0, 2)).max() <= 1
            t = shape_template(shape, int(side[0]), int(side[0]))
            for k in range(frames):
                crop = s.masks[i, k, y0[k]:y1[k], x0[k]:x1[k]]
                assert np.array_equal(crop, t), "objects never overlap, so each mask is its whole shape"
            assert np.allclose(s.centroids[i], _ref_centroids(s.masks[i]), atol=1e-4)
        rels = s.graph["relationships"]
        assert 0 <= len(rels) <= 4
        for a, p, b in rels:
            assert p in PREDICATES and a != b
            assert _ref_holds(p, _ref_centroids(s.masks[a]), _ref_centroids(s.masks[b]), width)


def test_sample_is_deterministic_and_seeds_differ():
    w = ShapesWorld(8, 32, 32)
    a, b, c = w.sample(123), w.sample(123), w.sample(124)
    assert a.graph == b.graph and np.array_equal(a.video, b.video) and np.array_equal(a.masks, b.masks)
    assert a.graph != c.graph or not np.array_equal(a.video, c.video)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(w.sample(r1).video, w.sample(r2).video)


def test_generator_covers_every_predicate_and_object_count():
    w = ShapesWorld(8, 32, 32)
    preds, counts, rel_counts = set(), set(), set()
    for seed in range(300):
        g = w.sample(seed).graph
        counts.add(len(g["objects"]))
        rel_counts.add(len(g["relationships"]))
        preds |= {p for _, p, _ in g["relationships"]}
    assert preds == set(PREDICATES)
    assert counts == {1, 2, 3, 4} and rel_counts == {0, 1, 2, 3, 4}


def test_generated_relations_are_never_contradictory():
    w = ShapesWorld(8, 32, 32)
    for seed in range(200):
        facts = set()
        for a, p, b in w.sample(seed).graph["relationships"]:
            if p in ("left of", "above"):
                facts.add((p, a, b))
            elif p in ("right of", "below"):
                facts.add(({"right of": "left of", "below": "above"}[p], b, a))
            else:
                facts.add((p, min(a, b), max(a, b)))
        for p, a, b in facts:
            assert (p, b, a) not in facts or p in ("approaching", "moving away from")
        pairs = {(a, b) for p, a, b in facts if p == "approaching"}
        assert not pairs & {(a, b) for p, a, b in facts if p == "moving away from"}


def test_templates_fill_their_box_differ_and_tend_to_their_areas():
    for s in range(3, 25):
        ts = [shape_template(sh, s, s) for sh in SHAPES]
        for t in ts:
            assert t.any(0).all() and t.any(1).all()
        assert not np.array_equal(ts[0], ts[1]) and not np.array_equal(ts[0], ts[2])
        assert not np.array_equal(ts[1], ts[2])
    big = {sh: shape_template(sh, 301, 301).mean() for sh in SHAPES}
    assert abs(big["circle"] - np.pi / 4) < 0.01 and abs(big["triangle"] - 0.5) < 0.01
    assert big["square"] == 1.0


def test_size_range_is_12_to_20_percent():
    assert size_range(64, 64) == (8, 12)
    assert size_range(32, 32) == (4, 6)
    assert size_range(16, 16) == (3, 3)
    assert size_range(100, 200) == (12, 20)


def test_render_graph_satisfies_relations_and_render_is_usable_alone(rng):
    w = ShapesWorld(12, 48, 48)
    g = {"objects": ["red circle", "blue square", "green triangle"],
         "relationships": [[0, "left of", 1], [2, "approaching", 0], [1, "above", 2]]}
    s = w.render_graph(g, seed=int(rng.integers(1 << 30)))
    r = score_video(s.video, g)
    assert r.relation_accuracy == 1.0 and r.presence == 1.0
    motion = Motion(np.array([6, 7]), np.array([[1.0, 2.0], [30.0, 20.0]]),
                    np.array([[10.0, 2.0], [30.0, 40.0]]))
    s2 = w.render({"objects": ["white square", "cyan circle"], "relationships": []}, motion)
    assert np.array_equal(s2.boxes[0, 0], [1, 2, 7, 8]) and np.array_equal(s2.boxes[0, -1], [10, 2, 16, 8])
    assert (s2.video[0, 2:8, 1:7] == COLORS["white"]).all()


def test_render_draws_in_graph_order():
    w = ShapesWorld(2, 32, 32)
    still = np.array([[10.0, 10.0], [12.0, 12.0]])
    m = Motion(np.array([6, 6]), still, still)
    s = w.render({"objects": ["red square", "blue square"], "relationships": []}, m)
    assert (s.video[:, 12:18, 12:18] == COLORS["blue"]).all()  # later on top
    assert not s.masks[0, :, 12:18, 12:18].any() and s.masks[0, :, 10:12, 10:16].all()


@pytest.mark.parametrize("graph,match", [
    ({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1], [1, "left of", 0]]},
     "no motion found"),
    ({"objects": ["red circle", "red square"], "relationships": []}, "distinct colors"),
    ({"objects": ["purple circle"], "relationships": []}, "not in vocabulary"),
])
def test_bad_graphs_raise_graph_error(graph, match):
    with pytest.raises(GraphError, match=match):
        ShapesWorld(4, 16, 16).render_graph(graph, seed=0, tries=500)


def test_motion_outside_canvas_is_rejected():
    m = Motion(np.array([5]), np.array([[0.0, 0.0]]), np.array([[30.0, 0.0]]))
    with pytest.raises(ShapesError, match="leaves the"):
        ShapesWorld(4, 32, 32).render({"objects": ["red circle"], "relationships": []}, m)
    with pytest.raises(ShapesError):
        ShapesWorld(4, 4, 32)


def test_dataset_is_index_addressable_and_splits_differ():
    a = ShapesDataset(seed=7, length=6, frames=4, height=16, width=16)
    b = ShapesDataset(seed=7, length=6, frames=4, height=16, width=16)
    h = ShapesDataset(seed=7, length=6, split="heldout", frames=4, height=16, width=16)
    assert len(a) == 6
    for i in (5, 0, 3):
        assert a[i].graph == b[i].graph and np.array_equal(a[i].video, b[i].video)
    assert np.array_equal(a[-1].video, a[5].video)
    assert sum(np.array_equal(a[i].video, h[i].video) for i in range(6)) < 2
    assert sum(np.array_equal(a[i].video, a[i + 1].video) for i in range(5)) < 2
    with pytest.raises(IndexError):
        a[6]
    with pytest.raises(ShapesError, match="split"):
        ShapesDataset(split="test")


def _ref_cover(boxes: np.ndarray) -> float:
    """The most one box covers of a smaller (or equal) one's area, over pairs and frames: Python loops."""
    best = 0.0
    n, f = boxes.shape[:2]
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            for k in range(f):
                ax0, ay0, ax1, ay1 = boxes[a, k].tolist()
                bx0, by0, bx1, by1 = boxes[b, k].tolist()
                inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
                small = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
                best = max(best, inter / small)
    return best


def test_overlapping_scenes_overlap_draw_in_graph_order_and_keep_their_relations(rng):
    """`sample_overlapping_scene`: 2+ objects, a box covering a quarter of another in some frame (a loop
    reference), drawn later-on-top, relations true for the unoccluded centroids; the generator itself never
    overlaps (cover 0 on its scenes)."""
    world = ShapesWorld(16, 64, 64)
    hidden = 0
    for seed in rng.integers(0, 2**31, size=12):
        graph, motion = world.sample_overlapping_scene(int(seed))
        boxes = motion.boxes(16).astype(np.float64)
        assert len(graph["objects"]) >= 2 and _ref_cover(boxes) >= 0.25
        s = world.render(graph, motion)
        n = len(graph["objects"])
        tl = boxes[..., :2].astype(int)
        for i, nm in enumerate(graph["objects"]):
            t = shape_template(nm.split()[1], int(motion.sizes[i]), int(motion.sizes[i]))
            for k in range(16):
                x, y = tl[i, k]
                whole = np.zeros_like(s.masks[i, k])
                whole[y:y + t.shape[0], x:x + t.shape[1]] = t
                later = s.masks[i + 1:, k].any(0) if i + 1 < n else np.zeros_like(whole)
                # each object shows exactly its shape less what later objects cover
                assert np.array_equal(s.masks[i, k], whole & ~later)
                hidden += int((whole & later).any())
        c = ShapesWorld._centroids(tl[None].astype(np.float64), [nm.split()[1] for nm in graph["objects"]],
                                   motion.sizes)[0]
        for a, p, b in graph["relationships"]:
            assert _ref_holds(p, [tuple(x) for x in c[a]], [tuple(x) for x in c[b]], 64)
        g2, m2 = world.sample_scene(int(seed))
        assert _ref_cover(m2.boxes(16).astype(np.float64)) == 0.0
    assert hidden > 0
    with pytest.raises(ShapesError, match="2 or more objects"):
        ShapesWorld(4, 32, 32, max_objects=1).sample_overlapping_scene(0)


def test_dataset_overlap_prob_mixes_overlapping_scenes_and_keeps_the_others():
    """overlap_prob p: about p of the samples overlap (their own coin stream); every other sample is the
    one p = 0 gives, and the same seed gives the same data."""
    kw = dict(seed=3, length=400, frames=8, height=32, width=32)
    plain, mixed = ShapesDataset(**kw), ShapesDataset(overlap_prob=0.3, **kw)
    again = ShapesDataset(overlap_prob=0.3, **kw)
    n_over = 0
    for i in range(0, 400, 4):
        m, p = mixed[i], plain[i]
        cover = _ref_cover(m.boxes.astype(np.float64))
        if cover > 0:
            n_over += 1
            assert cover >= 0.25
        else:
            assert m.graph == p.graph and np.array_equal(m.video, p.video)
        assert np.array_equal(m.video, again[i].video)
    assert 15 <= n_over <= 45  # 100 draws of p = 0.3
    with pytest.raises(ShapesError, match="overlap_prob"):
        ShapesDataset(overlap_prob=1.5)


def test_names_agree_with_the_vocabulary_file():
    vocab_file = ROOT / "sg2v" / "data" / "shapes_vocab.json"
    if not vocab_file.exists():
        pytest.skip("sg2v/data/shapes_vocab.json not written yet")
    v = json.loads(vocab_file.read_text())
    assert v["object_idx_to_name"] == ["__image__", *OBJECT_NAMES]
    assert v["pred_idx_to_name"] == ["__in_image__", *PREDICATES]


def test_examples_cover_the_domain_and_render_to_full_oracle_scores(rng):
    assert len(EXAMPLES) >= 12
    counts, preds = set(), set()
    w = ShapesWorld()
    for path in EXAMPLES:
        g = json.loads(path.read_text())
        assert isinstance(g.get("description"), str) and g["description"]
        counts.add(len(g["objects"]))
        preds |= {p for _, p, _ in g["relationships"]}
        s = w.render_graph(str(path), seed=int(rng.integers(1 << 30)))
        r = score_video(s.video, g)
        assert r.presence == 1.0 and r.shape_accuracy == 1.0 and r.relation_accuracy in (None, 1.0), path.name
    assert counts == {1, 2, 3, 4} and preds == set(PREDICATES)
    readme = (ROOT / "examples" / "graphs" / "README.md").read_text()
    assert all(p.name in readme for p in EXAMPLES)


def test_cli_render_sample_score(tmp_path, capsys):
    out = tmp_path / "new" / "v.npy"  # missing folders are created
    assert main(["render", "--graph", str(EXAMPLES[-1]), "--out", str(out), "--frames", "8", "--size", "32",
                 "--sheet", str(tmp_path / "sheets" / "v.png")]) == 0
    assert out.exists() and (tmp_path / "sheets" / "v.png").exists()
    capsys.readouterr()
    assert main(["score", str(out), "--graph", str(EXAMPLES[-1])]) == 0
    assert "relations 100.0%" in capsys.readouterr().out
    assert main(["sample", "--n", "2", "--out", str(tmp_path / "s"), "--frames", "4", "--size", "16"]) == 0
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["sample_000.gif", "sample_000.json", "sample_000.png",
                     "sample_001.gif", "sample_001.json", "sample_001.png"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"objects": ["red circle", "blue square"], '
                   '"relationships": [[0, "above", 1], [1, "above", 0]]}')
    capsys.readouterr()
    assert main(["render", "--graph", str(bad), "--out", str(tmp_path / "b.npy"), "--tries", "300"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m sg2v.shapes: invalid graph: ") and err.count("\n") == 1
    assert not (tmp_path / "b.npy").exists()


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = capsys.readouterr().out
    assert "default: 16" in text and "default: 20000" in text
