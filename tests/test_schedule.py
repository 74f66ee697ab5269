"""Noise schedule and timestep spacing against closed forms (sg2v.schedule)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sg2v import schedule as S
from sg2v.errors import ConfigError


@pytest.mark.parametrize("num_train", [10, 1000])
def test_cosine_matches_closed_form(num_train):
    ac = S.cosine_alphas_cumprod(num_train)
    s = 0.008
    f = [math.cos((k / num_train + s) / (1 + s) * math.pi / 2) ** 2 for k in range(num_train + 1)]
    ref = np.array([f[k + 1] / f[0] for k in range(num_train)])
    # betas are clipped at 0.999 only where the closed form runs to zero at the very end
    assert ac.dtype == np.float64 and ac.shape == (num_train,)
    np.testing.assert_allclose(ac[:-1], ref[:-1], rtol=1e-12)
    assert np.all(np.diff(ac) < 0)


def test_zero_terminal_snr_rescale():
    cos = S.cosine_alphas_cumprod(1000)
    z = S.make_alphas_cumprod(1000, "cosine_zsnr")
    assert z[-1] == 0.0
    assert z[0] == pytest.approx(cos[0], rel=1e-14)
    assert np.all(np.diff(z) < 0)
    # sqrt(abar) is an affine map of the original sqrt(abar) (Lin et al. 2023, Alg. 1)
    x, y = np.sqrt(cos), np.sqrt(z)
    slope, icept = np.polyfit(x, y, 1)
    np.testing.assert_allclose(slope * x + icept, y, atol=1e-12)
    np.testing.assert_array_equal(S.make_alphas_cumprod(1000, "cosine"), cos)
    with pytest.raises(ConfigError, match="unknown noise schedule"):
        S.make_alphas_cumprod(1000, "linear")


def test_trailing_timesteps():
    np.testing.assert_array_equal(S.timesteps(1000, 10), np.arange(999, 0, -100))
    np.testing.assert_array_equal(S.timesteps(1000, 3), [999, 666, 332])
    np.testing.assert_array_equal(S.timesteps(1000, 1), [999])
    np.testing.assert_array_equal(S.timesteps(50, 50), np.arange(49, -1, -1))
    rng = np.random.default_rng(0)
    for steps in rng.integers(1, 1000, size=20):
        for spacing in S.SPACINGS:
            ts = S.timesteps(1000, int(steps), spacing)
            assert ts.dtype == np.int64 and ts.shape == (steps,)
            assert np.all(np.diff(ts) < 0) and ts[0] <= 999 and ts[-1] >= 0
            if spacing == "trailing":
                assert ts[0] == 999


def test_timesteps_rejects_bad_input():
    with pytest.raises(ConfigError, match="steps"):
        S.timesteps(1000, 0)
    with pytest.raises(ConfigError, match="steps"):
        S.timesteps(1000, 1001)
    with pytest.raises(ConfigError, match="spacing"):
        S.timesteps(1000, 8, "middle")


def test_alpha_sigma_snr_lambda():
    ac = S.make_alphas_cumprod(1000)
    t = np.random.default_rng(1).integers(0, 999, size=16)
    a, s = S.alpha(ac, t), S.sigma(ac, t)
    np.testing.assert_allclose(a * a + s * s, 1.0, rtol=1e-14)
    np.testing.assert_allclose(S.snr(ac, t), a * a / (s * s), rtol=1e-12)
    np.testing.assert_allclose(S.log_snr_half(ac, t), 0.5 * np.log(S.snr(ac, t)), rtol=1e-10, atol=1e-12)
    assert S.log_snr_half(ac, 999) == -np.inf and S.snr(ac, 999) == 0.0


def test_config_choices_name_every_schedule_and_sampler():
    from sg2v.config import CHOICES
    from sg2v.sampling import SAMPLERS
    from sg2v.schedule import SCHEDULES

    assert CHOICES["DiffusionConfig.schedule"] == tuple(SCHEDULES)
    assert set(CHOICES["DiffusionConfig.default_sampler"]) == set(SAMPLERS)
