"""OUNoise and GaussianNoise: statistics, sigma schedule, reset, state round trip."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vmamba_rl.exploration import GaussianNoise, OUNoise


def _draw(noise, n: int) -> np.ndarray:
    return np.stack([noise.sample() for _ in range(n)])


def test_ou_stationary_statistics_match_discrete_update():
    theta, sigma, dt = 0.15, 0.2, 1.0
    noise = OUNoise(4, theta=theta, sigma=sigma, dt=dt, seed=0)
    _draw(noise, 200)  # burn-in: (1 - theta)^200 ~ 1e-14 of the start remains
    xs = _draw(noise, 100_000)  # (n, 4)
    assert xs.dtype == np.float32
    # x' = rho x + sigma sqrt(dt) eps with rho = 1 - theta dt  =>  Var = sigma^2 dt / (1 - rho^2)
    rho = 1.0 - theta * dt
    exact_std = sigma * math.sqrt(dt / (1.0 - rho**2))
    assert noise.stationary_std() == pytest.approx(exact_std)
    assert exact_std == pytest.approx(sigma / math.sqrt(theta * (2 - theta * dt)))
    # effective sample size ~ n (1 - rho) / (1 + rho) * 4 dims ~ 32k: std's relative error ~0.4%
    assert xs.std() == pytest.approx(exact_std, rel=0.015)
    # the continuous-time value sigma / sqrt(2 theta) is 3.8% lower: the test tells them apart
    assert abs(xs.std() - sigma / math.sqrt(2 * theta)) > 0.02 * exact_std
    assert abs(xs.mean()) < 0.03 * exact_std * 4  # mean-reverting to 0
    lag1 = np.mean([np.corrcoef(xs[:-1, d], xs[1:, d])[0, 1] for d in range(4)])
    assert lag1 == pytest.approx(rho, abs=0.01)


def test_ou_mean_reversion_without_noise_is_geometric():
    noise = OUNoise(3, theta=0.3, sigma=0.0, sigma_min=0.0, seed=0)
    state = noise.state_dict()
    state["x"] = [1.0, -2.0, 0.5]
    noise.load_state_dict(state)
    for n in range(1, 11):
        x = noise.sample()
        np.testing.assert_allclose(x, np.array([1.0, -2.0, 0.5]) * 0.7**n, rtol=1e-6)


def test_sigma_schedule_values():
    noise = OUNoise(2, sigma=0.2, sigma_min=0.01)
    assert noise.sigma == 0.2
    assert noise.scale_sigma(0.0) == pytest.approx(0.2)
    assert noise.scale_sigma(0.5) == pytest.approx(0.105)
    assert noise.sigma == pytest.approx(0.105)
    assert noise.scale_sigma(1.0) == pytest.approx(0.01)
    assert noise.scale_sigma(3.0) == pytest.approx(0.01)  # past the end: the floor
    assert noise.scale_sigma(-1.0) == pytest.approx(0.2)  # before the start: sigma0
    with pytest.raises(ValueError):
        noise.scale_sigma(float("nan"))


@given(p=st.floats(0.0, 1.0), q=st.floats(0.0, 1.0))
def test_sigma_schedule_is_monotone_and_bounded(p, q):
    noise = GaussianNoise(1, sigma=0.3, sigma_min=0.05)
    sp, sq = noise.scale_sigma(p), noise.scale_sigma(q)
    assert 0.05 <= min(sp, sq) and max(sp, sq) <= 0.3 + 1e-12
    if p <= q:
        assert sp >= sq - 1e-12


def test_sigma_scales_the_noise():
    noise = OUNoise(2, seed=1)
    noise.scale_sigma(1.0)
    xs = _draw(noise, 20_000)
    assert xs.std() == pytest.approx(noise.stationary_std(), rel=0.05)
    assert noise.stationary_std() == pytest.approx(0.01 / math.sqrt(0.15 * 1.85))


def test_reset_returns_to_zero():
    noise = OUNoise(3, seed=2)
    _draw(noise, 50)
    assert np.any(noise.x != 0)
    noise.reset()
    np.testing.assert_array_equal(noise.x, np.zeros(3))
    # the first step after a reset is pure diffusion: sigma sqrt(dt) eps
    a, b = OUNoise(3, seed=9), OUNoise(3, seed=9)
    _draw(a, 30)
    a._rng = np.random.Generator(np.random.PCG64(5))
    b._rng = np.random.Generator(np.random.PCG64(5))
    a.reset()
    np.testing.assert_array_equal(a.sample(), b.sample())


@pytest.mark.parametrize("make", [lambda s: OUNoise(3, seed=s), lambda s: GaussianNoise(3, 0.1, s)])
def test_state_round_trip_continues_identically(make):
    noise = make(3)
    noise.scale_sigma(0.3)
    _draw(noise, 17)
    state = noise.state_dict()
    # plain numbers only: survives JSON and torch.load(weights_only=True)
    state_json = json.loads(json.dumps(state))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state_torch = torch.load(buf, weights_only=True)
    expected = _draw(noise, 25)
    for restored_state in (state, state_json, state_torch):
        other = make(999)
        other.load_state_dict(restored_state)
        assert other.sigma == pytest.approx(noise.sigma)
        np.testing.assert_array_equal(_draw(other, 25), expected)


def test_state_mismatch_errors():
    with pytest.raises(ValueError, match="kind"):
        GaussianNoise(2).load_state_dict(OUNoise(2).state_dict())
    with pytest.raises(ValueError, match="action_dim"):
        OUNoise(3).load_state_dict(OUNoise(2).state_dict())
    with pytest.raises(ValueError, match="theta"):
        OUNoise(2, theta=0.0)


def test_gaussian_noise_is_independent_scheduled_and_reset_keeps_its_stream():
    noise = GaussianNoise(2, sigma=0.1, seed=0)
    xs = _draw(noise, 20_000)
    assert xs.dtype == np.float32 and xs.shape == (20_000, 2)
    assert xs.std() == pytest.approx(0.1, rel=0.03)
    assert abs(np.corrcoef(xs[:-1, 0], xs[1:, 0])[0, 1]) < 0.03  # independent steps
    noise.scale_sigma(1.0)
    assert noise.sigma == 0.1  # no sigma_min given: constant
    decaying = GaussianNoise(2, sigma=0.1, seed=0, sigma_min=0.02)
    assert decaying.scale_sigma(0.5) == pytest.approx(0.06)
    # reset starts an episode: Gaussian noise has no state across steps, so the draws go on exactly as
    # without it, at the scheduled sigma (reset must not restart the generator or the schedule)
    a, b = (
        GaussianNoise(2, sigma=0.1, seed=3, sigma_min=0.02),
        GaussianNoise(2, sigma=0.1, seed=3, sigma_min=0.02),
    )
    a.scale_sigma(0.5), b.scale_sigma(0.5)
    _draw(a, 5), _draw(b, 5)
    a.reset()
    np.testing.assert_array_equal(_draw(a, 50), _draw(b, 50))
    assert a.sigma == b.sigma == pytest.approx(0.06)


def test_same_seed_same_noise():
    np.testing.assert_array_equal(_draw(OUNoise(2, seed=4), 10), _draw(OUNoise(2, seed=4), 10))
    assert not np.array_equal(_draw(OUNoise(2, seed=4), 10), _draw(OUNoise(2, seed=5), 10))
