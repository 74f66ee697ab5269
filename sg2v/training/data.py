"""Torch datasets over the shapes world: index-addressed samples, step-addressed batches, a collate function.

Every training sample is a pure function of (seed, split, index) (`sg2v.shapes.ShapesDataset`), and every
batch of step s is a fixed range of indices, so data is generated on the fly in DataLoader workers yet a
resumed or distributed run sees exactly the batches an uninterrupted single process would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sg2v.config import DataConfig, ModelConfig
from sg2v.graph import pad_graphs, parse_graph
from sg2v.shapes import ShapesDataset, ShapesSample
from sg2v.video import frames_to_unit


def video_to_model(video: np.ndarray) -> np.ndarray:
    """(F, H, W, C) uint8 -> (F, C, H, W) float32 in [-1, 1], the UNet's layout (ARCHITECTURE.md)."""
    return np.ascontiguousarray(frames_to_unit(video).transpose(0, 3, 1, 2), dtype=np.float32)


def video_to_layout(video: np.ndarray) -> np.ndarray:
    """(F, H, W, C) uint8 -> (F, C, H, W) uint8: the UNet's layout, still bytes.

    Training batches carry video as uint8, a quarter of float32's bytes through the DataLoader's shared
    memory, pinning and the host-to-device copy; `sg2v.training.train.compute_loss` maps it to [-1, 1] where
    the model runs (`frames_to_unit`, the same float32 values `video_to_model` gives).
    """
    return np.ascontiguousarray(video.transpose(0, 3, 1, 2))


class _ShapesStream(Dataset):
    """The shapes-world scenes of one split and seed at a model config's frames, size and graph limits."""

    def __init__(self, cfg: ModelConfig | DataConfig, vocab: Any, seed: int = 0, split: str = "train",
                 length: int = 2**62, overlap_prob: float = 0.0):
        d = getattr(cfg, "data", cfg)
        self.data, self.vocab = d, vocab
        self.shapes = ShapesDataset(seed=seed, length=length, split=split, overlap_prob=overlap_prob,
                                    frames=d.frames, height=d.height, width=d.width,
                                    max_objects=d.max_objects, max_relationships=d.max_relationships)

    def __len__(self) -> int:
        return len(self.shapes)


class ShapesVideoDataset(_ShapesStream):
    """Shapes-world (video, padded graph) pairs at a model config's frames, size and graph limits.

    "video" is (F, C, H, W) uint8 (`video_to_layout`); `video_to_model` gives the float32 the model sees.
    Diffusion training and pretraining both read their data here (`sample_arrays`).
    """

    def sample(self, index: int) -> ShapesSample:
        """Sample `index` as the shapes world makes it: graph, video (F, H, W, 3) uint8, object masks."""
        return self.shapes[index]

    def graph(self, index: int) -> dict[str, Any]:
        """Sample `index`'s scene graph (sg2im JSON form)."""
        return self.shapes[index].graph

    def sample_arrays(self, sample: ShapesSample) -> dict[str, np.ndarray]:
        """A sample's training arrays: "video" (F, C, H, W) uint8, the padded graph tensors and "boxes"
        (O, F, 4), each object's box per frame in [0, 1] (zero for `__image__` and padded slots)."""
        d = self.data
        g = pad_graphs([parse_graph(sample.graph, self.vocab)], d.max_objects, d.max_relationships)
        return {"video": video_to_layout(sample.video), **{k: v[0] for k, v in g.as_feeds().items()},
                "boxes": padded_tracks(sample.boxes, d)}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.sample_arrays(self.shapes[index])


def padded_tracks(boxes: np.ndarray, data: DataConfig) -> np.ndarray:
    """Pixel boxes (n, F, 4) (x1, y1 exclusive) -> (O, F, 4) float32 in [0, 1] of the frame, zero-padded."""
    out = np.zeros((data.padded_objects, data.frames, 4), dtype=np.float32)
    scale = np.array([data.width, data.height, data.width, data.height], dtype=np.float32)
    out[:len(boxes)] = np.asarray(boxes, dtype=np.float32) / scale
    return out


class ShapesLayoutDataset(_ShapesStream):
    """Shapes-world (graph, tracks) pairs without drawing the video, for training the layout network.

    Sample i has the graph and tracks of `ShapesVideoDataset`'s sample i (the same scene, unrendered; a video
    data set's overlapping scenes, `overlap_prob`, have no layout counterpart):
    the padded graph tensors, "tracks" (O, F, 4) in [0, 1] and "track_mask" (O,) (1 for the graph's objects).
    """

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        d = self.data
        graph, motion = self.shapes.scene(index)
        g = pad_graphs([parse_graph(graph, self.vocab)], d.max_objects, d.max_relationships)
        mask = np.zeros(d.padded_objects, dtype=np.float32)
        mask[:len(graph["objects"])] = 1.0
        tracks = padded_tracks(motion.boxes(d.frames), d)  # (O, F, 4)
        return {**{k: v[0] for k, v in g.as_feeds().items()}, "tracks": tracks, "track_mask": mask}


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack per-sample arrays along a new batch axis: video (B, F, C, H, W), graph tensors (B, ...)."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def micro_batch_indices(step: int, micro: int, global_batch: int, micro_batch: int) -> list[int]:
    """Dataset indices of micro-batch `micro` (0 .. world*accum-1) of optimizer step `step`."""
    start = step * global_batch + micro * micro_batch
    return list(range(start, start + micro_batch))


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches for steps [start_step, steps): rank r owns micro-batches
    r*accum .. r*accum + accum - 1 of each step, so data depends on the step, not on who computes it."""

    def __init__(self, start_step: int, steps: int, global_batch: int, world: int, rank: int, accum: int = 1):
        if global_batch % (world * accum):
            raise ValueError(f"batch {global_batch} is not divisible by world size x grad accumulation "
                             f"({world} x {accum}); choose a multiple")
        self.start_step, self.steps = start_step, steps
        self.global_batch, self.world, self.rank, self.accum = global_batch, world, rank, accum
        self.micro_batch = global_batch // (world * accum)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            for a in range(self.accum):
                micro = self.rank * self.accum + a
                yield micro_batch_indices(step, micro, self.global_batch, self.micro_batch)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and Python's RNG in each DataLoader worker from torch's per-worker seed (itself derived from
    the loader's generator), so nothing a worker draws outside the index-seeded generator is left unseeded."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
