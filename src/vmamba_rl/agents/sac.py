"""HOPE-style multimodal SAC (the user's second document), for any Dict-observation environment.

Shape letters: B batch, K history length (``seq_len``), A action size, F fused feature size.

::

    replay.sample(B) -> obs, next_obs {key: (B, K, *shape)} raw, action (B, A) in [-1, 1], reward, ...
      normalise the chosen vector modalities (running mean / std): s, s'
    actor:  MultimodalEncoder(s) (B, F) -> ReLU trunk -> mean (B, A), log_std (B, A) clamped to [-20, 2]
            z = mean + std * eps,  a = tanh(z),
            log pi = sum_i [log N(z_i; mean_i, std_i) - log(1 - a_i^2 + 1e-6)]
    critic: two independent MultimodalEncoder(s, a) -> ReLU trunk -> Q (B,), each with a target copy
    update: y = r + gamma (1 - terminated) (min(Q1', Q2')(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
            (with --n_step n: r is the m-step return, gamma^m the discount, s' the state m steps on)
            critics (MSE to y) -> actor (alpha log pi - min Q) -> alpha (-log alpha (log pi + H_target))
            -> soft update of the critic targets

Truncation (time limit) bootstraps: only ``terminated`` stops the target. The squashed-Gaussian actor
and the twin critic live here rather than in ``models/heads.py`` because both own their multimodal
encoders (TD3's heads take a ready feature vector).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmamba_rl.agents.base import BaseAgent, check_finite, eval_mode, make_adam, obs_to_tensor, soft_update
from vmamba_rl.config import Config
from vmamba_rl.models.cnn import CNNVisualEncoder
from vmamba_rl.models.multimodal import MultimodalEncoder, orthogonal_init
from vmamba_rl.models.vmamba import VMambaVisualEncoder
from vmamba_rl.normalization import ObservationNormalizer
from vmamba_rl.replay import ReplayBatch

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
TANH_EPS = 1e-6  # the document's guard in log(1 - a^2 + eps)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def squashed_gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of ``a = tanh(z)`` with ``z ~ N(mean, exp(log_std)^2)``, summed over the last dim.

    ``log N(z; mean, std) - log(1 - tanh(z)^2 + 1e-6)`` per dimension (the document's change of
    variables; tanh is monotonic so the Jacobian is diagonal). (B, A) -> (B,).
    """
    gauss = -_HALF_LOG_2PI - log_std - 0.5 * ((z - mean) / log_std.exp()) ** 2
    a = torch.tanh(z)
    return (gauss - torch.log(1.0 - a.pow(2) + TANH_EPS)).sum(-1)


def squashed_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample: ``z = mean + std * eps`` (eps ~ N(0, I) unless ``noise`` is given),
    ``a = tanh(z)``. Returns ``a`` (B, A) in (-1, 1) and ``log pi(a|s)`` (B,), both differentiable."""
    eps = torch.randn_like(mean) if noise is None else noise
    z = mean + log_std.exp() * eps
    return torch.tanh(z), squashed_gaussian_log_prob(z, mean, log_std)


def _relu_mlp(in_dim: int, hidden: list[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers), d


def make_multimodal_encoder(
    cfg: Config, observation_space: gym.spaces.Dict, history: int = 1, action_dim: int = 0
) -> MultimodalEncoder:
    """The multimodal encoder as the options describe it (``--image_encoder``, ``--embed_size``,
    ``--fusion`` and its sizes); ``action_dim > 0`` for a critic's."""

    def image_embedding(in_chans: int, img_size: tuple[int, int]) -> nn.Module:
        if cfg.image_encoder == "vmamba":  # keeps its own initialisation
            return VMambaVisualEncoder(in_chans, img_size, cfg.embed_size, **cfg.vmamba.backbone_kwargs())
        # the project's one small CNN (also the TD3 baseline's), with HOPE's orthogonal init
        return orthogonal_init(CNNVisualEncoder(in_chans, img_size, cfg.embed_size, cfg.cnn_channels))

    return MultimodalEncoder(
        observation_space,
        image_embedding,
        cfg.embed_size,
        cfg.fusion,
        cfg.fusion_hidden,
        history,
        action_dim,
        attention_heads=cfg.attention_heads,
        attention_dim_head=cfg.attention_dim_head,
        attention_depth=cfg.attention_depth,
        attention_ff_dim=cfg.attention_ff_dim,
    )


class SquashedGaussianActor(nn.Module):
    """obs {key: (B, K, *shape)} -> mean (B, A), log_std (B, A) in [-20, 2]; :meth:`sample` squashes.

    ``encoder`` (no action input) -> ReLU trunk of widths ``hidden`` -> mean and log-std heads."""

    def __init__(self, encoder: MultimodalEncoder, action_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.trunk, d = _relu_mlp(self.encoder.out_dim, list(hidden))
        self.mean_head = nn.Linear(d, action_dim)
        self.log_std_head = nn.Linear(d, action_dim)
        orthogonal_init(self.trunk, gain=math.sqrt(2.0))  # ReLU gain
        # Small output heads: the first policy is near-zero mean, unit-ish std, whatever the encoder says.
        orthogonal_init(self.mean_head, gain=0.01)
        orthogonal_init(self.log_std_head, gain=0.01)

    def forward(
        self, obs: dict[str, torch.Tensor], return_attention: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """-> mean, log_std (each (B, A)) [, attention weights (depth, B, h, n, n)]."""
        enc = self.encoder(obs, return_attention=return_attention)
        feat, attn = enc if return_attention else (enc, None)
        h = self.trunk(feat)
        mean = self.mean_head(h)
        log_std = self.log_std_head(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return (mean, log_std, attn) if return_attention else (mean, log_std)

    def sample(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> action (B, A) in (-1, 1) and log pi (B,).

        ``deterministic``: ``tanh(mean)`` with the log-prob of ``z = mean``."""
        mean, log_std = self(obs)
        if deterministic:
            return torch.tanh(mean), squashed_gaussian_log_prob(mean, mean, log_std)
        return squashed_gaussian_sample(mean, log_std)


class QNetwork(nn.Module):
    """(obs {key: (B, K, *shape)}, action (B, A)) -> Q (B,): ``encoder`` (with an action input, its
    own) -> ReLU trunk of widths ``hidden`` -> Linear."""

    def __init__(self, encoder: MultimodalEncoder, hidden: list[int]) -> None:
        super().__init__()
        if encoder.action_dim < 1:
            raise ValueError("a QNetwork's encoder needs an action input (action_dim >= 1)")
        self.encoder = encoder
        self.trunk, d = _relu_mlp(self.encoder.out_dim, list(hidden))
        self.out = nn.Linear(d, 1)
        orthogonal_init(self.trunk, gain=math.sqrt(2.0))
        orthogonal_init(self.out, gain=1.0)

    def forward(self, obs: dict[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(self.encoder(obs, action))).squeeze(-1)


class TwinCritic(nn.Module):
    """Two structurally identical, independent Q networks (against over-estimation)."""

    def __init__(self, q1: QNetwork, q2: QNetwork) -> None:
        super().__init__()
        self.q1, self.q2 = q1, q2

    def forward(
        self, obs: dict[str, torch.Tensor], action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> Q1 (B,), Q2 (B,)."""
        return self.q1(obs, action), self.q2(obs, action)


class HopeSACAgent(BaseAgent):
    """Multimodal SAC with per-modality normalisation, MLP or attention fusion and automatic temperature.

    ``observation_space`` is the single-step Dict space; acting takes K-step dicts (each value (K, ...)),
    replay stores raw single steps, and :meth:`update` consumes a ``replay.sample`` batch.
    """

    algorithm = "hope_sac"

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        cfg: Config,
        device: str | torch.device = "auto",
        num_streams: int = 1,
    ) -> None:
        super().__init__(observation_space, action_space, cfg, device, num_streams)
        K, A = self.seq_len, self.action_dim
        self.gamma = float(cfg.gamma)
        self.tau = float(cfg.tau)
        self.grad_clip = float(cfg.grad_clip)
        self.batch_size = int(cfg.batch_size)
        # --sac_target_update_interval: soft-update the critic targets every N gradient
        # updates (SB3's target_update_interval); env steps per update are --updates_per_step's job.
        self.target_update_every = int(cfg.sac_target_update_interval)
        self.target_entropy = (
            float(cfg.sac_target_entropy) if cfg.sac_target_entropy is not None else -float(A)
        )

        self.normalizer = ObservationNormalizer(observation_space, cfg.normalize_keys)

        def critic_encoder() -> MultimodalEncoder:
            return make_multimodal_encoder(cfg, observation_space, K, A)

        actor_encoder = make_multimodal_encoder(cfg, observation_space, K)
        self.actor = SquashedGaussianActor(actor_encoder, A, cfg.actor_hidden).to(self.device)
        self.critic = TwinCritic(
            QNetwork(critic_encoder(), cfg.critic_hidden), QNetwork(critic_encoder(), cfg.critic_hidden)
        ).to(self.device)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.critic_target.eval()  # targets never use dropout / drop-path noise
        self.log_alpha = torch.tensor(math.log(cfg.sac_init_alpha), device=self.device, requires_grad=True)

        self.actor_optimizer = make_adam(self.actor.parameters(), cfg.sac_actor_lr)
        # One Adam over both critics equals one per critic (Adam is per parameter and each loss touches
        # only its own critic); gradients are still clipped per critic.
        self.critic_optimizer = make_adam(self.critic.parameters(), cfg.sac_critic_lr)
        self.alpha_optimizer = make_adam([self.log_alpha], cfg.sac_alpha_lr)

        self._mask_candidates: torch.Tensor | None = None
        if cfg.mask_postprocess:
            from vmamba_rl.envs.parking import MAX_SPEED, MAX_STEER, N_STEER_BINS

            n_mask = 2 * N_STEER_BINS
            space = observation_space.spaces.get("action_mask")
            limits = (MAX_STEER, MAX_SPEED)
            if (
                space is None
                or space.shape[-1] != n_mask
                or A != 2
                or not np.allclose(action_space.high, limits)
                or not np.allclose(action_space.low, [-v for v in limits])
            ):
                raise ValueError(
                    f"--mask_postprocess needs Parking-v0's {n_mask}-entry 'action_mask' observation "
                    f"(in --modalities) and its action box +-{limits}; got observations "
                    f"{list(observation_space.spaces)} and actions {action_space}"
                )
            steer = torch.linspace(-1.0, 1.0, N_STEER_BINS)
            fwd = torch.stack([steer, torch.ones_like(steer)], 1)
            rev = torch.stack([steer, -torch.ones_like(steer)], 1)
            # the mask's (steer, speed) table, ParkingEnv.mask_actions, in [-1, 1] units
            self._mask_candidates = torch.cat([fwd, rev]).to(self.device)

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return float(self.log_alpha.exp().item())

    def _prepare(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """numpy/tensor dict (B, T, *shape) -> tensors on the device, chosen vectors normalised."""
        t = {
            k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, device=self.device)
            for k, v in obs.items()
        }
        return self.normalizer.normalize(t)

    def _obs_seq_to_batch(self, obs_seq: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """K-step dict {key: (K, *shape)} (or single step {key: shape} when K == 1) -> (1, K, *shape)."""
        batch = {}
        for k, space in self.observation_space.spaces.items():
            v = np.asarray(obs_seq[k])
            if v.shape == tuple(space.shape):
                if self.seq_len != 1:
                    raise ValueError(
                        f"act() needs a {self.seq_len}-step history for {k!r} (shape ({self.seq_len}, "
                        f"{', '.join(map(str, space.shape))})), got a single step {v.shape}"
                    )
                v = v[None]
            batch[k] = v
        return self._prepare(obs_to_tensor(batch, self.device, batch=True))

    # --- acting -------------------------------------------------------------------------------------
    def act(self, obs_seq: dict[str, np.ndarray], explore: bool = True) -> np.ndarray:
        """K-step dict (each value (K, ...)) -> action in environment units (A,).

        ``explore``: a squashed-Gaussian sample; otherwise the deterministic ``tanh(mean)``.
        """
        with torch.no_grad(), eval_mode(self.actor):
            a = self._policy_action(self._obs_seq_to_batch(obs_seq), obs_seq, explore)
        return self.scaler.to_env(a[0].cpu().numpy())

    def act_batch(
        self, obs: dict[str, np.ndarray], explore: bool = True, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """{key: (N, K, ...)} -> actions (N, A) in environment units (``noise`` unused: SAC samples)."""
        with torch.no_grad(), eval_mode(self.actor):
            batch = self._prepare(obs_to_tensor(obs, self.device, batch=False))
            a = self._policy_action(batch, obs, explore)
        return self.scaler.to_env(a.cpu().numpy())

    def _policy_action(
        self, batch: dict[str, torch.Tensor], raw: dict[str, np.ndarray], explore: bool
    ) -> torch.Tensor:
        """Actions (N, A) in [-1, 1]: the squashed Gaussian's, or with --mask_postprocess the chosen
        full-speed mask action (the newest step's raw mask, (N, 42))."""
        if self._mask_candidates is None:
            return self.actor.sample(batch, deterministic=not explore)[0]
        from vmamba_rl.planning.mask import choose_masked

        mean, log_std = self.actor(batch)
        m = np.asarray(raw["action_mask"], dtype=np.float32)
        # (42,), (K, 42) or (N, K, 42) -> the newest step's mask per row, (N, 42)
        mask = torch.as_tensor(m.reshape(mean.shape[0], -1, m.shape[-1])[:, -1], device=self.device)
        return choose_masked(mean, log_std, mask, self._mask_candidates, explore)

    def policy_modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor}

    def attention_weights(self, obs_seq: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The actor's attention over modality tokens for one K-step observation.

        Returns weights (depth, heads, n, n) (rows sum to 1: query token -> key tokens) and the token
        names in order. Only with ``fusion == "attention"``.
        """
        if self.cfg.fusion != "attention":
            raise ValueError(
                f"attention weights need --fusion attention, this agent uses {self.cfg.fusion!r}"
            )
        was_training = self.actor.training
        self.actor.eval()
        try:
            with torch.no_grad():
                _, _, w = self.actor(self._obs_seq_to_batch(obs_seq), return_attention=True)
        finally:
            self.actor.train(was_training)
        return w[:, 0].cpu().numpy(), list(self.actor.encoder.token_names)

    # --- learning -----------------------------------------------------------------------------------
    def train(self, progress_ratio: float = 0.0) -> dict[str, float] | None:
        """Sample a batch and :meth:`update`; None while the buffer holds fewer than ``batch_size``."""
        if len(self.replay_buffer) < self.batch_size:
            return None
        return self.update(self.replay_buffer.sample(self.batch_size))

    def _clip(self, params: Any) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """One SAC update from a replay batch: ``obs`` / ``next_obs`` {key: (B, K, *shape)} raw,
        ``action`` (B, A) in [-1, 1], ``reward``, ``terminated``, ``discount`` (B,).

        Order: critics -> actor -> alpha -> soft update of the targets (every ``sac_target_update_interval``).
        """
        self.total_it += 1
        step = self.total_it
        dev = self.device
        obs, next_obs = self._prepare(batch.obs), self._prepare(batch.next_obs)

        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)

        action = tensor(batch.action)
        reward, terminated = tensor(batch.reward).reshape(-1), tensor(batch.terminated).reshape(-1)
        discount = tensor(batch.discount).reshape(-1)  # gamma^m per sample (m = 1 without --n_step)
        alpha = self.log_alpha.detach().exp()  # the temperature of this update (alpha steps last)

        # --- critics: y = r + gamma (1 - terminated) (min Q'(s', a') - alpha log pi(a'|s')) ----------
        with torch.no_grad():
            next_a, next_logp = self.actor.sample(next_obs)
            tq1, tq2 = self.critic_target(next_obs, next_a)
            y = reward + discount * (1.0 - terminated) * (torch.min(tq1, tq2) - alpha * next_logp)
        q1, q2 = self.critic(obs, action)
        q1_loss = F.mse_loss(q1, y)
        q2_loss = F.mse_loss(q2, y)
        critic_loss = q1_loss + q2_loss
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        c1_norm = self._clip(self.critic.q1.parameters())
        c2_norm = self._clip(self.critic.q2.parameters())
        c_norm = float(torch.hypot(c1_norm, c2_norm))  # norm over both critics' gradients
        check_finite(step, critic_loss=critic_loss.item(), critic_grad_norm=c_norm)
        self.critic_optimizer.step()

        # --- actor: minimise alpha log pi(a|s) - min Q(s, a), a ~ pi(.|s) reparameterised -----------------
        self.critic.requires_grad_(False)  # the critics only pass gradients through to the action
        try:
            pi_a, logp = self.actor.sample(obs)
            pq1, pq2 = self.critic(obs, pi_a)
            actor_loss = (alpha * logp - torch.min(pq1, pq2)).mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
        finally:
            self.critic.requires_grad_(True)
        a_norm = self._clip(self.actor.parameters())
        check_finite(step, actor_loss=actor_loss.item(), actor_grad_norm=float(a_norm))
        self.actor_optimizer.step()

        # --- temperature: loss = -log alpha * (log pi + target_entropy).detach() --------------------------
        logp_d = logp.detach()
        alpha_loss = -(self.log_alpha * (logp_d + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        check_finite(step, alpha_loss=alpha_loss.item())
        self.alpha_optimizer.step()

        # --- targets: theta' <- tau theta + (1 - tau) theta' ----------------------------------------------
        if step % self.target_update_every == 0:
            soft_update(self.critic_target, self.critic, self.tau)

        return {
            "critic_loss": float(critic_loss.item()),
            "q1_loss": float(q1_loss.item()),
            "q2_loss": float(q2_loss.item()),
            "actor_loss": float(actor_loss.item()),
            "alpha_loss": float(alpha_loss.item()),
            "alpha": float(self.log_alpha.detach().exp().item()),
            "entropy": float(-logp_d.mean().item()),
            "q1": float(q1.detach().mean().item()),
            "q2": float(q2.detach().mean().item()),
            "target_q": float(y.mean().item()),
            "critic_grad_norm": c_norm,
            "actor_grad_norm": float(a_norm),
        }

    # --- persistence --------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer, "alpha": self.alpha_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {
            "log_alpha": self.log_alpha.detach().cpu().clone(),
            "target_entropy": self.target_entropy,
            "normalizer": self.normalizer.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "log_alpha" in state:
            with torch.no_grad():
                # in place: the alpha optimiser holds this very tensor
                self.log_alpha.copy_(torch.as_tensor(state["log_alpha"], device=self.device))
        if "normalizer" in state:
            self.normalizer.load_state_dict(state["normalizer"])
