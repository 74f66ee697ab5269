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
    from sg2v.training.pretrain_model import PretrainBatch, PretrainHeads


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


def consistency_distill_loss(
    student: Any,
    teacher: Any,
    x0: torch.Tensor,
    graph: Mapping[str, torch.Tensor] | Any,
    generator: torch.Generator | None = None,
    *,
    boxes: torch.Tensor | None = None,
    guidance_range: tuple[float, float] = (1.0, 8.0),
    rescale: float = 0.0,
    grid_steps: int = 20,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor:
    """Consistency distillation of a guided teacher into a guidance-conditioned student (consistency models,
    Song et al. 2023, with latent consistency models' guided teacher step, Luo et al. 2023).

    On a grid of `grid_steps` trailing timesteps, x_t = q_sample(x0, t_n): the teacher's guided v at weight w
    (classifier-free guidance with `rescale`, `sg2v.sampling.guide`; w ~ U(guidance_range) per sample) takes
    one DDIM step to t_{n+1}, and the student's clean-clip estimate at (x_t, t_n, w) regresses on its own
    estimate there (stop-gradient, as improved consistency training does), or on the teacher's endpoint after
    the last grid point. The student (its UNet takes `guidance`) shares the teacher's encoder and layout, so
    its conditioning is computed once. Draws from `generator`, in order: grid index, noise, w.
    """
    from sg2v.sampling import guide
    from sg2v.schedule import timesteps

    core = getattr(student, "module", student)
    teach = getattr(teacher, "module", teacher)
    ac = alphas_cumprod if alphas_cumprod is not None else alphas_cumprod_tensor(core.cfg.diffusion,
                                                                                  x0.device)
    b, dev = x0.shape[0], x0.device
    grid = torch.from_numpy(timesteps(ac.shape[0], grid_steps, "trailing")).to(dev)  # (N,) descending
    n = torch.randint(0, grid_steps, (b,), generator=generator, device=dev)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
    lo, hi = (float(v) for v in guidance_range)
    w = lo + (hi - lo) * torch.rand(b, generator=generator, device=dev)  # (B,)
    t = grid[n]
    last = n + 1 >= grid_steps  # the step after the last grid point lands on clean data
    t_next = torch.where(last, torch.zeros_like(t), grid[(n + 1).clamp_max(grid_steps - 1)])
    x_t = q_sample(x0, t, noise, ac)
    shape = (b,) + (1,) * (x0.dim() - 1)
    with torch.no_grad():
        context, context_mask, objects = core.encode_all(graph)
        layout: tuple[torch.Tensor, ...] = ()
        pair: tuple[torch.Tensor, ...] = ()
        if core.grounded:
            if boxes is None:
                raise ConfigError("this model is grounded on a layout: pass the clips' boxes (B, O, F, 4)")
            layout = (objects, boxes.to(objects.dtype))
            pair = (torch.cat([objects, torch.zeros_like(objects)]),
                    torch.cat([layout[1], torch.zeros_like(layout[1])]))
        null_ctx, null_mask = teach.null_context_batch(b)
        v2 = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]).float(), torch.cat([context, null_ctx]),
                     torch.cat([context_mask, null_mask.to(context_mask.dtype)]), *pair).float()
        v = guide(v2[:b], v2[b:], w.reshape(shape), rescale)
        a, s = _scales(ac, t, x0)
        x0_t = a * x_t - s * v  # the teacher's clean estimate and noise: one DDIM step to t_next
        eps_t = s * x_t + a * v
        a_n, s_n = _scales(ac, t_next, x0)
        keep = (~last).to(x0.dtype).reshape(shape)
        a_n = a_n * keep + (1.0 - keep)  # (1, 0) on the clean side
        s_n = s_n * keep
        x_next = a_n * x0_t + s_n * eps_t
        target = x_next.clone()
        if (~last).any():
            idx = (~last).nonzero().squeeze(1)
            target[idx] = _clean_estimate(student, x_next[idx], t_next[idx], context[idx], context_mask[idx],
                                          tuple(x[idx] for x in layout), w[idx], ac)
    pred = _clean_estimate(student, x_t, t, context, context_mask, layout, w, ac)
    return ((pred.float() - target.float()) ** 2).reshape(b, -1).mean(dim=1).mean()


def _clean_estimate(model: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    context_mask: torch.Tensor, layout: tuple[torch.Tensor, ...], w: torch.Tensor,
                    ac: torch.Tensor) -> torch.Tensor:
    """A guidance-conditioned model's x0 estimate a_t x - s_t v at (x, t, w)."""
    v = model(x, t.float(), context, context_mask, *layout, guidance=w).float()
    a, s = _scales(ac, t, x)
    return a * x - s * v
