"""K-step observation history for sequence agents, action repeat, and simulator fault recovery.

:class:`SequenceHistory` turns each observation into the last ``seq_len`` (K) observations stacked along
a new leading axis: a Dict ``{"base": (10,), "depth": (1, H, W)}`` becomes ``{"base": (K, 10),
"depth": (K, 1, H, W)}``, a Box ``(D,)`` becomes ``(K, D)``. At reset the history is filled with K copies
of the first observation, which is exactly how the replay buffer must pad windows near an episode start
(so acting and training see the same inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _stack_space(space: spaces.Space, seq_len: int, key: str = "") -> spaces.Box:
    if not isinstance(space, spaces.Box):
        where = f" (key {key!r})" if key else ""
        raise TypeError(f"SequenceHistory supports Box spaces or a Dict of Box spaces, got {space}{where}")
    low = np.repeat(space.low[None], seq_len, axis=0)
    high = np.repeat(space.high[None], seq_len, axis=0)
    return spaces.Box(low, high, (seq_len, *space.shape), space.dtype)


class SequenceHistory(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Stack the last ``seq_len`` observations along a new leading axis (every Dict key, or the Box).

    Padding: after ``reset`` all K slots hold the reset observation. Each ``step`` slides the window by
    one (oldest first, newest at index -1). Returned arrays are fresh copies, safe to store.
    """

    def __init__(self, env: gym.Env, seq_len: int) -> None:
        super().__init__(env)
        if int(seq_len) != seq_len or seq_len < 1:
            raise ValueError(f"seq_len must be an integer >= 1, got {seq_len}")
        # Recorded so env.spec can rebuild the wrapped env (check_env and vector envs do this).
        gym.utils.RecordConstructorArgs.__init__(self, seq_len=seq_len)
        self.seq_len = int(seq_len)
        inner = env.observation_space
        self._is_dict = isinstance(inner, spaces.Dict)
        if self._is_dict:
            self.observation_space = spaces.Dict(
                {k: _stack_space(s, self.seq_len, k) for k, s in inner.spaces.items()}
            )
        else:
            self.observation_space = _stack_space(inner, self.seq_len)
        self._history: dict[str, np.ndarray] | np.ndarray | None = None

    def _start(self, obs: Any) -> None:
        if self._is_dict:
            self._history = {k: np.repeat(np.asarray(v)[None], self.seq_len, axis=0) for k, v in obs.items()}
        else:
            self._history = np.repeat(np.asarray(obs)[None], self.seq_len, axis=0)

    def _push(self, obs: Any) -> None:
        if self._history is None:
            raise RuntimeError("SequenceHistory: call reset() before step()")
        buffers = self._history.items() if isinstance(self._history, dict) else [(None, self._history)]
        for key, buf in buffers:
            # Shift in place (K is small; cheaper than np.roll, which allocates).
            buf[:-1] = buf[1:]
            buf[-1] = obs if key is None else obs[key]

    def _output(self) -> Any:
        if isinstance(self._history, dict):
            return {k: v.copy() for k, v in self._history.items()}
        return self._history.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._start(obs)
        return self._output(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._push(obs)
        return self._output(), reward, terminated, truncated, info


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Hold each agent action for ``repeat`` simulator steps (DrQ / PlaNet's action repeat).

    The returned reward is the undiscounted sum over the repeats; the loop stops early when the episode
    terminates or truncates, and ``info`` is the last simulator step's (so ``info["steps"]`` still
    counts simulator steps). Why: with the drone's 15 deg/s yaw rate one 0.5 s step turns 7.5 deg, an
    effect on the return too small for the critic to resolve at small budgets; a longer hold makes each
    decision matter more. The agent then decides every ``repeat * step_duration`` seconds.
    """

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        if int(repeat) != repeat or repeat < 1:
            raise ValueError(f"action repeat must be an integer >= 1, got {repeat}")
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        self.repeat = int(repeat)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class SimulatorRecovery(gym.Wrapper):
    """Survive an external simulator's faults inside the environment (AirSim).

    A :class:`~vmamba_rl.envs.errors.SimulatorConnectionError` from ``step`` (the simulator stopped
    answering, dropped the connection, sent a malformed image) ends the episode as broken: the wrapper
    reconnects (``env.unwrapped.reconnect()``, which retries with backoff) and returns the last good
    observation with ``truncated=True`` and ``info["simulator_fault"]`` (the error text); the collector
    then discards the episode from replay instead of storing it. ``reset`` reconnects and retries on a
    fault. After ``max_faults`` faults in a row without a successful step or reset the error is raised.
    """

    def __init__(self, env: gym.Env, max_faults: int = 3) -> None:
        super().__init__(env)
        self.max_faults = int(max_faults)
        self.faults = 0  # in a row
        self._last_obs: Any = None

    def _fault(self, err: Exception) -> None:
        from vmamba_rl.envs.errors import SimulatorConnectionError

        self.faults += 1
        if self.faults > self.max_faults:
            raise SimulatorConnectionError(
                f"simulator unavailable after {self.faults - 1} reconnect attempt(s) in a row: {err}"
            ) from err
        try:
            self.env.unwrapped.reconnect()
        except SimulatorConnectionError as e:
            self._fault(e)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        from vmamba_rl.envs.errors import SimulatorConnectionError

        while True:
            try:
                obs, info = self.env.reset(seed=seed, options=options)
            except SimulatorConnectionError as e:
                self._fault(e)
                continue
            self._last_obs = obs
            return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        from vmamba_rl.envs.errors import SimulatorConnectionError

        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except SimulatorConnectionError as e:
            self._fault(e)
            return self._last_obs, 0.0, False, True, {"simulator_fault": str(e)}
        self.faults = 0
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def set_paused(self, paused: bool) -> None:
        """Pause the simulator between steps (during gradient updates)."""
        self.env.unwrapped.set_paused(paused)


def last_frame(obs_seq: Mapping[str, np.ndarray] | np.ndarray, time_axis: int = 0) -> Any:
    """The newest frame of a K-step observation: ``{key: obs[key][-1]}`` (or ``obs[-1]`` for an array).

    ``time_axis=1`` for batched observations ``(N, K, ...)`` from a vector env.
    """
    if isinstance(obs_seq, Mapping):
        return {k: np.take(np.asarray(v), -1, axis=time_axis) for k, v in obs_seq.items()}
    return np.take(np.asarray(obs_seq), -1, axis=time_axis)
