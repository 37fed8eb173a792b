"""Exits of a parking slot: a backward search from the goal pose for the manoeuvres that leave the slot.

A deviation from HOPE (docs/deviations.md). HOPE's hand-off needs one Reeds-Shepp path from the car to
the goal, and a Reeds-Shepp path has at most two cusps, while a parallel slot 0.6-0.9 m longer than the
car (Extreme) needs several back-and-forth moves. So, once per scene, the search runs backwards from the
goal, as if unparking: best first over one-step moves (steer at the left limit, straight or at the right
limit; forward or reverse; a full 1.25 m step and a 0.5 m one when the full step is free, else the
longest free fraction of it in 1/20ths), each undone with the environment's exact inverse integrator
(:meth:`ParkingEnv.simulate_back`) and collision-checked at every sub-step. The first ``n_exits`` poses
whose footprint is clear of the slot's mouth are the exits. Driving an exit's actions forwards from the
exit ends on the goal to rounding error, so the hand-off only has to reach an exit with one
Reeds-Shepp path.

Priority = cost so far (metres driven + 1 per change of direction + 0.2 per step) + 5 x the depth [m]
the footprint still reaches behind the mouth line (with 0.1 m to spare). Poses are merged on a 0.03 m /
0.25 deg grid: coarser grids merge the small wiggles that Extreme slots need (at 0.1 m / 2 deg a
third of the Extreme scenes found no exit).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

import numpy as np

from vmamba_rl.envs.parking import MAX_SPEED, MAX_STEER, N_SUBSTEPS, SUBSTEP_DT, ParkingEnv, car_polygon

_STEERS = (-MAX_STEER, 0.0, MAX_STEER)
_FRACTIONS = 20  # a blocked full step is shortened in 1/20ths (6 cm)
_MOUTH_MARGIN = 0.1  # m the footprint must clear the slot's mouth by
_GEAR_COST = 1.0  # cost of a change of direction, in metres
_STEP_COST = 0.2  # cost per step, in metres (prefers fewer, longer moves)
_DEPTH_WEIGHT = 5.0  # heuristic weight on the depth still inside the slot
_GRID_XY = 0.03  # m, poses closer than this (and _GRID_YAW) are merged
_YAW_BINS = 1440
_GRID_YAW = 2 * math.pi / _YAW_BINS  # 0.25 deg


@dataclass
class ExitTree:
    """The search result. Node 0 is the goal.

    poses: (N, 3) node poses; parent: (N,) index of the next node towards the goal (-1 for the goal);
    actions: (N, 2) the step (steer rad, speed m/s) that drives from the node to its parent;
    cost: (N,) the node's cost to the goal; exits: (E,) indices of the exit nodes, cheapest first;
    expanded: nodes expanded; seconds: search time.
    """

    poses: np.ndarray
    parent: np.ndarray
    actions: np.ndarray
    cost: np.ndarray
    exits: np.ndarray
    expanded: int
    seconds: float

    def actions_to_goal(self, node: int) -> np.ndarray:
        """Actions (n, 2) that drive from ``node``'s pose to the goal."""
        out = []
        while self.parent[node] >= 0:
            out.append(self.actions[node])
            node = int(self.parent[node])
        return np.array(out, dtype=np.float64).reshape(-1, 2)


def _depth(pose: np.ndarray, mouth_y: float) -> float:
    """How far [m] the footprint at ``pose`` still reaches behind the mouth line (<= 0: out)."""
    return mouth_y + _MOUTH_MARGIN - float(car_polygon(*pose)[:, 1].min())


def _moves(env: ParkingEnv, pose: np.ndarray) -> list[tuple[float, float, np.ndarray]]:
    """Free one-step moves into ``pose``: (steer, speed, start pose (3,))."""
    out = []
    for steer in _STEERS:
        for sign in (1.0, -1.0):
            full = env.simulate_back((steer, sign * MAX_SPEED), pose)
            free = env.first_blocked(full[::-1])[0]  # sub-step poses free, counted back from ``pose``
            if free == N_SUBSTEPS:
                out.append((steer, sign * MAX_SPEED, full[0]))
                short = env.simulate_back((steer, sign * 0.4 * MAX_SPEED), pose)
                if env.first_blocked(short)[0] == N_SUBSTEPS:
                    out.append((steer, sign * 0.4 * MAX_SPEED, short[0]))
                continue
            # the longest free fraction of the blocked step (a fraction's poses are not a prefix of the
            # full step's, so each is checked on its own)
            for k in range(max(1, free * _FRACTIONS // N_SUBSTEPS), 0, -1):
                speed = sign * MAX_SPEED * k / _FRACTIONS
                poses = env.simulate_back((steer, speed), pose)
                if env.first_blocked(poses)[0] == N_SUBSTEPS:
                    out.append((steer, speed, poses[0]))
                    break
    return out


def build_exit_tree(env: ParkingEnv, n_exits: int = 16, max_expand: int = 20_000) -> ExitTree:
    """Search backwards from ``env``'s goal pose until ``n_exits`` exits are found or ``max_expand``
    nodes were expanded. Slots open towards +y (the scene layout of :mod:`vmamba_rl.envs.parking`)."""
    t0 = time.perf_counter()
    goal = np.asarray(env.scene.target, dtype=np.float64)
    mouth_y = float(env.scene.slot[:, 1].max())
    poses, parent, actions, cost = [goal], [-1], [(0.0, 0.0)], [0.0]
    heap: list[tuple[float, int]] = [(0.0, 0)]
    seen: set[tuple[int, int, int]] = set()
    exits: list[int] = []
    expanded = 0
    while heap and expanded < max_expand and len(exits) < n_exits:
        _, i = heapq.heappop(heap)
        x, y, yaw = poses[i]
        key = (round(x / _GRID_XY), round(y / _GRID_XY), round(yaw % (2 * math.pi) / _GRID_YAW) % _YAW_BINS)
        if key in seen:
            continue
        seen.add(key)
        expanded += 1
        if i and _depth(poses[i], mouth_y) <= 0:
            exits.append(i)
            continue
        after = actions[i][1]  # the move that follows this node when driving to the goal
        for steer, speed, start in _moves(env, poses[i]):
            gear = _GEAR_COST if after != 0 and (after > 0) != (speed > 0) else 0.0
            c = cost[i] + abs(speed) * N_SUBSTEPS * SUBSTEP_DT + gear + _STEP_COST  # metres driven
            poses.append(start.copy())
            parent.append(i)
            actions.append((steer, speed))
            cost.append(c)
            heapq.heappush(heap, (c + _DEPTH_WEIGHT * max(0.0, _depth(start, mouth_y)), len(poses) - 1))
    return ExitTree(
        poses=np.array(poses),
        parent=np.array(parent, dtype=np.int64),
        actions=np.array(actions, dtype=np.float64),
        cost=np.array(cost),
        exits=np.array(exits, dtype=np.int64),
        expanded=expanded,
        seconds=time.perf_counter() - t0,
    )
