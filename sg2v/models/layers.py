"""Layers shared by the encoder and the UNet, written so they export to ops every TensorRT target parses."""

from __future__ import annotations

import torch
from torch import nn


class TokenNorm(nn.Module):
    """LayerNorm over the last axis (Ba et al. 2016) as ReduceMean/Pow/Sqrt/Div ops, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # False in float16 exports, where the norm is a float32 island behind a Cast: ONNX Runtime's LayerNorm
        # fusion then takes the Cast's float16 input with float32 scales and the session fails to load.
        self.ort_fusable = True
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        mean = h.mean(dim=-1, keepdim=True)
        d = h - mean
        if self.ort_fusable:
            # Pow / Sqrt / Div: the ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div-Mul-Add chain that ONNX Runtime
            # fuses into its LayerNormalization kernel; TensorRT parses each op natively.
            var = d.pow(2).mean(dim=-1, keepdim=True)
            h = d / torch.sqrt(var + self.eps)
        else:
            # The same arithmetic in a form ONNX Runtime does not fuse (see `ort_fusable`).
            var = (d * d).mean(dim=-1, keepdim=True)
            h = d * torch.rsqrt(var + self.eps)
        h = h * self.weight.float() + self.bias.float()
        return h.to(x.dtype)
