"""Deterministic rollouts of a checkpointed policy that record what the figures and videos need.

Per decision step the trace holds the attention of the actor and critic streams (head-averaged and per
head), the features behind the decision, the action, the reward, the distance to the goal, the event
flags and (optionally) the environment's rendered frame. Shape letters: T decision steps, K history
slots (VMamba-TD3 / TD3) or modality tokens (HOPE SAC), H attention heads, A action size.

The episodes are played by :func:`vmamba_rl.evaluation.run_episode`, the function evaluation uses, with
the agent wrapped in a recorder: the recorded actions are exactly the evaluated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from vmamba_rl.evaluation import EVAL_SEED, run_episode

# features.png shows these streams, in this order, when the agent provides them
FEATURE_KEYS = ("visual", "state", "context")


@dataclass
class RolloutTrace:
    """Everything recorded over one or more episodes; per-step lists are aligned (one entry per step).

    ``attention``/``critic_attention``: (K,) rows summing to 1 (None entries when the agent has none).
    ``features``: name -> list of (D,) vectors (actor side: the policy's view of the step).
    ``frames``: rendered frames, one per step plus one per episode start (``frame_step`` maps each frame
    to the decision step it shows the outcome of, -1 for the reset frame).
    """

    algorithm: str
    env_name: str
    slot_labels: list[str]
    critic_slot_labels: list[str] = field(default_factory=list)
    episode: list[int] = field(default_factory=list)
    t: list[int] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    collision: list[bool] = field(default_factory=list)
    out_of_bounds: list[bool] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    attention: list[np.ndarray | None] = field(default_factory=list)
    attention_heads: list[np.ndarray | None] = field(default_factory=list)
    critic_attention: list[np.ndarray | None] = field(default_factory=list)
    critic_attention_heads: list[np.ndarray | None] = field(default_factory=list)
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)
    frame_step: list[int] = field(default_factory=list)
    frame_episode: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    def stacked(self, name: str) -> np.ndarray | None:
        """A per-step attention list as a (T, ...) array, or None when any step lacks it."""
        rows = getattr(self, name)
        if not rows or any(r is None for r in rows):
            return None
        return np.stack(rows).astype(np.float64)

    def feature_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.features.items() if v}


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    from vmamba_rl.training import CHECKPOINT

    path = Path(checkpoint)
    return path / CHECKPOINT if path.is_dir() else path


def load_checkpoint(checkpoint: str | Path, device: str = "cpu") -> tuple[Path, dict[str, Any], Any]:
    """Checkpoint (or run folder) -> (its path, the saved state, the Config it was trained with)."""
    from vmamba_rl.checkpoint import CheckpointError, safe_torch_load
    from vmamba_rl.config import Config

    path = resolve_checkpoint(checkpoint)
    state = safe_torch_load(path, map_location=device)
    if "config" not in state:
        raise CheckpointError(f"{str(path)!r} holds no config; it was not written by vmamba-rl train")
    return path, state, Config.from_dict(state["config"])


def load_agent(
    checkpoint: str | Path,
    device: str = "cpu",
    render_mode: str | None = "rgb_array",
    rs_hybrid: bool | None = None,
    rs_exit_tree: bool | None = None,
    level: str | None = None,
) -> tuple[Any, gym.Env, Any]:
    """Checkpoint (or run folder) -> (agent with loaded weights, K-step env, Config).

    ``rs_hybrid``: True / False turns the Reeds-Shepp hand-off on / off, ``rs_exit_tree`` its exits
    (None: as trained); ``level``: the environment level (None: the run's)."""
    from vmamba_rl.agents import make_agent
    from vmamba_rl.training import make_env

    path, state, cfg = load_checkpoint(checkpoint, device)
    cfg.set("device", device)  # a GPU-trained checkpoint visualises on any machine
    if rs_hybrid is not None:
        cfg.set("rs_hybrid", rs_hybrid)
    if rs_exit_tree is not None:
        cfg.set("rs_exit_tree", rs_exit_tree)
    if level is not None:
        cfg.set("level", level)
    try:
        env = make_env(cfg, render_mode=render_mode)
    except (TypeError, ValueError, gym.error.Error):
        if render_mode is None:
            raise
        env = make_env(cfg)  # an environment without rgb_array rendering still gives attention/features
    agent = make_agent(env, None, cfg)
    agent.load_state_dict(state, where=repr(str(path)))
    return agent, env, cfg


def _sac_token_attention(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth, heads, n, n) -> head-averaged (n,) and per-head (heads, n) attention of the last layer.

    Averaging the query rows keeps each row a distribution over the key tokens (every query row sums
    to 1), so the result reads as "how much the fused feature draws on each modality".
    """
    last = np.asarray(weights, dtype=np.float64)[-1]  # (heads, n, n)
    per_head = last.mean(axis=1)
    return per_head.mean(axis=0), per_head


class _Recorder:
    """Agent proxy: records the explanation of every decision, then acts exactly like the agent."""

    def __init__(self, agent: Any, env: gym.Env, trace: RolloutTrace, render: bool) -> None:
        self.agent, self.env, self.trace, self.render = agent, env, trace, render
        self.episode = 0
        self.t = 0
        self._notes: set[str] = set()

    def _note(self, text: str) -> None:
        if text not in self._notes:
            self._notes.add(text)
            self.trace.notes.append(text)

    def _frame(self, step: int) -> None:
        if not self.render:
            return
        frame = self.env.render()
        if frame is None:
            self._note("the environment returned no rgb_array frame; no video")
            self.render = False
            return
        self.trace.frames.append(np.asarray(frame, dtype=np.uint8))
        self.trace.frame_step.append(step)
        self.trace.frame_episode.append(self.episode)

    def reset_episode(self) -> None:
        self.agent.reset_episode()
        self.t = 0
        self._frame(-1)

    def _explain(self, obs: dict[str, np.ndarray]) -> None:
        tr, agent = self.trace, self.agent
        ex = agent.explain(obs)
        if ex is not None:
            tr.attention.append(ex["actor_attention"])
            tr.attention_heads.append(ex["actor_attention_heads"])
            tr.critic_attention.append(ex["critic_attention"])
            tr.critic_attention_heads.append(ex["critic_attention_heads"])
            # newest slot: the features of the frame this decision adds (older slots repeat earlier steps)
            tr.features.setdefault("visual", []).append(ex["actor_visual"][-1])
            tr.features.setdefault("state", []).append(ex["actor_state"][-1])
            tr.features.setdefault("context", []).append(ex["actor_context"])
            return
        # HOPE SAC: attention over modality tokens, when the fusion has any
        actor_att = heads = critic_att = critic_heads = None
        if getattr(agent.cfg, "fusion", None) == "attention" and hasattr(agent, "attention_weights"):
            w, _ = agent.attention_weights(obs)
            actor_att, heads = _sac_token_attention(w)
            critic_att, critic_heads = self._sac_critic_attention(obs)
        else:
            self._note(
                f"{tr.algorithm} with fusion {getattr(agent.cfg, 'fusion', '?')!r} has no attention "
                "weights; attention.png skipped (train with --fusion attention to get them)"
            )
        tr.attention.append(actor_att)
        tr.attention_heads.append(heads)
        tr.critic_attention.append(critic_att)
        tr.critic_attention_heads.append(critic_heads)
        ctx = self._sac_context(obs)
        if ctx is not None:
            tr.features.setdefault("context", []).append(ctx)

    @torch.no_grad()
    def _sac_context(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        actor = getattr(self.agent, "actor", None)
        if actor is None or not hasattr(actor, "encoder"):
            return None
        was = actor.training
        actor.eval()
        try:
            feat = actor.encoder(self.agent._obs_seq_to_batch(obs))
        finally:
            actor.train(was)
        return feat[0].float().cpu().numpy()

    @torch.no_grad()
    def _sac_critic_attention(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray | None, ...]:
        """Q1's attention over (modalities, action) for the deterministic action (critic stream)."""
        agent = self.agent
        try:
            batch = agent._obs_seq_to_batch(obs)
            q1 = agent.critic.q1
            was_a, was_q = agent.actor.training, q1.training
            agent.actor.eval()
            q1.eval()
            try:
                a, _ = agent.actor.sample(batch, deterministic=True)
                _, w = q1.encoder(batch, a, return_attention=True)
            finally:
                agent.actor.train(was_a)
                q1.train(was_q)
        except (AttributeError, ValueError, TypeError) as e:  # another critic layout: actor side only
            self._note(f"critic attention unavailable ({type(e).__name__}: {e})")
            return None, None
        if not self.trace.critic_slot_labels:
            self.trace.critic_slot_labels = list(q1.encoder.token_names)  # the actor's tokens + "action"
        return _sac_token_attention(w[:, 0].cpu().numpy())

    def act(self, obs: dict[str, np.ndarray], explore: bool = False) -> np.ndarray:
        self._explain(obs)
        action = np.asarray(self.agent.act(obs, explore=explore), dtype=np.float64)
        self.trace.actions.append(action)
        return action

    def on_step(self, obs: Any, action: Any, reward: float, info: dict[str, Any]) -> None:
        tr = self.trace
        tr.episode.append(self.episode)
        tr.t.append(self.t)
        tr.rewards.append(float(reward))
        dist = info.get("distance_to_goal", info.get("distance", np.nan))
        tr.distances.append(float(dist) if dist is not None else float("nan"))
        tr.success.append(bool(info.get("is_success", False)))
        tr.collision.append(bool(info.get("is_collision", False)))
        tr.out_of_bounds.append(bool(info.get("is_out_of_bounds", False)))
        tr.done.append(False)
        self.t += 1
        self._frame(len(tr.rewards) - 1)


def _slot_labels(agent: Any, cfg: Any) -> list[str]:
    if agent.explains_history:
        K = int(cfg.seq_len)
        # SequenceHistory keeps the oldest frame first and the newest at index K-1
        return [f"t-{K - 1 - k}" if k < K - 1 else "t" for k in range(K)]
    actor = getattr(agent, "actor", None)
    names = list(getattr(getattr(actor, "encoder", None), "token_names", []))
    return names


def rollout(
    agent: Any,
    env: gym.Env,
    cfg: Any,
    episodes: int = 1,
    seed: int | None = None,
    max_steps: int | None = None,
    render: bool = True,
) -> RolloutTrace:
    """Play ``episodes`` deterministic episodes (seeds ``seed``, ``seed + 1``, ...) and record them.

    ``seed`` defaults to ``EVAL_SEED + cfg.seed``, the seeds the training loop evaluates on, so the
    visualised episodes are the evaluated ones. ``max_steps`` truncates long episodes (shorter videos).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if seed is None:
        seed = EVAL_SEED + int(cfg.seed)
    play_env = gym.wrappers.TimeLimit(env, int(max_steps)) if max_steps else env
    trace = RolloutTrace(
        algorithm=str(cfg.algorithm_name), env_name=str(cfg.env_name), slot_labels=_slot_labels(agent, cfg)
    )
    if agent.explains_history:
        trace.critic_slot_labels = list(trace.slot_labels)  # both streams attend over the same K slots
    rec = _Recorder(agent, env, trace, render)
    for i in range(episodes):
        rec.episode = i
        record = run_episode(rec, play_env, seed + i, explore=False, on_step=rec.on_step)
        record["seed"] = seed + i
        trace.records.append(record)
        if trace.done:
            trace.done[-1] = True
    return trace


def write_episodes_csv(trace: RolloutTrace, path: str | Path) -> Path:
    """Per-step ``episodes.csv``: episode, t, action_0..A-1, reward, distance, success, collision,
    out_of_bounds, done."""
    import csv

    path = Path(path)
    n_act = len(trace.actions[0]) if trace.actions else 0
    fields = ["episode", "t"] + [f"action_{i}" for i in range(n_act)]
    fields += ["reward", "distance", "success", "collision", "out_of_bounds", "done"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for j in range(trace.steps):
            w.writerow(
                [trace.episode[j], trace.t[j]]
                + [f"{float(a):.6g}" for a in trace.actions[j]]
                + [
                    f"{trace.rewards[j]:.6g}",
                    f"{trace.distances[j]:.6g}",
                    int(trace.success[j]),
                    int(trace.collision[j]),
                    int(trace.out_of_bounds[j]),
                    int(trace.done[j]),
                ]
            )
    return path
