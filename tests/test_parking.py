"""Parking-v0 and the polygon helpers behind it."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import vmamba_rl  # noqa: F401  (registers Parking-v0)
from vmamba_rl.envs.geometry import (
    clip_convex_polygon,
    convex_intersection_area,
    convex_iou,
    convex_polygons_overlap,
    oriented_rectangle,
    points_in_polygon,
    polygon_area,
    polygon_edges,
    ray_cast,
    ray_segment_distances,
)
from vmamba_rl.envs.parking import (
    CAR_LENGTH,
    CAR_WIDTH,
    CENTER_OFFSET,
    LEVELS,
    LIDAR_RANGE,
    MAX_SPEED,
    MAX_STEER,
    REAR_OVERHANG,
    WHEELBASE,
    ParkingEnv,
    ParkingScene,
    car_polygon,
)

# ----------------------------------------------------------------------------------------------------
# helpers


def _open_scene(
    wall_x: float | None = None, target: tuple[float, float, float] = (-15.0, -15.0, 0.0)
) -> ParkingScene:
    """A 40 x 40 m map, the target (rear-axle pose) in a corner, optionally a 0.5 m wall from x = wall_x."""
    obstacles = []
    if wall_x is not None:
        obstacles.append(
            np.array([[wall_x, -10.0], [wall_x + 0.5, -10.0], [wall_x + 0.5, 10.0], [wall_x, 10.0]])
        )
    return ParkingScene(
        obstacles=np.array(obstacles).reshape(-1, 4, 2),
        target=np.array(target, dtype=np.float64),
        bounds=np.array([-20.0, 20.0, -20.0, 20.0]),
        slot_type="bay",
        slot=oriented_rectangle(-15.0 + CENTER_OFFSET, -15.0, 0.0, 5.3, 2.6),
    )


def _slot_frame_errors(env: ParkingEnv) -> tuple[float, float, float]:
    """Car pose in the target frame: (along, across, heading error)."""
    x, y, yaw = env.state
    tx, ty, th = env.scene.target
    c, s = np.cos(th), np.sin(th)
    ex = c * (x - tx) + s * (y - ty)
    ey = -s * (x - tx) + c * (y - ty)
    return ex, ey, (yaw - th + np.pi) % (2 * np.pi) - np.pi


class AxisController:
    """Drive along the slot axis to the target pose; if it arrives misaligned, back out 2.5 m and retry.

    Speed 1 m/s (0.5 m per step) keeps the discrete-time loop well damped. Steering makes the heading
    follow psi_des = -dir * atan(ey) (which drives the lateral error to 0 in either direction of
    travel) with a 1 s time constant: tan(steer) = L * (psi_des - psi) / v.
    """

    def __init__(self, env: ParkingEnv) -> None:
        ex, _, _ = _slot_frame_errors(env)
        self.side = np.sign(ex)  # the side of the target the car starts on
        self.goal = 0.0

    def __call__(self, env: ParkingEnv) -> np.ndarray:
        ex, ey, epsi = _slot_frame_errors(env)
        if self.goal == 0.0 and abs(ex) < 0.02:
            self.goal = 2.5 * self.side
        elif self.goal != 0.0 and abs(ex - self.goal) < 0.02:
            self.goal = 0.0
        err = ex - self.goal
        d = -1.0 if err > 0 else 1.0
        v = d * min(1.0, abs(err) / 0.5)
        psi_des = -d * np.arctan(ey)
        steer = np.arctan(WHEELBASE * (psi_des - epsi) / v) if abs(v) > 1e-6 else 0.0
        return np.array([np.clip(steer, -MAX_STEER, MAX_STEER), v], dtype=np.float32)


def _brute_ray(origin: np.ndarray, angle: float, polygons: list[np.ndarray], max_range: float) -> float:
    """Nearest hit along one ray, one edge at a time with a 2x2 solve."""
    d = np.array([np.cos(angle), np.sin(angle)])
    best = max_range
    for poly in polygons:
        for i in range(len(poly)):
            a, b = poly[i], poly[(i + 1) % len(poly)]
            m = np.array([d, a - b]).T  # origin + t d = a + u (b - a)
            if abs(np.linalg.det(m)) < 1e-12:
                continue
            t, u = np.linalg.solve(m, a - origin)
            if t >= 0 and 0 <= u <= 1:
                best = min(best, t)
    return best


# ----------------------------------------------------------------------------------------------------
# Gymnasium conformity


@pytest.mark.parametrize("level", LEVELS)
def test_check_env_every_level(level: str) -> None:
    env = ParkingEnv(level=level)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # The action space is in physical units (rad, m/s) as HOPE's is; check_env's advice to normalise it
    # to [-1, 1] is the only warning allowed (agents rescale from the Box bounds).
    messages = [str(w.message) for w in caught if "symmetric and normalized" not in str(w.message)]
    assert not messages, messages


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized")
def test_check_env_with_render_and_make() -> None:
    check_env(gym.make("Parking-v0", level="normal", render_mode="rgb_array").unwrapped)
    env = gym.make("Parking-v0", level="easy", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 4  # something was drawn


@pytest.mark.parametrize("level", LEVELS)
def test_observations_inside_spaces(level: str) -> None:
    env = ParkingEnv(level=level)
    env.action_space.seed(1)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert info["level"] == level
    for _ in range(60):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        assert set(info) >= {"is_success", "is_collision", "is_timeout", "path_length", "slot_type", "level"}
        if terminated or truncated:
            obs, info = env.reset()


def test_determinism_under_seed() -> None:
    def rollout(seed: int) -> tuple[list[dict], list[float]]:
        env = ParkingEnv(level="normal")
        env.action_space.seed(7)
        obs, _ = env.reset(seed=seed)
        observations, rewards = [obs], []
        for _ in range(30):
            obs, r, term, trunc, _ = env.step(env.action_space.sample())
            observations.append(obs)
            rewards.append(r)
            if term or trunc:
                obs, _ = env.reset()
                observations.append(obs)
        return observations, rewards

    a, ra = rollout(3)
    b, rb = rollout(3)
    c, _ = rollout(4)
    assert ra == rb
    for oa, ob in zip(a, b, strict=True):
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
    assert not np.array_equal(a[0]["lidar"], c[0]["lidar"])


def test_levels_and_slot_types() -> None:
    env = ParkingEnv(level="easy")
    _, info = env.reset(seed=0)
    assert info["slot_type"] == "bay" and info["level"] == "easy"
    _, info = env.reset(seed=0, options={"level": "extreme"})
    assert info["slot_type"] == "parallel" and info["level"] == "extreme"
    _, info = env.reset()  # the level persists
    assert info["level"] == "extreme"
    env.set_level("complex")
    for kind in ("bay", "parallel"):
        _, info = env.reset(options={"slot_type": kind})
        assert info["slot_type"] == kind and info["level"] == "complex"
    with pytest.raises(ValueError):
        env.set_level("hard")
    # extreme: slot 0.6-0.9 m longer than the car, 3.5 m aisle
    env.set_level("extreme")
    for seed in range(5):
        env.reset(seed=seed)
        slot_len = np.ptp(env.scene.slot[:, 0])
        assert CAR_LENGTH + 0.6 <= slot_len <= CAR_LENGTH + 0.9


# ----------------------------------------------------------------------------------------------------
# driving


def test_scripted_manoeuvre_parks_in_easy_bay() -> None:
    env = ParkingEnv(level="easy")
    for seed in range(10):
        env.reset(seed=seed)
        ctl = AxisController(env)
        total = 0.0
        for _ in range(60):
            obs, reward, terminated, truncated, info = env.step(ctl(env))
            total += reward
            if terminated or truncated:
                break
        assert info["is_success"] and terminated and not truncated, (seed, info)
        assert info["coverage"] > 0.95
        assert total > 5.0  # terminal +5 plus positive shaping for progress and IoU
        assert info["path_length"] > 3.0


def test_driving_into_a_wall_is_a_collision() -> None:
    env = ParkingEnv(level="easy")
    env.reset(seed=0)
    tx, ty, th = env.scene.target
    # Same footprint as the target but facing the back wall (bays open towards +y; the wall is at -y).
    cx, cy = tx + CENTER_OFFSET * np.cos(th), ty + CENTER_OFFSET * np.sin(th)
    env.set_state(np.array([cx, cy + CENTER_OFFSET, -np.pi / 2]))
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
    assert terminated and not truncated
    assert info["is_collision"] and not info["is_success"]
    assert reward < -4.5
    # the car stopped at its last free pose: it overlaps nothing
    assert not any(convex_polygons_overlap(car_polygon(*env.state), obs) for obs in env.scene.obstacles)
    assert 0.0 < info["path_length"] < 0.5 * MAX_SPEED


def test_collision_stops_flag_keeps_the_episode_going() -> None:
    env = ParkingEnv(level="easy", collision_stops=True)
    env.load_scene(_open_scene(wall_x=4.5), np.array([0.0, 0.0, 0.0]))  # front bumper 0.755 m from wall
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
        assert info["is_collision"] and not terminated and reward < -4.5
    front = env.state[0] + CAR_LENGTH - REAR_OVERHANG
    assert 4.5 - 0.125 < front <= 4.5  # stopped within one sub-step (0.125 m) of the wall
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, -MAX_SPEED], dtype=np.float32))
    assert not info["is_collision"] and not terminated  # backing away works


def test_collision_penalty_zero_makes_a_free_safety_stop() -> None:
    costs = []
    for penalty in (5.0, 0.0):
        env = ParkingEnv(level="easy", collision_stops=True, collision_penalty=penalty)
        env.load_scene(_open_scene(wall_x=4.5), np.array([0.0, 0.0, 0.0]))
        env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
        assert info["is_collision"] and not terminated
        costs.append(reward)
    assert costs[0] == pytest.approx(costs[1] - 5.0)  # the same blocked step, with and without penalty
    assert abs(costs[1]) < 0.2  # only the shaping terms remain
    with pytest.raises(ValueError, match="collision_penalty must be a finite number in \\[0, 1e6\\]; got -1"):
        ParkingEnv(collision_penalty=-1)


def test_leaving_the_map_ends_the_episode() -> None:
    env = ParkingEnv()
    env.load_scene(_open_scene(), np.array([14.0, 0.0, 0.0]))
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
        if terminated:
            break
    assert terminated and info["is_out_of_bounds"] and not info["is_collision"] and reward < -4.5


def test_timeout_truncates_after_200_steps() -> None:
    env = ParkingEnv(level="easy")
    env.reset(seed=0)
    for t in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated
        assert truncated == (t == 200)
    assert info["is_timeout"] and not info["is_success"]
    assert reward == pytest.approx(0.1 * -np.tanh(200 / 2000) - 0.1)


# ----------------------------------------------------------------------------------------------------
# success, target, reward


def test_success_threshold_on_coverage() -> None:
    env = ParkingEnv(level="easy")
    env.reset(seed=2)
    tx, ty, th = env.scene.target
    fwd = np.array([np.cos(th), np.sin(th)])
    left = np.array([-np.sin(th), np.cos(th)])
    cases = [
        (np.zeros(2), 0.0, True),  # exactly in the slot
        (0.15 * fwd, 0.0, True),  # coverage 1 - 0.15 / 4.69 = 0.968
        (0.30 * fwd, 0.0, False),  # 0.936
        (0.15 * left, 0.0, False),  # 1 - 0.15 / 1.94 = 0.923
        (np.zeros(2), 0.12, False),  # rotated 7 deg about the rear axle
    ]
    for shift, dyaw, expect in cases:
        env.set_state(np.array([tx + shift[0], ty + shift[1], th + dyaw]))
        _, reward, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
        assert info["is_success"] == expect, (shift, dyaw, info["coverage"])
        assert terminated == expect
        assert (reward > 4.0) == expect
        coverage = convex_intersection_area(car_polygon(*env.state), car_polygon(tx, ty, th)) / (
            CAR_LENGTH * CAR_WIDTH
        )
        assert info["coverage"] == pytest.approx(coverage)


def test_target_vector_uses_sin_phi() -> None:
    env = ParkingEnv()
    env.load_scene(_open_scene(target=(3.0, 4.0, 0.5)), np.zeros(3))
    for yaw in (0.2, 0.8, -2.0):
        obs = env.set_state(np.array([0.0, 0.0, yaw]))
        d, ct, stheta, cp, sp = obs["target"]
        theta = np.arctan2(4.0, 3.0) - yaw
        phi = 0.5 - yaw
        np.testing.assert_allclose(
            [d, ct, stheta, cp, sp],
            [5.0, np.cos(theta), np.sin(theta), np.cos(phi), np.sin(phi)],
            rtol=1e-5,
            atol=1e-6,
        )
    # phi = +0.3 and -0.3 share cos phi: only sin phi tells them apart
    a = env.set_state(np.array([0.0, 0.0, 0.2]))["target"][4]
    b = env.set_state(np.array([0.0, 0.0, 0.8]))["target"][4]
    assert a == pytest.approx(np.sin(0.3), abs=1e-6) and b == pytest.approx(-np.sin(0.3), abs=1e-6)


def test_reward_progress_and_iou_terms() -> None:
    env = ParkingEnv()
    env.load_scene(_open_scene(), np.array([-15.0 + 10.0, -15.0, np.pi]))  # 10 m from the target, facing it
    # 1.25 m straight towards the target: progress 1.25 / 10, the footprints do not touch yet (IoU 0).
    _, reward, *_ = env.step(np.array([0.0, MAX_SPEED], dtype=np.float32))
    assert reward == pytest.approx(0.1 * (-np.tanh(1 / 2000) + 5 * 1.25 / 10.0), rel=1e-6)
    # Moving away gives negative progress.
    _, reward, *_ = env.step(np.array([0.0, -MAX_SPEED], dtype=np.float32))
    assert reward < 0


# ----------------------------------------------------------------------------------------------------
# sensors


@pytest.mark.parametrize("level,seed", [("normal", 0), ("complex", 1), ("extreme", 2), ("normal", 3)])
def test_lidar_matches_brute_force(level: str, seed: int) -> None:
    env = ParkingEnv(level=level)
    obs, _ = env.reset(seed=seed)
    x, y, yaw = env.state
    centre = np.array([x + CENTER_OFFSET * np.cos(yaw), y + CENTER_OFFSET * np.sin(yaw)])
    own = car_polygon(x, y, yaw)
    polys = list(env.scene.obstacles)
    for i in range(0, 120, 7):
        angle = yaw + np.deg2rad(3.0 * i)
        hit = _brute_ray(centre, angle, polys, LIDAR_RANGE)
        self_dist = _brute_ray(centre, angle, [own], LIDAR_RANGE)
        assert obs["lidar"][i] == pytest.approx(np.clip(hit - self_dist, 0.0, LIDAR_RANGE), abs=1e-4)
    assert obs["lidar"].min() < LIDAR_RANGE - 3.0  # parked cars are seen


def test_lidar_sees_a_wall_ahead() -> None:
    env = ParkingEnv()
    obs = env.load_scene(_open_scene(wall_x=6.0), np.array([0.0, 0.0, 0.0]))
    front = CAR_LENGTH - REAR_OVERHANG
    assert obs["lidar"][0] == pytest.approx(6.0 - front, abs=1e-5)  # beam 0 points along the heading
    assert obs["lidar"][60] == pytest.approx(LIDAR_RANGE - 0.5 * CAR_LENGTH, abs=1e-5)  # nothing behind


def test_image_is_car_aligned() -> None:
    env = ParkingEnv()
    # wall ahead of the car (heading up in the image), then to the car's left (left columns)
    img = env.load_scene(_open_scene(wall_x=6.0), np.array([0.0, 0.0, 0.0]))["img"]
    rows = np.nonzero(img[0].any(axis=1))[0]
    assert rows.max() < 32 and img[0][32:].sum() == 0
    img = env.set_state(np.array([0.0, 0.0, -np.pi / 2]))["img"]  # heading -y: the wall (+x) is on the left
    cols = np.nonzero(img[0].any(axis=0))[0]
    assert cols.max() < 32
    # the car channel is a centred 4.69 x 1.94 m box
    car = img[2] > 0
    assert car[32, 32] and car.sum() == pytest.approx(CAR_LENGTH * CAR_WIDTH / 0.33**2, rel=0.25)
    # the goal channel marks the target footprint when it is in view
    img = env.load_scene(_open_scene(), np.array([-15.0 + 3.0, -15.0, 0.0]))["img"]
    assert img[1].sum() > 0 and img[1][:32].sum() == 0  # 3 m behind the car: lower half


def test_action_mask_open_space_and_wall() -> None:
    env = ParkingEnv()
    front = CAR_LENGTH - REAR_OVERHANG
    means = []
    for gap in (3.0, 1.0, 0.6, 0.3, 0.05):
        mask = env.load_scene(_open_scene(wall_x=front + gap), np.zeros(3))["action_mask"]
        assert np.all(mask[21:] == 1.0)  # reversing away is always free
        means.append(mask[:21].mean())
        if gap == 3.0:
            assert np.all(mask == 1.0)
        if gap == 0.6:
            assert mask[10] == pytest.approx(0.4)  # straight ahead: 4 of 10 sub-steps (0.125 m each) fit
    assert means == sorted(means, reverse=True) and means[-1] == 0.0


def test_action_mask_agrees_with_the_dynamics() -> None:
    env = ParkingEnv(level="complex")
    rng = np.random.default_rng(0)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        start = env.state.copy()
        for i in rng.choice(42, size=8, replace=False):
            env.set_state(start)
            env._path_length = 0.0
            mask = env._observe()["action_mask"]
            _, _, _, _, info = env.step(env.mask_actions[i])
            blocked = info["is_collision"] or info["is_out_of_bounds"]
            assert blocked == (mask[i] < 1.0)
            c, s = np.cos(start[2]), np.sin(start[2])
            local = env._mask_local[i]
            poses = np.stack(
                [
                    start[0] + c * local[:, 0] - s * local[:, 1],
                    start[1] + s * local[:, 0] + c * local[:, 1],
                    start[2] + local[:, 2],
                ],
                axis=1,
            )
            idx, reason = env.first_blocked(poses)
            assert idx == round(mask[i] * 10) and (reason != "") == blocked
            assert info["path_length"] == pytest.approx(mask[i] * MAX_SPEED * 0.5)


# ----------------------------------------------------------------------------------------------------
# geometry helpers


def test_intersection_area_of_rectangles() -> None:
    a = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]])
    b = a + np.array([1.5, 0.5])
    assert convex_intersection_area(a, b) == pytest.approx(0.25)
    assert convex_intersection_area(a, a[::-1]) == pytest.approx(2.0)  # orientation does not matter
    assert convex_intersection_area(a, a + 5.0) == 0.0
    assert len(clip_convex_polygon(a, a + 5.0)) == 0
    assert convex_iou(a, b) == pytest.approx(0.25 / 3.75)
    # a square rotated 45 deg inside a larger square: the whole diamond
    diamond = np.array([[1.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 1.0]])
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    assert convex_intersection_area(square, diamond) == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-3, 3),
    st.floats(-3, 3),
    st.floats(-np.pi, np.pi),
    st.floats(0.5, 5),
    st.floats(0.5, 3),
    st.floats(-np.pi, np.pi),
)
def test_intersection_area_against_sampling(
    cx: float, cy: float, yaw: float, length: float, width: float, yaw_b: float
) -> None:
    a = oriented_rectangle(cx, cy, yaw, length, width)
    b = oriented_rectangle(0.0, 0.0, yaw_b, 4.0, 2.0)
    area = convex_intersection_area(a, b)
    assert area == pytest.approx(convex_intersection_area(b, a), abs=1e-9)
    assert -1e-12 <= area <= min(polygon_area(a), polygon_area(b)) + 1e-9
    # Monte Carlo over b's bounding box (area <= 21.2 m^2): 1e5 samples, std <= 0.035 m^2
    pts = np.random.default_rng(0).uniform(-2.3, 2.3, size=(100_000, 2))
    inside = points_in_polygon(pts, a) & points_in_polygon(pts, b)
    assert area == pytest.approx(inside.mean() * 4.6**2, abs=0.15)
    if area > 1e-6:
        assert convex_polygons_overlap(a, b)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_ray_cast_numba_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    polys = np.stack(
        [
            oriented_rectangle(*rng.uniform(-8, 8, 2), rng.uniform(-3, 3), *rng.uniform(0.3, 4, 2))
            for _ in range(6)
        ]
    )
    starts, ends = polygon_edges(polys)
    angles = rng.uniform(-np.pi, np.pi, 50)
    origin = rng.uniform(-2, 2, 2)
    np.testing.assert_allclose(
        ray_cast(origin, angles, starts, ends, 10.0),
        ray_segment_distances(origin, angles, starts, ends, 10.0),
        atol=1e-9,
    )


def test_points_in_polygon_non_convex() -> None:
    l_shape = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], dtype=float)
    pts = np.array([[0.5, 0.5], [1.5, 0.5], [1.5, 1.5], [0.5, 1.5], [3.0, 0.5]])
    np.testing.assert_array_equal(points_in_polygon(pts, l_shape), [True, True, False, True, False])
    assert polygon_area(l_shape) == pytest.approx(3.0)


def test_bad_actions_are_rejected() -> None:
    env = ParkingEnv(level="easy")
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError):
        env.step(np.zeros(3))
    # out-of-range actions are clipped to the Box
    _, _, _, _, info = env.step(np.array([0.0, 100.0]))
    assert info["path_length"] <= MAX_SPEED * 0.5 + 1e-9


def test_car_constants() -> None:
    poly = car_polygon(0.0, 0.0, 0.0)
    assert polygon_area(poly) == pytest.approx(CAR_LENGTH * CAR_WIDTH)
    assert poly[:, 0].max() - poly[:, 0].min() == pytest.approx(CAR_LENGTH)
    assert poly[:, 0].min() == pytest.approx(-REAR_OVERHANG)
    env = ParkingEnv()
    assert env.action_space.low.tolist() == pytest.approx([-MAX_STEER, -MAX_SPEED])
    assert env.mask_actions.shape == (42, 2)
    assert np.all(env.mask_actions[:21, 1] > 0) and np.all(env.mask_actions[21:, 1] < 0)
