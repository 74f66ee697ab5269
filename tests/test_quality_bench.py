"""bench/quality.py on a guidance-distilled student and beside its teacher (--compare): the student's own
step counts, the three-stage tables, the side-by-side end-to-end table, rows equal to scoring the pipeline's
own videos, and a step count the student was not distilled for refused before anything is sampled."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sg2v.quality import heldout_graphs, score_videos
from sg2v.runtime import Pipeline

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_student_beside_its_teacher(student_bundle, grounded_bundle, tmp_path, capsys):
    quality = _quality()
    out = tmp_path / "q.json"
    argv = ["--bundle", str(student_bundle), "--n", "3", "--threads", "1", "--guidance", "3",
            "--compare", str(grounded_bundle), "--compare-steps", "2", "4", "--layout-tries", "2",
            "--json", str(out), "--table", str(tmp_path / "q.md")]
    assert quality.main(argv) == 0
    rep = json.loads(out.read_text())
    assert [r["steps"] for r in rep["rows"]] == [1, 2, 4]  # the student's first three distilled step counts
    assert all(r["sampler"] == "ddim" and r["guidance"] == 3.0 for r in rep["rows"])
    assert [r["steps"] for r in rep["true_layout_rows"]] == [2]  # the student's default steps
    assert rep["layout_stage"] is not None
    assert [r["steps"] for r in rep["compare"]["rows"]] == [2, 4]
    assert rep["compare"]["bundle"] == str(grounded_bundle)
    # a row is the oracle's score of the pipeline's own videos of the held-out graphs (graph i: seed i)
    pipe = Pipeline.from_bundle(student_bundle, backend="ort", threads=1)
    graphs = heldout_graphs(pipe.bundle.config, 3, 0)
    want = score_videos(pipe.generate(graphs, [0, 1, 2], steps=2, guidance=3.0), graphs)
    got = rep["rows"][1]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    table = (tmp_path / "q.md").read_text()
    assert "End to end, side by side:" in table and "guidance-distilled student" in table
    assert "| test-tiny-grounded-student | student | 3 | 1 |" in table
    assert "| test-tiny-grounded | CFG | 3 | 4 |" in table
    assert "Layout stage alone" in table and "Video given the true tracks" in table


def test_a_step_count_the_student_was_not_distilled_for_is_refused(student_bundle, tmp_path, capsys):
    quality = _quality()
    assert quality.main(["--bundle", str(student_bundle), "--n", "2", "--steps", "1", "3",
                         "--json", str(tmp_path / "q.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("quality: error: 3 steps: this student was distilled for [1, 2, 4] steps"), err
    assert "\n" not in err and not (tmp_path / "q.json").exists()


def test_geometry_metrics_on_the_worlds_own_renders():
    """Overlap frames, occlusion and pinned tracks judged on videos the shapes world draws (later objects on
    top) from hand-made motions, against what those motions make true."""
    import numpy as np

    from sg2v.shapes.world import Motion, ShapesWorld

    quality = _quality()
    world = ShapesWorld()
    graph = {"objects": ["red square", "blue circle", "green triangle"], "relationships": []}
    f = world.frames
    # blue sits on red for the whole clip (covering half of it); green stays apart
    motion = Motion(np.array([12, 12, 10]), np.array([[10.0, 10.0], [16.0, 10.0], [40.0, 40.0]]),
                    np.array([[10.0, 10.0], [16.0, 10.0], [40.0, 40.0]]))
    sample = world.render(graph, motion)
    tracks = sample.boxes / 64.0
    m = quality.layout_geometry_metrics([sample.video], [graph], [tracks], [])
    assert m["overlap_frames"] == f and m["occluded_pairs"] == f and m["later_whole"] == 1.0
    # the same tracks drawn with the earlier object on top: the later one is cut in every such frame
    swapped = world.render({"objects": graph["objects"][::-1], "relationships": []},
                           Motion(motion.sizes[::-1], motion.start[::-1], motion.end[::-1]))
    m = quality.layout_geometry_metrics([swapped.video], [graph], [tracks], [])
    assert m["overlap_frames"] == f and m["later_whole"] == 0.0
    # object 0 pinned: its pixels are in its box in every frame; blue lies over it in every frame
    m = quality.layout_geometry_metrics([sample.video], [graph], [tracks], [0])
    assert m["pinned_in_box"] == 1.0 and m["pinned_overlap_frames"] == f
    starts = np.array([[2.0, 2.0], [30.0, 2.0], [2.0, 40.0]])
    ends = np.array([[2.0, 2.0], [30.0, 2.0], [40.0, 40.0]])  # green moves, never onto another
    apart = world.render(graph, Motion(np.array([12, 12, 10]), starts, ends))
    m = quality.layout_geometry_metrics([apart.video], [graph], [apart.boxes / 64.0], [0])
    assert m["overlap_frames"] == 0 and m["later_whole"] is None and m["pinned_overlap_frames"] == 0
    moved = apart.boxes / 64.0 + np.float32(0.3)  # the pinned box elsewhere: its pixels are not in it
    m = quality.layout_geometry_metrics([apart.video], [graph], [moved], [0])
    assert m["pinned_in_box"] == 0.0


def test_layout_timing_table_measures_each_variant_and_restores_the_settings(grounded_bundle):
    quality = _quality()
    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort")
    before = dict(pipe.generator.layout)
    table = quality.layout_timing_table(pipe, 3, 0, 1, ["unchecked", "bundle"])
    assert pipe.generator.layout == before  # the variants were set for the measurement only
    rows = [line for line in table.splitlines() if line.startswith(("| unchecked", "| bundle"))]
    assert len(rows) == 2
    # the bundle row's figures are those of the bundle's own layouts for the same graphs and seeds
    from sg2v.geometry import check_geometry, from_entry
    from sg2v.graph import pad_graphs

    cfg = pipe.bundle.config
    parsed = [pipe.parse(g) for g in heldout_graphs(cfg, 3, 0)]
    feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
    kept = pipe.generator.draw_layouts(feeds, [0, 1, 2], parsed)
    geometry = from_entry(before["geometry"])
    held = sum(all(c.holds for c in check_geometry(r.tracks, geometry)) for r in kept) / 3
    draws = sum(r.draws for r in kept) / 3
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[4] == f"{100 * held:.1f}%" and cells[6] == f"{draws:.2f}"
    pipe.close()


def test_occlusion_scenes_drawn_by_the_world_show_the_later_object_whole():
    """The hand-made overlap scenes: object 1 moves onto still object 0; the world draws it on top, so it is
    whole in every overlap frame, and drawn underneath instead it is cut in them."""
    import numpy as np

    from sg2v.geometry import pair_overlaps
    from sg2v.shapes.world import COLORS, Motion, ShapesWorld

    quality = _quality()
    seed = int(np.random.default_rng().integers(1 << 30))
    graphs, motions = quality.occlusion_scenes(16, 64, 64, 12, seed)
    world = ShapesWorld()
    tracks = [m.boxes(16) / 64.0 for m in motions]
    for g, m in zip(graphs, motions):
        assert len(set(n.split()[0] for n in g["objects"])) == 2 and (m.start[0] == m.end[0]).all()
    drawn = [world.render(g, m).video for g, m in zip(graphs, motions)]  # raises if a box leaves the canvas
    got = quality.layout_geometry_metrics(drawn, graphs, tracks, [])
    assert got["occluded_pairs"] >= 12 and got["later_whole"] == 1.0, seed  # every scene overlaps
    assert got["later_whole_alone"] == 1.0 and got["alone_frames"] > 0, seed  # the world's drawing is exact
    # the noise control: object 1 loses half its pixels in every third frame where its box overlaps nothing
    # (fewer than half of them, so its median count stays whole and exactly those frames fail)
    noisy = [v.copy() for v in drawn]
    removed = seen = 0
    for v, g, t in zip(noisy, graphs, tracks):
        color = np.array(COLORS[g["objects"][1].split()[0]], np.uint8)
        alone = np.flatnonzero(pair_overlaps(t)[1].max(axis=0) == 0)
        for k in (alone[::3] if len(alone) >= 3 else []):
            ys, xs = np.nonzero((v[k] == color).all(-1))
            v[k, ys[::2], xs[::2]] = 0
            removed += 1
        seen += len(alone)
    got = quality.layout_geometry_metrics(noisy, graphs, tracks, [])
    assert removed > 0 and got["alone_frames"] == seen, seed
    assert got["later_whole_alone"] == pytest.approx(1 - removed / seen), seed
    under = [world.render({"objects": g["objects"][::-1], "relationships": []},
                          Motion(m.sizes[::-1], m.start[::-1], m.end[::-1])).video
             for g, m in zip(graphs, motions)]
    assert quality.layout_geometry_metrics(under, graphs, tracks, [])["later_whole"] < 0.5, seed


def test_occlusion_scenes_option_measures_the_pinned_scenes(grounded_bundle, tmp_path, capsys):
    quality = _quality()
    out = tmp_path / "q.json"
    assert quality.main(["--bundle", str(grounded_bundle), "--n", "2", "--steps", "2", "--threads", "1",
                         "--no-layout-stage", "--true-steps", "--geometry-rows", "--occlusion-scenes", "3",
                         "--seed", "7", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    [row] = rep["occlusion_rows"]
    assert row["steps"] == 2 and row["n"] == 3 and row["world_whole"] == 1.0
    # the row is layout_geometry_metrics of the pipeline's videos of the scenes with both tracks pinned
    pipe = Pipeline.from_bundle(grounded_bundle, backend="ort", threads=1)
    d = pipe.bundle.config.data
    graphs, motions = quality.occlusion_scenes(d.frames, d.height, d.width, 3, 7)
    tracks = [m.boxes(d.frames) / [d.width, d.height, d.width, d.height] for m in motions]
    frames = pipe.generate(graphs, [7, 8, 9], steps=2, layouts=[dict(enumerate(t)) for t in tracks])
    want = quality.layout_geometry_metrics(frames, graphs, tracks, [])
    assert (row["occluded_pairs"], row["later_whole"]) == (want["occluded_pairs"], want["later_whole"])
    assert all(r["pixel_shape"] is None or 0 <= r["pixel_shape"] <= 1 for r in rep["rows"])
    assert "Occlusion scenes" in capsys.readouterr().out
    pipe.close()
