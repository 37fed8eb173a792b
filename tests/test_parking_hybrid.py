"""HOPE's hybrid parts: Reeds-Shepp paths (exact end poses, optimality against rsplan, curvature), the
collision-checked hand-off on Parking-v0 and the wrapper that replay learns from, and the action-mask
post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY_SAC, tiny_config
from vmamba_rl.agents import make_agent
from vmamba_rl.collector import LocalCollector, env_fns
from vmamba_rl.config import ConfigError, make_config
from vmamba_rl.envs.geometry import oriented_rectangle
from vmamba_rl.envs.make import make_env
from vmamba_rl.envs.parking import (
    MAX_SPEED,
    MAX_STEER,
    MIN_TURN_RADIUS,
    WHEELBASE,
    ParkingEnv,
    ParkingScene,
    car_polygon,
)
from vmamba_rl.planning.exit_tree import build_exit_tree
from vmamba_rl.planning.handoff import ReedsSheppHybrid, ReedsSheppPlanner, path_actions
from vmamba_rl.planning.reeds_shepp import RSPath, reeds_shepp_paths

R = MIN_TURN_RADIUS


def _pairs(n: int, seed: int, span: float = 10.0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            np.array([*rng.uniform(-span, span, 2), rng.uniform(-np.pi, np.pi)]),
            np.array([*rng.uniform(-span, span, 2), rng.uniform(-np.pi, np.pi)]),
        )
        for _ in range(n)
    ]


def _pose_error(a: np.ndarray, b: np.ndarray) -> float:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(math.remainder(a[2] - b[2], 2 * math.pi)))


def test_turning_radius_is_the_bicycle_models() -> None:
    assert R == pytest.approx(WHEELBASE / math.tan(MAX_STEER))
    assert R == pytest.approx(3.006, abs=1e-3)


def test_every_candidate_ends_on_the_goal() -> None:
    counts = []
    for start, goal in _pairs(1000, seed=0):
        paths = reeds_shepp_paths(start, goal, R)
        counts.append(len(paths))
        for p in paths:
            assert _pose_error(p.end_pose(start), goal) < 1e-6, p.word
            assert _pose_error(p.sample(start, 0.3)[-1], goal) < 1e-6, p.word
        lengths = [p.length for p in paths]
        assert lengths == sorted(lengths)
    assert min(counts) >= 2 and max(counts) > 8  # several words per query, not just the optimum


def test_shortest_matches_rsplan_on_1000_pose_pairs() -> None:
    planner = pytest.importorskip("rsplan.planner")
    for start, goal in _pairs(1000, seed=1):
        ours = reeds_shepp_paths(start, goal, R)[0].length
        # length_tolerance=0: rsplan otherwise prefers a path with fewer segments up to 2 m longer
        ref = planner.path(tuple(start), tuple(goal), R, 0.0, 0.5, length_tolerance=0.0).total_length
        assert ours == pytest.approx(ref, abs=1e-6), (start, goal)


def test_shortest_is_not_beaten_by_brute_force_over_sampled_words() -> None:
    """An oracle independent of both libraries: shoot random CSC / CCC paths and keep those that end
    near the goal; none may be shorter than our optimum by more than the end tolerance allows."""
    rng = np.random.default_rng(2)
    start = np.zeros(3)
    for _ in range(30):
        kinds = tuple(rng.choice(["L", "R", "S"], size=3))
        lengths = tuple(rng.uniform(-6, 6, size=3))
        shot = RSPath(kinds, lengths, R)
        goal = shot.end_pose(start)
        assert reeds_shepp_paths(start, goal, R)[0].length <= shot.length + 1e-9


def test_sampled_curvature_never_exceeds_the_limit() -> None:
    for start, goal in _pairs(200, seed=3):
        for p in reeds_shepp_paths(start, goal, R):
            poses = np.concatenate([start[None], p.sample(start, 0.05)])
            ds = np.hypot(*np.diff(poses[:, :2], axis=0).T)
            dyaw = np.abs(np.diff(poses[:, 2]))
            moving = ds > 1e-9
            # a chord of length ds on a circle of radius R turns by 2 asin(ds / 2R) <= ds / R * (1 + 1e-3)
            assert np.all(dyaw[moving] <= ds[moving] / R * 1.001 + 1e-12), p.word
            assert np.all(ds <= 0.05 + 1e-9)


def test_same_pose_and_bad_input() -> None:
    paths = reeds_shepp_paths(np.zeros(3), np.zeros(3), R)
    assert paths[0].length == 0.0
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        reeds_shepp_paths(np.zeros(3), np.ones(3), 0.0)
    with pytest.raises(ValueError, match="3 finite numbers"):
        reeds_shepp_paths(np.zeros(2), np.ones(3), R)
    with pytest.raises(ValueError, match="3 finite numbers"):
        reeds_shepp_paths(np.array([0.0, np.nan, 0.0]), np.ones(3), R)
    with pytest.raises(ValueError, match="step must be > 0"):
        paths[0].sample(np.zeros(3), 0.0)


def test_path_actions_drive_the_path_in_the_environment() -> None:
    env = ParkingEnv(level="normal")
    env.reset(seed=0)
    for start, goal in _pairs(100, seed=4, span=5.0):
        path = reeds_shepp_paths(start, goal, R)[0]
        acts = path_actions(path)
        assert np.all(np.abs(acts[:, 1]) <= MAX_SPEED + 1e-9)
        assert set(np.round(acts[:, 0], 9)) <= {round(MAX_STEER, 9), 0.0, round(-MAX_STEER, 9)}
        # distance driven equals the path length
        assert np.abs(acts[:, 1]).sum() * 0.5 == pytest.approx(path.length, rel=1e-9)
        end = env.simulate(acts, start)[-1]
        # explicit Euler at 0.05 s sub-steps: exact heading, position within ~2 % of the path length
        assert abs(math.remainder(end[2] - goal[2], 2 * math.pi)) < 1e-9
        assert math.hypot(end[0] - goal[0], end[1] - goal[1]) <= 0.025 * path.length + 1e-9
    with pytest.raises(ValueError, match="turning radius"):
        path_actions(RSPath(("L",), (1.0,), 5.0))


def _scene(obstacles: list[np.ndarray], target=(0.0, 0.0, 0.0)) -> ParkingScene:
    return ParkingScene(
        obstacles=np.array(obstacles).reshape(-1, 4, 2),
        target=np.array(target, dtype=np.float64),
        bounds=np.array([-20.0, 20.0, -20.0, 20.0]),
        slot_type="bay",
        slot=oriented_rectangle(0.0, 0.0, 0.0, 5.3, 2.6),
    )


def test_planner_parks_in_open_space_and_respects_range() -> None:
    env = ParkingEnv(level="normal")
    env.load_scene(_scene([]), np.array([-6.0, 3.0, 0.5]))
    plan = ReedsSheppPlanner().plan(env)
    assert plan is not None and plan.tried == 1  # nothing in the way: the shortest path
    assert env.coverage_at(plan.poses[-1]) > 0.95
    assert plan.path.length == pytest.approx(reeds_shepp_paths(env.state, env.scene.target, R)[0].length)
    env.set_state(np.array([-12.0, 0.0, 0.0]))  # 12 m away: out of HOPE's 10 m range
    assert ReedsSheppPlanner().plan(env) is None
    assert ReedsSheppPlanner(max_dist=15.0).plan(env) is not None
    with pytest.raises(ValueError, match="max_dist"):
        ReedsSheppPlanner(max_dist=-1.0)
    with pytest.raises(ValueError, match="length_factor"):
        ReedsSheppPlanner(length_factor=0.5)


def test_planner_skips_blocked_paths_and_gives_up_past_1_6x() -> None:
    env = ParkingEnv(level="normal")
    start = np.array([-7.0, 0.0, 0.0])
    # a box on the straight line between start and target: the shortest path (straight ahead) is blocked
    box = oriented_rectangle(-2.5, 0.0, 0.0, 0.6, 0.6)
    env.load_scene(_scene([box]), start)
    paths = reeds_shepp_paths(start, env.scene.target, R)
    assert paths[0].kinds == ("S",)
    assert env.first_blocked(env.simulate(path_actions(paths[0])))[0] < 10 * len(path_actions(paths[0]))
    plan = ReedsSheppPlanner(length_factor=10.0).plan(env)
    assert plan is not None and plan.tried > 1 and plan.path.length > paths[0].length
    assert env.first_blocked(plan.poses)[0] == len(plan.poses)  # the chosen path is free
    # HOPE stops at 1.6x the shortest; with factor 1 only the blocked shortest path is allowed
    assert ReedsSheppPlanner(length_factor=1.0).plan(env) is None


def test_hybrid_wrapper_executes_the_plan_and_reports_it() -> None:
    env = ReedsSheppHybrid(ParkingEnv(level="easy"))
    env.reset(seed=3)
    plan = env.planner.plan(env.unwrapped)
    assert plan is not None  # easy starts are within a few metres of an open bay
    policy_action = np.array([0.3, -1.0], dtype=np.float32)
    for k in range(len(plan.actions)):
        _, _, terminated, truncated, info = env.step(policy_action)
        assert info["rs_active"]
        np.testing.assert_allclose(info["executed_action"], plan.actions[k], rtol=1e-6)
        if terminated or truncated:
            break
    assert info["is_success"]
    assert env.unwrapped.planned_path is not None and env.unwrapped.render() is None  # no render mode
    assert len(env.plan_seconds) == 1
    with pytest.raises(TypeError, match="needs Parking-v0"):
        import gymnasium as gym

        ReedsSheppHybrid(gym.make("DroneNav-v0"))


def test_replay_stores_the_planned_actions() -> None:
    cfg = tiny_config(
        **TINY_SAC,
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level="easy",
        rs_hybrid=True,
        learning_starts=0,
        env_kwargs={"max_steps": 30},
    )
    env = ReedsSheppHybrid(ParkingEnv(level="easy"))
    agent = make_agent(env, None, cfg)
    col = LocalCollector(env_fns(cfg, 1), agent, cfg.seed)
    episodes = 0
    for _ in range(40):
        res = col.collect(agent, random_actions=True)
        episodes += len(res.episodes)
    col.close()
    buf = agent.replay_buffer
    n = int(buf._t.sum())
    stored = agent.scaler.to_env(buf._action[:n])
    # every easy episode is handed off at once: replay holds the planner's actions (steer at the limit
    # or zero), not the uniform random ones the collector drew
    assert episodes > 0
    assert np.all(np.isin(np.round(np.abs(stored[:, 0]), 4), [0.0, round(MAX_STEER, 4)]))


def test_rs_hybrid_flags() -> None:
    cfg = make_config("hope", rs_hybrid=True)
    assert cfg.rs_hybrid and cfg.rs_max_dist == 10.0
    with pytest.raises(ConfigError, match="--rs_hybrid plans Reeds-Shepp paths for Parking-v0 only"):
        make_config(rs_hybrid=True)
    with pytest.raises(ConfigError, match="--action_repeat 1"):
        make_config("hope", rs_hybrid=True, action_repeat=2)
    with pytest.raises(ConfigError, match="--rs_max_dist must be a finite distance > 0 m"):
        make_config("hope", rs_max_dist=0.0)


def test_rs_exit_tree_flags() -> None:
    assert make_config("hope", rs_hybrid=True, rs_exit_tree=True).rs_exit_tree
    with pytest.raises(ConfigError, match="--rs_exit_tree is on but --rs_hybrid is off"):
        make_config("hope", rs_exit_tree=True)
    with pytest.raises(ValueError, match="exit_tries must be an integer >= 1; got 0"):
        ReedsSheppPlanner(exit_tree=True, exit_tries=0)


# ---------------------------------------------------------------------------------------------------
# the slot's exits (backward search from the goal)


def test_simulate_back_is_the_exact_inverse_of_a_step() -> None:
    env = ParkingEnv(level="normal")
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        pose = np.array([*rng.uniform(-10, 10, 2), rng.uniform(-np.pi, np.pi)])
        action = rng.uniform([-MAX_STEER, -MAX_SPEED], [MAX_STEER, MAX_SPEED])
        back = env.simulate_back(action, pose)
        forward = env.simulate(action[None], back[0])
        np.testing.assert_allclose(forward[:-1], back[1:], atol=1e-12)
        np.testing.assert_allclose(forward[-1], pose, atol=1e-12)


@pytest.mark.parametrize("level", ["complex", "extreme"])
def test_every_exit_drives_into_the_slot_without_contact(level: str) -> None:
    env = ParkingEnv(level=level)
    for seed in range(3):
        env.reset(seed=seed)
        tree = build_exit_tree(env, n_exits=8)
        assert len(tree.exits) == 8, (level, seed, tree.expanded)
        mouth = env.scene.slot[:, 1].max()
        for node in tree.exits:
            assert car_polygon(*tree.poses[node])[:, 1].min() >= mouth + 0.1 - 1e-9  # clear of the slot
            actions = tree.actions_to_goal(int(node))
            poses = env.simulate(actions, tree.poses[node])
            assert env.first_blocked(poses)[0] == len(poses)  # free at every sub-step
            np.testing.assert_allclose(poses[-1], env.scene.target, atol=1e-9)  # on the goal
            assert np.all(np.abs(actions[:, 1]) <= MAX_SPEED) and np.all(np.abs(actions[:, 0]) <= MAX_STEER)


def test_exits_park_extreme_slots_that_one_reeds_shepp_path_cannot() -> None:
    env = ReedsSheppHybrid(ParkingEnv(level="extreme"), exit_tree=True)
    hope_only = ReedsSheppPlanner()
    parked = 0
    for seed in range(6):
        env.reset(seed=seed)
        park = env.unwrapped
        assert hope_only.plan(park) is None  # slot 0.6-0.9 m longer than the car: no single path
        plan = env.planner.plan(park)
        if plan is None:
            continue
        assert plan.exit in set(env.planner.tree(park).exits.tolist())
        for k in range(len(plan.actions)):
            _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
            assert info["rs_active"] and not info["is_collision"]
            np.testing.assert_allclose(info["executed_action"], plan.actions[k], rtol=1e-6)
            if terminated or truncated:
                break
        assert info["is_success"]  # (the last wiggles may be cut short: > 95 % covered ends the episode)
        parked += 1
    assert parked >= 3


def _hybrid_checkpoint(tmp_path, **options) -> str:
    """An (untrained) hope_sac Parking-v0 checkpoint with the given hybrid options."""
    cfg = make_config("hope", **TINY_SAC, level="extreme", **options)
    env = make_env(cfg)
    torch.manual_seed(0)  # the same weights whatever ran before
    path = tmp_path / "sac.pt"
    make_agent(env, None, cfg).save(str(path))
    env.close()
    return str(path)


def test_rescore_turns_off_the_exits_and_the_hand_off_of_a_trained_run(tmp_path, capsys) -> None:
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import parking_rescore

    ckpt = _hybrid_checkpoint(tmp_path, rs_hybrid=True, rs_exit_tree=True)
    out = tmp_path / "out"
    argv = [ckpt, "--levels", "extreme", "--episodes", "2", "--seed", "2", "--out", str(out)]
    assert parking_rescore.main(argv) == 0
    table = json.loads((out / "results.json").read_text())["table"]
    success = {v: row["extreme"]["per_run"][0] for v, row in table.items()}
    # extreme scenes 2 and 3: no single Reeds-Shepp path parks them, a path through an exit does from the
    # start pose, before the policy acts (test above); an untrained policy alone parks neither
    assert success == {"trained": 1.0, "no_exits": 0.0, "alone": 0.0}
    assert "| trained | 1 | 1.000 (1.000) |" in (out / "results.md").read_text()

    plain = _hybrid_checkpoint(tmp_path, rs_hybrid=False)
    assert parking_rescore.main([plain, "--levels", "extreme", "--episodes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no_exits" in printed and "does not apply (not trained with that part)" in printed
    assert list(json.loads((out / "results.json").read_text())["table"]) == ["trained"]

    missing = str(tmp_path / "missing.pt")
    assert parking_rescore.main([ckpt, missing, "--out", str(out)]) == 2  # before any scoring
    assert f"checkpoint {missing!r} does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# action-mask post-processing


def test_mask_weights_match_a_per_action_computation() -> None:
    from vmamba_rl.planning.mask import mask_weights

    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g) - 1.0
    mask = torch.rand(3, 42, generator=g)
    cand = torch.cat([torch.stack([torch.linspace(-1, 1, 21), torch.full((21,), s)], 1) for s in (1.0, -1.0)])
    w = mask_weights(mean, log_std, mask, cand)
    for n in range(3):
        ref = []
        for j in range(42):
            normal = torch.distributions.Normal(torch.tanh(mean[n]), log_std[n].exp())
            per_dim = normal.log_prob(cand[j]).clamp(-10, 10)
            ref.append(float(per_dim.sum().exp() * mask[n, j]))
        ref_t = torch.tensor(ref)
        torch.testing.assert_close(w[n], ref_t / ref_t.sum(), rtol=1e-4, atol=1e-7)
    # all blocked: the density alone decides
    w0 = mask_weights(mean, log_std, torch.zeros(3, 42), cand)
    assert torch.all(w0 > 0) and torch.allclose(w0.sum(-1), torch.ones(3))


def test_masked_choice_never_drives_a_blocked_action() -> None:
    from vmamba_rl.planning.mask import choose_masked

    cand = torch.cat([torch.stack([torch.linspace(-1, 1, 21), torch.full((21,), s)], 1) for s in (1.0, -1.0)])
    mean = torch.zeros(2000, 2)  # the policy's mode: straight ahead at zero speed
    log_std = torch.zeros(2000, 2)
    mask = torch.ones(2000, 42)
    mask[:, 10] = 0.0  # straight forward blocked
    mask[:, 21:] = 0.0  # and all reverse
    picks = choose_masked(mean, log_std, mask, cand, explore=True, generator=torch.Generator().manual_seed(1))
    assert torch.all(picks[:, 1] == 1.0) and not torch.any(torch.all(picks == cand[10], dim=1))
    assert len(torch.unique(picks[:, 0])) > 5  # exploring spreads over the free steering bins
    # deterministic: the free action nearest to the policy's mean
    mode, log_std = torch.atanh(torch.tensor([[0.88, -0.3]])), torch.full((1, 2), -1.0)
    det = choose_masked(mode, log_std, torch.ones(1, 42), cand, explore=False)
    torch.testing.assert_close(det, torch.tensor([[0.9, -1.0]]))


def test_hope_sac_with_mask_postprocess_acts_from_the_mask_table() -> None:
    cfg = tiny_config(
        **TINY_SAC,
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level="normal",
        mask_postprocess=True,
        modalities=["target", "action_mask"],
    )
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    table = env.unwrapped.mask_actions
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        a = agent.act(obs, explore=True)
        j = int(np.argmin(np.abs(table - a).sum(1)))
        np.testing.assert_allclose(a, table[j], atol=1e-5)  # a full-speed mask action
        assert obs["action_mask"][-1][j] > 0  # never a blocked one
        obs, _, te, tr, _ = env.step(a)
        if te or tr:
            obs, _ = env.reset()
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    acts = agent.act_batch(batch, explore=False)
    np.testing.assert_allclose(acts[0], agent.act(obs, explore=False), atol=1e-6)
    bad = tiny_config(
        **TINY_SAC,
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level="normal",
        mask_postprocess=True,
        modalities=["target"],
    )
    with pytest.raises(ValueError, match="--mask_postprocess needs Parking-v0's 42-entry 'action_mask'"):
        make_agent(make_env(bad), None, bad)


# ---------------------------------------------------------------------------------------------------
# scene scheduling


def test_schedule_warmup_takes_the_least_used_scene() -> None:
    from vmamba_rl.envs.parking import SCHEDULE_WARMUP, SCHEDULED_SCENES

    env = ParkingEnv(scene_schedule=True)
    seen = []
    for i in range(SCHEDULE_WARMUP):
        _, info = env.reset(seed=i)
        seen.append((info["level"], info["slot_type"]))
    counts = {s: seen.count(s) for s in SCHEDULED_SCENES}
    assert set(counts.values()) == {SCHEDULE_WARMUP // len(SCHEDULED_SCENES)}  # exactly balanced
    # an explicit level wins over the schedule (evaluation of one level)
    _, info = env.reset(seed=0, options={"level": "easy"})
    assert info["level"] == "easy"


def test_schedule_samples_toward_the_scene_furthest_below_target() -> None:
    from vmamba_rl.envs.parking import SCHEDULE_WARMUP, SCHEDULED_SCENES

    env = ParkingEnv(scene_schedule=True)
    env.reset(seed=0)
    env._scene_uses[:] = SCHEDULE_WARMUP  # past the warm-up
    env._scene_results = [[False] * 250] + [[True] * 250 for _ in SCHEDULED_SCENES[1:]]
    picks = [env._next_scene() for _ in range(4000)]
    share = np.bincount(picks, minlength=len(SCHEDULED_SCENES)) / len(picks)
    # the proportional half goes almost all to scene 0 (weight 0.95 against 0.01), the least-used half
    # keeps the solved scenes in play
    assert share[0] > 0.4
    assert np.all(share[1:] > 0.05)


def test_schedule_records_outcomes_and_is_training_only() -> None:
    env = ParkingEnv(scene_schedule=True, max_steps=2)
    env.reset(seed=0)
    scene = env._scene
    for _ in range(2):
        _, _, te, tr, _ = env.step(np.zeros(2, np.float32))
    assert tr and env._scene_results[scene] == [False]
    cfg = tiny_config(
        **TINY_SAC, algorithm_name="hope_sac", env_name="Parking-v0", level="normal", scene_schedule=True
    )
    assert make_env(cfg, training=True).unwrapped.scene_schedule
    assert not make_env(cfg).unwrapped.scene_schedule  # evaluation runs --level
    with pytest.raises(ConfigError, match="--scene_schedule picks Parking-v0 scenes only"):
        make_config(scene_schedule=True)
