"""Relation rules on tracks: shapes-world rules agree with the oracle, COCO rules with sg2im's definition."""

from __future__ import annotations

import numpy as np
import pytest

from sg2v.relations import (
    RULES,
    batch_all_hold,
    check_layout,
    contradictions,
    margin_of,
    rule_slack,
    rules_for,
)
from sg2v.shapes import PREDICATES, ShapesWorld, score_video

SHAPES_RULES = rules_for(PREDICATES)


def _random_tracks(rng, n, frames, side=(8, 12), canvas=64):
    """Squares on the pixel grid, linear motion: n tracks (n, F, 4) in [0, 1] and their pixel motion."""
    from sg2v.shapes.world import Motion

    sizes = rng.integers(side[0], side[1] + 1, size=n)
    room = np.stack([canvas - sizes, canvas - sizes], -1).astype(np.float64)
    motion = Motion(sizes.astype(np.int64), rng.random((n, 2)) * room, rng.random((n, 2)) * room)
    return motion.boxes(frames) / canvas, motion


def test_shapes_rules_on_square_boxes_agree_with_the_oracle():
    """Squares' pixel centroids are their box centres: the rule and the oracle see the same geometry."""
    rng = np.random.default_rng(2024)
    world = ShapesWorld(frames=8, height=64, width=64)
    agree = total = 0
    for _ in range(60):
        tracks, motion = _random_tracks(rng, 2, 8)
        graph = {"objects": ["red square", "blue square"], "relationships": []}
        a, b = tracks
        overlap = ((a[:, 0] < b[:, 2]) & (b[:, 0] < a[:, 2])
                   & (a[:, 1] < b[:, 3]) & (b[:, 1] < a[:, 3])).any()
        if overlap:  # occlusion moves the visible centroid away from the box centre
            continue
        sample = world.render(graph, motion)
        for pred in PREDICATES:
            rel = {"objects": graph["objects"], "relationships": [[0, pred, 1]]}
            oracle = score_video(sample.video, rel).relations[0]
            slack = float(rule_slack(SHAPES_RULES[pred], tracks[0], tracks[1]))
            if oracle.slack is None or abs(oracle.slack) < 1e-6:
                continue
            agree += (slack > 0) == oracle.holds
            total += 1
            # same slack: the oracle's is in pixels, the rule's in frame widths
            assert slack == pytest.approx(oracle.slack / 64, abs=1e-6)
    assert total > 200 and agree == total


def test_coco_rules_match_sg2im_definition():
    """The runtime's COCO rules hold exactly for the predicate the COCO-Stuff converter labels a pair with
    (sg2im's definition, `sg2v.dataset.coco.predicate`: surrounding / inside first, else the angle sector of
    the centre offset)."""
    from sg2v.dataset.coco import predicate

    rng = np.random.default_rng(7)

    def reference(s, o):
        return predicate(s, o, ((s[0] + s[2]) / 2, (s[1] + s[3]) / 2), ((o[0] + o[2]) / 2, (o[1] + o[3]) / 2))

    coco = rules_for(["left of", "right of", "above", "below", "inside", "surrounding"], "coco")
    for _ in range(400):
        boxes = []
        for _ in range(2):
            a = rng.uniform(0, 0.8, 2)
            boxes.append(np.concatenate([a, a + rng.uniform(0.02, 1 - a.max(), 2)]))
        s, o = boxes
        want = reference(s, o)
        holding = [p for p, r in coco.items() if rule_slack(r, s[None], o[None]) > 0]
        assert holding == [want], (s, o, holding, want)


def test_check_layout_reports_each_relation_and_unchecked_predicates():
    rng = np.random.default_rng(3)
    tracks, _ = _random_tracks(rng, 3, 6)
    rels = [[0, "left of", 1], [1, "approaching", 2], [2, "holding", 0]]
    checks = check_layout(tracks, rels, SHAPES_RULES)
    assert [c.predicate for c in checks] == ["left of", "approaching", "holding"]
    assert checks[2].rule is None and checks[2].holds is None
    for c in checks[:2]:
        slack = float(rule_slack(c.rule, tracks[c.subject], tracks[c.object]))
        assert c.slack == pytest.approx(slack) and c.holds == (slack > margin_of(c.rule))
    # the batched form agrees with the per-candidate one
    cands = np.stack([_random_tracks(rng, 3, 6)[0] for _ in range(32)])
    want = [all(c.holds is not False for c in check_layout(k, rels, SHAPES_RULES)) for k in cands]
    np.testing.assert_array_equal(batch_all_hold(cands, rels, SHAPES_RULES), want)


def test_contradictions_find_cycles_and_pass_consistent_graphs():
    assert contradictions([[0, "left of", 1], [1, "left of", 0]], SHAPES_RULES)
    assert contradictions([[0, "left of", 1], [0, "right of", 1]], SHAPES_RULES)
    found = contradictions([[0, "above", 1], [1, "above", 2], [2, "above", 0]], SHAPES_RULES)
    assert len(found) == 1 and "cannot all hold" in found[0]
    assert not contradictions([[0, "left of", 1], [1, "left of", 2], [0, "above", 2]], SHAPES_RULES)
    assert not contradictions([[0, "approaching", 1], [1, "approaching", 0]], SHAPES_RULES)


def test_rule_tables_name_known_rules_only():
    assert set(SHAPES_RULES.values()) <= set(RULES)
    assert rules_for(["on", "holding"]) == {}
    with pytest.raises(ValueError, match="unknown relation-rule family"):
        rules_for(["left of"], "vg")
