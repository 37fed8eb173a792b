"""VMamba-TD3: the TD3 agent with VMamba visual encoders (docs/design.md, "VMamba-TD3 architecture").

The import path ``vmamba_rl.agents.vmamba_td3`` offers ``VMambaTD3Agent`` and ``make_agent`` together,
as the design document's examples import them.
"""

from __future__ import annotations

import gymnasium as gym
import torch

from vmamba_rl.agents.factory import make_agent
from vmamba_rl.agents.td3 import TD3Agent
from vmamba_rl.config import Config

__all__ = ["VMambaTD3Agent", "make_agent"]


class VMambaTD3Agent(TD3Agent):
    """TD3 on (base, depth) sequences with VMamba visual encoders."""

    algorithm = "vmamba_td3"

    def __init__(
        self,
        base_dim: int,
        depth_shape: tuple[int, int, int],
        action_space: gym.spaces.Box,
        args: Config,
        device: str | torch.device | None = None,
        num_streams: int = 1,
    ) -> None:
        super().__init__(base_dim, depth_shape, action_space, args, device, num_streams, encoder="vmamba")
