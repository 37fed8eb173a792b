"""Learning curves: success rate of vmamba_td3 and the td3 CNN baseline (several seeds each) on
DroneNav-v0 with a fixed step budget, written to a PNG with mean and spread across seeds.

    python benchmarks/learning.py                                    # cpu preset, easy, 3 seeds, 20k steps
    python benchmarks/learning.py --level empty --steps 6000 --seeds 0 1 --algorithms vmamba_td3
    python benchmarks/learning.py --extra '{"env_kwargs": {"max_steps": 100}}'

Runs are sequential (this machine has ~1 physical core: parallel runs only slow each other down).
Each run is an ordinary run folder under --out, so ``vmamba-rl plot`` and ``vmamba-rl eval`` work on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vmamba_rl.config import make_config
from vmamba_rl.training import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=["vmamba_td3", "td3"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--level", default="easy")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--eval_interval", type=int, default=2000)
    p.add_argument("--eval_episodes", type=int, default=20)
    p.add_argument("--extra", default="{}", help="JSON object of further config overrides")
    p.add_argument("--out", default="runs/learning")
    args = p.parse_args()
    extra = json.loads(args.extra)
    out = Path(args.out)
    rows = []
    for algo in args.algorithms:
        for seed in args.seeds:
            cfg = make_config(
                args.preset,
                algorithm_name=algo,
                seed=seed,
                level=args.level,
                max_timesteps=args.steps,
                eval_interval=args.eval_interval,
                eval_episodes=args.eval_episodes,
                save_interval=args.steps,
                log_dir=str(out),
                run_name=f"{algo}-{args.level}-s{seed}",
                progress=False,
                **extra,
            )
            t0 = time.time()
            final = Trainer(cfg, quiet=True).run()
            minutes = (time.time() - t0) / 60
            rows.append(
                (algo, seed, final["success_rate"], final["collision_rate"], final["mean_return"], minutes)
            )
            print(
                f"{algo:<12} seed {seed}: success {final['success_rate']:.2f}, collision "
                f"{final['collision_rate']:.2f}, return {final['mean_return']:.1f}, {minutes:.1f} min",
                flush=True,
            )
    print(
        f"\nDroneNav-v0 {args.level}, preset {args.preset}, {args.steps} steps, final evaluation "
        f"{args.eval_episodes} episodes per seed"
    )
    print(f"{'algorithm':<12} {'seeds':>5} {'success':>14} {'collision':>10} {'return':>9} {'min/run':>8}")
    for algo in args.algorithms:
        r = np.array([row[2:] for row in rows if row[0] == algo])
        print(
            f"{algo:<12} {len(r):>5} {r[:, 0].mean():>7.2f} +- {r[:, 0].std():.2f} {r[:, 1].mean():>10.2f} "
            f"{r[:, 2].mean():>9.1f} {r[:, 3].mean():>8.1f}"
        )
    try:
        from vmamba_rl.viz import plot_runs

        runs = [str(out / f"{a}-{args.level}-s{s}") for a in args.algorithms for s in args.seeds]
        res = plot_runs(runs, str(out / "learning.png"))
        print(f"\ncurves: {res['figure']}")
    except ImportError as e:
        print(f"(no figure: {e})")


if __name__ == "__main__":
    main()
