"""Shared test helpers: tiny configurations that keep CPU tests fast."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton scan kernels run under Triton's interpreter (tests/test_scan_triton.py). The
# switch is read when triton is first imported, so it is set here, before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vmamba_rl.config import NAV_RECIPE, SMALL_BUDGET_TD3, Config, TD3Config, TrainConfig, make_config

TD3_DEFAULTS = {**vars(TD3Config()), **vars(TrainConfig())}
# tests built on the cpu preset run the design's exploration and episodes (no action repeat, no
# curriculum) unless they ask for the navigation recipe
NO_NAV_RECIPE = {name: TD3_DEFAULTS[name] for name in NAV_RECIPE} | {"curriculum": []}

# Small enough that one update takes milliseconds; the layer logic is the same at every size.
TINY_AGENT = dict(
    vmamba_patch_size=8,
    vmamba_hidden_dim=8,
    vmamba_num_vss_blocks=[1, 1, 1, 1],
    vmamba_ssm_d_state=1,
    vmamba_ssm_ratio=1.0,
    vmamba_mlp_ratio=2.0,
    vmamba_drop_path_rate=0.0,
    vmamba_num_heads=2,
    feature_dim=16,
    state_feature_dim=8,
    hidden_dim=16,
    batch_size=8,
    seq_len=3,
    buffer_size=2000,
    cnn_channels=[8, 8],
    progress=False,
    # the design's TD3: the cpu preset's small-budget recipe back at the defaults (tests that want the
    # recipe ask for SMALL_BUDGET_TD3)
    **{name: TD3_DEFAULTS[name] for name in SMALL_BUDGET_TD3},
    **NO_NAV_RECIPE,
    final_eval_episodes=0,
)


# Tiny HOPE-style SAC networks for tests.
TINY_SAC = dict(
    embed_size=8,
    fusion_hidden=16,
    attention_heads=2,
    attention_dim_head=4,
    attention_ff_dim=8,
    actor_hidden=[16],
    critic_hidden=[16],
    cnn_channels=[4, 8],
    batch_size=8,
    buffer_size=200,
    seq_len=1,
    device="cpu",
)


def tiny_config(tmp_path=None, **overrides) -> Config:
    """The cpu preset shrunk for tests (DroneNav-v0 empty level), with overrides."""
    kw = dict(
        TINY_AGENT,
        max_timesteps=120,
        learning_starts=40,
        eval_interval=0,
        eval_episodes=0,
        save_interval=0,
        level="empty",
    )
    if tmp_path is not None:
        kw["log_dir"] = str(tmp_path)
    kw.update(overrides)
    return make_config("cpu", **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    # CI's 2 vCPUs behave like one core: more threads only add contention in small tests.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
