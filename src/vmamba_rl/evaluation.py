"""Deterministic evaluation: episodes -> success / collision / timeout rates, return, path length."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import gymnasium as gym
import numpy as np

METRIC_KEYS = (
    "success_rate",
    "collision_rate",
    "out_of_bounds_rate",
    "timeout_rate",
    "mean_return",
    "std_return",
    "mean_length",
    "mean_path_length",
    "mean_path_ratio",
)

# The training loop's periodic evaluations use episode seeds EVAL_SEED + run seed, +1, ... (training's
# own episode seeds come from the collector's generator). `vmamba-rl eval` starts at SCORE_SEED by
# default, so a checkpoint picked by the periodic evaluations is scored on other episodes.
EVAL_SEED = 10_000
SCORE_SEED = 20_000


def run_episode(
    agent: Any, env: gym.Env, seed: int | None, explore: bool = False, on_step: Any = None
) -> dict[str, Any]:
    """Roll out one episode; returns its :func:`vmamba_rl.collector.episode_record`.

    ``on_step(obs_seq, action, reward, info)`` is called after every step (used by visualisation).
    """
    from vmamba_rl.collector import episode_record

    obs, start_info = env.reset(seed=seed)
    agent.reset_episode()
    total, length = 0.0, 0
    while True:
        action = agent.act(obs, explore=explore)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        length += 1
        if on_step is not None:
            on_step(obs, action, reward, info)
        if terminated or truncated:
            return episode_record(total, length, info, start_info, bool(truncated and not terminated))


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """Aggregate episode records into the metric table (rates in [0, 1])."""
    if not records:
        return {k: float("nan") for k in METRIC_KEYS} | {"episodes": 0}
    rets = np.array([r["return"] for r in records], dtype=np.float64)
    succ = [r for r in records if r["success"]]
    ratios = [r["path_ratio"] for r in succ if np.isfinite(r["path_ratio"])]
    return {
        "episodes": len(records),
        "success_rate": float(np.mean([r["success"] for r in records])),
        "collision_rate": float(np.mean([r["collision"] for r in records])),
        "out_of_bounds_rate": float(np.mean([r["out_of_bounds"] for r in records])),
        "timeout_rate": float(np.mean([r["timeout"] for r in records])),
        "mean_return": float(rets.mean()),
        "std_return": float(rets.std()),
        "mean_length": float(np.mean([r["length"] for r in records])),
        "mean_path_length": float(np.nanmean([r["path_length"] for r in records]))
        if records
        else float("nan"),
        "mean_path_ratio": float(np.mean(ratios)) if ratios else float("nan"),
    }


def evaluate(agent: Any, env: gym.Env, episodes: int, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Run ``episodes`` deterministic episodes with seeds seed, seed+1, ...; summary plus splits.

    Splits by ``slot_type`` (parking: bay / parallel) and ``level`` when the environment reports them.
    """
    records = [run_episode(agent, env, seed + i, explore=False) for i in range(episodes)]
    out: dict[str, Any] = summarize(records)
    for key in ("slot_type", "level"):
        groups: dict[str, list] = defaultdict(list)
        for r in records:
            if key in r:
                groups[str(r[key])].append(r)
        if len(groups) > 1:
            out[f"by_{key}"] = {g: summarize(rs) for g, rs in sorted(groups.items())}
    out["records"] = records
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A small aligned text table of the summary metrics (and splits)."""
    lines = [f"{'metric':<18} {'value':>10}"]
    for k in ("episodes",) + METRIC_KEYS:
        v = summary.get(k, float("nan"))
        lines.append(f"{k:<18} {v:>10.3f}" if isinstance(v, float) else f"{k:<18} {v:>10}")
    for key in ("by_slot_type", "by_level"):
        for g, s in summary.get(key, {}).items():
            lines.append(
                f"{key[3:]}={g}: success {s['success_rate']:.3f}, collision {s['collision_rate']:.3f}, "
                f"episodes {s['episodes']}"
            )
    return "\n".join(lines)


def strict_json(obj: Any) -> str:
    """JSON with NaN / inf written as null (strict JSON that every parser reads)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)
