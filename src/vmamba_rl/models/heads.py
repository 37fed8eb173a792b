"""Decision heads of VMamba-TD3: the deterministic Actor and the twin-Q Critic (LayerNorm MLPs)."""

from __future__ import annotations

import torch
from torch import nn

from vmamba_rl.config import CRITIC_NORMS


def _ln_mlp(
    in_dim: int, hidden: int, out_dim: int, final_init: float = 3e-3, norm_dim: int | None = None
) -> nn.Sequential:
    """LN(in) -> Linear -> LN -> ReLU -> Linear -> LN -> ReLU -> Linear(out), as the design lists
    (docs/design.md).

    The last layer starts at U(-final_init, final_init) (DDPG's choice): the actor's tanh starts in its
    linear range instead of near saturation, where its gradient vanishes and TD3 can stick at a corner
    of the action box.
    """
    last = nn.Linear(hidden, out_dim)
    nn.init.uniform_(last.weight, -final_init, final_init)
    nn.init.uniform_(last.bias, -final_init, final_init)
    return nn.Sequential(
        nn.LayerNorm(norm_dim or in_dim),
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        last,
    )


class Actor(nn.Module):
    """context (B, repr_dim) -> action (B, A) in [-1, 1] (tanh)."""

    def __init__(self, repr_dim: int, action_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = _ln_mlp(repr_dim, hidden_dim, action_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(state))


class Critic(nn.Module):
    """(context (B, repr_dim), action (B, A)) -> (Q1 (B, 1), Q2 (B, 1)): two independent LN-MLPs.

    ``input_norm="joint"`` is the design's LayerNorm(repr_dim + action_dim) over the concatenation.
    ``"state"`` normalises the context alone and appends the raw action (as DrQ-v2's critic does). Why:
    the joint LayerNorm divides the 3 action entries by the context's spread; after 4,500 updates on
    DroneNav-v0 that spread was 24 and Q moved by at most 0.11 across the whole yaw range (measured,
    docs/results.md "Findings"), so the policy gradient carried almost no information about the action.
    """

    def __init__(
        self, repr_dim: int, action_dim: int, hidden_dim: int = 256, input_norm: str = "joint"
    ) -> None:
        super().__init__()
        if input_norm not in CRITIC_NORMS:
            raise ValueError(f"input_norm must be one of {', '.join(CRITIC_NORMS)}, got {input_norm!r}")
        self.input_norm = input_norm
        norm_dim = repr_dim if input_norm == "state" else None
        self.q1 = _ln_mlp(repr_dim + action_dim, hidden_dim, 1, norm_dim=norm_dim)
        self.q2 = _ln_mlp(repr_dim + action_dim, hidden_dim, 1, norm_dim=norm_dim)

    def _q(self, net: nn.Sequential, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "state":
            h = torch.cat([net[0](state), action], dim=-1)
            for layer in net[1:]:
                h = layer(h)
            return h
        return net(torch.cat([state, action], dim=-1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._q(self.q1, state, action), self._q(self.q2, state, action)

    def Q1(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self._q(self.q1, state, action)
