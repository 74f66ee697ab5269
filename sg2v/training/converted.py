"""Training on converted data sets (`sg2v-train pretrain | diffusion | layout --data DIR [DIR ...]`).

The run's data (`open_run_data`): one or more folders written by `sg2v-data convert` with one vocabulary and
one frame size. Their vocabulary, frame size, largest graph and source (the relation-rule family) become the
model's (`data_model_config`); flags may override the limits.

Joint image and video training: samples are pooled by kind, images (one-frame samples) and clips (F frames),
and every step reads one kind, so the UNet sees (B, 1, C, H, W) image batches or (B, F, C, H, W) clip
batches (video diffusion models trained on images as one-frame videos, Ho et al. 2022). Steps take the kinds
in a fixed interleave whose shares follow the kinds' sample counts (`KindSchedule`: each sample is then seen
about equally often), and within a kind the samples come in a fresh seeded permutation per epoch
(`SampleStream`). So the samples of step s depend only on (seed, s, batch): a resumed or distributed run
reads exactly what an uninterrupted single process reads, as on the shapes world.

Per sample:
- graphs larger than the model's limits keep a seeded subset of their objects, those in relationships first
  (sg2im's Visual Genome loader samples objects the same way), the relationships among the kept objects, and
  a seeded subset of those when there are still too many (`fit_to_limits`);
- the UNet's boxes (O, F, 4) are the object's box in the frames where it has one (visible, and a layout given)
  and zero elsewhere, like padding and `__image__`: a zero box paints nothing;
- the layout network's tracks (O, F, 4) come with a per-(object, frame) weight, 1 where the box is known and 0
  elsewhere: those frames leave the layout loss, and hold the nearest known frame's box so the noisy input is
  a plausible track (`held_tracks`); an object with no known box at all is never pinned. An image's boxes are
  repeated over the F frames: a static track.
- pretraining masks the pixels inside the chosen object's box (`box_region`).
Evaluation on the val split (the shapes oracle does not apply): the held-out diffusion or layout loss at
seeded timesteps and noise, and for the layout objective the relation accuracy of drawn layouts where the
data set has geometric rules (COCO-Stuff: sg2im's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sg2v.config import ModelConfig
from sg2v.dataset.format import VOCAB_FILE, ConvertedDataset, index_file
from sg2v.dataset.formats import source_rules
from sg2v.errors import ConfigError, DatasetError
from sg2v.graph import pad_graphs, parse_graph
from sg2v.relations import FAMILIES
from sg2v.safety import open_input
from sg2v.vocab import Vocab

RULE_FAMILIES = (*FAMILIES, "none")
STREAM_LENGTH = 2**62  # a stream has no end: index i is step i // batch


class RunDataError(DatasetError):
    """Data sets or flags that do not fit together (names them and the fix; exit status 2)."""

    exit_code = 2


def kind_name(frames: int) -> str:
    """"images" for one-frame samples, "clips" for the rest."""
    return "images" if frames == 1 else "clips"


class Pool:
    """One split of the run's data sets, back to back: sample k is (data set, index); counts per sample."""

    def __init__(self, datasets: Sequence[ConvertedDataset]):
        self.datasets = list(datasets)
        counts = [d.counts() for d in self.datasets]
        self.source = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(self.datasets)])
        self.index = np.concatenate([np.arange(len(d), dtype=np.int64) for d in self.datasets])
        self.frames, self.objects, self.relationships = (np.concatenate([c[k] for c in counts])
                                                         for k in ("frames", "objects", "relationships"))

    def __len__(self) -> int:
        return len(self.index)

    def kinds(self) -> tuple[int, ...]:
        """The frame counts of the pool's samples, ascending (1: images)."""
        return tuple(int(f) for f in np.unique(self.frames))

    def item(self, k: int, frames: bool = True) -> dict[str, Any]:
        """Sample k (`ConvertedDataset`'s item; without "frames" unless asked for)."""
        ds, i = self.datasets[int(self.source[k])], int(self.index[k])
        return ds[i] if frames else ds.annotation(i)


@dataclass
class RunData:
    """The converted data sets of one run, opened and checked (`open_run_data`)."""

    paths: tuple[str, ...]
    vocab: Vocab
    train: Pool
    val: Pool
    frames: int  # the clips' F; for images only, --frames or the conversion's
    height: int
    width: int
    max_objects: int
    max_relationships: int
    rules: str
    source_formats: tuple[str, ...]
    fingerprint: str  # sha256 of the vocabularies and the train / val indexes: what the sample stream reads

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data (plain containers)."""
        return {"paths": list(self.paths), "fingerprint": self.fingerprint,
                "source_formats": list(self.source_formats)}


def _fingerprint(roots: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for root in roots:
        for name in (VOCAB_FILE, index_file("train"), index_file("val")):
            h.update(name.encode())
            with open_input(root / name) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def open_run_data(paths: Sequence[str | os.PathLike], *, frames: int | None = None, height: int | None = None,
                  width: int | None = None, max_objects: int | None = None,
                  max_relationships: int | None = None, rules: str | None = None) -> RunData:
    """Open the train and val splits of `paths`, check that they fit together and with the flags, and
    settle the run's frame size, graph limits (default: the largest train / val graph) and rule family."""
    if not paths:
        raise RunDataError("--data: give at least one folder written by `sg2v-data convert`")
    roots = [Path(p) for p in paths]
    if len(set(r.resolve() for r in roots)) != len(roots):
        raise RunDataError(f"--data {' '.join(map(str, paths))}: a folder is given twice; give each once")
    train = [ConvertedDataset(r, "train") for r in roots]
    val = [ConvertedDataset(r, "val") for r in roots]
    _check_together(roots, train)
    h, w = train[0].height, train[0].width
    for flag, want, have in (("--height", height, h), ("--width", width, w)):
        if want is not None and want != have:
            raise RunDataError(f"{flag} {want}: the data's frames are {h} x {w} pixels; leave {flag} out, or "
                               f"convert the data again with {flag} {want}")
    train_pool, val_pool = Pool(train), Pool(val)
    if not len(train_pool):
        raise RunDataError(f"--data {' '.join(map(str, paths))}: the train split is empty; convert a data "
                           "set with training samples")
    frames = _clip_frames(roots, (train_pool, val_pool), frames, int(train[0].frames_per_clip))
    max_objects, max_relationships = _graph_limits((train_pool, val_pool), max_objects, max_relationships)
    formats = tuple(str(ds.info.get("source_format", "")) for ds in train)
    if rules is None:
        families = {source_rules(f) for f in formats}
        rules = families.pop() if len(families) == 1 else "none"
    if rules not in RULE_FAMILIES:
        raise RunDataError(f"--rules {rules!r}: choose one of {list(RULE_FAMILIES)}")
    return RunData(tuple(str(p) for p in paths), train[0].vocab, train_pool, val_pool, int(frames), h, w,
                   int(max_objects), int(max_relationships), rules, formats, _fingerprint(roots))


def _check_together(roots: list[Path], train: list[ConvertedDataset]) -> None:
    """RunDataError unless the folders share the first one's vocabulary and frame size."""
    first, vocab = roots[0], train[0].vocab
    for r, ds in zip(roots[1:], train[1:]):
        if ds.vocab != vocab:
            raise RunDataError(f"--data: {r}/{VOCAB_FILE} differs from {first}/{VOCAB_FILE}; folders trained "
                               "together need one vocabulary (convert them with the same vocabulary, e.g. "
                               "folder data with --vocab), or train on one")
        if (ds.height, ds.width) != (train[0].height, train[0].width):
            raise RunDataError(f"--data: {r} holds {ds.height} x {ds.width} frames, {first} "
                               f"{train[0].height} x {train[0].width}; convert them at one --height / "
                               "--width")


def _clip_frames(roots: list[Path], pools: tuple[Pool, Pool], frames: int | None, converted: int) -> int:
    """The run's clip length: the one clip length of the folders' clips (`frames`, when given, must be
    it), else `frames` or the conversion's for images only."""
    clips: dict[int, Path] = {}  # clip length -> the first folder holding such clips
    for i, r in enumerate(roots):
        for pool in pools:
            for f in np.unique(pool.frames[pool.source == i]):
                if f > 1:
                    clips.setdefault(int(f), r)
    if len(clips) > 1:
        (f1, r1), (f2, r2) = sorted(clips.items())[:2]
        raise RunDataError(f"--data: {r1} holds {f1}-frame clips, {r2} {f2}-frame ones; convert them with "
                           "one --frames")
    if clips:
        (clip_frames, where), = clips.items()
        if frames is not None and frames != clip_frames:
            raise RunDataError(f"--frames {frames}: {where} holds {clip_frames}-frame clips; leave --frames "
                               f"out, or convert the data again with --frames {frames}")
        frames = clip_frames
    elif frames is None:
        frames = converted  # images only: the conversion's clip length
    if frames < 1:
        raise RunDataError(f"--frames {frames}: give a positive frame count")
    return frames


def _graph_limits(pools: tuple[Pool, Pool], max_objects: int | None, max_relationships: int | None
                  ) -> tuple[int, int]:
    """Objects and relationships per graph: the flags', else the largest train / val graph's."""
    largest_o = max(int(p.objects.max()) for p in pools if len(p))
    largest_r = max(int(p.relationships.max()) for p in pools if len(p))
    max_objects = largest_o if max_objects is None else max_objects
    max_relationships = largest_r if max_relationships is None else max_relationships
    if max_objects < 1 or max_relationships < 0:
        raise RunDataError(f"--max-objects {max_objects} / --max-relationships {max_relationships}: give at "
                           "least 1 object and 0 relationships")
    return max_objects, max_relationships


def data_model_config(base: ModelConfig, data: RunData) -> ModelConfig:
    """`base` (a size's config) with the data's vocabulary sizes, frame size, graph limits, rule family and
    the geometric limits measured on its train split (`sg2v.geometry.dataset_geometry`, for the layout
    check)."""
    from sg2v.geometry import compact_entry, dataset_geometry

    d = dataclasses.replace(base.data, frames=data.frames, height=data.height, width=data.width,
                            max_objects=data.max_objects, max_relationships=data.max_relationships)
    encoder = dataclasses.replace(base.encoder, num_objs=data.vocab.num_objs, num_preds=data.vocab.num_preds)
    geometry = dataset_geometry(data.train.item(k, frames=False) for k in range(len(data.train)))
    layout = dataclasses.replace(base.layout, rules=data.rules,
                                 geometry="" if geometry is None else compact_entry(geometry))
    cfg = base.replace(data=d, encoder=encoder, layout=layout)
    u = cfg.unet
    scale = 2 ** (len(u.channel_mult) - 1) * u.patch_size
    if data.height % scale or data.width % scale:
        raise RunDataError(f"--data {data.paths[0]}: frames of {data.height} x {data.width} pixels, but a "
                           f"{base.name!r} model needs sides divisible by {scale}; convert with --size "
                           f"{base.name} (or --height / --width multiples of {scale})")
    try:
        cfg.check_bounds()
    except ConfigError as e:
        raise RunDataError(f"--data {data.paths[0]}: {e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------- the stream
class KindSchedule:
    """Which kind (an index into `sizes`) each step reads: a fixed cycle of about CYCLE steps in which each
    kind's share follows its sample count (at least one step), spread out by smooth weighted round-robin."""

    CYCLE = 32

    def __init__(self, sizes: Sequence[int]):
        total = sum(sizes)
        counts = [max(1, round(self.CYCLE * n / total)) for n in sizes]
        period = sum(counts)
        current = [0] * len(counts)
        pattern = []
        for _ in range(period):
            for k, c in enumerate(counts):
                current[k] += c
            pick = max(range(len(counts)), key=lambda k: (current[k], -k))
            current[pick] -= period
            pattern.append(pick)
        self.counts, self.pattern = counts, np.array(pattern, dtype=np.int64)
        onehot = self.pattern[None, :] == np.arange(len(counts))[:, None]  # (K, P)
        self.before = np.concatenate([np.zeros((len(counts), 1), np.int64), onehot.cumsum(1)], axis=1)

    def kind(self, step: int) -> int:
        return int(self.pattern[step % len(self.pattern)])

    def steps_before(self, step: int) -> int:
        """Steps of `step`'s kind before it."""
        cycles, pos = divmod(step, len(self.pattern))
        k = self.kind(step)
        return cycles * self.counts[k] + int(self.before[k, pos])


class SampleStream:
    """Global sample index -> pool sample: index i belongs to step i // batch, whose kind the `KindSchedule`
    fixes; that kind's samples come in a fresh permutation per epoch, seeded by (seed, kind, epoch)."""

    def __init__(self, pool: Pool, batch: int, seed: int, by_kind: bool = True):
        kinds = pool.kinds() if by_kind else (0,)
        self.groups = [np.flatnonzero(pool.frames == f) if by_kind else np.arange(len(pool)) for f in kinds]
        self.kinds, self.batch, self.seed = kinds, int(batch), int(seed)
        self.schedule = KindSchedule([len(g) for g in self.groups])
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, index: int) -> int:
        step, j = divmod(int(index), self.batch)
        k = self.schedule.kind(step)
        group = self.groups[k]
        epoch, r = divmod(self.schedule.steps_before(step) * self.batch + j, len(group))
        return int(group[self._perm(k, epoch)[r]])

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perms:
            if len(self._perms) >= 4:  # a step reads one epoch, or two across a boundary
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 17, self.kinds[k], epoch]))
            self._perms[key] = rng.permutation(len(self.groups[k]))
        return self._perms[key]


# ------------------------------------------------------------------------------------------------ samples
def fit_to_limits(item: dict[str, Any], max_objects: int, max_relationships: int,
                  rng: Callable[[], np.random.Generator]) -> dict[str, Any]:
    """The sample within the model's limits: a seeded subset of objects (those in relationships first), the
    relationships among them, a seeded subset of those; boxes and flags follow. `rng` is called only when a
    sample is over a limit."""
    graph = item["graph"]
    objects, rels = graph["objects"], graph["relationships"]
    n = len(objects)
    if n <= max_objects and len(rels) <= max_relationships:
        return item
    g = rng()
    keep = np.arange(n)
    if n > max_objects:
        in_rels = {int(s) for s, _, _ in rels} | {int(o) for _, _, o in rels}
        related, others = sorted(in_rels), [i for i in range(n) if i not in in_rels]
        if len(related) >= max_objects:
            keep = np.sort(g.choice(related, max_objects, replace=False))
        else:
            keep = np.sort(np.concatenate([related, g.choice(others, max_objects - len(related),
                                                             replace=False)]).astype(np.int64))
    new = {int(old): i for i, old in enumerate(keep)}
    kept = [j for j, (s, _, o) in enumerate(rels) if s in new and o in new]
    if len(kept) > max_relationships:
        kept = sorted(int(j) for j in g.choice(kept, max_relationships, replace=False))
    out_graph = {"objects": [objects[i] for i in keep],
                 "relationships": [[new[rels[j][0]], rels[j][1], new[rels[j][2]]] for j in kept]}
    if "description" in graph:
        out_graph["description"] = graph["description"]
    out = dict(item, graph=out_graph, boxes=item["boxes"][keep], visible=item["visible"][keep],
               has_layout=item["has_layout"][keep])
    out["rel_frames"] = item["rel_frames"][kept] if kept else item["rel_frames"][:0]
    return out


def known_boxes(item: dict[str, Any]) -> np.ndarray:
    """(n, F') bool: frames in which an object has a box (visible there, and the source gave a layout)."""
    return item["visible"] & item["has_layout"][:, None]


def held_tracks(boxes: np.ndarray, known: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """F-frame tracks and weights from boxes (n, F', 4) known in (n, F'): a one-frame sample's boxes repeated
    (a static track); a frame without a box takes the nearest known frame's (the earlier on a tie), weight 0;
    an object with no known box keeps zeros. -> tracks (n, F, 4) float32, weight (n, F) float32."""
    if boxes.shape[1] == 1 and frames > 1:
        boxes, known = np.repeat(boxes, frames, axis=1), np.repeat(known, frames, axis=1)
    tracks = np.zeros(boxes.shape, np.float32)
    t = np.arange(boxes.shape[1])
    for i in range(boxes.shape[0]):
        at = np.flatnonzero(known[i])
        if not len(at):
            continue
        pos = np.searchsorted(at, t)  # the first known frame at or after t
        left, right = at[np.clip(pos - 1, 0, len(at) - 1)], at[np.clip(pos, 0, len(at) - 1)]
        nearest = np.where(np.abs(t - left) <= np.abs(right - t), left, right)
        tracks[i] = boxes[i, nearest]
    return tracks, known.astype(np.float32)


def box_region(box_track: np.ndarray, known: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels inside one object's box per frame: (F', 4) boxes, (F',) known -> (F', H, W) float32; a pixel
    is inside when its centre lies in [x0, x1) x [y0, y1) (the UNet's object maps rasterise the same way)."""
    u = (np.arange(width) + 0.5) / width  # (W,)
    v = (np.arange(height) + 0.5) / height  # (H,)
    b = np.asarray(box_track, np.float64)
    in_x = (u >= b[:, 0:1]) & (u < b[:, 2:3])  # (F', W)
    in_y = (v >= b[:, 1:2]) & (v < b[:, 3:4])  # (F', H)
    return (in_y[:, :, None] & in_x[:, None, :] & np.asarray(known, bool)[:, None, None]).astype(np.float32)


class ConvertedSamples(Dataset):
    """Step-addressed training samples of a pool (see the module note); `objective` picks the arrays:

    - "diffusion": "video" (F', C, H, W) uint8 (F' = 1 for images, F for clips), the padded graph tensors
      and "boxes" (O, F', 4) in [0, 1] (zero where unknown, for `__image__` and padded slots);
    - "layout": the graph tensors, "tracks" (O, F, 4), "track_mask" (O,) (1 for the graph's objects) and
      "track_weight" (O, F) (1 where the box is known); no frame is read.
    Sample i reads `SampleStream` entry i; a graph over the limits is cut with a generator seeded by
    (seed, i).
    """

    def __init__(self, pool: Pool, cfg: ModelConfig, vocab: Vocab, seed: int, batch: int,
                 objective: str = "diffusion"):
        if objective not in ("diffusion", "layout"):
            raise ValueError(f"objective {objective!r}")
        self.pool, self.data, self.vocab, self.seed = pool, cfg.data, vocab, int(seed)
        self.objective = objective
        self.stream = SampleStream(pool, batch, seed, by_kind=objective == "diffusion")

    def __len__(self) -> int:
        return STREAM_LENGTH

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return sample_arrays(self.pool, self.stream(index), self.data, self.vocab, self.objective,
                             (self.seed, 29, int(index)))


def fitted_item(pool: Pool, k: int, data: Any, key: Sequence[int], frames: bool = True) -> dict[str, Any]:
    """Pool sample k within the limits of `data` (a `DataConfig`), cut by a generator seeded with `key`."""
    return fit_to_limits(pool.item(k, frames=frames), data.max_objects, data.max_relationships,
                         lambda: np.random.default_rng(np.random.SeedSequence(list(key))))


def heldout_key(seed: int, k: int) -> tuple[int, int, int]:
    """The cut's seed of held-out sample k: the same sample, the same graph, at every evaluation."""
    return (int(seed), 31, int(k))


def sample_arrays(pool: Pool, k: int, data: Any, vocab: Vocab, objective: str, key: Sequence[int]
                  ) -> dict[str, np.ndarray]:
    """Pool sample k's training arrays for `objective` (`ConvertedSamples`); `key` seeds its cut."""
    return item_arrays(fitted_item(pool, k, data, key, frames=objective == "diffusion"), data, vocab,
                       objective)


def item_arrays(item: dict[str, Any], data: Any, vocab: Vocab, objective: str) -> dict[str, np.ndarray]:
    """A fitted sample's training arrays for `objective` (`ConvertedSamples`)."""
    from sg2v.training.data import video_to_layout

    g = pad_graphs([parse_graph(item["graph"], vocab)], data.max_objects, data.max_relationships)
    out = {name: v[0] for name, v in g.as_feeds().items()}
    n, o = len(item["graph"]["objects"]), data.padded_objects
    known = known_boxes(item)  # (n, F')
    if objective == "layout":
        tracks, weight = held_tracks(item["boxes"], known, data.frames)  # (n, F, 4), (n, F)
        out["tracks"] = np.zeros((o, data.frames, 4), np.float32)
        out["tracks"][:n] = tracks
        out["track_weight"] = np.zeros((o, data.frames), np.float32)
        out["track_weight"][:n] = weight
        out["track_mask"] = np.zeros(o, np.float32)
        out["track_mask"][:n] = 1.0
        return out
    f = item["frames"].shape[0]
    boxes = np.zeros((o, f, 4), np.float32)
    boxes[:n] = item["boxes"] * known[..., None]
    out["video"] = video_to_layout(item["frames"])  # (F', C, H, W) uint8
    out["boxes"] = boxes
    return out


def heldout_groups(pool: Pool, n: int, batch: int, by_kind: bool = True) -> list[list[int]]:
    """The first n samples of a (val) pool in batches of at most `batch`, of one kind each (by_kind)."""
    ks = list(range(min(n, len(pool))))
    kinds = [int(pool.frames[k]) if by_kind else 0 for k in ks]
    return [mine[i:i + batch] for kind in sorted(set(kinds))
            for mine in [[k for k, f in zip(ks, kinds) if f == kind]] for i in range(0, len(mine), batch)]


def heldout_batches(pool: Pool, data: Any, vocab: Vocab, n: int, batch: int, objective: str, seed: int
                    ) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """`heldout_groups` collated: [(pool indices, batch tensors)]."""
    from sg2v.training.data import collate

    return [(part, collate([sample_arrays(pool, k, data, vocab, objective, heldout_key(seed, k))
                            for k in part]))
            for part in heldout_groups(pool, n, batch, by_kind=objective == "diffusion")]


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, pool: Pool, cfg: ModelConfig, vocab: Vocab, objective: str,
                 n: int, seed: int, batch: int = 16) -> dict[str, Any]:
    """Mean loss of `objective` on the first n samples of `pool` at seeded timesteps and noise, with no
    condition dropout (diffusion) and no pinning (layout): overall and per kind (images, clips)."""
    from sg2v.graph import GRAPH_TENSORS
    from sg2v.training.losses import diffusion_loss, layout_loss
    from sg2v.video import frames_to_unit

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for i, (part, b) in enumerate(heldout_batches(pool, cfg.data, vocab, n, batch, objective, seed)):
            b = {k: v.to(device) for k, v in b.items()}
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
            graph = {k: b[k] for k in GRAPH_TENSORS}
            if objective == "layout":
                loss = layout_loss(model, b["tracks"], b["track_mask"], graph, gen, pin_prob=0.0,
                                   track_weight=b["track_weight"])
                kind = "all"
            else:
                boxes = b["boxes"] if model.grounded else None
                loss = diffusion_loss(model, frames_to_unit(b["video"]), graph, gen, cond_drop_prob=0.0,
                                      boxes=boxes)
                kind = kind_name(int(b["video"].shape[1]))
            for name in {"all", kind}:
                sums[name] = sums.get(name, 0.0) + float(loss) * len(part)
                counts[name] = counts.get(name, 0) + len(part)
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"heldout_loss": sums["all"] / counts["all"] if counts else None,
                           "heldout_n": counts.get("all", 0)}
    if objective == "diffusion":
        for name in ("images", "clips"):
            out[f"heldout_loss_{name}"] = sums[name] / counts[name] if name in counts else None
    return out
