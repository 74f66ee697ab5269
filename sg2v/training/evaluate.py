"""Sample videos from a torch SG2V with the shared torch-free sampler and score them with the shapes oracle.

The sampler code is `sg2v.sampling`'s, the very functions the runtime drives with numpy/CuPy arrays; here they
run on torch tensors. Classifier-free guidance is the runtime's batch-2 form: (cond, uncond) in one UNet call.
Initial noise per graph i is `default_rng(seed + i).standard_normal((1, F, C, H, W))` on the host, so a
backend given the same seed starts from the same x_T (docs/ARCHITECTURE.md "Sampler").
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
from sg2v.sampling import cfg_denoiser, get_sampler
from sg2v.schedule import make_alphas_cumprod, timesteps
from sg2v.video import unit_to_frames

__all__ = ["METRIC_KEYS", "evaluate", "false_presence", "format_table", "heldout_graphs", "initial_noise",
           "sample_videos"]

def initial_noise(cfg: ModelConfig, seeds: Sequence[int]) -> np.ndarray:
    """x_T for each seed, stacked: (B, F, C, H, W) float32 (the runtime draws the same per seed)."""
    d = cfg.data
    return np.concatenate([
        np.random.default_rng(int(s)).standard_normal((1, d.frames, d.channels, d.height, d.width),
                                                      dtype=np.float32)
        for s in seeds
    ])


def _graph_batch(graphs: Sequence[Any], cfg: ModelConfig, vocab: Any):
    parsed = [g if isinstance(g, SceneGraph) else parse_graph(g, vocab, cfg.data.max_objects,
                                                              cfg.data.max_relationships) for g in graphs]
    return pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships)


@torch.no_grad()
def sample_videos(model: torch.nn.Module, graphs: Sequence[Any], steps: int = 8, guidance: float = 3.0,
                  sampler: str = "dpmpp2m", seed: int = 0, *, cfg: ModelConfig | None = None,
                  vocab: Any = None, rescale: float | None = None) -> np.ndarray:
    """Videos for `graphs` (dicts or SceneGraphs): (B, F, H, W, C) uint8; graph i uses noise seed seed + i."""
    cfg = cfg if cfg is not None else model.cfg
    if vocab is None:
        from sg2v.vocab import shapes_vocab

        vocab = shapes_vocab()
    rescale = cfg.diffusion.default_guidance_rescale if rescale is None else rescale
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        gb = _graph_batch(graphs, cfg, vocab)
        context, mask = model.encode(gb)  # (B, L, D), (B, L)
        b = context.shape[0]
        null_ctx, null_mask = model.null_context_batch(b)  # (B, L, D), (B, L)
        ctx2 = torch.cat([context, null_ctx.to(context.dtype)])  # (2B, L, D): cond, then uncond
        mask2 = torch.cat([mask, null_mask.to(mask.dtype)])  # (2B, L)

        def denoise_pair(x2: torch.Tensor, t: float) -> torch.Tensor:
            tt = torch.full((x2.shape[0],), float(t), dtype=torch.float32, device=device)
            return model(x2, tt, ctx2, mask2).float()  # (2B, F, C, H, W)

        ac = make_alphas_cumprod(cfg.diffusion.num_train_timesteps, cfg.diffusion.schedule)
        ts = timesteps(cfg.diffusion.num_train_timesteps, int(steps), "trailing")
        x = torch.from_numpy(initial_noise(cfg, [seed + i for i in range(b)])).to(device)  # (B, F, C, H, W)
        x = get_sampler(sampler)(cfg_denoiser(denoise_pair, guidance, rescale), x, ts, ac)
        unit = x.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, F, H, W, C)
        return unit_to_frames(unit)
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
