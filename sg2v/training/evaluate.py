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
from sg2v.quality import (
    METRIC_KEYS,
    false_presence,
    format_table,
    heldout_graphs,
    heldout_tracks,
    score_videos,
)
from sg2v.training.backend import model_generator

__all__ = ["METRIC_KEYS", "evaluate", "evaluate_data", "evaluate_layouts", "false_presence", "format_table",
           "heldout_graphs", "sample_videos"]


def _parsed(graphs: Sequence[Any], cfg: ModelConfig, vocab: Any) -> list[SceneGraph]:
    d = cfg.data
    return [g if isinstance(g, SceneGraph) else parse_graph(g, vocab, d.max_objects, d.max_relationships,
                                                            d.frames) for g in graphs]


@torch.no_grad()
def sample_videos(model: torch.nn.Module, graphs: Sequence[Any], steps: int = 8, guidance: float = 3.0,
                  sampler: str = "dpmpp2m", seed: int = 0, *, cfg: ModelConfig | None = None,
                  vocab: Any = None, rescale: float | None = None,
                  layouts: Sequence[dict[int, np.ndarray]] | None = None) -> np.ndarray:
    """Videos for `graphs` (dicts or SceneGraphs): (B, F, H, W, C) uint8; graph i uses noise seed seed + i.

    `rescale` None takes the model config's default guidance rescale; `layouts[i]` gives a grounded model
    graph i's tracks (object index -> (F, 4)) instead of drawing them.
    """
    cfg = cfg if cfg is not None else model.cfg
    if vocab is None:
        from sg2v.vocab import shapes_vocab

        vocab = shapes_vocab()
    was_training = model.training
    model.eval()
    try:
        gen = model_generator(model, cfg, vocab)
        settings = gen.settings(steps=int(steps), guidance=guidance, guidance_rescale=rescale,
                                sampler=sampler)
        parsed = _parsed(graphs, cfg, vocab)
        feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
        return gen.run(feeds, [seed + i for i in range(len(graphs))], settings,
                       graphs=parsed, layouts=layouts).frames  # graphs: for a layout stage's plan
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_layouts(model: torch.nn.Module, cfg: ModelConfig, vocab: Any, n: int = 64, seed: int = 0,
                     tries: int | None = None) -> dict[str, Any]:
    """The layout stage alone on `n` held-out graphs (`sg2v.quality.layout_quality`)."""
    from sg2v.quality import layout_quality

    was_training = model.training
    model.eval()
    try:
        gen = model_generator(model, cfg, vocab)
        parsed = _parsed(heldout_graphs(cfg, n, seed), cfg, vocab)
        feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
        out = layout_quality(gen, parsed, feeds, [seed + i for i in range(n)], tries=tries)
        out.update(seed=int(seed))
        return out
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, cfg: ModelConfig, vocab: Any, n: int = 16, steps: int = 8,
             guidance: float = 3.0, sampler: str = "dpmpp2m", seed: int = 0,
             contact_sheet: str | os.PathLike | None = None, batch: int = 16,
             true_layouts: bool = False) -> dict[str, Any]:
    """Oracle scores of videos sampled for `n` held-out graphs: presence, relation/shape accuracy, ...

    `true_layouts` gives a grounded model every object's true track (what the UNet alone can do) instead
    of drawing them with its layout network.
    """
    graphs = heldout_graphs(cfg, n, seed)
    tracks = heldout_tracks(cfg, n, seed) if true_layouts else None
    videos = np.concatenate([
        sample_videos(model, graphs[i:i + batch], steps, guidance, sampler, seed + i, cfg=cfg, vocab=vocab,
                      layouts=None if tracks is None else tracks[i:i + batch])
        for i in range(0, n, batch)
    ])  # (n, F, H, W, C)
    out = score_videos(videos, graphs)
    out.update(n=n, steps=int(steps), guidance=float(guidance), sampler=sampler, seed=int(seed),
               layout="true" if true_layouts else ("sampled" if model.grounded else "none"))
    if contact_sheet is not None:
        from sg2v.video import write_contact_sheet

        shown = videos[: min(n, 8)]  # (k, F, H, W, C): one row per video, one column per frame
        k, f, h, w, c = shown.shape
        write_contact_sheet(Path(contact_sheet), shown.reshape(k * f, h, w, c), cols=f,
                            scale=max(1, 64 // max(h, w)))
    return out


def evaluate_data(model: torch.nn.Module, cfg: ModelConfig, vocab: Any, pool: Any, objective: str,
                  n: int = 16, seed: int = 0, steps: int = 8, guidance: float = 3.0, sampler: str = "dpmpp2m",
                  contact_sheet: str | os.PathLike | None = None, sheet_samples: int = 4) -> dict[str, Any]:
    """Held-out evaluation on a converted data set's val samples (`sg2v.training.converted.Pool`), where the
    shapes oracle does not apply: the objective's loss on the first `n` (`heldout_loss`; none for "distill",
    whose loss needs the teacher); for the layout objective also the layout stage's relation accuracy on
    their graphs where the model's rule family has rules for the vocabulary's predicates
    (`sg2v.quality.layout_quality`); for diffusion and distill optionally a contact sheet of the first
    `sheet_samples`, each a row of its real frames (an image, then black) above a row sampled on its true
    tracks (objects known in every frame; the layout stage draws the others)."""
    from sg2v.quality import layout_quality
    from sg2v.relations import rules_for
    from sg2v.training.converted import fitted_item, held_tracks, heldout_key, heldout_loss, known_boxes

    d = cfg.data
    count = min(n, len(pool))
    if objective == "distill":
        out: dict[str, Any] = {"heldout_loss": None, "heldout_n": min(count, sheet_samples)}
    else:
        out = heldout_loss(model, pool, cfg, vocab, objective, n, seed)

    def fitted(k: int, frames: bool) -> dict[str, Any]:
        return fitted_item(pool, k, d, heldout_key(seed, k), frames=frames)

    if objective == "layout":
        if count and rules_for(vocab.pred_names, cfg.layout.rules):
            was_training = model.training
            model.eval()
            try:
                gen = model_generator(model, cfg, vocab)
                parsed = _parsed([fitted(k, False)["graph"] for k in range(count)], cfg, vocab)
                feeds = pad_graphs(parsed, d.max_objects, d.max_relationships).as_feeds()
                with torch.no_grad():
                    out.update(layout_quality(gen, parsed, feeds, [seed + i for i in range(count)]))
            finally:
                model.train(was_training)
        out.update(seed=int(seed), rules=cfg.layout.rules)
        return out
    if contact_sheet is not None and count:
        from sg2v.video import write_contact_sheet

        items = [fitted(k, True) for k in range(min(count, sheet_samples))]
        layouts = []
        for it in items:
            tracks, weight = held_tracks(it["boxes"], known_boxes(it), d.frames)  # (n, F, 4), (n, F)
            layouts.append({i: tracks[i] for i in range(len(tracks)) if weight[i].all()})
        videos = sample_videos(model, [it["graph"] for it in items], steps, guidance, sampler, seed, cfg=cfg,
                               vocab=vocab, layouts=layouts if model.grounded else None)  # (k, F, H, W, C)
        rows = []
        for it, video in zip(items, videos):
            real = np.zeros_like(video)
            real[:len(it["frames"])] = it["frames"]
            rows += [real, video]
        sheet = np.stack(rows)  # (2k, F, H, W, C)
        write_contact_sheet(Path(contact_sheet), sheet.reshape(-1, *sheet.shape[2:]), cols=d.frames,
                            scale=max(1, 64 // max(d.height, d.width)))
    out.update(seed=int(seed), steps=int(steps), guidance=float(guidance), sampler=sampler)
    return out
