"""The off-policy loop shared by every algorithm: a collector, gradient updates, and callbacks.

::

    while decisions < max_timesteps:
        result = collector.collect(agent)      # environments -> replay (N decisions)
        updates_per_step * N gradient updates  # replay -> agent
        callbacks                              # logging, curriculum, NaN stop, evaluation, checkpoints

Run folder ``<log_dir>/<algorithm>-<env>-<time>/`` holds ``config.json``, ``episodes.csv``,
``updates.csv``, ``eval.csv``, TensorBoard event files, ``checkpoint.pt`` (agent + loop + collector
state), ``replay-<step>.npz`` and ``best.pt``: the agent of the best evaluation so far (success rate,
then mean return; ``vmamba-rl eval`` reads it like any checkpoint).

The save unit: the replay file is written first under a name of its own, then ``checkpoint.pt``, which
names that file with its SHA-256, its replay counters and the byte length of every CSV log, is renamed
into place: that rename is the commit. A kill before it leaves the previous unit whole (the new replay
file is a stale leftover, removed at the next start); a resume checks the replay file against the
checkpoint and cuts the logs back to the checkpoint's lengths, so no row appears twice.

Checkpoints are taken at episode ends, every episode starts from a seed drawn from the collector's own
generator, and the environments' open episodes are re-simulated on resume, so a resumed run continues
exactly as the uninterrupted one would (local collection, sync mode; see :mod:`vmamba_rl.collector`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmamba_rl.agents.base import BaseAgent, NonFiniteError
from vmamba_rl.callbacks import BEST, Callback, Curriculum, Evaluation, default_callbacks
from vmamba_rl.checkpoint import CheckpointError, atomic_torch_save, fault_point, safe_torch_load, sha256_file
from vmamba_rl.collector import Collector, CollectorError, LocalCollector, env_fns
from vmamba_rl.config import Config
from vmamba_rl.envs.make import last_frames, make_env  # noqa: F401  (their old home; users import them here)
from vmamba_rl.evaluation import SCORE_SEED, evaluate, format_table, strict_json

CHECKPOINT = "checkpoint.pt"
REPLAY_GLOB = "replay-*.npz"  # one per save: replay-<step>.npz
RUN_FILES = ("episodes.csv", "updates.csv", "eval.csv", BEST)  # what a run writes besides checkpoints
__all__ = ["BEST", "CHECKPOINT", "Callback", "RunFolderExistsError", "Trainer", "make_env"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file by a rename, so a kill never leaves half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunFolderExistsError(ValueError):
    """A new (not resumed) run was pointed at a folder that already holds a run."""


def make_collector(cfg: Config, agent: BaseAgent, overrides: dict[str, Any] | None) -> Collector:
    """The collector ``cfg`` asks for: Ray workers (``--ray_workers``) or local vector environments."""
    if cfg.ray_workers > 0:
        from vmamba_rl.collect_ray import RayCollector

        return RayCollector(cfg, agent, overrides)
    return LocalCollector(env_fns(cfg, cfg.num_envs, overrides), agent, cfg.seed, cfg.vector_mode)


class Trainer:
    """Owns the collector, the agent, the evaluation environment and the run folder; ``run()`` trains to
    ``max_timesteps`` decisions (summed over all environments).

    ``callbacks``: extra :class:`vmamba_rl.callbacks.Callback` objects, called after the built-in ones.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path | None = None,
        resume: bool = False,
        quiet: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        from vmamba_rl.agents import make_agent

        self.cfg = cfg
        self.quiet = quiet
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(cfg.log_dir) / (cfg.run_name or f"{cfg.algorithm_name}-{cfg.env_name}-{stamp}")
        self.run_dir = Path(run_dir)
        if not resume and (self.run_dir / CHECKPOINT).exists():
            # a new run here would append its logs to the old run's CSVs and replace its checkpoint
            raise RunFolderExistsError(
                f"run folder {self.run_dir} already holds a run; continue it with --resume "
                f"{self.run_dir}, or pick another --run_name / --log_dir"
            )
        if not resume:
            self._start_over()
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        from vmamba_rl.runtime import configure_cpu

        configure_cpu(cfg.torch_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.callbacks = default_callbacks(cfg, quiet) + list(callbacks or [])
        self.curriculum = next((c for c in self.callbacks if isinstance(c, Curriculum)), None)
        self.evaluation = next(c for c in self.callbacks if isinstance(c, Evaluation))
        self.eval_env = make_env(cfg)  # evaluation always runs the task itself
        self.agent: BaseAgent = make_agent(self.eval_env, None, cfg, num_streams=cfg.total_envs)
        self.step = 0  # decisions stored, over all environments
        self.episode = 0
        self.update_credit = 0.0
        self.learn_from = cfg.learning_starts  # random actions, no updates before (moved by a restart)
        self.stop_requested = False  # Ctrl-C or stop_at: save at the next episode end, then stop
        self.stopped = False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(
                e.errno, f"cannot create the run folder {self.run_dir}: {e.strerror} ({e.filename})"
            ) from e
        state = self._read_checkpoint() if resume else None
        self._remove_stale(state)
        if state is not None:  # the curriculum stage decides which environments the collector builds
            self._load_callbacks(state["loop"])
        attempt_cfg = cfg
        trap = next((c for c in self.callbacks if c.name == "trap_restart"), None)
        if trap is not None and trap.restarts:  # the checkpoint holds a later attempt's learner
            attempt_cfg = self.attempt_config(trap.restarts)
            self.agent = make_agent(self.eval_env, None, attempt_cfg, num_streams=cfg.total_envs)
        overrides = self.curriculum.overrides() if self.curriculum is not None else None
        self.collector = make_collector(attempt_cfg, self.agent, overrides)
        if state is not None:
            self._load_checkpoint(state)
        atomic_write_text(self.run_dir / "config.json", cfg.to_json())
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.run_dir))

    # --- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_note(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        ckpt = self.run_dir / CHECKPOINT
        if ckpt.exists():
            return f"the last good checkpoint {ckpt} is kept; continue with --resume {self.run_dir}"
        return "no checkpoint had been saved yet"

    def save_checkpoint(self) -> Path:
        """Write the save unit (module docstring): ``replay-<step>.npz`` (unless save_buffer is off), then
        ``checkpoint.pt`` (agent, loop, collector, callbacks, the replay file's name and fingerprint) as
        the commit; older replay files are removed after it. Taken at an episode end."""
        state = self.agent.state_dict()
        state["loop"] = {
            "step": self.step,
            "episode": self.episode,
            "update_credit": self.update_credit,
            "learn_from": self.learn_from,
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "collector": self.collector.state_dict(),
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
        }
        replay = None
        if self.cfg.save_buffer:
            buf = self.agent.replay_buffer
            replay = self.run_dir / f"replay-{self.step:09d}.npz"
            buf.save(str(replay))
            state["loop"]["replay"] = {
                "file": replay.name,
                "sha256": sha256_file(replay),
                "bytes": replay.stat().st_size,
                **buf.counters(),
            }
        fault_point("replay_written")
        path = self.run_dir / CHECKPOINT
        atomic_torch_save(state, path)  # the commit
        fault_point("committed")
        for old in self.run_dir.glob(REPLAY_GLOB):
            if replay is None or old.name != replay.name:
                old.unlink(missing_ok=True)
        return path

    def _read_checkpoint(self) -> dict[str, Any]:
        path = self.run_dir / CHECKPOINT
        state = safe_torch_load(path, map_location=self.agent.device)
        if "loop" not in state:
            raise CheckpointError(f"{str(path)!r} has no training-loop state; it cannot be resumed")
        if "collector" not in state["loop"]:
            raise CheckpointError(
                f"{str(path)!r} was written by a vmamba-rl from before the collector (no collector state): "
                "`vmamba-rl eval` reads it, but it cannot be resumed"
            )
        return state

    def _load_callbacks(self, loop: dict[str, Any]) -> None:
        saved = loop.get("callbacks", {})
        for c in self.callbacks:
            if c.name in saved:
                c.load_state_dict(saved[c.name])

    def _load_checkpoint(self, state: dict[str, Any]) -> None:
        path = self.run_dir / CHECKPOINT
        self.agent.load_state_dict(state, where=repr(str(path)))
        loop = state["loop"]
        self.step, self.episode = int(loop["step"]), int(loop["episode"])
        self.update_credit = float(loop["update_credit"])
        self.learn_from = int(loop.get("learn_from", self.cfg.learning_starts))
        torch.set_rng_state(loop["torch_rng"])
        pr = json.loads(loop["python_rng"])
        random.setstate((pr[0], tuple(pr[1]), pr[2]))
        self._load_replay(loop.get("replay"), path)
        self.collector.load_state_dict(loop["collector"], self.agent)

    def _load_replay(self, rec: dict[str, Any] | None, ckpt: Path) -> None:
        """Load the replay file the checkpoint names, refusing one that is not the file it saved."""
        if rec is None:
            if self.cfg.save_buffer:
                print(f"warning: {ckpt} was saved without a replay buffer; resuming with an empty one")
            return
        path = self.run_dir / rec["file"]
        where = f"{ckpt} (step {self.step}) was saved with replay file {path.name}"
        if not path.is_file():
            raise CheckpointError(f"{where}, which is missing; the run cannot resume exactly")
        size, digest = path.stat().st_size, sha256_file(path)
        if size != rec["bytes"] or digest != rec["sha256"]:
            raise CheckpointError(
                f"{where}, but that file changed since (size {size} vs {rec['bytes']} bytes, sha256 "
                f"{digest[:12]}... vs {rec['sha256'][:12]}...); refusing an inconsistent checkpoint and "
                "replay"
            )
        try:
            self.agent.replay_buffer.load(str(path))
        except ValueError as e:
            raise CheckpointError(f"{where}, which cannot be loaded: {e}") from e
        counters = self.agent.replay_buffer.counters()
        if counters != {k: rec[k] for k in counters}:
            raise CheckpointError(f"{where}, but its counters do not match the checkpoint's")

    def _start_over(self) -> None:
        """A new run in a folder without a checkpoint: remove what an earlier attempt left (it stopped
        before its first checkpoint), saying so."""
        d = self.run_dir
        leftovers = [d / f for f in RUN_FILES if (d / f).exists()]
        leftovers += list(d.glob("events.out.tfevents.*")) + list(d.glob(REPLAY_GLOB))
        if not leftovers:
            return
        print(
            f"run folder {d} holds no checkpoint (an earlier run stopped before its first one): starting "
            f"it over, removing {', '.join(sorted(p.name for p in leftovers))}"
        )
        for p in leftovers:
            p.unlink()

    def _remove_stale(self, state: dict[str, Any] | None) -> None:
        """Remove temporaries of interrupted saves and replay files no checkpoint names."""
        keep = (state or {}).get("loop", {}).get("replay", {}).get("file")
        for p in list(self.run_dir.glob("*.tmp")) + list(self.run_dir.glob(".*.tmp")):
            p.unlink(missing_ok=True)
        for p in self.run_dir.glob(REPLAY_GLOB):
            if p.name != keep:
                p.unlink(missing_ok=True)

    # --- the loop ---------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Evaluate now (``eval.csv``, TensorBoard, ``best.pt``); the summary of :func:`evaluate`."""
        return self.evaluation.evaluate(self)

    def _updates(self, step_before: int) -> None:
        """``updates_per_step`` gradient updates per decision stored after ``learning_starts``."""
        cfg = self.cfg
        fresh = self.step - max(step_before, self.learn_from)
        if fresh <= 0 or cfg.updates_per_step <= 0:
            return
        self.update_credit += cfg.updates_per_step * fresh
        if self.update_credit < 1.0:
            return
        progress = self.step / cfg.max_timesteps
        self.collector.set_progress(progress)  # exploration noise decays with training progress
        self.collector.set_paused(True)  # real-time simulators wait while the learner updates
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            metrics = self.agent.train(progress_ratio=progress)
            if metrics is not None:
                for c in self.callbacks:
                    c.on_update(self, metrics)
        self.collector.set_paused(False)
        self.collector.sync_policy(self.agent)

    def attempt_config(self, attempt: int) -> Config:
        """The configuration of learner attempt ``attempt`` (0 = the run's first; each ``--trap_check``
        restart counts one up): seed + 1000 * attempt and, after a restart, ``--trap_candidates``."""
        cfg = Config.from_dict(self.cfg.to_dict())
        if attempt:
            cfg.set("seed", self.cfg.seed + 1000 * attempt)
            if cfg.trap_candidates >= 0:
                cfg.set("explore_candidates", cfg.trap_candidates)
        return cfg

    def restart_learner(self, attempt: int) -> None:
        """A fresh agent (networks, optimizers, noise, empty replay; :meth:`attempt_config`) and
        collector, ``learning_starts`` random decisions from now, the curriculum back at its first
        stage; the decision count, the logs and the evaluations go on (``--trap_check``)."""
        from vmamba_rl.agents import make_agent

        cfg = self.attempt_config(attempt)
        torch.manual_seed(cfg.seed)
        self.collector.close()
        self.agent = make_agent(self.eval_env, None, cfg, num_streams=cfg.total_envs)
        if self.curriculum is not None:
            self.curriculum.load_state_dict({})
        overrides = self.curriculum.overrides() if self.curriculum is not None else None
        self.collector = make_collector(cfg, self.agent, overrides)
        self.learn_from, self.update_credit = self.step + cfg.learning_starts, 0.0

    def run(self, stop_at: int | None = None) -> dict[str, Any] | None:
        """Train until ``max_timesteps``; returns the final evaluation summary (None if eval is off).

        Ctrl-C (or reaching ``stop_at`` decisions, the same path used by tests) saves a checkpoint at the
        next episode end and returns None; ``--resume`` continues exactly.
        """
        cfg = self.cfg
        if not self.quiet:
            print(f"run folder: {self.run_dir}")
            print(self.agent.replay_buffer.memory_report())
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        try:
            for c in self.callbacks:
                c.on_start(self)
            while self.step < cfg.max_timesteps and not self.stopped:
                step_before = self.step
                result = self.collector.collect(self.agent, random_actions=self.step < self.learn_from)
                self.step += result.decisions
                for rec in result.episodes:
                    self.episode += 1
                    stage = self.curriculum.stage if self.curriculum is not None else 0
                    rec.update(step=self.step, episode=self.episode, stage=stage)
                    for c in self.callbacks:
                        c.on_episode_end(self, rec)
                self._updates(step_before)
                if stop_at is not None and self.step >= stop_at:
                    self.stop_requested = True
                for c in self.callbacks:
                    c.on_collect(self, result)
            if self.stopped:
                if not self.quiet:
                    print(
                        f"\ninterrupted at step {self.step}: checkpoint saved in {self.run_dir}; "
                        f"continue with --resume {self.run_dir}"
                    )
                return None
            return self._finish()
        except NonFiniteError as e:
            print(f"\nerror: {e}. {self.checkpoint_note()}")
            raise
        except Exception as e:
            from vmamba_rl.envs.errors import SimulatorConnectionError

            if isinstance(e, (SimulatorConnectionError, CollectorError)):
                raise type(e)(f"training stopped at step {self.step}: {e}; {self.checkpoint_note()}") from e
            raise
        finally:
            for c in self.callbacks:
                c.on_end(self)
            if old is not None:
                signal.signal(signal.SIGINT, old)
            self.close()

    def _finish(self) -> dict[str, Any] | None:
        """At the budget: the final checkpoint (open episodes recorded for resume) and evaluation."""
        self.save_checkpoint()
        n_final = self.cfg.final_eval_episodes
        if n_final > 0:
            # the final policy on fresh seeds: its score is not one the periodic evaluations chose it by
            final = evaluate(self.agent, self.eval_env, n_final, seed=SCORE_SEED + self.cfg.seed)
            records = final.pop("records", None)
            (self.run_dir / "final_eval.json").write_text(strict_json({**final, "step": self.step}))
            if records is not None:
                final["records"] = records
        elif self.cfg.eval_episodes <= 0:
            return None
        else:
            n_final = self.cfg.eval_episodes
            ev = self.evaluation
            if ev.last_step != self.step:
                final = self.evaluate()
            else:  # evaluated at this very step already (before a resume, too: the row is in eval.csv)
                final = ev.last if ev.last is not None else ev.evaluate(self, log=False)
        if not self.quiet:
            print(f"\nfinal evaluation after {self.step} steps ({n_final} episodes):")
            print(format_table(final))
            best = self.evaluation.best
            if best is not None:
                print(
                    f"best evaluation: success {best[0]:.2f}, return {best[1]:.1f} at step "
                    f"{best[2]}, saved in {self.run_dir / BEST}"
                )
        return final

    def close(self) -> None:
        self.tb.close()
        self.collector.close()
        self.eval_env.close()
