"""Learning tests (marked slow; they run in CI): a trained agent must clearly beat its untrained self.

Reduced tasks and tiny networks, so that a few thousand updates fit CI's time; the untrained and the
trained policy are evaluated on the same seeded episodes.

- vmamba_td3 and hope_sac on the navigation core of DroneNav-v0 (empty level, near goals, faster yaw,
  almost no climb, no distance or timeout penalty): from crashing to reaching the goal; vmamba_td3 also
  among the obstacles of the ``easy`` level with 8 environments collecting together, for the same
  decisions and updates.
- hope_sac on Parking-v0 ``easy``: from never parking to parking most of the time.
"""

from __future__ import annotations

import time

import pytest

from conftest import tiny_config
from vmamba_rl.config import SMALL_BUDGET_TD3
from vmamba_rl.evaluation import EVAL_SEED, evaluate
from vmamba_rl.training import Trainer


def _crash(summary: dict) -> float:
    return summary["collision_rate"] + summary["out_of_bounds_rate"]


def _train_and_compare(cfg) -> tuple[dict, dict]:
    """Evaluate the untrained agent, train it, and return (untrained, trained) summaries over the same
    ``eval_episodes`` seeded episodes (the loop's final evaluation uses seed EVAL_SEED + seed too)."""
    trainer = Trainer(cfg, quiet=True)
    before = evaluate(trainer.agent, trainer.eval_env, cfg.eval_episodes, seed=EVAL_SEED + cfg.seed)
    after = trainer.run()
    print(
        f"untrained: success {before['success_rate']:.2f}, crash {_crash(before):.2f}, return "
        f"{before['mean_return']:.1f}; trained: success {after['success_rate']:.2f}, crash "
        f"{_crash(after):.2f}, return {after['mean_return']:.1f}"
    )
    return before, after


# Goals within ~3-8 m, 60 steps, a yaw rate of 45 deg/s (the task's is 15) and almost no climb rate,
# no distance penalty and no timeout penalty: the navigation core of DroneNav in a few hundred updates.
NAV_CORE = {
    "goal_wall_margin": 19,
    "max_steps": 60,
    "distance_coef": 0.0,
    "timeout_reward": 0.0,
    "max_yaw_rate": 0.785,
    "max_z_velocity": 0.05,
}


def _td3_nav_config(tmp_path, **kw):
    """VMamba-TD3 (tiny) on the navigation core with the small-budget recipe (docs/results.md, "Findings")."""
    options = dict(
        algorithm_name="vmamba_td3",
        feature_dim=32,
        state_feature_dim=16,
        hidden_dim=64,
        batch_size=32,
        seq_len=2,
        buffer_size=20000,
        replay_segment=1,
        learning_starts=500,
        max_timesteps=3000,
        updates_per_step=1.0,
        **SMALL_BUDGET_TD3,
        eval_episodes=10,
        env_kwargs=NAV_CORE,
        seed=0,
    )
    return tiny_config(tmp_path, **{**options, **kw})


@pytest.mark.slow
def test_vmamba_td3_learns_to_reach_goals_on_dronenav(tmp_path):
    """VMamba-TD3 (tiny) on the navigation core of DroneNav-v0, with the small-budget recipe: one encoder
    trained by the critic and read detached by the actor, the critic's input norm on the context alone,
    the base vector beside the context in the heads, a pre-tanh penalty and a slower actor, 5-step
    returns, normalised base vector. Untrained it crashes into the walls."""
    before, after = _train_and_compare(_td3_nav_config(tmp_path))
    assert before["success_rate"] <= 0.2
    assert after["success_rate"] >= before["success_rate"] + 0.3
    assert _crash(after) <= 0.2


@pytest.mark.slow
def test_vmamba_td3_with_eight_environments_learns_to_reach_goals_among_obstacles(tmp_path):
    """The same agent, decisions (3000) and updates (2500) on DroneNav-v0 ``easy`` (8-11 cylinders and
    boxes in the arena) with the navigation core's near goals and rewards, eight environments collecting
    together: untrained it crashes, trained it reaches most goals. The wall-clock and the blind go-to-goal
    controller's score on the same episodes are printed beside it (``pytest -s``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from learning import BlindController
    from vmamba_rl.envs.make import make_env

    cfg = _td3_nav_config(tmp_path, level="easy", eval_episodes=20, num_envs=8)
    t0 = time.perf_counter()
    before, after = _train_and_compare(cfg)
    print(f"{time.perf_counter() - t0:.0f} s to success {after['success_rate']:.2f}")
    env = make_env(cfg)  # the task the loop's final evaluation ran
    blind = evaluate(BlindController(env), env, cfg.eval_episodes, seed=EVAL_SEED + cfg.seed)
    env.close()
    print(f"blind controller on the same episodes: success {blind['success_rate']:.2f}")
    assert before["success_rate"] <= 0.2
    assert after["success_rate"] >= before["success_rate"] + 0.4


@pytest.mark.slow
def test_hope_sac_learns_to_reach_goals_on_dronenav(tmp_path):
    """hope_sac on DroneNav-v0 (depth through the CNN, base vector, K = 2): untrained it crashes, trained
    it reaches the goal."""
    cfg = tiny_config(
        tmp_path,
        algorithm_name="hope_sac",
        embed_size=32,
        actor_hidden=[64, 64],
        critic_hidden=[64, 64],
        cnn_channels=[8, 8],
        batch_size=64,
        seq_len=2,
        buffer_size=20000,
        replay_segment=1,
        learning_starts=500,
        max_timesteps=2000,
        updates_per_step=1.0,
        n_step=5,
        gamma=0.98,
        eval_episodes=10,
        env_kwargs=NAV_CORE,
        seed=0,
    )
    before, after = _train_and_compare(cfg)
    assert before["success_rate"] <= 0.2
    assert after["success_rate"] >= before["success_rate"] + 0.5


@pytest.mark.slow
def test_hope_sac_learns_to_park_on_easy_level(tmp_path):
    """HOPE-style SAC on Parking-v0 easy: from never parking to parking most of the time.

    The target modality only (lidar's 120 beams slow learning down several-fold at this budget) and the
    environment's safety stop (``collision_stops`` with no penalty: a blocked step just ends early), so
    that a few thousand updates fit CI.
    """
    cfg = tiny_config(
        tmp_path,
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level="easy",
        modalities=["target"],
        embed_size=64,
        fusion="mlp",
        actor_hidden=[128, 128],
        critic_hidden=[128, 128],
        batch_size=128,
        seq_len=1,
        buffer_size=50000,
        replay_segment=1,  # the cpu preset's runs of 8 only speed up the TD3 encoders
        learning_starts=1000,
        max_timesteps=7000,
        updates_per_step=1.0,
        n_step=5,
        gamma=0.98,
        eval_episodes=20,
        env_kwargs={"collision_stops": True, "collision_penalty": 0.0, "max_steps": 30},
        seed=0,
    )
    before, after = _train_and_compare(cfg)
    assert before["success_rate"] <= 0.1
    assert after["success_rate"] >= before["success_rate"] + 0.5
