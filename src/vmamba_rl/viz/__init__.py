"""Seeing what the agent does: attention maps, feature evolution, rollout videos and learning curves.

Python API (``pip install -e ".[viz]"`` for matplotlib and imageio)::

    from vmamba_rl.viz import visualize, plot_runs
    files = visualize("runs/my-run/checkpoint.pt", "viz_out", episodes=2)  # {"attention_png": Path, ...}
    data = plot_runs(["runs/seed0", "runs/seed1"], "curves.png")         # the curves' data, per config

The CLI equivalents are ``vmamba-rl visualize`` and ``vmamba-rl plot``. Everything renders with the
Agg backend: no window opens, on a headless machine or anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vmamba_rl.viz.figures import VIZ_HINT, plot_runs, require_matplotlib

if TYPE_CHECKING:
    from vmamba_rl.viz.rollout import RolloutTrace

__all__ = ["VIZ_HINT", "cmd_plot", "cmd_visualize", "plot_runs", "visualize"]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def visualize(
    checkpoint: str,
    out_dir: str,
    episodes: int = 1,
    *,
    fps: float = 8.0,
    size: tuple[int, int] = (640, 480),
    max_steps: int | None = None,
    seed: int | None = None,
    video: bool = True,
    feature_mode: str = "first",
    n_dims: int = 8,
    device: str = "cpu",
    verbose: bool = False,
    rs_hybrid: bool | None = None,
    rs_exit_tree: bool | None = None,
    level: str | None = None,
) -> dict[str, Path]:
    """Roll out a checkpoint deterministically and write its figures, arrays and video to ``out_dir``.

    Args:
        checkpoint: ``checkpoint.pt`` or the run folder holding it.
        episodes: episodes to play (seeds ``seed``, ``seed + 1``, ...; default seed: the training
            loop's evaluation seeds, ``EVAL_SEED + config seed``).
        fps, size: video frame rate and frame size (width, height) in pixels.
        max_steps: truncate each episode after this many decisions (shorter videos).
        video: False skips rendering (faster; no GIF / MP4 / frame PNG).
        feature_mode: ``"first"`` (the first ``n_dims`` feature dimensions) or ``"pca"``.
        rs_hybrid: Parking-v0 with (True) or without (False) the Reeds-Shepp hand-off, None as trained;
            the video draws a planned path in magenta; rs_exit_tree: its exits on / off (None as trained).
        level: the environment level to play (None: the run's ``--level``).

    Returns the written files by kind: ``attention_png``, ``attention_heads_png``, ``attention_npy``
    ((T, K) actor weights, rows sum to 1), ``attention_npz`` (actor / critic, per head),
    ``features_png``, ``features_npz``, ``episodes_csv``, ``gif``, ``mp4`` (when ffmpeg is available),
    ``frame_png`` (the last video frame) and ``summary_json`` (episode records and notes, e.g. why a
    figure was skipped).
    """
    from vmamba_rl.viz.rollout import load_agent, rollout, write_episodes_csv

    require_matplotlib()
    if video:
        from vmamba_rl.viz.video import require_imageio

        require_imageio()  # fail before the rollout, not after it
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agent, env, cfg = load_agent(
        checkpoint,
        device=device,
        render_mode="rgb_array" if video else None,
        rs_hybrid=rs_hybrid,
        rs_exit_tree=rs_exit_tree,
        level=level,
    )
    try:
        trace = rollout(agent, env, cfg, episodes=episodes, seed=seed, max_steps=max_steps, render=video)
    finally:
        env.close()
    files: dict[str, Path] = {"episodes_csv": write_episodes_csv(trace, out / "episodes.csv")}
    episode = np.asarray(trace.episode)

    files.update(_write_attention(trace, out, episode, agent.explains_history))
    files.update(_write_features(trace, out, episode, n_dims, feature_mode))
    if video and trace.frames:
        from vmamba_rl.viz.video import compose_frames, require_imageio, write_video

        frames = compose_frames(trace, size)
        files.update(write_video(frames, out, fps=fps))
        require_imageio().imwrite(out / "rollout_frame.png", frames[-1])
        files["frame_png"] = out / "rollout_frame.png"

    summary = {
        "checkpoint": str(checkpoint),
        "algorithm": trace.algorithm,
        "env_name": trace.env_name,
        "steps": trace.steps,
        "episodes": trace.records,
        "notes": trace.notes,
        "files": {k: str(v) for k, v in files.items()},
    }
    from vmamba_rl.evaluation import strict_json

    (out / "summary.json").write_text(strict_json(_jsonable(summary)))
    files["summary_json"] = out / "summary.json"
    if verbose:
        for note in trace.notes:
            print(f"note: {note}")
    return files


def _write_attention(
    trace: RolloutTrace, out: Path, episode: np.ndarray, explains_history: bool
) -> dict[str, Path]:
    """attention.npy ((T, K) actor weights), attention.npz (actor / critic, per head) and their figures;
    a note in ``trace.notes`` when the agent recorded none."""
    from vmamba_rl.viz import figures

    files: dict[str, Path] = {}
    actor, critic = trace.stacked("attention"), trace.stacked("critic_attention")
    if actor is None:
        if not any("attention.png skipped" in n for n in trace.notes):
            trace.notes.append("no attention weights recorded; attention.png skipped")
        return files
    np.save(out / "attention.npy", actor)
    files["attention_npy"] = out / "attention.npy"
    arrays = {"actor": actor, "episode": episode, "labels": np.asarray(trace.slot_labels)}
    panels = [("actor", actor, trace.slot_labels)]
    head_panels = []
    actor_heads = trace.stacked("attention_heads")
    if actor_heads is not None:
        arrays["actor_heads"] = actor_heads
        head_panels.append(("actor", actor_heads, trace.slot_labels))
    if critic is not None:
        arrays["critic"] = critic
        arrays["critic_labels"] = np.asarray(trace.critic_slot_labels)
        panels.append(("critic", critic, trace.critic_slot_labels))
        critic_heads = trace.stacked("critic_attention_heads")
        if critic_heads is not None:
            arrays["critic_heads"] = critic_heads
            head_panels.append(("critic", critic_heads, trace.critic_slot_labels))
    np.savez_compressed(out / "attention.npz", **arrays)
    files["attention_npz"] = out / "attention.npz"
    title = (
        "Cross-attention of the last step over the K history slots"
        if explains_history
        else "Fusion attention over modality tokens (last layer, mean over queries)"
    )
    files["attention_png"] = figures.plot_attention(panels, out / "attention.png", episode, title)
    if head_panels:
        files["attention_heads_png"] = figures.plot_attention_heads(head_panels, out / "attention_heads.png")
    return files


def _write_features(
    trace: RolloutTrace, out: Path, episode: np.ndarray, n_dims: int, feature_mode: str
) -> dict[str, Path]:
    """features.npz (visual / state / context features per step) and the feature-evolution figure."""
    from vmamba_rl.viz import figures

    feats = trace.feature_arrays()
    if not (feats and trace.steps):
        return {}
    np.savez_compressed(out / "features.npz", episode=episode, **feats)
    png = figures.plot_features(
        {k: feats[k] for k in ("visual", "state", "context") if k in feats},
        out / "features.png",
        episode,
        np.asarray(trace.success),
        np.asarray(trace.collision),
        np.asarray(trace.distances),
        np.asarray(trace.out_of_bounds),
        n_dims=n_dims,
        mode=feature_mode,
    )
    return {"features_npz": out / "features.npz", "features_png": png}


# --- CLI commands (``vmamba-rl visualize`` / ``vmamba-rl plot``; the parsers live in vmamba_rl.cli) -----


def cmd_visualize(ns: Any) -> int:
    """``vmamba-rl visualize``: exit status 0, or 2 with a message for a bad checkpoint / missing extra."""
    import sys

    import gymnasium as gym

    from vmamba_rl.checkpoint import CheckpointError
    from vmamba_rl.config import ConfigError
    from vmamba_rl.viz.rollout import resolve_checkpoint

    out = Path(ns.out) if ns.out else resolve_checkpoint(ns.checkpoint).parent / "viz"
    try:
        files = visualize(
            ns.checkpoint,
            str(out),
            episodes=ns.episodes,
            fps=ns.fps,
            size=tuple(ns.size),
            max_steps=ns.max_steps,
            seed=ns.seed,
            verbose=True,
            rs_hybrid=ns.rs_hybrid,
            rs_exit_tree=ns.rs_exit_tree,
            level=ns.level,
        )
    except (ImportError, CheckpointError, ConfigError, ValueError, gym.error.Error) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for kind, path in files.items():
        print(f"{kind:<20} {path}")
    return 0


def cmd_plot(ns: Any) -> int:
    """``vmamba-rl plot``: learning curves of the run folders into ``--out``; prints the groups."""
    import sys

    try:
        data = plot_runs(ns.run_dirs, ns.out)
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for label, g in data["groups"].items():
        last = f"success {g['success_rate_mean'][-1]:.2f}, return {g['return_mean'][-1]:.1f}"
        print(f"{label}: {g['n_runs']} run(s), {len(g['steps'])} points, final {last}")
    print(f"wrote {data['figure']}")
    return 0
