"""What a hand-written controller scores on DroneNav-v0: the yardstick for the learning targets.

The controller turns toward the goal (proportional on ``rel_angle``), flies at full speed once the goal
is within ~17 deg of the nose (slowly while turning), and holds 2 m altitude; it does not look at the
depth image, so every obstacle on the straight line to the goal is a crash. Its success rate is what
"going to the goal" alone is worth on each level.

    python benchmarks/scripted_nav.py                       # levels empty easy medium hard, 200 episodes
    python benchmarks/scripted_nav.py --levels easy --episodes 500 --action_repeat 3
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import vmamba_rl.envs  # noqa: F401  (registration)
from vmamba_rl.envs.nav_task import BASE_KEYS
from vmamba_rl.envs.wrappers import ActionRepeat
from vmamba_rl.runtime import cpu_model

REL, ALT = BASE_KEYS.index("rel_angle"), BASE_KEYS.index("altitude")


def go_to_goal(base: np.ndarray, high: np.ndarray) -> np.ndarray:
    """base (10,) -> action [forward speed, z velocity (NED, + = down), yaw rate] in env units."""
    rel, alt = float(base[REL]), float(base[ALT])
    yaw_rate = np.clip(rel / 0.13, -1.0, 1.0) * high[2]  # full rate beyond 7.5 deg off the goal
    forward = high[0] if abs(rel) < 0.3 else 0.15 * high[0]
    z_velocity = np.clip(alt - 2.0, -high[1], high[1])  # above 2 m -> descend
    return np.array([forward, z_velocity, yaw_rate], np.float32)


def run_level(level: str, episodes: int, action_repeat: int, seed: int) -> dict[str, float]:
    env = gym.make("DroneNav-v0", level=level)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    high = env.action_space.high
    counts = {"success": 0, "collision": 0, "out_of_bounds": 0, "timeout": 0}
    steps = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        while True:
            obs, _, terminated, truncated, info = env.step(go_to_goal(obs["base"], high))
            if terminated or truncated:
                break
        for k in counts:
            counts[k] += bool(info[f"is_{k}"])
        steps.append(info["steps"])
    env.close()
    return {**{k: v / episodes for k, v in counts.items()}, "steps": float(np.mean(steps))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=["empty", "easy", "medium", "hard"])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--action_repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args()
    print(f"machine: {cpu_model()}")
    print(
        f"scripted go-to-goal controller, DroneNav-v0, {args.episodes} episodes per level (seeds "
        f"{args.seed}...), action repeat {args.action_repeat}\n"
    )
    head = ("level", "success", "collision", "out", "timeout", "sim steps", "s")
    print("{:<8} {:>8} {:>10} {:>6} {:>8} {:>10} {:>6}".format(*head))
    for level in args.levels:
        t = time.perf_counter()
        r = run_level(level, args.episodes, args.action_repeat, args.seed)
        print(
            f"{level:<8} {r['success']:>8.3f} {r['collision']:>10.3f} {r['out_of_bounds']:>6.3f} "
            f"{r['timeout']:>8.3f} {r['steps']:>10.1f} {time.perf_counter() - t:>6.1f}"
        )


if __name__ == "__main__":
    main()
