"""Parking-v0: an embedded parking task that behaves like HOPE's (arXiv 2405.20579), drawn with numpy.

Written from the published facts only (reference notes section 6); no HOPE code is used.

The car is a 4.69 x 1.94 m box with a 2.8 m wheelbase whose origin is the rear-axle centre. An action
``(steer [rad], speed [m/s])`` in ``[-0.75, 0.75] x [-2.5, 2.5]`` is applied directly for one 0.5 s step,
integrated by a kinematic bicycle model at 0.05 s sub-steps, with a collision check at every sub-step.

Scenes are generated per level: a row of bay slots or a line of parallel slots along a curb, parked
cars and walls as obstacles (convex polygons), an aisle, and a rectangular map; ``easy`` (bay, start a
few metres in front of the slot and roughly aligned: for quick learning tests), ``normal``, ``complex``
(narrower slots and aisles, obstacles jutting into the aisle, any start heading) and ``extreme``
(parallel, slot 0.6-0.9 m longer than the car, 3.5 m aisle).

The goal ("slot" in the reward and success test) is the car's own footprint at the target pose: the
car succeeds when it covers more than 95 % of that footprint (intersection area / footprint area).
The physical slot (the space between the neighbours) is larger and only drawn by :meth:`render`.

Observations (``Dict``):
- ``lidar`` (120,) float32 m: beams every 3 deg counter-clockwise from the heading, cast from the car's
  centre to at most 10 m, minus the distance from the centre to the car's own boundary along the beam
  (so 0 means touching);
- ``target`` (5,) float32: ``(d, cos theta, sin theta, cos phi, sin phi)``, d = rear-axle distance to
  the target pose [m], theta = bearing of the target minus heading, phi = target heading minus heading
  (sin phi where HOPE's code repeats cos phi);
- ``img`` (3, 64, 64) uint8: top-down view centred on the car, heading up (row 0 ahead, column 0 on the
  car's left), 0.33 m per pixel; channels: obstacles and the area outside the map, target footprint,
  the car; 255 filled, 0 free;
- ``action_mask`` (42,) float32 in [0, 1]: for 21 steering angles evenly spaced over [-0.75, 0.75] rad,
  first driving forward (indices 0-20) then in reverse (21-41) at full speed, the fraction of the
  next step's 10 sub-step poses reached before the first collision or map exit. 1 means that action
  at full speed is safe for the whole next step. :attr:`ParkingEnv.mask_actions` maps index -> action.

Reward (HOPE's): ``0.1 * (-tanh(t / 2000) + 5 * (d_prev - d) / d_0 + 10 * (running max IoU increase))``
per step, with t the step count and d_0 the distance at reset (at least 1 m), plus a terminal term added
on the last step: +5 success, -5 collision or leaving the map, -0.1 timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numba import njit

from vmamba_rl.envs.geometry import (
    convex_intersection_area_nb,
    fill_convex_nb,
    oriented_rectangle,
    pad_polygons,
    polygon_edges,
    ray_cast_nb,
    sat_overlap_nb,
    transform_points,
)

# ----------------------------------------------------------------------------------------------------
# vehicle and sensors (HOPE's numbers)

CAR_LENGTH = 4.69  # m
CAR_WIDTH = 1.94  # m
WHEELBASE = 2.8  # m
REAR_OVERHANG = 0.5 * (CAR_LENGTH - WHEELBASE)  # m, rear bumper behind the rear axle (symmetric overhangs)
CENTER_OFFSET = 0.5 * CAR_LENGTH - REAR_OVERHANG  # m, geometric centre ahead of the rear axle
MAX_STEER = 0.75  # rad
MIN_TURN_RADIUS = WHEELBASE / float(np.tan(MAX_STEER))  # m, rear-axle circle at full steer (3.01 m)
MAX_SPEED = 2.5  # m/s
SUBSTEP_DT = 0.05  # s
N_SUBSTEPS = 10  # 0.5 s per env step
LIDAR_BEAMS = 120
LIDAR_RANGE = 10.0  # m
IMG_SIZE = 64  # pixels
IMG_RESOLUTION = 0.33  # m per pixel
N_STEER_BINS = 21
MAX_EPISODE_STEPS = 200
SUCCESS_COVERAGE = 0.95

LEVELS = ("easy", "normal", "complex", "extreme")
SLOT_TYPES = ("bay", "parallel")
# HOPE's scene schedule (reference notes section 8): the scenes, their success targets, the windows
SCHEDULED_SCENES = (("normal", "bay"), ("normal", "parallel"), ("complex", "bay"), ("complex", "parallel"),
                    ("extreme", "parallel"))  # fmt: skip
SCHEDULE_TARGETS = (0.95, 0.95, 0.95, 0.95, 0.90)
SCHEDULE_WARMUP = 200  # episodes that just take the least-used scene
SCHEDULE_USE_WINDOW = 200  # recent choices the "least used" half counts
SCHEDULE_SUCCESS_WINDOW = 250  # recent episodes per scene its success rate counts

# Car corners in the rear-axle frame, counter-clockwise (rear-right, front-right, front-left, rear-left).
_CAR_LOCAL = np.array(
    [
        [-REAR_OVERHANG, -0.5 * CAR_WIDTH],
        [CAR_LENGTH - REAR_OVERHANG, -0.5 * CAR_WIDTH],
        [CAR_LENGTH - REAR_OVERHANG, 0.5 * CAR_WIDTH],
        [-REAR_OVERHANG, 0.5 * CAR_WIDTH],
    ]
)
_CAR_RADIUS = float(np.hypot(0.5 * CAR_LENGTH, 0.5 * CAR_WIDTH))  # bounding circle about the centre
_CAR_AREA = CAR_LENGTH * CAR_WIDTH


def car_polygon(x: float, y: float, yaw: float) -> np.ndarray:
    """Footprint (4, 2) of the car whose rear-axle centre is at (x, y) m with heading ``yaw`` rad."""
    return transform_points(_CAR_LOCAL, x, y, yaw)


# ----------------------------------------------------------------------------------------------------
# compiled kernels: motion, collision, sensors


@njit(cache=True)
def _rollout_nb(x: float, y: float, yaw: float, steer: float, speed: float, n: int) -> np.ndarray:
    """Poses (n, 3) after each of n kinematic-bicycle sub-steps (explicit Euler at SUBSTEP_DT).

    Explicit Euler is equivariant under rigid motions, so a rollout from the origin, moved to the car's
    pose, is exactly the rollout from the car's pose: the action mask relies on this.
    """
    out = np.empty((n, 3))
    yaw_rate = speed * np.tan(steer) / WHEELBASE
    for k in range(n):
        x += speed * np.cos(yaw) * SUBSTEP_DT
        y += speed * np.sin(yaw) * SUBSTEP_DT
        yaw += yaw_rate * SUBSTEP_DT
        out[k, 0] = x
        out[k, 1] = y
        out[k, 2] = yaw
    return out


@njit(cache=True)
def _unroll_nb(x: float, y: float, yaw: float, steer: float, speed: float, n: int) -> np.ndarray:
    """Poses (n, 3) before the last n sub-steps that ended at (x, y, yaw), latest first: the exact inverse
    of :func:`_rollout_nb` (its step moves along the pre-step heading, so undo the yaw first).

    Row n - 1 is the pose the step started from; a planner that searches backwards from the goal uses
    this so that driving the found actions forwards ends on the goal to rounding error.
    """
    out = np.empty((n, 3))
    yaw_rate = speed * np.tan(steer) / WHEELBASE
    for k in range(n):
        yaw -= yaw_rate * SUBSTEP_DT
        x -= speed * np.cos(yaw) * SUBSTEP_DT
        y -= speed * np.sin(yaw) * SUBSTEP_DT
        out[k, 0] = x
        out[k, 1] = y
        out[k, 2] = yaw
    return out


@njit(cache=True)
def _simulate_nb(x: float, y: float, yaw: float, actions: np.ndarray) -> np.ndarray:
    """Sub-step poses (n * N_SUBSTEPS, 3) of driving actions (n, 2) one step each, as ``step`` does."""
    out = np.empty((actions.shape[0] * N_SUBSTEPS, 3))
    for i in range(actions.shape[0]):
        poses = _rollout_nb(x, y, yaw, actions[i, 0], actions[i, 1], N_SUBSTEPS)
        out[i * N_SUBSTEPS : (i + 1) * N_SUBSTEPS] = poses
        x, y, yaw = poses[-1, 0], poses[-1, 1], poses[-1, 2]
    return out


@njit(cache=True)
def _first_blocked_nb(
    poses: np.ndarray,
    car_local: np.ndarray,
    obstacles: np.ndarray,
    obs_center: np.ndarray,
    obs_radius: np.ndarray,
    bounds: np.ndarray,
) -> tuple[int, int]:
    """Index of the first pose in (K, 3) whose footprint hits an obstacle or leaves the map.

    Returns (index, reason): reason 0 = none blocked (index = K), 1 = obstacle, 2 = out of bounds.
    A bounding-circle test skips far obstacles before the exact separating-axis test.
    """
    corners = np.empty((4, 2))
    for k in range(poses.shape[0]):
        x = poses[k, 0]
        y = poses[k, 1]
        c = np.cos(poses[k, 2])
        s = np.sin(poses[k, 2])
        for i in range(4):
            lx = car_local[i, 0]
            ly = car_local[i, 1]
            corners[i, 0] = c * lx - s * ly + x
            corners[i, 1] = s * lx + c * ly + y
        cx = x + c * CENTER_OFFSET
        cy = y + s * CENTER_OFFSET
        for m in range(obstacles.shape[0]):
            dx = obs_center[m, 0] - cx
            dy = obs_center[m, 1] - cy
            reach = obs_radius[m] + _CAR_RADIUS
            if dx * dx + dy * dy > reach * reach:
                continue
            if sat_overlap_nb(corners, obstacles[m]):
                return k, 1
        for i in range(4):
            if (
                corners[i, 0] < bounds[0]
                or corners[i, 0] > bounds[1]
                or corners[i, 1] < bounds[2]
                or corners[i, 1] > bounds[3]
            ):
                return k, 2
    return poses.shape[0], 0


@njit(cache=True)
def _action_mask_nb(
    x: float,
    y: float,
    yaw: float,
    local_poses: np.ndarray,
    car_local: np.ndarray,
    obstacles: np.ndarray,
    obs_center: np.ndarray,
    obs_radius: np.ndarray,
    bounds: np.ndarray,
    out: np.ndarray,
) -> None:
    """Collision-free fraction of each look-ahead rollout (A, K, 3), given in the rear-axle frame.

    Writes (A,) fractions in [0, 1] into ``out``.
    """
    n_k = local_poses.shape[1]
    world = np.empty((n_k, 3))
    c = np.cos(yaw)
    s = np.sin(yaw)
    for a in range(local_poses.shape[0]):
        for k in range(n_k):
            lx = local_poses[a, k, 0]
            ly = local_poses[a, k, 1]
            world[k, 0] = x + c * lx - s * ly
            world[k, 1] = y + s * lx + c * ly
            world[k, 2] = yaw + local_poses[a, k, 2]
        idx, _ = _first_blocked_nb(world, car_local, obstacles, obs_center, obs_radius, bounds)
        out[a] = idx / n_k


@njit(cache=True)
def _world_to_image_nb(polys: np.ndarray, cx: float, cy: float, yaw: float, out: np.ndarray) -> None:
    """World polygons (M, P, 2) -> pixel coordinates (column, row) of the car-aligned image, into ``out``.

    The image is centred on the car's centre (cx, cy) with the heading pointing up (row 0 ahead) and
    the car's left at column 0. Doing this in the kernel avoids a dozen small numpy temporaries a step.
    """
    c = np.cos(yaw)
    s = np.sin(yaw)
    half = 0.5 * IMG_SIZE
    inv = 1.0 / IMG_RESOLUTION
    for m in range(polys.shape[0]):
        for k in range(polys.shape[1]):
            dx = polys[m, k, 0] - cx
            dy = polys[m, k, 1] - cy
            fwd = c * dx + s * dy
            left = -s * dx + c * dy
            out[m, k, 0] = half - left * inv
            out[m, k, 1] = half - fwd * inv


# ----------------------------------------------------------------------------------------------------
# scenes


@dataclass
class ParkingScene:
    """One parking problem.

    obstacles: (M, P, 2) convex polygons in world metres (parked cars, walls, boxes), padded by
    :func:`~vmamba_rl.envs.geometry.pad_polygons` when vertex counts differ.
    target: (3,) target pose (x, y, yaw) of the rear-axle centre; the goal footprint is
    ``car_polygon(*target)``.
    bounds: (4,) map rectangle (xmin, xmax, ymin, ymax); leaving it ends the episode.
    slot_type: "bay" or "parallel".
    slot: (4, 2) the physical slot between the neighbours (drawn by ``render`` only).
    """

    obstacles: np.ndarray
    target: np.ndarray
    bounds: np.ndarray
    slot_type: str
    slot: np.ndarray


def _parked_car(rng: np.random.Generator, cx: float, cy: float, yaw: float) -> np.ndarray:
    """A neighbour car of random size (4.2-4.9 x 1.75-2.0 m) centred at (cx, cy)."""
    return oriented_rectangle(cx, cy, yaw, rng.uniform(4.2, 4.9), rng.uniform(1.75, 2.0))


def _wall(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _keep_out(poly: np.ndarray, x_limit: float, side: int) -> np.ndarray:
    """Shift a polygon along x so that it stays on ``side`` (+1 / -1) of x = side * x_limit."""
    if side > 0:
        return poly + np.array([max(0.0, x_limit - poly[:, 0].min()), 0.0])
    return poly - np.array([max(0.0, poly[:, 0].max() + x_limit), 0.0])


def _aisle_boxes(rng: np.random.Generator, n: int, x_half: float, y_edge: float) -> list[np.ndarray]:
    """Small boxes (0.4-1.0 m) jutting up to 0.6 m into the aisle from its far edge at y = y_edge."""
    out = []
    for _ in range(n):
        size = rng.uniform(0.4, 1.0)
        out.append(
            oriented_rectangle(
                rng.uniform(-x_half + 1.0, x_half - 1.0),
                y_edge - rng.uniform(0.0, 0.6) + 0.5 * size,
                rng.uniform(-np.pi, np.pi),
                size,
                size,
            )
        )
    return out


def _bay_scene(rng: np.random.Generator, level: str) -> tuple[ParkingScene, float]:
    """A row of bay slots along y < 0 (curb line y = 0), the aisle 0 < y < aisle, a row or wall beyond.

    Returns the scene and the aisle width.
    """
    if level == "easy":
        ws, aisle, p_occ, jitter, yaw_jit = rng.uniform(2.8, 3.2), rng.uniform(7.0, 8.0), 0.5, 0.3, 0.03
    elif level == "normal":
        ws, aisle, p_occ, jitter, yaw_jit = rng.uniform(2.6, 3.0), rng.uniform(6.0, 7.5), 0.7, 0.5, 0.04
    else:  # complex
        ws, aisle, p_occ, jitter, yaw_jit = rng.uniform(2.35, 2.6), rng.uniform(5.0, 6.0), 0.9, 1.0, 0.06
    depth = 5.3  # bay depth, m
    n_side = 4
    x_half = (n_side + 0.5) * ws
    obstacles: list[np.ndarray] = []
    for row_y, p in ((-0.5 * depth, p_occ), (aisle + 0.5 * depth, p_occ - 0.1)):
        if level == "easy" and row_y > 0:
            continue  # easy: a plain wall across the aisle
        for k in range(-n_side, n_side + 1):
            if row_y < 0 and k == 0:
                continue  # the target slot
            adjacent = row_y < 0 and abs(k) == 1
            if rng.random() >= (1.0 if adjacent and level == "complex" else p):
                continue
            yaw = (np.pi / 2 if rng.random() < 0.5 else -np.pi / 2) + rng.uniform(-yaw_jit, yaw_jit)
            car = _parked_car(rng, k * ws, row_y + rng.uniform(-0.2, 0.2), yaw)
            # sideways jitter inside its own bay, towards the target slot allowed up to the bay line
            car = car + np.array([rng.uniform(-1.0, 1.0) * jitter * max(0.0, ws - 2.0) * 0.5, 0.0])
            if adjacent:
                car = _keep_out(car, 0.5 * ws, int(np.sign(k)))
            obstacles.append(car)
    obstacles.append(_wall(-x_half - 0.5, x_half + 0.5, -depth - 0.5, -depth))  # back wall
    far = aisle if level == "easy" else aisle + depth
    obstacles.append(_wall(-x_half - 0.5, x_half + 0.5, far, far + 0.5))
    if level == "complex":
        obstacles += _aisle_boxes(rng, int(rng.integers(1, 4)), x_half, aisle)
    heading = -np.pi / 2 if rng.random() < 0.5 else np.pi / 2  # nose in or reversed in
    centre = np.array([0.0, -0.5 * depth])
    target = np.array([*(centre - CENTER_OFFSET * np.array([np.cos(heading), np.sin(heading)])), heading])
    scene = ParkingScene(
        obstacles=pad_polygons(obstacles),
        target=target,
        bounds=np.array([-x_half, x_half, -depth - 0.5, far + 0.5]),
        slot_type="bay",
        slot=_wall(-0.5 * ws, 0.5 * ws, -depth, 0.0),
    )
    return scene, aisle


def _parallel_scene(rng: np.random.Generator, level: str) -> tuple[ParkingScene, float]:
    """A curb lane of parallel slots along -lane < y < 0, the aisle 0 < y < aisle, parked cars beyond."""
    if level == "extreme":
        slot_len, aisle, p_adj = CAR_LENGTH + rng.uniform(0.6, 0.9), 3.5, 1.0
    elif level == "complex":
        slot_len, aisle, p_adj = CAR_LENGTH + rng.uniform(0.9, 1.3), rng.uniform(4.0, 5.0), 1.0
    else:  # normal
        slot_len, aisle, p_adj = CAR_LENGTH + rng.uniform(1.2, 2.5), rng.uniform(4.5, 6.0), 0.8
    lane = rng.uniform(2.3, 2.6)
    x_half = 14.0
    obstacles: list[np.ndarray] = []
    # Near lane: cars chained outwards from both ends of the slot; far lane: a chain across the map.
    for side in (1, -1):
        cursor = 0.5 * slot_len
        first = True
        while cursor < x_half:
            if first and rng.random() >= p_adj:
                cursor += rng.uniform(2.0, 5.0)  # no neighbour on this side
            car = _parked_car(
                rng,
                0.0,
                -0.5 * lane + rng.uniform(-0.15, 0.1),
                rng.choice([0.0, np.pi]) + rng.uniform(-0.03, 0.03),
            )
            length = car[:, 0].max() - car[:, 0].min()
            car = car + np.array([side * (cursor + 0.5 * length), 0.0])
            if first:
                car = _keep_out(car, 0.5 * slot_len, side)
            obstacles.append(car)
            cursor += length + rng.uniform(0.6, 3.0)
            first = False
    cursor = -x_half + rng.uniform(0.0, 3.0)
    while cursor < x_half:
        if rng.random() < 0.8:
            car = _parked_car(rng, 0.0, aisle + 0.5 * lane, rng.choice([0.0, np.pi]))
            length = car[:, 0].max() - car[:, 0].min()
            obstacles.append(car + np.array([cursor + 0.5 * length, 0.0]))
            cursor += length
        cursor += rng.uniform(0.6, 3.0)
    obstacles.append(_wall(-x_half - 0.5, x_half + 0.5, -lane - 0.5, -lane))  # curb
    obstacles.append(_wall(-x_half - 0.5, x_half + 0.5, aisle + lane, aisle + lane + 0.5))
    if level == "complex":
        obstacles += _aisle_boxes(rng, int(rng.integers(1, 4)), x_half, aisle)
    heading = 0.0 if rng.random() < 0.5 else np.pi
    centre = np.array([0.0, -0.5 * lane])
    target = np.array([*(centre - CENTER_OFFSET * np.array([np.cos(heading), np.sin(heading)])), heading])
    scene = ParkingScene(
        obstacles=pad_polygons(obstacles),
        target=target,
        bounds=np.array([-x_half, x_half, -lane - 0.5, aisle + lane + 0.5]),
        slot_type="parallel",
        slot=_wall(-0.5 * slot_len, 0.5 * slot_len, -lane, 0.0),
    )
    return scene, aisle


def _pose_from_centre(cx: float, cy: float, yaw: float) -> np.ndarray:
    return np.array([cx - CENTER_OFFSET * np.cos(yaw), cy - CENTER_OFFSET * np.sin(yaw), yaw])


def _start_is_valid(pose: np.ndarray, scene: ParkingScene) -> bool:
    """Start poses keep 0.15 m from every obstacle and the map edge and are not already parked."""
    x, y, yaw = pose
    c, s = np.cos(yaw), np.sin(yaw)
    margin = 0.15
    inflated = oriented_rectangle(
        x + c * CENTER_OFFSET, y + s * CENTER_OFFSET, yaw, CAR_LENGTH + 2 * margin, CAR_WIDTH + 2 * margin
    )
    xmin, xmax, ymin, ymax = scene.bounds
    if inflated[:, 0].min() < xmin or inflated[:, 0].max() > xmax:
        return False
    if inflated[:, 1].min() < ymin or inflated[:, 1].max() > ymax:
        return False
    for obs in scene.obstacles:
        if sat_overlap_nb(inflated, obs):
            return False
    goal = car_polygon(*scene.target)
    return convex_intersection_area_nb(car_polygon(x, y, yaw), goal) / _CAR_AREA < 0.5


def _propose_start(
    rng: np.random.Generator, level: str, scene: ParkingScene, aisle: float, attempt: int
) -> np.ndarray:
    tx, ty, th = scene.target
    x_half = scene.bounds[1]
    if level == "easy":
        # In front of the slot on the aisle side, on the slot axis, facing along the target heading:
        # nose-in targets are approached forwards, reversed-in targets backwards.
        shrink = 1.0 if attempt < 50 else 0.0  # fall back to a perfectly aligned start
        out = 1.0 if np.sin(th) < 0 else -1.0  # +1: the car starts behind the target along its heading
        back = rng.uniform(3.5, 5.5)
        cx_t, cy_t = tx + CENTER_OFFSET * np.cos(th), ty + CENTER_OFFSET * np.sin(th)
        cx = cx_t + shrink * rng.uniform(-0.3, 0.3)
        cy = cy_t - out * back * np.sin(th)
        return _pose_from_centre(cx, cy, th + shrink * rng.uniform(-0.14, 0.14))
    y_lo, y_hi = 1.1, aisle - 1.1
    if level == "extreme":
        # Ahead of the slot in the target's heading direction, so the natural move is to reverse in.
        ahead = np.cos(th)
        cx = ahead * rng.uniform(0.5 * (scene.slot[1, 0] - scene.slot[0, 0]) + 1.5, 8.0)
        return _pose_from_centre(cx, rng.uniform(y_lo, y_hi), th + rng.uniform(-0.1, 0.1))
    cx = rng.uniform(-x_half + 3.0, x_half - 3.0)
    cy = rng.uniform(y_lo, y_hi)
    if level == "complex" and attempt < 100:
        yaw = rng.uniform(-np.pi, np.pi)
    else:
        along = th if scene.slot_type == "parallel" else (0.0 if rng.random() < 0.5 else np.pi)
        yaw = along + rng.uniform(-0.4, 0.4)
    return _pose_from_centre(cx, cy, yaw)


def generate_scene(
    level: str, rng: np.random.Generator, slot_type: str | None = None
) -> tuple[ParkingScene, np.ndarray]:
    """Random scene and start pose (3,) (rear-axle x, y [m], yaw [rad]) for ``level``.

    ``slot_type`` forces "bay" or "parallel" where the level offers both (normal, complex); easy is
    always bay and extreme always parallel.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    if slot_type is not None and slot_type not in SLOT_TYPES:
        raise ValueError(f"slot_type must be 'bay', 'parallel' or None; got {slot_type!r}")
    if level == "easy":
        kind = "bay"
    elif level == "extreme":
        kind = "parallel"
    else:
        kind = slot_type if slot_type is not None else ("bay" if rng.random() < 0.5 else "parallel")
    for _ in range(20):
        scene, aisle = _bay_scene(rng, level) if kind == "bay" else _parallel_scene(rng, level)
        for attempt in range(200):
            pose = _propose_start(rng, level, scene, aisle, attempt)
            if _start_is_valid(pose, scene):
                return scene, pose
    raise RuntimeError(f"could not place a start pose for level {level!r}")  # not reached in practice


# ----------------------------------------------------------------------------------------------------
# the environment


class ParkingEnv(gym.Env):
    """HOPE-like parking. See the module docstring for observations, actions and reward.

    Args:
        level: "easy", "normal", "complex" or "extreme"; also set by ``reset(options={"level": ...})``
            or :meth:`set_level` (both persist for later episodes).
        render_mode: None or "rgb_array" (a world-frame top-down picture, uint8 (H, W, 3)).
        collision_stops: False (default): a collision ends the episode with -5. True (HOPE's
            alternative): the car stops at its last collision-free sub-step pose, the step is penalised
            with -5 and ``is_collision`` is set, and the episode goes on.
        max_steps: truncation after this many steps (HOPE: 200).
        collision_penalty: subtracted on a colliding step (HOPE: 5). With ``collision_stops`` and 0 the
            environment acts as a safety layer: a blocked step just ends early, at no cost.
        slot_type: None (random where the level offers both), "bay" or "parallel"; also a reset option.
        scene_schedule: HOPE's scene scheduling over :data:`SCHEDULED_SCENES` (Normal / Complex bay and
            parallel, Extreme parallel) instead of ``level``: the first 200 episodes take the least-used
            scene; then half the time the least used of the last 200 choices, half the time a scene drawn
            in proportion to clip(target - its success over its last 250 episodes, 0.01, 1), targets
            :data:`SCHEDULE_TARGETS`. For training environments; a ``level`` reset option overrides it.

    The Reeds-Shepp hand-off (:class:`vmamba_rl.planning.handoff.ReedsSheppHybrid`) plans with
    :meth:`simulate`, :meth:`first_blocked` and :meth:`coverage_at` and sets :attr:`planned_path`.

    ``info``: is_success, is_collision, is_out_of_bounds, is_timeout, path_length [m], slot_type,
    level, coverage (car-goal intersection / goal area), iou, distance [m].
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(
        self,
        level: str = "normal",
        render_mode: str | None = None,
        collision_stops: bool = False,
        max_steps: int = MAX_EPISODE_STEPS,
        slot_type: str | None = None,
        collision_penalty: float = 5.0,
        scene_schedule: bool = False,
    ) -> None:
        super().__init__()
        self.scene_schedule = bool(scene_schedule)
        self._scene_uses = np.zeros(len(SCHEDULED_SCENES), dtype=np.int64)
        self._recent_scenes: list[int] = []
        self._scene_results: list[list[bool]] = [[] for _ in SCHEDULED_SCENES]
        self._scene: int | None = None
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}")
        self.set_level(level)
        if slot_type is not None and slot_type not in SLOT_TYPES:
            raise ValueError(f"slot_type must be 'bay', 'parallel' or None; got {slot_type!r}")
        self.slot_type = slot_type
        self.render_mode = render_mode
        self.collision_stops = bool(collision_stops)
        if not (np.isfinite(collision_penalty) and 0 <= collision_penalty <= 1e6):
            raise ValueError(
                f"collision_penalty must be a finite number in [0, 1e6]; got {collision_penalty!r}"
            )
        self.collision_penalty = float(collision_penalty)
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1; got {max_steps!r}")
        self.max_steps = int(max_steps)

        self.action_space = spaces.Box(
            low=np.array([-MAX_STEER, -MAX_SPEED], dtype=np.float32),
            high=np.array([MAX_STEER, MAX_SPEED], dtype=np.float32),
            dtype=np.float32,
        )
        self.observation_space = spaces.Dict(
            {
                "lidar": spaces.Box(0.0, LIDAR_RANGE, (LIDAR_BEAMS,), np.float32),
                "target": spaces.Box(
                    low=np.array([0.0, -1.0, -1.0, -1.0, -1.0], dtype=np.float32),
                    high=np.array([100.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32),
                    dtype=np.float32,
                ),
                "img": spaces.Box(0, 255, (3, IMG_SIZE, IMG_SIZE), np.uint8),
                "action_mask": spaces.Box(0.0, 1.0, (2 * N_STEER_BINS,), np.float32),
            }
        )

        steers = np.linspace(-MAX_STEER, MAX_STEER, N_STEER_BINS)
        #: (42, 2) the (steer, speed) action behind each action_mask entry: forward bins, then reverse.
        self.mask_actions = np.concatenate(
            [
                np.stack([steers, np.full_like(steers, MAX_SPEED)], 1),
                np.stack([steers, -np.full_like(steers, MAX_SPEED)], 1),
            ]
        ).astype(np.float32)
        # Look-ahead rollouts from the origin (42, 10, 3), moved to the car's pose at every step.
        self._mask_local = np.stack(
            [_rollout_nb(0.0, 0.0, 0.0, float(a), float(v), N_SUBSTEPS) for a, v in self.mask_actions]
        )

        beam = np.arange(LIDAR_BEAMS) * (2 * np.pi / LIDAR_BEAMS)
        self._beam_angles = beam
        c, s = np.abs(np.cos(beam)), np.abs(np.sin(beam))
        with np.errstate(divide="ignore"):
            # distance from the car's centre to its own boundary along each beam
            self._own_boundary = np.minimum(
                np.where(c > 1e-12, 0.5 * CAR_LENGTH / np.maximum(c, 1e-12), np.inf),
                np.where(s > 1e-12, 0.5 * CAR_WIDTH / np.maximum(s, 1e-12), np.inf),
            )
        self._lidar_buf = np.empty(LIDAR_BEAMS)
        self._mask_buf = np.empty(2 * N_STEER_BINS)

        # The car sits at the image centre in its own frame: its channel never changes.
        self._car_channel = np.zeros((IMG_SIZE, IMG_SIZE), dtype=np.uint8)
        car_px = self._to_pixels(oriented_rectangle(0.0, 0.0, 0.0, CAR_LENGTH, CAR_WIDTH)[None])
        fill_convex_nb(self._car_channel, car_px, 255)

        self.scene: ParkingScene | None = None
        #: poses (K, 3) of a planned path that render() draws (set by a planner; cleared at reset)
        self.planned_path: np.ndarray | None = None
        self._done = False
        self.state = np.zeros(3)

    # ---------------------------------------------------------------- configuration

    def set_level(self, level: str) -> None:
        """Use ``level`` for the following resets ("easy", "normal", "complex", "extreme")."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
        self.level = level

    def _next_scene(self) -> int:
        """Index into SCHEDULED_SCENES of the next episode's scene (HOPE's schedule), recorded as used."""
        rng = self.np_random
        if self._scene_uses.sum() < SCHEDULE_WARMUP or rng.random() < 0.5:
            uses = (
                self._scene_uses
                if self._scene_uses.sum() < SCHEDULE_WARMUP
                else np.bincount(self._recent_scenes, minlength=len(SCHEDULED_SCENES))
            )
            choice = int(rng.choice(np.flatnonzero(uses == uses.min())))
        else:
            rates = np.array([np.mean(r) if r else 0.0 for r in self._scene_results])
            w = np.clip(np.array(SCHEDULE_TARGETS) - rates, 0.01, 1.0)
            choice = int(rng.choice(len(w), p=w / w.sum()))
        self._scene_uses[choice] += 1
        self._recent_scenes.append(choice)
        del self._recent_scenes[:-SCHEDULE_USE_WINDOW]
        return choice

    def load_scene(self, scene: ParkingScene, start: np.ndarray) -> dict[str, np.ndarray]:
        """Use a given scene and start pose (x, y, yaw) instead of a generated one; restarts the episode.

        For tests, planners and hand-made lots. Returns the first observation.
        """
        obstacles = np.ascontiguousarray(scene.obstacles, dtype=np.float64)
        if obstacles.ndim != 3 or obstacles.shape[-1] != 2:
            raise ValueError(f"scene.obstacles must be (M, P, 2); got {obstacles.shape}")
        self.scene = scene
        self._obstacles = obstacles
        if len(obstacles):
            self._obs_center = 0.5 * (obstacles.min(axis=1) + obstacles.max(axis=1))
            self._obs_radius = np.linalg.norm(obstacles - self._obs_center[:, None], axis=-1).max(axis=1)
        else:
            self._obs_center = np.zeros((0, 2))
            self._obs_radius = np.zeros(0)
        self._edge_starts, self._edge_ends = (
            polygon_edges(obstacles) if len(obstacles) else (np.zeros((0, 2)),) * 2
        )
        self._bounds = np.asarray(scene.bounds, dtype=np.float64)
        self._goal = car_polygon(*scene.target)
        # Image obstacles: the real ones plus four wide strips covering everything outside the map.
        xmin, xmax, ymin, ymax = self._bounds
        big = 40.0
        outside = np.stack(
            [
                _wall(xmin - big, xmax + big, ymin - big, ymin),
                _wall(xmin - big, xmax + big, ymax, ymax + big),
                _wall(xmin - big, xmin, ymin, ymax),
                _wall(xmax, xmax + big, ymin, ymax),
            ]
        )
        self._img_polys = pad_polygons(list(obstacles) + list(outside))
        self._img_px = np.empty_like(self._img_polys)  # pixel-coordinate buffers reused every step
        self._goal_px = np.empty((1, 4, 2))
        self.state = np.asarray(start, dtype=np.float64).copy()
        self.planned_path = None
        self._t = 0
        self._done = False
        self._path_length = 0.0
        return self._restart_progress()

    def set_state(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        """Move the car to pose (x, y, yaw) keeping the scene and step count; returns the observation.

        The progress baselines (previous distance, initial distance, running max IoU) restart from the
        new pose, and an ended episode continues from it. Meant for tests and scripted set-ups.
        """
        if self.scene is None:
            raise RuntimeError("call reset() before set_state()")
        self.state = np.asarray(pose, dtype=np.float64).copy()
        self._done = False
        return self._restart_progress()

    def _restart_progress(self) -> dict[str, np.ndarray]:
        self._d_prev = self._distance()
        self._d0 = max(self._d_prev, 1.0)  # guard: progress is normalised by the initial distance
        _, self._iou_max = self._coverage_iou()
        return self._observe()

    # ---------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode. options: ``level`` (persists), ``slot_type`` ("bay" / "parallel" / None)."""
        super().reset(seed=seed)
        options = options or {}
        slot_type = options.get("slot_type", self.slot_type)
        self._scene = None
        if "level" in options:
            self.set_level(options["level"])
        elif self.scene_schedule:
            self._scene = self._next_scene()
            self.level, slot_type = SCHEDULED_SCENES[self._scene]
        scene, start = generate_scene(self.level, self.np_random, slot_type)
        obs = self.load_scene(scene, start)
        return obs, self._info(False, False, False, False)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Drive ``action`` = (steer [rad], speed [m/s]) for 0.5 s.

        Returns (obs, reward, terminated, truncated, info).
        """
        if self.scene is None or self._done:
            raise RuntimeError("call reset() before step() (the episode is over or never started)")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite numbers (steer rad, speed m/s); got {action!r}")
        steer = float(np.clip(a[0], -MAX_STEER, MAX_STEER))
        speed = float(np.clip(a[1], -MAX_SPEED, MAX_SPEED))
        collided, out = self._advance(steer, speed)
        self._t += 1

        coverage, iou = self._coverage_iou()
        d = self._distance()
        reward = 0.1 * (
            -np.tanh(self._t / 2000.0)
            + 5.0 * (self._d_prev - d) / self._d0
            + 10.0 * max(0.0, iou - self._iou_max)
        )
        self._d_prev = d
        self._iou_max = max(self._iou_max, iou)

        success = False
        terminated = False
        if collided:
            reward -= self.collision_penalty
            terminated = not self.collision_stops
        elif out:
            reward -= 5.0
            terminated = True
        elif coverage > SUCCESS_COVERAGE:
            reward += 5.0
            success = terminated = True
        timeout = not terminated and self._t >= self.max_steps
        if timeout:
            reward -= 0.1
        info = self._info(success, collided, out, timeout, coverage, iou, d)
        self._done = terminated or timeout
        if self._done and self._scene is not None:
            results = self._scene_results[self._scene]
            results.append(success)
            del results[:-SCHEDULE_SUCCESS_WINDOW]
        return self._observe(), float(reward), terminated, timeout, info

    def first_blocked(self, poses: np.ndarray) -> tuple[int, str]:
        """First pose in (K, 3) (rear-axle x, y [m], yaw [rad]) that hits an obstacle or leaves the map.

        Returns (index, reason) with reason "collision" or "out_of_bounds", or (K, "") when the whole
        path is free. For planners that check a path (e.g. a Reeds-Shepp curve) before executing it.
        """
        p = np.ascontiguousarray(poses, dtype=np.float64).reshape(-1, 3)
        idx, reason = _first_blocked_nb(
            p, _CAR_LOCAL, self._obstacles, self._obs_center, self._obs_radius, self._bounds
        )
        return int(idx), ("", "collision", "out_of_bounds")[reason]

    def simulate(self, actions: np.ndarray, pose: np.ndarray | None = None) -> np.ndarray:
        """Sub-step poses (n * 10, 3) that driving ``actions`` (n, 2) from ``pose`` (default: the car's)
        would visit, with this environment's own integrator; the state is not changed."""
        x, y, yaw = self.state if pose is None else np.asarray(pose, dtype=np.float64)
        acts = np.ascontiguousarray(actions, dtype=np.float64).reshape(-1, 2)
        return _simulate_nb(float(x), float(y), float(yaw), acts)

    def simulate_back(self, action: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Sub-step poses (10, 3) from which one step of ``action`` (steer, speed) ends at ``pose``, in
        driving order: row 0 is where the step starts, and ``simulate(action, row 0)`` visits rows 1-9
        and then ``pose``. For searches backwards from the goal; the state is not changed."""
        steer, speed = (float(v) for v in np.asarray(action, dtype=np.float64).reshape(2))
        x, y, yaw = (float(v) for v in np.asarray(pose, dtype=np.float64).reshape(3))
        return _unroll_nb(x, y, yaw, steer, speed, N_SUBSTEPS)[::-1].copy()

    def coverage_at(self, pose: np.ndarray) -> float:
        """Fraction of the goal footprint the car would cover at ``pose`` (x, y, yaw)."""
        return convex_intersection_area_nb(car_polygon(*pose), self._goal) / _CAR_AREA

    def _advance(self, steer: float, speed: float) -> tuple[bool, bool]:
        """Integrate one step; stop at the last free sub-step pose on contact. Returns (collided, out)."""
        x, y, yaw = self.state
        poses = _rollout_nb(x, y, yaw, steer, speed, N_SUBSTEPS)
        idx, reason = _first_blocked_nb(
            poses, _CAR_LOCAL, self._obstacles, self._obs_center, self._obs_radius, self._bounds
        )
        if idx > 0:
            self.state = poses[idx - 1].copy()
            self.state[2] = (self.state[2] + np.pi) % (2 * np.pi) - np.pi
        self._path_length += abs(speed) * SUBSTEP_DT * idx
        return reason == 1, reason == 2

    # ---------------------------------------------------------------- observation parts

    def _distance(self) -> float:
        return float(np.hypot(self.scene.target[0] - self.state[0], self.scene.target[1] - self.state[1]))

    def _coverage_iou(self) -> tuple[float, float]:
        """(intersection / goal area, intersection over union) of the car and the goal footprint."""
        inter = convex_intersection_area_nb(car_polygon(*self.state), self._goal)
        return inter / _CAR_AREA, inter / (2.0 * _CAR_AREA - inter)

    def _target(self) -> np.ndarray:
        x, y, yaw = self.state
        tx, ty, tyaw = self.scene.target
        theta = np.arctan2(ty - y, tx - x) - yaw
        phi = tyaw - yaw
        d = min(np.hypot(tx - x, ty - y), 100.0)
        return np.array([d, np.cos(theta), np.sin(theta), np.cos(phi), np.sin(phi)], dtype=np.float32)

    def _lidar(self) -> np.ndarray:
        x, y, yaw = self.state
        cx, cy = x + CENTER_OFFSET * np.cos(yaw), y + CENTER_OFFSET * np.sin(yaw)
        ang = self._beam_angles + yaw
        ray_cast_nb(
            cx, cy, np.cos(ang), np.sin(ang), self._edge_starts, self._edge_ends, LIDAR_RANGE, self._lidar_buf
        )
        return np.clip(self._lidar_buf - self._own_boundary, 0.0, LIDAR_RANGE).astype(np.float32)

    def _to_pixels(self, local: np.ndarray) -> np.ndarray:
        """Car-centre frame (forward, left) [m] -> pixel coordinates (column, row), heading up."""
        half = 0.5 * IMG_SIZE
        return np.stack(
            [half - local[..., 1] / IMG_RESOLUTION, half - local[..., 0] / IMG_RESOLUTION], axis=-1
        )

    def _image(self) -> np.ndarray:
        x, y, yaw = self.state
        cx, cy = x + CENTER_OFFSET * np.cos(yaw), y + CENTER_OFFSET * np.sin(yaw)
        img = np.zeros((3, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
        _world_to_image_nb(self._img_polys, cx, cy, yaw, self._img_px)
        fill_convex_nb(img[0], self._img_px, 255)
        _world_to_image_nb(self._goal[None], cx, cy, yaw, self._goal_px)
        fill_convex_nb(img[1], self._goal_px, 255)
        img[2] = self._car_channel
        return img

    def _action_mask(self) -> np.ndarray:
        x, y, yaw = self.state
        _action_mask_nb(
            x,
            y,
            yaw,
            self._mask_local,
            _CAR_LOCAL,
            self._obstacles,
            self._obs_center,
            self._obs_radius,
            self._bounds,
            self._mask_buf,
        )
        return self._mask_buf.astype(np.float32)

    def _observe(self) -> dict[str, np.ndarray]:
        self._last_obs = {
            "lidar": self._lidar(),
            "target": self._target(),
            "img": self._image(),
            "action_mask": self._action_mask(),
        }
        return self._last_obs

    def _info(
        self,
        success: bool,
        collision: bool,
        out: bool,
        timeout: bool,
        coverage: float | None = None,
        iou: float | None = None,
        distance: float | None = None,
    ) -> dict[str, Any]:
        if coverage is None or iou is None:
            coverage, iou = self._coverage_iou()
        return {
            "is_success": success,
            "is_collision": collision,
            "is_out_of_bounds": out,
            "is_timeout": timeout,
            "path_length": self._path_length,
            "slot_type": self.scene.slot_type,
            "level": self.level,
            "coverage": coverage,
            "iou": iou,
            "distance": self._distance() if distance is None else distance,
        }

    # ---------------------------------------------------------------- rendering

    def render(self) -> np.ndarray | None:
        """World-frame top-down picture, uint8 (H, W, 3): obstacles grey, physical slot pale green, goal
        footprint green, car blue (front thirds darker), lidar rays red, and under the map a bar per
        action-mask entry (forward green, reverse orange; height = value)."""
        if self.render_mode != "rgb_array" or self.scene is None:
            return None
        xmin, xmax, ymin, ymax = self._bounds
        width = 480
        scale = width / (xmax - xmin)
        height = int(np.ceil((ymax - ymin) * scale))
        panel = 60

        def px(points: np.ndarray) -> np.ndarray:
            p = np.asarray(points, dtype=np.float64)
            return np.ascontiguousarray(
                np.stack([(p[..., 0] - xmin) * scale, (ymax - p[..., 1]) * scale], -1)
            )

        def fill(polys: np.ndarray, colour: tuple[int, int, int]) -> None:
            m = np.zeros((height, width), dtype=np.uint8)
            fill_convex_nb(m, px(polys if polys.ndim == 3 else polys[None]), 1)
            canvas[:height][m.astype(bool)] = colour

        canvas = np.full((height + panel, width, 3), 235, dtype=np.uint8)
        canvas[height:] = 255
        fill(self.scene.slot, (205, 235, 205))
        fill(self._goal, (110, 190, 110))
        if len(self._obstacles):
            fill(self._obstacles, (90, 90, 90))
        # the front third of a footprint, darker, shows which way it faces
        nose = _CAR_LOCAL.copy()
        nose[[0, 3], 0] = CAR_LENGTH - REAR_OVERHANG - 1.5
        fill(transform_points(nose, *self.scene.target), (60, 140, 60))
        x, y, yaw = self.state
        fill(car_polygon(x, y, yaw), (40, 90, 220))
        fill(transform_points(nose, x, y, yaw), (20, 40, 140))
        # lidar rays as dotted lines from the car's boundary to the hit (or the range end)
        cx, cy = x + CENTER_OFFSET * np.cos(yaw), y + CENTER_OFFSET * np.sin(yaw)
        own = self._own_boundary[:, None]
        dist = own + self._last_obs["lidar"].astype(np.float64)[:, None] * np.linspace(0.0, 1.0, 40)[None, :]
        ang = (self._beam_angles + yaw)[:, None]
        pts = np.stack([cx + np.cos(ang) * dist, cy + np.sin(ang) * dist], -1)
        pp = px(pts.reshape(-1, 2)).astype(int)
        ok = (pp[:, 0] >= 0) & (pp[:, 0] < width) & (pp[:, 1] >= 0) & (pp[:, 1] < height)
        canvas[pp[ok, 1], pp[ok, 0]] = (220, 60, 60)
        if self.planned_path is not None and len(self.planned_path):
            # the Reeds-Shepp hand-off's path (rear-axle track), 3 px wide, magenta
            pp = px(self.planned_path[:, :2]).astype(int)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    q = pp + (dx, dy)
                    ok = (q[:, 0] >= 0) & (q[:, 0] < width) & (q[:, 1] >= 0) & (q[:, 1] < height)
                    canvas[q[ok, 1], q[ok, 0]] = (200, 40, 200)
        # action-mask summary
        mask = self._last_obs["action_mask"]
        bar_w = width // len(mask)
        for i, v in enumerate(mask):
            h = int(round(float(v) * (panel - 10)))
            colour = (60, 160, 60) if i < N_STEER_BINS else (230, 140, 40)
            if h > 0:
                canvas[height + panel - 5 - h : height + panel - 5, i * bar_w + 1 : (i + 1) * bar_w - 1] = (
                    colour
                )
        return canvas
