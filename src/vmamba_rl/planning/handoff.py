"""HOPE's hybrid policy for Parking-v0: near the slot, a collision-free Reeds-Shepp path takes over.

Written from the HOPE paper's description (arXiv 2405.20579, reference notes section 6), no HOPE code:
within ``max_dist`` (10 m) of the target pose, the Reeds-Shepp candidates are tried shortest first, up to
``length_factor`` (1.6) times the shortest, until one is collision-free; its actions are then executed
open-loop and, in training, stored in replay like the policy's own.

Each path becomes environment actions: steer at the limit (L: +0.75 rad, R: -0.75 rad) or straight, the
segment split into whole 0.5 s steps at the speed that covers it exactly (at most 2.5 m/s). The check
runs on the poses the environment's own integrator will visit (:meth:`ParkingEnv.simulate`, 10 sub-steps
per step), not on the ideal curve: explicit Euler drifts ~2 % of an arc's chord off the circle, so the
check is exact for what happens, and a path is accepted only if its simulated end covers more than 95 %
of the goal footprint (the success test).

With ``exit_tree`` (a deviation from HOPE, docs/deviations.md), when no candidate reaches the goal the
search goes on to the exits of :mod:`vmamba_rl.planning.exit_tree` (unparking manoeuvres found
backwards from the goal once per scene): nearest first by distance plus the exit's cost, up to
``exit_tries`` Reeds-Shepp candidates each (within the same 1.6x), the path to the exit followed by
the exit's moves into the slot, checked the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vmamba_rl.envs.parking import (
    MAX_SPEED,
    MAX_STEER,
    MIN_TURN_RADIUS,
    N_SUBSTEPS,
    SUBSTEP_DT,
    SUCCESS_COVERAGE,
    ParkingEnv,
)
from vmamba_rl.planning.exit_tree import ExitTree, build_exit_tree
from vmamba_rl.planning.reeds_shepp import RSPath, reeds_shepp_paths

STEP_SECONDS = N_SUBSTEPS * SUBSTEP_DT  # one environment step, 0.5 s
_STEER = {"L": MAX_STEER, "R": -MAX_STEER, "S": 0.0}


def path_actions(path: RSPath, max_speed: float = MAX_SPEED) -> np.ndarray:
    """Environment actions (n, 2) (steer rad, speed m/s) that drive ``path`` (drawn with the car's
    minimum turning radius) in whole steps of 0.5 s."""
    if not math.isclose(path.radius, MIN_TURN_RADIUS, rel_tol=1e-9):
        raise ValueError(
            f"path radius must be the car's turning radius {MIN_TURN_RADIUS:.4f} m; got {path.radius}"
        )
    rows: list[tuple[float, float]] = []
    for kind, length in zip(path.kinds, path.lengths, strict=True):
        if length == 0.0:
            continue
        n = max(1, math.ceil(abs(length) / (max_speed * STEP_SECONDS) - 1e-9))
        rows.extend([(_STEER[kind], length / (n * STEP_SECONDS))] * n)
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


@dataclass
class HandoffPlan:
    """A checked hand-off: the Reeds-Shepp path, the actions (n, 2), the simulated sub-step poses
    (n * 10, 3), how many candidates were tried, the search time [s] and the exit node the path leads to
    (-1: straight to the goal; else the actions go on with the exit's moves into the slot)."""

    path: RSPath
    actions: np.ndarray
    poses: np.ndarray
    tried: int
    seconds: float
    exit: int = -1


class ReedsSheppPlanner:
    """The hand-off search of HOPE's hybrid policy.

    Args:
        max_dist: only plan when the rear axle is within this many metres of the target (HOPE: 10).
        length_factor: stop trying candidates longer than this times the shortest (HOPE: 1.6).
        exit_tree: when no candidate reaches the goal, try paths to the slot's exits (not in HOPE).
        exit_tries: Reeds-Shepp candidates tried per exit.
    """

    def __init__(
        self, max_dist: float = 10.0, length_factor: float = 1.6, exit_tree: bool = False, exit_tries: int = 3
    ) -> None:
        if not (math.isfinite(max_dist) and max_dist > 0):
            raise ValueError(f"max_dist must be a finite number > 0 m; got {max_dist!r}")
        if not (math.isfinite(length_factor) and length_factor >= 1):
            raise ValueError(f"length_factor must be a finite number >= 1; got {length_factor!r}")
        if int(exit_tries) != exit_tries or exit_tries < 1:
            raise ValueError(f"exit_tries must be an integer >= 1; got {exit_tries!r}")
        self.max_dist = float(max_dist)
        self.length_factor = float(length_factor)
        self.exit_tree = bool(exit_tree)
        self.exit_tries = int(exit_tries)
        self._tree: ExitTree | None = None
        self._tree_scene: object | None = None

    def tree(self, env: ParkingEnv) -> ExitTree:
        """The exit tree of ``env``'s current scene (searched on first use, then kept for the scene)."""
        if self._tree is None or self._tree_scene is not env.scene:
            self._tree = build_exit_tree(env)
            self._tree_scene = env.scene
        return self._tree

    def plan(self, env: ParkingEnv, pose: np.ndarray | None = None) -> HandoffPlan | None:
        """The shortest candidate from ``pose`` (default: the car's) that is collision-free, stays in the
        map and ends on the goal, else (with ``exit_tree``) the first that does so through an exit; None
        when out of range or none qualifies."""
        t0 = time.perf_counter()
        pose = env.state if pose is None else np.asarray(pose, dtype=np.float64)
        target = env.scene.target
        if math.hypot(target[0] - pose[0], target[1] - pose[1]) > self.max_dist:
            return None
        tried = 0
        for path in self._candidates(pose, target):
            tried += 1
            actions = path_actions(path)
            if not len(actions):  # already on the target pose
                continue
            poses = env.simulate(actions, pose)
            if self._valid(env, poses):
                return HandoffPlan(path, actions, poses, tried, time.perf_counter() - t0)
        if not self.exit_tree:
            return None
        tree = self.tree(env)
        order = sorted(
            (int(i) for i in tree.exits),
            key=lambda i: math.hypot(*(tree.poses[i, :2] - pose[:2])) + tree.cost[i],
        )
        for node in order:
            tail = tree.actions_to_goal(node)
            for path in self._candidates(pose, tree.poses[node])[: self.exit_tries]:
                tried += 1
                actions = np.concatenate([path_actions(path), tail])
                poses = env.simulate(actions, pose)
                if self._valid(env, poses):
                    return HandoffPlan(path, actions, poses, tried, time.perf_counter() - t0, node)
        return None

    def _candidates(self, start: np.ndarray, goal: np.ndarray) -> list[RSPath]:
        """Reeds-Shepp paths start -> goal, shortest first, up to length_factor x the shortest."""
        paths = reeds_shepp_paths(start, goal, MIN_TURN_RADIUS)
        limit = self.length_factor * paths[0].length + 1e-9
        return [p for p in paths if p.length <= limit]

    @staticmethod
    def _valid(env: ParkingEnv, poses: np.ndarray) -> bool:
        """Free of obstacles and map exits at every sub-step, and ending parked."""
        return env.first_blocked(poses)[0] == len(poses) and env.coverage_at(poses[-1]) > SUCCESS_COVERAGE


class ReedsSheppHybrid(gym.Wrapper):
    """Parking-v0 with HOPE's hand-off: once a plan is found, its actions replace the agent's until the
    path ends (open loop), and ``info["executed_action"]`` says what was driven (the collector stores
    that in replay); ``info["rs_active"]`` marks planned steps.

    ``plan_seconds`` keeps each search's time (for the p95 in the benchmarks). The unwrapped
    environment's ``planned_path`` is set to the plan's poses, so ``render`` draws it.
    """

    def __init__(
        self, env: gym.Env, max_dist: float = 10.0, length_factor: float = 1.6, exit_tree: bool = False
    ) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, ParkingEnv):
            raise TypeError(f"the Reeds-Shepp hand-off needs Parking-v0; got {type(env.unwrapped).__name__}")
        self.planner = ReedsSheppPlanner(max_dist, length_factor, exit_tree=exit_tree)
        self._queue: list[np.ndarray] = []
        self.plan_seconds: list[float] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._queue = []
        obs, info = self.env.reset(**kwargs)
        info["rs_active"] = False
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        park: ParkingEnv = self.env.unwrapped
        if not self._queue:
            t0 = time.perf_counter()
            plan = self.planner.plan(park)
            if plan is not None or park._distance() <= self.planner.max_dist:
                self.plan_seconds.append(time.perf_counter() - t0)
            if plan is not None:
                self._queue = list(plan.actions.astype(np.float32))
                park.planned_path = plan.poses
        active = bool(self._queue)
        executed = self._queue.pop(0) if active else np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        if terminated or truncated:
            self._queue = []
        info["executed_action"] = np.asarray(executed, dtype=np.float32)
        info["rs_active"] = active
        return obs, reward, terminated, truncated, info
