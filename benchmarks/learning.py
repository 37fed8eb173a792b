"""The learning protocol on DroneNav-v0: train each algorithm for several seeds, score each run's final
policy on fresh episodes of every level, and write a table, curves and a JSON of the results.

    python benchmarks/learning.py --algorithms vmamba_td3 td3 --seeds 0 1 2 --steps 30000
    python benchmarks/learning.py --algorithms vmamba_td3 sb3_sac sb3_td3 --seeds 0 --jobs 2
    python benchmarks/learning.py --algorithms vmamba_td3 --extra '{"augment_shift": 4}' --out runs/drq
    python benchmarks/learning.py --score runs/my-run         # an existing run's final policy, same protocol

Algorithms: the project's (``vmamba_td3``, ``td3``, ``hope_sac``; ``--preset`` and ``--extra``
configure them, by default the cpu preset with the curriculum and exploration recipe of RECIPE) and,
with the ``[sb3]`` extra, Stable-Baselines3's ``sb3_sac`` and ``sb3_td3`` out of the box:
``MultiInputPolicy`` (NatureCNN on the current depth frame, the base vector beside it), batch 64,
gamma 0.98, one update per two decisions, the same ``--action_repeat``, no curriculum, no action noise
for TD3 (SB3's default).

Protocol: the final policy of each run (not a picked best) plays ``--score_episodes`` deterministic
episodes per level from seed ``SCORE_SEED`` (20000) on: seeds that neither training (episode seeds
from the run's own generator) nor the periodic evaluations (``EVAL_SEED`` 10000 + i) use. The table
gives the mean and the minimum over seeds per level, the minutes per run and the minutes until a
periodic evaluation first reached ``--reach`` success. Runs go to ``--out/<algorithm>-s<seed>``
(ordinary run folders: ``vmamba-rl plot`` and ``vmamba-rl eval`` work on them); ``results.json`` and
``learning.png`` / ``learning_minutes.png`` (periodic evaluations against decisions / minutes) go to
``--out``.
``--jobs 2`` trains two runs at a time with one torch thread each (their minutes then include sharing
the machine; the table says so).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_nav import go_to_goal  # noqa: E402  (the blind yardstick lives beside this script)
from vmamba_rl.config import NAV_RECIPE  # noqa: E402

PROJECT = ("vmamba_td3", "td3", "hope_sac")
SB3 = ("sb3_sac", "sb3_td3")
# The recipe the project's runs train with unless --extra overrides it (the cpu preset carries it too).
RECIPE: dict[str, Any] = NAV_RECIPE


def _base_config(args: argparse.Namespace, algorithm: str, seed: int, run_name: str) -> Any:
    from vmamba_rl.config import make_config

    extra = {**RECIPE, **json.loads(args.extra)} if algorithm in PROJECT else {}
    if algorithm in SB3:  # only the environment side matters: same task, level and action repeat
        algorithm, extra = "vmamba_td3", {"action_repeat": json.loads(args.extra).get("action_repeat", 3)}
    return make_config(
        args.preset,
        algorithm_name=algorithm,
        seed=seed,
        level=args.level,
        max_timesteps=args.steps,
        eval_interval=args.eval_interval,
        eval_episodes=args.eval_episodes,
        final_eval_episodes=0,  # score() plays the fresh episodes of every level
        save_interval=args.steps,
        log_dir=args.out,
        run_name=run_name,
        progress=False,
        **{**({"torch_threads": 1} if args.jobs > 1 else {}), **extra},  # --extra may name torch_threads too
    )


class BlindController:
    """The scripted go-to-goal controller of ``benchmarks/scripted_nav.py`` (it ignores the depth image)
    behind the agents' acting interface."""

    def __init__(self, env: Any) -> None:
        self.high = env.action_space.high

    def reset_episode(self) -> None:
        pass

    def act(self, obs_seq: dict[str, np.ndarray], explore: bool = False) -> np.ndarray:
        return go_to_goal(obs_seq["base"][-1], self.high)


def score(agent: Any, cfg: Any, levels: list[str], episodes: int) -> dict[str, dict[str, float]]:
    """The final policy on ``episodes`` fresh episodes (seeds SCORE_SEED + i) of each level, and on the
    episodes among them where the blind controller collides (``blind_collisions`` of them; ``avoided``:
    the share of those the policy completes)."""
    from vmamba_rl.envs.make import make_env
    from vmamba_rl.evaluation import SCORE_SEED, evaluate

    out = {}
    for level in levels:
        env = make_env(cfg, level=level)
        try:
            summary = evaluate(agent, env, episodes, seed=SCORE_SEED)
            blind = evaluate(BlindController(env), env, episodes, seed=SCORE_SEED)
        finally:
            env.close()
        hard = [i for i, r in enumerate(blind["records"]) if r["collision"]]
        records = summary.pop("records")
        out[level] = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        out[level].update(
            blind_success_rate=blind["success_rate"],
            blind_collisions=len(hard),
            avoided=float(np.mean([records[i]["success"] for i in hard])) if hard else float("nan"),
        )
    return out


def train_project(args: argparse.Namespace, algorithm: str, seed: int, run_name: str) -> tuple[Any, Any]:
    from vmamba_rl.training import Trainer

    cfg = _base_config(args, algorithm, seed, run_name)
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    return trainer.agent, cfg


class SB3Policy:
    """A Stable-Baselines3 model behind the project agents' acting interface (for ``evaluate``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def reset_episode(self) -> None:
        pass

    def act(self, obs_seq: dict[str, np.ndarray], explore: bool = False) -> np.ndarray:
        obs = {k: v[-1] for k, v in obs_seq.items()}  # the newest step of the K-step observation
        return self.model.predict(obs, deterministic=not explore)[0]


def train_sb3(args: argparse.Namespace, algorithm: str, seed: int, run_name: str) -> tuple[Any, Any]:
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.callbacks import BaseCallback

    from vmamba_rl.callbacks import EVAL_FIELDS
    from vmamba_rl.envs.make import make_env
    from vmamba_rl.evaluation import EVAL_SEED, evaluate

    cfg = _base_config(args, algorithm, seed, run_name)
    cfg.set("seq_len", 1)
    run_dir = Path(args.out) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        torch.set_num_threads(1)

    class LastStep(gym.ObservationWrapper):
        """K = 1 history -> the plain single-step Dict observation SB3 expects."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.observation_space = env.unwrapped.observation_space

        def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v[-1] for k, v in obs.items()}

    class PeriodicEval(BaseCallback):
        """eval.csv in the project's columns, every ``eval_interval`` decisions."""

        def __init__(self) -> None:
            super().__init__()
            self.env = make_env(cfg)
            self.file = open(run_dir / "eval.csv", "w", newline="")
            self.csv = csv.DictWriter(self.file, fieldnames=EVAL_FIELDS, extrasaction="ignore")
            self.csv.writeheader()

        def _on_step(self) -> bool:
            if args.eval_interval and self.num_timesteps % args.eval_interval == 0:
                summary = evaluate(SB3Policy(self.model), self.env, args.eval_episodes, seed=EVAL_SEED + seed)
                self.csv.writerow({**summary, "step": self.num_timesteps, "time": time.time()})
                self.file.flush()
            return True

    env = LastStep(make_env(cfg))
    env.reset(seed=seed)
    common = dict(batch_size=64, gamma=0.98, train_freq=2, gradient_steps=1, buffer_size=args.steps)
    model = (SAC if algorithm == "sb3_sac" else TD3)("MultiInputPolicy", env, seed=seed, verbose=0, **common)
    callback = PeriodicEval()
    try:
        model.learn(total_timesteps=args.steps, callback=callback)
    finally:
        callback.file.close()
        callback.env.close()
        env.close()
    (run_dir / "config.json").write_text(
        json.dumps({"algorithm_name": algorithm, "env_name": cfg.env_name, "sb3": common, "seed": seed})
    )
    model.save(run_dir / "model.zip")
    return SB3Policy(model), cfg


def minutes_to_reach(run_dir: Path, t0: float, threshold: float) -> float | None:
    """Minutes from the run's start until a periodic evaluation first scored >= ``threshold``."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        for row in csv.DictReader(f):
            if float(row["success_rate"]) >= threshold:
                return (float(row["time"]) - t0) / 60
    return None


def run_one(args: argparse.Namespace, algorithm: str, seed: int) -> dict[str, Any]:
    """Train one (algorithm, seed), score its final policy; returns the results row."""
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    run_name = f"{algorithm}-s{seed}"
    t0 = time.time()
    train = train_sb3 if algorithm in SB3 else train_project
    agent, cfg = train(args, algorithm, seed, run_name)
    minutes = (time.time() - t0) / 60
    scores = score(agent, cfg, args.score_levels, args.score_episodes)
    row = {
        "algorithm": algorithm,
        "seed": seed,
        "start_time": t0,
        "train_minutes": minutes,
        "minutes_to_reach": minutes_to_reach(Path(args.out) / run_name, t0, args.reach),
        "scores": scores,
    }
    (Path(args.out) / run_name / "score.json").write_text(json.dumps(row, indent=2))
    line = ", ".join(f"{lvl} {s['success_rate']:.2f}" for lvl, s in scores.items())
    print(f"{algorithm:<11} seed {seed}: {line} ({minutes:.1f} min)", flush=True)
    return row


def plot_minutes(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> Path:
    """Periodic-evaluation success against wall-clock minutes, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = dict(zip(args.algorithms, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in rows:
        with open(Path(args.out) / f"{r['algorithm']}-s{r['seed']}" / "eval.csv") as f:
            evals = list(csv.DictReader(f))
        x = [(float(e["time"]) - r["start_time"]) / 60 for e in evals]
        y = [float(e["success_rate"]) for e in evals]
        ax.plot(x, y, color=colors[r["algorithm"]], label=f"{r['algorithm']} s{r['seed']}", alpha=0.8)
    ax.axhline(args.reach, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="minutes", ylabel="periodic evaluation success", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: per algorithm, success mean / min over seeds per level, minutes, minutes to reach."""
    levels = args.score_levels
    head = ["algorithm", "seeds", *[f"{lvl} mean (min)" for lvl in levels], "collisions (first level)"]
    head += ["min per run", f"min to {args.reach:.2f}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for algo in args.algorithms:
        rs = [r for r in rows if r["algorithm"] == algo]
        if not rs:
            continue
        cells = [algo, str(len(rs))]
        for lvl in levels:
            s = np.array([r["scores"][lvl]["success_rate"] for r in rs])
            cells.append(f"{s.mean():.2f} ({s.min():.2f})")
        cells.append(f"{np.mean([r['scores'][levels[0]]['collision_rate'] for r in rs]):.2f}")
        cells.append(f"{np.mean([r['train_minutes'] for r in rs]):.1f}")
        reach = [r["minutes_to_reach"] for r in rs]
        cells.append(
            "never"
            if all(m is None for m in reach)
            else " / ".join("-" if m is None else f"{m:.0f}" for m in reach)
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def avoided_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: per level, the blind controller's success and crashes and, per algorithm, the share of
    the blind controller's crash episodes that the policy completes (mean over seeds)."""
    head = ["level", "blind success", "blind crashes", *[f"{a} completes" for a in args.algorithms]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lvl in args.score_levels:
        any_row = next(r for r in rows if lvl in r["scores"])["scores"][lvl]
        cells = [lvl, f"{any_row['blind_success_rate']:.2f}", str(any_row["blind_collisions"])]
        for algo in args.algorithms:
            v = [r["scores"][lvl]["avoided"] for r in rows if r["algorithm"] == algo]
            cells.append(f"{np.nanmean(v):.2f}" if v and np.isfinite(v).any() else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_runs(args: argparse.Namespace) -> None:
    """``--score``: the final policy (``checkpoint.pt``) of each run folder under the same protocol; prints
    a line per level and writes ``score.json`` into the run folder."""
    import torch

    from vmamba_rl.agents import make_agent
    from vmamba_rl.checkpoint import safe_torch_load
    from vmamba_rl.config import Config
    from vmamba_rl.envs.make import make_env
    from vmamba_rl.training import CHECKPOINT

    for run in args.score:
        state = safe_torch_load(Path(run) / CHECKPOINT)
        cfg = Config.from_dict(state["config"])
        env = make_env(cfg)
        agent = make_agent(env, None, cfg)
        env.close()
        agent.load_state_dict(state, where=run)
        with torch.no_grad():
            res = score(agent, cfg, args.score_levels, args.score_episodes)
        print(f"{run} (decision {state['loop']['step']}):")
        for level, r in res.items():
            print(
                f"  {level}: success {r['success_rate']:.2f}, collisions {r['collision_rate']:.2f}; blind "
                f"{r['blind_success_rate']:.2f}, completes {r['avoided']:.2f} of the blind's "
                f"{r['blind_collisions']} crash episodes"
            )
        (Path(run) / "score.json").write_text(
            json.dumps({"step": state["loop"]["step"], "levels": res}, indent=1)
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=["vmamba_td3", "td3"], choices=PROJECT + SB3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--level", default="easy", help="training level (a curriculum in --extra comes first)")
    p.add_argument("--score_levels", nargs="+", default=["easy", "medium", "hard"])
    p.add_argument("--score_episodes", type=int, default=100)
    p.add_argument("--steps", type=int, default=30000, help="agent decisions per run")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--eval_interval", type=int, default=3000)
    p.add_argument("--eval_episodes", type=int, default=20)
    p.add_argument("--reach", type=float, default=0.8, help="success of the minutes-to-reach column")
    p.add_argument("--extra", default="{}", help="JSON object of config overrides for the project's runs")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (one torch thread each)")
    p.add_argument("--out", default="runs/learning")
    p.add_argument(
        "--score", nargs="+", metavar="RUN", help="score the final policies of these run folders, no training"
    )
    args = p.parse_args()
    if args.score:
        score_runs(args)
        return
    if any(a in SB3 for a in args.algorithms):
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            p.error("sb3_sac / sb3_td3 need the [sb3] extra: pip install -e '.[sb3]'")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(a, s) for a in args.algorithms for s in args.seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run_one, [args] * len(jobs), *zip(*jobs, strict=True)))
    else:
        rows = [run_one(args, a, s) for a, s in jobs]
    from vmamba_rl.runtime import cpu_model

    md = (
        table(rows, args)
        + "\n\nOn the episodes where the blind controller collides:\n\n"
        + avoided_table(rows, args)
    )
    print(
        f"\nDroneNav-v0, trained on {args.level}, {args.steps} decisions, final policies on "
        f"{args.score_episodes} fresh episodes per level; {cpu_model()}, {os.cpu_count()} CPUs, "
        f"{args.jobs} run(s) at a time\n\n{md}"
    )
    (Path(args.out) / "results.json").write_text(
        json.dumps({"args": vars(args), "rows": rows, "table": md}, indent=2)
    )
    try:
        from vmamba_rl.viz import plot_runs

        res = plot_runs(
            [str(Path(args.out) / f"{a}-s{s}") for a, s in jobs], str(Path(args.out) / "learning.png")
        )
        minutes = plot_minutes(rows, args, Path(args.out) / "learning_minutes.png")
        print(f"\ncurves: {res['figure']} (decisions), {minutes} (minutes)")
    except (ImportError, ValueError) as e:
        print(f"(no figure: {e})")


if __name__ == "__main__":
    main()
