"""``make_agent``: the agent named by the configuration, for an environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from vmamba_rl.agents.base import BaseAgent
from vmamba_rl.config import Config


def make_agent(
    env: gym.Env,
    obs: dict[str, np.ndarray] | None,
    args: Config,
    device: str | torch.device | None = None,
    num_streams: int = 1,
) -> BaseAgent:
    """Build the agent named by ``args.algorithm_name`` for ``env`` (single-step or K-step obs both work).

    ``obs`` is accepted for the design document's signature (docs/design.md); shapes come from the
    environment's single-step space.
    ``num_streams``: environments that will write to its replay buffer.
    """
    space = single_step_space(env)
    streams = max(int(num_streams), 1)
    if args.algorithm_name in ("vmamba_td3", "td3"):
        for key in ("base", "depth"):
            if key not in space.spaces:
                raise ValueError(
                    f"{args.algorithm_name} needs Dict observations with 'base' and 'depth'; "
                    f"{env.spec.id if env.spec else env} gives {sorted(space.spaces)}"
                )
        from vmamba_rl.agents.td3 import TD3Agent
        from vmamba_rl.agents.vmamba_td3 import VMambaTD3Agent

        if args.algorithm_name == "vmamba_td3":
            return VMambaTD3Agent(
                space["base"].shape[0], space["depth"].shape, env.action_space, args, device, streams
            )
        return TD3Agent(
            space["base"].shape[0], space["depth"].shape, env.action_space, args, device, streams, "cnn"
        )
    if args.algorithm_name == "hope_sac":
        from vmamba_rl.agents.sac import HopeSACAgent

        return HopeSACAgent(space, env.action_space, args, device or args.device, streams)
    raise ValueError(f"unknown algorithm {args.algorithm_name!r}; choose vmamba_td3, td3 or hope_sac")


def single_step_space(env: gym.Env) -> gym.spaces.Dict:
    """The per-step Dict observation space, looking through a SequenceHistory wrapper if present."""
    from vmamba_rl.envs.wrappers import SequenceHistory

    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, SequenceHistory):
            space = e.env.observation_space
            break
        e = e.env
    else:
        space = env.observation_space
    if not isinstance(space, gym.spaces.Dict):
        raise ValueError(f"agents need a Dict observation space, got {space}")
    return space
