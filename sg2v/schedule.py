"""Noise schedules and timestep spacing as tiny pure functions (numpy float64, torch-free).

Conventions (docs/ARCHITECTURE.md): training timestep index t in [0, num_train); `alphas_cumprod[t]` is
a_t^2 where x_t = a_t x0 + s_t eps, a_t^2 + s_t^2 = 1. The training side (`sg2v.training.losses`) and the
runtime build their tables from these functions, so there is one source of truth.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from sg2v.errors import ConfigError, shown

SCHEDULES = ("cosine", "cosine_zsnr")
SPACINGS = ("trailing", "leading", "linspace")
Step = int | np.integer[Any] | npt.NDArray[np.integer[Any]]  # one timestep or an array of them
Value = np.float64 | npt.NDArray[np.float64]  # per timestep: a scalar for one, an array for an array


def cosine_alphas_cumprod(
    num_train: int, s: float = 0.008, max_beta: float = 0.999
) -> npt.NDArray[np.float64]:
    """Cosine schedule (Nichol & Dhariwal 2021): abar(t) = cos^2((t/T + s)/(1 + s) pi/2), betas clipped."""
    _check_num_train(num_train)
    u = np.arange(num_train + 1, dtype=np.float64) / num_train  # (T+1,)
    f = np.cos((u + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)  # (T,)
    abar: npt.NDArray[np.float64] = np.cumprod(1.0 - betas)  # (T,)
    return abar


def rescale_zero_terminal_snr(alphas_cumprod: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Shift and scale sqrt(abar): last step SNR exactly 0, first step unchanged (Lin et al. 2023, Alg. 1)."""
    a = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64))
    a0, a_last = a[0], a[-1]
    a = (a - a_last) * (a0 / (a0 - a_last))
    abar: npt.NDArray[np.float64] = a * a
    return abar


def make_alphas_cumprod(num_train: int, schedule: str = "cosine_zsnr") -> npt.NDArray[np.float64]:
    """The schedule named in `DiffusionConfig.schedule`: "cosine" or "cosine_zsnr" (rescaled to zero SNR)."""
    if schedule == "cosine":
        return cosine_alphas_cumprod(num_train)
    if schedule == "cosine_zsnr":
        return rescale_zero_terminal_snr(cosine_alphas_cumprod(num_train))
    raise ConfigError(f"unknown noise schedule {schedule!r}; choose one of {list(SCHEDULES)}")


def timesteps(num_train: int, steps: int, spacing: str = "trailing") -> npt.NDArray[np.int64]:
    """Descending int64 timesteps for `steps` steps; "trailing" starts at num_train - 1 (Lin et al. 2023)."""
    _check_num_train(num_train)
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train:
        raise ConfigError(f"sampler steps must be an integer in [1, {num_train}], got {shown(steps)}")
    if spacing == "trailing":
        ts = np.round(np.arange(num_train, 0, -num_train / steps)) - 1
    elif spacing == "leading":
        ts = (np.arange(steps) * (num_train // steps))[::-1]
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, num_train - 1, steps))[::-1]
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    return np.ascontiguousarray(ts[:steps]).astype(np.int64)  # (steps,)


def alpha(alphas_cumprod: npt.ArrayLike, t: Step) -> Value:
    """Signal scale a_t = sqrt(abar_t)."""
    out: Value = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64)[t])
    return out


def sigma(alphas_cumprod: npt.ArrayLike, t: Step) -> Value:
    """Noise scale s_t = sqrt(1 - abar_t)."""
    out: Value = np.sqrt(1.0 - np.asarray(alphas_cumprod, dtype=np.float64)[t])
    return out


def snr(alphas_cumprod: npt.ArrayLike, t: Step) -> Value:
    """Signal-to-noise ratio a_t^2 / s_t^2 (0 at a zero-terminal-SNR last step)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)[t]
    out: Value = ac / (1.0 - ac)
    return out


def log_snr_half(alphas_cumprod: npt.ArrayLike, t: Step) -> Value:
    """lambda_t = log(a_t / s_t) (DPM-Solver's half log-SNR); -inf where the SNR is zero."""
    with np.errstate(divide="ignore"):
        out: Value = np.log(alpha(alphas_cumprod, t)) - np.log(sigma(alphas_cumprod, t))
    return out


def _check_num_train(num_train: int) -> None:
    if not isinstance(num_train, (int, np.integer)) or num_train < 2:
        raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {num_train!r}")
