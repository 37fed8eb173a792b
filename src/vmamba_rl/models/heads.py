"""Decision heads of VMamba-TD3: the deterministic Actor and the twin-Q Critic (LayerNorm MLPs)."""

from __future__ import annotations

import torch
from torch import nn


def _ln_mlp(in_dim: int, hidden: int, out_dim: int, final_init: float = 3e-3) -> nn.Sequential:
    """LN(in) -> Linear -> LN -> ReLU -> Linear -> LN -> ReLU -> Linear(out), as the spec lists.

    The last layer starts at U(-final_init, final_init) (DDPG's choice): the actor's tanh starts in its
    linear range instead of near saturation, where its gradient vanishes and TD3 can stick at a corner
    of the action box.
    """
    last = nn.Linear(hidden, out_dim)
    nn.init.uniform_(last.weight, -final_init, final_init)
    nn.init.uniform_(last.bias, -final_init, final_init)
    return nn.Sequential(
        nn.LayerNorm(in_dim),
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
    """(context (B, repr_dim), action (B, A)) -> (Q1 (B, 1), Q2 (B, 1)): two independent LN-MLPs."""

    def __init__(self, repr_dim: int, action_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.q1 = _ln_mlp(repr_dim + action_dim, hidden_dim, 1)
        self.q2 = _ln_mlp(repr_dim + action_dim, hidden_dim, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = torch.cat([state, action], dim=-1)
        return self.q1(sa), self.q2(sa)

    def Q1(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q1(torch.cat([state, action], dim=-1))
