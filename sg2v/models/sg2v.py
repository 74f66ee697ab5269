"""SG2V: scene-graph encoder + temporal UNet + the learned null context for classifier-free guidance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sg2v.config import ModelConfig
from sg2v.errors import ConfigError
from sg2v.graph import GRAPH_TENSORS
from sg2v.models.encoder import SGEncoder
from sg2v.models.unet import TemporalUNet, count_parameters
from sg2v.schedule import make_alphas_cumprod


class SG2V(nn.Module):
    """Graph -> context tokens (`encode`), then the UNet's v-prediction (`forward`) (docs/ARCHITECTURE.md)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder.context_dim
        tokens = cfg.data.context_tokens
        self.encoder = SGEncoder(cfg.encoder, cfg.data)
        ac = torch.from_numpy(make_alphas_cumprod(cfg.diffusion.num_train_timesteps,
                                                  cfg.diffusion.schedule))  # (T,) float64
        if cfg.diffusion.prediction not in ("v", "x0"):
            raise ConfigError(f"diffusion.prediction = {cfg.diffusion.prediction!r}; choose 'v' or 'x0'")
        x0_ac = ac if cfg.diffusion.prediction == "x0" else None
        if (cfg.layout.dim > 0) != (cfg.unet.layout_dim > 0):
            raise ConfigError(f"layout.dim = {cfg.layout.dim} and unet.layout_dim = {cfg.unet.layout_dim}: a "
                              "model has both a layout network and a grounded UNet, or neither")
        self.layout_net = None
        if cfg.layout.dim > 0:
            from sg2v.models.layout import LayoutNet

            self.layout_net = LayoutNet(cfg.layout, cfg.data, cfg.encoder.embed_dim, d,
                                        cfg.encoder.num_preds, ac)
        self.unet = TemporalUNet(cfg.unet, cfg.data, d, x0_alphas_cumprod=x0_ac,
                                 object_dim=cfg.encoder.embed_dim)
        # Learned global token, zeros elsewhere; the local slots are masked out, so they never get a gradient.
        null = torch.zeros(1, tokens, d)
        null[0, 0] = torch.randn(d)  # the encoder's global token is LayerNormed, so unit scale
        self.null_context = nn.Parameter(null)  # (1, L, D)
        mask = torch.zeros(1, tokens)
        mask[0, 0] = 1.0
        self.register_buffer("null_context_mask", mask, persistent=False)  # (1, L)

    def encode(self, graph: Mapping[str, torch.Tensor] | Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Graph tensors (mapping with GRAPH_TENSORS, or a `GraphBatch`) -> context (B, L, D), mask (B, L)."""
        g = graph_tensors(graph, self.null_context.device)
        return self.encoder(g["objs"], g["obj_mask"], g["triples"], g["triple_mask"])

    def encode_all(self, graph: Mapping[str, torch.Tensor] | Any
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like `encode`, plus the object vectors (B, O, d) that ground a layout-conditioned UNet."""
        g = graph_tensors(graph, self.null_context.device)
        return self.encoder.encode_all(g["objs"], g["obj_mask"], g["triples"], g["triple_mask"])

    @property
    def grounded(self) -> bool:
        """Whether the UNet takes a layout (objects and boxes) beside the graph tokens."""
        return self.unet.layout

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
        objects: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v-prediction: x (B, F, C, H, W), t (B,) float timestep index -> v (B, F, C, H, W)."""
        layout = () if objects is None and boxes is None else (objects, boxes)
        if guidance is not None:
            return self.unet(x, t, context, context_mask, *layout, guidance=guidance)
        return self.unet(x, t, context, context_mask, *layout)

    def null_context_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The learned null context (1, L, D) and its mask (1, L), float32 numpy (as a bundle stores them)."""
        ctx = self.null_context.detach().float().cpu().numpy()  # (1, L, D)
        mask = self.null_context_mask.detach().float().cpu().numpy()  # (1, L): the global token only
        return np.ascontiguousarray(ctx, dtype=np.float32), np.ascontiguousarray(mask, dtype=np.float32)

    def null_context_batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null context repeated `batch` times: (B, L, D), (B, L)."""
        ctx = self.null_context.expand(batch, -1, -1)
        return ctx, self.null_context_mask.expand(batch, -1).to(ctx.dtype)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part and in total."""
        enc, unet = count_parameters(self.encoder), count_parameters(self.unet)
        null = self.null_context.numel()
        return {"encoder": enc, "unet": unet, "null_context": null, "total": enc + unet + null}


def graph_tensors(graph: Mapping[str, Any] | Any, device: torch.device | str | None = None,
                  ) -> dict[str, torch.Tensor]:
    """A `GraphBatch` (numpy) or a mapping of arrays/tensors -> tensors on `device`, contract dtypes."""
    if not isinstance(graph, Mapping):
        if not hasattr(graph, "as_feeds"):
            raise TypeError(
                f"expected a GraphBatch or a mapping with keys {GRAPH_TENSORS}, got {type(graph).__name__}"
            )
        graph = graph.as_feeds()
    missing = [k for k in GRAPH_TENSORS if k not in graph]
    if missing:
        raise KeyError(f"graph tensors lack {missing}; pass the four arrays of sg2v.graph.GraphBatch")
    out = {}
    for key in GRAPH_TENSORS:
        dtype = torch.int64 if key in ("objs", "triples") else torch.float32
        out[key] = torch.as_tensor(graph[key]).to(device=device, dtype=dtype)
    return out


def build_model(cfg: ModelConfig) -> SG2V:
    """The SG2V network described by `cfg` (weights freshly initialised)."""
    return SG2V(cfg)
