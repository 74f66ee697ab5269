"""Layers shared by the encoder and the UNet, written so they export to ops every TensorRT target parses."""

from __future__ import annotations

import torch
from torch import nn


class TokenNorm(nn.Module):
    """LayerNorm over the last axis (Ba et al. 2016) as ReduceMean/Sqrt ops, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        mean = h.mean(dim=-1, keepdim=True)
        d = h - mean
        var = (d * d).mean(dim=-1, keepdim=True)
        h = d * torch.rsqrt(var + self.eps) * self.weight.float() + self.bias.float()
        return h.to(x.dtype)
