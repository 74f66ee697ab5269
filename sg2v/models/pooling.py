"""Masked scatter-mean pooling of message vectors onto segments (sg2im's average pooling of triple messages).

Contract (docs/ARCHITECTURE.md, "ScatterMeanPool"):
`out[b, o, :] = sum_{n : index[b, n] == o, mask[b, n] != 0} values[b, n, :] / max(count[b, o], 1)`.

Two forms compute the same thing. `scatter` adds rows in place with `scatter_add_` (cheap, for training);
`onehot` builds the incidence matrix `(index == arange(O)) * (mask != 0)` and multiplies it with the values,
so it exports to plain ONNX ops TensorRT 10.3 parses (Equal, Not, Cast, Mul, MatMul, ReduceSum, Max, Div).
Indices outside [0, O) are a caller bug: `scatter` raises on them, `onehot` drops them (sg2v.graph validates).
"""

from __future__ import annotations

import torch

POOLING_FORMS = ("scatter", "onehot")


def scatter_mean_pool(
    values: torch.Tensor,
    index: torch.Tensor,
    mask: torch.Tensor,
    num_segments: int,
    form: str = "scatter",
) -> torch.Tensor:
    """Masked mean of `values` rows grouped by `index` into `num_segments` slots (ScatterMeanPool)."""
    if form == "scatter":
        return _pool_scatter(values, index, mask, num_segments)
    if form == "onehot":
        return _pool_onehot(values, index, mask, num_segments)
    raise ValueError(f"unknown pooling form {form!r}; choose one of {POOLING_FORMS}")


def _pool_scatter(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, num_segments: int):
    b, _, d = values.shape
    keep = (mask != 0).to(values.dtype)  # (B, N)
    masked = values * keep.unsqueeze(-1)  # (B, N, D)
    idx = index.long()
    sums = values.new_zeros(b, num_segments, d).scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, d), masked)
    counts = values.new_zeros(b, num_segments).scatter_add_(1, idx, keep)  # (B, O)
    return sums / counts.clamp(min=1).unsqueeze(-1)  # (B, O, D)


def _pool_onehot(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, num_segments: int):
    segments = torch.arange(num_segments, device=index.device, dtype=index.dtype)  # (O,)
    hit = (index.unsqueeze(1) == segments.view(1, -1, 1)).to(values.dtype)  # (B, O, N)
    keep = (mask != 0).to(values.dtype).unsqueeze(1)  # (B, 1, N)
    incidence = hit * keep  # (B, O, N)
    sums = torch.matmul(incidence, values)  # (B, O, D)
    counts = incidence.sum(dim=-1, keepdim=True)  # (B, O, 1)
    return sums / torch.maximum(counts, torch.ones_like(counts))  # (B, O, D)
