"""Flags, presets and validation: bad values fail at parse time with exit code 2 and a clear message."""

from __future__ import annotations

import json

import pytest

from vmamba_rl.cli import main
from vmamba_rl.config import PRESETS, Config, ConfigError, make_config, parse_config


def test_defaults_are_the_spec_values():
    cfg = parse_config([])
    assert cfg.vmamba_hidden_dim == 64 and cfg.vmamba_num_vss_blocks == [2, 2, 4, 2]
    assert (cfg.feature_dim, cfg.state_feature_dim, cfg.hidden_dim) == (128, 128, 256)
    assert (cfg.actor_lr, cfg.critic_lr, cfg.gamma, cfg.tau) == (5e-4, 1e-3, 0.99, 0.005)
    assert (cfg.policy_noise, cfg.noise_clip, cfg.policy_freq) == (0.2, 0.2, 2)
    assert (cfg.ou_theta, cfg.ou_sigma, cfg.ou_sigma_min) == (0.15, 0.2, 0.01)
    assert (cfg.max_timesteps, cfg.buffer_size, cfg.batch_size, cfg.seq_len) == (200000, 20000, 128, 4)
    assert (cfg.learning_starts, cfg.grad_clip) == (2000, 10.0)
    assert cfg.vmamba_ssm_d_state == 16 and cfg.vmamba_ssm_ratio == 2.0 and cfg.vmamba_mlp_ratio == 4.0
    assert cfg.vmamba_drop_path_rate == 0.1 and cfg.vmamba_layer_scale_init == 1e-6
    assert cfg.vmamba_temporal_layers == 1 and cfg.vmamba_num_heads == 4


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_resolve_to_documented_values(name):
    cfg = make_config(name)
    for k, v in PRESETS[name].items():
        assert getattr(cfg, k) == v, k


def test_spec_presets():
    heavy = make_config("heavy")
    assert (
        heavy.vmamba_num_vss_blocks == [2, 2, 9, 2]
        and heavy.seq_len == 8
        and heavy.vmamba_temporal_layers == 2
    )
    std = make_config("standard")
    assert std.vmamba_hidden_dim == 96 and std.actor_lr == 3e-4 and std.critic_lr == 5e-4


def test_explicit_flags_override_preset():
    cfg = parse_config(["--preset", "light", "--seq_len", "8", "--vmamba_num_vss_blocks", "1", "1", "2", "1"])
    assert cfg.seq_len == 8 and cfg.vmamba_num_vss_blocks == [1, 1, 2, 1]
    assert cfg.vmamba_hidden_dim == 64  # from the preset


def test_curriculum_stages_parse_as_json_objects():
    cfg = parse_config(["--curriculum", '{"goal_wall_margin": 19}', "{}", "--curriculum_window", "20"])
    assert cfg.curriculum == [{"goal_wall_margin": 19}, {}] and cfg.curriculum_window == 20
    back = Config.from_dict(json.loads(cfg.to_json()))
    assert back.curriculum == cfg.curriculum


def test_json_round_trip():
    cfg = make_config("cpu", seed=3)
    back = Config.from_dict(json.loads(cfg.to_json()))
    assert back.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        Config.from_dict({"train": {"bogus": 1}})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seq_len", "0"], "--seq_len must be >= 1, got 0"),
        (["--actor_lr=-1e-3"], "--actor_lr must be a positive learning rate, got -0.001"),
        (["--critic_lr", "0"], "--critic_lr must be a positive learning rate"),
        (["--vmamba_num_vss_blocks", "2", "2", "4"], "--vmamba_num_vss_blocks needs 4 values"),
        (["--vmamba_num_heads", "3"], "--vmamba_num_heads must divide --hidden_dim (256), got 3"),
        (["--preset", "huge"], "--preset must be one of light, standard, heavy, cpu, hope, got 'huge'"),
        (["--algorithm_name", "ppo"], "--algorithm_name must be one of vmamba_td3, td3, hope_sac"),
        (["--scan_backend", "gpu"], "--scan_backend must be one of auto, reference, chunked, cpu"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        (["--replay_segment", "0"], "--replay_segment must be >= 1, got 0"),
        (["--n_step", "0"], "--n_step must be >= 1, got 0"),
        (["--action_repeat", "0"], "--action_repeat must be >= 1, got 0"),
        (["--curriculum_threshold", "0"], "--curriculum_threshold must be in (0, 1], got 0.0"),
        (["--curriculum", "[1]"], "expected a JSON object, got '[1]'"),
        (["--critic_norm", "batch"], "--critic_norm must be one of joint, state, got 'batch'"),
        (["--actor_reg=-0.1"], "--actor_reg must be >= 0, got -0.1"),
        (["--vmamba_patch_size", "3"], "--vmamba_patch_size must be a power of 2"),
        (["--fusion", "sum"], "--fusion must be one of mlp, attention"),
        (["--ou_sigma_min", "0.5"], "--ou_sigma_min (0.5) must be <= --ou_sigma (0.2)"),
    ],
)
def test_bad_values_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_non_numeric_flag_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--batch_size", "many"])
    assert exc.value.code == 2
    assert "--batch_size" in capsys.readouterr().err


def test_info_counts_match_a_direct_count(capsys):
    from vmamba_rl.models.heads import Actor, Critic
    from vmamba_rl.models.sequence import EncoderStream

    assert main(["info", "--preset", "cpu"]) == 0
    out = capsys.readouterr().out
    cfg = make_config("cpu")
    stream = EncoderStream.vmamba(cfg.vmamba, 10, (1, 64, 64))
    n_stream = sum(p.numel() for p in stream.parameters())
    repr_dim = cfg.hidden_dim + (10 if cfg.base_skip else 0)
    n_actor = sum(p.numel() for p in Actor(repr_dim, 3, cfg.hidden_dim).parameters())
    n_critic = sum(p.numel() for p in Critic(repr_dim, 3, cfg.hidden_dim, cfg.critic_norm).parameters())
    online = (1 if cfg.share_encoder else 2) * n_stream + n_actor + n_critic
    rows = {
        line[:40].strip(): int(line[40:].replace(",", ""))
        for line in out.splitlines()
        if line[40:].replace(",", "").strip().isdigit()
    }
    assert rows["one encoder stream"] == n_stream
    assert rows["agent, online (trainable)"] == online
    assert rows["agent, with target copies"] == 2 * online
    assert "MFLOPs" in out
