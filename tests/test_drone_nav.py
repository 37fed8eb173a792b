"""DroneNav-v0: API conformance, task rules, physics, determinism and use by standard Gymnasium tools."""

from __future__ import annotations

import math

import gymnasium as gym
import matplotlib
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmamba_rl  # noqa: F401  (registers DroneNav-v0)
from vmamba_rl.envs import nav_task
from vmamba_rl.envs.drone_nav import LEVELS, DroneNavEnv, _reachable, footprint_distance
from vmamba_rl.envs.nav_task import NavTaskConfig
from vmamba_rl.envs.wrappers import SequenceHistory

matplotlib.use("Agg")  # check_env also builds the "human" render mode

FULL = np.array([2.0, 0.0, 0.0], np.float32)  # full speed ahead, level, no turn
HOVER = np.zeros(3, np.float32)
# Scripted empty arena: 28 m side (walls at +-14 m), goal behind the start so it is never reached.
EMPTY_28 = {"arena_size": 28.0, "goal": (-10.0, -10.0), "cylinders": [], "start_yaw": 0.0}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*symmetric and normalized.*"),
    pytest.mark.filterwarnings("ignore:.*different from the unwrapped.*"),
    pytest.mark.filterwarnings("ignore:.*non-interactive.*"),
]


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("history", [0, 3])
def test_check_env(level: str, history: int) -> None:
    env = gym.make("DroneNav-v0", level=level).unwrapped
    check_env(SequenceHistory(env, history) if history else env)


def test_spaces_and_info_keys() -> None:
    env = gym.make("DroneNav-v0")
    obs, info = env.reset(seed=0)
    assert obs["depth"].shape == (1, 64, 64) and obs["depth"].dtype == np.uint8
    assert obs["base"].shape == (10,) and obs["base"].dtype == np.float32
    np.testing.assert_allclose(env.action_space.high, [2.0, 0.5, math.pi / 12], rtol=1e-6)
    np.testing.assert_allclose(env.action_space.low, [0.0, -0.5, -math.pi / 12], rtol=1e-6)
    keys = {"is_success", "is_collision", "is_timeout", "distance_to_goal", "path_length"}
    assert keys <= set(info)
    _, _, _, _, info = env.step(FULL)
    assert keys <= set(info)
    assert info["path_length"] > 0.5


def test_base_vector_layout() -> None:
    env = DroneNavEnv()
    obs, _ = env.reset(seed=0, options={**EMPTY_28, "goal": (5.0, 5.0)})
    dx, dy, alt, fwd, vz, wr, pitch, roll, yaw, rel = obs["base"]
    assert (dx, dy, alt) == (5.0, 5.0, 2.0)
    assert fwd == vz == wr == yaw == 0.0
    assert rel == pytest.approx(math.pi / 4)  # goal to the north-east, facing north
    obs, *_ = env.step(np.array([2.0, 0.5, math.pi / 12], np.float32))
    dx, dy, alt, fwd, vz, wr, pitch, roll, yaw, rel = obs["base"]
    assert 0 < fwd <= 2 and 0 < vz <= 0.5 and 0 < wr <= math.pi / 12
    assert alt < 2.0  # NED z velocity + = down: descending
    assert yaw > 0 and pitch < 0 and roll > 0  # accelerating nose-down, banking into a right turn
    assert -math.pi <= rel <= math.pi


def test_wall_collision_before_passing() -> None:
    env = DroneNavEnv(level="empty")
    env.reset(seed=0, options=EMPTY_28)
    radius = env.world.drone_radius
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(FULL)
        assert env.position[0] < 14.0 - radius  # the body never reaches the wall
        if terminated:
            break
    assert terminated and not truncated
    assert info["is_collision"] and not info["is_success"]
    assert reward < -19  # collision penalty -20 plus shaping
    # Stopped within one collision substep of the contact point.
    assert env.position[0] > 14.0 - radius - env.world.max_substep_distance - 1e-9
    with pytest.raises(RuntimeError, match="reset"):
        env.step(FULL)


def test_no_tunnelling_through_thin_plate() -> None:
    """A 2 cm plate across the path is hit even though one step covers 1 m."""
    env = DroneNavEnv(level="empty")
    plate = [[4.3, 0.0, 0.01, 5.0, 0.0, 0.0, 5.0]]
    env.reset(seed=0, options={**EMPTY_28, "boxes": plate})
    for _ in range(10):
        _, _, terminated, _, info = env.step(FULL)
        if terminated:
            break
    assert info["is_collision"]
    assert env.position[0] < 4.3 - 0.01 - env.world.drone_radius


def test_reaching_goal() -> None:
    env = DroneNavEnv(level="empty")
    env.reset(seed=0, options={**EMPTY_28, "goal": (6.0, 0.0)})
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(FULL)
        if terminated:
            break
    assert terminated and not truncated
    assert info["is_success"] and not info["is_collision"]
    assert info["distance_to_goal"] < 2.0
    assert reward > 19.0  # +20 terminal plus the shaping terms (small here)
    task = env.task
    expected = nav_task.shaping_reward(
        task, info["distance_to_goal"], env.unwrapped._state[4], 0.0, 2.0, FULL, FULL
    )
    assert reward == pytest.approx(expected + task.success_reward, abs=1e-6)


def test_step_limit_truncates() -> None:
    env = gym.make("DroneNav-v0", level="empty")
    env.reset(seed=0, options=EMPTY_28)
    for step in range(1, 201):
        _, reward, terminated, truncated, info = env.step(HOVER)
        assert not terminated
        assert truncated == (step == 200)
        if truncated:
            break
    assert step == 200 and info["is_timeout"] and not info["is_success"]
    assert reward < -29  # timeout penalty -30


def test_altitude_rules() -> None:
    task = NavTaskConfig()
    args = (10.0, 1.0, 0.0)
    inside = nav_task.shaping_reward(task, *args, 2.0, HOVER, HOVER)
    for alt in (0.4, 3.6):
        assert nav_task.shaping_reward(task, *args, alt, HOVER, HOVER) == pytest.approx(inside - 0.5)
    # Climbing above max_altitude (4 m) ends the episode as a failure.
    env = DroneNavEnv(level="empty")
    env.reset(seed=0, options=EMPTY_28)
    up = np.array([0.0, -0.5, 0.0], np.float32)  # NED: negative z velocity climbs
    rewards = []
    for _ in range(30):
        obs, reward, terminated, _, info = env.step(up)
        rewards.append((float(obs["base"][2]), reward))
        if terminated:
            break
    assert terminated and info["is_out_of_bounds"] and not info["is_collision"]
    assert reward < -20
    band = [r for a, r in rewards[:-1] if a > 3.5]
    ok = [r for a, r in rewards[:-1] if a <= 3.5]
    assert band and ok and max(band) < min(ok) - 0.4  # the 0.5 band penalty shows
    # Descending into the floor is a collision.
    env.reset(seed=0, options=EMPTY_28)
    for _ in range(30):
        _, _, terminated, _, info = env.step(np.array([0.0, 0.5, 0.0], np.float32))
        if terminated:
            break
    assert info["is_collision"] and env.position[2] >= env.world.drone_radius


def test_actions_are_clipped() -> None:
    a, b = DroneNavEnv(), DroneNavEnv()
    a.reset(seed=5)
    b.reset(seed=5)
    for _ in range(5):
        oa, ra, *_ = a.step(np.array([9.0, -3.0, 4.0], np.float32))
        ob, rb, *_ = b.step(a.action_space.high * np.array([1, -1, 1], np.float32))
        np.testing.assert_array_equal(oa["base"], ob["base"])
        np.testing.assert_array_equal(oa["depth"], ob["depth"])
        assert ra == rb
    np.testing.assert_array_equal(nav_task.clip_action(a.task, [-1, 0, 0]), [0, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        a.step(np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError, match="3 values"):
        a.step(np.zeros(2))


def test_determinism_under_seed() -> None:
    def rollout(seed: int) -> tuple[DroneNavEnv, list]:
        env = DroneNavEnv(level="medium")
        obs, _ = env.reset(seed=seed)
        out = [obs]
        rng = np.random.default_rng(0)
        for _ in range(30):
            action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            obs, reward, term, trunc, _ = env.step(action)
            out.append((obs, reward))
            if term or trunc:
                break
        return env, out

    e1, r1 = rollout(11)
    e2, r2 = rollout(11)
    e3, _ = rollout(12)
    np.testing.assert_array_equal(e1.scene.cylinders, e2.scene.cylinders)
    np.testing.assert_array_equal(e1.scene.boxes, e2.scene.boxes)
    np.testing.assert_array_equal(e1.goal, e2.goal)
    np.testing.assert_array_equal(e1.trajectory, e2.trajectory)
    assert len(r1) == len(r2)
    for x, y in zip(r1[1:], r2[1:], strict=True):
        np.testing.assert_array_equal(x[0]["depth"], y[0]["depth"])
        np.testing.assert_array_equal(x[0]["base"], y[0]["base"])
        assert x[1] == y[1]
    assert not np.array_equal(e1.goal, e3.goal)


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_world_generation_rules(level: str) -> None:
    env = DroneNavEnv(level=level)
    spec = LEVELS[level]
    w, t = env.world, env.task
    for seed in range(6):
        env.reset(seed=seed)
        assert spec.arena_size[0] <= env.arena_size <= spec.arena_size[1]
        assert spec.num_obstacles[0] <= env.scene.num_obstacles <= spec.num_obstacles[1]
        hi = (env.arena_size - t.goal_wall_margin) / 2
        assert np.all(np.abs(env.goal) >= t.goal_min_offset) and np.all(np.abs(env.goal) <= hi)
        assert footprint_distance(env.goal, env.scene.cylinders, env.scene.boxes).min() >= w.goal_clearance
        assert (
            footprint_distance(np.zeros(2), env.scene.cylinders, env.scene.boxes).min() >= w.start_clearance
        )
        clearance = w.drone_radius + w.grid_cell / 2
        args = (env.scene.cylinders, env.scene.boxes, env.scene.arena_half, clearance, w.grid_cell)
        assert _reachable(*args, 0.0, 0.0, env.goal[0], env.goal[1])


def test_reachability_detects_a_closed_ring() -> None:
    ring = [[0.0, 8.0, 10.0, 0.2, 0.0, 0.0, 5.0], [0.0, -8.0, 10.0, 0.2, 0.0, 0.0, 5.0],
            [8.0, 0.0, 0.2, 10.0, 0.0, 0.0, 5.0], [-8.0, 0.0, 0.2, 10.0, 0.0, 0.0, 5.0]]  # fmt: skip
    box = np.array(ring)
    assert not _reachable(np.zeros((0, 5)), box, 14.0, 0.55, 0.5, 0.0, 0.0, 11.0, 11.0)
    assert _reachable(np.zeros((0, 5)), box, 14.0, 0.55, 0.5, 0.0, 0.0, 4.0, 4.0)


def test_curriculum_level_switch() -> None:
    env = gym.make("DroneNav-v0", level="easy")
    env.reset(seed=0, options={"level": "hard"})
    assert env.unwrapped.level == "hard" and env.unwrapped.arena_size >= 55
    env.reset()  # the level sticks
    assert env.unwrapped.arena_size >= 55
    env.unwrapped.set_level("empty")
    env.reset()
    assert env.unwrapped.scene.num_obstacles == 0
    with pytest.raises(ValueError, match="level"):
        env.unwrapped.set_level("impossible")
    with pytest.raises(TypeError, match="unknown DroneNavEnv option"):
        gym.make("DroneNav-v0", levle="easy")


def test_a_level_mix_draws_one_of_its_levels_at_each_reset() -> None:
    env = gym.make("DroneNav-v0", level="easy,medium,hard")
    drawn = []
    for seed in range(40):
        _, info = env.reset(seed=seed)
        level = env.unwrapped.level
        assert info["level"] == level and env.step(env.action_space.sample())[-1]["level"] == level
        lo, hi = LEVELS[level].arena_size
        assert lo <= env.unwrapped.arena_size <= hi  # the world is built for the level drawn
        drawn.append(level)
    assert set(drawn) == {"easy", "medium", "hard"} and max(map(drawn.count, set(drawn))) < 25
    again = []
    for seed in range(40):  # the draw comes from the episode seed
        env.reset(seed=seed)
        again.append(env.unwrapped.level)
    assert again == drawn
    env.unwrapped.set_level(["hard"])
    env.reset(seed=0)
    assert env.unwrapped.levels == ("hard",)
    with pytest.raises(ValueError, match="got 'easy,hrad'"):
        env.unwrapped.set_level("easy,hrad")


def test_an_evaluation_on_a_level_mix_reports_each_level() -> None:
    from vmamba_rl.config import make_config
    from vmamba_rl.envs.make import make_env
    from vmamba_rl.evaluation import evaluate

    class Straight:  # flies straight ahead at full speed: episodes end within a few decisions
        def reset_episode(self) -> None:
            pass

        def act(self, obs_seq: dict, explore: bool = False) -> np.ndarray:
            return np.array([2.0, 0.0, 0.0], np.float32)

    env = make_env(make_config("cpu", level="easy,medium,hard"))
    summary = evaluate(Straight(), env, 12)
    split = summary["by_level"]
    assert set(split) == {"easy", "medium", "hard"}
    assert sum(s["episodes"] for s in split.values()) == 12
    assert [r["level"] for r in summary["records"]].count("hard") == split["hard"]["episodes"]


def test_a_curriculum_stage_level_comes_before_the_configured_level() -> None:
    from vmamba_rl.config import make_config
    from vmamba_rl.envs.make import make_env

    cfg = make_config("cpu", level="easy,medium,hard")
    stage = make_env(cfg, overrides={"level": "easy", "goal_wall_margin": 19}, training=True)
    stage.reset(seed=0)
    assert stage.unwrapped.levels == ("easy",) and stage.unwrapped.task.goal_wall_margin == 19
    task = make_env(cfg, training=True)  # after the last stage: the task itself
    assert task.unwrapped.levels == ("easy", "medium", "hard")
    assert make_env(cfg, level="hard").unwrapped.levels == ("hard",)  # evaluation of one level


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    level=st.sampled_from(list(LEVELS)),
    actions=st.lists(st.tuples(*[st.floats(-5, 5, allow_nan=False)] * 3), min_size=1, max_size=40),
)
def test_observations_inside_spaces(seed: int, level: str, actions: list) -> None:
    env = DroneNavEnv(level=level, depth_noise=seed % 2 == 0)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    for a in actions:
        obs, reward, term, trunc, info = env.step(np.array(a, np.float32))
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        if term or trunc:
            obs, _ = env.reset()


def test_depth_noise_and_image_size() -> None:
    clean = DroneNavEnv(level="easy")
    noisy = DroneNavEnv(level="easy", depth_noise=True, salt_pepper_prob=0.05)
    o_clean, _ = clean.reset(seed=2)
    o_noisy, _ = noisy.reset(seed=2)
    assert not np.array_equal(o_clean["depth"], o_noisy["depth"])
    assert np.array_equal(o_clean["base"], o_noisy["base"])
    again = DroneNavEnv(level="easy", depth_noise=True, salt_pepper_prob=0.05)
    np.testing.assert_array_equal(again.reset(seed=2)[0]["depth"], o_noisy["depth"])
    big = gym.make("DroneNav-v0", level="hard", image_height=128, image_width=128)
    obs, _ = big.reset(seed=0)
    assert obs["depth"].shape == (1, 128, 128)
    obs, *_ = big.step(FULL)
    assert big.observation_space.contains(obs)


def test_depth_image_semantics() -> None:
    """A wall 5 m ahead fills the centre of the image at 5/10 * 255 (near = 0, far = 255)."""
    env = DroneNavEnv(level="empty")
    wall = [[5.0 + 0.5, 0.0, 0.5, 20.0, 0.0, 0.0, 5.0]]  # a box whose near face is at x = 5
    obs, _ = env.reset(seed=0, options={**EMPTY_28, "boxes": wall})
    centre = obs["depth"][0, 30:34, 30:34].astype(float)
    assert np.all(np.abs(centre - 127.5) < 2.5)
    assert obs["depth"].max() <= 255


def test_rgb_render() -> None:
    env = gym.make("DroneNav-v0", level="easy", render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(5):
        env.step(FULL)
    frame = env.render()
    size = env.unwrapped.world.map_size
    assert frame.shape == (size, 2 * size + 4, 3) and frame.dtype == np.uint8
    map_part = frame[:, :size]
    assert ((map_part == (60, 190, 60)).all(axis=2)).any()  # goal
    assert ((map_part == (220, 40, 40)).all(axis=2)).any()  # drone
    assert ((map_part == (40, 90, 220)).all(axis=2)).any()  # trajectory


def test_sync_vector_env_with_episode_statistics() -> None:
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("DroneNav-v0", level="easy", max_steps=15) for _ in range(2)]
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    finished = 0
    for _ in range(40):
        obs, rewards, terms, truncs, infos = envs.step(envs.action_space.sample())
        assert obs["depth"].shape == (2, 1, 64, 64) and rewards.shape == (2,)
        if "episode" in infos:
            finished += int(infos["_episode"].sum())
            assert np.all(infos["episode"]["l"][infos["_episode"]] <= 15)
    assert finished >= 2
    envs.close()


def test_async_vector_env_with_history() -> None:
    envs = gym.vector.AsyncVectorEnv(
        [lambda: SequenceHistory(gym.make("DroneNav-v0", level="easy"), 2) for _ in range(2)]
    )
    obs, _ = envs.reset(seed=1)
    assert obs["depth"].shape == (2, 2, 1, 64, 64) and obs["base"].shape == (2, 2, 10)
    obs, rewards, *_ = envs.step(np.tile(FULL, (2, 1)))
    assert np.isfinite(rewards).all()
    envs.close()


def test_shared_task_rules() -> None:
    """The simulator-independent pieces the AirSim adapter reuses."""
    cfg = NavTaskConfig()
    ep = nav_task.NavEpisode(cfg, np.array([10.0, 0.0]), np.array([0.0, 0.0, 2.0]))
    assert ep.initial_distance == 10.0 and not ep.done
    out = ep.update(FULL, np.array([1.0, 0.0, 2.0]), 0.0, 2.0, collided=False)
    assert not (out.terminated or out.truncated) and ep.info()["path_length"] == pytest.approx(1.0)
    out = ep.update(FULL, np.array([8.5, 0.0, 2.0]), 0.0, 2.0, collided=False)
    assert out.is_success and out.terminated and ep.done and ep.info()["is_success"]
    assert nav_task.wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    depth = nav_task.depth_to_uint8(np.array([-1.0, 0.0, 5.0, 10.0, 50.0, np.nan]), 10.0)
    np.testing.assert_array_equal(depth, [0, 0, 128, 255, 255, 255])
    rng = np.random.default_rng(0)
    goals = np.array([nav_task.sample_goal(rng, 30.0, cfg) for _ in range(200)])
    assert np.all(np.abs(goals) >= 2.0) and np.all(np.abs(goals) <= 13.0)
    assert (goals[:, 0] < 0).any() and (goals[:, 0] > 0).any()
    base = nav_task.make_base_vector(cfg, np.zeros(2), 2.0, np.zeros(2), 0.0, 0.0, 0.0, 0.0, 3.5 * math.pi,
                                     np.array([-1.0, 0.0]))  # fmt: skip
    assert base[8] == pytest.approx(-math.pi / 2) and abs(base[9]) <= math.pi
    with pytest.raises(RuntimeError, match="reset"):
        DroneNavEnv().step(FULL)


def test_step_latency_is_validated():
    """``step_latency_s`` stands in for a real simulator's rate in collection benchmarks."""
    with pytest.raises(ValueError, match="step_latency_s must be in \\[0, 60\\) seconds, got -1"):
        gym.make("DroneNav-v0", step_latency_s=-1)
