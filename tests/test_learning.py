"""Learning tests (marked slow; they run in CI): a trained agent must clearly beat its untrained self.

DroneNav-v0 on the ``empty`` level with a shortened task (goals within ~3-6 m, 60-step episodes,
crashing worse than timing out) and tiny networks, so that a few thousand updates fit CI's time. The
untrained policy and the trained one are evaluated on the same 10 seeded episodes.
"""

from __future__ import annotations

import pytest

from conftest import tiny_config
from vmamba_rl.evaluation import evaluate
from vmamba_rl.training import Trainer

SHORT_TASK = {"goal_wall_margin": 19, "max_steps": 60, "collision_reward": -50, "timeout_reward": -10}


def _crash(summary: dict) -> float:
    return summary["collision_rate"] + summary["out_of_bounds_rate"]


@pytest.mark.slow
def test_td3_learns_to_stop_crashing_on_dronenav(tmp_path):
    cfg = tiny_config(
        tmp_path,
        algorithm_name="td3",
        cnn_channels=[16, 16],
        feature_dim=32,
        state_feature_dim=16,
        hidden_dim=64,
        batch_size=32,
        seq_len=2,
        buffer_size=20000,
        learning_starts=500,
        max_timesteps=4000,
        updates_per_step=1.0,
        tau=0.02,
        eval_episodes=10,
        env_kwargs=SHORT_TASK,
        seed=0,
    )
    trainer = Trainer(cfg, quiet=True)
    before = evaluate(trainer.agent, trainer.eval_env, 10, seed=10_000 + cfg.seed)
    after = trainer.run()
    print(
        f"untrained: return {before['mean_return']:.1f}, crash {_crash(before):.2f}; trained: return "
        f"{after['mean_return']:.1f}, crash {_crash(after):.2f}, success {after['success_rate']:.2f}"
    )
    # untrained: every episode ends in a crash (return about -53); trained: it survives to the time limit
    assert _crash(before) == 1.0
    assert after["mean_return"] > before["mean_return"] + 15.0
    assert _crash(after) <= 0.5
