"""Samplers against float64 references and the exact probability-flow solution for Gaussian data.

For data x0 ~ N(mu, s0^2) (elementwise) the optimal denoiser is known in closed form: with x = a x0 + s eps
and r^2 = a^2 s0^2 + s^2, E[x0|x] = mu + a s0^2 (x - a mu) / r^2 and E[eps|x] = s (x - a mu) / r^2. The
probability-flow ODE then maps x_T ~ N(0, 1) at zero SNR to x0 = mu + s0 x_T exactly, so every sampler must
converge to that map as its steps grow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sg2v import sampling as P
from sg2v import schedule as S
from sg2v.errors import ConfigError

AC = S.make_alphas_cumprod(1000, "cosine_zsnr")
MU, S0 = 0.7, 0.5


def _a_s(t):
    ac = float(AC[int(t)])
    return math.sqrt(ac), math.sqrt(1.0 - ac)


def gaussian_v(mu=MU, s0=S0):
    """The exact v = a E[eps|x] - s E[x0|x], written with scalar * and + only (any array module)."""

    def denoise(x, t):
        a, s = _a_s(t)
        c1 = a * s * (1.0 - s0 * s0) / (a * a * s0 * s0 + s * s)
        return c1 * x + (-c1 * a * mu - s * mu)

    return denoise


def _posterior(x, t):
    a, s = _a_s(t)
    r2 = a * a * S0 * S0 + s * s
    return MU + a * S0 * S0 * (x - a * MU) / r2, s * (x - a * MU) / r2  # E[x0|x], E[eps|x]


def ref_ddim(x, ts):
    """Song et al. 2021 eq. 12, eta = 0, from the posterior x0 / eps directly (float64)."""
    ts = list(ts)
    for i, t in enumerate(ts):
        x0, eps = _posterior(x, t)
        a1, s1 = _a_s(ts[i + 1]) if i + 1 < len(ts) else (1.0, 0.0)
        x = a1 * x0 + s1 * eps
    return x


def ref_dpmpp_2m(x, ts):
    """Lu et al. 2022 Alg. 2 in lambda form with expm1; the zero-SNR first step as its limit (float64)."""
    ts = list(ts)
    lam = [np.log(_a_s(t)[0]) - np.log(_a_s(t)[1]) if _a_s(t)[0] > 0 else -np.inf for t in ts]
    prev = None
    for i, t in enumerate(ts):
        a, s = _a_s(t)
        x0, _ = _posterior(x, t)
        if i + 1 == len(ts):  # lower-order final step onto clean data: x -> D = x0
            x = x0
            break
        a1, s1 = _a_s(ts[i + 1])
        h = lam[i + 1] - lam[i]
        if prev is None or not np.isfinite(lam[i - 1]):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        if np.isfinite(h):
            x = s1 / s * x - a1 * np.expm1(-h) * d
        else:  # exp(-h) -> 0 and s = 1 at zero SNR
            x = s1 * x + a1 * d
        prev = x0
    return x


def ref_ddpm(x, ts, zs):
    """Ho et al. 2020: x_{t'} ~ q(x_{t'} | x_t, x0) with x0 = E[x0|x_t], the posterior mean and variance in
    alpha-bar form (eq. 6-7) with beta_t = 1 - abar_t / abar_{t'}, noise zs[i] at step i (float64)."""
    ts = list(ts)
    for i, t in enumerate(ts):
        x0, _ = _posterior(x, t)
        ab = float(AC[int(t)])
        ab1 = float(AC[int(ts[i + 1])]) if i + 1 < len(ts) else 1.0
        beta = 1.0 - ab / ab1
        mean = (np.sqrt(ab1) * beta / (1.0 - ab)) * x0 + (np.sqrt(ab / ab1) * (1.0 - ab1) / (1.0 - ab)) * x
        var = (1.0 - ab1) / (1.0 - ab) * beta
        x = mean + np.sqrt(var) * zs[i]
    return x


def noise_of(x, seed=0):
    """A NoiseSource for numpy x: step i -> a fresh standard normal draw of x's shape (seeded by step)."""
    return lambda i: np.random.default_rng([seed, i]).standard_normal(x.shape).astype(x.dtype)


def call(name, denoise, x, ts, **kw):
    """SAMPLERS[name] with a seeded noise source when the sampler is stochastic."""
    if P.SAMPLER_INFO[name].stochastic and "noise" not in kw:
        kw["noise"] = noise_of(x)
    return P.SAMPLERS[name](denoise, x, ts, AC, **kw)


@pytest.mark.parametrize("steps", [1, 2, 5, 8, 25])
def test_ddpm_matches_the_float64_posterior_reference(steps):
    x = np.random.default_rng(steps).standard_normal((3, 4, 5))
    ts = S.timesteps(1000, steps)
    zs = [noise_of(x, 7)(i) for i in range(steps)]
    got = P.sample_ddpm(gaussian_v(), x, ts, AC, noise=lambda i: zs[i])
    np.testing.assert_allclose(got, ref_ddpm(x, ts, zs), rtol=1e-9, atol=1e-11)
    # the noise matters: another draw gives another sample (except for one step, which lands on E[x0|x_T])
    other = P.sample_ddpm(gaussian_v(), x, ts, AC, noise=noise_of(x, 8))
    assert (np.abs(other - got).max() > 1e-3) == (steps > 1)


def test_ddpm_needs_a_noise_source():
    with pytest.raises(ConfigError, match="noise"):
        P.sample_ddpm(gaussian_v(), np.ones(3), S.timesteps(1000, 4), AC)


@pytest.mark.parametrize("steps", [1, 2, 5, 8, 25])
def test_samplers_match_float64_references(steps):
    x = np.random.default_rng(steps).standard_normal((3, 4, 5))
    ts = S.timesteps(1000, steps)
    np.testing.assert_allclose(
        P.sample_ddim(gaussian_v(), x, ts, AC), ref_ddim(x, ts), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        P.sample_dpmpp_2m(gaussian_v(), x, ts, AC), ref_dpmpp_2m(x, ts), rtol=1e-10, atol=1e-12
    )


def test_samplers_converge_to_probability_flow_solution():
    x = np.random.default_rng(0).standard_normal(4000)
    exact = MU + S0 * x
    err = {}
    for name, sampler in P.SAMPLERS.items():
        if P.SAMPLER_INFO[name].stochastic:  # no probability-flow map: it samples the SDE
            continue
        err[name] = [
            np.abs(sampler(gaussian_v(), x, S.timesteps(1000, n), AC) - exact).max() for n in (2, 5, 25, 500)
        ]
    assert all(np.diff(err["ddim"]) < 0), err
    assert err["ddim"][-1] < 1e-2, err
    assert err["dpmpp2m"][-1] < 1e-3, err
    # second order: at 25 steps far closer than DDIM
    assert err["dpmpp2m"][2] < 1e-2 and err["dpmpp2m"][2] < 0.1 * err["ddim"][2], err


@pytest.mark.parametrize("name", sorted(P.SAMPLERS))
def test_samplers_reach_data_moments(name):
    x = np.random.default_rng(1).standard_normal(20000)
    # ancestral sampling with the posterior variance undershoots the data's spread at coarse grids (std 0.46
    # at 50 steps, 0.486 at 200): it reaches the moments on the full chain
    steps = 1000 if P.SAMPLER_INFO[name].stochastic else 50
    y = call(name, gaussian_v(), x, S.timesteps(1000, steps))
    se = S0 / math.sqrt(x.size)
    assert abs(y.mean() - MU) < 5 * se
    assert abs(y.std() - S0) < 0.02


@pytest.mark.parametrize("name", sorted(P.SAMPLERS))
def test_one_step_from_zero_snr_is_the_mean(name):
    # at zero SNR the x0 prediction is -v; the exact denoiser gives the data mean whatever x_T is
    x = np.random.default_rng(2).standard_normal((2, 8))
    y = call(name, gaussian_v(), x, S.timesteps(1000, 1))
    np.testing.assert_allclose(y, MU, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(P.SAMPLERS))
def test_same_code_on_numpy_and_torch(name):
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 8, 8)).astype(np.float32)
    ts = S.timesteps(1000, 8)
    calls = []
    noise = noise_of(x)
    y_np = call(name, gaussian_v(), x, ts, callback=lambda i, t, xi, x0: calls.append((i, t)), noise=noise)
    y_t = call(name, gaussian_v(), torch.from_numpy(x), ts, noise=lambda i: torch.from_numpy(noise(i)))
    assert y_np.dtype == np.float32 and y_t.dtype == torch.float32
    assert isinstance(y_t, torch.Tensor)
    np.testing.assert_allclose(y_t.numpy(), y_np, rtol=1e-5, atol=1e-6)
    assert calls == [(i, float(t)) for i, t in enumerate(ts)]


def _pair(xp_cat):
    """cond half: data mean 0.7; uncond half: data mean -0.2 (different s0 too)."""
    cond, uncond = gaussian_v(0.7, 0.5), gaussian_v(-0.2, 0.8)
    seen = {}

    def denoise_pair(x2, t):
        b = x2.shape[0] // 2
        seen["x2"] = x2
        return xp_cat([cond(x2[:b], t) * (1.0 + x2[:b] * x2[:b] * 0.1), uncond(x2[b:], t)])

    return denoise_pair, cond, uncond, seen


def _ref_cfg(vc, vu, g, phi):
    v = vu + g * (vc - vu)
    axes = tuple(range(1, vc.ndim))
    ratio = vc.std(axis=axes, keepdims=True) / v.std(axis=axes, keepdims=True)
    return phi * ratio * v + (1 - phi) * v


def test_cfg_denoiser_numpy_and_torch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 2, 4, 4))
    t = 499.0
    pair, cond, uncond, seen = _pair(np.concatenate)
    vc = cond(x, t) * (1.0 + x * x * 0.1)
    vu = uncond(x, t)
    # guidance 1 is the conditional model alone; the batch of 2B holds x twice
    np.testing.assert_allclose(P.cfg_denoiser(pair, 1.0, 0.0)(x, t), vc, rtol=1e-12)
    np.testing.assert_array_equal(seen["x2"], np.concatenate([x, x]))
    for g, phi in [(3.0, 0.0), (3.0, 0.7), (5.0, 1.0), (0.0, 0.5)]:
        got = P.cfg_denoiser(pair, g, phi)(x, t)
        np.testing.assert_allclose(got, _ref_cfg(vc, vu, g, phi), rtol=1e-9)
        pair_t, *_ = _pair(torch.cat)
        got_t = P.cfg_denoiser(pair_t, g, phi)(torch.from_numpy(x), t)
        np.testing.assert_allclose(got_t.numpy(), got, rtol=1e-9)
    # full rescale restores the conditional prediction's per-sample std
    got = P.cfg_denoiser(pair, 7.5, 1.0)(x, t)
    np.testing.assert_allclose(got.std(axis=(1, 2, 3, 4)), vc.std(axis=(1, 2, 3, 4)), rtol=1e-9)


def test_batch_std_matches_numpy():
    x = np.random.default_rng(5).standard_normal((3, 2, 5, 7)).astype(np.float32)
    ref = x.astype(np.float64).std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(P.batch_std(x), ref, rtol=1e-5)
    np.testing.assert_allclose(P.batch_std(torch.from_numpy(x)).numpy(), ref, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="rescale"):
        P.cfg_denoiser(lambda x, t: x, 3.0, 1.5)
    with pytest.raises(ConfigError, match="unknown sampler"):
        P.get_sampler("euler")
    with pytest.raises(ConfigError, match="empty"):
        P.sample_ddim(gaussian_v(), np.ones(3), [], AC)
    assert P.get_sampler("dpmpp2m") is P.sample_dpmpp_2m
