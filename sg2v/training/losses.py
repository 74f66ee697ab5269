"""The training losses: v-prediction diffusion with classifier-free-guidance dropout (the torch side of
sg2v.schedule), and SGDiff's masked contrastive pretraining losses.

x_t = a_t x0 + s_t eps and v = a_t eps - s_t x0 (Salimans & Ho 2022), a_t^2 = alphas_cumprod[t] from
`sg2v.schedule.make_alphas_cumprod`, the one table the samplers use too.
Pretraining (SGDiff, Yang et al. 2022): symmetric InfoNCE (CLIP) between the graph's and the video's global
embeddings, and the recovery of a masked object's video features from the graph's local tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sg2v.config import DiffusionConfig
from sg2v.errors import ConfigError
from sg2v.schedule import make_alphas_cumprod

if TYPE_CHECKING:
    from sg2v.training.pretrain import PretrainBatch, PretrainHeads


def alphas_cumprod_tensor(dcfg: DiffusionConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The schedule of `dcfg` as a float64 tensor (T,); callers index it, then cast."""
    if dcfg.prediction not in PREDICTIONS:
        raise ConfigError(f"diffusion.prediction = {dcfg.prediction!r}; choose one of {list(PREDICTIONS)}")
    return torch.from_numpy(make_alphas_cumprod(dcfg.num_train_timesteps, dcfg.schedule)).to(device)


Tensor = torch.Tensor
PREDICTIONS = ("v", "x0")
X0_LOSS_WEIGHT_CAP = 10.0  # x0-parameterised models: loss weight min(SNR + 1, cap) on the x0 error


def x0_loss_weight(alphas_cumprod: Tensor, t: Tensor, cap: float = X0_LOSS_WEIGHT_CAP) -> Tensor:
    """Factor on the v-MSE of an x0-parameterised model: min(SNR + 1, cap) / (SNR + 1), (B,).

    The v-MSE of a model whose layers predict x0 is (SNR + 1) x the x0-MSE: unbounded as t -> 0, where the
    few lowest-noise samples would dominate every batch. This caps the x0 weight at `cap` (1 at high noise).
    """
    ac = alphas_cumprod.to(t.device)[t.long()]  # (B,)
    snr_p1 = 1.0 / (1.0 - ac).clamp_min(1e-20)  # SNR + 1 = 1 / (1 - a)
    return (snr_p1.clamp_max(cap) / snr_p1).float()


def _scales(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """a_t, s_t for integer t (B,), shaped (B, 1, ..., 1) in like's dtype."""
    ac = alphas_cumprod.to(like.device)[t.long()]  # (B,) float64
    shape = (-1,) + (1,) * (like.dim() - 1)
    return ac.sqrt().to(like.dtype).reshape(shape), (1.0 - ac).sqrt().to(like.dtype).reshape(shape)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process x_t = a_t x0 + s_t eps (Ho et al. 2020)."""
    a, s = _scales(alphas_cumprod, t, x0)
    return a * x0 + s * noise


def v_target(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """v = a_t eps - s_t x0 (Salimans & Ho 2022)."""
    a, s = _scales(alphas_cumprod, t, x0)
    return a * noise - s * x0


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight for v-prediction, min(SNR, gamma) / (SNR + 1) (Hang et al. 2023): (B,)."""
    ac = alphas_cumprod.to(t.device)[t.long()]
    snr = ac / (1.0 - ac).clamp_min(1e-20)
    return (snr.clamp_max(gamma) / (snr + 1.0)).float()


def diffusion_loss(
    model: Any,
    x0: torch.Tensor,
    graph: Mapping[str, torch.Tensor] | Any,
    generator: torch.Generator | None = None,
    *,
    cond_drop_prob: float | None = None,
    min_snr_gamma: float | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean v-prediction MSE at uniform t, graphs dropped to the null context per sample (Ho & Salimans 2022).

    `model` is an `SG2V` (or a DDP wrapper of one: `.module` is looked through for `encode` and the null
    context, while the UNet call goes through the wrapper so DDP sees the forward). x0 (B, F, C, H, W) in
    [-1, 1]; `generator` on x0's device draws t, the noise and the dropout. `cond_drop_prob` defaults to the
    model config's; `min_snr_gamma` enables Min-SNR weighting.
    """
    core = getattr(model, "module", model)
    dcfg = core.cfg.diffusion
    p_drop = dcfg.cond_drop_prob if cond_drop_prob is None else float(cond_drop_prob)
    if not 0.0 <= p_drop <= 1.0:
        raise ConfigError(f"cond_drop_prob must be in [0, 1], got {p_drop}")
    ac = alphas_cumprod if alphas_cumprod is not None else alphas_cumprod_tensor(dcfg, x0.device)
    b, dev = x0.shape[0], x0.device
    t = torch.randint(0, ac.shape[0], (b,), generator=generator, device=dev)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
    drop = torch.rand(b, generator=generator, device=dev) < p_drop  # (B,)

    context, context_mask, objects = core.encode_all(graph)  # (B, L, D), (B, L), (B, O, d)
    null_ctx, null_mask = core.null_context_batch(b)
    context = torch.where(drop[:, None, None], null_ctx.to(context.dtype), context)
    context_mask = torch.where(drop[:, None], null_mask.to(context_mask.dtype), context_mask)
    layout: tuple[torch.Tensor, ...] = ()
    if core.grounded:
        if boxes is None:
            raise ConfigError("this model is grounded on a layout: pass the clips' boxes (B, O, F, 4)")
        keep = (~drop).to(objects.dtype)  # a dropped sample loses its layout too: the unconditional half
        layout = (objects * keep[:, None, None], boxes.to(objects.dtype) * keep[:, None, None, None])

    x_t = q_sample(x0, t, noise, ac)
    v = model(x_t, t.to(torch.float32), context, context_mask, *layout)
    err = (v.float() - v_target(x0, t, noise, ac).float()) ** 2
    per_sample = err.reshape(b, -1).mean(dim=1)  # (B,)
    if dcfg.prediction == "x0":
        per_sample = per_sample * x0_loss_weight(ac, t)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(ac, t, float(min_snr_gamma))
    return per_sample.mean()


def layout_loss(
    model: Any,
    tracks: torch.Tensor,
    track_mask: torch.Tensor,
    graph: Mapping[str, torch.Tensor] | Any,
    generator: torch.Generator | None = None,
    *,
    pin_prob: float = 0.3,
    alphas_cumprod: torch.Tensor | None = None,
    train_encoder: bool = False,
    track_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean x0-weighted v-MSE of the layout network over the objects it lays out (layout inpainting).

    tracks (B, O, F, 4) in [0, 1] are mapped to [-1, 1]; in a fraction `pin_prob` of the samples each object
    is pinned with probability 1/2: its clean track is an input and it leaves the loss, so the network learns
    to draw the others around given ones. Draws from `generator`, in order: t, noise, pinning.
    `track_weight` (B, O, F) weighs each object's frames (real data: 0 where the box is unknown); only
    objects known in every frame are pinned. None: every frame counts.
    """
    core = getattr(model, "module", model)
    if core.layout_net is None:
        raise ConfigError("this model has no layout network (layout.dim = 0); pick a size with one")
    ac = alphas_cumprod if alphas_cumprod is not None else alphas_cumprod_tensor(core.cfg.diffusion,
                                                                                  tracks.device)
    b, o = track_mask.shape
    dev = tracks.device
    t = torch.randint(0, ac.shape[0], (b,), generator=generator, device=dev)  # (B,)
    x0 = tracks.float() * 2.0 - 1.0  # (B, O, F, 4)
    noise = torch.randn(x0.shape, generator=generator, device=dev)
    some = torch.rand(b, 1, generator=generator, device=dev) < pin_prob
    pin = ((torch.rand(b, o, generator=generator, device=dev) < 0.5) & some).float() * track_mask  # (B, O)
    if track_weight is not None:
        track_weight = track_weight.float()
        pin = pin * (track_weight.amin(dim=2) > 0).float()  # a track with unknown frames is never given
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        context, context_mask, objects = core.encode_all(graph)
    g = graph if isinstance(graph, Mapping) else graph.as_feeds()
    triples = torch.as_tensor(g["triples"], device=dev).long()
    x_t = q_sample(x0, t, noise, ac)
    v = core.layout_net(x_t, t.float(), objects, track_mask, context, context_mask, triples,
                        x0 * pin[..., None, None], pin)
    err = ((v.float() - v_target(x0, t, noise, ac).float()) ** 2).mean(dim=3)  # (B, O, F)
    weight = (track_mask * (1.0 - pin))[..., None].expand_as(err)  # (B, O, F)
    if track_weight is not None:
        weight = weight * track_weight
    per_sample = (err * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1.0)  # (B,): mean over frames
    return (per_sample * x0_loss_weight(ac, t)).mean()


# ---------------------------------------------------------------------------- masked contrastive pretraining
def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): rows of a and b are positives pairwise, every other row a negative."""
    a = F.normalize(a, dim=-1)  # (B, D)
    b = F.normalize(b, dim=-1)  # (B, D)
    logits = logit_scale * (a @ b.t())  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def mask_video(video: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Zero (black: -1) the pixels of `region`: (B, F, C, H, W), (B, F, H, W) -> (B, F, C, H, W)."""
    keep = (region == 0).unsqueeze(2)  # (B, F, 1, H, W)
    return torch.where(keep, video, torch.full_like(video, -1.0))


def region_pool(fmap: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of a feature map over a pixel region, weighted by the region's coverage of each cell.

    (B, F, C, h, w), (B, F, H, W) -> features (B, C), total weight (B,) (0 where the region is empty).
    """
    b, f, c, h, w = fmap.shape
    cover = F.adaptive_avg_pool2d(region.flatten(0, 1).unsqueeze(1).to(fmap.dtype), (h, w))  # (B*F, 1, h, w)
    cover = cover.view(b, f, 1, h, w)
    total = cover.sum(dim=(1, 2, 3, 4))  # (B,)
    feats = (fmap * cover).sum(dim=(1, 3, 4)) / total.clamp(min=1e-6).unsqueeze(-1)  # (B, C)
    return feats, total


def pretrain_losses(encoder: nn.Module, video_encoder: nn.Module, heads: PretrainHeads, batch: PretrainBatch,
                    contrastive_weight: float = 1.0, masked_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Weighted SGDiff losses on one batch: {"loss", "contrastive", "masked", "temperature"}."""
    context, _ = encoder(*batch.graph())  # (B, 1 + T, C)
    graph_global, local = context[:, 0], context[:, 1:]
    b = batch.video.shape[0]
    masked = mask_video(batch.video, batch.region)  # (B, F, C, H, W)
    # One pass over clean and masked videos together; per-frame normalisation keeps the halves independent.
    glob, fmap = video_encoder.encode(torch.cat([batch.video, masked], dim=0))
    video_global, masked_global = glob[:b], glob[b:]
    fmap_clean, fmap_masked = fmap[:b], fmap[b:]  # (B, F, Cf, h, w)
    scale = heads.scale()
    contrastive = info_nce(graph_global, video_global, scale)
    target, weight = region_pool(fmap_clean.detach(), batch.region)  # (B, Cf), (B,)
    hole, _ = region_pool(fmap_masked, batch.region)  # (B, Cf)
    pred = heads.recover(local, batch.triple_mask, hole, masked_global)  # (B, Cf)
    valid = (weight > 0).to(pred.dtype)  # an object fully outside the frame has nothing to recover
    per_sample = 1.0 - F.cosine_similarity(pred, target, dim=-1)  # (B,)
    masked_loss = (per_sample * valid).sum() / valid.sum().clamp(min=1.0)
    loss = contrastive_weight * contrastive + masked_weight * masked_loss
    return {"loss": loss, "contrastive": contrastive, "masked": masked_loss, "temperature": 1.0 / scale}
