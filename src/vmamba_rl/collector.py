"""Experience collection: environments -> transitions in replay, episode records for the loop.

A collector owns the training environments, each environment's K-step history (the SequenceHistory
wrapper inside it), its exploration noise, its episode bookkeeping and the termination / truncation
distinction; it writes every transition into the agent's replay buffer under the environment's stream
(:mod:`vmamba_rl.replay`) and says where each episode starts. The training loop only asks it for the
next batch of experience (:meth:`Collector.collect`) and never touches an environment itself.

- :class:`LocalCollector`: N environments in a Gymnasium vector environment (``--num_envs``;
  ``--vector_mode sync`` in this process, ``async`` in subprocesses), one batched policy forward for
  all N per step. Resets are explicit (``AutoresetMode.DISABLED``): every episode starts from a seed
  drawn from the collector's own generator, so a run is reproducible and resumable.
- :class:`vmamba_rl.collect_ray.RayCollector`: Ray actors, each with its own environments and a CPU
  copy of the policy (``--ray_workers``).

Counting: one call of ``collect`` stores one decision per environment that acted; ``--max_timesteps``,
``--learning_starts``, ``--updates_per_step`` and the intervals count decisions summed over all
environments.

Exact resume: a checkpoint records, for every environment, the seed of its open episode and the actions
taken in it. On resume (sync mode) the episode is replayed from that seed, and the re-simulated newest
frame must equal the one in replay; then collection continues exactly where it stopped. An environment
that does not re-simulate identically (a real simulator), and the async and Ray modes, instead close
the open episodes in replay (their transitions stay valid) and start new ones.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from vmamba_rl.checkpoint import generator_state, set_generator_state
from vmamba_rl.envs.make import last_frames
from vmamba_rl.replay import NonFiniteTransitionError

EPISODE_INFO_FLAGS = {
    "success": "is_success",
    "collision": "is_collision",
    "out_of_bounds": "is_out_of_bounds",
}


def episode_record(
    ret: float,
    length: int,
    info: Mapping[str, Any],
    start_info: Mapping[str, Any] | None = None,
    truncated: bool = False,
) -> dict[str, Any]:
    """The record of one finished episode, the same for training, evaluation and visualisation.

    ``info`` is the last step's, ``start_info`` the reset's (for the straight-line start distance);
    ``truncated`` counts as a timeout for environments that report no ``is_timeout``.
    Keys: return, length, success, collision, out_of_bounds, timeout, path_length, path_ratio (flown
    path / start distance), and slot_type / level when the environment reports them."""
    rec: dict[str, Any] = {"return": float(ret), "length": int(length)}
    for key, flag in EPISODE_INFO_FLAGS.items():
        rec[key] = bool(info.get(flag, False))
    rec["timeout"] = bool(info.get("is_timeout", truncated))
    path = float(info.get("path_length", np.nan))
    start = float((start_info or {}).get("distance_to_goal", np.nan))
    rec["path_length"] = path
    rec["path_ratio"] = path / start if np.isfinite(start) and start > 0 else float("nan")
    for key in ("slot_type", "level"):
        if key in info:
            rec[key] = info[key]
    return rec


class CollectorError(RuntimeError):
    """Collection cannot go on (every Ray worker is down); the last checkpoint is kept."""


@dataclass
class CollectResult:
    """What one :meth:`Collector.collect` call produced.

    ``decisions``: transitions stored in replay; ``episodes``: records of the episodes that ended (each
    with ``env``, the environment index); ``lost``: transitions dropped because their episode broke
    (simulator fault, dead worker); ``faults``: messages describing those."""

    decisions: int = 0
    episodes: list[dict[str, Any]] = field(default_factory=list)
    lost: int = 0
    faults: list[str] = field(default_factory=list)


class Collector(ABC):
    """What the training loop needs from a source of experience."""

    num_envs: int

    @abstractmethod
    def collect(self, agent: Any, random_actions: bool) -> CollectResult:
        """Step the environments once (local) or take what the workers sent (Ray); store it in replay."""

    def set_progress(self, progress: float) -> None:  # noqa: B027 (optional hook)
        """Training progress in [0, 1]: exploration noise decays with it."""

    def set_paused(self, paused: bool) -> None:  # noqa: B027 (optional hook)
        """Pause simulators that run in real time while the learner updates (AirSim)."""

    @abstractmethod
    def set_env_overrides(self, overrides: dict[str, Any] | None, agent: Any) -> None:
        """Rebuild the environments with other keywords (a curriculum stage); open episodes end."""

    def sync_policy(self, agent: Any, force: bool = False) -> None:  # noqa: B027 (optional hook)
        """Send the learner's weights to remote acting copies (no-op locally, where acting is the agent)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], agent: Any) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict` output; ``agent`` holds the replay buffer already restored."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the environments (and workers)."""


def make_vector_env(fns: list[Callable[[], gym.Env]], mode: str) -> gym.vector.VectorEnv:
    """Sync or async Gymnasium vector environment with resets left to the caller."""
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
    if mode == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED, context="spawn")
    raise ValueError(f"vector mode must be sync or async, got {mode!r}")


def _split_info(infos: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Environment i's info out of a vector environment's batched info dict."""
    out = {}
    for k, v in infos.items():
        if k.startswith("_"):
            continue
        mask = infos.get(f"_{k}")
        if mask is not None and not mask[i]:
            continue
        out[k] = _split_info(v, i) if isinstance(v, Mapping) else v[i]
    return out


def _take(obs: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in obs.items()}


class LocalCollector(Collector):
    """N environments in this machine's vector environment, one batched policy forward per step.

    Args:
        env_fns: N callables building the (SequenceHistory-wrapped) environments.
        agent: the agent that acts and stores (its replay buffer has N streams).
        seed: seed of the episode-seed generator and the random-action spaces (environment 0 uses
            ``seed`` itself, so one environment reproduces the single-environment loop).
        mode: ``sync`` (this process) or ``async`` (one subprocess per environment).
        stream_offset: added to every environment's replay stream index (a Ray worker's first stream).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        agent: Any,
        seed: int,
        mode: str = "sync",
        stream_offset: int = 0,
    ) -> None:
        if not env_fns:
            raise ValueError("a collector needs at least one environment")
        self.env_fns, self.mode, self.seed = list(env_fns), mode, int(seed)
        self.num_envs = len(env_fns)
        self.stream_offset = int(stream_offset)
        streams = getattr(agent.replay_buffer, "num_streams", None)
        if streams is not None and self.stream_offset + self.num_envs > streams:
            raise ValueError(
                f"the agent's replay has {streams} streams; this collector writes streams "
                f"{self.stream_offset}..{self.stream_offset + self.num_envs - 1} (build the agent with "
                f"num_streams={self.stream_offset + self.num_envs})"
            )
        self.envs = make_vector_env(self.env_fns, mode)
        self.rng = np.random.default_rng(seed)
        # One random-action space per environment; environment 0's draws equal the old single-env loop's.
        self.action_spaces = [copy.deepcopy(self.envs.single_action_space) for _ in range(self.num_envs)]
        for i, sp in enumerate(self.action_spaces):
            sp.seed(self.seed + 7919 * i)
        self.noises = [agent.make_noise(i) for i in range(self.num_envs)]
        self.obs: dict[str, np.ndarray] | None = None  # (N, K, ...) current K-step observations
        self.needs_reset = np.ones(self.num_envs, dtype=bool)
        self.ep_seed = np.zeros(self.num_envs, dtype=np.int64)
        self.ep_actions: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]
        self.ep_return = np.zeros(self.num_envs)
        self.ep_start_info: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        self._pausable: bool | None = None

    # --- stepping -------------------------------------------------------------------------------------
    def env(self, i: int) -> gym.Env:
        """Environment i itself (sync mode only)."""
        if self.mode != "sync":
            raise RuntimeError("the environments of an async collector live in other processes")
        return self.envs.envs[i]

    def _reset(self, agent: Any, mask: np.ndarray) -> None:
        seeds: list[int | None] = [None] * self.num_envs
        for i in np.flatnonzero(mask):  # index order: the generator's draws are reproducible
            seeds[i] = int(self.rng.integers(0, 2**31 - 1))
            self.ep_seed[i] = seeds[i]
        obs, infos = self.envs.reset(seed=seeds, options={"reset_mask": mask.copy()})
        if self.obs is None:
            self.obs = {k: np.array(v) for k, v in obs.items()}
        for i in np.flatnonzero(mask):
            for k in self.obs:
                self.obs[k][i] = obs[k][i]
            self.ep_actions[i] = []
            self.ep_return[i] = 0.0
            self.ep_start_info[i] = _split_info(infos, i)
            if self.noises[i] is not None:
                self.noises[i].reset()
            if self.num_envs == 1:
                agent.reset_episode()  # one environment: the agent's own hook, as the single-env loop
        self.needs_reset[mask] = False

    def collect(self, agent: Any, random_actions: bool) -> CollectResult:
        """One vector step: N decisions (random ones before learning starts) stored in replay."""
        if self.needs_reset.any():
            self._reset(agent, self.needs_reset)
        assert self.obs is not None
        if random_actions:
            actions = np.stack([sp.sample() for sp in self.action_spaces])
        else:
            noise = None
            if self.noises[0] is not None:
                noise = np.stack([n.sample() for n in self.noises])
            actions = agent.act_batch(self.obs, explore=True, noise=noise)
        actions = np.asarray(actions, dtype=self.envs.single_action_space.dtype)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        result = CollectResult()
        for i in range(self.num_envs):
            info = _split_info(infos, i)
            o, o2 = last_frames(_take(self.obs, i)), last_frames(_take(next_obs, i))
            done = bool(terminated[i] or truncated[i])
            fault, refused = info.get("simulator_fault"), 0
            # a planner in the environment (the Reeds-Shepp hand-off) may drive another action than the
            # agent's: replay learns from what was driven
            if "executed_action" in info:
                actions[i] = info["executed_action"]
            if fault is None:
                try:
                    agent.store_transition(
                        o, actions[i], float(rewards[i]), o2, bool(terminated[i]), bool(truncated[i]),
                        stream=self.stream_offset + i, first=not self.ep_actions[i],
                    )  # fmt: skip
                except NonFiniteTransitionError as e:
                    fault, refused = str(e), 1
            if fault is not None:  # the episode broke: none of it may be sampled
                lost = agent.replay_buffer.discard_episode(self.stream_offset + i) + refused
                result.lost += lost
                result.faults.append(f"environment {i}: {fault} ({lost} transitions lost)")
                self.needs_reset[i] = True
                continue
            self.ep_actions[i].append(actions[i].copy())
            self.ep_return[i] += float(rewards[i])
            result.decisions += 1
            if done:
                rec = episode_record(
                    self.ep_return[i],
                    len(self.ep_actions[i]),
                    info,
                    self.ep_start_info[i],
                    bool(truncated[i] and not terminated[i]),
                )
                rec["env"] = i
                result.episodes.append(rec)
                self.needs_reset[i] = True
        keep = ~self.needs_reset  # finished environments get their reset frame in the next call
        for k in self.obs:
            self.obs[k][keep] = next_obs[k][keep]
        return result

    def set_progress(self, progress: float) -> None:
        for n in self.noises:
            if n is not None:
                n.scale_sigma(progress)

    def set_paused(self, paused: bool) -> None:
        if self._pausable is None:  # asked without calling set_paused: a failed call breaks async workers
            self._pausable = all(self.envs.call("has_wrapper_attr", "set_paused"))
        if self._pausable:  # embedded environments run only when stepped: nothing to pause
            self.envs.call("set_paused", paused)

    def set_env_overrides(self, overrides: dict[str, Any] | None, agent: Any) -> None:
        """Rebuild the environments (``env_fns`` called with ``overrides``); every open episode is closed
        in replay (its transitions stay valid) and the next collect starts new episodes."""
        self.envs.close()
        self.env_fns = [fn.with_overrides(overrides) for fn in self.env_fns]  # EnvBuilder objects
        self.envs = make_vector_env(self.env_fns, self.mode)
        for i in range(self.num_envs):
            agent.replay_buffer.end_episode(self.stream_offset + i)
        self.needs_reset[:] = True
        self.obs = None
        self._pausable = None

    # --- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Generators (uint64 words), noise, and each open episode's seed and actions (plain values)."""
        return {
            "rng": generator_state(self.rng),
            "action_space_rngs": [generator_state(sp.np_random) for sp in self.action_spaces],
            "noises": [n.state_dict() if n is not None else None for n in self.noises],
            "open": [
                None
                if self.needs_reset[i]
                else {
                    "seed": int(self.ep_seed[i]),
                    "actions": np.stack(self.ep_actions[i]).tolist() if self.ep_actions[i] else [],
                    "return": float(self.ep_return[i]),
                }
                for i in range(self.num_envs)
            ],
        }

    def load_state_dict(self, state: dict[str, Any], agent: Any) -> None:
        set_generator_state(self.rng, state["rng"])
        spaces = state["action_space_rngs"]
        if isinstance(spaces, str):  # older checkpoints: one JSON text for the list
            spaces = json.loads(spaces)
        for sp, st in zip(self.action_spaces, spaces, strict=True):
            set_generator_state(sp.np_random, st)
        for n, st in zip(self.noises, state["noises"], strict=True):
            if n is not None and st is not None:
                n.load_state_dict(st)
        opened = [i for i, ep in enumerate(state["open"]) if ep is not None]
        if not opened:
            return
        if self.mode != "sync" or not self._resimulate(state["open"], agent):
            for i in opened:
                agent.replay_buffer.end_episode(self.stream_offset + i)

    def _resimulate(self, episodes: list[dict[str, Any] | None], agent: Any) -> bool:
        """Replay each open episode from its seed and actions; True if every newest frame matches replay.

        A mismatch (an environment that is not deterministic given seed and actions) returns False and
        leaves every environment to be reset."""
        buf = agent.replay_buffer
        self.obs = None
        ok = True
        # One reset of the vector environment (open episodes from their seeds), so it holds an
        # observation for every environment; the open ones are then stepped on their own.
        seeds = [None if ep is None else int(ep["seed"]) for ep in episodes]
        _, infos = self.envs.reset(seed=seeds)
        for i, ep in enumerate(episodes):
            if ep is None:
                continue
            env, info = self.envs.envs[i], _split_info(infos, i)
            obs = None
            for a in ep["actions"]:
                obs, *_ = env.step(np.asarray(a, dtype=self.envs.single_action_space.dtype))
            if obs is None:
                ok = False  # an open episode always has at least one action
                break
            stored = buf.newest_frame(self.stream_offset + i)
            if stored is None or not all(
                np.array_equal(stored[k], v, equal_nan=True) for k, v in last_frames(obs).items()
            ):
                ok = False
                break
            if self.obs is None:
                self.obs = {
                    k: np.zeros((self.num_envs, *np.shape(v)), np.asarray(v).dtype) for k, v in obs.items()
                }
            for k in self.obs:
                self.obs[k][i] = obs[k]
            self.ep_seed[i] = int(ep["seed"])
            self.ep_actions[i] = [np.asarray(a, dtype=np.float32) for a in ep["actions"]]
            self.ep_return[i] = float(ep["return"])
            self.ep_start_info[i] = info
            self.needs_reset[i] = False
        if not ok:
            self.needs_reset[:] = True
            self.obs = None
            return False
        return True  # environments that were between episodes get their reset in the next collect()

    def close(self) -> None:
        self.envs.close()


class EnvBuilder:
    """Picklable ``make_env(cfg, overrides=..., training=True)``: what async subprocesses and Ray workers
    call (training environments: ``--scene_schedule`` applies to them, not to evaluation)."""

    def __init__(self, cfg_json: str, overrides: dict[str, Any] | None = None) -> None:
        self.cfg_json, self.overrides = cfg_json, overrides

    def __call__(self) -> gym.Env:
        from vmamba_rl.config import Config
        from vmamba_rl.envs.make import make_env

        return make_env(Config.from_dict(json.loads(self.cfg_json)), overrides=self.overrides, training=True)

    def with_overrides(self, overrides: dict[str, Any] | None) -> EnvBuilder:
        return EnvBuilder(self.cfg_json, overrides)


def env_fns(cfg: Any, n: int, overrides: dict[str, Any] | None = None) -> list[EnvBuilder]:
    """N picklable builders of the training environment (with curriculum ``overrides``)."""
    text = cfg.to_json()
    return [EnvBuilder(text, overrides) for _ in range(n)]
