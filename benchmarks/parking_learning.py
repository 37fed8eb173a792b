"""Parking success after a fixed budget: hope_sac on Parking-v0 with MLP vs attention fusion, several
seeds, the success rate per level (and per slot type where a level has both), and learning curves.

    python benchmarks/parking_learning.py                   # easy, mlp + attention, 3 seeds, 20k steps
    python benchmarks/parking_learning.py --train_level normal --steps 50000 --fusions attention
    python benchmarks/parking_learning.py --seeds 0 --steps 5000 --eval_levels easy normal
    python benchmarks/parking_learning.py --extra '{"updates_per_step": 0.5, "embed_size": 128}'

For each fusion and seed one run trains at ``--train_level`` (an ordinary run folder under --out named
``hope_sac-<fusion>-<train_level>-s<seed>``, so ``vmamba-rl plot`` and ``vmamba-rl eval`` work on it).
The untrained policy is evaluated on the train level first; after training the agent is evaluated
deterministically on every ``--eval_levels`` level, ``--eval_episodes`` episodes each, with the same
scene seeds (``--eval_seed``, ``--eval_seed + 1``, ...) for every run, so fusions and seeds see the same
scenes. Sizes are :data:`DEFAULTS` (tuned for a 2-core CPU); ``--extra`` overrides them.

Prints the machine, the configuration and a table (rows: fusion; columns: untrained success on the train
level, success per eval level as mean +- std over seeds, the bay / parallel split where a level has
both, training episodes and minutes per run), also written to ``<out>/results.json`` and
``<out>/results.md``; the learning curves (the runs' periodic evaluations on the train level, mean +- std
over seeds per fusion) go to ``<out>/parking_learning.png``.

Runs are sequential (parallel runs on a 2-core machine only slow each other down). An existing run
folder is an error unless ``--overwrite`` (the training loop would append to its CSV logs).

HOPE's hybrid parts are config options, so ``--extra`` turns them on: ``{"rs_hybrid": true}`` (the
Reeds-Shepp hand-off within 10 m, its actions in replay), ``{"scene_schedule": true}`` (train over Normal,
Complex and Extreme by HOPE's schedule) and ``{"mask_postprocess": true}``. The final evaluation uses
HOPE's episode rules by default (``--protocol hope``: collisions stop the car, 200 steps); the curves use
the training environment's. ``benchmarks/parking_planner.py`` scores the planner without a policy.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmamba_rl.config import Config, ConfigError, make_config
from vmamba_rl.evaluation import evaluate
from vmamba_rl.runtime import cpu_model
from vmamba_rl.training import Trainer, make_env

# Run sizes for a 2-core CPU; ``--extra`` overrides any of them (and adds any other config option).
# save_interval defaults to the step budget (one checkpoint at the end).
DEFAULTS: dict[str, Any] = {
    # target + action mask (two tokens for the attention fusion; the mask tells where obstacles are).
    # Measured on easy after 4,000-8,000 steps: target alone ~95 % success; with lidar's 120 beams or
    # 60-step episodes 0-55 %, so lidar is left out and episodes are short (the easy level needs ~7 steps).
    "modalities": ["target", "action_mask"],
    # HOPE's collision handling would end the episode with -5; the safety stop lets a CPU budget learn.
    "env_kwargs": {"collision_stops": True, "collision_penalty": 0.0, "max_steps": 30},
    "embed_size": 64,
    "actor_hidden": [128, 128],
    "critic_hidden": [128, 128],
    "batch_size": 128,
    "seq_len": 1,
    "learning_starts": 1000,
    "updates_per_step": 1.0,
    "buffer_size": 50000,
    "n_step": 5,
    "gamma": 0.98,
    "torch_threads": 1,
    "progress": False,
}

# Options this script sets from its own flags; --extra may not change them.
FIXED = (
    "algorithm_name",
    "env_name",
    "level",
    "fusion",
    "seed",
    "max_timesteps",
    "eval_interval",
    "eval_episodes",
    "log_dir",
    "run_name",
)

LEVELS = ("easy", "normal", "complex", "extreme")

# HOPE's evaluation: a collision stops the car at its last free sub-step (-5) and the episode goes on,
# 200 steps at most, success = more than 95 % of the target footprint covered (the environment's test).
HOPE_PROTOCOL = {"collision_stops": True, "collision_penalty": 5.0, "max_steps": 200}


def run_name(fusion: str, level: str, seed: int) -> str:
    """Run folder name of one (fusion, train level, seed) run."""
    return f"hope_sac-{fusion}-{level}-s{seed}"


def build_config(args: argparse.Namespace, options: dict[str, Any], fusion: str, seed: int) -> Config:
    """The validated config of one run: ``options`` (DEFAULTS + extra) plus this script's fixed flags."""
    return make_config(
        None,
        **options,
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level=args.train_level,
        fusion=fusion,
        seed=seed,
        max_timesteps=args.steps,
        eval_interval=args.eval_interval,
        eval_episodes=args.curve_episodes,
        log_dir=str(args.out),
        run_name=run_name(fusion, args.train_level, seed),
    )


def level_result(summary: dict[str, Any]) -> dict[str, Any]:
    """An ``evaluate`` summary -> rates, episode count and success per slot type (from the records)."""
    by_slot: dict[str, list[bool]] = {}
    for r in summary["records"]:
        by_slot.setdefault(str(r.get("slot_type", "?")), []).append(bool(r["success"]))
    return {
        "episodes": summary["episodes"],
        "success_rate": summary["success_rate"],
        "collision_rate": summary["collision_rate"],
        "out_of_bounds_rate": summary["out_of_bounds_rate"],
        "timeout_rate": summary["timeout_rate"],
        "mean_return": summary["mean_return"],
        "mean_length": summary["mean_length"],
        "by_slot_type": {
            k: {"episodes": len(v), "success_rate": float(np.mean(v))} for k, v in sorted(by_slot.items())
        },
    }


def evaluate_level(
    cfg: Config, agent: Any, level: str, episodes: int, seed: int, protocol: str = "hope"
) -> dict[str, Any]:
    """Deterministic evaluation of ``agent`` on a fresh ``level`` environment: with HOPE's episode rules
    (``protocol="hope"``, :data:`HOPE_PROTOCOL`) or the training environment's (``"train"``)."""
    env = make_env(cfg, level=level, overrides=HOPE_PROTOCOL if protocol == "hope" else None)
    try:
        return level_result(evaluate(agent, env, episodes, seed=seed))
    finally:
        env.close()


def train_and_evaluate(cfg: Config, args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate the untrained agent, train, evaluate on every eval level; None if training was interrupted."""
    trainer = Trainer(cfg, quiet=True)
    untrained = level_result(
        evaluate(trainer.agent, trainer.eval_env, args.eval_episodes, seed=args.eval_seed)
    )
    t0 = time.time()
    final = trainer.run()
    train_minutes = (time.time() - t0) / 60
    if final is None:
        return None
    t0 = time.time()
    levels = {
        lvl: evaluate_level(cfg, trainer.agent, lvl, args.eval_episodes, args.eval_seed, args.protocol)
        for lvl in args.eval_levels
    }
    return {
        "fusion": cfg.fusion,
        "seed": cfg.seed,
        "run_dir": str(trainer.run_dir),
        "steps": trainer.step,
        "train_episodes": trainer.episode,
        "updates": int(trainer.agent.total_it),
        "train_minutes": train_minutes,
        "eval_minutes": (time.time() - t0) / 60,
        "untrained": untrained,
        "final_curve_eval": {k: v for k, v in final.items() if not isinstance(v, (list, dict))},
        "levels": levels,
    }


def table_columns(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[tuple[str, str]]:
    """(key, header) per column: untrained, each eval level, its slot-type split where it has several."""
    cols = [("untrained", f"untrained {args.train_level}")]
    for lvl in args.eval_levels:
        cols.append((lvl, lvl))
        slots = sorted({s for r in runs for s in r["levels"][lvl]["by_slot_type"]})
        if len(slots) > 1:
            cols += [(f"{lvl}/{s}", f"{lvl} {s}") for s in slots]
    return cols + [("train_episodes", "episodes/run"), ("train_minutes", "min/run")]


def run_cells(run: dict[str, Any]) -> dict[str, float | None]:
    """One run's value per column key (None: the run had no episode of that slot type)."""
    cells: dict[str, float | None] = {
        "untrained": run["untrained"]["success_rate"],
        "train_episodes": run["train_episodes"],
        "train_minutes": run["train_minutes"],
    }
    for lvl, res in run["levels"].items():
        cells[lvl] = res["success_rate"]
        for slot in ("bay", "parallel"):
            s = res["by_slot_type"].get(slot)
            cells[f"{lvl}/{slot}"] = s["success_rate"] if s else None
    return cells


def aggregate(runs: list[dict[str, Any]], cols: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per fusion and column: mean, std (over seeds) and n of the runs that have a value."""
    table: dict[str, dict[str, Any]] = {}
    for fusion in dict.fromkeys(r["fusion"] for r in runs):
        cells = [run_cells(r) for r in runs if r["fusion"] == fusion]
        row: dict[str, Any] = {"seeds": len(cells)}
        for key, _ in cols:
            vals = [c[key] for c in cells if c.get(key) is not None]
            row[key] = (
                {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
                if vals
                else {"mean": None, "std": None, "n": 0}
            )
        table[fusion] = row
    return table


def fmt_cell(key: str, cell: dict[str, Any]) -> str:
    """``mean+-std`` for rates, mean minutes / episodes per run, ``n/a`` without data."""
    if cell["mean"] is None:
        return "n/a"
    if key == "train_minutes":
        return f"{cell['mean']:.1f}"
    if key == "train_episodes":
        return f"{cell['mean']:.0f}"
    return f"{cell['mean']:.2f}+-{cell['std']:.2f}"


def text_table(table: dict[str, dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    """Aligned plain-text table."""
    headers = ["fusion", "seeds"] + [h for _, h in cols]
    body = [[f, str(row["seeds"])] + [fmt_cell(k, row[k]) for k, _ in cols] for f, row in table.items()]
    widths = [max(len(x) for x in col) for col in zip(headers, *body, strict=True)]
    lines = [
        " ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for r in body:
        lines.append(
            " ".join(
                x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def markdown_table(table: dict[str, dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    """GitHub-flavoured markdown table."""
    headers = ["fusion", "seeds"] + [h for _, h in cols]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for f, row in table.items():
        cells = [f, str(row["seeds"])] + [fmt_cell(k, row[k]).replace("+-", " ± ") for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jsonable(x: Any) -> Any:
    """Nested data -> JSON-safe values (NaN / inf -> None, numpy scalars -> Python)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_level", default="easy", choices=LEVELS)
    p.add_argument("--eval_levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    p.add_argument("--fusions", nargs="+", default=["mlp", "attention"], choices=["mlp", "attention"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20000, help="environment steps per run")
    p.add_argument("--eval_episodes", type=int, default=50, help="final episodes per eval level")
    p.add_argument("--eval_seed", type=int, default=100_000, help="scene seed of the first eval episode")
    p.add_argument(
        "--protocol", default="hope", choices=["hope", "train"],
        help="final evaluation episodes: HOPE's (collisions stop the car, 200 steps) or the training env's",
    )  # fmt: skip
    p.add_argument("--eval_interval", type=int, default=2000, help="steps between curve evaluations")
    p.add_argument(
        "--curve_episodes", type=int, default=20, help="episodes per curve evaluation (on the train level)"
    )
    p.add_argument("--extra", default="{}", help="JSON object of config overrides on top of DEFAULTS")
    p.add_argument("--out", default="runs/parking")
    p.add_argument("--overwrite", action="store_true", help="delete existing run folders of the same name")
    args = p.parse_args(argv)
    args.out = Path(args.out)
    if args.steps < 1 or args.eval_episodes < 1 or args.curve_episodes < 1:
        p.error("--steps, --eval_episodes and --curve_episodes must be >= 1")
    try:
        extra = json.loads(args.extra)
    except json.JSONDecodeError as e:
        p.error(f"--extra is not JSON: {e}")
    if not isinstance(extra, dict):
        p.error(f"--extra must be a JSON object, got {args.extra!r}")
    fixed = sorted(set(extra) & set(FIXED))
    if fixed:
        p.error(f"--extra may not set {fixed}: they follow this script's own flags")
    args.options = copy.deepcopy(DEFAULTS) | {"save_interval": args.steps} | extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Build every config first: a bad --extra fails before any training.
    try:
        configs = [build_config(args, args.options, f, s) for f in args.fusions for s in args.seeds]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    existing = [Path(c.log_dir) / c.run_name for c in configs if (Path(c.log_dir) / c.run_name).exists()]
    if existing and not args.overwrite:
        names = ", ".join(str(p) for p in existing)
        print(f"error: run folders exist ({names}); pass --overwrite or another --out", file=sys.stderr)
        return 2
    for path in existing:
        shutil.rmtree(path)

    threads = configs[0].torch_threads
    if threads:
        torch.set_num_threads(threads)
    machine = f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    o = args.options
    # the periodic curves still evaluate --train_level
    trained_on = "HOPE's scene schedule" if o.get("scene_schedule") else args.train_level
    budget = (
        f"{args.steps} steps per run (random actions for the first {o['learning_starts']}, then "
        f"{o['updates_per_step']} updates per step), train level {trained_on}"
    )
    sizes = ", ".join(f"{k} {v}" for k, v in o.items() if k not in ("progress", "save_interval"))
    evals = (
        f"{args.eval_episodes} deterministic episodes per level (scene seeds {args.eval_seed}...), "
        f"{'HOPE protocol ' + str(HOPE_PROTOCOL) if args.protocol == 'hope' else 'training episode rules'}, "
        f"curves: {args.curve_episodes} episodes every {args.eval_interval} steps"
    )
    print(f"machine: {machine}")
    print(f"budget: {budget}")
    print(f"config: hope_sac, Parking-v0, {sizes}")
    print(f"evaluation: {evals}\n", flush=True)

    runs: list[dict[str, Any]] = []
    for cfg in configs:
        res = train_and_evaluate(cfg, args)
        if res is None:
            print(f"{cfg.run_name}: interrupted; stopping here", flush=True)
            break
        runs.append(res)
        per_level = ", ".join(f"{lvl} {r['success_rate']:.2f}" for lvl, r in res["levels"].items())
        print(
            f"{cfg.fusion:<9} seed {cfg.seed}: untrained {res['untrained']['success_rate']:.2f}, "
            f"trained {per_level}; {res['train_episodes']} episodes, {res['updates']} updates, "
            f"{res['train_minutes']:.1f} min train + {res['eval_minutes']:.1f} min eval",
            flush=True,
        )
    if not runs:
        return 1

    cols = table_columns(runs, args)
    table = aggregate(runs, cols)
    title = (
        f"Parking-v0 hope_sac, trained on {trained_on} for {args.steps} steps; success rate, "
        f"mean +- std over seeds, {args.eval_episodes} episodes per level"
    )
    print(f"\n{title}")
    print(text_table(table, cols))

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine,
        "budget": budget,
        "evaluation": evals,
        "train_level": args.train_level,
        "eval_levels": args.eval_levels,
        "steps": args.steps,
        "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "protocol": HOPE_PROTOCOL if args.protocol == "hope" else "train",
        "eval_interval": args.eval_interval,
        "curve_episodes": args.curve_episodes,
        "options": args.options,
        "columns": [{"key": k, "header": h} for k, h in cols],
        "table": table,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(jsonable(results), indent=2))
    md = [
        f"# {title}",
        "",
        f"- machine: {machine}",
        f"- budget: {budget}",
        f"- config: hope_sac, Parking-v0, {sizes}",
        f"- evaluation: {evals}",
        "",
        markdown_table(table, cols),
        "",
    ]
    (args.out / "results.md").write_text("\n".join(md))
    print(f"\ntable: {args.out / 'results.md'}, {args.out / 'results.json'}")

    try:
        from vmamba_rl.viz import plot_runs

        fig = plot_runs([r["run_dir"] for r in runs], str(args.out / "parking_learning.png"))
        print(f"curves: {fig['figure']}")
    except (ImportError, ValueError) as e:
        print(f"(no figure: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
