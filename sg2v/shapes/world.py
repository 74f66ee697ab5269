"""The shapes world (specs/shapes-world.md): seeded (scene graph, video) pairs, numpy only.

Objects are flat-colored circles, squares and triangles moving in straight lines at constant velocity,
wholly inside the canvas. Predicates are judged on centroids by `relation_score`, the one implementation of
the spec's rules that the generator and the oracle share. The generator draws motion first (objects never
overlap, so each object's mask is its whole shape and the oracle sees exactly what was drawn), then picks
0..max_relationships of the relations that hold in that motion: a graph it emits is satisfied by its video
and never contradictory. `sample_overlapping_scene` is the one exception, asked for by name: scenes whose
boxes overlap, drawn in graph order (later on top), to teach a model the draw order for tracks a user pins
on top of each other.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import GraphError, Sg2vError
from sg2v.geometry import pair_overlaps

if TYPE_CHECKING:
    from sg2v.vocab import Vocab

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 40),
    "blue": (40, 80, 230),
    "yellow": (230, 220, 40),
    "cyan": (40, 210, 220),
    "magenta": (210, 40, 210),
    "white": (235, 235, 235),
}
COLOR_NAMES = tuple(COLORS)
COLOR_TABLE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.uint8)  # (7, 3)
SHAPES = ("circle", "square", "triangle")
OBJECT_NAMES = tuple(f"{c} {s}" for c in COLOR_NAMES for s in SHAPES)  # color-major, as the vocabulary
PREDICATES = ("left of", "right of", "above", "below", "approaching", "moving away from")
SPATIAL_OFFSET = 0.1  # x W: left of / right of / above / below
APPROACH_RATIO = 0.75  # last-quarter distance < 0.75 x first-quarter distance
RECEDE_RATIO = 1.33  # last-quarter distance > 1.33 x first-quarter distance
GEN_MARGIN = 1e-3  # px: the generator keeps relations holding by this much, so float noise never flips one
SPLITS = {"train": 0, "heldout": 1}  # ShapesDataset streams: SeedSequence(seed, spawn_key=(split, index))


class ShapesError(Sg2vError, ValueError):
    """Bad shapes-world settings or motion (canvas too small, object outside the canvas, ...)."""


# ---------------------------------------------------------------------------------------------------- rules
def size_range(height: int, width: int) -> tuple[int, int]:
    """Object bounding-box side in pixels: 12% to 20% of the shorter canvas side, and at least 3 px.

    Three pixels is the least at which circle, square and triangle differ; only canvases under 15 px need it.
    """
    side = min(height, width)
    lo = max(3, -(-12 * side // 100))
    hi = max(lo, 20 * side // 100)
    return lo, hi


def quarter(frames: int) -> int:
    """Frames in the "first / last quarter" of a clip (at least one)."""
    return max(1, frames // 4)


def relation_score(pred: str, cs: NDArray[Any], co: NDArray[Any], width: float) -> NDArray[Any]:
    """Signed slack of `pred` between centroid tracks (..., F, 2) (x, y): > 0 exactly when the rule holds.

    Frames holding NaN (object not seen) are left out of the means; an undefined score is NaN (never holds).
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window is a legitimate "not seen"
        if pred in ("left of", "right of", "above", "below"):
            axis = 0 if pred in ("left of", "right of") else 1
            ms = _nanmean(cs[..., axis])  # (...)
            mo = _nanmean(co[..., axis])
            off = SPATIAL_OFFSET * width
            out: NDArray[Any] = (mo - off - ms) if pred in ("left of", "above") else (ms - mo - off)
            return out
        if pred in ("approaching", "moving away from"):
            f = cs.shape[-2]
            q = quarter(f)
            d = np.sqrt(((cs - co) ** 2).sum(-1))  # (..., F)
            first = _nanmean(d[..., :q])
            last = _nanmean(d[..., f - q:])
            out = APPROACH_RATIO * first - last if pred == "approaching" else last - RECEDE_RATIO * first
            return out
    raise GraphError(f"unknown predicate {pred!r}; the shapes world knows {', '.join(PREDICATES)}")


def _nanmean(x: NDArray[Any]) -> NDArray[Any]:
    """Mean over the last axis ignoring NaN (plain mean when there is none: the generator's case)."""
    out: NDArray[Any] = np.nanmean(x, axis=-1) if np.isnan(x).any() else x.mean(-1)
    return out


@functools.lru_cache(maxsize=512)
def shape_template(shape: str, h: int, w: int) -> NDArray[Any]:
    """Pixel-centre rasterisation of a shape filling an h x w box (bool (h, w), read-only).

    Integer arithmetic, so templates are exact: the circle is the inscribed ellipse shrunk slightly (a 3 px
    circle is a plus, not a square), the triangle has its apex up and its base on the bottom row.
    """
    i = np.arange(h)[:, None]  # (h, 1)
    j = np.arange(w)[None, :]  # (1, w)
    if shape == "square":
        t = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        t = (2 * j + 1 - w) ** 2 * h * h + (2 * i + 1 - h) ** 2 * w * w <= w * w * h * h - 2 * w * h
    elif shape == "triangle":
        t = np.abs(2 * j + 1 - w) * h <= (i + 1) * w
    else:
        raise GraphError(f"unknown shape {shape!r}; the shapes world draws {', '.join(SHAPES)}")
    template: NDArray[Any] = np.broadcast_to(t, (h, w)).copy()
    template.setflags(write=False)
    return template


@functools.lru_cache(maxsize=512)
def _template_centroid(shape: str, s: int) -> tuple[float, float]:
    ii, jj = np.nonzero(shape_template(shape, s, s))
    return float(jj.mean() + 0.5), float(ii.mean() + 0.5)  # (x, y) from the box's top-left corner


def split_name(name: str) -> tuple[str, str]:
    """"red circle" -> ("red", "circle"); GraphError for names outside the shapes world."""
    parts = name.split(" ")
    if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
        raise GraphError(f"object {name!r} is not a shapes-world object; use \"<color> <shape>\" with color "
                         f"in {', '.join(COLOR_NAMES)} and shape in {', '.join(SHAPES)}")
    return parts[0], parts[1]


def graph_parts(graph: Any, max_objects: int | None = None,
                max_relationships: int | None = None) -> tuple[list[str], list[tuple[int, str, int]]]:
    """Object names and (s, pred, o) triples of a graph (dict, JSON text, path or `SceneGraph`), validated.

    Parsing is `sg2v.graph.parse_graph` against the shapes vocabulary; on top, the shapes world needs distinct
    colors (a color identifies an object in a video).
    """
    if hasattr(graph, "object_names") and hasattr(graph, "relationships"):
        names, rels = list(graph.object_names), [tuple(r) for r in graph.relationships]
        if max_objects is not None and len(names) > max_objects:
            raise GraphError(f"graph has {len(names)} objects; this shapes world takes at most {max_objects}")
        if max_relationships is not None and len(rels) > max_relationships:
            raise GraphError(f"graph has {len(rels)} relationships; this shapes world takes at most "
                             f"{max_relationships}")
    else:
        from sg2v.graph import parse_graph

        g = parse_graph(graph, _shapes_vocab(), max_objects, max_relationships)
        names, rels = list(g.object_names), [tuple(r) for r in g.relationships]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        color, _ = split_name(name)
        if color in seen:
            raise GraphError(f"objects[{i}] {name!r} has the same color as objects[{seen[color]}] "
                             f"{names[seen[color]]!r}; shapes-world objects need distinct colors")
        seen[color] = i
    return names, [(int(s), str(p), int(o)) for s, p, o in rels]


@functools.lru_cache(maxsize=1)
def _shapes_vocab() -> Vocab:
    from sg2v.vocab import shapes_vocab

    return shapes_vocab()


# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Motion:
    """Per-object box side and straight-line path of the box's top-left corner, (x, y) in pixels."""

    sizes: NDArray[Any]  # (n,) int64
    start: NDArray[Any]  # (n, 2) float64: top-left at frame 0
    end: NDArray[Any]  # (n, 2) float64: top-left at the last frame

    def top_left(self, frames: int) -> NDArray[Any]:
        """Integer top-left corners per frame, (n, F, 2): constant velocity, rounded to the pixel grid."""
        t = np.arange(frames) / max(frames - 1, 1)  # (F,)
        p = self.start[:, None, :] + (self.end - self.start)[:, None, :] * t[None, :, None]  # (n, F, 2)
        out: NDArray[Any] = np.rint(p).astype(np.int64)
        return out

    def boxes(self, frames: int) -> NDArray[Any]:
        """Per-frame boxes (n, F, 4) float32, (x0, y0, x1, y1) in pixels, x1/y1 exclusive (as rendered)."""
        tl = self.top_left(frames)
        out: NDArray[Any] = np.concatenate([tl, tl + np.asarray(self.sizes)[:, None, None]], -1)
        return out.astype(np.float32)


@dataclass(frozen=True)
class ShapesSample:
    """One (graph, video) pair with the ground truth the pretraining and the tests use."""

    graph: dict[str, Any]  # sg2im JSON form: {"objects": [...], "relationships": [[s, pred, o], ...]}
    video: NDArray[Any]  # (F, H, W, 3) uint8, black background
    centroids: NDArray[Any]  # (n, F, 2) float32, (x, y) in pixels, pixel-centre convention
    boxes: NDArray[Any]  # (n, F, 4) float32, (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    masks: NDArray[Any]  # (n, F, H, W) bool, the pixels of each object that are visible
    motion: Motion


# ---------------------------------------------------------------------------------------------------- world
class ShapesWorld:
    """Seeded generator of shapes-world (graph, video) pairs at any frames / height / width."""

    def __init__(self, frames: int = 16, height: int = 64, width: int = 64, max_objects: int = 4,
                 max_relationships: int = 4, static_prob: float = 0.2):
        for name, v, lo in (("frames", frames, 1), ("height", height, 8), ("width", width, 8)):
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ShapesError(f"{name}={v!r}: must be an integer >= {lo}")
        if not 1 <= max_objects <= len(COLORS):
            raise ShapesError(f"max_objects={max_objects}: must be 1..{len(COLORS)} (one color per object)")
        if max_relationships < 0:
            raise ShapesError(f"max_relationships={max_relationships}: must be >= 0")
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.max_objects, self.max_relationships = int(max_objects), int(max_relationships)
        self.static_prob = float(static_prob)
        self.size_lo, self.size_hi = size_range(self.height, self.width)
        if max_objects * self.size_hi ** 2 > 0.5 * height * width:
            raise ShapesError(f"{height}x{width} canvas is too small for {max_objects} objects; "
                              "use a larger canvas or fewer objects")

    def __repr__(self) -> str:
        return (f"ShapesWorld(frames={self.frames}, height={self.height}, width={self.width}, "
                f"max_objects={self.max_objects}, max_relationships={self.max_relationships})")

    # -- motion
    def _candidates(self, rng: np.random.Generator, n: int, k: int) -> tuple[NDArray[Any], NDArray[Any],
                                                                            NDArray[Any], NDArray[Any]]:
        """k candidate motions for n objects sharing one draw of sizes: sizes (n,), start/end (k, n, 2),
        top-left (k, n, F, 2)."""
        sizes = rng.integers(self.size_lo, self.size_hi + 1, size=n)  # (n,)
        room = np.stack([self.width - sizes, self.height - sizes], -1).astype(np.float64)  # (n, 2)
        start = rng.random((k, n, 2)) * room  # (k, n, 2): a segment between two inside points stays inside
        end = rng.random((k, n, 2)) * room
        static = rng.random((k, n)) < self.static_prob
        end = np.where(static[..., None], start, end)
        t = np.arange(self.frames) / max(self.frames - 1, 1)  # (F,)
        tl = np.rint(start[:, :, None, :] + (end - start)[:, :, None, :] * t[:, None])  # (k, n, F, 2)
        return sizes, start, end, tl

    @staticmethod
    def _apart(tl: NDArray[Any], sizes: NDArray[Any]) -> NDArray[Any]:
        """(k,) True where no two objects' boxes overlap in any frame."""
        x, y = tl[..., 0], tl[..., 1]  # (k, n, F)
        s = sizes[None, :, None]
        ox = (x[:, :, None] < x[:, None] + s[:, None]) & (x[:, None] < x[:, :, None] + s[:, :, None])
        oy = (y[:, :, None] < y[:, None] + s[:, None]) & (y[:, None] < y[:, :, None] + s[:, :, None])
        hit = ox & oy  # (k, n, n, F)
        n = sizes.shape[0]
        hit &= ~np.eye(n, dtype=bool)[None, :, :, None]
        out: NDArray[Any] = ~hit.any(axis=(1, 2, 3))
        return out

    @staticmethod
    def _centroids(tl: NDArray[Any], shapes: list[str], sizes: NDArray[Any]) -> NDArray[Any]:
        """Centroids (..., n, F, 2) of unoccluded shapes from their top-left corners."""
        c = np.array([_template_centroid(sh, int(s)) for sh, s in zip(shapes, sizes)])  # (n, 2)
        out: NDArray[Any] = tl + c[:, None, :]
        return out

    def sample_motion(self, graph: Any, rng: Any = None, tries: int = 20000, batch: int = 256) -> Motion:
        """Random motion under which `graph`'s video satisfies all its relationships (rejection sampling)."""
        rng = _as_rng(rng)
        names, rels = graph_parts(graph, self.max_objects, None)
        shapes = [split_name(nm)[1] for nm in names]
        n = len(names)
        done = 0
        while done < tries:
            k = min(batch, tries - done)
            sizes, start, end, tl = self._candidates(rng, n, k)
            ok = self._apart(tl, sizes)
            if rels:
                c = self._centroids(tl, shapes, sizes)  # (k, n, F, 2)
                for s, p, o in rels:
                    ok &= relation_score(p, c[:, s], c[:, o], self.width) > GEN_MARGIN
            hit = np.flatnonzero(ok)
            if hit.size:
                i = hit[0]
                return Motion(sizes.astype(np.int64), start[i], end[i])
            done += k
        raise GraphError(f"no motion found in {tries} tries that keeps the objects apart and satisfies "
                         f"every relationship {[list(r) for r in rels]}; they may contradict each other "
                         "(e.g. a left of b and b left of a) or need more room: fix them or raise --tries")

    # -- rendering
    def render(self, graph: Any, motion: Motion) -> ShapesSample:
        """Draw `graph`'s objects along `motion` in graph order (later on top), black background."""
        names, rels = graph_parts(graph, self.max_objects, None)
        n, f, h, w = len(names), self.frames, self.height, self.width
        sizes = np.asarray(motion.sizes, dtype=np.int64)
        if sizes.shape != (n,) or np.shape(motion.start) != (n, 2) or np.shape(motion.end) != (n, 2):
            raise ShapesError(f"motion is for {sizes.shape[0] if sizes.ndim else '?'} objects with sizes "
                              f"{sizes.shape}, start/end {np.shape(motion.start)}/{np.shape(motion.end)}; "
                              f"the graph has {n} objects: give sizes (n,) and start/end (n, 2)")
        if (sizes < 1).any():
            raise ShapesError(f"motion sizes {sizes.tolist()}: every object needs a side >= 1 px")
        tl = motion.top_left(f)  # (n, F, 2)
        far = tl + sizes[:, None, None]
        if (tl < 0).any() or (far[..., 0] > w).any() or (far[..., 1] > h).any():
            raise ShapesError(f"motion leaves the {h}x{w} canvas; every box must stay wholly inside for all "
                              "frames (0 <= top-left <= side - size)")
        shapes = [split_name(nm)[1] for nm in names]
        ids = np.zeros((f, h, w), dtype=np.int8)  # (F, H, W): 0 background, i + 1 object i
        frame = np.arange(f)[:, None]  # (F, 1)
        for i in range(n):
            ii, jj = np.nonzero(shape_template(shapes[i], int(sizes[i]), int(sizes[i])))  # (P,)
            # scatter the shape's pixels into every frame at once; later objects overwrite (drawn on top)
            ids[frame, tl[i, :, 1][:, None] + ii, tl[i, :, 0][:, None] + jj] = i + 1
        palette = np.zeros((n + 1, 3), dtype=np.uint8)  # (n + 1, 3)
        for i, nm in enumerate(names):
            palette[i + 1] = COLORS[split_name(nm)[0]]
        video = np.take(palette, ids.astype(np.intp), axis=0)  # (F, H, W, 3); take beats int8 fancy indexing
        masks = ids[None] == np.arange(1, n + 1, dtype=np.int8)[:, None, None, None]  # (n, F, H, W)
        centroids = self._centroids(tl, shapes, sizes).astype(np.float32)  # (n, F, 2)
        boxes = motion.boxes(f)  # (n, F, 4)
        g = {"objects": list(names), "relationships": [[s, p, o] for s, p, o in rels]}
        return ShapesSample(g, video, centroids, boxes, masks, motion)

    def render_graph(self, graph: Any, seed: Any = None, tries: int = 20000) -> ShapesSample:
        """A video of `graph` with random motion satisfying its relationships."""
        rng = _as_rng(seed)
        return self.render(graph, self.sample_motion(graph, rng, tries))

    # -- the generator
    def sample(self, seed_or_rng: Any = None) -> ShapesSample:
        """One random (graph, video) pair; the same seed gives the same pair."""
        return self.render(*self.sample_scene(seed_or_rng))

    def sample_scene(self, seed_or_rng: Any = None) -> tuple[dict[str, Any], Motion]:
        """The graph and motion `sample` renders for the same seed, without the video (for layouts)."""
        rng = _as_rng(seed_or_rng)
        return self._scene(rng, int(rng.integers(1, self.max_objects + 1)), 16, self._apart)

    def sample_overlapping_scene(self, seed_or_rng: Any = None,
                                 min_cover: float = 0.25) -> tuple[dict[str, Any], Motion]:
        """A scene whose tracks overlap, which the generator (`sample_scene`) never makes: 2..max_objects
        objects, and in some frame one box covers at least `min_cover` of a smaller one's area. `render` draws
        it in graph order (later on top), so its video shows the world's occlusion: training data for drawing
        tracks a user pins on top of each other, not for layouts (the world's own layouts never overlap).
        Its graph's relationships hold for the objects' unoccluded centroids, as `sample_scene`'s do."""
        if self.max_objects < 2:
            raise ShapesError(f"overlapping scenes need 2 or more objects; this world has max_objects="
                              f"{self.max_objects}")
        rng = _as_rng(seed_or_rng)
        return self._scene(rng, int(rng.integers(2, self.max_objects + 1)), 64,
                           lambda tl, sizes: self._cover(tl, sizes) >= min_cover)

    def _scene(self, rng: np.random.Generator, n: int, k: int,
               accept: Callable[[NDArray[Any], NDArray[Any]], NDArray[Any]]) -> tuple[dict[str, Any], Motion]:
        """n objects, the first motion of batches of k candidates that `accept(tl, sizes)` -> (k,) bool
        passes, and 0..max_relationships of the relations that hold in it."""
        names, shapes = self._objects(rng, n)
        while True:
            sizes, start, end, tl = self._candidates(rng, n, k)
            hit = np.flatnonzero(accept(tl, sizes))
            if hit.size:
                break
        i = hit[0]
        motion = Motion(sizes.astype(np.int64), start[i], end[i])
        rels = self._pick_relations(rng, self._centroids(tl[i], shapes, sizes))
        return {"objects": names, "relationships": rels}, motion

    @staticmethod
    def _cover(tl: NDArray[Any], sizes: NDArray[Any]) -> NDArray[Any]:
        """(k,) the most any box covers of a smaller one over all pairs and frames (`sg2v.geometry`'s
        measure), for top-left corners tl (k, n, F, 2) of square boxes of sides sizes (n,)."""
        side = np.asarray(sizes, np.float64)[None, :, None, None]
        boxes = np.concatenate([tl, tl + side], axis=-1)  # (k, n, F, 4) in pixels: the fraction is scale-free
        out: NDArray[Any] = pair_overlaps(boxes).max(axis=(-3, -2, -1))
        return out

    @staticmethod
    def _objects(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
        """n object names of distinct colors and random shapes, and their shapes."""
        colors = rng.choice(len(COLOR_NAMES), size=n, replace=False)
        shapes = [SHAPES[k] for k in rng.integers(0, len(SHAPES), size=n)]
        return [f"{COLOR_NAMES[c]} {sh}" for c, sh in zip(colors, shapes)], shapes

    def _pick_relations(self, rng: np.random.Generator, c: NDArray[Any]) -> list[list[Any]]:
        """Up to max_relationships distinct facts that hold for centroid tracks c (n, F, 2), random order.

        "a left of b" and "b right of a" are one fact (so are both orders of approaching / moving away); each
        fact is stated in a random one of its forms. Motion facts are weighted up, being rarer than spatial
        ones.
        """
        n = c.shape[0]
        cs, co = c[:, None], c[None, :]  # (n, 1, F, 2), (1, n, F, 2): subject, object
        holds = {p: relation_score(p, cs, co, self.width) > GEN_MARGIN  # (n, n)
                 for p in ("left of", "above", "approaching", "moving away from")}
        facts: list[list[list[Any]]] = []
        weights: list[float] = []
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                for p, inv in (("left of", "right of"), ("above", "below")):
                    if holds[p][a, b]:
                        facts.append([[a, p, b], [b, inv, a]])
                        weights.append(1.0)
                if a < b:
                    for p in ("approaching", "moving away from"):
                        if holds[p][a, b]:
                            facts.append([[a, p, b], [b, p, a]])
                            weights.append(2.0)
        m = min(self.max_relationships, len(facts))
        k = int(rng.integers(0, m + 1))
        if k == 0:
            return []
        w = np.asarray(weights) / np.sum(weights)
        chosen = rng.choice(len(facts), size=k, replace=False, p=w)
        return [facts[j][int(rng.integers(0, 2))] for j in chosen]


def _as_rng(seed_or_rng: Any) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


# ---------------------------------------------------------------------------------------------------- dataset
class ShapesDataset:
    """Index-addressable shapes-world samples: `ds[i]` depends only on (seed, split, i), torch-free.

    Splits are disjoint seed streams: sample i of split `s` uses
    `SeedSequence(seed, spawn_key=(SPLITS[s], i))`, so "train" and "heldout" never share a random stream.
    With `overlap_prob` p > 0, sample i is instead an overlapping scene
    (`ShapesWorld.sample_overlapping_scene`) where a coin from its own stream
    `SeedSequence(seed, spawn_key=(SPLITS[s], i, 1))` falls under p; the
    other samples are the ones p = 0 gives. `scene` (the layouts) never overlaps.
    """

    def __init__(self, seed: int = 0, length: int = 10000, split: str = "train", overlap_prob: float = 0.0,
                 **world_kwargs: Any):
        if split not in SPLITS:
            raise ShapesError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
        if length < 0:
            raise ShapesError(f"length={length}: must be >= 0")
        if not (isinstance(overlap_prob, (int, float)) and 0.0 <= overlap_prob <= 1.0):
            raise ShapesError(f"overlap_prob={overlap_prob!r}: must be in [0, 1]")
        self.seed, self.length, self.split = int(seed), int(length), split
        self.overlap_prob = float(overlap_prob)
        self.world = ShapesWorld(**world_kwargs)

    def __len__(self) -> int:
        return self.length

    def seed_sequence(self, index: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=(SPLITS[self.split], int(index)))

    def __getitem__(self, index: int) -> ShapesSample:
        i = self._index(index)
        if self.overlap_prob > 0.0:
            own = np.random.SeedSequence(self.seed, spawn_key=(SPLITS[self.split], i, 1))
            rng = np.random.default_rng(own)
            if rng.random() < self.overlap_prob:
                return self.world.render(*self.world.sample_overlapping_scene(rng))
        return self.world.sample(np.random.default_rng(self.seed_sequence(i)))

    def scene(self, index: int) -> tuple[dict[str, Any], Motion]:
        """Sample `index`'s graph and motion without its video (`ShapesWorld.sample_scene`)."""
        return self.world.sample_scene(np.random.default_rng(self.seed_sequence(self._index(index))))

    def _index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"ShapesDataset index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        return int(index)

    def __iter__(self) -> Iterator[ShapesSample]:
        for i in range(self.length):
            yield self[i]

