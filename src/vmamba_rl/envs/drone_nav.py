"""DroneNav-v0: an embedded depth-camera drone navigation task that behaves like the AirSim one.

The observation, action, reward and termination rules live in :mod:`vmamba_rl.envs.nav_task` (shared
with the AirSim adapter); this module is the simulator: a walled square arena with random vertical
cylinders and boxes, a drone whose body is a sphere with a first-order velocity response, and the
analytic depth camera of :mod:`vmamba_rl.envs.raycast`.

Levels (``level=`` at construction, ``env.unwrapped.set_level(...)`` or ``reset(options={"level": ...})``
for curriculum training), as the original curriculum; several levels (``"easy,medium,hard"`` or a list)
make each reset draw one of them uniformly, so a training run can cover them all:

========  ==============  =========
level     arena side (m)  obstacles
========  ==============  =========
empty     27-30           0
easy      27-30           8-11
medium    40-55           15-21
hard      55-65           25-34
========  ==============  =========

Keyword overrides: any field of :class:`~vmamba_rl.envs.nav_task.NavTaskConfig` (e.g. ``image_height``,
``depth_noise``, ``max_steps``) or of :class:`DroneWorldConfig` (e.g. ``drone_radius``) may be passed to
``gymnasium.make("DroneNav-v0", ...)`` directly.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import gymnasium as gym
import numba
import numpy as np

from vmamba_rl.envs import nav_task
from vmamba_rl.envs.nav_task import NavTaskConfig
from vmamba_rl.envs.raycast import PinholeCamera, Scene, render_depth


@dataclass(frozen=True)
class LevelSpec:
    """Arena side length range (m) and obstacle count range (inclusive) of one curriculum level."""

    arena_size: tuple[float, float]
    num_obstacles: tuple[int, int]


LEVELS: dict[str, LevelSpec] = {
    "empty": LevelSpec((27.0, 30.0), (0, 0)),
    "easy": LevelSpec((27.0, 30.0), (8, 11)),
    "medium": LevelSpec((40.0, 55.0), (15, 21)),
    "hard": LevelSpec((55.0, 65.0), (25, 34)),
}


def _has_matplotlib() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # an entry of None in sys.modules: imports of it are blocked
        return False


_HAS_MATPLOTLIB = _has_matplotlib()


@dataclass
class DroneWorldConfig:
    """The embedded simulator's own settings (metres, seconds); the task rules are in NavTaskConfig."""

    drone_radius: float = 0.3  # collision sphere around the camera
    velocity_time_constant: float = 0.25  # first-order lag of forward / vertical speed (0 = instant)
    yaw_rate_time_constant: float = 0.1  # first-order lag of the yaw rate (0 = instant)
    max_substep_distance: float = 0.1  # collision checks at most this far apart (< radius: no tunnelling)
    min_substeps: int = 5  # integration substeps per action at least
    ceiling: float = 5.0  # altitude of the ceiling (above max_altitude, so "too high" ends first)
    cylinder_fraction: float = 0.5  # share of obstacles that are cylinders (the rest are boxes)
    cylinder_radius: tuple[float, float] = (0.3, 1.5)
    box_half_size: tuple[float, float] = (0.15, 2.0)  # each half side drawn independently: thin walls too
    obstacle_top: tuple[float, float] = (3.0, 5.0)  # obstacles stand on the floor; some can be overflown
    start_clearance: float = 3.0  # obstacle surfaces stay this far from the start point
    goal_clearance: float = 1.0  # ... and this far from the goal point
    grid_cell: float = 0.5  # reachability check resolution
    max_generation_attempts: int = 100
    random_start_yaw: bool = False  # the original started facing north (yaw 0)
    gravity: float = 9.81  # only for the quasi-static pitch / roll estimate
    render_backend: str = "numba"  # "numba" or "numpy" (see benchmarks/env.py)
    map_size: int = 256  # pixels of the top-down map in render()
    # Wall-clock seconds every step waits, to stand in for a real simulator's rate (AirSim answers
    # tens of times a second) in collection benchmarks; 0 = as fast as the CPU allows.
    step_latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.drone_radius <= 0:
            raise ValueError(f"drone_radius must be > 0, got {self.drone_radius}")
        if not 0 < self.max_substep_distance <= self.drone_radius:
            raise ValueError(
                f"max_substep_distance must be in (0, drone_radius={self.drone_radius}] to rule out "
                f"tunnelling, got {self.max_substep_distance}"
            )
        if not (0 <= self.step_latency_s < 60):
            raise ValueError(f"step_latency_s must be in [0, 60) seconds, got {self.step_latency_s}")
        if self.velocity_time_constant < 0 or self.yaw_rate_time_constant < 0:
            raise ValueError("time constants must be >= 0")
        if self.render_backend not in ("numba", "numpy"):
            raise ValueError(f"render_backend must be 'numba' or 'numpy', got {self.render_backend!r}")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


# ------------------------------------------------------------------------------------- compiled kernels


@numba.njit(cache=True)
def _sphere_hits(x, y, alt, radius, cyl, box, arena_half, ceiling):
    """True if a sphere at (x, y, alt) touches the floor, ceiling, a wall or an obstacle."""
    if alt < radius or alt > ceiling - radius:
        return True
    if abs(x) > arena_half - radius or abs(y) > arena_half - radius:
        return True
    r2 = radius * radius
    for k in range(cyl.shape[0]):
        dr = max(math.hypot(x - cyl[k, 0], y - cyl[k, 1]) - cyl[k, 2], 0.0)
        dz = max(cyl[k, 3] - alt, alt - cyl[k, 4], 0.0)
        if dr * dr + dz * dz < r2:
            return True
    for k in range(box.shape[0]):
        cs = math.cos(box[k, 4])
        sn = math.sin(box[k, 4])
        ox = (x - box[k, 0]) * cs + (y - box[k, 1]) * sn
        oy = -(x - box[k, 0]) * sn + (y - box[k, 1]) * cs
        ex = max(abs(ox) - box[k, 2], 0.0)
        ey = max(abs(oy) - box[k, 3], 0.0)
        ez = max(box[k, 5] - alt, alt - box[k, 6], 0.0)
        if ex * ex + ey * ey + ez * ez < r2:
            return True
    return False


@numba.njit(cache=True)
def _simulate(state, cmd, duration, n_sub, tau_v, tau_w, radius, cyl, box, arena_half, ceiling):
    """Advance ``state`` in place over one action; returns (collided, path length in m).

    state (7,): [x, y, altitude, yaw, forward_speed, z_velocity (NED), yaw_rate]; cmd (3,) the clipped
    action. Velocities follow v += (1 - exp(-dt / tau)) (cmd - v) per substep (exact first-order lag for a
    held command); the position is checked after every substep, and on contact the drone stays at the
    last free position with zero velocity.
    """
    dt = duration / n_sub
    av = 1.0 - math.exp(-dt / tau_v) if tau_v > 0 else 1.0
    aw = 1.0 - math.exp(-dt / tau_w) if tau_w > 0 else 1.0
    path = 0.0
    for _ in range(n_sub):
        state[4] += av * (cmd[0] - state[4])
        state[5] += av * (cmd[1] - state[5])
        state[6] += aw * (cmd[2] - state[6])
        yaw = state[3] + state[6] * dt
        nx = state[0] + state[4] * math.cos(yaw) * dt
        ny = state[1] + state[4] * math.sin(yaw) * dt
        nz = state[2] - state[5] * dt  # NED z velocity: + = down
        if _sphere_hits(nx, ny, nz, radius, cyl, box, arena_half, ceiling):
            state[4] = 0.0
            state[5] = 0.0
            state[6] = 0.0
            return True, path
        path += math.sqrt((nx - state[0]) ** 2 + (ny - state[1]) ** 2 + (nz - state[2]) ** 2)
        state[0] = nx
        state[1] = ny
        state[2] = nz
        state[3] = yaw
    return False, path


@numba.njit(cache=True)
def _reachable(cyl, box, arena_half, clearance, cell, start_x, start_y, goal_x, goal_y):
    """4-connected BFS on a grid of cell centres at least ``clearance`` from every footprint and wall.

    With clearance = drone radius + cell / 2 every segment between two free neighbours is collision-free
    for the body, so "reachable" here implies reachable in the continuous world (at altitudes below the
    obstacle tops; overflying is ignored, which is conservative).
    """
    n = int(math.ceil(2.0 * arena_half / cell))
    free = np.ones((n, n), dtype=np.bool_)
    # Walls: cells whose centre is closer than the clearance to the boundary.
    for i in range(n):
        c = -arena_half + (i + 0.5) * cell
        if arena_half - abs(c) < clearance:
            free[i, :] = False
            free[:, i] = False
    c2 = clearance * clearance
    # Stamp each obstacle over the cells of its bounding square only (the grid is ~130 x 130 on "hard").
    for k in range(cyl.shape[0] + box.shape[0]):
        is_cyl = k < cyl.shape[0]
        if is_cyl:
            cx, cy, reach = cyl[k, 0], cyl[k, 1], cyl[k, 2] + clearance
            cs = sn = hx = hy = 0.0
        else:
            q = k - cyl.shape[0]
            cx, cy, hx, hy = box[q, 0], box[q, 1], box[q, 2], box[q, 3]
            cs = math.cos(box[q, 4])
            sn = math.sin(box[q, 4])
            reach = math.hypot(hx, hy) + clearance
        i0 = max(int((cx - reach + arena_half) / cell) - 1, 0)
        i1 = min(int((cx + reach + arena_half) / cell) + 1, n - 1)
        j0 = max(int((cy - reach + arena_half) / cell) - 1, 0)
        j1 = min(int((cy + reach + arena_half) / cell) + 1, n - 1)
        for i in range(i0, i1 + 1):
            x = -arena_half + (i + 0.5) * cell
            for j in range(j0, j1 + 1):
                y = -arena_half + (j + 0.5) * cell
                if is_cyl:
                    blocked = math.hypot(x - cx, y - cy) - cyl[k, 2] < clearance
                else:
                    ox = (x - cx) * cs + (y - cy) * sn
                    oy = -(x - cx) * sn + (y - cy) * cs
                    ex = max(abs(ox) - hx, 0.0)
                    ey = max(abs(oy) - hy, 0.0)
                    blocked = ex * ex + ey * ey < c2
                if blocked:
                    free[i, j] = False
    si = min(max(int((start_x + arena_half) / cell), 0), n - 1)
    sj = min(max(int((start_y + arena_half) / cell), 0), n - 1)
    gi = min(max(int((goal_x + arena_half) / cell), 0), n - 1)
    gj = min(max(int((goal_y + arena_half) / cell), 0), n - 1)
    if not free[si, sj] or not free[gi, gj]:
        return False
    seen = np.zeros((n, n), dtype=np.bool_)
    queue = np.empty(n * n, dtype=np.int64)
    head = 0
    tail = 1
    queue[0] = si * n + sj
    seen[si, sj] = True
    while head < tail:
        q = queue[head]
        head += 1
        i = q // n
        j = q % n
        if i == gi and j == gj:
            return True
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            a = i + di
            b = j + dj
            if 0 <= a < n and 0 <= b < n and free[a, b] and not seen[a, b]:
                seen[a, b] = True
                queue[tail] = a * n + b
                tail += 1
    return False


def footprint_distance(point_xy: np.ndarray, cylinders: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Horizontal distance (m) from a point to each footprint, cylinders first then boxes; < 0 inside.

    Returns (Nc + Nb,) float64 (box distances are 0 anywhere inside, not negative).
    """
    px, py = float(point_xy[0]), float(point_xy[1])
    d_cyl = np.hypot(px - cylinders[:, 0], py - cylinders[:, 1]) - cylinders[:, 2]
    cs, sn = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    ox = (px - boxes[:, 0]) * cs + (py - boxes[:, 1]) * sn
    oy = -(px - boxes[:, 0]) * sn + (py - boxes[:, 1]) * cs
    d_box = np.hypot(np.maximum(np.abs(ox) - boxes[:, 2], 0), np.maximum(np.abs(oy) - boxes[:, 3], 0))
    return np.concatenate([d_cyl, d_box])


# ---------------------------------------------------------------------------------------- environment


class DroneNavEnv(gym.Env):
    """Embedded depth-camera drone navigation (DroneNav-v0). See the module docstring for levels.

    Observation: Dict ``depth`` uint8 (1, H, W) (perspective depth, 0 = near, 255 = ``max_depth`` or
    beyond) and ``base`` float32 (10,) (layout :data:`~vmamba_rl.envs.nav_task.BASE_KEYS`).
    Action: Box (3,) ``[forward_speed 0..2 m/s, z_velocity -0.5..0.5 m/s (NED, + = down), yaw_rate
    -pi/12..pi/12 rad/s]``, held ``step_duration`` = 0.5 s; out-of-range values are clipped.
    Episode: terminated on success, collision or altitude > ``max_altitude``; truncated after
    ``max_steps`` = 200 steps (no TimeLimit wrapper needed).
    ``info``: ``is_success``, ``is_collision``, ``is_out_of_bounds`` (too high), ``is_timeout``,
    ``distance_to_goal`` (m, horizontal), ``path_length`` (m, 3D, this episode), ``initial_distance`` (m),
    ``level`` (of this episode).

    ``reset(options=...)`` keys: ``level``; and for scripted scenes ``arena_size`` (m), ``goal`` (x, y),
    ``cylinders`` (N, 5), ``boxes`` (N, 7) (layouts in :mod:`~vmamba_rl.envs.raycast`), ``start_yaw``
    (rad). Giving ``cylinders`` or ``boxes`` replaces the random obstacles (no clearance checks).
    """

    # "human" shows the frame with matplotlib, so it is offered only where matplotlib is installed
    metadata = {"render_modes": ["rgb_array", *(["human"] if _HAS_MATPLOTLIB else [])], "render_fps": 2}

    def __init__(
        self,
        level: str = "easy",
        render_mode: str | None = None,
        task: NavTaskConfig | None = None,
        world: DroneWorldConfig | None = None,
        **overrides: Any,
    ) -> None:
        task = task if task is not None else NavTaskConfig()
        world = world if world is not None else DroneWorldConfig()
        task_keys = {k: v for k, v in overrides.items() if k in NavTaskConfig.field_names()}
        world_keys = {k: v for k, v in overrides.items() if k in DroneWorldConfig.field_names()}
        unknown = set(overrides) - set(task_keys) - set(world_keys)
        if unknown:
            valid = sorted(NavTaskConfig.field_names() | DroneWorldConfig.field_names())
            raise TypeError(f"unknown DroneNavEnv option(s) {sorted(unknown)}; valid: {', '.join(valid)}")
        self.task = replace(task, **task_keys) if task_keys else task
        self.world = replace(world, **world_keys) if world_keys else world
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.set_level(level)

        self.observation_space = nav_task.make_observation_space(self.task)
        self.action_space = nav_task.make_action_space(self.task)
        self.camera = PinholeCamera(
            self.task.image_height, self.task.image_width, self.task.camera_hfov_deg, self.task.max_depth
        )
        max_travel = self.task.step_duration * math.hypot(
            max(self.task.max_forward_speed, abs(self.task.min_forward_speed)), self.task.max_z_velocity
        )
        self._n_substeps = max(
            self.world.min_substeps, math.ceil(max_travel / self.world.max_substep_distance)
        )
        self._depth_buf = np.empty((self.task.image_height, self.task.image_width), np.float32)
        self._base_low, self._base_high = nav_task.base_bounds(self.task)

        # Episode state (filled by reset).
        self.scene = Scene(arena_half=15.0, ceiling=self.world.ceiling)
        self.arena_size = 30.0
        self.goal = np.zeros(2)
        self._state = np.zeros(7)  # [x, y, alt, yaw, forward_speed, z_velocity, yaw_rate]
        self._episode = nav_task.NavEpisode(self.task, self.goal, self._state[:3])
        self._started = False
        self._accel = 0.0
        self._trajectory: list[tuple[float, float]] = []
        self._last_depth: np.ndarray | None = None
        self._map_cache: np.ndarray | None = None
        self._figure: Any = None

    # ------------------------------------------------------------------------------------ curriculum

    def set_level(self, level: str | list[str] | tuple[str, ...]) -> None:
        """Choose the level used from the next reset on (``empty``, ``easy``, ``medium``, ``hard``), or
        several (a comma-separated string or a list): each reset then draws one uniformly."""
        names = [n.strip() for n in level.split(",")] if isinstance(level, str) else list(level)
        bad = [n for n in names if n not in LEVELS]
        if not names or bad:
            raise ValueError(
                f"level must be one of {', '.join(LEVELS)}, got {level!r} "
                "(several: joined by commas, e.g. 'easy,medium,hard')"
            )
        self.levels = tuple(names)
        self.level = names[0]  # the level of the current episode (drawn at reset when there are several)

    # ------------------------------------------------------------------------------------ properties

    @property
    def position(self) -> np.ndarray:
        """(3,) current ``[x, y, altitude]`` in metres (a copy)."""
        return self._state[:3].copy()

    @property
    def yaw(self) -> float:
        """Current heading (rad, wrapped to [-pi, pi])."""
        return nav_task.wrap_angle(float(self._state[3]))

    @property
    def trajectory(self) -> np.ndarray:
        """(T, 2) horizontal positions visited this episode, start included."""
        return np.asarray(self._trajectory, dtype=np.float64).reshape(-1, 2)

    # ------------------------------------------------------------------------------------- world gen

    def _random_obstacles(
        self, rng: np.random.Generator, count: int, arena_size: float, goal: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` obstacles clear of the start and the goal: (cylinders (Nc, 5), boxes (Nb, 7))."""
        w = self.world
        half = arena_size / 2.0
        cyl_rows: list[np.ndarray] = []
        box_rows: list[np.ndarray] = []
        need, batches = count, 0
        while need > 0:
            batches += 1
            if batches > 1000:
                raise RuntimeError(f"could not place {count} obstacles in a {arena_size:.1f} m arena")
            # Draw candidates in batches and keep the valid ones in order (vectorised rejection sampling).
            m = max(2 * need, 8)
            centre = rng.uniform(-half + 1.0, half - 1.0, size=(m, 2))
            top = rng.uniform(*w.obstacle_top, size=m)
            is_cyl = rng.random(m) < w.cylinder_fraction
            radius = rng.uniform(*w.cylinder_radius, size=m)
            halves = rng.uniform(*w.box_half_size, size=(m, 2))
            yaw = rng.uniform(0.0, math.pi, size=m)
            zeros = np.zeros(m)
            cand_c = np.column_stack([centre, radius, zeros, top])
            cand_b = np.column_stack([centre, halves, yaw, zeros, top])
            ok = np.ones(m, dtype=bool)
            for point, clearance in ((np.zeros(2), w.start_clearance), (goal, w.goal_clearance)):
                d = footprint_distance(point, cand_c, cand_b)  # (2m,): cylinder reading, then box reading
                ok &= np.where(is_cyl, d[:m], d[m:]) >= clearance
            for idx in np.flatnonzero(ok)[:need]:
                (cyl_rows if is_cyl[idx] else box_rows).append(cand_c[idx] if is_cyl[idx] else cand_b[idx])
            need = count - len(cyl_rows) - len(box_rows)
        cyl = np.array(cyl_rows, dtype=np.float64).reshape(-1, 5)
        box = np.array(box_rows, dtype=np.float64).reshape(-1, 7)
        return cyl, box

    def _generate_world(self, rng: np.random.Generator) -> None:
        spec = LEVELS[self.level]
        w = self.world
        for _ in range(w.max_generation_attempts):
            arena_size = float(rng.uniform(*spec.arena_size))
            goal = nav_task.sample_goal(rng, arena_size, self.task)
            count = int(rng.integers(spec.num_obstacles[0], spec.num_obstacles[1] + 1))
            cyl, box = self._random_obstacles(rng, count, arena_size, goal)
            clearance = w.drone_radius + w.grid_cell / 2.0
            if _reachable(cyl, box, arena_size / 2.0, clearance, w.grid_cell, 0.0, 0.0, goal[0], goal[1]):
                self.arena_size, self.goal = arena_size, goal
                self.scene = Scene(cyl, box, arena_half=arena_size / 2.0, ceiling=w.ceiling)
                return
        raise RuntimeError(
            f"no reachable goal after {w.max_generation_attempts} attempts on level {self.level!r}; "
            "lower the obstacle count or sizes"
        )

    # ------------------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "level" in options:
            self.set_level(options.pop("level"))
        scripted = {"arena_size", "goal", "cylinders", "boxes", "start_yaw"}
        unknown = set(options) - scripted
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; valid: level, {', '.join(sorted(scripted))}"
            )
        rng = self.np_random
        if len(self.levels) > 1:
            self.level = self.levels[int(rng.integers(len(self.levels)))]
        if options.keys() & {"arena_size", "goal", "cylinders", "boxes"}:
            self._scripted_world(rng, options)
        else:
            self._generate_world(rng)

        yaw = 0.0
        if "start_yaw" in options:
            yaw = float(options["start_yaw"])
        elif self.world.random_start_yaw:
            yaw = float(rng.uniform(-math.pi, math.pi))
        self._state[:] = (0.0, 0.0, self.task.start_altitude, yaw, 0.0, 0.0, 0.0)
        self._episode = nav_task.NavEpisode(self.task, self.goal, self._state[:3])
        self._accel = 0.0
        self._trajectory = [(0.0, 0.0)]
        self._map_cache = None
        self._started = True
        obs = self._observation()
        info = {**self._episode.info(), "level": self.level}  # evaluations on a level mix split by it
        if self.render_mode == "human":
            self.render()
        return obs, info

    def _scripted_world(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        spec = LEVELS[self.level]
        arena_size = float(options.get("arena_size", rng.uniform(*spec.arena_size)))
        goal = options.get("goal")
        goal = (
            nav_task.sample_goal(rng, arena_size, self.task) if goal is None else np.asarray(goal, np.float64)
        )
        if goal.shape != (2,):
            raise ValueError(f"goal must be (x, y), got shape {goal.shape}")
        if "cylinders" in options or "boxes" in options:
            cyl = np.asarray(options.get("cylinders", np.zeros((0, 5))), np.float64).reshape(-1, 5)
            box = np.asarray(options.get("boxes", np.zeros((0, 7))), np.float64).reshape(-1, 7)
        else:
            count = int(rng.integers(spec.num_obstacles[0], spec.num_obstacles[1] + 1))
            cyl, box = self._random_obstacles(rng, count, arena_size, goal)
        self.arena_size, self.goal = arena_size, goal
        self.scene = Scene(cyl, box, arena_half=arena_size / 2.0, ceiling=self.world.ceiling)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self._started or self._episode.done:
            raise RuntimeError("call reset() before step() (the episode is over or never started)")
        a = nav_task.clip_action(self.task, action)
        w = self.world
        if w.step_latency_s > 0:
            time.sleep(w.step_latency_s)
        s = self._state
        collided, path = _simulate(
            s,
            a,
            self.task.step_duration,
            self._n_substeps,
            w.velocity_time_constant,
            w.yaw_rate_time_constant,
            w.drone_radius,
            self.scene.cylinders,
            self.scene.boxes,
            self.scene.arena_half,
            self.scene.ceiling,
        )
        # Forward acceleration at the end of the step (first-order lag), for the pitch estimate.
        tau = w.velocity_time_constant
        self._accel = 0.0 if (collided or tau <= 0) else (a[0] - s[4]) / tau
        self._trajectory.append((float(s[0]), float(s[1])))
        out = self._episode.update(a, s[:3], float(s[3]), float(s[4]), collided, path_increment=path)
        obs = self._observation()
        info = {**self._episode.info(), "level": self.level}  # evaluations on a level mix split by it
        if self.render_mode == "human":
            self.render()
        return obs, out.reward, out.terminated, out.truncated, info

    # ---------------------------------------------------------------------------------- observation

    def _observation(self) -> dict[str, np.ndarray]:
        s = self._state
        depth_m = render_depth(
            self.scene,
            self.camera,
            s[:3],
            float(s[3]),
            backend=self.world.render_backend,
            out=self._depth_buf,
        )
        depth = nav_task.depth_to_uint8(depth_m, self.task.max_depth)
        if self.task.depth_noise:
            depth = nav_task.apply_depth_noise(depth, self.np_random, self.task)
        self._last_depth = depth
        g = self.world.gravity
        # Quasi-static attitude of a multirotor: nose down to accelerate, bank into the turn.
        pitch = -math.atan2(self._accel, g)
        roll = math.atan2(s[4] * s[6], g)
        cos_y, sin_y = math.cos(s[3]), math.sin(s[3])
        base = nav_task.make_base_vector(
            self.task,
            s[:2],
            float(s[2]),
            np.array([s[4] * cos_y, s[4] * sin_y]),
            float(s[5]),
            float(s[6]),
            pitch,
            roll,
            float(s[3]),
            self.goal,
        )
        return {"depth": depth[None].copy(), "base": base}

    # ------------------------------------------------------------------------------------- rendering

    def render(self) -> np.ndarray | None:
        """``rgb_array``: (S, 2S + 4, 3) uint8, top-down map (north up) beside the depth image.

        ``human``: shows the same picture with matplotlib (``pip install vmamba-rl[viz]``).
        """
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self._render_frame()
        if self.render_mode == "rgb_array":
            return frame
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise gym.error.DependencyNotInstalled(
                "render_mode='human' needs matplotlib: pip install 'vmamba-rl[viz]'"
            ) from e
        if self._figure is None:
            self._figure = plt.figure("DroneNav-v0")
            self._image = self._figure.add_subplot(1, 1, 1).imshow(frame)
            self._figure.axes[0].set_axis_off()
        else:
            self._image.set_data(frame)
        self._figure.canvas.draw_idle()
        self._figure.canvas.flush_events()
        return None

    def _world_to_px(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world x, y -> (..., 2) float map (row, col): north up, east right."""
        scale = self.world.map_size / self.arena_size
        half = self.arena_size / 2.0
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(half - xy[..., 0]) * scale, (xy[..., 1] + half) * scale], axis=-1)

    def _static_map(self) -> np.ndarray:
        size = self.world.map_size
        half = self.arena_size / 2.0
        # World coordinates of the pixel centres: row -> x (north up), col -> y.
        coords = (np.arange(size) + 0.5) * (self.arena_size / size)
        gx = (half - coords)[:, None] * np.ones((1, size))
        gy = (coords - half)[None, :] * np.ones((size, 1))
        img = np.full((size, size, 3), 235, np.uint8)
        tall = self.task.max_altitude
        for c in self.scene.cylinders:
            mask = (gx - c[0]) ** 2 + (gy - c[1]) ** 2 <= c[2] ** 2
            img[mask] = (70, 70, 70) if c[4] >= tall else (140, 140, 140)
        for b in self.scene.boxes:
            cs, sn = math.cos(b[4]), math.sin(b[4])
            ox = (gx - b[0]) * cs + (gy - b[1]) * sn
            oy = -(gx - b[0]) * sn + (gy - b[1]) * cs
            mask = (np.abs(ox) <= b[2]) & (np.abs(oy) <= b[3])
            img[mask] = (70, 70, 70) if b[6] >= tall else (140, 140, 140)
        gm = (gx - self.goal[0]) ** 2 + (gy - self.goal[1]) ** 2 <= self.task.success_radius**2
        img[gm] = (60, 190, 60)
        img[:2], img[-2:], img[:, :2], img[:, -2:] = 0, 0, 0, 0  # walls
        return img

    def _draw_polyline(self, img: np.ndarray, points_xy: np.ndarray, color: tuple[int, int, int]) -> None:
        if len(points_xy) < 2:
            return
        px = self._world_to_px(points_xy)
        seg = np.diff(px, axis=0)
        n = np.maximum(np.ceil(np.abs(seg).max(axis=1)).astype(int), 1)
        # Sample every segment densely enough to hit each pixel it crosses.
        t = np.concatenate([np.linspace(0.0, 1.0, k + 1) for k in n])
        start = np.repeat(px[:-1], n + 1, axis=0)
        pts = start + np.repeat(seg, n + 1, axis=0) * t[:, None]
        rc = np.floor(pts).astype(int)
        size = img.shape[0]
        ok = (rc[:, 0] >= 0) & (rc[:, 0] < size) & (rc[:, 1] >= 0) & (rc[:, 1] < size)
        img[rc[ok, 0], rc[ok, 1]] = color

    def _render_frame(self) -> np.ndarray:
        if self._map_cache is None:
            self._map_cache = self._static_map()
        img = self._map_cache.copy()
        size = self.world.map_size
        self._draw_polyline(img, self.trajectory, (40, 90, 220))
        s = self._state
        half_fov = math.radians(self.task.camera_hfov_deg) / 2.0
        for side in (-half_fov, half_fov):
            ray_end = s[:2] + self.task.max_depth * np.array([math.cos(s[3] + side), math.sin(s[3] + side)])
            self._draw_polyline(img, np.stack([s[:2], ray_end]), (240, 150, 30))
        r, c = self._world_to_px(s[:2])
        rr, cc = np.ogrid[:size, :size]
        img[(rr - r) ** 2 + (cc - c) ** 2 <= 9] = (220, 40, 40)
        depth = (
            self._last_depth
            if self._last_depth is not None
            else np.zeros((self.task.image_height, self.task.image_width), np.uint8)
        )
        rows = np.arange(size) * depth.shape[0] // size
        cols = np.arange(size) * depth.shape[1] // size
        depth_rgb = np.repeat(depth[rows][:, cols][..., None], 3, axis=2)
        gap = np.full((size, 4, 3), 255, np.uint8)
        return np.concatenate([img, gap, depth_rgb], axis=1)

    def close(self) -> None:
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
