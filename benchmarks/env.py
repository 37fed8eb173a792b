"""Environment speed: single-process steps/s with random actions, and ms per depth frame.

    python benchmarks/env.py                 # every case
    python benchmarks/env.py --steps 2000 --only DroneNav

Each row of the table is a :class:`Case`; add one to ``CASES`` (e.g. the parking environment) and it is
measured the same way. Steps/s include the resets that random actions cause, and the Gymnasium wrappers
``gymnasium.make`` adds (what a training loop pays). Compilation happens before timing starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

import vmamba_rl  # noqa: F401  (registers the environments)
from vmamba_rl.runtime import cpu_model


@dataclass
class Case:
    """One benchmark row: how to build the env, and optionally how to time one depth frame of it."""

    name: str
    make: Callable[[], gym.Env]
    # Given a reset env, returns {label: zero-argument callable that renders one frame}.
    frame_timers: Callable[[gym.Env], dict[str, Callable[[], object]]] | None = None


def _drone_frame_timers(env: gym.Env) -> dict[str, Callable[[], object]]:
    from vmamba_rl.envs.raycast import render_depth

    u = env.unwrapped
    pos, yaw = u.position, u.yaw
    return {
        backend: (lambda b=backend: render_depth(u.scene, u.camera, pos, yaw, backend=b))
        for backend in ("numba", "numpy")
    }


def drone_cases() -> list[Case]:
    cases = []
    for size in (64, 128):
        for level in ("empty", "easy", "medium", "hard"):
            cases.append(
                Case(
                    f"DroneNav-v0 {level} {size}x{size}",
                    lambda lv=level, s=size: gym.make("DroneNav-v0", level=lv, image_height=s, image_width=s),
                    _drone_frame_timers,
                )
            )
    return cases


CASES: list[Case] = drone_cases()


def steps_per_second(env: gym.Env, steps: int, seed: int = 0) -> tuple[float, int]:
    """Random-action steps per second (resets included) and the number of episodes finished."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    for a in actions[:50]:  # warm-up: JIT compilation, caches
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    env.reset(seed=seed)
    episodes = 0
    start = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
            episodes += 1
    return steps / (time.perf_counter() - start), episodes


def ms_per_call(fn: Callable[[], object], min_time: float = 0.3) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def machine_info() -> str:
    import numba

    cpu = cpu_model()

    return (
        f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}, gymnasium {gym.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per case")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    args = parser.parse_args()

    print(f"machine: {machine_info()}")
    print(f"single process, random actions, {args.steps} steps per case (resets included)\n")
    header = f"{'case':<32} {'steps/s':>9} {'episodes':>9} {'ms/frame numba':>15} {'ms/frame numpy':>15}"
    print(header)
    print("-" * len(header))
    for case in CASES:
        if args.only not in case.name:
            continue
        env = case.make()
        sps, episodes = steps_per_second(env, args.steps)
        frames = {}
        if case.frame_timers is not None:
            env.reset(seed=1)
            frames = {k: ms_per_call(fn) for k, fn in case.frame_timers(env).items()}
        cols = [f"{frames[k]:>15.3f}" if k in frames else f"{'-':>15}" for k in ("numba", "numpy")]
        print(f"{case.name:<32} {sps:>9.0f} {episodes:>9d} {' '.join(cols)}")
        env.close()


if __name__ == "__main__":
    main()
