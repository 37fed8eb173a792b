"""Building the environment an agent reads: ``gymnasium.make`` plus the project's wrappers."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vmamba_rl.config import Config


def make_env(
    cfg: Config,
    render_mode: str | None = None,
    level: str | None = None,
    overrides: dict[str, Any] | None = None,
    training: bool = False,
) -> gym.Env:
    """``gymnasium.make(env_name, level=...)``, reduced to ``--modalities`` if given, with
    ``--action_repeat``, wrapped in the K-step SequenceHistory the agents read; with ``--rs_hybrid`` the
    Reeds-Shepp hand-off sits right on the environment.

    A simulator that can reconnect (AirSim) is wrapped in :class:`SimulatorRecovery` first, so faults
    are handled inside the environment and the training loop never sees simulator specifics.
    ``overrides``: environment keywords over ``--env_kwargs`` and the level (a curriculum stage).
    ``training``: a collector's environment; ``--scene_schedule`` then replaces the level by HOPE's
    scene schedule.
    """
    import vmamba_rl.envs  # noqa: F401  (registration)
    from vmamba_rl.envs.wrappers import ActionRepeat, SequenceHistory, SimulatorRecovery

    kwargs: dict[str, Any] = dict(cfg.env_kwargs or {})
    lvl = level or cfg.level
    if lvl is not None:
        kwargs["level"] = lvl
    kwargs.update(overrides or {})  # a curriculum stage may name its own level
    if training and cfg.scene_schedule:
        kwargs["scene_schedule"] = True
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(cfg.env_name, **kwargs)
    except TypeError as e:  # an unknown environment keyword: the environment's message names the valid ones
        raise ValueError(f"{cfg.env_name}: {e}") from e
    except gym.error.Error as e:
        known = [k for k in gym.registry if k in ("DroneNav-v0", "Parking-v0", "AirSimEnv-v42")]
        raise ValueError(
            f"cannot make environment {cfg.env_name!r} ({e}); vmamba-rl provides {known}, "
            "or any registered Gymnasium id with Dict observations"
        ) from e
    if hasattr(env.unwrapped, "reconnect"):
        env = SimulatorRecovery(env)
    if cfg.rs_hybrid:
        from vmamba_rl.planning.handoff import ReedsSheppHybrid

        env = ReedsSheppHybrid(env, max_dist=cfg.rs_max_dist, exit_tree=cfg.rs_exit_tree)
    if cfg.modalities is not None:
        available = list(getattr(env.observation_space, "spaces", {}))
        missing = [k for k in cfg.modalities if k not in available]
        if missing:
            env.close()
            raise ValueError(
                f"--modalities {missing} not in {cfg.env_name}'s observations; it has {available}"
            )
        env = gym.wrappers.FilterObservation(env, list(cfg.modalities))
    if cfg.action_repeat > 1:
        env = ActionRepeat(env, cfg.action_repeat)
    return SequenceHistory(env, cfg.seq_len)


def last_frames(obs_seq: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """K-step observation -> the newest single-step observation (what replay stores)."""
    return {k: v[-1] for k, v in obs_seq.items()}
