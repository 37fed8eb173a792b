"""SequenceHistory: padding at reset, sliding window, spaces, and use on DroneNav-v0; ActionRepeat."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import vmamba_rl  # noqa: F401  (registers the environments)
from vmamba_rl.envs.wrappers import ActionRepeat, SequenceHistory, last_frame


class CounterEnv(gym.Env):
    """Observation = the step counter (Dict with two keys, or a Box), so windows are easy to predict."""

    def __init__(self, as_dict: bool = True) -> None:
        self.as_dict = as_dict
        box = spaces.Box(0, 100, (2,), np.float32)
        img = spaces.Box(0, 255, (1, 3, 3), np.uint8)
        self.observation_space = spaces.Dict({"base": box, "depth": img}) if as_dict else box
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> Any:
        base = np.array([self.t, self.t + 0.5], np.float32)
        if not self.as_dict:
            return base
        return {"base": base, "depth": np.full((1, 3, 3), self.t, np.uint8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 50, {}


@pytest.mark.parametrize("as_dict", [True, False])
def test_padding_and_sliding(as_dict: bool) -> None:
    k = 4
    env = SequenceHistory(CounterEnv(as_dict), k)
    obs, _ = env.reset(seed=0)
    base = obs["base"] if as_dict else obs
    assert base.shape == (k, 2)
    np.testing.assert_array_equal(base[:, 0], [0, 0, 0, 0])  # K copies of the reset frame
    for n in range(1, 7):
        obs, *_ = env.step(0)
        base = obs["base"] if as_dict else obs
        expected = [max(n - k + 1 + i, 0) for i in range(k)]  # oldest first, newest last
        np.testing.assert_array_equal(base[:, 0], expected)
        if as_dict:
            assert obs["depth"].shape == (k, 1, 3, 3)
            np.testing.assert_array_equal(obs["depth"][:, 0, 0, 0], expected)
        assert env.observation_space.contains(obs)
    # A new episode pads again.
    obs, _ = env.reset()
    base = obs["base"] if as_dict else obs
    np.testing.assert_array_equal(base[:, 0], [0, 0, 0, 0])


def test_spaces_and_copies() -> None:
    env = SequenceHistory(CounterEnv(True), 3)
    sp = env.observation_space
    assert sp["base"].shape == (3, 2) and sp["depth"].shape == (3, 1, 3, 3)
    assert sp["depth"].dtype == np.uint8 and sp["base"].dtype == np.float32
    obs1, _ = env.reset(seed=0)
    obs2, *_ = env.step(0)
    assert not np.shares_memory(obs1["base"], obs2["base"])  # safe to keep in a replay buffer
    np.testing.assert_array_equal(obs1["base"][:, 0], [0, 0, 0])


def test_seq_len_one_and_errors() -> None:
    env = SequenceHistory(CounterEnv(False), 1)
    obs, _ = env.reset()
    assert obs.shape == (1, 2)
    with pytest.raises(ValueError, match="seq_len"):
        SequenceHistory(CounterEnv(), 0)
    bad = CounterEnv()
    bad.observation_space = spaces.Dict({"x": spaces.Discrete(3)})
    with pytest.raises(TypeError, match="Box"):
        SequenceHistory(bad, 2)


def test_last_frame() -> None:
    env = SequenceHistory(CounterEnv(True), 4)
    env.reset()
    for _ in range(5):
        obs, *_ = env.step(0)
    last = last_frame(obs)
    assert set(last) == {"base", "depth"}
    np.testing.assert_array_equal(last["base"], [5, 5.5])
    assert last["depth"].shape == (1, 3, 3)
    batched = {k: np.stack([v, v]) for k, v in obs.items()}  # (N, K, ...) from a vector env
    np.testing.assert_array_equal(last_frame(batched, time_axis=1)["base"], [[5, 5.5], [5, 5.5]])
    np.testing.assert_array_equal(last_frame(obs["base"]), [5, 5.5])


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped.*")
def test_check_env_on_wrapped_counter() -> None:
    check_env(SequenceHistory(CounterEnv(True), 3), skip_render_check=True)


def test_drone_nav_history_shapes() -> None:
    env = SequenceHistory(gym.make("DroneNav-v0", level="easy"), 4)
    obs, _ = env.reset(seed=3)
    assert obs["base"].shape == (4, 10) and obs["depth"].shape == (4, 1, 64, 64)
    first = obs["depth"][0].copy()
    assert all(np.array_equal(obs["depth"][i], first) for i in range(4))
    obs, *_ = env.step(np.array([2.0, 0.0, 0.2], np.float32))
    np.testing.assert_array_equal(obs["depth"][:3], np.repeat(first[None], 3, axis=0))
    assert env.observation_space.contains(obs)


class RewardCounterEnv(CounterEnv):
    """CounterEnv whose reward is the step number and which terminates at step ``end``."""

    def __init__(self, end: int) -> None:
        super().__init__(as_dict=True)
        self.end = end

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, _, _, truncated, _ = super().step(action)
        return obs, float(self.t), self.t >= self.end, truncated, {"t": self.t}


def test_action_repeat_sums_rewards_and_stops_at_the_episode_end() -> None:
    env = ActionRepeat(RewardCounterEnv(end=7), 3)
    env.reset(seed=0)
    obs, r, te, tr, info = env.step(0)
    assert (r, te, info["t"], obs["base"][0]) == (1 + 2 + 3, False, 3, 3)
    obs, r, te, tr, info = env.step(0)
    assert (r, te, info["t"]) == (4 + 5 + 6, False, 6)
    obs, r, te, tr, info = env.step(0)  # terminates after one of the three repeats
    assert (r, te, info["t"]) == (7, True, 7)
    with pytest.raises(ValueError, match="action repeat must be an integer >= 1, got 0"):
        ActionRepeat(RewardCounterEnv(end=7), 0)


def test_make_env_applies_action_repeat_on_drone_nav() -> None:
    from vmamba_rl.config import make_config
    from vmamba_rl.training import make_env

    cfg = make_config("cpu", level="empty", action_repeat=2)
    env = make_env(cfg)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["steps"] == 2  # simulator steps; the agent made one decision
