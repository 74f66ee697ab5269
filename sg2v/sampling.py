"""Samplers as pure functions of a v-prediction denoiser (torch-free, array-module agnostic).

`denoise(x, t) -> v` is any callable on arrays (numpy, CuPy or torch) with `t` a Python float timestep
index. Samplers touch arrays only through scalar `*` and array `+`, with coefficients taken as Python floats
from the float64 schedule, so the same code drives the PyTorch reference, ONNX Runtime and TensorRT, and the
array's dtype is preserved (a Python float never promotes float32). The v parameterisation
(x0 = a x - s v, eps = s x + a v) lives here, never inside the exported graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sg2v.errors import ConfigError, shown

Array = Any  # numpy.ndarray | cupy.ndarray | torch.Tensor
Denoiser = Callable[[Array, float], Array]
Callback = Callable[[int, float, Array, Array], None]  # (step, t, x after the step, predicted x0)
NoiseSource = Callable[[int], Array]  # step index -> standard normal noise shaped and typed like x
Timesteps = npt.ArrayLike  # the sampled training timesteps, first to last
AlphasCumprod = Sequence[float] | npt.NDArray[np.float64]  # abar_t for every training step t


def _alpha_sigma(alphas_cumprod: AlphasCumprod, t: float) -> tuple[float, float]:
    ac = float(alphas_cumprod[int(t)])
    return math.sqrt(ac), math.sqrt(max(1.0 - ac, 0.0))


def _schedule(
    timesteps: Timesteps, alphas_cumprod: AlphasCumprod
) -> list[tuple[float, float, float, float, float]]:
    """Per step (t, a, s, a_next, s_next); the step after the last one lands on clean data (a=1, s=0)."""
    ts = [int(t) for t in np.asarray(timesteps).reshape(-1)]
    if not ts:
        raise ConfigError("timesteps is empty; pass sg2v.schedule.timesteps(num_train, steps), steps >= 1")
    out = []
    for i, t in enumerate(ts):
        a, s = _alpha_sigma(alphas_cumprod, t)
        a_next, s_next = _alpha_sigma(alphas_cumprod, ts[i + 1]) if i + 1 < len(ts) else (1.0, 0.0)
        out.append((float(t), a, s, a_next, s_next))
    return out


def sample_ddim(
    denoise: Denoiser, x: Array, timesteps: Timesteps, alphas_cumprod: AlphasCumprod,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
) -> Array:
    """DDIM with eta = 0 (Song et al. 2021) for v-prediction; finite at a zero-SNR first step (x0 = -v)."""
    for i, (t, a, s, a_next, s_next) in enumerate(_schedule(timesteps, alphas_cumprod)):
        v = denoise(x, t)
        x0 = a * x + (-s) * v
        eps = s * x + a * v
        x = a_next * x0 + s_next * eps
        if callback is not None:
            callback(i, t, x, x0)
    return x


def sample_dpmpp_2m(
    denoise: Denoiser, x: Array, timesteps: Timesteps, alphas_cumprod: AlphasCumprod,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
) -> Array:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022) from v, with a first-order final step.

    The step from (a, s) to (a', s') is x' = (s'/s) x + (a' - a s'/s) D, which is the usual
    x' = (s'/s) x - a' expm1(-h) D with exp(-h) = a s' / (s a') written without lambda, so a zero-SNR start
    (a = 0, lambda = -inf) is finite. D is x0 for first-order steps and (1 + 1/2r) x0 - (1/2r) x0_prev for
    second-order ones, r = h_prev / h. A step whose previous lambda is -inf has r = inf, i.e. first order.
    """
    steps = _schedule(timesteps, alphas_cumprod)
    x0_prev = None
    lam_prev = None  # lambda at the previous step's start (finite only when a > 0)
    for i, (t, a, s, a_next, s_next) in enumerate(steps):
        v = denoise(x, t)
        x0 = a * x + (-s) * v
        lam = _lambda(a, s)
        lam_next = _lambda(a_next, s_next)  # None on the final step (s_next = 0): that step stays first order
        if x0_prev is not None and lam_prev is not None and lam is not None and lam_next is not None:
            r = (lam - lam_prev) / (lam_next - lam)  # h_prev / h
            d = (1.0 + 0.5 / r) * x0 + (-0.5 / r) * x0_prev
        else:
            d = x0
        x = (s_next / s) * x + (a_next - a * s_next / s) * d
        x0_prev, lam_prev = x0, lam
        if callback is not None:
            callback(i, t, x, x0)
    return x


def sample_ddpm(
    denoise: Denoiser, x: Array, timesteps: Timesteps, alphas_cumprod: AlphasCumprod,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
) -> Array:
    """Ancestral sampling (Ho et al. 2020) as DDIM with eta = 1 (Song et al. 2021 eq. 12, 16), from v.

    From (a, s) to (a', s'): x' = a' x0 + sqrt(s'^2 - c^2) eps + c z, c = (s'/s) sqrt(1 - (a/a')^2) (the DDPM
    posterior's standard deviation), z = noise(i). At zero SNR (a = 0, s = 1) c = s'; the last step adds none.
    """
    if noise is None:
        raise ConfigError("the ddpm sampler draws fresh noise at every step; pass noise=step -> N(0, I) "
                          "(sg2v.generation.step_noise gives the seeded per-video source)")
    for i, (t, a, s, a_next, s_next) in enumerate(_schedule(timesteps, alphas_cumprod)):
        v = denoise(x, t)
        x0 = a * x + (-s) * v
        eps = s * x + a * v
        ratio = a / a_next if a_next > 0.0 else 1.0
        c = (s_next / s) * math.sqrt(max(1.0 - ratio * ratio, 0.0))
        x = a_next * x0 + math.sqrt(max(s_next * s_next - c * c, 0.0)) * eps
        if c > 0.0:
            x = x + c * noise(i)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _lambda(a: float, s: float) -> float | None:
    """Half log-SNR log(a/s), None where it is infinite (a = 0 or s = 0)."""
    if a <= 0.0 or s <= 0.0:
        return None
    return math.log(a) - math.log(s)


def batch_std(x: Array) -> Array:
    """Per-sample standard deviation over all non-batch axes, shaped (B, 1, ..., 1) to broadcast against x."""
    axes = tuple(range(1, len(x.shape)))
    mean = x.mean(axis=axes, keepdims=True)
    d = x + (-1.0) * mean
    return (d * d).mean(axis=axes, keepdims=True) ** 0.5


def guide(v_cond: Array, v_uncond: Array, guidance: Any, rescale: Any) -> Array:
    """Classifier-free guidance (Ho & Salimans 2022) with guidance rescale (Lin et al. 2023, eq. 15-16).

    v = v_uncond + w (v_cond - v_uncond), then scaled by r std(v_cond) / std(v) + (1 - r) per sample.
    `guidance` and `rescale` are Python floats, or device scalars (a captured CUDA graph reads its settings
    from those): r = 0 multiplies by exactly 1 for finite v, so the rescale runs unless r is a Python 0.
    """
    v = v_uncond + guidance * (v_cond + (-1.0) * v_uncond)
    if isinstance(rescale, (int, float)) and rescale == 0.0:
        return v
    ratio = batch_std(v_cond) / (batch_std(v) + 1e-12)  # (B, 1, ..., 1)
    return (rescale * ratio + (1.0 - rescale)) * v


def cfg_denoiser(
    denoise_pair: Callable[[Array, float], Array], guidance: float, rescale: float = 0.0
) -> Denoiser:
    """A denoiser guided by `guide` around `denoise_pair(x2, t) -> v2`, which runs the conditional and the
    unconditional halves as one batch: x2 is x repeated along the batch axis (the B cond rows first, then the
    B uncond rows), v2 is stacked the same way.
    """
    guidance = float(guidance)
    rescale = float(rescale)
    if not 0.0 <= rescale <= 1.0:
        raise ConfigError(f"guidance rescale must be in [0, 1], got {rescale}; 0 disables it, 0.7 is typical")

    def denoise(x: Array, t: float) -> Array:
        b = x.shape[0]
        x2 = x[list(range(b)) * 2]  # (2B, ...) integer-list indexing works on numpy, CuPy and torch alike
        v2 = denoise_pair(x2, t)
        return guide(v2[:b], v2[b:], guidance, rescale)

    return denoise


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, a one-line summary for --help and docs, and whether it draws noise
    at every step (a stochastic sampler gets the loop's seeded per-video `NoiseSource`)."""

    fn: Callable[..., Array]
    summary: str
    stochastic: bool = False


# The sampler registry: the CLIs' choices, the manifest checks and the docs read it. A sampler is
# fn(denoise, x, timesteps, alphas_cumprod, callback=None, noise=None) -> x0; adding one is one entry here.
SAMPLER_INFO: dict[str, SamplerInfo] = {
    "ddim": SamplerInfo(sample_ddim, "DDIM, eta 0 (deterministic; first order)"),
    "dpmpp2m": SamplerInfo(sample_dpmpp_2m, "DPM-Solver++(2M) (deterministic; second order)"),
    "ddpm": SamplerInfo(sample_ddpm, "ancestral DDPM, DDIM with eta 1 (fresh seeded noise every step)",
                        stochastic=True),
}
SAMPLERS: dict[str, Callable[..., Array]] = {name: info.fn for name, info in SAMPLER_INFO.items()}


def sampler_help() -> str:
    """One line per registered sampler, for --help."""
    return "; ".join(f"{name}: {info.summary}" for name, info in SAMPLER_INFO.items())


def get_sampler(name: str) -> Callable[..., Array]:
    """The sampler called `name` in `SAMPLERS`."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise ConfigError(f"unknown sampler {shown(name)}; choose one of {sorted(SAMPLERS)}") from None
