"""TD3 on (base, depth) sequences, parameterised by its visual encoder (docs/design.md, "The TD3 update").

``TD3Agent(..., encoder="cnn")`` is the conventional baseline (algorithm ``td3``); VMamba-TD3
(:class:`vmamba_rl.agents.vmamba_td3.VMambaTD3Agent`, algorithm ``vmamba_td3``) is the same agent with
the VMamba encoder. Dual stream: the actor and the critic each own an encoder stream (visual encoder
+ StateMLP + MambaSequenceEncoder), each with a target copy. One update:

- critic: ``y = r + gamma * (1 - terminated) * min(Q1', Q2')(s', clip(pi'(s') + clip(eps, -c, c), -1, 1))``
  with eps ~ N(0, policy_noise^2); both Qs regress on y (MSE sum). Truncated windows bootstrap. With
  ``--n_step`` n, r is the m-step return (m <= n), gamma^m the discount and s' the window m steps on.
- every ``policy_freq`` critic updates: actor loss ``-Q1(s_c, pi(s_a))`` with the critic stream frozen,
  then soft updates of every target module with tau.

Deliberate choice: the actor update reads the critic context computed (without gradient) for the
critic loss of the same batch instead of re-encoding the batch after the critic step; it saves one
encoder pass over B*K frames per actor update, and the critic head itself is the updated one.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmamba_rl.agents.base import BaseAgent, check_finite, eval_mode, make_adam, obs_to_tensor, soft_update
from vmamba_rl.augmentation import random_shift
from vmamba_rl.config import Config
from vmamba_rl.exploration import OUNoise
from vmamba_rl.models.cnn import CNNVisualEncoder
from vmamba_rl.models.heads import Actor, Critic
from vmamba_rl.models.sequence import EncoderStream, FrameFeatureCache
from vmamba_rl.models.vmamba import VMambaVisualEncoder
from vmamba_rl.normalization import ObservationNormalizer
from vmamba_rl.replay import ReplayBatch


def make_stream(cfg: Config, encoder: str, base_dim: int, depth_shape: tuple[int, int, int]) -> EncoderStream:
    """One encoder stream as the options describe it: the ``encoder`` ("vmamba" or "cnn") visual
    encoder for ``depth_shape`` (C, H, W) frames, then StateMLP + MambaSequenceEncoder over
    ``base_dim``-vectors."""
    C, H, W = depth_shape
    if encoder == "vmamba":
        visual: nn.Module = VMambaVisualEncoder(C, (H, W), cfg.feature_dim, **cfg.vmamba.backbone_kwargs())
    else:
        visual = CNNVisualEncoder(C, (H, W), cfg.feature_dim, cfg.cnn_channels)
    return EncoderStream(visual, base_dim, **cfg.vmamba.sequence_kwargs(), base_skip=cfg.base_skip)


def visual_spread(features: torch.Tensor) -> float:
    """How much the visual features vary across frames: std over the frames (U, Dv) averaged over the
    features, divided by their mean magnitude. Near 0: the encoder gives every frame the same features
    (collapsed; the policy cannot see obstacles)."""
    f = features.float()
    return float(f.std(0).mean() / f.abs().mean().clamp_min(1e-12)) if len(f) > 1 else float("nan")


def drone_observation_space(base_dim: int, depth_shape: tuple[int, ...]) -> gym.spaces.Dict:
    """Single-step Dict space ``{"base": (base_dim,) float32, "depth": depth_shape uint8}``."""
    return gym.spaces.Dict(
        {
            "base": gym.spaces.Box(-np.inf, np.inf, (base_dim,), np.float32),
            "depth": gym.spaces.Box(0, 255, tuple(depth_shape), np.uint8),
        }
    )


ENCODERS = {"vmamba": "vmamba_td3", "cnn": "td3"}  # visual encoder -> algorithm name in checkpoints


def _stream_view(side: str, part: str, target: bool = False) -> property:
    """A read-only attribute naming one module of a stream, e.g. ``actor_mamba`` -> the actor stream's
    MambaSequenceEncoder (docs/design.md names them so)."""

    def get(self: TD3Agent) -> nn.Module:
        if side == "actor":
            stream = self._streams_for_actor(target)
        else:
            stream = self.critic_stream_target if target else self.critic_stream
        return getattr(stream, part)

    which = f"{side} stream{'s target' if target else ''}"
    return property(get, doc=f"The {which}'s ``{part}`` module (the module itself, not a copy).")


class TD3Agent(BaseAgent):
    """TD3 on (base, depth) sequences; ``encoder`` "vmamba" (VMamba-TD3) or "cnn" (the baseline)."""

    algorithm = ENCODERS["cnn"]  # the default encoder's; instances set theirs
    explains_history = True

    # The design document's per-module names, as views on the streams. With --share_encoder there is
    # no separate actor stream: the actor_* names are the critic stream's modules, which acting reads.
    actor_visual_encoder = _stream_view("actor", "visual")
    actor_state_encoder = _stream_view("actor", "state")
    actor_mamba = _stream_view("actor", "mamba")
    critic_visual_encoder = _stream_view("critic", "visual")
    critic_state_encoder = _stream_view("critic", "state")
    critic_mamba = _stream_view("critic", "mamba")
    actor_visual_encoder_target = _stream_view("actor", "visual", target=True)
    actor_state_encoder_target = _stream_view("actor", "state", target=True)
    actor_mamba_target = _stream_view("actor", "mamba", target=True)
    critic_visual_encoder_target = _stream_view("critic", "visual", target=True)
    critic_state_encoder_target = _stream_view("critic", "state", target=True)
    critic_mamba_target = _stream_view("critic", "mamba", target=True)

    def __init__(
        self,
        base_dim: int,
        depth_shape: tuple[int, int, int],
        action_space: gym.spaces.Box,
        args: Config,
        device: str | torch.device | None = None,
        num_streams: int = 1,
        encoder: str = "cnn",
    ) -> None:
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        self.encoder, self.algorithm = encoder, ENCODERS[encoder]
        super().__init__(
            drone_observation_space(base_dim, depth_shape),
            action_space,
            args,
            device or args.device,
            num_streams,
        )
        torch.manual_seed(args.seed)
        self.base_dim, self.depth_shape = base_dim, tuple(depth_shape)
        # The design (docs/design.md) feeds the base vector raw; --normalize_base adds running mean/std
        # normalisation (updated on stored steps only, so evaluation reads frozen statistics).
        self.normalizer = (
            ObservationNormalizer(self.observation_space, ["base"]) if args.normalize_base else None
        )
        self._create_networks(args)
        self._configure_optimizers(args)
        self.ou_noise = OUNoise(
            self.action_dim, args.ou_theta, args.ou_sigma, args.ou_sigma_min, seed=args.seed
        )
        self._noise_gen = torch.Generator(device=self.device).manual_seed(args.seed + 1)
        # DrQ random shift: one offset per run of replay_segment windows (they share frames)
        self.augment_shift, self.augment_group = args.augment_shift, max(1, args.replay_segment)
        if self.augment_shift * 2 >= min(self.depth_shape[1:]):
            raise ValueError(
                f"--augment_shift {self.augment_shift} is too large for {self.depth_shape[1]}x"
                f"{self.depth_shape[2]} depth frames: use less than half the image side (DrQ: 4 at 84x84)"
            )
        self._augment_gen = torch.Generator(device=self.device).manual_seed(args.seed + 2)
        self.explore_candidates = args.explore_candidates
        self._candidate_gen = torch.Generator(device=self.device).manual_seed(args.seed + 3)
        self.actor_candidates, self.actor_candidate_coef = args.actor_candidates, args.actor_candidate_coef
        self._actor_candidate_gen = torch.Generator(device=self.device).manual_seed(args.seed + 4)
        self.gamma, self.tau = args.gamma, args.tau
        self.policy_noise, self.noise_clip, self.policy_freq = (
            args.policy_noise,
            args.noise_clip,
            args.policy_freq,
        )
        self.batch_size, self.grad_clip = args.batch_size, args.grad_clip
        self.critic_target_mode = args.critic_target
        self.actor_reg = args.actor_reg
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        if self.amp_dtype is not None and self.device.type != "cuda":
            self.amp_dtype = None  # autocast is a CUDA feature here; CPU bf16 is slower than fp32 on AVX2
        self.scaler_amp = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # cuDNN builds an execution plan for each new input shape (tens of ms of CPU time per conv call,
        # docs/benchmarks.md "GPU"); the number of distinct frames in a batch varies, so on a GPU it is
        # rounded up to a multiple of this by encoding repeats of one frame, and few shapes ever occur.
        self.frame_bucket = 32 if self.device.type == "cuda" else 1
        # acting re-encodes only frames it has not seen under the current weights; None: every frame
        self.frame_cache: FrameFeatureCache | None = FrameFeatureCache()
        self._last_actor_loss = float("nan")

    # --- construction -----------------------------------------------------------------------------
    def _create_networks(self, args: Config) -> None:
        def stream() -> EncoderStream:
            return make_stream(args, self.encoder, self.base_dim, self.depth_shape).to(self.device)

        self.share_encoder = bool(args.share_encoder)
        self.critic_stream = stream()
        self.actor_stream = None if self.share_encoder else stream()
        repr_dim = self.critic_stream.out_features
        self.actor = Actor(repr_dim, self.action_dim, args.hidden_dim).to(self.device)
        self.critic = Critic(repr_dim, self.action_dim, args.hidden_dim, args.critic_norm).to(self.device)
        self._create_target_networks()

    def _create_target_networks(self) -> None:
        self.critic_stream_target = copy.deepcopy(self.critic_stream).requires_grad_(False)
        self.actor_stream_target = (
            None if self.share_encoder else copy.deepcopy(self.actor_stream).requires_grad_(False)
        )
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)

    def _configure_optimizers(self, args: Config) -> None:
        def params(head: nn.Module, stream: EncoderStream | None) -> list:
            if stream is None:
                return list(head.parameters())
            if args.encoder_lr is None:
                return list(head.parameters()) + list(stream.parameters())
            visual = {id(p) for p in stream.visual.parameters()}
            rest = [p for p in stream.parameters() if id(p) not in visual]
            return [
                {"params": list(head.parameters()) + rest},
                {"params": list(stream.visual.parameters()), "lr": args.encoder_lr},
            ]

        self.actor_optimizer = make_adam(params(self.actor, self.actor_stream), args.actor_lr)
        self.critic_optimizer = make_adam(params(self.critic, self.critic_stream), args.critic_lr)

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "critic_stream": self.critic_stream,
            "critic_stream_target": self.critic_stream_target,
            "actor": self.actor,
            "actor_target": self.actor_target,
            "critic": self.critic,
            "critic_target": self.critic_target,
        }
        if self.actor_stream is not None:
            mods["actor_stream"] = self.actor_stream
            mods["actor_stream_target"] = self.actor_stream_target
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def _clip_groups(self, stream: EncoderStream | None, head: nn.Module) -> list[list[nn.Parameter]]:
        """Per-module gradient clipping groups (the design clips each sub-network separately)."""
        groups = [list(head.parameters())]
        if stream is not None:
            groups += [
                list(stream.visual.parameters()),
                list(stream.state.parameters()),
                list(stream.mamba.parameters()),
            ]
        return groups

    # --- acting -------------------------------------------------------------------------------------
    def _streams_for_actor(self, target: bool = False) -> EncoderStream:
        if self.share_encoder:
            return self.critic_stream_target if target else self.critic_stream
        return self.actor_stream_target if target else self.actor_stream

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @torch.no_grad()
    def act_batch(
        self, obs: dict[str, np.ndarray], explore: bool = True, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """base (N, K, Ds), depth (N, K, C, H, W) -> actions (N, A) in environment units; with
        ``explore`` the (N, A) ``noise`` is added to the deterministic action before clipping."""
        base = torch.as_tensor(self._norm_base(obs["base"]), device=self.device)
        stream = self._streams_for_actor()
        with eval_mode(stream), self._autocast():
            if self.frame_cache is None:
                ctx = stream(base, torch.as_tensor(np.asarray(obs["depth"]), device=self.device))
            else:
                v = self.frame_cache.features(
                    stream.visual, obs["depth"], self.device, self.weights_generation
                )
                ctx = stream.from_features(base, v)
            a_t = self.actor(ctx)
            if explore and self.explore_candidates > 0:
                a_t = self._best_candidate(base, obs["depth"], ctx, a_t)
            a = a_t.float().cpu().numpy()
        if explore and noise is not None:
            a = a + noise
        if not np.all(np.isfinite(a)):
            check_finite(self.total_it, action=float("nan"))
        return self.scaler.to_env(np.clip(a, -1.0, 1.0))

    def _best_candidate(
        self, base: torch.Tensor, depth: np.ndarray, ctx: torch.Tensor, actor_action: torch.Tensor
    ) -> torch.Tensor:
        """The actor's actions (N, A) in [-1, 1] -> per row, whichever of it and ``explore_candidates``
        uniform actions has the highest Q1 under the critic (N, A).

        Why: when the actor has collapsed to one action for every state (the crash-early trap of
        docs/results.md), the critic may still rank actions per state; acting on its ranking puts the
        actions it prefers into replay, which a collapsed actor alone never would."""
        if self.share_encoder:
            ctx_c = ctx  # the actor reads the critic stream's context already
        else:
            with eval_mode(self.critic_stream):
                ctx_c = self.critic_stream(base, torch.as_tensor(np.asarray(depth), device=self.device))
        best, _ = self._q1_argmax(ctx_c, actor_action, self.explore_candidates, self._candidate_gen)
        return best

    def _q1_argmax(
        self, ctx_c: torch.Tensor, action: torch.Tensor, m: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic contexts (N, D) and actions (N, A) in [-1, 1] -> per row, the highest-Q1 of that action
        and ``m`` uniform actions drawn from ``gen`` (N, A), and whether a uniform one won (N,) bool.
        The given action comes first, so ties keep it."""
        n = action.shape[0]
        uniform = torch.rand((n, m, self.action_dim), device=self.device, generator=gen)
        cands = torch.cat([action[:, None].to(uniform.dtype), uniform * 2.0 - 1.0], dim=1)  # (N, 1+m, A)
        states = ctx_c[:, None].expand(-1, m + 1, -1).reshape(n * (m + 1), -1)
        best = self.critic.Q1(states, cands.flatten(0, 1)).view(n, m + 1).argmax(dim=1)
        return cands[torch.arange(n, device=self.device), best], best > 0

    def select_action(self, base_seq: np.ndarray, depth_seq: np.ndarray, noise: bool = True) -> np.ndarray:
        """base_seq (K, Ds), depth_seq (K, C, H, W) -> action (A,) in environment units (the agent's own
        OU process as noise)."""
        obs = {"base": np.asarray(base_seq)[None], "depth": np.asarray(depth_seq)[None]}
        n = self.ou_noise.sample()[None] if noise else None
        return self.act_batch(obs, explore=noise, noise=n)[0]

    def make_noise(self, index: int) -> OUNoise:
        """OU noise for environment ``index``; environment 0 draws what the agent's own process draws."""
        a = self.cfg
        return OUNoise(self.action_dim, a.ou_theta, a.ou_sigma, a.ou_sigma_min, seed=a.seed + 7919 * index)

    def policy_modules(self) -> dict[str, nn.Module]:
        stream = "critic_stream" if self.share_encoder else "actor_stream"
        return {"actor": self.actor, stream: self._streams_for_actor()}

    def _norm_base(self, base: np.ndarray) -> np.ndarray:
        """(..., Ds) raw base -> float32, normalised with ``--normalize_base``."""
        base = np.asarray(base, np.float32)
        if self.normalizer is None:
            return base
        return self.normalizer.normalize({"base": base})["base"]

    def act(self, obs_seq: dict[str, np.ndarray], explore: bool = True) -> np.ndarray:
        return self.select_action(obs_seq["base"], obs_seq["depth"], noise=explore)

    def reset_episode(self) -> None:
        self.ou_noise.reset()

    @torch.no_grad()
    def explain(self, obs_seq: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Features and cross-attention of both streams for one K-step observation (visualisation)."""
        obs = obs_to_tensor({**obs_seq, "base": self._norm_base(obs_seq["base"])}, self.device)
        out: dict[str, np.ndarray] = {}
        for side, stream in (("actor", self._streams_for_actor()), ("critic", self.critic_stream)):
            stream.eval()
            res = stream(obs["base"], obs["depth"], return_all=True)
            stream.train()
            for k, v in res.items():
                out[f"{side}_{k}"] = v[0].float().cpu().numpy()
            out[f"{side}_attention_heads"] = stream.mamba.cross_attn.last_head_weights[0].cpu().numpy()
        # the deterministic action in [-1, 1], from the actor stream's context computed above
        ctx = torch.as_tensor(out["actor_context"], device=self.device)[None]
        out["action"] = self.actor(ctx)[0].cpu().numpy()
        return out

    # --- learning -------------------------------------------------------------------------------------
    def batch_to_tensors(self, batch: ReplayBatch) -> dict[str, torch.Tensor]:
        """Replay sample (numpy) -> tensors on the device; depth stays uint8 until the encoder.

        Returns ``base`` / ``next_base`` (B, K, Ds), ``action`` (B, A), ``reward``, ``terminated``,
        ``discount`` (B, 1), and for each side its distinct frames ``depth_state`` / ``depth_next``
        (U, C, H, W) with ``index_state`` / ``index_next`` (B, K) into them, so each stream encodes a
        shared frame once (U rounded up to ``frame_bucket``).
        """

        def tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), device=self.device, dtype=dtype)

        out = {
            "base": tensor(self._norm_base(batch.obs["base"]), torch.float32),
            "next_base": tensor(self._norm_base(batch.next_obs["base"]), torch.float32),
            "action": tensor(batch.action, torch.float32),
            "reward": tensor(batch.reward, torch.float32).view(-1, 1),
            "terminated": tensor(batch.terminated, torch.float32).view(-1, 1),
            "discount": tensor(batch.discount, torch.float32).view(-1, 1),
        }
        for side, frames, ids in (
            ("state", batch.obs["depth"], batch.frame_ids),
            ("next", batch.next_obs["depth"], batch.next_frame_ids),
        ):
            _, first, inverse = np.unique(np.asarray(ids).ravel(), return_index=True, return_inverse=True)
            pad = -len(first) % self.frame_bucket
            if pad:  # extra copies of the first frame, never indexed
                first = np.concatenate([first, np.full(pad, first[0])])
            frames = np.asarray(frames)
            out[f"depth_{side}"] = tensor(frames.reshape(-1, *frames.shape[2:])[first])
            out[f"index_{side}"] = tensor(inverse.reshape(ids.shape))
        return out

    def train(self, progress_ratio: float = 0.0) -> dict[str, float] | None:
        """The design's ``train``: decay OU sigma, sample a batch, update critic (and actor, delayed)."""
        self.ou_noise.scale_sigma(progress_ratio)
        if len(self.replay_buffer) < self.batch_size:
            return None
        return self.update(self.batch_to_tensors(self.replay_buffer.sample(self.batch_size)))

    def compute_target(
        self,
        next_base: torch.Tensor,
        next_depth: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        next_index: torch.Tensor | None = None,
        discount: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """TD3 target with target policy smoothing and clipped double Q. Returns (B, 1).

        next_depth (B, K, C, H, W), or distinct frames (U, C, H, W) with ``next_index`` (B, K).
        ``discount``: (B, 1) gamma^m of m-step samples; default gamma.
        """
        discount = self.gamma if discount is None else discount
        with torch.no_grad(), self._autocast():
            next_state = self.critic_stream_target(next_base, next_depth, frame_index=next_index)
            next_state_actor = (
                next_state
                if self.share_encoder
                else self.actor_stream_target(next_base, next_depth, frame_index=next_index)
            )
            next_action = self.actor_target(next_state_actor).float()
            eps = torch.randn(next_action.shape, device=self.device, generator=self._noise_gen)
            noise = (eps * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (next_action + noise).clamp(-1.0, 1.0)
            tq1, tq2 = self.critic_target(next_state, next_action)
            tq = torch.min(tq1, tq2) if self.critic_target_mode == "min" else 0.5 * (tq1 + tq2)
            return reward + (1.0 - terminated) * discount * tq.float()

    def _step(
        self, loss: torch.Tensor, opt: torch.optim.Optimizer, groups: list[list[nn.Parameter]]
    ) -> float:
        opt.zero_grad(set_to_none=True)
        self.scaler_amp.scale(loss).backward()
        self.scaler_amp.unscale_(opt)
        norm = 0.0
        for g in groups:
            norm = max(norm, float(torch.nn.utils.clip_grad_norm_(g, self.grad_clip)))
        self.scaler_amp.step(opt)
        self.scaler_amp.update()
        return norm

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One TD3 update on a tensor batch (:meth:`batch_to_tensors` output)."""
        self.total_it += 1
        self.weights_generation += 1
        base, index, next_index = b["base"], b["index_state"], b["index_next"]
        depth, next_depth = self._augment(b["depth_state"], index), self._augment(b["depth_next"], next_index)
        target_q = self.compute_target(
            b["next_base"], next_depth, b["reward"], b["terminated"], next_index, b["discount"]
        )
        with self._autocast():
            visual = self.critic_stream.visual(depth)  # (U, Dv): each distinct frame once
            state = self.critic_stream.from_features(base, visual[index])
            q1, q2 = self.critic(state, b["action"])
            critic_loss = F.mse_loss(q1.float(), target_q) + F.mse_loss(q2.float(), target_q)
        loss_value = critic_loss.item()
        check_finite(self.total_it, critic_loss=loss_value)
        cgn = self._step(
            critic_loss, self.critic_optimizer, self._clip_groups(self.critic_stream, self.critic)
        )
        metrics = {
            "critic_loss": loss_value,
            "q1": q1.detach().float().mean().item(),
            "q2": q2.detach().float().mean().item(),
            "target_q": float(target_q.mean()),
            "critic_grad_norm": cgn,
            "noise_sigma": float(self.ou_noise.sigma),
            "visual_spread": visual_spread(visual.detach()),
        }
        if self.total_it % self.policy_freq == 0:
            metrics.update(self._update_actor(base, depth, state.detach(), index))
            self._soft_update_targets()
        metrics["actor_loss"] = self._last_actor_loss
        return metrics

    def _augment(self, frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``--augment_shift``: the distinct frames (U, C, H, W) of one side, randomly shifted."""
        return random_shift(frames, index, self.augment_shift, self.augment_group, self._augment_gen)

    def _update_actor(
        self,
        base: torch.Tensor,
        depth: torch.Tensor,
        state_critic: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> dict[str, float]:
        self.critic.requires_grad_(False)  # the critic stream is frozen for the policy gradient
        extra: dict[str, float] = {}
        try:
            with self._autocast():
                state_actor = (
                    state_critic if self.share_encoder else self.actor_stream(base, depth, frame_index=index)
                )
                pre = self.actor.net(state_actor)  # pre-tanh action (B, A)
                a = torch.tanh(pre)
                actor_loss = -self.critic.Q1(state_critic, a).float().mean()
                if self.actor_reg > 0:
                    # keeps tanh out of saturation while the critic's action gradient is still noise
                    actor_loss = actor_loss + self.actor_reg * pre.float().pow(2).mean()
                if self.actor_candidates > 0:
                    # The policy gradient only climbs Q1 locally; where a uniform action scores higher,
                    # the actor is pulled toward it, so a collapsed actor can follow the critic's ranking.
                    with torch.no_grad():
                        best, won = self._q1_argmax(
                            state_critic, a.detach(), self.actor_candidates, self._actor_candidate_gen
                        )
                    pull = ((a.float() - best.float()).pow(2).sum(-1) * won).mean()
                    actor_loss = actor_loss + self.actor_candidate_coef * pull
                    extra["actor_candidate_wins"] = won.float().mean().item()
            check_finite(self.total_it, actor_loss=actor_loss.item())
            agn = self._step(
                actor_loss, self.actor_optimizer, self._clip_groups(self.actor_stream, self.actor)
            )
        finally:
            self.critic.requires_grad_(True)
        self._last_actor_loss = actor_loss.item()
        return {"actor_grad_norm": agn} | extra

    def _soft_update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.tau)
        soft_update(self.actor_target, self.actor, self.tau)
        soft_update(self.critic_stream_target, self.critic_stream, self.tau)
        if self.actor_stream is not None:
            soft_update(self.actor_stream_target, self.actor_stream, self.tau)

    def extra_state(self) -> dict[str, Any]:
        if self.frame_cache is not None:
            self.frame_cache.clear()  # a resumed run starts with an empty cache; so does this one
        return {
            "ou_noise": self.ou_noise.state_dict(),
            "noise_gen": self._noise_gen.get_state(),
            "augment_gen": self._augment_gen.get_state(),
            "candidate_gen": self._candidate_gen.get_state(),
            "actor_candidate_gen": self._actor_candidate_gen.get_state(),
            "last_actor_loss": self._last_actor_loss,
        } | ({"normalizer": self.normalizer.state_dict()} if self.normalizer is not None else {})

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "ou_noise" in state:
            self.ou_noise.load_state_dict(state["ou_noise"])
        if "noise_gen" in state:
            self._noise_gen.set_state(state["noise_gen"].cpu())
        if "augment_gen" in state:
            self._augment_gen.set_state(state["augment_gen"].cpu())
        if "candidate_gen" in state:
            self._candidate_gen.set_state(state["candidate_gen"].cpu())
        if "actor_candidate_gen" in state:
            self._actor_candidate_gen.set_state(state["actor_candidate_gen"].cpu())
        self._last_actor_loss = float(state.get("last_actor_loss", float("nan")))
        if self.normalizer is not None and "normalizer" in state:
            self.normalizer.load_state_dict(state["normalizer"])
