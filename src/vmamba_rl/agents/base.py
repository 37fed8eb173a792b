"""What every agent offers the training loop, and the pieces all agents share.

The loop and the collectors talk to agents only through :class:`BaseAgent`: ``act_batch`` on N K-step
observations (what N :class:`vmamba_rl.envs.wrappers.SequenceHistory` environments yield; ``act`` for
one), ``make_noise`` for each environment's exploration process, ``store_transition`` of single-step
observations into the agent's ``replay_buffer``, ``train(progress_ratio)`` for one gradient update,
``policy_state`` / ``load_policy_state`` for the acting copies of remote workers, and ``state_dict`` /
``load_state_dict`` / ``save`` / ``load``.
Actions cross the boundary in environment units; inside, agents and replay work in [-1, 1].
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from vmamba_rl.checkpoint import FORMAT, VERSION, CheckpointError, atomic_torch_save, safe_torch_load
from vmamba_rl.config import Config
from vmamba_rl.normalization import ObservationNormalizer


class NonFiniteError(FloatingPointError):
    """A loss, gradient norm or action became NaN or inf; training stops, checkpoints stay."""


class ActionScaler:
    """Per-dimension affine map between [-1, 1] and a Box action space: ``a_env = a * scale + bias``."""

    def __init__(self, space: gym.spaces.Box) -> None:
        if not isinstance(space, gym.spaces.Box) or not (
            np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
        ):
            raise ValueError(f"agents need a bounded Box action space, got {space}")
        self.low = space.low.astype(np.float32)
        self.high = space.high.astype(np.float32)
        self.scale = (self.high - self.low) / 2.0
        self.bias = (self.high + self.low) / 2.0

    def to_env(self, a: np.ndarray) -> np.ndarray:
        """[-1, 1] -> environment units (clipped to the box)."""
        return np.clip(np.asarray(a, np.float32) * self.scale + self.bias, self.low, self.high)

    def to_norm(self, a: np.ndarray) -> np.ndarray:
        """Environment units -> [-1, 1] (clipped)."""
        return np.clip(
            (np.asarray(a, np.float32) - self.bias) / np.where(self.scale > 0, self.scale, 1.0), -1, 1
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: this torch build has no usable CUDA GPU (torch {torch.__version__}); "
            "use --device cpu or auto"
        )
    return torch.device(name)


def make_adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused single-kernel step on CPU and CUDA, foreach elsewhere (mps, ...).

    ``params``: tensors, or parameter groups (dicts with ``params`` and their own ``lr``). Same update
    rule either way; on CPU the fused step is about 4x faster than foreach for the cpu preset's encoder
    (docs/benchmarks.md)."""
    params = list(params)
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    if tensors and {p.device.type for p in tensors} <= {"cpu", "cuda"}:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- tau * source + (1 - tau) * target`` for every parameter (buffers copied)."""
    with torch.no_grad():
        tp = list(target.parameters())
        sp = list(source.parameters())
        torch._foreach_lerp_(tp, sp, tau)
        for tb, sb in zip(target.buffers(), source.buffers(), strict=True):
            tb.copy_(sb)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and every submodule in eval mode inside the block, each back to its own mode after.

    Sets each module's ``training`` flag directly, which is what ``nn.Module.eval()`` / ``train()`` set;
    their recursive walk through ``__setattr__`` is what makes them slow (a noticeable part of an acting
    step at batch 1; docs/benchmarks.md)."""
    mods = module.__dict__.get("_eval_mode_modules")
    if mods is None:  # the module tree is fixed after construction: list it once
        mods = list(module.modules())
        module.__dict__["_eval_mode_modules"] = mods
    flags = [m.training for m in mods]
    for m in mods:
        m.__dict__["training"] = False
    try:
        yield
    finally:
        for m, f in zip(mods, flags, strict=True):
            m.__dict__["training"] = f


def check_finite(step: int, **values: float) -> None:
    """Raise :class:`NonFiniteError` naming the first NaN/inf metric."""
    for name, v in values.items():
        if not math.isfinite(v):
            raise NonFiniteError(
                f"non-finite {name} = {v} at update {step}; training stopped "
                "(the last good checkpoint is kept)"
            )


def obs_to_tensor(
    obs: dict[str, np.ndarray], device: torch.device, batch: bool = True
) -> dict[str, torch.Tensor]:
    """Dict of numpy arrays -> dict of tensors on ``device`` (dtype kept: uint8 stays uint8)."""
    out = {}
    for k, v in obs.items():
        t = torch.as_tensor(np.asarray(v), device=device)
        out[k] = t.unsqueeze(0) if batch else t
    return out


class BaseAgent(ABC):
    """Interface the training loop uses. Subclasses set ``algorithm``, build networks and optimisers."""

    algorithm: str = "base"

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        cfg: Config,
        device: str | torch.device = "auto",
        num_streams: int = 1,
    ) -> None:
        """``num_streams``: environments writing to replay (one ring each, see :mod:`vmamba_rl.replay`)."""
        from vmamba_rl.replay import SequenceReplayBuffer

        self.cfg = cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        if cfg.amp != "off" and self.device.type != "cuda":
            # autocast is used on CUDA only: CPU bf16 was slower than fp32 on AVX2 and fp16 needs a GPU
            warnings.warn(
                f"--amp {cfg.amp} applies on CUDA only; on {self.device} training runs in fp32", stacklevel=2
            )
        self.observation_space = observation_space
        self.action_space = action_space
        self.scaler = ActionScaler(action_space)
        self.action_dim = int(np.prod(action_space.shape))
        self.seq_len = cfg.seq_len
        self.total_it = 0
        # bumped by every update and load: caches of what the weights compute compare it
        self.weights_generation = 0
        self.normalizer: ObservationNormalizer | None = None  # subclasses that normalise set one
        self.replay_buffer = SequenceReplayBuffer(
            cfg.buffer_size,
            cfg.seq_len,
            observation_space,
            self.action_dim,
            seed=cfg.seed,
            segment=cfg.replay_segment,
            n_step=cfg.n_step,
            gamma=cfg.gamma,
            num_streams=num_streams,
        )
        self.replay_buffer.action_scaler = self.scaler

    # --- acting ---------------------------------------------------------------------------------
    @abstractmethod
    def act_batch(
        self, obs: dict[str, np.ndarray], explore: bool = True, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """N K-step observations {key: (N, K, ...)} -> actions (N, A) in environment units, one forward.

        ``noise`` (N, A): exploration noise in [-1, 1] units, added before clipping by agents whose
        exploration is additive (TD3); agents that explore by sampling (SAC) ignore it."""

    @abstractmethod
    def act(self, obs_seq: dict[str, np.ndarray], explore: bool = True) -> np.ndarray:
        """K-step observation dict (each value (K, ...)) -> action in environment units, shape (A,)."""

    def make_noise(self, index: int) -> Any:
        """A fresh exploration process for environment ``index`` (``sample()`` -> (A,), ``reset()``,
        ``scale_sigma(p)``, ``state_dict()``), or None when the policy explores by itself."""
        return None

    # --- visualisation ----------------------------------------------------------------------------
    explains_history = False  # True: explain() returns attention over the K history slots

    def explain(self, obs_seq: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Features and attention of one K-step observation for ``vmamba-rl visualize``: keys
        ``{actor,critic}_{visual,state,context,attention,attention_heads}`` and ``action``; None for
        agents without attention over the history (they may attend over modalities instead)."""
        return None

    def reset_episode(self) -> None:  # noqa: B027 (optional hook)
        """Called at every episode start (resets exploration noise state)."""

    # --- learning -------------------------------------------------------------------------------
    def store_transition(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: float,
        next_obs: dict[str, np.ndarray],
        terminated: bool,
        truncated: bool,
        *,
        stream: int = 0,
        first: bool = False,
    ) -> None:
        """Single-step observations (stored raw) and an environment-unit action into the replay buffer.

        ``stream``: the environment it came from; ``first``: ``obs`` is its episode's reset frame.
        ``obs`` also updates the agent's observation normaliser, if it has one (``next_obs`` is the next
        transition's ``obs``, so each observation is counted once); acting never updates it.
        """
        self.replay_buffer.add(
            obs, self.scaler.to_norm(action), float(reward), next_obs, terminated, truncated,
            stream=stream, first=first,
        )  # fmt: skip
        if self.normalizer is not None:  # after the buffer accepted it: a refused step counts nowhere
            self.normalizer.update(obs)

    @abstractmethod
    def train(self, progress_ratio: float = 0.0) -> dict[str, float] | None:
        """One gradient update from a replay sample; None until the buffer holds a batch."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Named networks (online and target) for parameter counts and checkpoints."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers, saved in checkpoints for an exact resume."""

    def policy_modules(self) -> dict[str, nn.Module]:
        """The networks acting needs (what remote workers receive); default: all of them."""
        return self.modules()

    def policy_state(self) -> dict[str, Any]:
        """Acting networks and agent state (normalisers...) for a worker's copy of the policy."""
        return {
            "modules": {k: m.state_dict() for k, m in self.policy_modules().items()},
            "extra": self.extra_state(),
        }

    def load_policy_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`policy_state` output (same architecture) into this agent."""
        mods = self.policy_modules()
        self.weights_generation += 1
        for k, sd in state["modules"].items():
            mods[k].load_state_dict(sd)
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict[str, Any]:
        """Non-network state (noise, normalisers, temperature...) as plain values."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        pass

    # --- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "algorithm": self.algorithm,
            "config": self.cfg.to_dict(),
            "obs_shapes": {k: list(s.shape) for k, s in self.observation_space.spaces.items()},
            "action_dim": self.action_dim,
            "total_it": self.total_it,
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Restore from :meth:`state_dict`; mismatches raise :class:`CheckpointError` naming them."""
        from vmamba_rl.checkpoint import load_module_state

        if state.get("algorithm") != self.algorithm:
            raise CheckpointError(
                f"{where} holds a {state.get('algorithm')!r} agent, but this agent is {self.algorithm!r}"
            )
        shapes = {k: list(s.shape) for k, s in self.observation_space.spaces.items()}
        if state.get("obs_shapes") != shapes or state.get("action_dim") != self.action_dim:
            raise CheckpointError(
                f"{where} was trained on observations {state.get('obs_shapes')} / action dim "
                f"{state.get('action_dim')}, this environment gives {shapes} / {self.action_dim}"
            )
        mods = self.modules()
        self.weights_generation += 1
        if set(state["modules"]) != set(mods):
            raise CheckpointError(
                f"{where} has networks {sorted(state['modules'])}, this agent has {sorted(mods)}"
            )
        for k, m in mods.items():
            load_module_state(m, state["modules"][k], f"{self.algorithm} network {k!r}")
        for k, o in self.optimizers().items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        self.total_it = int(state.get("total_it", 0))
        self.load_extra_state(state.get("extra", {}))

    def save(self, path: str) -> None:
        """Atomic checkpoint of weights, optimisers and agent state (no replay buffer)."""
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: str) -> None:
        """Load :meth:`save` output (``weights_only=True``)."""
        self.load_state_dict(safe_torch_load(path, map_location=self.device), where=repr(str(path)))
