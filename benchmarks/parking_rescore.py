"""Score trained Parking-v0 runs again with parts of HOPE's hybrid turned off: what each part contributes.

    python benchmarks/parking_rescore.py runs/parking/hope_sac-mlp-normal-s{0,1,2}
    python benchmarks/parking_rescore.py RUN --episodes 100 --levels extreme --variants trained alone

Each run's final checkpoint (a run folder or a ``.pt``) is played deterministically on the same fresh
scenes as ``benchmarks/parking_learning.py`` scores (``--seed``, 500 per level by default, HOPE's episode
rules: collisions stop the car, 200 steps), once per variant:

- ``trained``: as it was trained,
- ``no_exits``: the Reeds-Shepp hand-off without the slot's exits (runs trained with ``--rs_exit_tree``),
- ``alone``: the policy without the hand-off (the action-mask post-processing stays as trained).

Prints the machine and a table (rows: variant; columns: success per level, mean and minimum over the
runs, and the bay / parallel split), also written to ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parking_learning import HOPE_PROTOCOL, LEVELS, evaluate_level, jsonable
from vmamba_rl.checkpoint import CheckpointError
from vmamba_rl.config import Config
from vmamba_rl.runtime import cpu_model
from vmamba_rl.viz.rollout import load_agent, load_checkpoint

# variant -> (rs_hybrid, rs_exit_tree) overrides; None keeps the run's own setting
VARIANTS: dict[str, tuple[bool | None, bool | None]] = {
    "trained": (None, None),
    "no_exits": (None, False),
    "alone": (False, False),
}


def applies(variant: str, cfg: Config) -> bool:
    """Whether ``variant`` changes anything for a run trained with ``cfg`` (``trained`` always applies)."""
    if variant == "no_exits":
        return bool(cfg.rs_hybrid and cfg.rs_exit_tree)
    if variant == "alone":
        return bool(cfg.rs_hybrid)
    return True


def rescore(
    run: str, trained: Config, variant: str, levels: list[str], episodes: int, seed: int
) -> dict[str, Any] | None:
    """One run (trained with ``trained``) under one variant -> per-level results
    (``parking_learning.level_result``); None if the variant does not apply to the run."""
    if not applies(variant, trained):
        return None
    rs_hybrid, rs_exit_tree = VARIANTS[variant]
    agent, env, cfg = load_agent(run, render_mode=None, rs_hybrid=rs_hybrid, rs_exit_tree=rs_exit_tree)
    env.close()
    return {lvl: evaluate_level(cfg, agent, lvl, episodes, seed) for lvl in levels}


def trained_config(run: str) -> Config:
    """The config a run was trained with (its checkpoint's)."""
    return load_checkpoint(run)[2]


def summarize_variant(results: list[dict[str, Any]], levels: list[str]) -> dict[str, Any]:
    """Per level: mean and min success over runs, and the mean per slot type."""
    row: dict[str, Any] = {"runs": len(results)}
    for lvl in levels:
        rates = [r[lvl]["success_rate"] for r in results]
        slots: dict[str, list[float]] = {}
        for r in results:
            for slot, s in r[lvl]["by_slot_type"].items():
                slots.setdefault(slot, []).append(s["success_rate"])
        row[lvl] = {
            "mean": float(np.mean(rates)),
            "min": float(np.min(rates)),
            "per_run": rates,
            "by_slot_type": {k: float(np.mean(v)) for k, v in sorted(slots.items())},
        }
    return row


def markdown(table: dict[str, dict[str, Any]], levels: list[str]) -> str:
    """Rows: variant; per level ``mean (min)`` and ``bay / parallel`` means where a level has both."""
    headers = ["variant", "runs"]
    for lvl in levels:
        headers.append(f"{lvl} mean (min)")
        if any(len(row[lvl]["by_slot_type"]) > 1 for row in table.values()):
            headers.append(f"{lvl} bay / parallel")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    for name, row in table.items():
        cells = [name, str(row["runs"])]
        for lvl in levels:
            cell = row[lvl]
            cells.append(f"{cell['mean']:.3f} ({cell['min']:.3f})")
            if f"{lvl} bay / parallel" in headers:
                s = cell["by_slot_type"]
                cells.append(" / ".join(f"{s[k]:.3f}" if k in s else "-" for k in ("bay", "parallel")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or checkpoints of hope_sac on Parking-v0")
    p.add_argument("--levels", nargs="+", default=["normal", "complex", "extreme"], choices=LEVELS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--episodes", type=int, default=500, help="episodes per level")
    p.add_argument("--seed", type=int, default=100_000, help="scene seed of the first episode")
    p.add_argument("--out", default="runs/parking_rescore")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    args.out = Path(args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    machine = f"{cpu_model()}, {torch.get_num_threads()} torch thread, torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"evaluation: {args.episodes} episodes per level (scene seeds {args.seed}...), HOPE protocol "
          f"{HOPE_PROTOCOL}\n", flush=True)  # fmt: skip
    try:  # every checkpoint is read before any scoring: a wrong path fails at once
        trained = {run: trained_config(run) for run in args.runs}
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table: dict[str, dict[str, Any]] = {}
    per_run: dict[str, dict[str, Any]] = {}
    for variant in args.variants:
        results = []
        for run in args.runs:
            t0 = time.time()
            res = rescore(run, trained[run], variant, args.levels, args.episodes, args.seed)
            if res is None:
                print(f"{variant:<9} {run}: does not apply (not trained with that part)", flush=True)
                continue
            results.append(res)
            per_run.setdefault(variant, {})[run] = res
            rates = ", ".join(f"{lvl} {r['success_rate']:.3f}" for lvl, r in res.items())
            print(f"{variant:<9} {run}: {rates} ({(time.time() - t0) / 60:.1f} min)", flush=True)
        if results:
            table[variant] = summarize_variant(results, args.levels)
    if not table:
        print("error: no variant applies to these runs", file=sys.stderr)
        return 2
    md = markdown(table, args.levels)
    print(f"\nsuccess rate per level, mean (min) over runs\n{md}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine,
        "episodes": args.episodes,
        "seed": args.seed,
        "protocol": HOPE_PROTOCOL,
        "runs": args.runs,
        "table": table,
        "per_run": per_run,
    }
    (args.out / "results.json").write_text(json.dumps(jsonable(results), indent=2))
    (args.out / "results.md").write_text(f"- machine: {machine}\n- runs: {', '.join(args.runs)}\n\n{md}\n")
    print(f"\ntable: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
