"""The off-policy loop shared by every algorithm: a collector, gradient updates, and callbacks.

::

    while decisions < max_timesteps:
        result = collector.collect(agent)      # environments -> replay (N decisions)
        updates_per_step * N gradient updates  # replay -> agent
        callbacks                              # logging, curriculum, NaN stop, evaluation, checkpoints

Run folder ``<log_dir>/<algorithm>-<env>-<time>/`` holds ``config.json``, ``episodes.csv``,
``updates.csv``, ``eval.csv``, TensorBoard event files, ``checkpoint.pt`` (agent + loop + collector
state), ``replay.npz`` and ``best.pt``: the agent of the best evaluation so far (success rate, then mean
return; ``vmamba-rl eval`` reads it like any checkpoint). Checkpoints are taken at episode ends, every
episode starts from a seed drawn from the collector's own generator, and the environments' open
episodes are re-simulated on resume, so a resumed run continues exactly as the uninterrupted one would
(local collection, sync mode; see :mod:`vmamba_rl.collector`).
"""

from __future__ import annotations

import json
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
from vmamba_rl.checkpoint import CheckpointError, atomic_torch_save, safe_torch_load
from vmamba_rl.collector import Collector, CollectorError, LocalCollector, env_fns
from vmamba_rl.config import Config
from vmamba_rl.envs.make import last_frames, make_env  # noqa: F401  (their old home; users import them here)
from vmamba_rl.evaluation import format_table

CHECKPOINT = "checkpoint.pt"
REPLAY = "replay.npz"
__all__ = ["BEST", "CHECKPOINT", "REPLAY", "Callback", "RunFolderExistsError", "Trainer", "make_env"]


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
        from vmamba_rl.agents.vmamba_td3 import make_agent

        self.cfg = cfg
        self.quiet = quiet
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(cfg.log_dir) / (cfg.run_name or f"{cfg.algorithm_name}-{cfg.env_name}-{stamp}")
        self.run_dir = Path(run_dir)
        if not resume and any((self.run_dir / f).exists() for f in ("episodes.csv", CHECKPOINT)):
            # a new run here would append its logs to the old run's CSVs and replace its checkpoint
            raise RunFolderExistsError(
                f"run folder {self.run_dir} already holds a run; continue it with --resume "
                f"{self.run_dir}, or pick another --run_name / --log_dir"
            )
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
        self.stop_requested = False  # Ctrl-C or stop_at: save at the next episode end, then stop
        self.stopped = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_checkpoint() if resume else None
        if state is not None:  # the curriculum stage decides which environments the collector builds
            self._load_callbacks(state["loop"])
        overrides = self.curriculum.overrides() if self.curriculum is not None else None
        self.collector = make_collector(cfg, self.agent, overrides)
        if state is not None:
            self._load_checkpoint(state)
        (self.run_dir / "config.json").write_text(cfg.to_json())
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
        """Atomic ``checkpoint.pt`` (agent, loop, collector, callbacks) + ``replay.npz`` (unless
        save_buffer is off), taken at an episode end."""
        state = self.agent.state_dict()
        state["loop"] = {
            "step": self.step,
            "episode": self.episode,
            "update_credit": self.update_credit,
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "collector": self.collector.state_dict(),
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
        }
        if self.cfg.save_buffer:
            self.agent.replay_buffer.save(str(self.run_dir / REPLAY))
        path = self.run_dir / CHECKPOINT
        atomic_torch_save(state, path)
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
        torch.set_rng_state(loop["torch_rng"])
        pr = json.loads(loop["python_rng"])
        random.setstate((pr[0], tuple(pr[1]), pr[2]))
        replay = self.run_dir / REPLAY
        if replay.exists():
            self.agent.replay_buffer.load(str(replay))
        elif self.cfg.save_buffer:
            print(f"warning: {replay} not found; resuming with an empty replay buffer")
        self.collector.load_state_dict(loop["collector"], self.agent)

    # --- the loop ---------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Evaluate now (``eval.csv``, TensorBoard, ``best.pt``); the summary of :func:`evaluate`."""
        return self.evaluation.evaluate(self)

    def _updates(self, step_before: int) -> None:
        """``updates_per_step`` gradient updates per decision stored after ``learning_starts``."""
        cfg = self.cfg
        fresh = self.step - max(step_before, cfg.learning_starts)
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

    def run(self, stop_at: int | None = None) -> dict[str, Any] | None:
        """Train until ``max_timesteps``; returns the final evaluation summary (None if eval is off).

        Ctrl-C (or reaching ``stop_at`` decisions, the same path used by tests) saves a checkpoint at the
        next episode end and returns None; ``--resume`` continues exactly.
        """
        cfg, agent = self.cfg, self.agent
        if not self.quiet:
            print(f"run folder: {self.run_dir}")
            print(agent.replay_buffer.memory_report())
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        try:
            for c in self.callbacks:
                c.on_start(self)
            while self.step < cfg.max_timesteps and not self.stopped:
                step_before = self.step
                result = self.collector.collect(agent, random_actions=self.step < cfg.learning_starts)
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
        if self.cfg.eval_episodes <= 0:
            return None
        ev = self.evaluation
        final = ev.last if ev.last_step == self.step and ev.last is not None else self.evaluate()
        if not self.quiet:
            print(f"\nfinal evaluation after {self.step} steps ({self.cfg.eval_episodes} episodes):")
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
