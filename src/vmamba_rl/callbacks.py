"""Callbacks: everything the training loop does besides collecting and updating.

A callback subclasses :class:`Callback` and overrides the hooks it needs; :class:`vmamba_rl.training.
Trainer` calls them in list order at these points:

- ``on_start(trainer)``: once, before the first collection (after a resume's state is loaded);
- ``on_episode_end(trainer, record)``: for every finished training episode, in environment order
  (``record``: :func:`vmamba_rl.collector.episode_record` plus ``step``, ``episode``, ``env``);
- ``on_update(trainer, metrics)``: after every gradient update (``trainer.agent.total_it`` counts them);
- ``on_collect(trainer, result)``: after each collection step and its updates (``result``:
  :class:`vmamba_rl.collector.CollectResult`; ``trainer.step`` already counts its decisions);
- ``on_end(trainer)``: once, when the loop stops (budget reached, interrupted or failed).

``state_dict()`` / ``load_state_dict(state)`` carry a callback's state through checkpoints, under its
``name``. The built-in ones (:func:`default_callbacks`): CSV / TensorBoard logging, the curriculum, the
NaN stop, evaluation with ``best.pt``, checkpoints, the progress bar. Add your own with
``Trainer(cfg, callbacks=[MyCallback()])``.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vmamba_rl.agents.base import NonFiniteError
from vmamba_rl.checkpoint import atomic_torch_save
from vmamba_rl.evaluation import EVAL_SEED, METRIC_KEYS, evaluate

if TYPE_CHECKING:
    from vmamba_rl.collector import CollectResult
    from vmamba_rl.training import Trainer

BEST = "best.pt"

EPISODE_FIELDS = [
    "step", "episode", "env", "return", "length", "success", "collision", "out_of_bounds", "timeout",
    "path_length", "stage", "time",
]  # fmt: skip
EVAL_FIELDS = ["step", "episodes", *METRIC_KEYS, "time"]
UPDATE_FIELDS = [
    "step", "update", "critic_loss", "actor_loss", "q1", "q2", "target_q", "noise_sigma", "alpha", "entropy",
    "critic_grad_norm", "visual_spread", "actor_candidate_wins", "updates_per_s", "steps_per_s",
]  # fmt: skip


class Callback:
    """Base class: every hook does nothing (see the module docstring for when each is called)."""

    name = "callback"

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_episode_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass

    def on_update(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_collect(self, trainer: Trainer, result: CollectResult) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CsvLog:
    """Append-only CSV with a fixed header written once (survives resume).

    ``truncate_to``: bytes to keep of an existing file (what a resumed run's checkpoint recorded), so
    rows written after that checkpoint are not written twice."""

    def __init__(self, path: Path, fields: list[str], truncate_to: int | None = None) -> None:
        if truncate_to is not None and path.exists() and path.stat().st_size > truncate_to:
            with open(path, "r+b") as f:
                f.truncate(truncate_to)
        new = not path.exists() or path.stat().st_size == 0
        if not new:  # a resumed run keeps its file's columns (an older version may have had fewer)
            with open(path, newline="") as f:
                fields = next(csv.reader(f), fields)
        self.path, self.fields = path, fields
        self.f = open(path, "a", newline="")  # noqa: SIM115
        self.w = csv.DictWriter(self.f, fieldnames=fields, extrasaction="ignore")
        if new:
            self.w.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.w.writerow(row)
        self.f.flush()

    def size(self) -> int:
        """Bytes written so far (every row is flushed)."""
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


class Logger(Callback):
    """``episodes.csv``, ``updates.csv`` (every ``log_interval`` updates), lost transitions, TensorBoard."""

    name = "logger"

    def __init__(self, log_interval: int = 100) -> None:
        self.log_interval = int(log_interval)
        self.lost = 0
        self.sizes: dict[str, int] = {}  # CSV lengths at the checkpoint a run resumed from

    def on_start(self, trainer: Trainer) -> None:
        d = trainer.run_dir
        self.episodes_csv = CsvLog(d / "episodes.csv", EPISODE_FIELDS, self.sizes.get("episodes.csv"))
        self.updates_csv = CsvLog(d / "updates.csv", UPDATE_FIELDS, self.sizes.get("updates.csv"))
        self.t0, self.step0, self.updates = time.time(), trainer.step, 0

    def on_episode_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        row = {k: int(v) if isinstance(v, bool) else v for k, v in record.items()}
        self.episodes_csv.write(row | {"time": time.time()})
        trainer.tb.add_scalar("episode/return", record["return"], trainer.step)
        trainer.tb.add_scalar("episode/success", int(record["success"]), trainer.step)

    def on_update(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.updates += 1
        if trainer.agent.total_it % self.log_interval:
            return
        dt = max(time.time() - self.t0, 1e-9)
        row = dict(
            metrics,
            step=trainer.step,
            update=trainer.agent.total_it,
            updates_per_s=self.updates / dt,
            steps_per_s=(trainer.step - self.step0) / dt,
        )
        self.updates_csv.write(row)
        for k, v in metrics.items():
            if isinstance(v, float) and math.isfinite(v):
                trainer.tb.add_scalar(f"train/{k}", v, trainer.step)

    def on_collect(self, trainer: Trainer, result: CollectResult) -> None:
        if not result.lost and not result.faults:
            return
        self.lost += result.lost
        trainer.tb.add_scalar("collect/lost_transitions", self.lost, trainer.step)
        if not trainer.quiet:
            for f in result.faults:
                print(
                    f"\nwarning: {f}; the broken episode was discarded ({self.lost} transitions lost so far)"
                )

    def on_end(self, trainer: Trainer) -> None:
        for log in (getattr(self, "episodes_csv", None), getattr(self, "updates_csv", None)):
            if log is not None:
                log.close()

    def state_dict(self) -> dict[str, Any]:
        logs = {
            "episodes.csv": getattr(self, "episodes_csv", None),
            "updates.csv": getattr(self, "updates_csv", None),
        }
        return {"lost": self.lost, "sizes": {k: log.size() for k, log in logs.items() if log is not None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lost = int(state.get("lost", 0))
        self.sizes = {k: int(v) for k, v in state.get("sizes", {}).items()}


class Curriculum(Callback):
    """``--curriculum``: train on easier stages first, moving on once the training success rate over
    ``window`` episodes of the stage reaches ``threshold``; the last stage is the task itself."""

    name = "curriculum"

    def __init__(self, stages: list[dict[str, Any]], threshold: float, window: int) -> None:
        self.stages, self.threshold, self.window = list(stages), float(threshold), int(window)
        self.stage = 0
        self.successes: list[int] = []

    def overrides(self) -> dict[str, Any] | None:
        """Environment keywords of the current stage (None = the task)."""
        return self.stages[self.stage] if self.stage < len(self.stages) else None

    def on_episode_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.stage >= len(self.stages):
            return
        self.successes = (self.successes + [int(record["success"])])[-self.window :]
        rate = float(np.mean(self.successes))
        if len(self.successes) < self.window or rate < self.threshold:
            return
        self.stage += 1
        self.successes = []
        trainer.collector.set_env_overrides(self.overrides(), trainer.agent)
        trainer.tb.add_scalar("curriculum/stage", self.stage, trainer.step)
        if not trainer.quiet:
            what = "the task itself" if self.overrides() is None else f"{self.overrides()}"
            print(f"\ncurriculum: success {rate:.2f} at step {trainer.step}; stage {self.stage}: {what}")

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "successes": list(self.successes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state.get("stage", 0))
        self.successes = [int(x) for x in state.get("successes", [])]


class TrapRestart(Callback):
    """``--trap_check D``: D decisions into an attempt, restart the learner if the last 100 training
    episodes averaged fewer than ``min_length`` decisions and at most ``max_success`` of them succeeded.
    Why: a TD3 agent can settle on ending every episode at once (docs/results.md, "The crash-early
    trap"), a fixed point that its own replay keeps; a fresh learner escapes it with a new draw. Short
    episodes may also be quick successes (``max_success`` < 1 spares those). Uses training episodes
    only, never an evaluation."""

    name = "trap_restart"

    def __init__(self, check: int, min_length: float, max_restarts: int, max_success: float = 1.0) -> None:
        self.check, self.min_length, self.max_restarts = int(check), float(min_length), int(max_restarts)
        self.max_success = float(max_success)
        self.restarts, self.attempt_start, self.checked = 0, 0, False
        self.lengths: list[int] = []
        self.successes: list[int] = []

    def on_episode_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.lengths = (self.lengths + [int(record["length"])])[-100:]
        self.successes = (self.successes + [int(record["success"])])[-100:]

    def on_collect(self, trainer: Trainer, result: Any) -> None:
        if self.checked or trainer.step < self.attempt_start + self.check:
            return
        self.checked = True
        mean_length = float(np.mean(self.lengths)) if self.lengths else float("nan")
        # a checkpoint from before successes were kept has none: judged on the lengths, as it was then
        success = float(np.mean(self.successes)) if len(self.successes) == len(self.lengths) else 0.0
        if not mean_length < self.min_length or success > self.max_success:
            return
        if self.restarts >= self.max_restarts:
            return
        self.restarts += 1
        self.attempt_start, self.checked, self.lengths, self.successes = trainer.step, False, [], []
        trainer.restart_learner(self.restarts)
        trainer.tb.add_scalar("trap/restart", self.restarts, trainer.step)
        if not trainer.quiet:
            print(
                f"\ntrap check at step {trainer.step}: training episodes averaged {mean_length:.1f} "
                f"decisions (< {self.min_length}), {success:.0%} succeeded (<= {self.max_success:.0%}); "
                f"restart {self.restarts} of at most {self.max_restarts}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "attempt_start": self.attempt_start, "checked": self.checked,
                "lengths": list(self.lengths), "successes": list(self.successes)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restarts = int(state.get("restarts", 0))
        self.attempt_start = int(state.get("attempt_start", 0))
        self.checked = bool(state.get("checked", False))
        self.lengths = [int(x) for x in state.get("lengths", [])]
        self.successes = [int(x) for x in state.get("successes", [])]


class NaNStop(Callback):
    """Stop training at the first update whose metrics hold a NaN or inf (the agents already refuse to
    step on a non-finite loss); the message names the metric, the update and the last good checkpoint."""

    name = "nan_stop"

    def on_update(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            # actor_loss is NaN by design until the first delayed actor update
            if isinstance(v, float) and not math.isfinite(v) and not (k == "actor_loss" and math.isnan(v)):
                raise NonFiniteError(
                    f"non-finite {k} = {v} at update {trainer.agent.total_it}; training stopped "
                    f"({trainer.checkpoint_note()})"
                )


class Evaluation(Callback):
    """Every ``interval`` decisions: deterministic episodes on the task (seeds ``EVAL_SEED + seed``, ...),
    ``eval.csv`` / TensorBoard, and ``best.pt``, the agent of the best evaluation so far (success rate,
    then mean return). The evaluation that picked ``best.pt`` flatters it: re-score it on other seeds."""

    name = "evaluation"

    def __init__(self, interval: int, episodes: int, seed: int) -> None:
        self.interval, self.episodes, self.seed = int(interval), int(episodes), int(seed)
        # (success_rate, mean_return, step) of the evaluation saved in best.pt; None before the first one
        self.best: tuple[float, float, int] | None = None
        self.last: dict[str, Any] | None = None
        self.last_step = -1
        self.csv_size: int | None = None  # eval.csv's length at the checkpoint a run resumed from

    def on_start(self, trainer: Trainer) -> None:
        self.eval_csv = CsvLog(trainer.run_dir / "eval.csv", EVAL_FIELDS, self.csv_size)
        step = trainer.step
        self.next = (step // self.interval + 1) * self.interval if self.interval else math.inf

    def on_collect(self, trainer: Trainer, result: CollectResult) -> None:
        if trainer.step >= self.next:
            while self.next <= trainer.step:
                self.next += self.interval
            self.evaluate(trainer)

    def evaluate(self, trainer: Trainer, log: bool = True) -> dict[str, Any]:
        """Run the evaluation episodes; with ``log``, write the row, TensorBoard and ``best.pt``."""
        summary = evaluate(trainer.agent, trainer.eval_env, self.episodes, seed=EVAL_SEED + self.seed)
        if not log:
            return summary
        row = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
        row.update(step=trainer.step, time=time.time())
        self.eval_csv.write(row)
        for k, v in row.items():
            if k not in ("step", "time", "episodes"):
                trainer.tb.add_scalar(f"eval/{k}", v, trainer.step)
        self.last, self.last_step = summary, trainer.step
        self.keep_best(trainer, row)
        return summary

    def keep_best(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Save the agent to ``best.pt`` if this evaluation beats the best so far (success rate, then mean
        return: ties on success are common with few episodes)."""
        score = (float(row["success_rate"]), float(row["mean_return"]))
        if self.best is not None and score <= self.best[:2]:
            return
        self.best = (*score, int(row["step"]))
        state = trainer.agent.state_dict()
        state["eval"] = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        atomic_torch_save(state, trainer.run_dir / BEST)
        trainer.tb.add_scalar("eval/best_success_rate", score[0], trainer.step)

    def on_end(self, trainer: Trainer) -> None:
        if getattr(self, "eval_csv", None) is not None:
            self.eval_csv.close()

    def state_dict(self) -> dict[str, Any]:
        size = self.eval_csv.size() if getattr(self, "eval_csv", None) is not None else None
        best = None if self.best is None else list(self.best)
        return {"best": best, "csv_size": size, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        b = state.get("best")
        self.best = None if b is None else (float(b[0]), float(b[1]), int(b[2]))
        self.csv_size = state.get("csv_size")
        self.last_step = int(state.get("last_step", -1))


class Checkpoints(Callback):
    """The save unit (``checkpoint.pt`` + ``replay-<step>.npz``) at the first episode end after every
    ``interval`` decisions, and when a stop was requested (Ctrl-C), which then ends the loop."""

    name = "checkpoints"

    def __init__(self, interval: int) -> None:
        self.interval = int(interval)

    def on_start(self, trainer: Trainer) -> None:
        step = trainer.step
        self.next = (step // self.interval + 1) * self.interval if self.interval else math.inf

    def on_collect(self, trainer: Trainer, result: CollectResult) -> None:
        due = trainer.step >= self.next or trainer.stop_requested
        if not (due and result.episodes):
            return
        while self.next <= trainer.step:
            self.next += self.interval
        trainer.save_checkpoint()
        if trainer.stop_requested:
            trainer.stopped = True


class ProgressBar(Callback):
    """A tqdm bar over decisions with decisions/s, updates/s and the recent success rate and return."""

    name = "progress"

    def on_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.cfg.max_timesteps, initial=trainer.step, unit="step", dynamic_ncols=True
        )
        self.t0, self.step0, self.it0 = time.time(), trainer.step, trainer.agent.total_it
        self.recent: list[dict[str, Any]] = []

    def on_episode_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.recent = (self.recent + [record])[-20:]

    def on_collect(self, trainer: Trainer, result: CollectResult) -> None:
        self.bar.update(result.decisions)
        if result.episodes and self.recent:
            dt = max(time.time() - self.t0, 1e-9)
            self.bar.set_postfix(
                sps=f"{(trainer.step - self.step0) / dt:.0f}",
                ups=f"{(trainer.agent.total_it - self.it0) / dt:.1f}",
                succ=f"{np.mean([r['success'] for r in self.recent]):.2f}",
                ret=f"{np.mean([r['return'] for r in self.recent]):.1f}",
                refresh=False,
            )

    def on_end(self, trainer: Trainer) -> None:
        self.bar.close()


def default_callbacks(cfg: Any, quiet: bool) -> list[Callback]:
    """The built-in callbacks for a configuration, in the order the loop calls them."""
    cbs: list[Callback] = [Logger(cfg.log_interval)]
    if cfg.curriculum:
        cbs.append(Curriculum(cfg.curriculum, cfg.curriculum_threshold, cfg.curriculum_window))
    if cfg.trap_check:
        cbs.append(TrapRestart(cfg.trap_check, cfg.trap_min_length, cfg.trap_restarts, cfg.trap_max_success))
    cbs += [
        NaNStop(),
        Evaluation(cfg.eval_interval, cfg.eval_episodes, cfg.seed),
        Checkpoints(cfg.save_interval),
    ]
    if cfg.progress and not quiet:
        cbs.append(ProgressBar())
    return cbs
