"""HOPE-style SAC: squashed-Gaussian log-prob, temperature direction, one update by hand, persistence."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from conftest import TINY_SAC
from vmamba_rl.agents.base import NonFiniteError
from vmamba_rl.agents.sac import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    HopeSACAgent,
    squashed_gaussian_log_prob,
    squashed_gaussian_sample,
)
from vmamba_rl.config import make_config
from vmamba_rl.replay import ReplayBatch

TINY = TINY_SAC


def _space() -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "lidar": gym.spaces.Box(0, 10, (12,), np.float32),
            "target": gym.spaces.Box(-1, 1, (5,), np.float32),
            "img": gym.spaces.Box(0, 255, (3, 8, 8), np.uint8),
        }
    )


ACTION_SPACE = gym.spaces.Box(np.array([-0.75, -2.5], np.float32), np.array([0.75, 2.5], np.float32))


def _agent(seed: int = 0, space: gym.spaces.Dict | None = None, **over) -> HopeSACAgent:
    torch.manual_seed(seed)
    cfg = make_config(**{**TINY, **over})
    return HopeSACAgent(space or _space(), ACTION_SPACE, cfg, device="cpu")


def _window_dict(space: gym.spaces.Dict, B: int, K: int, seed: int = 0) -> dict:
    """Hand-made replay data: obs (B, K+1, ...) raw, action in [-1, 1], rewards and flags."""
    rng = np.random.default_rng(seed)
    obs = {}
    for k, s in space.spaces.items():
        if s.dtype == np.uint8:
            obs[k] = rng.integers(0, 256, (B, K + 1, *s.shape), dtype=np.uint8)
        else:
            obs[k] = (rng.normal(2.0, 3.0, (B, K + 1, *s.shape))).astype(np.float32)
    terminated = np.zeros(B, np.float32)
    truncated = np.zeros(B, np.float32)
    terminated[0] = 1.0
    truncated[1] = 1.0  # must bootstrap
    return {
        "obs": obs,
        "action": rng.uniform(-1, 1, (B, 2)).astype(np.float32),
        "reward": rng.normal(0, 1, B).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
    }


def _window_batch(space: gym.spaces.Dict, B: int, K: int, seed: int = 0) -> ReplayBatch:
    d = _window_dict(space, B, K, seed)
    return ReplayBatch.from_windows(d["obs"], d["action"], d["reward"], d["terminated"], d["truncated"])


def _fill(agent: HopeSACAgent, n: int, seed: int = 0) -> None:
    space = agent.observation_space
    space.seed(seed)
    ACTION_SPACE.seed(seed)
    obs = space.sample()
    for t in range(n):
        nxt = space.sample()
        agent.store_transition(obs, ACTION_SPACE.sample(), float(t % 3), nxt, t % 17 == 16, t % 11 == 10)
        obs = space.sample() if t % 17 == 16 or t % 11 == 10 else nxt


# --- the squashed Gaussian -------------------------------------------------------------------------------
def test_log_prob_matches_tanh_transformed_distribution() -> None:
    torch.manual_seed(0)
    mean = torch.randn(64, 3)
    log_std = torch.empty(64, 3).uniform_(-1.5, 0.5)
    a, logp = squashed_gaussian_sample(mean, log_std)
    assert a.shape == (64, 3) and logp.shape == (64,)
    assert torch.all(a.abs() < 1)
    ref = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    a_safe = a.clamp(-0.999, 0.999)  # the reference inverts tanh: keep away from +-1
    z = torch.atanh(a_safe)
    ours = squashed_gaussian_log_prob(z, mean, log_std)
    # the document's +1e-6 in log(1 - a^2 + 1e-6) is the only difference
    torch.testing.assert_close(ours, ref.log_prob(a_safe).sum(-1), atol=5e-3, rtol=1e-4)


def test_log_prob_density_equals_finite_difference_of_cdf_1d() -> None:
    """1-D: P(a <= x) = Phi((atanh(x) - mu) / sigma); its derivative is the density of a."""
    mu, log_sigma = 0.3, math.log(0.7)
    xs = torch.linspace(-0.95, 0.95, 39, dtype=torch.float64)
    h = 1e-5

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return Normal(mu, math.exp(log_sigma)).cdf(torch.atanh(x))

    density = (cdf(xs + h) - cdf(xs - h)) / (2 * h)
    z = torch.atanh(xs)[:, None]
    logp = squashed_gaussian_log_prob(z, torch.full_like(z, mu), torch.full_like(z, log_sigma))
    torch.testing.assert_close(logp.exp(), density, rtol=2e-5, atol=1e-6)


def test_log_std_clamped_and_deterministic_action_is_tanh_mean() -> None:
    agent = _agent()
    with torch.no_grad():
        agent.actor.log_std_head.bias.fill_(100.0)
    obs = {k: np.stack([v]) for k, v in agent.observation_space.sample().items()}
    t = agent._obs_seq_to_batch(obs)
    mean, log_std = agent.actor(t)
    assert torch.all(log_std == LOG_STD_MAX)
    with torch.no_grad():
        agent.actor.log_std_head.bias.fill_(-100.0)
    assert torch.all(agent.actor(t)[1] == LOG_STD_MIN)
    expected = agent.scaler.to_env(torch.tanh(mean).detach().numpy()[0])
    np.testing.assert_allclose(agent.act(obs, explore=False), expected, rtol=1e-6)
    a = agent.act(obs, explore=True)
    assert a.shape == (2,) and np.all(np.abs(a) <= ACTION_SPACE.high)


# --- the temperature --------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_entropy, direction", [(50.0, +1), (-50.0, -1)])
def test_alpha_moves_toward_target_entropy(target_entropy: float, direction: int) -> None:
    """Entropy below the target -> alpha grows (more exploration); above -> alpha shrinks."""
    agent = _agent(sac_target_entropy=target_entropy, sac_alpha_lr=1e-2)
    batch = _window_batch(agent.observation_space, 8, 1)
    before = agent.alpha
    for _ in range(3):
        metrics = agent.update(batch)
    assert np.sign(agent.alpha - before) == direction
    assert np.sign(metrics["entropy"] - target_entropy) == -direction


# --- one update by hand -------------------------------------------------------------------------------------
def _adam_first_step(p: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    # Adam's first step: m_hat = g, v_hat = g^2 -> p - lr * g / (|g| + eps)
    return p - lr * g / (g.abs() + 1e-8)


def _assert_first_step_close(p_agent: torch.Tensor, p_hand: torch.Tensor, g: torch.Tensor, lr: float) -> None:
    """Adam's first step moves a weight by lr * g / (|g| + 1e-8): about lr * sign(g), except where |g| is
    near 1e-8, where the rounding of g (its summation order differs between CPUs) decides the step. Those
    weights are held only to a step of at most lr; the rest to 1e-5."""
    well = g.abs() > 1e-5
    torch.testing.assert_close(p_agent[well], p_hand[well], atol=1e-5, rtol=1e-5)
    assert bool(((p_agent - p_hand)[~well].abs() <= 2 * lr).all())


@pytest.mark.parametrize("fusion", ["mlp", "attention"])
def test_one_update_against_hand_computation(fusion: str) -> None:
    K, B, lr, gamma, tau, alpha0 = 2, 8, 1e-2, 0.9, 0.1, 0.5
    agent = _agent(
        seed=1, fusion=fusion, seq_len=K, gamma=gamma, tau=tau, sac_init_alpha=alpha0, grad_clip=1e9,
        sac_actor_lr=lr, sac_critic_lr=lr, sac_alpha_lr=lr, normalize_keys=["lidar", "target"],
    )  # fmt: skip
    space = agent.observation_space
    stats_data = _window_dict(space, 30, 0, seed=7)["obs"]  # (30, 1, ...) samples for the normalisers
    for i in range(30):
        agent.normalizer.update({k: v[i, 0] for k, v in stats_data.items()})
    batch = _window_dict(space, B, K, seed=3)
    actor, critic = copy.deepcopy(agent.actor), copy.deepcopy(agent.critic)
    target = copy.deepcopy(agent.critic_target)
    log_alpha = math.log(alpha0)

    torch.manual_seed(123)
    metrics = agent.update(
        ReplayBatch.from_windows(
            batch["obs"], batch["action"], batch["reward"], batch["terminated"], gamma=gamma
        )
    )

    # --- by hand, same weights, same noise -------------------------------------------------------------
    torch.manual_seed(123)
    window = {}
    for k, v in batch["obs"].items():
        if k in ("lidar", "target"):
            d = stats_data[k][:, 0].astype(np.float64)
            v = np.clip((v - d.mean(0)) / (d.std(0) + 1e-8), -10, 10)
        window[k] = torch.as_tensor(v if v.dtype == np.uint8 else v.astype(np.float32))
    s = {k: v[:, :K] for k, v in window.items()}
    s2 = {k: v[:, 1:] for k, v in window.items()}
    a = torch.as_tensor(batch["action"])
    r = torch.as_tensor(batch["reward"])
    done = torch.as_tensor(batch["terminated"])  # truncation bootstraps
    alpha = math.exp(log_alpha)

    def log_pi(z: torch.Tensor, m: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * math.log(2 * math.pi) - ls - 0.5 * ((z - m) / ls.exp()) ** 2
        return (gauss - torch.log(1 - torch.tanh(z) ** 2 + 1e-6)).sum(-1)

    with torch.no_grad():
        m2, ls2 = actor(s2)
        z2 = m2 + ls2.exp() * torch.randn_like(m2)
        a2 = torch.tanh(z2)
        q_next = torch.min(target.q1(s2, a2), target.q2(s2, a2))
        y = r + gamma * (1 - done) * (q_next - alpha * log_pi(z2, m2, ls2))
    assert y[0].item() == pytest.approx(r[0].item())  # terminal: no bootstrap
    l1 = ((critic.q1(s, a) - y) ** 2).mean()
    l2 = ((critic.q2(s, a) - y) ** 2).mean()
    assert metrics["critic_loss"] == pytest.approx((l1 + l2).item(), rel=1e-5)
    assert metrics["target_q"] == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-6)
    grads = torch.autograd.grad(l1 + l2, list(critic.parameters()))
    with torch.no_grad():
        for p, g in zip(critic.parameters(), grads, strict=True):
            p.copy_(_adam_first_step(p, g, lr))
    for p_hand, p_agent, g in zip(critic.parameters(), agent.critic.parameters(), grads, strict=True):
        _assert_first_step_close(p_agent, p_hand, g, lr)

    m, ls = actor(s)
    z = m + ls.exp() * torch.randn_like(m)
    logp = log_pi(z, m, ls)
    actor_loss = (alpha * logp - torch.min(critic.q1(s, torch.tanh(z)), critic.q2(s, torch.tanh(z)))).mean()
    assert metrics["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-5, abs=1e-6)
    grads = torch.autograd.grad(actor_loss, list(actor.parameters()))
    with torch.no_grad():
        for p, g in zip(actor.parameters(), grads, strict=True):
            p.copy_(_adam_first_step(p, g, lr))
    for p_hand, p_agent, g in zip(actor.parameters(), agent.actor.parameters(), grads, strict=True):
        _assert_first_step_close(p_agent, p_hand, g, lr)

    # alpha: loss = -log_alpha * (log pi + H_target), H_target = -|A| = -2
    g_alpha = -(logp.detach() + (-2.0)).mean()
    assert metrics["alpha_loss"] == pytest.approx(log_alpha * g_alpha.item(), rel=1e-5)
    expected_log_alpha = log_alpha - lr * g_alpha.item() / (abs(g_alpha.item()) + 1e-8)
    assert agent.log_alpha.item() == pytest.approx(expected_log_alpha, rel=1e-6)

    # soft update: exactly tau of the way from the old target to the updated critic
    for p_t, p_old, p_new in zip(
        agent.critic_target.parameters(), target.parameters(), agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(p_t, tau * p_new + (1 - tau) * p_old, atol=1e-7, rtol=1e-6)


def test_target_update_interval() -> None:
    agent = _agent(sac_target_update_interval=2)
    batch = _window_batch(agent.observation_space, 8, 1)
    before = copy.deepcopy(agent.critic_target.state_dict())
    agent.update(batch)
    for k, v in agent.critic_target.state_dict().items():
        torch.testing.assert_close(v, before[k])
    agent.update(batch)
    assert any(not torch.equal(v, before[k]) for k, v in agent.critic_target.state_dict().items())


def test_non_finite_loss_stops_training() -> None:
    agent = _agent()
    batch = _window_batch(agent.observation_space, 8, 1)
    batch.reward[2] = np.nan
    with pytest.raises(NonFiniteError, match="critic_loss"):
        agent.update(batch)


# --- replay, history, other environments, persistence ------------------------------------------------------
@pytest.mark.parametrize("K,n_step", [(1, 1), (3, 1), (1, 4), (3, 4)])
def test_train_from_replay_on_dronenav_like_space(K: int, n_step: int) -> None:
    space = gym.spaces.Dict(
        {
            "base": gym.spaces.Box(-5, 5, (10,), np.float32),
            "depth": gym.spaces.Box(0, 255, (1, 16, 16), np.uint8),
        }
    )
    agent = _agent(space=space, seq_len=K, fusion="attention", n_step=n_step)
    assert agent.train() is None  # empty buffer
    _fill(agent, 40)
    assert agent.normalizer.keys == ["base"] and agent.normalizer.rms["base"].count == 40
    metrics = agent.train(0.5)
    assert metrics is not None and all(math.isfinite(v) for v in metrics.values())
    seq = {k: np.stack([v] * K) for k, v in space.sample().items()}
    assert agent.act(seq).shape == (2,)
    w, names = agent.attention_weights(seq)
    assert w.shape == (1, 2, 2, 2) and names == ["base", "depth"]
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    if K > 1:
        with pytest.raises(ValueError, match="history"):
            agent.act(space.sample())


def test_attention_weights_need_attention_fusion() -> None:
    agent = _agent(fusion="mlp")
    with pytest.raises(ValueError, match="attention"):
        agent.attention_weights({k: v[None] for k, v in agent.observation_space.sample().items()})


def test_save_load_round_trip_gives_identical_actions(tmp_path) -> None:
    agent = _agent(seed=5, fusion="attention", seq_len=2)
    _fill(agent, 30, seed=1)
    for _ in range(2):
        agent.train()
    path = tmp_path / "sac.pt"
    agent.save(str(path))
    other = _agent(seed=99, fusion="attention", seq_len=2)
    other.load(str(path))
    assert other.alpha == agent.alpha and other.total_it == agent.total_it
    np.testing.assert_array_equal(other.normalizer.rms["lidar"].mean, agent.normalizer.rms["lidar"].mean)
    agent.observation_space.seed(3)
    for _ in range(3):
        seq = {k: np.stack([v, v]) for k, v in agent.observation_space.sample().items()}
        np.testing.assert_array_equal(other.act(seq, explore=False), agent.act(seq, explore=False))
        torch.manual_seed(0)
        a1 = agent.act(seq, explore=True)
        torch.manual_seed(0)
        np.testing.assert_array_equal(other.act(seq, explore=True), a1)
    # training continues identically (optimiser state, alpha, normalisers restored)
    batch = _window_batch(agent.observation_space, 8, 2, seed=9)
    torch.manual_seed(1)
    m1 = agent.update(batch)
    torch.manual_seed(1)
    m2 = other.update(batch)
    assert m1 == m2
