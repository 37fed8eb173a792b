"""HOPE's action-mask post-processing: pick one of the 42 full-speed mask actions, weighted by the
policy's density at that action times the mask's collision-free fraction.

From the paper's description (reference notes section 8): weight_j = exp(sum over action dimensions of
the Gaussian log-density of action j under the policy, each clipped to [-10, 10]) x mask_j; normalise;
sample (exploring) or take the largest (deterministic); the action driven is the discrete one, at full
magnitude. HOPE's actor is a Gaussian in action units around a tanh mean; the squashed-Gaussian actor
here is read the same way: N(tanh(mean), exp(log_std)) evaluated at the candidate in [-1, 1] units.
(The pre-squash density at atanh(candidate) would put the full-speed candidates at atanh(1 - 1e-6) ~ 7,
where the clip at -10 ties every speed and the mask alone would choose the direction.)
"""

from __future__ import annotations

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mask_weights(
    mean: torch.Tensor, log_std: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """Normalised weights (N, M) of M candidate actions.

    mean, log_std: (N, A) the policy's pre-squash Gaussian (its mode is tanh(mean)); mask: (N, M) in [0, 1];
    candidates: (M, A) actions in [-1, 1] units. A row whose mask is all zero (every action blocked)
    falls back to the density alone, so a choice always exists.
    """
    std = log_std.exp()[:, None]  # (N, 1, A)
    logp = (
        -_HALF_LOG_2PI - log_std[:, None] - 0.5 * ((candidates[None] - torch.tanh(mean)[:, None]) / std) ** 2
    )
    density = logp.clamp(-10.0, 10.0).sum(-1).exp()  # (N, M)
    w = density * mask
    blocked = w.sum(-1, keepdim=True) <= 0
    w = torch.where(blocked, density, w)
    return w / w.sum(-1, keepdim=True)


def choose_masked(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    mask: torch.Tensor,
    candidates: torch.Tensor,
    explore: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The chosen candidate per row, (N, A) in [-1, 1] units: sampled by weight, or the heaviest."""
    w = mask_weights(mean, log_std, mask, candidates)
    idx = torch.multinomial(w, 1, generator=generator)[:, 0] if explore else w.argmax(-1)
    return candidates[idx]
