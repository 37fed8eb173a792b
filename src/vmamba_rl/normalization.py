"""Running mean / standard deviation per observation modality (the HOPE document's normalisation).

Per element, for every new sample ``x`` (Welford, exactly as the document writes it)::

    n     <- n + 1
    mean  <- mean_old + (x - mean_old) / n
    S     <- S + (x - mean_old) * (x - mean_new)
    std   =  sqrt(S / n)
    x_norm = (x - mean) / (std + eps)

A batch of samples is folded in with Chan et al.'s parallel merge of two partial statistics, which gives
the same numbers as feeding the samples one by one (up to rounding), so the two paths agree.

Observations travel *raw* through the replay buffer and are normalised when they are used (acting and
sampling), so old transitions never go stale when the statistics move (HOPE stores normalised
observations; see the reference notes, section 6). The statistics live in checkpoints and are frozen at
evaluation time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


class RunningMeanStd:
    """Per-element running mean and (population) standard deviation of arrays of shape ``shape``.

    Statistics are kept in float64 so that long streams (millions of steps) do not drift.
    With no sample seen yet, :meth:`normalize` is the identity (mean 0, std 1).
    """

    def __init__(self, shape: tuple[int, ...] | int = (), eps: float = 1e-8) -> None:
        self.shape: tuple[int, ...] = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps = float(eps)
        self.count = 0.0
        self.mean = np.zeros(self.shape, np.float64)
        self.S = np.zeros(self.shape, np.float64)  # sum of squared deviations from the mean
        self.frozen = False

    # --- statistics -------------------------------------------------------------------------------
    @property
    def var(self) -> np.ndarray:
        """Population variance ``S / n`` (ones before the first sample)."""
        if self.count == 0:
            return np.ones(self.shape, np.float64)
        return self.S / self.count

    @property
    def std(self) -> np.ndarray:
        """``sqrt(S / n)``, shape ``shape`` (ones before the first sample)."""
        return np.sqrt(self.var)

    def update(self, x: Array) -> None:
        """Fold in one sample of shape ``shape`` or a batch of shape ``(..., *shape)``.

        A single sample takes the document's Welford step; a batch is reduced to its own mean / S and
        merged (Chan). No-op while :attr:`frozen`.
        """
        if self.frozen:
            return
        x = _to_numpy(x).astype(np.float64, copy=False)
        nd = len(self.shape)
        if x.shape[x.ndim - nd :] != self.shape:
            raise ValueError(
                f"RunningMeanStd expects samples of shape {self.shape}, got an array of shape {x.shape}"
            )
        if x.ndim == nd:
            # Welford, the document's formula.
            self.count += 1.0
            delta_old = x - self.mean
            self.mean = self.mean + delta_old / self.count
            self.S = self.S + delta_old * (x - self.mean)
            return
        flat = x.reshape((-1, *self.shape))
        n = flat.shape[0]
        if n == 0:
            return
        bmean = flat.mean(axis=0)
        bS = ((flat - bmean) ** 2).sum(axis=0)
        self._merge_stats(float(n), bmean, bS)

    def _merge_stats(self, nb: float, mb: np.ndarray, Sb: np.ndarray) -> None:
        # Chan, Golub & LeVeque: combine (na, ma, Sa) and (nb, mb, Sb).
        na = self.count
        n = na + nb
        if n == 0:
            return
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.S = self.S + Sb + delta**2 * (na * nb / n)
        self.count = n

    def merge(self, other: RunningMeanStd) -> None:
        """Fold the statistics of ``other`` (same shape) into this one: the result equals the statistics
        of the union of both sample sets. No-op while :attr:`frozen`."""
        if other.shape != self.shape:
            raise ValueError(
                f"cannot merge RunningMeanStd of shape {other.shape} into one of shape {self.shape}"
            )
        if self.frozen:
            return
        self._merge_stats(other.count, other.mean, other.S)

    # --- use -------------------------------------------------------------------------------------
    def normalize(self, x: Array, clip: float | None = None) -> Array:
        """``(x - mean) / (std + eps)``, broadcast over leading dimensions; ``x`` is ``(..., *shape)``.

        numpy in -> float32 numpy out; torch in -> torch out with ``x``'s float dtype (float32 for integer
        input) on ``x``'s device. ``clip`` bounds the result to ``[-clip, clip]`` when given.
        """
        mean, std = self.mean, self.std
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            m = torch.as_tensor(mean, dtype=dtype, device=x.device)
            s = torch.as_tensor(std, dtype=dtype, device=x.device)
            out = (x.to(dtype) - m) / (s + self.eps)
            return out.clamp(-clip, clip) if clip is not None else out
        out = ((np.asarray(x, np.float64) - mean) / (std + self.eps)).astype(np.float32)
        return np.clip(out, -clip, clip) if clip is not None else out

    # --- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain float64 tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "count": float(self.count),
            "mean": torch.from_numpy(self.mean.copy()),
            "S": torch.from_numpy(self.S.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mean = _to_numpy(state["mean"]).astype(np.float64)
        S = _to_numpy(state["S"]).astype(np.float64)
        if mean.shape != self.shape or S.shape != self.shape:
            raise ValueError(
                f"RunningMeanStd state has shape {mean.shape}, this normaliser expects {self.shape}"
            )
        self.count = float(state["count"])
        self.mean = mean.copy()
        self.S = S.copy()

    def __repr__(self) -> str:
        return f"RunningMeanStd(shape={self.shape}, count={self.count:g}, frozen={self.frozen})"


def default_normalize_keys(observation_space: gym.spaces.Dict) -> list[str]:
    """Every floating-point 1-D Box modality (vectors such as lidar, target, base).

    Left alone: images, integer modalities and masks (a key ending in ``mask``, e.g. Parking's
    ``action_mask``): a mask's 0 / 1 meaning is already on a fixed scale (the issue: "images and masks
    usually not")."""
    return [
        k
        for k, s in observation_space.spaces.items()
        if isinstance(s, gym.spaces.Box)
        and len(s.shape) == 1
        and np.issubdtype(s.dtype, np.floating)
        and not k.endswith("mask")
    ]


class ObservationNormalizer:
    """One :class:`RunningMeanStd` per chosen modality of a Dict observation space.

    ``observation_space`` is the *single-step* space; ``keys`` the modalities to normalise (``None`` =
    :func:`default_normalize_keys`). :meth:`update` takes single-step observations (or batches of them);
    :meth:`normalize` takes dicts whose values are ``(..., *shape)``, e.g. ``(B, K+1, D)`` replay windows,
    and returns a new dict with the chosen keys normalised (others untouched).

    ``clip`` bounds normalised values (default 10, Stable-Baselines3's VecNormalize value): with the
    document's ``eps = 1e-8`` an element that was constant so far (a lidar beam that always saw free
    space) would otherwise map its first different value to ~1e8.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        keys: Iterable[str] | None = None,
        eps: float = 1e-8,
        clip: float | None = 10.0,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Dict):
            raise TypeError(f"ObservationNormalizer needs a gymnasium Dict space, got {observation_space}")
        keys = default_normalize_keys(observation_space) if keys is None else list(keys)
        unknown = [k for k in keys if k not in observation_space.spaces]
        if unknown:
            raise ValueError(
                f"normalize_keys {unknown} are not in the observation space; available: "
                f"{list(observation_space.spaces)}"
            )
        self.keys: list[str] = keys
        self.clip = clip
        self.rms: dict[str, RunningMeanStd] = {
            k: RunningMeanStd(observation_space.spaces[k].shape, eps) for k in keys
        }

    @property
    def frozen(self) -> bool:
        return all(r.frozen for r in self.rms.values())

    @frozen.setter
    def frozen(self, value: bool) -> None:
        for r in self.rms.values():
            r.frozen = bool(value)

    def freeze(self) -> None:
        """Stop updating (evaluation)."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def update(self, obs: Mapping[str, Array]) -> None:
        """Fold in one raw single-step observation (or a batch ``(N, *shape)`` per key)."""
        for k, r in self.rms.items():
            r.update(obs[k])

    def normalize(self, obs: Mapping[str, Array]) -> dict[str, Array]:
        """New dict: chosen keys normalised (float32 numpy / float torch), the rest passed through."""
        out = dict(obs)
        for k, r in self.rms.items():
            if k in out:
                out[k] = r.normalize(out[k], self.clip)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "stats": {k: r.state_dict() for k, r in self.rms.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["keys"]) != self.keys:
            raise ValueError(
                f"normaliser state covers modalities {list(state['keys'])}, this one covers {self.keys}"
            )
        for k, r in self.rms.items():
            r.load_state_dict(state["stats"][k])
