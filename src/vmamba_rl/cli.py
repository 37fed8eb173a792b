"""``vmamba-rl``: train | eval | info | visualize | plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmamba_rl.config import ConfigError, add_config_arguments, config_from_namespace
from vmamba_rl.evaluation import EVAL_SEED, SCORE_SEED


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmamba-rl", description="VMamba-TD3 and HOPE-style SAC for navigation")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train an agent (default: VMamba-TD3, cpu preset, DroneNav-v0)",
        description="Train an agent. Writes a run folder <log_dir>/<run_name>/: config.json, episodes.csv, "
        "updates.csv, eval.csv, TensorBoard events, checkpoint.pt with its replay-<step>.npz, and best.pt "
        "(the agent of the best periodic evaluation).",
    )
    add_config_arguments(t)
    t.add_argument(
        "--resume", metavar="RUN_DIR", default=None, help="continue a run from its last checkpoint"
    )

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint",
        description="Play a checkpoint deterministically and print success, collision, out-of-bounds and "
        "timeout rates and returns. Writes eval.json and eval_episodes.csv to --out (default: the "
        "checkpoint's folder).",
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder")
    e.add_argument("--episodes", type=_positive, default=20, help="evaluation episodes (>= 1)")
    e.add_argument("--level", default=None)
    e.add_argument("--env_name", default=None, help="evaluate in another environment with the same spaces")
    e.add_argument(
        "--seed", type=int, default=SCORE_SEED,
        help=f"first episode seed (default {SCORE_SEED}: not among the training loop's evaluation episodes)",
    )  # fmt: skip
    e.add_argument("--out", default=None, help="folder for eval.json and eval_episodes.csv")
    e.add_argument(
        "--rs_hybrid", action=argparse.BooleanOptionalAction, default=None,
        help="Parking-v0: with (or without) the Reeds-Shepp hand-off (default: as trained)",
    )  # fmt: skip
    e.add_argument(
        "--rs_exit_tree", action=argparse.BooleanOptionalAction, default=None,
        help="Parking-v0: the hand-off with (or without) the slot's exits (default: as trained)",
    )  # fmt: skip

    i = sub.add_parser(
        "info",
        help="parameter counts and FLOPs for a preset / flags",
        description="Print the parameter counts and FLOPs of the configured networks; writes nothing.",
    )
    add_config_arguments(i)
    i.add_argument("--image_size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))

    v = sub.add_parser(
        "visualize",
        help="attention / feature figures and a rollout video of a checkpoint",
        description="Play episodes of a checkpoint and write to --out: attention.png and attention_heads.png "
        "(cross-attention over the K history slots, or the fusion's attention over modalities), "
        "features.png (the evolution of visual, state and context features), rollout.gif (and .mp4 with "
        "imageio-ffmpeg), rollout_frame.png, episodes.csv, the arrays as .npy / .npz and summary.json.",
    )
    v.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder")
    v.add_argument("--episodes", type=int, default=1)
    v.add_argument("--out", default=None, help="output folder (default: <run folder>/viz)")
    v.add_argument("--fps", type=float, default=8.0)
    v.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="video frame")
    v.add_argument("--max_steps", type=int, default=None, help="truncate episodes after N decisions")
    v.add_argument("--level", default=None, help="environment level to play (default: the run's)")
    v.add_argument(
        "--seed", type=int, default=None, help=f"first episode seed (default: {EVAL_SEED} + run seed)"
    )

    v.add_argument(
        "--rs_hybrid", action=argparse.BooleanOptionalAction, default=None,
        help="Parking-v0: with (or without) the Reeds-Shepp hand-off (default: as trained)",
    )  # fmt: skip
    v.add_argument(
        "--rs_exit_tree", action=argparse.BooleanOptionalAction, default=None,
        help="Parking-v0: the hand-off with (or without) the slot's exits (default: as trained)",
    )  # fmt: skip

    pl = sub.add_parser(
        "plot",
        help="learning curves (mean and spread across seeds) from run folders",
        description="Read the runs' eval.csv and write one figure (--out) of evaluation success and return, "
        "mean and spread over the runs.",
    )
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", required=True, help="figure file, e.g. curves.png")
    return p


def _resolve(parser: argparse.ArgumentParser, ns: argparse.Namespace):
    # `vmamba-rl train` without a preset is the main job on this machine: the cpu preset, for the drone
    # task with the TD3 family (HOPE's SAC and other environments keep the plain defaults).
    if (
        ns.command == "train"
        and ns.preset is None
        and ns.resume is None
        and ns.algorithm_name in (None, "vmamba_td3", "td3")
        and ns.env_name in (None, "DroneNav-v0")
    ):
        ns.preset = "cpu"
    try:
        return config_from_namespace(ns)
    except ConfigError as err:
        parser.error(str(err))


# What a resumed run may change: its budget and its logging, nothing that changes the networks or data.
RESUME_FLAGS = (
    "max_timesteps",
    "eval_interval",
    "eval_episodes",
    "final_eval_episodes",
    "save_interval",
    "progress",
    "log_interval",
    "save_buffer",
)


def _resume_config(parser: argparse.ArgumentParser, ns: argparse.Namespace, run_dir: Path):
    """The run's configuration (config.json, or the checkpoint's when that file is unreadable) with the
    flags a resume may change; the others given on the command line are named and ignored."""
    from vmamba_rl.checkpoint import CheckpointError, safe_torch_load
    from vmamba_rl.config import FLAG_SECTION, Config, validate

    cfg_path = run_dir / "config.json"
    try:
        cfg = Config.from_dict(json.loads(cfg_path.read_text()))
    except FileNotFoundError:
        parser.error(f"--resume {ns.resume}: no config.json there; pass a run folder made by vmamba-rl train")
    except (ValueError, OSError) as err:  # JSONDecodeError and ConfigError are ValueErrors
        try:
            cfg = Config.from_dict(safe_torch_load(run_dir / "checkpoint.pt")["config"])
        except (CheckpointError, KeyError, ValueError) as err2:
            parser.error(
                f"--resume {ns.resume}: config.json is unreadable ({err}) and so is the checkpoint ({err2})"
            )
        print(
            f"warning: {cfg_path} is unreadable ({err}); using the checkpoint's configuration",
            file=sys.stderr,
        )
    ignored = [f"--{k}" for k in FLAG_SECTION if getattr(ns, k, None) is not None and k not in RESUME_FLAGS]
    if ns.preset is not None:
        ignored.insert(0, "--preset")
    if ignored:
        print(
            f"warning: --resume keeps the run's configuration; ignoring {', '.join(ignored)}", file=sys.stderr
        )
    for flag in RESUME_FLAGS:
        val = getattr(ns, flag, None)
        if val is not None:
            cfg.set(flag, val)
    try:
        validate(cfg)
    except ConfigError as err:
        parser.error(str(err))
    return cfg


def cmd_train(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    from vmamba_rl.agents.base import NonFiniteError
    from vmamba_rl.checkpoint import CheckpointError
    from vmamba_rl.collector import CollectorError
    from vmamba_rl.envs.errors import SimulatorConnectionError
    from vmamba_rl.training import CHECKPOINT, RunFolderExistsError, Trainer

    resume = bool(ns.resume)
    if resume:
        run_dir = Path(ns.resume)
        cfg = _resume_config(parser, ns, run_dir)
        if not (run_dir / CHECKPOINT).is_file():
            print(f"no checkpoint in {run_dir} yet: starting the run over from step 0")
            resume = False
    else:
        cfg = _resolve(parser, ns)
        run_dir = None
    try:  # building the run from the user's values: environment, sizes, device, folder
        trainer = Trainer(cfg, run_dir=run_dir, resume=resume)
    except SimulatorConnectionError as err:  # (an OSError too) the simulator is not reachable
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (CheckpointError, RunFolderExistsError, ValueError, ImportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # only failures a user can act on become one line; anything else keeps its traceback
        trainer.run()
    except (SimulatorConnectionError, CollectorError) as err:  # simulators or Ray workers stayed down
        print(f"error: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # a full disk, a folder that cannot be written: the last checkpoint stays
        print(f"error: {err}; {trainer.checkpoint_note()}", file=sys.stderr)
        return 2
    except NonFiniteError:
        return 1
    return 0


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_eval(ns: argparse.Namespace) -> int:
    import gymnasium as gym

    from vmamba_rl.agents import make_agent
    from vmamba_rl.checkpoint import CheckpointError, safe_torch_load
    from vmamba_rl.config import Config
    from vmamba_rl.evaluation import evaluate, format_table
    from vmamba_rl.training import CHECKPOINT, make_env

    path = Path(ns.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT
    try:
        state = safe_torch_load(path)
        cfg = Config.from_dict(state["config"])
    except (CheckpointError, KeyError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ns.env_name:
        cfg.set("env_name", ns.env_name)
    if ns.rs_hybrid is not None:
        cfg.set("rs_hybrid", ns.rs_hybrid)
    if ns.rs_exit_tree is not None:
        cfg.set("rs_exit_tree", ns.rs_exit_tree)
    try:
        env = make_env(cfg, level=ns.level)
        agent = make_agent(env, None, cfg)
        agent.load_state_dict(state, where=repr(str(path)))
    except (CheckpointError, ValueError, gym.error.Error) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = evaluate(agent, env, ns.episodes, seed=ns.seed)
    print(f"{cfg.algorithm_name} on {cfg.env_name} (level {ns.level or cfg.level}), checkpoint {path}")
    print(format_table(summary))
    out = Path(ns.out) if ns.out else path.parent
    out.mkdir(parents=True, exist_ok=True)
    records = summary.pop("records")
    from vmamba_rl.evaluation import strict_json

    (out / "eval.json").write_text(strict_json(summary))
    import csv

    with open(out / "eval_episodes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in records for k in r}))
        w.writeheader()
        w.writerows(records)
    print(f"wrote {out / 'eval.json'} and {out / 'eval_episodes.csv'}")
    return 0


def cmd_info(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    from vmamba_rl.info import format_info

    cfg = _resolve(parser, ns)
    if min(ns.image_size) < 1:
        parser.error(f"--image_size must be two positive sizes H W, got {' '.join(map(str, ns.image_size))}")
    try:
        print(format_info(cfg, depth_shape=(1, *ns.image_size)))
    except ValueError as err:
        parser.error(str(err))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[ns.command]  # type: ignore[union-attr]
    if ns.command == "train":
        return cmd_train(sub, ns)
    if ns.command == "eval":
        return cmd_eval(ns)
    if ns.command == "info":
        return cmd_info(sub, ns)
    if ns.command in ("visualize", "plot"):
        from vmamba_rl.viz import cmd_plot, cmd_visualize

        return cmd_visualize(ns) if ns.command == "visualize" else cmd_plot(ns)
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
