"""Scene-graph encoder: sg2im's GraphTripleConv stack (Johnson et al. 2018) as SGDiff uses it, with masks.

Inputs are the padded `GraphBatch` tensors of docs/ARCHITECTURE.md; the output is the context the UNet attends
to: token 0 global, tokens 1..T one per triple slot. Padding never reaches a real output: padded triples are
masked out of the pooling and the means, and padded objects are referenced only by padded triples. The forward
pass is export-friendly: gathers and pooling are tensor ops, no `.item()`, no `nonzero()`, no data-dependent
Python control flow. `pooling_form` (an attribute, not a weight) picks the pooling form for export.
"""

from __future__ import annotations

import torch
from torch import nn

from sg2v.config import DataConfig, EncoderConfig
from sg2v.models.layers import TokenNorm
from sg2v.models.pooling import POOLING_FORMS, scatter_mean_pool


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, t], :] for every (b, t): (B, O, D), (B, T) -> (B, T, D); exports as GatherElements."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over axis 1 where mask != 0 (zeros when nothing is real): (B, N, D), (B, N) -> (B, D)."""
    keep = (mask != 0).to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    count = keep.sum(dim=1)  # (B, 1)
    return (x * keep).sum(dim=1) / torch.maximum(count, torch.ones_like(count))


class GraphTripleConv(nn.Module):
    """One graph convolution (sg2im GraphTripleConv): MLP on each (s, p, o), mean-pool onto objects."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        # net1: a triple's (subject, predicate, object) vectors -> candidates for new s, p, o
        self.net1 = _mlp([3 * dim, hidden_dim, 2 * hidden_dim + dim])
        # net2: an object's pooled messages -> its update
        self.net2 = _mlp([hidden_dim, hidden_dim, dim])
        self.norm_obj = TokenNorm(dim)
        self.norm_pred = TokenNorm(dim)

    def forward(
        self,
        obj_vecs: torch.Tensor,  # (B, O, D)
        pred_vecs: torch.Tensor,  # (B, T, D)
        s_idx: torch.Tensor,  # (B, T)
        o_idx: torch.Tensor,  # (B, T)
        obj_mask: torch.Tensor,  # (B, O)
        triple_mask: torch.Tensor,  # (B, T)
        form: str = "scatter",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden_dim
        s_vecs = _gather_rows(obj_vecs, s_idx)  # (B, T, D)
        o_vecs = _gather_rows(obj_vecs, o_idx)  # (B, T, D)
        out = self.net1(torch.cat([s_vecs, pred_vecs, o_vecs], dim=-1))  # (B, T, 2H + D)
        new_s, new_p, new_o = out[..., :h], out[..., h:-h], out[..., -h:]
        pooled = scatter_mean_pool(
            torch.cat([new_s, new_o], dim=1),  # (B, 2T, H)
            torch.cat([s_idx, o_idx], dim=1),  # (B, 2T)
            torch.cat([triple_mask, triple_mask], dim=1),  # (B, 2T)
            obj_vecs.shape[1],
            form=form,
        )  # (B, O, H)
        # Residual + LayerNorm keep a deep stack trainable; the masks zero padded slots so they stay inert.
        obj_out = self.norm_obj(obj_vecs + self.net2(torch.relu(pooled)))  # (B, O, D)
        obj_out = obj_out * obj_mask.unsqueeze(-1)
        pred_out = self.norm_pred(pred_vecs + new_p) * triple_mask.unsqueeze(-1)  # (B, T, D)
        return obj_out, pred_out


class SGEncoder(nn.Module):
    """Scene graph -> context tokens (global + one per triple), sg2im GraphTripleConv stack as in SGDiff."""

    def __init__(self, enc: EncoderConfig, data: DataConfig):
        super().__init__()
        self.num_objects = data.padded_objects
        self.num_triples = data.padded_triples
        self.context_dim = enc.context_dim
        self.pooling_form = "scatter"  # export switches to "onehot"; not part of the state dict
        d = enc.embed_dim
        self.obj_embed = nn.Embedding(enc.num_objs, d)
        self.pred_embed = nn.Embedding(enc.num_preds, d)
        self.layers = nn.ModuleList(GraphTripleConv(d, enc.hidden_dim) for _ in range(enc.num_layers))
        self.global_head = _mlp([2 * d, enc.hidden_dim, enc.context_dim])
        self.local_head = _mlp([3 * d, enc.hidden_dim, enc.context_dim])
        self.global_norm = TokenNorm(enc.context_dim)
        self.local_norm = TokenNorm(enc.context_dim)

    def set_pooling_form(self, form: str) -> SGEncoder:
        if form not in POOLING_FORMS:
            raise ValueError(f"unknown pooling form {form!r}; choose one of {POOLING_FORMS}")
        self.pooling_form = form
        return self

    def encode_graph(
        self, objs: torch.Tensor, obj_mask: torch.Tensor, triples: torch.Tensor, triple_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object and predicate vectors after the conv stack: (B, O, d), (B, T, d), padding zero."""
        dtype = self.obj_embed.weight.dtype
        obj_mask = obj_mask.to(dtype)
        triple_mask = triple_mask.to(dtype)
        s_idx, p_ids, o_idx = triples[..., 0], triples[..., 1], triples[..., 2]  # (B, T) each
        obj_vecs = self.obj_embed(objs) * obj_mask.unsqueeze(-1)  # (B, O, d)
        pred_vecs = self.pred_embed(p_ids) * triple_mask.unsqueeze(-1)  # (B, T, d)
        for layer in self.layers:
            obj_vecs, pred_vecs = layer(obj_vecs, pred_vecs, s_idx, o_idx, obj_mask, triple_mask,
                                        form=self.pooling_form)
        return obj_vecs, pred_vecs

    def _global(self, obj_vecs, pred_vecs, obj_mask, triple_mask) -> torch.Tensor:
        pooled = torch.cat([_masked_mean(obj_vecs, obj_mask), _masked_mean(pred_vecs, triple_mask)], dim=-1)
        return self.global_norm(self.global_head(pooled))  # (B, C)

    def _local(self, obj_vecs, pred_vecs, triples, triple_mask) -> torch.Tensor:
        s_vecs = _gather_rows(obj_vecs, triples[..., 0])  # (B, T, d)
        o_vecs = _gather_rows(obj_vecs, triples[..., 2])  # (B, T, d)
        tokens = self.local_norm(self.local_head(torch.cat([s_vecs, pred_vecs, o_vecs], dim=-1)))  # (B, T, C)
        return tokens * triple_mask.to(tokens.dtype).unsqueeze(-1)

    def global_embedding(self, objs, obj_mask, triples, triple_mask) -> torch.Tensor:
        """The global token alone: (B, C), C = context_dim."""
        obj_vecs, pred_vecs = self.encode_graph(objs, obj_mask, triples, triple_mask)
        return self._global(obj_vecs, pred_vecs, obj_mask, triple_mask)

    def local_tokens(self, objs, obj_mask, triples, triple_mask) -> torch.Tensor:
        """The per-triple tokens alone: (B, T, C), padded triples zero."""
        obj_vecs, pred_vecs = self.encode_graph(objs, obj_mask, triples, triple_mask)
        return self._local(obj_vecs, pred_vecs, triples, triple_mask)

    def forward(
        self, objs: torch.Tensor, obj_mask: torch.Tensor, triples: torch.Tensor, triple_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(objs (B, O), obj_mask (B, O), triples (B, T, 3), triple_mask (B, T)) -> context, context_mask."""
        context, context_mask, _ = self.encode_all(objs, obj_mask, triples, triple_mask)
        return context, context_mask

    def encode_all(
        self, objs: torch.Tensor, obj_mask: torch.Tensor, triples: torch.Tensor, triple_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """context (B, L, C), context_mask (B, L) and the object vectors (B, O, d) the layout stages read."""
        obj_vecs, pred_vecs = self.encode_graph(objs, obj_mask, triples, triple_mask)
        glob = self._global(obj_vecs, pred_vecs, obj_mask, triple_mask)  # (B, C)
        local = self._local(obj_vecs, pred_vecs, triples, triple_mask)  # (B, T, C)
        context = torch.cat([glob.unsqueeze(1), local], dim=1)  # (B, 1 + T, C)
        tm = triple_mask.to(context.dtype)
        context_mask = torch.cat([torch.ones_like(tm[:, :1]), tm], dim=1)  # (B, 1 + T)
        return context, context_mask, obj_vecs
