"""Sample videos from a torch SG2V through the one generation loop and score them with the shapes oracle.

The loop is `sg2v.generation`'s, the one the runtime drives with ONNX Runtime, TensorRT or torch; here it
runs on the live modules in memory (`sg2v.training.backend.model_generator`): the same x_T per seed, the
same sampler defaults and guidance (the UNet on one batch of 2B rows: the B graphs, then B null contexts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sg2v.config import ModelConfig
from sg2v.graph import SceneGraph, pad_graphs, parse_graph
from sg2v.quality import METRIC_KEYS, false_presence, format_table, heldout_graphs, score_videos
from sg2v.training.backend import model_generator

__all__ = ["METRIC_KEYS", "evaluate", "false_presence", "format_table", "heldout_graphs", "sample_videos"]


def _graph_batch(graphs: Sequence[Any], cfg: ModelConfig, vocab: Any):
    parsed = [g if isinstance(g, SceneGraph) else parse_graph(g, vocab, cfg.data.max_objects,
                                                              cfg.data.max_relationships) for g in graphs]
    return pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships)


@torch.no_grad()
def sample_videos(model: torch.nn.Module, graphs: Sequence[Any], steps: int = 8, guidance: float = 3.0,
                  sampler: str = "dpmpp2m", seed: int = 0, *, cfg: ModelConfig | None = None,
                  vocab: Any = None, rescale: float | None = None) -> np.ndarray:
    """Videos for `graphs` (dicts or SceneGraphs): (B, F, H, W, C) uint8; graph i uses noise seed seed + i.

    `rescale` None takes the model config's default guidance rescale.
    """
    cfg = cfg if cfg is not None else model.cfg
    if vocab is None:
        from sg2v.vocab import shapes_vocab

        vocab = shapes_vocab()
    was_training = model.training
    model.eval()
    try:
        gen = model_generator(model, cfg)
        settings = gen.settings(steps=int(steps), guidance=guidance, guidance_rescale=rescale,
                                sampler=sampler)
        feeds = _graph_batch(graphs, cfg, vocab).as_feeds()
        return gen.run(feeds, [seed + i for i in range(len(graphs))], settings).frames
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, cfg: ModelConfig, vocab: Any, n: int = 16, steps: int = 8,
             guidance: float = 3.0, sampler: str = "dpmpp2m", seed: int = 0,
             contact_sheet: str | os.PathLike | None = None, batch: int = 16) -> dict[str, Any]:
    """Oracle scores of videos sampled for `n` held-out graphs: presence, relation/shape accuracy, ..."""
    graphs = heldout_graphs(cfg, n, seed)
    videos = np.concatenate([
        sample_videos(model, graphs[i:i + batch], steps, guidance, sampler, seed + i, cfg=cfg, vocab=vocab)
        for i in range(0, n, batch)
    ])  # (n, F, H, W, C)
    out = score_videos(videos, graphs)
    out.update(n=n, steps=int(steps), guidance=float(guidance), sampler=sampler, seed=int(seed))
    if contact_sheet is not None:
        from sg2v.video import write_contact_sheet

        shown = videos[: min(n, 8)]  # (k, F, H, W, C): one row per video, one column per frame
        k, f, h, w, c = shown.shape
        write_contact_sheet(Path(contact_sheet), shown.reshape(k * f, h, w, c), cols=f,
                            scale=max(1, 64 // max(h, w)))
    return out
