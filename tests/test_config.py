"""Flags, presets and validation: bad values fail at parse time with exit code 2 and a clear message."""

from __future__ import annotations

import json

import pytest

from vmamba_rl.cli import main
from vmamba_rl.config import (
    CPU_SIZES,
    NAV_RECIPE,
    SMALL_BUDGET_TD3,
    Config,
    ConfigError,
    make_config,
    parse_config,
)


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


# The VMamba-TD3 document's three configurations, as its command lines give them.
DOCUMENT_COMMANDS = {
    "light": "--vmamba_hidden_dim 64 --vmamba_num_vss_blocks 2 2 4 2 --feature_dim 128 "
    "--state_feature_dim 128 --hidden_dim 256 --batch_size 128 --seq_len 4 --max_timesteps 100000",
    "standard": "--vmamba_hidden_dim 96 --vmamba_num_vss_blocks 2 2 6 2 --feature_dim 256 "
    "--state_feature_dim 256 --hidden_dim 512 --batch_size 64 --seq_len 4 --max_timesteps 500000 "
    "--actor_lr 3e-4 --critic_lr 5e-4",
    "heavy": "--vmamba_hidden_dim 128 --vmamba_num_vss_blocks 2 2 9 2 --feature_dim 512 "
    "--state_feature_dim 512 --hidden_dim 1024 --batch_size 32 --seq_len 8 --vmamba_temporal_layers 2 "
    "--max_timesteps 1000000 "
    "--actor_lr 1e-4 --critic_lr 2e-4",
}


@pytest.mark.parametrize("name", list(DOCUMENT_COMMANDS))
def test_presets_resolve_to_documented_values(name):
    """--preset NAME sets exactly what the document's command line for it sets, every other option alike."""
    preset = make_config(name).to_dict()
    documented = parse_config(DOCUMENT_COMMANDS[name].split()).to_dict()
    preset.pop("preset"), documented.pop("preset")
    assert preset == documented


def test_cpu_preset_is_its_sizes_plus_the_small_budget_and_navigation_recipes():
    cpu, plain = make_config("cpu"), make_config()
    for name, value in {**CPU_SIZES, **SMALL_BUDGET_TD3, **NAV_RECIPE}.items():
        assert getattr(cpu, name) == value, name
    for name, value in {**SMALL_BUDGET_TD3, **NAV_RECIPE}.items():
        assert getattr(plain, name) != value, name  # each recipe entry changes the design's TD3
    # the main job: the easy level, scored at its end on 100 fresh episodes
    assert cpu.level == "easy" and cpu.final_eval_episodes == 100 and plain.final_eval_episodes == 0


# The command that measured the parking recipe (docs/results.md, "The slot's exits as hand-off targets").
PARKING_COMMAND = (
    "--fusions mlp --seeds 0 --steps 200000 --train_level normal --eval_interval 25000 --eval_episodes 500 "
    "--eval_levels normal complex extreme --out runs/parking"
).split() + [
    "--extra",
    '{"rs_hybrid": true, "rs_exit_tree": true, "mask_postprocess": true, "scene_schedule": true, '
    '"num_envs": 8, "updates_per_step": 0.25, "modalities": ["lidar", "target", "action_mask"], '
    '"buffer_size": 1000000, "env_kwargs": {"collision_stops": true, "collision_penalty": 5.0, '
    '"max_steps": 100}}',
]


def test_park_preset_is_the_measured_parking_recipe():
    """--preset park trains what benchmarks/parking_learning.py measured, but for where it writes and how
    often it saves."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import parking_learning

    args = parking_learning.parse_args(PARKING_COMMAND)
    measured = parking_learning.build_config(args, args.options, "mlp", 0).to_dict()
    preset = make_config("park").to_dict()
    flat = {s: {k: v for sec in d.values() if isinstance(sec, dict) for k, v in sec.items()} for s, d in
            (("measured", measured), ("preset", preset))}  # fmt: skip
    ignored = {"log_dir", "run_name", "save_interval", "progress"}
    differs = {k for k in flat["preset"] if k not in ignored and flat["preset"][k] != flat["measured"][k]}
    assert differs == set()
    # the comparison covers every option, the hybrid parts among them
    assert len(flat["preset"]) == len(flat["measured"]) > 100
    assert all(flat["preset"][k] is True for k in ("rs_hybrid", "rs_exit_tree", "mask_postprocess"))


def test_explicit_flags_override_preset():
    cfg = parse_config(["--preset", "light", "--seq_len", "8", "--vmamba_num_vss_blocks", "1", "1", "2", "1"])
    assert cfg.seq_len == 8 and cfg.vmamba_num_vss_blocks == [1, 1, 2, 1]
    assert cfg.vmamba_hidden_dim == 64  # from the preset


def test_curriculum_stages_parse_as_json_objects():
    cfg = parse_config(["--curriculum", '{"goal_wall_margin": 19}', "{}", "--curriculum_window", "20"])
    assert cfg.curriculum == [{"goal_wall_margin": 19}, {}] and cfg.curriculum_window == 20
    assert parse_config(["--preset", "cpu", "--curriculum"]).curriculum == []  # the preset's turned off
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
        (["--preset", "huge"], "--preset must be one of light, standard, heavy, cpu, hope, park, got 'huge'"),
        (["--algorithm_name", "ppo"], "--algorithm_name must be one of vmamba_td3, td3, hope_sac"),
        (["--scan_backend", "gpu"], "--scan_backend must be one of auto, reference, chunked, cpu, triton"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        (["--replay_segment", "0"], "--replay_segment must be >= 1, got 0"),
        (["--n_step", "0"], "--n_step must be >= 1, got 0"),
        (["--action_repeat", "0"], "--action_repeat must be >= 1, got 0"),
        (["--curriculum_threshold", "0"], "--curriculum_threshold must be in (0, 1], got 0.0"),
        (["--curriculum", "[1]"], "expected a JSON object, got '[1]'"),
        (["--critic_norm", "batch"], "--critic_norm must be one of joint, state, got 'batch'"),
        (["--actor_reg=-0.1"], "--actor_reg must be >= 0, got -0.1"),
        (["--encoder_lr", "0"], "--encoder_lr must be a positive learning rate, got 0.0"),
        (["--augment_shift=-1"], "--augment_shift must be >= 0 pixels (0 = off), got -1"),
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
    from vmamba_rl.agents.td3 import make_stream
    from vmamba_rl.models.heads import Actor, Critic

    assert main(["info", "--preset", "cpu"]) == 0
    out = capsys.readouterr().out
    cfg = make_config("cpu")
    stream = make_stream(cfg, "vmamba", 10, (1, 64, 64))
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


def test_every_train_option_has_help_text():
    import argparse

    from vmamba_rl.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    flags = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 70
    missing = [a.option_strings[0] for a in flags if not a.help or a.help.startswith(" (default")]
    assert missing == []


@pytest.mark.parametrize(
    "command, names",
    [
        (
            "visualize",
            ["attention.png", "attention_heads.png", "features.png", "rollout.gif", "summary.json"],
        ),  # noqa: E501
        ("eval", ["eval.json", "eval_episodes.csv"]),
        ("train", ["config.json", "episodes.csv", "checkpoint.pt", "best.pt"]),
    ],
)
def test_each_subcommand_help_says_what_it_writes(command, names, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in names:
        assert name in text, name


def test_a_config_saved_under_an_old_option_name_still_loads():
    data = make_config("hope").to_dict()
    data["sac"]["sac_update_every"] = data["sac"].pop("sac_target_update_interval") + 2
    assert Config.from_dict(data).sac_target_update_interval == 3


def test_the_duplicate_no_save_buffer_flag_is_gone(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--no_save_buffer"])
    assert e.value.code == 2 and "--no_save_buffer" in capsys.readouterr().err
    assert parse_config(["--no-save_buffer"]).save_buffer is False
