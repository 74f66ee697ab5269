"""Layout network: a small transformer that denoises object tracks (one box per object per frame).

The layout stage between the graph and the pixels (docs/DESIGN.md): conditioned on the scene-graph encoder's
object vectors and its per-triple tokens, it predicts every object's track, F boxes [x0, y0, x1, y1] in [0,
1], as a diffusion model over the tracks mapped to [-1, 1] (2 b - 1). Tracks the caller pins (`known`,
`known_mask`) enter as inputs, so the sampled ones are drawn consistent with them (layout inpainting), and the
runtime puts the pinned values back exactly. One token per object slot; each block attends over the objects
and passes one message per triple between its subject and object (below). Attention is matmul-softmax-matmul
with an additive mask (the UNet's `Attention`) and pooling the one-hot MatMul form, so the graph exports to
plain ops. Like the UNet it is x0-parameterised and outputs v, so the runtime's samplers drive it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from sg2v.config import DataConfig, LayoutConfig
from sg2v.models.encoder import _gather_rows
from sg2v.models.layers import TokenNorm
from sg2v.models.pooling import scatter_mean_pool
from sg2v.models.unet import MASK_BIAS, Attention, SinusoidalEmbedding


class LayoutBlock(nn.Module):
    """Self-attention over the object tokens, then one graph-convolution message per triple, then an MLP.

    The triple message reads the subject's and the object's current tokens (their noisy tracks included) and
    the triple's context token, so a predicate acts on exactly the two tracks it relates (sg2im's
    GraphTripleConv, here over the layout's tokens); messages are mean-pooled back onto their objects.
    """

    def __init__(self, dim: int, heads: int, rel_dim: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = TokenNorm(dim), TokenNorm(dim), TokenNorm(dim)
        self.attn = Attention(dim, heads)
        self.message = nn.Sequential(nn.Linear(2 * dim + rel_dim, 2 * dim), nn.SiLU(),
                                     nn.Linear(2 * dim, 2 * dim))
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, bias: torch.Tensor, s_idx: torch.Tensor, o_idx: torch.Tensor,
                rel: torch.Tensor, rel_mask: torch.Tensor) -> torch.Tensor:
        """h (B, O, D), bias (B, 1, 1, O), s_idx / o_idx (B, T), rel (B, T, R), rel_mask (B, T)."""
        h = h + self.attn(self.ln1(h), bias=bias)
        n = self.ln2(h)
        pair = torch.cat([_gather_rows(n, s_idx), _gather_rows(n, o_idx), rel], dim=-1)  # (B, T, 2D + C)
        m = self.message(pair)  # (B, T, 2D)
        d = h.shape[-1]
        pooled = scatter_mean_pool(torch.cat([m[..., :d], m[..., d:]], dim=1),  # (B, 2T, D)
                                   torch.cat([s_idx, o_idx], dim=1), torch.cat([rel_mask, rel_mask], dim=1),
                                   h.shape[1], form="onehot")  # (B, O, D)
        h = h + pooled
        return h + self.ff(self.ln3(h))


class LayoutNet(nn.Module):
    """v-prediction over tracks x (B, O, F, 4) given the graph and pinned tracks (see module note)."""

    def __init__(self, lcfg: LayoutConfig, data: DataConfig, object_dim: int, context_dim: int,
                 num_preds: int, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.frames = data.frames
        self.track_dim = 4 * data.frames
        dim = lcfg.dim
        self.track_in = nn.Linear(self.track_dim, dim)
        self.known_in = nn.Linear(self.track_dim + 1, dim)
        self.object_in = nn.Linear(object_dim, dim)
        self.global_in = nn.Linear(context_dim, dim)
        # Its own predicate embedding beside the encoder's triple token: the encoder is trained for other
        # objectives (masked contrastive pretraining), and geometry needs the predicate itself at hand.
        self.pred_embed = nn.Embedding(num_preds, dim)
        self.time_embed = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(),
                                        nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(LayoutBlock(dim, lcfg.heads, context_dim + dim)
                                    for _ in range(lcfg.layers))
        self.norm_out = TokenNorm(dim)
        self.out = nn.Linear(dim, self.track_dim)
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("sqrt_ac", ac.sqrt().float(), persistent=False)  # (T,)
        self.register_buffer("inv_sqrt_1m_ac", (1.0 - ac).clamp_min(1e-12).rsqrt().float(),
                             persistent=False)  # (T,)

    def forward(self, x: torch.Tensor, t: torch.Tensor, objects: torch.Tensor, track_mask: torch.Tensor,
                context: torch.Tensor, context_mask: torch.Tensor, triples: torch.Tensor, known: torch.Tensor,
                known_mask: torch.Tensor) -> torch.Tensor:
        """x (B, O, F, 4) noisy tracks in [-1, 1], t (B,), objects (B, O, d), track_mask (B, O) (1: an object
        to lay out), context (B, 1 + T, C) and context_mask (B, 1 + T) (the encoder's), triples (B, T, 3),
        known (B, O, F, 4) in [-1, 1], known_mask (B, O) (1: pinned) -> v (B, O, F, 4)."""
        b, o = x.shape[0], x.shape[1]
        flat = x.reshape(b, o, self.track_dim)  # (B, O, 4F)
        km = known_mask.to(x.dtype)[..., None]  # (B, O, 1)
        pinned = torch.cat([known.reshape(b, o, self.track_dim) * km, km], dim=-1)  # (B, O, 4F + 1)
        emb = self.time_embed(t) + self.global_in(context[:, 0].to(x.dtype))  # (B, D)
        h = (self.track_in(flat) + self.known_in(pinned) + self.object_in(objects.to(x.dtype))
             + emb[:, None, :])  # (B, O, D)
        bias = ((1.0 - track_mask.to(h.dtype)) * MASK_BIAS)[:, None, None, :]  # (B, 1, 1, O)
        s_idx, o_idx = triples[..., 0], triples[..., 2]  # (B, T)
        rel = torch.cat([context[:, 1:].to(x.dtype), self.pred_embed(triples[..., 1])], -1)  # (B, T, C + D)
        rel_mask = context_mask[:, 1:].to(x.dtype)  # (B, T)
        for block in self.blocks:
            h = block(h, bias, s_idx, o_idx, rel, rel_mask)
        x0 = self.out(self.norm_out(h)).reshape(x.shape)  # (B, O, F, 4)
        ti = t.long()
        sa = self.sqrt_ac[ti].to(x.dtype).reshape(b, 1, 1, 1)
        inv = self.inv_sqrt_1m_ac[ti].to(x.dtype).reshape(b, 1, 1, 1)
        return (sa * x - x0) * inv  # v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)
