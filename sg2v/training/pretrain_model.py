"""The pretraining model pieces the losses and the loop share: the batch, the heads, the settings error."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from sg2v.errors import Sg2vError


class PretrainError(Sg2vError, ValueError):
    """A pretraining setting that cannot work (names the option and the fix)."""

    exit_code = 2


@dataclass
class PretrainBatch:
    """Graph tensors (docs/ARCHITECTURE.md), video in [-1, 1], and the region of the object to mask."""

    objs: torch.Tensor  # (B, O) int64
    obj_mask: torch.Tensor  # (B, O) float32
    triples: torch.Tensor  # (B, T, 3) int64
    triple_mask: torch.Tensor  # (B, T) float32
    video: torch.Tensor  # (B, F, C, H, W) float32 in [-1, 1]
    region: torch.Tensor  # (B, F, H, W) float32, 1 on the pixels of the object to mask
    masked_slot: torch.Tensor  # (B,) int64, that object's index in the padded object axis

    def to(self, device: torch.device | str) -> PretrainBatch:
        return PretrainBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def graph(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.objs, self.obj_mask, self.triples, self.triple_mask


class PretrainHeads(nn.Module):
    """The learnable InfoNCE temperature and the masked-object cross-attention head."""

    def __init__(self, context_dim: int, video_global_dim: int, feature_dim: int, heads: int,
                 init_temperature: float, max_logit_scale: float):
        super().__init__()
        if context_dim % heads:
            raise PretrainError(f"--attn-heads {heads} must divide the context width {context_dim}")
        self.max_logit_scale = max_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        # The query sees the hole (features where the object was) and the masked video's summary (which
        # objects are still there), so it can ask the graph for the one that is missing.
        self.query = nn.Sequential(nn.Linear(feature_dim + video_global_dim, context_dim), nn.SiLU(),
                                   nn.Linear(context_dim, context_dim))
        self.attn = nn.MultiheadAttention(context_dim, heads, batch_first=True)
        self.predict = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, context_dim),
                                     nn.SiLU(), nn.Linear(context_dim, feature_dim))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def recover(self, local: torch.Tensor, triple_mask: torch.Tensor, hole: torch.Tensor,
                masked_global: torch.Tensor) -> torch.Tensor:
        """The masked object's features from local (B, T, C), hole (B, Cf), masked_global (B, G): (B, Cf)."""
        q = self.query(torch.cat([hole, masked_global], dim=-1)).unsqueeze(1)  # (B, 1, C)
        out, _ = self.attn(q, local, local, key_padding_mask=triple_mask == 0,
                           need_weights=False)  # (B, 1, C)
        return self.predict(out.squeeze(1))  # (B, Cf)
