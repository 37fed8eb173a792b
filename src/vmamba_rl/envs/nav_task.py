"""Task rules of the depth-camera drone navigation task, independent of any simulator.

The embedded :class:`~vmamba_rl.envs.drone_nav.DroneNavEnv` and the AirSim adapter (``AirSimEnv-v42``)
both call these functions, so a policy sees the same observation layout, action limits, reward and
termination in either simulator. Nothing here knows about obstacles, rendering or physics.

Conventions (AirSim's NED world frame, metres, radians, seconds):

- ``x`` north, ``y`` east, ``z`` down; the drone's ``altitude`` is ``-z`` (metres above the floor).
- ``yaw`` turns ``x`` toward ``y`` (clockwise seen from above); the heading vector is ``(cos yaw, sin yaw)``.
- ``z_velocity`` is NED: positive means descending.

Base vector layout (``BASE_KEYS``, float32, shape ``(10,)``)::

    [dx, dy, altitude, forward_speed, z_velocity, yaw_rate, pitch, roll, yaw, rel_angle]

``dx, dy`` = goal - position (world frame, m); ``forward_speed = vx cos(yaw) + vy sin(yaw)`` (m/s);
``rel_angle`` = bearing to the goal - yaw, wrapped to [-pi, pi] (the original left it unwrapped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from gymnasium import spaces

BASE_KEYS: tuple[str, ...] = (
    "dx",
    "dy",
    "altitude",
    "forward_speed",
    "z_velocity",
    "yaw_rate",
    "pitch",
    "roll",
    "yaw",
    "rel_angle",
)
BASE_DIM: int = len(BASE_KEYS)


REWARD_FIELDS = (
    "distance_coef", "progress_coef", "jerk_coef", "curvature_coef", "step_penalty", "altitude_penalty",
    "success_reward", "collision_reward", "timeout_reward",
)  # fmt: skip
MAX_REWARD_MAGNITUDE = 1e6


@dataclass
class NavTaskConfig:
    """Everything that defines the task as the agent sees it (shared by every simulator).

    Units: metres, m/s, rad/s, seconds. Defaults follow the original AirSim task (reference notes
    section 4); the jerk and curvature coefficients were not recorded there and are our choice.
    """

    # --- action limits: Box [forward_speed, z_velocity (NED, + = down), yaw_rate] ---
    min_forward_speed: float = 0.0
    max_forward_speed: float = 2.0
    max_z_velocity: float = 0.5
    max_yaw_rate: float = math.pi / 12
    step_duration: float = 0.5  # each action is held this long (s)
    # --- altitude rules (altitude = metres above the floor) ---
    start_altitude: float = 2.0
    min_altitude: float = 0.5  # below the band: per-step penalty only
    max_altitude_band: float = 3.5  # above the band: per-step penalty only
    max_altitude: float = 4.0  # above this: episode ends as a failure (like a collision)
    # --- episode ---
    success_radius: float = 2.0  # horizontal distance to the goal that counts as reached
    max_steps: int = 200  # then truncated (not terminated)
    # --- goal sampling: |x|, |y| ~ U(goal_min_offset, (arena - goal_wall_margin) / 2), random signs ---
    goal_min_offset: float = 2.0
    goal_wall_margin: float = 4.0
    # --- reward coefficients ---
    distance_coef: float = 0.02  # -distance_coef * horizontal distance to the goal, every step
    progress_coef: float = 1.0  # +progress_coef * forward_speed * cos(rel_angle) when cos >= 0
    jerk_coef: float = 0.1  # -jerk_coef * sum_i |a_i - a_prev_i| / range_i
    curvature_coef: float = 0.1  # -curvature_coef * |yaw_rate| / max_yaw_rate
    step_penalty: float = 0.05
    altitude_penalty: float = 0.5  # outside [min_altitude, max_altitude_band]
    success_reward: float = 20.0
    collision_reward: float = -20.0  # collision or altitude > max_altitude
    timeout_reward: float = -30.0  # added on the truncating step
    # --- depth image (the observation's ``depth`` key) ---
    image_height: int = 64
    image_width: int = 64
    camera_hfov_deg: float = 90.0
    max_depth: float = 10.0  # depth is clipped here and mapped to 255
    # --- optional depth noise (applied to the uint8 image) ---
    depth_noise: bool = False
    gaussian_noise_std: float = 0.05  # metres (scaled to uint8 units before adding)
    salt_pepper_prob: float = 0.01  # fraction of pixels set to 0 or 255
    # --- base-vector bounds declared in the observation space (values are clipped into them) ---
    max_position_offset: float = 200.0  # |dx|, |dy| bound (m)
    altitude_bound: float = 50.0  # altitude in [-altitude_bound, altitude_bound]

    def __post_init__(self) -> None:
        _require(
            self.max_forward_speed > self.min_forward_speed >= 0.0,
            f"need 0 <= min_forward_speed < max_forward_speed, got {self.min_forward_speed}, "
            f"{self.max_forward_speed}",
        )
        _require(self.max_z_velocity > 0, f"max_z_velocity must be > 0, got {self.max_z_velocity}")
        _require(self.max_yaw_rate > 0, f"max_yaw_rate must be > 0, got {self.max_yaw_rate}")
        _require(self.step_duration > 0, f"step_duration must be > 0, got {self.step_duration}")
        _require(
            self.min_altitude < self.max_altitude_band <= self.max_altitude,
            "need min_altitude < max_altitude_band <= max_altitude, got "
            f"{self.min_altitude}, {self.max_altitude_band}, {self.max_altitude}",
        )
        _require(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _require(self.success_radius > 0, f"success_radius must be > 0, got {self.success_radius}")
        _require(
            self.image_height >= 1 and self.image_width >= 1,
            f"image size must be >= 1, got {self.image_height}x{self.image_width}",
        )
        _require(
            0 < self.camera_hfov_deg < 180, f"camera_hfov_deg must be in (0, 180), got {self.camera_hfov_deg}"
        )
        _require(self.max_depth > 0, f"max_depth must be > 0, got {self.max_depth}")
        _require(
            0 <= self.salt_pepper_prob <= 1,
            f"salt_pepper_prob must be in [0, 1], got {self.salt_pepper_prob}",
        )
        _require(
            self.gaussian_noise_std >= 0, f"gaussian_noise_std must be >= 0, got {self.gaussian_noise_std}"
        )
        for name in REWARD_FIELDS:  # a NaN or a huge reward would poison every value target
            v = getattr(self, name)
            _require(
                math.isfinite(v) and abs(v) <= MAX_REWARD_MAGNITUDE,
                f"{name} must be a finite number within +-{MAX_REWARD_MAGNITUDE:g}, got {v}",
            )

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names accepted as keyword overrides (used by the environments' ``**kwargs``)."""
        return frozenset(f.name for f in fields(cls))

    @property
    def action_low(self) -> np.ndarray:
        """(3,) float32 lower action bounds [forward_speed, z_velocity, yaw_rate]."""
        return np.array([self.min_forward_speed, -self.max_z_velocity, -self.max_yaw_rate], np.float32)

    @property
    def action_high(self) -> np.ndarray:
        """(3,) float32 upper action bounds [forward_speed, z_velocity, yaw_rate]."""
        return np.array([self.max_forward_speed, self.max_z_velocity, self.max_yaw_rate], np.float32)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------- spaces


def base_bounds(cfg: NavTaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (10,) float32, of the base vector in ``BASE_KEYS`` order.

    Velocities get twice the action limits: a real velocity controller (AirSim) overshoots a little.
    """
    pos = cfg.max_position_offset
    vf = 2.0 * max(cfg.max_forward_speed, abs(cfg.min_forward_speed))
    vz = 2.0 * cfg.max_z_velocity
    wr = 2.0 * cfg.max_yaw_rate
    half_pi = math.pi / 2
    low = [-pos, -pos, -cfg.altitude_bound, -vf, -vz, -wr, -half_pi, -half_pi, -math.pi, -math.pi]
    high = [pos, pos, cfg.altitude_bound, vf, vz, wr, half_pi, half_pi, math.pi, math.pi]
    return np.array(low, np.float32), np.array(high, np.float32)


def make_observation_space(cfg: NavTaskConfig) -> spaces.Dict:
    """Dict(depth: Box uint8 (1, H, W) in [0, 255], base: Box float32 (10,))."""
    low, high = base_bounds(cfg)
    return spaces.Dict(
        {
            "depth": spaces.Box(0, 255, (1, cfg.image_height, cfg.image_width), np.uint8),
            "base": spaces.Box(low, high, (BASE_DIM,), np.float32),
        }
    )


def make_action_space(cfg: NavTaskConfig) -> spaces.Box:
    """Box (3,) float32 ``[forward_speed (m/s), z_velocity (m/s, NED + = down), yaw_rate (rad/s)]``."""
    return spaces.Box(cfg.action_low, cfg.action_high, (3,), np.float32)


def clip_action(cfg: NavTaskConfig, action: Any) -> np.ndarray:
    """Validate an action and clip it into the limits; returns (3,) float64.

    Out-of-range values are clipped, not rejected: exploration noise routinely leaves the box and the
    original task clipped too. A wrong shape or a non-finite value raises ``ValueError``.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (3,):
        raise ValueError(
            f"action must have 3 values [forward_speed, z_velocity, yaw_rate], got shape {np.shape(action)}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action must be finite, got {a.tolist()}")
    return np.clip(a, cfg.action_low.astype(np.float64), cfg.action_high.astype(np.float64))


# --------------------------------------------------------------------------------------------- helpers


def wrap_angle(angle: float) -> float:
    """Wrap an angle (rad) to [-pi, pi]."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def horizontal_distance(position_xy: np.ndarray, goal_xy: np.ndarray) -> float:
    """Horizontal distance (m) between two (2,) points."""
    return float(math.hypot(goal_xy[0] - position_xy[0], goal_xy[1] - position_xy[1]))


def relative_goal_angle(position_xy: np.ndarray, yaw: float, goal_xy: np.ndarray) -> float:
    """Bearing to the goal minus yaw, wrapped to [-pi, pi] (rad); positive = goal to the right (NED)."""
    bearing = math.atan2(goal_xy[1] - position_xy[1], goal_xy[0] - position_xy[0])
    return wrap_angle(bearing - yaw)


def make_base_vector(
    cfg: NavTaskConfig,
    position_xy: np.ndarray,
    altitude: float,
    velocity_xy: np.ndarray,
    z_velocity: float,
    yaw_rate: float,
    pitch: float,
    roll: float,
    yaw: float,
    goal_xy: np.ndarray,
) -> np.ndarray:
    """Build the (10,) float32 base vector (layout in ``BASE_KEYS``), clipped into ``base_bounds``.

    Args:
        position_xy: (2,) world x, y (m). altitude: metres above the floor (= -z NED).
        velocity_xy: (2,) world vx, vy (m/s); the forward speed is its projection on the heading.
        z_velocity: NED vertical speed (m/s, + = down). yaw_rate (rad/s), pitch, roll, yaw (rad).
        goal_xy: (2,) world goal x, y (m).
    """
    forward_speed = velocity_xy[0] * math.cos(yaw) + velocity_xy[1] * math.sin(yaw)
    base = np.array(
        [
            goal_xy[0] - position_xy[0],
            goal_xy[1] - position_xy[1],
            altitude,
            forward_speed,
            z_velocity,
            yaw_rate,
            pitch,
            roll,
            wrap_angle(yaw),
            relative_goal_angle(position_xy, yaw, goal_xy),
        ],
        dtype=np.float32,
    )
    low, high = base_bounds(cfg)
    # Clipping keeps every observation inside the declared space even in a simulator that misbehaves.
    return np.clip(base, low, high)


# ---------------------------------------------------------------------------------- reward and episode


@dataclass(frozen=True)
class StepOutcome:
    """Result of :func:`evaluate_step`: the reward, the episode flags and why it ended."""

    reward: float
    terminated: bool
    truncated: bool
    is_success: bool
    is_collision: bool
    is_out_of_bounds: bool  # altitude above cfg.max_altitude
    is_timeout: bool
    distance_to_goal: float


def shaping_reward(
    cfg: NavTaskConfig,
    distance_to_goal: float,
    forward_speed: float,
    rel_angle: float,
    altitude: float,
    action: np.ndarray,
    prev_action: np.ndarray,
) -> float:
    """Per-step (non-terminal) reward of the original task.

    ``-distance_coef * d + progress_coef * v * cos(rel) [if cos >= 0] - jerk - curvature - step_penalty``
    and ``- altitude_penalty`` outside [min_altitude, max_altitude_band]. ``action`` / ``prev_action`` are
    clipped (3,) actions; jerk and curvature use them normalised by the action ranges so the coefficients
    mean the same whatever the limits are.
    """
    reward = -cfg.distance_coef * distance_to_goal - cfg.step_penalty
    c = math.cos(rel_angle)
    if c >= 0.0:
        reward += cfg.progress_coef * forward_speed * c
    span = (cfg.action_high - cfg.action_low).astype(np.float64)
    reward -= cfg.jerk_coef * float(np.sum(np.abs(np.asarray(action) - np.asarray(prev_action)) / span))
    reward -= cfg.curvature_coef * abs(float(action[2])) / cfg.max_yaw_rate
    if altitude < cfg.min_altitude or altitude > cfg.max_altitude_band:
        reward -= cfg.altitude_penalty
    return float(reward)


def evaluate_step(
    cfg: NavTaskConfig,
    distance_to_goal: float,
    forward_speed: float,
    rel_angle: float,
    altitude: float,
    action: np.ndarray,
    prev_action: np.ndarray,
    collided: bool,
    step_count: int,
) -> StepOutcome:
    """Reward and episode flags for the step that just finished (the ``step_count``-th, 1-based).

    Precedence: collision, then altitude above ``max_altitude``, then success; these terminate. If none
    happened and ``step_count >= max_steps`` the episode is truncated with ``timeout_reward`` added
    (truncated, not terminated: the state is not terminal, value bootstrapping must go on).
    """
    reward = shaping_reward(cfg, distance_to_goal, forward_speed, rel_angle, altitude, action, prev_action)
    is_collision = bool(collided)
    is_out = (not is_collision) and altitude > cfg.max_altitude
    is_success = (not is_collision) and (not is_out) and distance_to_goal < cfg.success_radius
    terminated = is_collision or is_out or is_success
    is_timeout = (not terminated) and step_count >= cfg.max_steps
    if is_collision or is_out:
        reward += cfg.collision_reward
    elif is_success:
        reward += cfg.success_reward
    elif is_timeout:
        reward += cfg.timeout_reward
    return StepOutcome(
        reward=float(reward),
        terminated=terminated,
        truncated=is_timeout,
        is_success=is_success,
        is_collision=is_collision,
        is_out_of_bounds=is_out,
        is_timeout=is_timeout,
        distance_to_goal=float(distance_to_goal),
    )


def sample_goal(rng: np.random.Generator, arena_size: float, cfg: NavTaskConfig) -> np.ndarray:
    """Sample a goal like the original: |x|, |y| ~ U(min_offset, (arena - margin)/2), random signs.

    Returns (2,) float64 world x, y (m), relative to the start at the origin. Obstacle-free-ness and
    reachability are the simulator's business (the embedded env resamples its obstacles around it).
    """
    high = (arena_size - cfg.goal_wall_margin) / 2.0
    if high <= cfg.goal_min_offset:
        raise ValueError(
            f"arena_size {arena_size} m is too small for goal sampling: need > "
            f"{2 * cfg.goal_min_offset + cfg.goal_wall_margin} m"
        )
    mag = rng.uniform(cfg.goal_min_offset, high, size=2)
    signs = np.where(rng.random(2) < 0.5, -1.0, 1.0)
    return mag * signs


# ------------------------------------------------------------------------------------------ depth image


def depth_to_uint8(depth_m: np.ndarray, max_depth: float) -> np.ndarray:
    """Metric depth (any shape, m) -> uint8 of the same shape: clip to [0, max_depth], 0 = near, 255 = far.

    Rounded to nearest; NaN (a simulator's missing reading) counts as far.
    """
    d = np.asarray(depth_m, dtype=np.float32)
    if np.isnan(d).any():  # cheap check; np.nan_to_num on every frame cost more than the rendering
        d = np.where(np.isnan(d), np.float32(max_depth), d)
    scaled = np.clip(d, np.float32(0.0), np.float32(max_depth)) * np.float32(255.0 / max_depth)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def apply_depth_noise(depth_u8: np.ndarray, rng: np.random.Generator, cfg: NavTaskConfig) -> np.ndarray:
    """Return a noisy copy of a uint8 depth image: Gaussian (std in metres) then salt-and-pepper.

    Only call it when ``cfg.depth_noise`` is set; draws from ``rng`` so seeded runs stay reproducible.
    """
    out = depth_u8.astype(np.float32)
    if cfg.gaussian_noise_std > 0:
        out += rng.normal(0.0, cfg.gaussian_noise_std * 255.0 / cfg.max_depth, size=out.shape).astype(
            np.float32
        )
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if cfg.salt_pepper_prob > 0:
        hit = rng.random(out.shape) < cfg.salt_pepper_prob
        salt = rng.random(out.shape) < 0.5
        out[hit & salt] = 255
        out[hit & ~salt] = 0
    return out


# ------------------------------------------------------------------------------------ episode tracking


class NavEpisode:
    """Book-keeping of one episode that every simulator shares: step count, previous action, path length.

    A simulator builds one at reset and calls :meth:`update` after executing each (clipped) action, so
    the embedded environment and the AirSim adapter produce the same rewards, flags and ``info`` keys.
    """

    def __init__(self, cfg: NavTaskConfig, goal_xy: np.ndarray, start_position: np.ndarray) -> None:
        """goal_xy: (2,) world goal (m); start_position: (3,) ``[x, y, altitude]`` (m)."""
        self.cfg = cfg
        self.goal = np.asarray(goal_xy, dtype=np.float64).reshape(2)
        self.steps = 0
        self.prev_action = np.zeros(3)  # the drone hovers before the first action (jerk reference)
        self.path_length = 0.0
        self.position = np.asarray(start_position, dtype=np.float64).reshape(3).copy()
        self.initial_distance = horizontal_distance(self.position[:2], self.goal)
        self.last_outcome: StepOutcome | None = None

    @property
    def done(self) -> bool:
        """True once a step terminated or truncated the episode."""
        return self.last_outcome is not None and (self.last_outcome.terminated or self.last_outcome.truncated)

    def update(
        self,
        action: np.ndarray,
        position: np.ndarray,
        yaw: float,
        forward_speed: float,
        collided: bool,
        path_increment: float | None = None,
    ) -> StepOutcome:
        """Score the step that just ended.

        Args:
            action: (3,) the clipped action that was executed.
            position: (3,) ``[x, y, altitude]`` after the step (m). yaw: rad. forward_speed: m/s.
            collided: any contact during the step (poll the simulator during the action).
            path_increment: distance flown during the step (m); default the straight segment from the
                previous position (a simulator with finer samples passes its own sum).
        """
        position = np.asarray(position, dtype=np.float64).reshape(3)
        if path_increment is None:
            path_increment = float(np.linalg.norm(position - self.position))
        self.path_length += path_increment
        self.position = position.copy()
        self.steps += 1
        distance = horizontal_distance(position[:2], self.goal)
        rel = relative_goal_angle(position[:2], yaw, self.goal)
        outcome = evaluate_step(
            self.cfg, distance, forward_speed, rel, float(position[2]), action, self.prev_action, collided,
            self.steps,
        )  # fmt: skip
        self.prev_action = np.asarray(action, dtype=np.float64).copy()
        self.last_outcome = outcome
        return outcome

    def info(self) -> dict[str, Any]:
        """The ``info`` dict: ``is_success``, ``is_collision``, ``is_out_of_bounds``, ``is_timeout``,
        ``distance_to_goal`` (m, horizontal), ``path_length`` (m), ``initial_distance`` (m), ``steps``."""
        out = self.last_outcome
        return {
            "is_success": bool(out and out.is_success),
            "is_collision": bool(out and out.is_collision),
            "is_out_of_bounds": bool(out and out.is_out_of_bounds),
            "is_timeout": bool(out and out.is_timeout),
            "distance_to_goal": horizontal_distance(self.position[:2], self.goal),
            "path_length": float(self.path_length),
            "initial_distance": float(self.initial_distance),
            "steps": int(self.steps),
        }
