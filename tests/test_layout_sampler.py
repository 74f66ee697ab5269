"""The layout stage's draw / check / redraw loop against a stand-in network with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from sg2v.geometry import Geometry, batch_geometry_ok, pair_overlaps
from sg2v.layout_sampler import LayoutSampler, layout_noise, relation_summary, tracks_from_unit
from sg2v.relations import check_layout, rules_for
from sg2v.schedule import make_alphas_cumprod
from sg2v.shapes import PREDICATES

AC = make_alphas_cumprod(1000, "cosine_zsnr")
RULES = rules_for(PREDICATES)
O, F = 4, 6


class XNet:
    """An x0-predicting stand-in: predicts a random-looking track from x_T's first frame, so each draw is a
    different but deterministic layout (x0 = tanh of a fixed mix of x), converted to v like the real net."""

    def __init__(self, seed: int):
        self.mix = np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)
        self.calls = []

    def __call__(self, feeds):
        x, t = feeds["x"], float(feeds["t"][0])
        self.calls.append(x.shape[0])
        a, s = np.sqrt(AC[int(t)]), np.sqrt(1 - AC[int(t)])
        base = np.tanh(x[:, :, :1] @ self.mix) * 0.7  # (n, O, 1, 4): static per object
        x0 = np.repeat(base, F, axis=2)
        return {"v": ((a * x - x0) / s).astype(np.float32)}


def _cond(b):
    rng = np.random.default_rng(1)
    return {"objects": rng.standard_normal((b, O, 8)).astype(np.float32),
            "context": rng.standard_normal((b, 7, 8)).astype(np.float32),
            "context_mask": np.ones((b, 7), np.float32),
            "triples": np.zeros((b, 6, 3), np.int64)}


def _sampler(net, **kw):
    return LayoutSampler(net, AC, F, 64, 64, RULES, steps=4, **kw)


def test_first_satisfying_draw_is_kept_and_same_alone_or_batched():
    rels = [[[0, "left of", 1]], [[1, "above", 2], [0, "right of", 2]], []]
    counts = [2, 3, 2]
    seeds = [5, 9, 11]
    net = XNet(0)
    batched = _sampler(net, tries=12, per_round=4).draw(_cond(3), rels, counts, [{}, {}, {}], seeds)
    for i in range(3):
        alone = _sampler(XNet(0), tries=12, per_round=4).draw(
            {k: v[i:i + 1] for k, v in _cond(3).items()}, [rels[i]], [counts[i]], [{}], [seeds[i]])[0]
        np.testing.assert_array_equal(alone.tracks, batched[i].tracks)
        assert alone.draws == batched[i].draws
    for r, rel, n in zip(batched, rels, counts):
        assert r.tracks.shape == (n, F, 4)
        assert r.satisfied == all(c.holds for c in check_layout(r.tracks, rel, RULES))
    assert batched[2].draws == 1  # nothing to check: one draw
    # reference: each candidate sampled alone, in draw order (the slow obvious way); the kept one is the
    # first that satisfies every rule
    from sg2v.sampling import sample_dpmpp_2m
    from sg2v.schedule import timesteps

    i = 1
    cands = []
    for round_ in range(3):
        for x in layout_noise(seeds[i], round_, 4, (O, F, 4)):
            def den(xt, t):
                return XNet(0)({"x": xt, "t": np.full((1,), t, np.float32)})["v"]
            xt = sample_dpmpp_2m(den, x[None], timesteps(1000, 4, "trailing"), AC)
            cands.append(tracks_from_unit(xt, 64, 64)[0, :counts[i]])
    first = next(j for j, c in enumerate(cands) if all(x.holds for x in check_layout(c, rels[i], RULES)))
    assert batched[i].draws == first + 1 > 4  # this seed needs a second round
    np.testing.assert_allclose(batched[i].tracks, cands[first], atol=1e-6)
    # a seed whose 12 draws all fail keeps the draw with the most relations holding
    miss = _sampler(XNet(0), tries=12, per_round=4).draw(_cond(1), [rels[1]], [3], [{}], [0])[0]
    assert miss.draws == 12 and not miss.satisfied and "not met by the layout" in relation_summary(miss)
    assert sum(c.holds for c in miss.relations) == 1


def test_pinned_tracks_stay_exact_and_unsatisfiable_graphs_report():
    rng = np.random.default_rng(3)
    pinned = rng.uniform(0.1, 0.6, size=(F, 2))
    track = np.concatenate([pinned, pinned + 0.2], -1).astype(np.float32)
    r = _sampler(XNet(1), tries=8, per_round=4).draw(_cond(1), [[[0, "left of", 1]]], [3], [{1: track}],
                                                      [2])[0]
    np.testing.assert_array_equal(r.tracks[1], track)
    assert r.pinned == [1]
    contra = _sampler(XNet(1), tries=8).draw(_cond(1), [[[0, "left of", 1], [1, "left of", 0]]], [2], [{}],
                                             [0])[0]
    assert contra.draws == 1 and not contra.satisfied and contra.contradictions
    assert "contradictory" in relation_summary(contra)
    # all tracks given: nothing is drawn, the relation is still checked
    both = {0: track, 1: track}
    given = _sampler(XNet(1)).draw(_cond(1), [[[0, "left of", 1]]], [2], [both], [0])[0]
    assert given.draws == 0 and given.satisfied is False
    assert "not met by the given tracks" in relation_summary(given)


def test_tracks_from_unit_makes_valid_boxes():
    x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(50, F, 4))
    b = tracks_from_unit(x, 64, 64)
    assert (b >= 0).all() and (b <= 1).all()
    assert (b[..., 2] - b[..., 0] >= 1 / 64 - 1e-6).all() and (b[..., 3] - b[..., 1] >= 1 / 64 - 1e-6).all()
    with pytest.raises(ValueError, match="tries"):
        LayoutSampler(XNet(0), AC, F, 64, 64, RULES, tries=0)


CLEAR = Geometry(0.0, None, None, True, "shapes world")  # no overlap, inside the canvas; any size


def _alone(net_seed, count, pinned, seed, tries, per_round):
    """Reference: each candidate sampled alone in draw order (the slow obvious way), pinned tracks put back
    (the stand-in ignores its known-track inputs)."""
    from sg2v.layout_sampler import round_sizes
    from sg2v.sampling import sample_dpmpp_2m
    from sg2v.schedule import timesteps

    cands = []
    for round_, k in enumerate(round_sizes(tries, per_round)):
        for x in layout_noise(seed, round_, k, (O, F, 4)):
            def den(xt, t):
                feeds = {"x": xt, "t": np.full((1,), t, np.float32)}
                return XNet(net_seed)(feeds)["v"]
            xt = sample_dpmpp_2m(den, x[None], timesteps(1000, 4, "trailing"), AC)
            c = tracks_from_unit(xt, 64, 64)[0, :count]
            for j, tr in pinned.items():
                c[j] = tr
            cands.append(c)
    return cands


def test_a_drawn_object_keeps_clear_of_a_pinned_one():
    # a pinned box across the middle of the frame that the stand-in's first draws run into
    pinned = {0: np.tile(np.array([0.2, 0.2, 0.8, 0.8], np.float32), (F, 1))}
    rels = [[]]
    found = None
    for seed in range(40):
        cands = _alone(2, 2, pinned, seed, 16, 2)
        clear = [bool(batch_geometry_ok(c[None], CLEAR, np.array([False, True]))[0]) for c in cands]
        if not clear[0] and any(clear):
            found = seed, cands, clear
            break
    assert found is not None
    seed, cands, clear = found
    sampler = _sampler(XNet(2), tries=16, per_round=2, geometry=CLEAR)
    r = sampler.draw(_cond(1), rels, [2], [pinned], [seed])[0]
    first = clear.index(True)
    assert r.draws == first + 1 > 1 and r.satisfied
    np.testing.assert_allclose(r.tracks, cands[first], atol=1e-6)
    np.testing.assert_array_equal(r.tracks[0], pinned[0])
    assert pair_overlaps(r.tracks)[0, 1].max() == 0.0  # the free object is clear of the pinned one
    assert [c.constraint for c in r.geometry] == ["overlap", "inside"] and all(c.holds for c in r.geometry)
    # without the constraint the first draw is kept, overlapping the pinned box
    loose = _sampler(XNet(2), tries=16, per_round=2).draw(_cond(1), rels, [2], [pinned], [seed])[0]
    assert loose.draws == 1 and pair_overlaps(loose.tracks)[0, 1].max() > 0


def test_a_contradictory_graph_is_redrawn_for_the_geometry_and_a_fallback_keeps_the_geometry_first():
    """Relations that cannot all hold are not asked of a draw, but the data's geometry still is: the first
    draw (reference: each candidate alone, in draw order) keeping the free object clear of the pinned one is
    kept, reported contradictory and unsatisfied. When no draw holds everything, the kept one keeps the
    geometry if any draw did, before holding more relations."""
    pinned = {0: np.tile(np.array([0.2, 0.2, 0.8, 0.8], np.float32), (F, 1))}
    free = np.array([False, True])
    contra_rels = [[0, "left of", 1], [1, "left of", 0]]
    found = None
    for seed in range(40):
        cands = _alone(2, 2, pinned, seed, 16, 2)
        clear = [bool(batch_geometry_ok(c[None], CLEAR, free)[0]) for c in cands]
        if not clear[0] and any(clear):
            found = seed, cands, clear
            break
    assert found is not None
    seed, cands, clear = found
    r = _sampler(XNet(2), tries=16, per_round=2, geometry=CLEAR).draw(_cond(1), [contra_rels], [2], [pinned],
                                                                      [seed])[0]
    first = clear.index(True)
    assert r.draws == first + 1 > 1 and not r.satisfied and r.contradictions
    np.testing.assert_allclose(r.tracks, cands[first], atol=1e-6)
    assert pair_overlaps(r.tracks)[0, 1].max() == 0.0
    # a relation the clear draws break: the fallback keeps a clear draw over one holding the relation
    for seed in range(60):
        cands = _alone(2, 2, pinned, seed, 8, 2)
        clear = [bool(batch_geometry_ok(c[None], CLEAR, free)[0]) for c in cands]
        held = [all(x.holds for x in check_layout(c, [[1, "above", 0]], RULES)) for c in cands]
        if any(clear) and any(held) and not any(a and b for a, b in zip(clear, held)):
            break
    else:
        pytest.fail("no seed gives clear draws and draws holding the relation, but never both")
    miss = _sampler(XNet(2), tries=8, per_round=2, geometry=CLEAR).draw(_cond(1), [[[1, "above", 0]]], [2],
                                                                        [pinned], [seed])[0]
    assert miss.draws == 8 and not miss.satisfied
    assert all(c.holds for c in miss.geometry) and pair_overlaps(miss.tracks)[0, 1].max() == 0.0
    assert any(np.allclose(miss.tracks, c, atol=1e-6) for c, ok in zip(cands, clear) if ok)


def test_geometry_failures_are_reported_and_given_tracks_that_break_it_warn():
    box = np.tile(np.array([0.2, 0.2, 0.5, 0.5], np.float32), (F, 1))
    near = box + np.float32(0.1)  # overlaps `box`
    tiny = Geometry(0.0, (0.0, 0.01), (0.0, 0.01), True, "measured")  # no drawn box is this small
    r = _sampler(XNet(3), tries=5, per_round=2, geometry=tiny).draw(_cond(1), [[]], [2], [{}], [4])[0]
    assert r.draws == 5 and not r.satisfied
    size = next(c for c in r.geometry if c.constraint == "size")
    assert not size.holds and size.objects == (0, 1) and size.frames == F
    assert "breaks the data's geometry" in relation_summary(r) and "outside the data's box sizes" in \
        relation_summary(r)
    # two given tracks that overlap: drawn anyway, one warning, and the drawn third object keeps clear
    pinned = {0: box, 1: near}
    g = _sampler(XNet(3), tries=16, per_round=2, geometry=CLEAR).draw(_cond(1), [[]], [3], [pinned], [1])[0]
    assert [(c.constraint, c.objects) for c in g.given_breaks] == [("overlap", (0, 1))]
    line = relation_summary(g)
    assert "\n" not in line and line.startswith("the given tracks break the data's geometry (objects 0 and 1")
    assert g.satisfied and pair_overlaps(g.tracks)[2, :2].max() == 0.0
    # every track given: nothing drawn, still the one warning
    given = _sampler(XNet(3), geometry=CLEAR).draw(_cond(1), [[]], [2], [pinned], [0])[0]
    assert given.draws == 0 and given.given_breaks and "given tracks break" in relation_summary(given)
    assert given.to_dict()["given_breaks"][0]["constraint"] == "overlap"


def test_with_geometry_a_graph_gets_the_same_layout_alone_or_batched():
    rels = [[[0, "left of", 1]], [], [[1, "above", 2]]]
    counts, seeds = [2, 3, 3], [3, 8, 13]
    batched = _sampler(XNet(4), tries=16, per_round=2, geometry=CLEAR).draw(_cond(3), rels, counts,
                                                                            [{}, {}, {}], seeds)
    for i in range(3):
        cond = {k: v[i:i + 1] for k, v in _cond(3).items()}
        alone = _sampler(XNet(4), tries=16, per_round=2, geometry=CLEAR).draw(cond, [rels[i]], [counts[i]],
                                                                              [{}], [seeds[i]])[0]
        np.testing.assert_array_equal(alone.tracks, batched[i].tracks)
        assert alone.draws == batched[i].draws
        ok = all(c.holds for c in check_layout(alone.tracks, rels[i], RULES)) and \
            bool(batch_geometry_ok(alone.tracks[None], CLEAR)[0])
        assert alone.satisfied == ok


def test_round_sizes_grow_after_two_rounds_and_sum_to_tries():
    from sg2v.layout_sampler import max_rounds, round_sizes

    assert round_sizes(16, 2) == [2, 2, 4, 8] and round_sizes(16, 8) == [8, 8]
    assert round_sizes(16, 1) == [1, 1, 2, 4, 4, 4] and round_sizes(1, 2) == [1]
    for tries in range(1, 40):
        for per_round in range(1, 10):
            sizes = round_sizes(tries, per_round)
            assert sum(sizes) == tries and max(sizes) <= 4 * per_round
            assert max_rounds(tries, per_round) == len(sizes)
