"""v-prediction diffusion loss with classifier-free-guidance dropout (the torch side of sg2v.schedule).

x_t = a_t x0 + s_t eps and v = a_t eps - s_t x0 (Salimans & Ho 2022), a_t^2 = alphas_cumprod[t] from
`sg2v.schedule.make_alphas_cumprod`, the one table the samplers use too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sg2v.config import ConfigError, DiffusionConfig
from sg2v.schedule import make_alphas_cumprod


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
) -> torch.Tensor:
    """Mean x0-weighted v-MSE of the layout network over the objects it lays out (layout inpainting).

    tracks (B, O, F, 4) in [0, 1] are mapped to [-1, 1]; in a fraction `pin_prob` of the samples each object
    is pinned with probability 1/2: its clean track is an input and it leaves the loss, so the network learns
    to draw the others around given ones. Draws from `generator`, in order: t, noise, pinning.
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
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        context, context_mask, objects = core.encode_all(graph)
    g = graph if isinstance(graph, Mapping) else graph.as_feeds()
    triples = torch.as_tensor(g["triples"], device=dev).long()
    x_t = q_sample(x0, t, noise, ac)
    v = core.layout_net(x_t, t.float(), objects, track_mask, context, context_mask, triples,
                        x0 * pin[..., None, None], pin)
    err = ((v.float() - v_target(x0, t, noise, ac).float()) ** 2).mean(dim=(2, 3))  # (B, O)
    weight = track_mask * (1.0 - pin)
    per_sample = (err * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B,)
    return (per_sample * x0_loss_weight(ac, t)).mean()
