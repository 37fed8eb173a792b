"""RunningMeanStd / ObservationNormalizer: Welford against numpy, Chan merge, persistence, freezing."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vmamba_rl.normalization import ObservationNormalizer, RunningMeanStd, default_normalize_keys


def _stream(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Non-zero mean, per-element scales over several decades: the regime where naive sums lose digits.
    return (
        rng.normal(5.0, 1.0, size=(n, *shape)) * np.logspace(-2, 2, int(np.prod(shape))).reshape(shape)
        + 100.0
    )


def test_welford_single_steps_match_numpy() -> None:
    x = _stream(500, (7,))
    rms = RunningMeanStd((7,))
    for row in x:
        rms.update(row)
    assert rms.count == 500
    np.testing.assert_allclose(rms.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.std, x.std(0), rtol=1e-9)  # population std: sqrt(S / n)


def test_document_formula_step_by_step() -> None:
    """mean += (x - mean_old)/n ; S += (x - mean_old)(x - mean_new) on a 3-sample hand example."""
    rms = RunningMeanStd(())
    for v in (2.0, 4.0, 9.0):
        rms.update(np.array(v))
    # mean 5, S = (2-5)^2 + (4-5)^2 + (9-5)^2 = 26, std = sqrt(26/3)
    assert rms.mean == pytest.approx(5.0)
    assert rms.S == pytest.approx(26.0)
    assert rms.std == pytest.approx(np.sqrt(26.0 / 3.0))


def test_batch_update_equals_single_steps_and_multidim() -> None:
    x = _stream(300, (2, 3), seed=1)
    a, b = RunningMeanStd((2, 3)), RunningMeanStd((2, 3))
    for row in x:
        a.update(row)
    b.update(x[:17])  # uneven batches, including a leading (N, M) batch shape
    b.update(x[17:257].reshape(8, 30, 2, 3))
    b.update(x[257:])
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-12)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-9)
    np.testing.assert_allclose(b.std, x.std(0), rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    n1=st.integers(0, 60),
    n2=st.integers(0, 60),
    seed=st.integers(0, 10_000),
)
def test_merge_of_two_partials_equals_union(n1: int, n2: int, seed: int) -> None:
    x = _stream(n1 + n2, (4,), seed)
    p, q = RunningMeanStd((4,)), RunningMeanStd((4,))
    for row in x[:n1]:
        p.update(row)
    q.update(x[n1:]) if n2 else None
    p.merge(q)
    assert p.count == n1 + n2
    if n1 + n2:
        np.testing.assert_allclose(p.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(p.std, x.std(0), rtol=1e-8, atol=1e-10)


def test_normalize_numpy_and_torch() -> None:
    x = _stream(200, (5,), seed=2)
    rms = RunningMeanStd((5,))
    rms.update(x)
    expected = (x - x.mean(0)) / (x.std(0) + 1e-8)
    out_np = rms.normalize(x)
    assert out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, expected, rtol=1e-5, atol=1e-5)
    # torch path (float32, so a well-conditioned stream: float32 cannot resolve 1e-2 spreads around 100)
    y = np.random.default_rng(5).normal(3.0, 2.0, size=(200, 5))
    rms_t = RunningMeanStd((5,))
    rms_t.update(y)
    out_t = rms_t.normalize(torch.as_tensor(y, dtype=torch.float32).view(10, 20, 5))  # (B, K, D) broadcast
    assert out_t.dtype == torch.float32 and out_t.shape == (10, 20, 5)
    expected_t = (y - y.mean(0)) / (y.std(0) + 1e-8)
    np.testing.assert_allclose(out_t.reshape(200, 5).numpy(), expected_t, rtol=1e-5, atol=1e-5)
    clipped = rms.normalize(x * 100.0, clip=3.0)
    assert np.abs(clipped).max() <= 3.0


def test_identity_before_first_sample_and_frozen() -> None:
    rms = RunningMeanStd((3,))
    x = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(rms.normalize(x), x, rtol=1e-6)
    rms.update(np.array([1.0, 1.0, 1.0]))
    rms.frozen = True
    rms.update(np.array([100.0, 100.0, 100.0]))
    rms.merge(rms)
    assert rms.count == 1
    with pytest.raises(ValueError, match="shape"):
        RunningMeanStd((3,)).update(np.zeros(4))


def test_state_round_trip_through_weights_only_checkpoint() -> None:
    x = _stream(50, (6,), seed=3)
    rms = RunningMeanStd((6,))
    rms.update(x)
    buf = io.BytesIO()
    torch.save({"rms": rms.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain tensors only: what checkpoints require
    other = RunningMeanStd((6,))
    other.load_state_dict(loaded["rms"])
    assert other.count == rms.count
    np.testing.assert_array_equal(other.mean, rms.mean)
    np.testing.assert_array_equal(other.S, rms.S)
    np.testing.assert_array_equal(other.normalize(x), rms.normalize(x))
    with pytest.raises(ValueError, match="shape"):
        RunningMeanStd((5,)).load_state_dict(loaded["rms"])


def _parking_like_space() -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "lidar": gym.spaces.Box(0, 10, (120,), np.float32),
            "target": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32),
            "img": gym.spaces.Box(0, 255, (3, 8, 8), np.uint8),
            "action_mask": gym.spaces.Box(0, 1, (42,), np.float32),
        }
    )


def test_observation_normalizer_keys_update_normalize_and_state() -> None:
    space = _parking_like_space()
    assert default_normalize_keys(space) == ["lidar", "target"]  # float vectors; no image, no mask
    with pytest.raises(ValueError, match="not in the observation space"):
        ObservationNormalizer(space, ["lidar", "depth"])
    norm = ObservationNormalizer(space, ["lidar", "target"])
    space.seed(0)
    samples = [space.sample() for _ in range(40)]
    for s in samples:
        norm.update(s)
    lidar = np.stack([s["lidar"] for s in samples]).astype(np.float64)
    np.testing.assert_allclose(norm.rms["lidar"].mean, lidar.mean(0), rtol=1e-10)
    # a replay-shaped batch (B, K+1, ...): chosen keys normalised, others untouched
    batch = {k: np.stack([np.stack([s[k], s[k]]) for s in samples[:4]]) for k in space.spaces}
    out = norm.normalize(batch)
    assert out["img"] is batch["img"] and out["action_mask"] is batch["action_mask"]
    np.testing.assert_allclose(
        out["lidar"], (batch["lidar"] - lidar.mean(0)) / (lidar.std(0) + 1e-8), rtol=1e-4, atol=1e-4
    )
    norm.freeze()
    norm.update(samples[0])
    assert norm.frozen and norm.rms["lidar"].count == 40
    norm.unfreeze()
    assert not norm.frozen

    other = ObservationNormalizer(space, ["lidar", "target"])
    other.load_state_dict(norm.state_dict())
    for k in ("lidar", "target"):
        np.testing.assert_array_equal(other.normalize(batch)[k], out[k])
    with pytest.raises(ValueError, match="covers"):
        ObservationNormalizer(space, ["lidar"]).load_state_dict(norm.state_dict())
