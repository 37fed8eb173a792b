"""The off-policy loop shared by every algorithm: collect, update, log, evaluate, checkpoint, resume.

Run folder ``<log_dir>/<algorithm>-<env>-<time>/`` holds ``config.json``, ``episodes.csv``,
``updates.csv``, ``eval.csv``, TensorBoard event files, ``checkpoint.pt`` (agent + loop state),
``replay.npz`` and ``best.pt``: the agent of the best evaluation so far (success rate, then mean return;
``vmamba-rl eval`` reads it like any checkpoint). Checkpoints are taken at episode boundaries, and every
episode starts from a seed drawn from the loop's own generator, so a resumed run continues exactly as
the uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from vmamba_rl.agents.base import BaseAgent, NonFiniteError
from vmamba_rl.checkpoint import CheckpointError, atomic_torch_save, safe_torch_load
from vmamba_rl.config import Config
from vmamba_rl.evaluation import METRIC_KEYS, evaluate, format_table

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
REPLAY = "replay.npz"


def make_env(
    cfg: Config,
    render_mode: str | None = None,
    level: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> gym.Env:
    """``gymnasium.make(env_name, level=...)``, reduced to ``--modalities`` if given, with
    ``--action_repeat``, wrapped in the K-step SequenceHistory the agents read.

    ``overrides``: environment keywords over ``--env_kwargs`` (a curriculum stage)."""
    import vmamba_rl.envs  # noqa: F401  (registration)
    from vmamba_rl.envs.wrappers import ActionRepeat, SequenceHistory

    kwargs: dict[str, Any] = {**(cfg.env_kwargs or {}), **(overrides or {})}
    lvl = level or cfg.level
    if lvl is not None:
        kwargs["level"] = lvl
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(cfg.env_name, **kwargs)
    except gym.error.Error as e:
        known = [k for k in gym.registry if k in ("DroneNav-v0", "Parking-v0", "AirSimEnv-v42")]
        raise ValueError(
            f"cannot make environment {cfg.env_name!r} ({e}); vmamba-rl provides {known}, "
            "or any registered Gymnasium id with Dict observations"
        ) from e
    if cfg.modalities is not None:
        available = list(getattr(env.observation_space, "spaces", {}))
        missing = [k for k in cfg.modalities if k not in available]
        if missing:
            env.close()
            raise ValueError(
                f"--modalities {missing} not in {cfg.env_name}'s observations; it has {available}"
            )
        env = gym.wrappers.FilterObservation(env, list(cfg.modalities))
    if cfg.action_repeat > 1:
        env = ActionRepeat(env, cfg.action_repeat)
    return SequenceHistory(env, cfg.seq_len)


def last_frames(obs_seq: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """K-step observation -> the newest single-step observation (what replay stores)."""
    return {k: v[-1] for k, v in obs_seq.items()}


class _CsvLog:
    """Append-only CSV with a fixed header written once (survives resume)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
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

    def close(self) -> None:
        self.f.close()


EPISODE_FIELDS = [
    "step",
    "episode",
    "return",
    "length",
    "success",
    "collision",
    "out_of_bounds",
    "timeout",
    "path_length",
    "stage",
    "time",
]
EVAL_FIELDS = ["step", "episodes", *METRIC_KEYS, "time"]
UPDATE_FIELDS = [
    "step",
    "update",
    "critic_loss",
    "actor_loss",
    "q1",
    "q2",
    "target_q",
    "noise_sigma",
    "alpha",
    "entropy",
    "critic_grad_norm",
    "updates_per_s",
    "steps_per_s",
]


class RunFolderExistsError(ValueError):
    """A new (not resumed) run was pointed at a folder that already holds a run."""


class Trainer:
    """Owns the environment(s), the agent and the run folder; ``run()`` trains to ``max_timesteps``."""

    def __init__(
        self, cfg: Config, run_dir: str | Path | None = None, resume: bool = False, quiet: bool = False
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
        try:
            from vmamba_rl.runtime import configure_cpu

            configure_cpu(cfg.torch_threads)
        except ImportError:  # pragma: no cover - runtime hygiene is optional
            pass
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # Curriculum: training runs stage 0, 1, ... of --curriculum and then the task; evaluation always
        # runs the task. stage_successes: the current stage's episode outcomes (the switch rule's input).
        self.stage = 0
        self.stage_successes: list[int] = []
        self.env = make_env(cfg, overrides=self._stage_overrides())
        self.eval_env = make_env(cfg)
        self.agent: BaseAgent = make_agent(self.env, None, cfg)
        self.rng = np.random.default_rng(cfg.seed)
        self.env.action_space.seed(cfg.seed)
        self.step = 0
        self.episode = 0
        self.update_credit = 0.0
        self.recent: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] | None = None
        # (success_rate, mean_return, step) of the evaluation saved in best.pt; None before the first one
        self.best: tuple[float, float, int] | None = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_checkpoint()
        (self.run_dir / "config.json").write_text(cfg.to_json())
        self.episodes_csv = _CsvLog(self.run_dir / "episodes.csv", EPISODE_FIELDS)
        self.eval_csv = _CsvLog(self.run_dir / "eval.csv", EVAL_FIELDS)
        self.updates_csv = _CsvLog(self.run_dir / "updates.csv", UPDATE_FIELDS)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.run_dir))

    # --- checkpoints ----------------------------------------------------------------------------------
    def _loop_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "episode": self.episode,
            "update_credit": self.update_credit,
            "rng": json.dumps(self.rng.bit_generator.state),  # 128-bit ints: kept as JSON text
            "action_space_rng": json.dumps(self.env.action_space.np_random.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "stage": self.stage,
            "stage_successes": json.dumps(self.stage_successes),
            "best": json.dumps(self.best),
        }

    def save_checkpoint(self, mid_episode: bool = False) -> Path:
        """Atomic ``checkpoint.pt`` + ``replay.npz`` (unless save_buffer is off), normally at episode end."""
        state = self.agent.state_dict()
        state["loop"] = self._loop_state() | {"mid_episode": mid_episode}
        if self.cfg.save_buffer:
            self.agent.replay_buffer.save(str(self.run_dir / REPLAY))
        path = self.run_dir / CHECKPOINT
        atomic_torch_save(state, path)
        return path

    def _load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT
        state = safe_torch_load(path, map_location=self.agent.device)
        self.agent.load_state_dict(state, where=repr(str(path)))
        loop = state.get("loop")
        if loop is None:
            raise CheckpointError(f"{str(path)!r} has no training-loop state; it cannot be resumed")
        self.step, self.episode = int(loop["step"]), int(loop["episode"])
        self.update_credit = float(loop["update_credit"])
        if int(loop.get("stage", 0)) != self.stage:
            self._set_stage(int(loop["stage"]))
        self.stage_successes = json.loads(loop.get("stage_successes", "[]"))
        best = json.loads(loop.get("best", "null"))
        self.best = None if best is None else (float(best[0]), float(best[1]), int(best[2]))
        self.rng.bit_generator.state = json.loads(loop["rng"])
        self.env.action_space.np_random.bit_generator.state = json.loads(loop["action_space_rng"])
        torch.set_rng_state(loop["torch_rng"])
        pr = json.loads(loop["python_rng"])
        random.setstate((pr[0], tuple(pr[1]), pr[2]))
        replay = self.run_dir / REPLAY
        if replay.exists():
            self.agent.replay_buffer.load(str(replay))
            if loop.get("mid_episode", False):
                self.agent.replay_buffer.end_episode()
        elif self.cfg.save_buffer:
            print(f"warning: {replay} not found; resuming with an empty replay buffer")

    # --- curriculum ---------------------------------------------------------------------------------
    def _stage_overrides(self) -> dict[str, Any] | None:
        stages = self.cfg.curriculum or []
        return stages[self.stage] if self.stage < len(stages) else None

    def _set_stage(self, stage: int) -> None:
        """Rebuild the training environment for ``stage`` (len(curriculum) = the task itself)."""
        rng_state = self.env.action_space.np_random.bit_generator.state
        self.env.close()
        self.stage = stage
        self.env = make_env(self.cfg, overrides=self._stage_overrides())
        self.env.action_space.seed(0)
        self.env.action_space.np_random.bit_generator.state = rng_state  # random actions continue as before
        self.stage_successes = []

    def _advance_curriculum(self, success: bool) -> bool:
        """Record an episode outcome; move to the next stage when the rule says so. True if it moved."""
        cfg = self.cfg
        if self.stage >= len(cfg.curriculum or []):
            return False
        self.stage_successes = (self.stage_successes + [int(success)])[-cfg.curriculum_window :]
        rate = float(np.mean(self.stage_successes))
        if len(self.stage_successes) < cfg.curriculum_window or rate < cfg.curriculum_threshold:
            return False
        self._set_stage(self.stage + 1)
        self.tb.add_scalar("curriculum/stage", self.stage, self.step)
        if not self.quiet:
            what = "the task itself" if self._stage_overrides() is None else f"{self._stage_overrides()}"
            print(f"\ncurriculum: success {rate:.2f} at step {self.step}; stage {self.stage}: {what}")
        return True

    # --- the loop ---------------------------------------------------------------------------------------
    def _new_seed(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))

    def _pause(self, paused: bool) -> None:
        # Real simulators (AirSim) pause during gradient updates; embedded environments have no such method.
        fn = getattr(self.env.unwrapped, "set_paused", None)
        if fn is not None:
            fn(paused)

    def evaluate(self) -> dict[str, Any]:
        summary = evaluate(self.agent, self.eval_env, self.cfg.eval_episodes, seed=10_000 + self.cfg.seed)
        row = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
        row.update(step=self.step, time=time.time())
        self.eval_csv.write(row)
        for k, v in row.items():
            if k not in ("step", "time", "episodes"):
                self.tb.add_scalar(f"eval/{k}", v, self.step)
        self.last_eval = summary
        self._keep_best(row)
        return summary

    def _keep_best(self, row: dict[str, Any]) -> None:
        """Save the agent to ``best.pt`` if this evaluation beats the best so far.

        Ordered by success rate, then mean return (ties on success are common with few episodes). A
        policy chosen this way is re-scored on fresh episodes (``vmamba-rl eval --seed``) before its
        number is reported: the evaluation that selected it is biased upwards."""
        score = (float(row["success_rate"]), float(row["mean_return"]))
        if self.best is not None and score <= self.best[:2]:
            return
        self.best = (*score, self.step)
        state = self.agent.state_dict()
        state["eval"] = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        atomic_torch_save(state, self.run_dir / BEST)
        self.tb.add_scalar("eval/best_success_rate", score[0], self.step)

    def run(self, stop_at: int | None = None) -> dict[str, Any] | None:
        """Train until ``max_timesteps``; returns the final evaluation summary (None if eval is off).

        Ctrl-C (or reaching ``stop_at`` steps, the same path used by tests) finishes the current
        episode, saves a checkpoint at that boundary and returns None; ``--resume`` continues exactly.
        """
        cfg, agent = self.cfg, self.agent
        if not self.quiet:
            print(f"run folder: {self.run_dir}")
            print(agent.replay_buffer.memory_report())
        pbar = None
        if cfg.progress and not self.quiet:
            from tqdm import tqdm

            pbar = tqdm(total=cfg.max_timesteps, initial=self.step, unit="step", dynamic_ncols=True)
        interrupted = False

        def _sigint(signum, frame):  # noqa: ARG001
            nonlocal interrupted
            interrupted = True

        old = signal.signal(signal.SIGINT, _sigint) if _in_main_thread() else None
        from vmamba_rl.envs.errors import SimulatorConnectionError

        # A simulator fault (SimulatorConnectionError from env.reset / env.step: AirSim stopped answering,
        # dropped the connection, sent a malformed image) must not poison training: the broken episode
        # leaves replay, the last checkpoint stays as it is, and the loop reconnects (the environment
        # retries with backoff) and starts a new episode. After max_sim_faults faults in a row without a
        # successful step it stops with a SimulatorConnectionError (the CLI exits with code 3).
        max_sim_faults, sim_faults = 3, 0

        def _new_episode(err: SimulatorConnectionError | None = None) -> tuple[Any, dict[str, Any]]:
            nonlocal sim_faults, ep_ret, ep_len
            while True:
                if err is not None:
                    dropped = agent.replay_buffer.discard_episode()
                    ep_ret, ep_len = 0.0, 0
                    sim_faults += 1
                    reconnect = getattr(self.env.unwrapped, "reconnect", None)
                    if sim_faults > max_sim_faults or reconnect is None:
                        ckpt = self.run_dir / CHECKPOINT
                        last = (
                            f"the last checkpoint {ckpt} is unchanged; continue with --resume {self.run_dir}"
                            if ckpt.exists()
                            else "no checkpoint had been saved yet"
                        )
                        raise SimulatorConnectionError(
                            f"simulator unavailable, training stopped at step {self.step} after "
                            f"{sim_faults} fault(s) in a row ({err}); {last}"
                        ) from err
                    if not self.quiet:
                        print(
                            f"\nwarning: {err}\n  discarded the broken episode ({dropped} transitions); "
                            f"reconnecting (attempt {sim_faults} of {max_sim_faults})"
                        )
                    try:
                        reconnect()
                    except SimulatorConnectionError as e:
                        err = e
                        continue
                try:
                    new_obs, new_info = self.env.reset(seed=self._new_seed())
                except SimulatorConnectionError as e:
                    err = e
                    continue
                agent.reset_episode()
                return new_obs, new_info

        ep_ret, ep_len, n_updates, t0, step0 = 0.0, 0, 0, time.time(), self.step
        next_save = (
            (self.step // cfg.save_interval + 1) * cfg.save_interval if cfg.save_interval else math.inf
        )
        next_eval = (
            (self.step // cfg.eval_interval + 1) * cfg.eval_interval if cfg.eval_interval else math.inf
        )
        try:
            obs, info = _new_episode()
            while self.step < cfg.max_timesteps:
                if self.step < cfg.learning_starts:
                    action = self.env.action_space.sample()
                else:
                    action = agent.act(obs, explore=True)
                try:
                    next_obs, reward, terminated, truncated, info = self.env.step(action)
                except SimulatorConnectionError as e:
                    obs, info = _new_episode(e)
                    continue
                sim_faults = 0
                agent.store_transition(
                    last_frames(obs), action, reward, last_frames(next_obs), terminated, truncated
                )
                obs = next_obs
                ep_ret += float(reward)
                ep_len += 1
                self.step += 1
                if self.step > cfg.learning_starts and cfg.updates_per_step > 0:
                    self.update_credit += cfg.updates_per_step
                    if self.update_credit >= 1.0:
                        self._pause(True)
                        while self.update_credit >= 1.0:
                            self.update_credit -= 1.0
                            metrics = agent.train(progress_ratio=self.step / cfg.max_timesteps)
                            if metrics is not None:
                                n_updates += 1
                                if agent.total_it % 100 == 0:
                                    self._log_update(metrics, n_updates, t0, step0)
                        self._pause(False)
                if pbar is not None:
                    pbar.update(1)
                if stop_at is not None and self.step >= stop_at:
                    interrupted = True
                if terminated or truncated:
                    self._end_episode(ep_ret, ep_len, info)
                    self._advance_curriculum(bool(info.get("is_success", False)))
                    if pbar is not None:
                        pbar.set_postfix(self._postfix(n_updates, t0, step0), refresh=False)
                    ep_ret, ep_len = 0.0, 0
                    if self.step >= next_eval:
                        next_eval += cfg.eval_interval
                        self.evaluate()
                    if self.step >= next_save or interrupted:
                        next_save += cfg.save_interval
                        self.save_checkpoint()
                    if interrupted:
                        break
                    obs, info = _new_episode()
            if pbar is not None:
                pbar.close()
            if interrupted:
                if not self.quiet:
                    print(
                        f"\ninterrupted at step {self.step}: checkpoint saved in {self.run_dir}; "
                        f"continue with --resume {self.run_dir}"
                    )
                return None
            # At the budget the episode may be unfinished: the checkpoint says so, and a resumed run with a
            # larger budget closes it in replay and starts a fresh episode.
            self.save_checkpoint(mid_episode=ep_len > 0)
            final = self.evaluate() if cfg.eval_episodes > 0 else None
            if final is not None and not self.quiet:
                print(f"\nfinal evaluation after {self.step} steps ({cfg.eval_episodes} episodes):")
                print(format_table(final))
                if self.best is not None:
                    print(
                        f"best evaluation: success {self.best[0]:.2f}, return {self.best[1]:.1f} at step "
                        f"{self.best[2]}, saved in {self.run_dir / BEST}"
                    )
            return final
        except NonFiniteError as e:
            if pbar is not None:
                pbar.close()
            print(f"\nerror: {e}. Last good checkpoint: {self.run_dir / CHECKPOINT}")
            raise
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            self.close()

    def _end_episode(self, ep_ret: float, ep_len: int, info: dict[str, Any]) -> None:
        self.episode += 1
        rec = {
            "step": self.step,
            "episode": self.episode,
            "return": ep_ret,
            "length": ep_len,
            "success": int(bool(info.get("is_success", False))),
            "collision": int(bool(info.get("is_collision", False))),
            "out_of_bounds": int(bool(info.get("is_out_of_bounds", False))),
            "timeout": int(bool(info.get("is_timeout", False))),
            "path_length": float(info.get("path_length", float("nan"))),
            "stage": self.stage,
            "time": time.time(),
        }
        self.episodes_csv.write(rec)
        self.tb.add_scalar("episode/return", ep_ret, self.step)
        self.tb.add_scalar("episode/success", rec["success"], self.step)
        self.recent = (self.recent + [rec])[-20:]

    def _postfix(self, n_updates: int, t0: float, step0: int) -> dict[str, str]:
        dt = max(time.time() - t0, 1e-9)
        succ = np.mean([r["success"] for r in self.recent]) if self.recent else 0.0
        ret = np.mean([r["return"] for r in self.recent]) if self.recent else 0.0
        return {
            "sps": f"{(self.step - step0) / dt:.0f}",
            "ups": f"{n_updates / dt:.1f}",
            "succ": f"{succ:.2f}",
            "ret": f"{ret:.1f}",
        }

    def _log_update(self, metrics: dict[str, float], n_updates: int, t0: float, step0: int) -> None:
        dt = max(time.time() - t0, 1e-9)
        row = dict(
            metrics,
            step=self.step,
            update=self.agent.total_it,
            updates_per_s=n_updates / dt,
            steps_per_s=(self.step - step0) / dt,
        )
        self.updates_csv.write(row)
        for k, v in metrics.items():
            if isinstance(v, float) and math.isfinite(v):
                self.tb.add_scalar(f"train/{k}", v, self.step)

    def close(self) -> None:
        for c in (self.episodes_csv, self.eval_csv, self.updates_csv):
            c.close()
        self.tb.close()
        self.env.close()
        self.eval_env.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
