"""The pixel shape check (`sg2v.quality.shape_by_fill`): fill of the box and vertical centroid against the
shapes world's own drawings, on the world's renders and on masks drawn by another rasteriser."""

from __future__ import annotations

import numpy as np
import pytest

from sg2v.quality import fill_features, pixel_shape_accuracy, shape_by_fill
from sg2v.shapes import ShapesDataset
from sg2v.shapes.world import split_name


def test_the_worlds_own_renders_are_called_their_shape():
    seed = int(np.random.default_rng().integers(1 << 30))
    ds = ShapesDataset(seed=seed, length=120, split="heldout")
    samples = [ds[i] for i in range(len(ds))]
    calls = right = 0
    for s in samples:
        for i, name in enumerate(s.graph["objects"]):
            for fr in range(s.masks.shape[1]):
                calls += 1
                right += shape_by_fill(s.masks[i, fr]) == split_name(name)[1]
                box = s.boxes[i, fr].astype(int)
                right += shape_by_fill(s.masks[i, fr], box) == split_name(name)[1]
    assert right / (2 * calls) >= 0.995, seed
    videos, graphs = [s.video for s in samples], [s.graph for s in samples]
    assert pixel_shape_accuracy(videos, graphs) >= 0.995
    assert pixel_shape_accuracy(videos, graphs, [s.boxes / 64.0 for s in samples]) >= 0.995
    assert pixel_shape_accuracy(videos, graphs, within=False) >= 0.995


def _canvas(rng, side):
    """Pixel centres of a canvas with room around a box of `side` at a random place: x0, y0 and the centres'
    y and x relative to the box's corner."""
    size = side + 20
    x0, y0 = (int(v) for v in rng.integers(2, 18, 2))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return x0, y0, yy - y0, xx - x0


@pytest.mark.parametrize("side", [14, 21, 30, 40])
def test_masks_drawn_by_another_rasteriser(side):
    rng = np.random.default_rng()
    x0, y0, yy, xx = _canvas(rng, side)
    r = side / 2
    disk = (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    square = (yy > 0) & (yy < side) & (xx > 0) & (xx < side)
    up = (yy > 0) & (yy < side) & (np.abs(xx - r) <= yy / 2)  # apex up, base at the bottom
    down = (yy > 0) & (yy < side) & (np.abs(xx - r) <= (side - yy) / 2)  # apex down: mass sits high
    ring = disk & ((yy - r) ** 2 + (xx - r) ** 2 >= (0.7 * r) ** 2)
    assert shape_by_fill(disk) == "circle"
    assert shape_by_fill(square) == "square"
    assert shape_by_fill(up) == "triangle"
    assert shape_by_fill(down) is None  # a triangle the world never draws is no shape of it
    assert shape_by_fill(ring) is None  # a hollow circle fills too little of its box
    assert shape_by_fill(np.zeros_like(disk)) is None
    # a circle with its diagonal edges cut (fill ~0.66, as a model whose edge pixels miss the palette): the
    # nearest shape, but outside the world's drawing
    cut = disk & (np.abs(yy - r) + np.abs(xx - r) <= 1.15 * r)
    assert 0.6 < fill_features(cut)[0] < 0.72
    assert shape_by_fill(cut) is None and shape_by_fill(cut, within=False) == "circle"
    assert shape_by_fill(down, within=False) in ("circle", "triangle", "square")  # always some shape
    # judged in a given box: a disk filling a box twice its side fills a quarter of it
    assert shape_by_fill(disk, (x0, y0, x0 + side, y0 + side)) == "circle"
    assert shape_by_fill(disk, (x0 - r, y0 - r, x0 + side + r, y0 + side + r)) is None
    assert shape_by_fill(disk, (0, 0, 1, 1)) is None  # an empty box


def test_fill_features_match_an_obvious_count():
    rng = np.random.default_rng()
    mask = rng.random((30, 40)) < 0.4
    x0, y0 = (int(v) for v in rng.integers(0, 10, 2))
    x1, y1 = x0 + int(rng.integers(5, 25)), y0 + int(rng.integers(5, 15))
    pix = [(y, x) for y in range(y0, y1) for x in range(x0, x1) if mask[y, x]]
    fill, cy = fill_features(mask, (x0, y0, x1, y1))
    assert fill == pytest.approx(len(pix) / ((x1 - x0) * (y1 - y0)))
    assert cy == pytest.approx(np.mean([y + 0.5 - y0 for y, _ in pix]) / (y1 - y0))
    rows, cols = np.nonzero(mask)
    own = fill_features(mask)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert own == pytest.approx(fill_features(mask, box))
