"""Exploration noise in the normalised action space [-1, 1]: Ornstein-Uhlenbeck and Gaussian.

Both decay sigma with training progress by the design's linear schedule (docs/design.md)
``sigma = max(sigma0 * (1 - p) + sigma_min * p, sigma_min)`` and save their whole state (process
value, current sigma, RNG) as plain Python numbers, lists and dicts, so a checkpoint loads with
``torch.load(weights_only=True)`` or JSON and a resumed run draws the same noise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from vmamba_rl.checkpoint import generator_state, set_generator_state


class _ScheduledNoise(ABC):
    """Shared parts: sigma schedule, seeded PCG64 generator, state round trip."""

    kind = "base"

    def __init__(self, action_dim: int, sigma: float, sigma_min: float, seed: int | None) -> None:
        if int(action_dim) < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if not (sigma >= 0 and sigma_min >= 0):
            raise ValueError(f"sigma and sigma_min must be >= 0, got sigma={sigma}, sigma_min={sigma_min}")
        self.action_dim = int(action_dim)
        self.sigma0 = float(sigma)
        self.sigma_min = float(sigma_min)
        self.sigma = self.sigma0  # current value, moved by scale_sigma
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def scale_sigma(self, progress_ratio: float) -> float:
        """Set and return ``sigma = max(sigma0 (1 - p) + sigma_min p, sigma_min)``, p clipped to [0, 1]."""
        p = float(progress_ratio)
        if math.isnan(p):
            raise ValueError("progress_ratio must be a number in [0, 1], got nan")
        p = min(max(p, 0.0), 1.0)
        self.sigma = max(self.sigma0 * (1.0 - p) + self.sigma_min * p, self.sigma_min)
        return self.sigma

    def reset(self) -> None:  # noqa: B027 (optional hook)
        """Start of an episode."""

    @abstractmethod
    def sample(self) -> np.ndarray:
        """One noise vector (action_dim,) float32 in normalised action units."""

    def state_dict(self) -> dict:
        """Hyper-parameters, current sigma and RNG state as plain numbers (weights_only / JSON safe)."""
        return {
            "kind": self.kind,
            "action_dim": self.action_dim,
            "sigma0": self.sigma0,
            "sigma_min": self.sigma_min,
            "sigma": self.sigma,
            "rng_state": generator_state(self._rng),
        }

    def load_state_dict(self, d: Mapping) -> None:
        """Restore everything :meth:`state_dict` saved, so the next draws equal the saved run's."""
        if d.get("kind") != self.kind:
            raise ValueError(f"noise state is of kind {d.get('kind')!r}, this noise is {self.kind!r}")
        if int(d["action_dim"]) != self.action_dim:
            raise ValueError(
                f"noise state has action_dim={d['action_dim']}, this noise has {self.action_dim}"
            )
        self.sigma0 = float(d["sigma0"])
        self.sigma_min = float(d["sigma_min"])
        self.sigma = float(d["sigma"])
        set_generator_state(self._rng, d["rng_state"])


class OUNoise(_ScheduledNoise):
    """Ornstein-Uhlenbeck noise around 0, Euler-Maruyama discretised:

    ``x <- x - theta * x * dt + sigma * sqrt(dt) * eps``,  eps ~ N(0, I_A).

    This AR(1) update has coefficient ``rho = 1 - theta dt`` (needs 0 < theta dt < 2) and the exact
    stationary variance ``sigma^2 dt / (1 - rho^2) = sigma^2 / (theta (2 - theta dt))`` per dimension;
    the continuous process's ``sigma^2 / (2 theta)`` is its limit for small dt.

    Args:
        action_dim: A.
        theta: mean-reversion rate (design value 0.15).
        sigma: initial sigma0 (design value 0.2).
        sigma_min: floor of the schedule (design value 0.01).
        dt: time step of the discretisation.
        seed: seed of the generator.
    """

    kind = "ou"

    def __init__(
        self,
        action_dim: int,
        theta: float = 0.15,
        sigma: float = 0.2,
        sigma_min: float = 0.01,
        dt: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(action_dim, sigma, sigma_min, seed)
        if not (0.0 < theta * dt < 2.0):
            raise ValueError(f"theta * dt must lie in (0, 2) for a stable process, got {theta} * {dt}")
        self.theta = float(theta)
        self.dt = float(dt)
        # float64 state: it round-trips exactly through Python floats; samples are cast to float32.
        self._x = np.zeros(self.action_dim, dtype=np.float64)

    @property
    def x(self) -> np.ndarray:
        """Current process value (A,) float64 (a copy)."""
        return self._x.copy()

    def stationary_std(self) -> float:
        """Exact long-run std per dimension of the discrete update at the current sigma."""
        return self.sigma / math.sqrt(self.theta * (2.0 - self.theta * self.dt))

    def reset(self) -> None:
        """Return the process to its mean 0 (call at each episode start)."""
        self._x[:] = 0.0

    def sample(self) -> np.ndarray:
        """Advance one step and return the new value (A,) float32."""
        eps = self._rng.standard_normal(self.action_dim)
        self._x += -self.theta * self._x * self.dt + self.sigma * math.sqrt(self.dt) * eps
        return self._x.astype(np.float32)

    def state_dict(self) -> dict:
        d = super().state_dict()
        d.update(theta=self.theta, dt=self.dt, x=[float(v) for v in self._x])
        return d

    def load_state_dict(self, d: Mapping) -> None:
        super().load_state_dict(d)
        x = np.asarray(d["x"], dtype=np.float64).reshape(-1)
        if x.size != self.action_dim:
            raise ValueError(f"noise state x has {x.size} elements, expected {self.action_dim}")
        self.theta = float(d["theta"])
        self.dt = float(d["dt"])
        self._x[:] = x


class GaussianNoise(_ScheduledNoise):
    """Independent N(0, sigma^2) noise per step and dimension (TD3's usual exploration noise).

    ``sigma_min`` (keyword only) enables the same linear decay as :class:`OUNoise`; by default it equals
    ``sigma``, so the noise stays constant.
    """

    kind = "gaussian"

    def __init__(
        self, action_dim: int, sigma: float = 0.1, seed: int | None = None, *, sigma_min: float | None = None
    ) -> None:
        super().__init__(action_dim, sigma, sigma if sigma_min is None else sigma_min, seed)

    def sample(self) -> np.ndarray:
        """One draw (A,) float32."""
        return (self.sigma * self._rng.standard_normal(self.action_dim)).astype(np.float32)
