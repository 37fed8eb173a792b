"""Parking-v0 step time per level, in total and per component (physics, lidar, image, mask, reward).

Usage:
    python benchmarks/env_parking.py [--steps 2000] [--levels easy normal complex extreme] [--json out.json]

Random actions (uniform over the action Box), reset whenever an episode ends; the numba kernels are
compiled (or loaded from cache) and warmed up before timing. "step" is ``ParkingEnv.step`` on the raw
environment; "gym.make step" adds Gymnasium's default wrappers (order enforcing, passive checker).
Components are timed one call each on the state reached after every step:
- physics: the 10 sub-step bicycle rollout plus the collision / map test of each sub-step pose;
- lidar: 120 beams against every obstacle edge (numba); "lidar numpy" is the vectorised numpy twin;
- image: the 3 x 64 x 64 car-aligned rasterisation;
- mask: 42 look-ahead rollouts x 10 poses, each tested against the obstacles;
- reward: coverage / IoU (convex clipping) and the target vector.
HOPE's own step costs 21-28 ms on this kind of 2-core CPU (reference notes, section 6); the target is
<= 2.5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numba
import numpy as np

import vmamba_rl  # noqa: F401  (registers Parking-v0)
from vmamba_rl.envs.geometry import ray_segment_distances
from vmamba_rl.envs.parking import (
    _CAR_LOCAL,
    CENTER_OFFSET,
    LEVELS,
    LIDAR_RANGE,
    N_SUBSTEPS,
    ParkingEnv,
    _first_blocked_nb,
    _rollout_nb,
)
from vmamba_rl.runtime import cpu_model

COMPONENTS = ("physics", "lidar", "lidar numpy", "image", "mask", "reward")


def machine_info() -> dict[str, str]:
    """CPU model, core count and library versions."""
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "logical_cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "gymnasium": gym.__version__,
        "platform": platform.platform(),
    }


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _physics(env: ParkingEnv, action: np.ndarray) -> None:
    x, y, yaw = env.state
    poses = _rollout_nb(x, y, yaw, float(action[0]), float(action[1]), N_SUBSTEPS)
    _first_blocked_nb(poses, _CAR_LOCAL, env._obstacles, env._obs_center, env._obs_radius, env._bounds)


def _lidar_numpy(env: ParkingEnv) -> np.ndarray:
    x, y, yaw = env.state
    centre = np.array([x + CENTER_OFFSET * np.cos(yaw), y + CENTER_OFFSET * np.sin(yaw)])
    hits = ray_segment_distances(
        centre, env._beam_angles + yaw, env._edge_starts, env._edge_ends, LIDAR_RANGE
    )
    return np.clip(hits - env._own_boundary, 0.0, LIDAR_RANGE).astype(np.float32)


def _reward_parts(env: ParkingEnv) -> None:
    env._coverage_iou()
    env._target()
    env._distance()


def bench_level(level: str, steps: int, seed: int = 0) -> dict[str, float]:
    """Mean milliseconds per call for the full step, reset and each component on ``level``."""
    env = ParkingEnv(level=level)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    for _ in range(50):  # warm-up: compile / load kernels, fill caches
        if any(env.step(env.action_space.sample())[2:4]):
            env.reset()
    t_step, t_reset = [], []
    comp: dict[str, list[float]] = {k: [] for k in COMPONENTS}
    episodes = 0
    for _ in range(steps):
        action = env.action_space.sample()
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        t_step.append(time.perf_counter() - t0)
        comp["physics"].append(_timed(_physics, env, env.action_space.sample()))
        comp["lidar"].append(_timed(env._lidar))
        comp["lidar numpy"].append(_timed(_lidar_numpy, env))
        comp["image"].append(_timed(env._image))
        comp["mask"].append(_timed(env._action_mask))
        comp["reward"].append(_timed(_reward_parts, env))
        if terminated or truncated:
            episodes += 1
            t0 = time.perf_counter()
            env.reset()
            t_reset.append(time.perf_counter() - t0)

    wrapped = gym.make("Parking-v0", level=level)
    wrapped.action_space.seed(seed)
    wrapped.reset(seed=seed)
    t_wrapped = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = wrapped.step(wrapped.action_space.sample())
        t_wrapped.append(time.perf_counter() - t0)
        if terminated or truncated:
            wrapped.reset()

    out = {
        "step": 1e3 * float(np.mean(t_step)),
        "step p50": 1e3 * float(np.median(t_step)),
        "step p99": 1e3 * float(np.percentile(t_step, 99)),
        "gym.make step": 1e3 * float(np.mean(t_wrapped)),
        "reset": 1e3 * float(np.mean(t_reset)) if t_reset else float("nan"),
        "episodes": float(episodes),
        "obstacles": float(len(env._obstacles)),
    }
    out.update({k: 1e3 * float(np.mean(v)) for k, v in comp.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per level")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    info = machine_info()
    results = {level: bench_level(level, args.steps) for level in args.levels}

    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"random actions, {args.steps} timed steps per level; milliseconds (mean unless stated)\n")
    cols = ["step", "step p50", "step p99", "gym.make step", "reset", *COMPONENTS]
    print("| level | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for level, r in results.items():
        print(f"| {level} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    print("\n'lidar numpy' is the vectorised numpy alternative, timed for comparison (not used by step).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "steps": args.steps, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
