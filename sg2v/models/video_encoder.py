"""Video encoders for masked contrastive pretraining (SGDiff's image encoder, carried to video).

Any encoder plugs in through `VideoEncoder`: `encode(video) -> (global, feature_map)` with video float
(B, F, C, H, W) in [-1, 1] (`sg2v.video.frames_to_unit`), global (B, global_dim) and feature_map
(B, F, feature_dim, h, w). `ConvVideoEncoder` is the small one trained jointly on the shapes world;
`FrozenVideoEncoder` wraps an external pretrained encoder, frozen, behind trainable linear projections.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from sg2v.config import DataConfig


@runtime_checkable
class VideoEncoder(Protocol):
    """What pretraining needs of a video encoder."""

    global_dim: int
    feature_dim: int

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, C, H, W) in [-1, 1] -> (global (B, global_dim), feature_map (B, F, feature_dim, h, w))."""
        ...


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvVideoEncoder(nn.Module):
    """Frames folded into the batch, a strided Conv2d stack per frame, then a temporal summary.

    The global embedding sees a coarse spatial grid (positions matter for "left of"/"above") and, besides the
    temporal mean, the late-minus-early difference of per-frame features (motion: "approaching").
    """

    def __init__(self, data: DataConfig, global_dim: int, channels: int = 32, feature_dim: int = 64,
                 grid: int = 4, pool: int = 1):
        super().__init__()
        self.pool = pool  # frames are average-pooled by this factor first (cheaper; objects stay visible)
        self.global_dim = global_dim
        self.feature_dim = feature_dim
        self.grid = grid
        c = channels
        self.stem = nn.Sequential(
            nn.Conv2d(data.channels, c, 3, padding=1), nn.GroupNorm(_groups(c), c), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(_groups(2 * c), 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GroupNorm(_groups(2 * c), 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, feature_dim, 3, stride=2, padding=1),
        )
        self.frame_head = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim * grid * grid, 2 * global_dim))
        self.global_head = nn.Sequential(nn.SiLU(), nn.Linear(4 * global_dim, 2 * global_dim), nn.SiLU(),
                                         nn.Linear(2 * global_dim, global_dim))

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, C, H, W) in [-1, 1] -> global (B, global_dim), feature_map (B, F, feature_dim, h, w) with
        h = H / (4 pool)."""
        b, f = video.shape[:2]
        frames = video.flatten(0, 1)  # (B*F, C, H, W)
        if self.pool > 1:
            frames = F.avg_pool2d(frames, self.pool)  # (B*F, C, H/pool, W/pool)
        fmap = self.stem(frames)  # (B*F, Cf, h, w)
        grid = F.adaptive_avg_pool2d(fmap, self.grid).flatten(1)  # (B*F, Cf*g*g)
        per_frame = self.frame_head(grid).view(b, f, -1)  # (B, F, 2G)
        half = max(f // 2, 1)
        motion = per_frame[:, f - half:].mean(1) - per_frame[:, :half].mean(1)  # (B, 2G)
        glob = self.global_head(torch.cat([per_frame.mean(1), motion], dim=-1))  # (B, G)
        return glob, fmap.view(b, f, *fmap.shape[1:])

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(video)


class FrozenVideoEncoder(nn.Module):
    """An external pretrained `VideoEncoder`, frozen, with trainable projections to the pretraining widths.

    The external model is held outside the module tree, so its weights never enter this state dict (only the
    projections do): checkpoints stay small, and the caller supplies the external model again on load, and
    places it on the training device itself (`.to()` on this wrapper moves only the projections).
    """

    def __init__(self, external: VideoEncoder, global_dim: int, feature_dim: int):
        super().__init__()
        if not isinstance(external, VideoEncoder):
            raise TypeError("the external video encoder must have encode(video), global_dim and feature_dim")
        self._external = [external]  # a list hides it from nn.Module registration
        if isinstance(external, nn.Module):
            external.requires_grad_(False).eval()
        self.global_dim = global_dim
        self.feature_dim = feature_dim
        self.global_proj = nn.Linear(external.global_dim, global_dim)
        self.feature_proj = nn.Conv2d(external.feature_dim, feature_dim, 1)

    @property
    def external(self) -> VideoEncoder:
        return self._external[0]

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            glob, fmap = self.external.encode(video)  # (B, Ge), (B, F, Ce, h, w)
        b, f = fmap.shape[:2]
        feats = self.feature_proj(fmap.flatten(0, 1).to(video.dtype))  # (B*F, Cf, h, w)
        return self.global_proj(glob.to(video.dtype)), feats.view(b, f, *feats.shape[1:])

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(video)
