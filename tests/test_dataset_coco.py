"""COCO 2017 + COCO-Stuff -> converted data set: masks, sg2im's geometric relationships, filters, splits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import rle_counts, rle_string, write_coco

from sg2v.dataset import CocoOptions, CommonOptions, ConvertedDataset, convert
from sg2v.dataset.coco import (
    MaskError,
    mask_center,
    polygons_mask,
    predicate,
    rle_decode,
    rle_string_counts,
    segmentation_mask,
)
from sg2v.errors import DatasetError
from sg2v.vocab import load_vocab


def _convert(src, out, seed=0, **kw) -> dict:
    return convert("coco-stuff", src, out, CommonOptions(size="tiny", seed=seed),
                   CocoOptions(val_images=1, **kw), log=lambda line: None)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    facts = write_coco(root / "src")
    return root, facts, _convert(root / "src", root / "out")


def _drops(info):
    return {(d["kind"], d["reason"]): d["count"] for d in info["drops"]}


# ---------------------------------------------------------------------------------------------------- masks
def test_rle_string_hand_worked_examples():
    # 2 x 2 mask, column-major [0, 1, 1, 0]: counts [1, 2, 1], each one character (value + 48)
    assert rle_string_counts("121") == [1, 2, 1]
    np.testing.assert_array_equal(rle_decode([1, 2, 1], 2, 2), [[False, True], [True, False]])
    # the fourth count is stored as a difference to the second: 4 - 5 = -1, one sign-extended character 'O'
    assert rle_string_counts("352O") == [3, 5, 2, 4]


def test_rle_round_trip_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        mask = rng.random((h, w)) < rng.random()
        counts = rle_counts(mask)
        assert rle_string_counts(rle_string(counts)) == counts
        np.testing.assert_array_equal(segmentation_mask({"counts": rle_string(counts), "size": [h, w]}, h, w),
                                      mask)
        np.testing.assert_array_equal(segmentation_mask({"counts": counts, "size": [h, w]}, h, w), mask)


def test_bad_segmentations_raise_mask_error():
    with pytest.raises(MaskError):
        rle_decode([1, 2], 2, 2)  # sums to 3, not 4
    with pytest.raises(MaskError):
        rle_string_counts("1\x7f")
    with pytest.raises(MaskError):
        segmentation_mask([[1, 2, 3]], 4, 4)
    with pytest.raises(MaskError):
        segmentation_mask([[1, 2, "3", 4, 5, 6]], 4, 4)
    with pytest.raises(MaskError):
        segmentation_mask({"counts": "12", "size": [2]}, 2, 2)


def _inside(px: float, py: float, pts: np.ndarray) -> bool:
    """Even-odd ray casting for one point (the slow, obvious reference)."""
    inside = False
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
        if (y0 <= py < y1) or (y1 <= py < y0):
            if px > x0 + (py - y0) / (y1 - y0) * (x1 - x0):
                inside = not inside
    return inside


def test_polygon_mask_matches_ray_casting_on_pixel_centers():
    m = polygons_mask([[2, 1, 6, 1, 6, 5, 2, 5]], 8, 10)  # rectangle x 2..6, y 1..5: pixels 2..5 x 1..4
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max(), m.sum()) == (2, 5, 1, 4, 16)
    # a polygon of fewer than 3 points (COCO has a few) covers nothing; the others still count
    np.testing.assert_array_equal(polygons_mask([[2, 1, 6, 1, 6, 5, 2, 5], [0, 0, 9, 7]], 8, 10), m)
    rng = np.random.default_rng(11)
    for _ in range(10):
        polys = [rng.uniform(-2, 14, size=2 * int(rng.integers(3, 8))).tolist() for _ in range(2)]
        m = polygons_mask(polys, 10, 12)
        ref = np.zeros((10, 12), bool)
        for poly in polys:
            pts = np.asarray(poly).reshape(-1, 2)
            ref |= np.array([[_inside(x + 0.5, y + 0.5, pts) for x in range(12)] for y in range(10)])
        np.testing.assert_array_equal(m, ref)


def test_mask_center_is_the_mean_pixel_center_inside_the_box():
    m = polygons_mask([[2, 1, 6, 1, 6, 5, 2, 5], [7, 6, 9, 6, 9, 8, 7, 8]], 8, 10)
    cx, cy = mask_center(m, [2, 1, 4, 4], 10, 8)  # the second square lies outside the box's crop
    assert (cx, cy) == pytest.approx((4.0 / 10, 3.0 / 8))
    assert mask_center(np.zeros((8, 10), bool), [2, 1, 4, 4], 10, 8) is None


def _oracle(s, o, cs, co):
    """sg2im's rule (google/sg2im sg2im/data/coco.py), written out in float64 with explicit angles."""
    if s[0] < o[0] and s[2] > o[2] and s[1] < o[1] and s[3] > o[3]:
        return "surrounding"
    if s[0] > o[0] and s[2] < o[2] and s[1] > o[1] and s[3] < o[3]:
        return "inside"
    deg = math.degrees(math.atan2(cs[1] - co[1], cs[0] - co[0]))
    return "left of" if abs(deg) >= 135 else "above" if deg < -45 else "right of" if deg < 45 else "below"


def test_predicate_rule_matches_the_oracle_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        s, o = np.sort(rng.random((2, 2, 2)), axis=1).transpose(0, 2, 1).reshape(2, 4)[:, [0, 1, 2, 3]]
        s, o = np.array([s[0], s[2], s[1], s[3]]), np.array([o[0], o[2], o[1], o[3]])
        cs, co = tuple(rng.random(2)), tuple(rng.random(2))
        assert predicate(s, o, cs, co) == _oracle(s, o, cs, co)
    a, b = np.array([0, 0, 0.2, 0.2]), (0.1, 0.1)
    assert predicate(np.array([0, 0, 1, 1]), np.array([0.2, 0.2, 0.4, 0.4]), (0.5, 0.5), (0.3, 0.3)) \
        == "surrounding"
    assert predicate(a, np.array([0.5, 0, 0.7, 0.2]), b, (0.6, 0.1)) == "left of"
    assert predicate(a, np.array([0, 0.5, 0.2, 0.7]), b, (0.1, 0.6)) == "above"


# ---------------------------------------------------------------------------------------------------- convert
def test_vocabulary_is_sg2ims_category_id_table(coco):
    root, _, _ = coco
    vocab = load_vocab(root / "out" / "vocab.json")
    assert vocab.num_objs == 184  # ids up to 183 ('other'), __image__ at 0, "NONE" at unused ids
    assert vocab.object_name_to_idx == {"__image__": 0, "person": 1, "car": 3, "airplane": 5,
                                        "sky-other": 157, "grass": 124, "other": 183}
    assert vocab.object_idx_to_name[2] == "NONE"
    assert list(vocab.pred_idx_to_name) == ["__in_image__", "left of", "right of", "above", "below", "inside",
                                            "surrounding"]


def test_splits_filters_and_drop_table(coco):
    root, facts, info = coco
    for split, ids in facts["samples"].items():
        ds = ConvertedDataset(root / "out", split)
        assert [ds[i]["source"]["image_id"] for i in range(len(ds))] == ids
    drops = _drops(info)
    for key, n in facts["drops"].items():
        assert drops.get(key) == n, key
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    crowd = ("object", "crowd annotation (iscrowd 1) kept as one object, as sg2im does")
    assert notes[crowd] == facts["crowd"]


def test_image_one_objects_boxes_and_relationships(coco):
    root, facts, _ = coco
    s = ConvertedDataset(root / "out", "train")[0]
    fact = facts["image1"]
    assert s["graph"]["objects"] == fact["objects"]
    w, h = fact["size"]
    np.testing.assert_allclose(s["boxes"][:, 0], np.array(fact["boxes_px"]) / [w, h, w, h], atol=1e-6)
    rels = s["graph"]["relationships"]
    assert 1 <= len(rels) <= len(fact["objects"])
    assert len({(a, b) for a, _, b in rels}) == len(rels)
    boxes = np.array(fact["boxes_px"], dtype=np.float64) / [w, h, w, h]
    for a, p, b in rels:  # rectangles: the mask centroid is the box center (to half a pixel)
        ca, cb = (boxes[a, :2] + boxes[a, 2:]) / 2, (boxes[b, :2] + boxes[b, 2:]) / 2
        assert p == _oracle(boxes[a], boxes[b], ca, cb), (a, p, b)


def test_relationships_are_seeded(coco, tmp_path):
    root, _, _ = coco
    draws = set()
    for seed in (0, 0, 1, 2, 3):
        out = tmp_path / f"s{seed}_{len(draws)}"
        _convert(root / "src", out, seed=seed)
        draws.add((seed, str(ConvertedDataset(out, "train")[0]["graph"]["relationships"])))
    by_seed = {}
    for seed, rels in draws:
        by_seed.setdefault(seed, set()).add(rels)
    assert len(by_seed[0]) == 1  # the same seed draws the same relationships
    assert len({next(iter(v)) for v in by_seed.values()}) > 1  # other seeds draw others


def test_flags_change_what_is_kept(coco, tmp_path):
    root, _, _ = coco
    info = _convert(root / "src", tmp_path / "a", skip_crowd=True, include_other=True)
    # the flag drops each crowd annotation where it is read, also image 3's (then dropped for its size)
    assert _drops(info)[("object", "crowd annotation (--skip-crowd)")] == 2
    objs = ConvertedDataset(tmp_path / "a", "train")[0]["graph"]["objects"]
    assert objs == ["person", "car", "sky-other", "grass", "other"]
    info = _convert(root / "src", tmp_path / "b", stuff=False, min_objects_per_image=1)
    assert info["source"]["name"] == "COCO 2017"
    assert info["splits"]["train"]["samples"] == 3  # images 1, 2, 4 (3 has 9 objects)


def test_box_centers_option(coco, tmp_path):
    root, _, _ = coco
    _convert(root / "src", tmp_path / "box", centers="box")
    box = ConvertedDataset(tmp_path / "box", "train")[0]["graph"]
    assert box == ConvertedDataset(root / "out", "train")[0]["graph"]  # rectangles: the same centers


def test_missing_stuff_file_names_the_fix(coco, tmp_path):
    import shutil

    root, _, _ = coco
    shutil.copytree(root / "src", tmp_path / "src")
    (tmp_path / "src" / "annotations" / "stuff_val2017.json").unlink()
    with pytest.raises(DatasetError, match="stuff_val2017.json: not found; .*--no-stuff"):
        _convert(tmp_path / "src", tmp_path / "out")
    with pytest.raises(DatasetError, match="--instance-whitelist: 'unicorn' not among the categories"):
        _convert(root / "src", tmp_path / "out", instance_whitelist="person, unicorn")


# ------------------------------------------------------------------------------------------ hostile fields
def _peak_bytes(call) -> int:
    """Peak bytes Python and numpy allocated during `call` (tracemalloc tracks numpy's buffers)."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("seg, why", [
    ({"size": [100000, 100000], "counts": [10000000000]}, r"an RLE needs \"size\""),
    ({"size": [4000, 4000], "counts": [16000000]}, "RLE size 4000 x 4000 differs"),
    ({"size": [4, 4], "counts": [10000000000]}, r"RLE counts must be integers in \[0, 16\]"),
    ({"size": [4, 4], "counts": [2 ** 64, 0]}, r"RLE counts must be integers in \[0, 16\]"),
    ({"size": [4, 4], "counts": [1] * 100}, "100 RLE counts, more than"),
    ({"size": [-1, -1], "counts": [16]}, "an RLE needs"),
    ({"size": [4, 4], "counts": "o" * 20 + "1"}, "count longer than 64 bits"),
    ({"size": [4, 4], "counts": "1" * 10000}, "RLE string longer"),
    ([[0, 0] * 1_000_000], "polygons of more than"),
    ([[0, 0, 1, 0, 1, 1]] * 200_000, "200000 polygons in one segmentation"),
    ([[0, 0, 10 ** 400, 0, 1, 1]], "number pairs within"),
    ([[0, 0, float("nan"), 0, 1, 1]], "number pairs within"),
])
def test_hostile_segmentations_are_refused_before_allocating(seg, why):
    def call():
        with pytest.raises(MaskError, match=why):
            segmentation_mask(seg, 4, 4)

    assert _peak_bytes(call) < 4 << 20


def test_a_large_polygon_is_rasterised_in_bounded_memory(rng):
    """A polygon with the most points allowed (a circle of 16384 points) on a 480 x 640 image: the same mask
    as the even-odd rule on pixel centers in a few chunks, and the working memory stays under 64 MiB."""
    from sg2v.dataset.coco import MAX_POLYGON_POINTS

    h, w = 480, 640
    t = np.linspace(0, 2 * np.pi, MAX_POLYGON_POINTS, endpoint=False)
    cx, cy, r = 320 + rng.uniform(-5, 5), 240 + rng.uniform(-5, 5), 200.0
    poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
    out = {}
    assert _peak_bytes(lambda: out.update(m=polygons_mask([poly], h, w))) < 64 << 20
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < (r * np.cos(np.pi / MAX_POLYGON_POINTS)) ** 2
    outside = (xx - cx) ** 2 + (yy - cy) ** 2 > r ** 2
    assert out["m"][inside].all() and not out["m"][outside].any()


def _mutated_source(tmp_path, change):
    import json

    src = tmp_path / "src"
    write_coco(src)
    path = src / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return src


@pytest.mark.parametrize("change, why", [
    (lambda d: None, "top level: expected a COCO object"),
    (lambda d: [], "top level: expected a COCO object"),
    (lambda d: {**d, "categories": [*d["categories"], {"id": 10 ** 9, "name": "big"}]},
     r"categories\[3\]: id 1000000000 is not a new id in 1..65535"),
    (lambda d: {**d, "categories": [*d["categories"], {"id": 2 ** 70, "name": "big"}]},
     r"categories\[3\]: expected"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [0, 0, 10 ** 400, 5]}]},
     r"annotations\[0\]: expected image_id, category_id .*finite"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [0, 0, 1e30, 5]}]},
     r"annotations\[0\]: expected"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [0, 0, -5, -5]}]},
     r"annotations\[0\]: expected"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 2 ** 64}]}, r"annotations\[0\]"),
    (lambda d: {**d, "images": [{**d["images"][0], "width": 10 ** 400}]}, r"images\[0\]: expected id"),
    (lambda d: {**d, "images": [{**d["images"][0], "id": -3}]}, r"images\[0\]: expected id"),
])
def test_hostile_instance_files_are_one_line(tmp_path, change, why):
    src = _mutated_source(tmp_path, change)
    with pytest.raises(DatasetError, match=why) as e:
        _convert(src, tmp_path / "out")
    assert "\n" not in str(e.value)


def test_a_hostile_rle_in_a_kept_image_is_noted_not_allocated(tmp_path):
    """The 60-byte RLE that asked for 9.3 GiB: the object keeps its box center, the conversion goes on."""
    def change(d):
        d["annotations"][0]["segmentation"] = {"size": [100000, 100000], "counts": [10000000000]}
        d["annotations"][1]["segmentation"] = {"size": [100, 200], "counts": [2 ** 64]}
        return d

    info = _convert(_mutated_source(tmp_path, change), tmp_path / "out")
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    assert notes[("object", "segmentation unreadable; box center used for its relationships")] == 2


# -------------------------------------------------------------------------------------- real COCO excerpt
REAL = Path(__file__).resolve().parent / "data" / "coco2017_train_excerpt.json"


def _real() -> dict:
    import json

    return json.loads(REAL.read_text())


def test_real_crowd_rles_decode_to_their_boxes():
    """Every crowd annotation of the real excerpt (11 uncompressed RLEs): the decoded mask's extent is the
    annotation's bbox, as COCO writes it for crowds ([x0, y0, x_last - x0, y_last - y0])."""
    data = _real()
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    crowds = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowds) == 11
    for a in crowds:
        mask = segmentation_mask(a["segmentation"], *sizes[a["image_id"]])
        ys, xs = np.nonzero(mask)
        got = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        assert got == a["bbox"], a["id"]


def test_real_polygons_rasterise_to_their_area():
    """The real excerpt's polygon annotations: the pixel-center mask's area is COCO's "area" within a strip
    of 0.15 px along the outline (the rasterisers differ only at edge pixels)."""
    data = _real()
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    polys = [a for a in data["annotations"] if not a["iscrowd"]]
    assert len(polys) >= 30
    for a in polys:
        mask = segmentation_mask(a["segmentation"], *sizes[a["image_id"]])
        outline = sum(np.hypot(*(np.roll(p, -1, 0) - p).T).sum() for p in
                      (np.asarray(q, dtype=np.float64).reshape(-1, 2) for q in a["segmentation"]))
        assert abs(int(mask.sum()) - a["area"]) <= 0.15 * outline + 2, a["id"]


def test_real_excerpt_converts_as_sg2im_filters_it(tmp_path):
    """The real excerpt as a things-only COCO source (solid images of the recorded sizes): each image keeps
    the objects whose box covers more than 0.02 of it and is kept with 3 to 8 of them, computed here from
    the JSON; the crowd note counts the crowds of the images written."""
    import json

    from dataset_fixtures import solid

    data = _real()
    src = tmp_path / "src"
    (src / "annotations").mkdir(parents=True)
    train = {k: data[k] for k in ("info", "licenses", "images", "annotations", "categories")}
    (src / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    empty = {**train, "images": [], "annotations": []}
    (src / "annotations" / "instances_val2017.json").write_text(json.dumps(empty))
    for i, im in enumerate(data["images"]):
        solid(src / "images" / "train2017" / im["file_name"], im["width"], im["height"], i, "JPEG")
    info = _convert(src, tmp_path / "out", stuff=False)
    names = {c["id"]: c["name"] for c in data["categories"]}
    want, crowds = {}, 0
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]
                and a["bbox"][2] * a["bbox"][3] / (im["width"] * im["height"]) > 0.02]
        if 3 <= len(anns) <= 8:
            want[im["id"]] = [names[a["category_id"]] for a in anns]
            crowds += sum(a["iscrowd"] for a in anns)
    ds = ConvertedDataset(tmp_path / "out", "train")
    got = {ds[i]["source"]["image_id"]: ds[i]["graph"]["objects"] for i in range(len(ds))}
    assert got == want and len(want) >= 2
    notes = {(d["kind"], d["reason"]): d["count"] for d in info["notes"]}
    crowd_note = ("object", "crowd annotation (iscrowd 1) kept as one object, as sg2im does")
    assert notes.get(crowd_note, 0) == crowds
    assert sum(a["iscrowd"] for a in data["annotations"]) > crowds  # crowds of dropped images not counted
