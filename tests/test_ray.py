"""Ray collection: workers train a tiny agent, a killed worker loses only its open episode, every
worker down is a clear stop, and a missing Ray names the extra to install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import TINY_SAC, tiny_config
from vmamba_rl.callbacks import Callback, Logger
from vmamba_rl.training import Trainer

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _episodes_are_whole(buf, cut: int = 0) -> None:
    """In every stream, each stored episode but the newest ends with a terminated / truncated step: a
    broken episode left half in replay would show up as one that just stops. ``cut``: episodes per
    stream that may stop without a flag (closed by a resume or a new stage)."""
    C = buf.stream_capacity
    for s in range(buf.num_streams):
        a = np.arange(buf._oldest[s], buf._t[s])
        if a.size == 0:
            continue
        rows = s * C + a % C
        starts = buf._episode_start[rows]
        unflagged = []
        for e in np.unique(starts)[:-1]:
            last = rows[(starts == e) & buf._has_action[rows]][-1]
            if not (buf._terminated[last] or buf._truncated[last]):
                unflagged.append(int(e))
        assert len(unflagged) <= cut, f"stream {s}: episodes {unflagged} have no end"


def _ray_config(tmp_path, **kw):
    base = dict(
        max_timesteps=240, learning_starts=60, updates_per_step=0.1, scan_backend="chunked", ray_workers=2,
        envs_per_worker=2, ray_chunk=6, sync_interval=3, env_kwargs={"max_steps": 25}, level="easy",
    )  # fmt: skip
    return tiny_config(tmp_path, **{**base, **kw})


@pytest.mark.parametrize("algo", ["td3", "hope_sac"])
def test_two_workers_train_a_tiny_agent(tmp_path, algo):
    extra = dict(TINY_SAC, seq_len=3, buffer_size=2000) if algo == "hope_sac" else {}

    class UntilEveryEnvWrote(Callback):
        """Stops after 240 decisions once every environment has written (workers start at their own
        pace on a busy machine)."""

        def on_collect(self, trainer, result):
            if trainer.step >= 240 and all(
                n > 0 for n in trainer.agent.replay_buffer.counters()["num_transitions"]
            ):
                trainer.stop_requested = True

    cfg = _ray_config(tmp_path, algorithm_name=algo, run_name=algo, max_timesteps=100_000, **extra)
    tr = Trainer(cfg, quiet=True, callbacks=[UntilEveryEnvWrote()])
    assert tr.run() is None
    buf = tr.agent.replay_buffer
    assert tr.step >= 240 and tr.agent.total_it >= (240 - 60) // 10
    assert buf.num_streams == 4 and all(n > 0 for n in buf.counters()["num_transitions"])  # every env wrote
    assert len(buf) == tr.step
    assert tr.collector.synced_at >= 3  # weights went out after the first updates
    _episodes_are_whole(buf)
    rows = (tr.run_dir / "episodes.csv").read_text().splitlines()[1:]
    assert len(rows) == tr.episode > 0


class KillWorker(Callback):
    """Moves the environments to a new stage (``max_steps`` 8, as a curriculum would) and ray.kills
    worker 0 once, mid-episode (its stream holds an open episode in replay); then stops the run
    ``after_restart`` decisions after the restarted worker's first chunk arrived. Ray's restart takes
    seconds on a busy machine while worker 1 goes on collecting, so the run waits for it rather than
    ending at a fixed length (``max_timesteps`` is only the guard)."""

    def __init__(self, after: int, after_restart: int = 100) -> None:
        self.after, self.after_restart = after, after_restart
        self.killed_at = self.failed_at = self.restarted_at = None
        self.lengths_after: list[int] = []  # of worker 0's episodes after its restart

    def on_collect(self, trainer, result):
        buf, collector = trainer.agent.replay_buffer, trainer.collector
        if self.killed_at is None:
            if trainer.step >= self.after and buf._open[0]:
                collector.set_env_overrides({"max_steps": 8}, trainer.agent)
                ray.kill(collector.workers[0], no_restart=False)
                self.killed_at = trainer.step
            return
        if self.failed_at is None and any(f.startswith("Ray worker 0 failed") for f in result.faults):
            self.failed_at = trainer.step
        if self.failed_at is not None and self.restarted_at is None and collector.failures[0] == 0:
            self.restarted_at = trainer.step  # a chunk of the restarted worker was stored
        if self.restarted_at is not None and trainer.step >= self.restarted_at + self.after_restart:
            trainer.stop_requested = True

    def on_episode_end(self, trainer, record):
        if self.restarted_at is not None and record["env"] == 0:
            self.lengths_after.append(record["length"])


def test_a_killed_worker_is_restarted_with_the_current_stage_and_loses_only_its_open_episode(tmp_path):
    kill = KillWorker(after=100)
    cfg = _ray_config(tmp_path, envs_per_worker=1, max_timesteps=20_000, run_name="kill")
    tr = Trainer(cfg, quiet=True, callbacks=[kill])
    tr.run()
    logger = next(c for c in tr.callbacks if isinstance(c, Logger))
    assert kill.killed_at is not None and kill.failed_at is not None
    assert kill.restarted_at is not None, f"worker 0 sent nothing in {tr.step} decisions after its kill"
    assert tr.collector.down == set()  # one death is one failure: the restart does not fail it again
    assert logger.lost > 0  # the open episode of worker 0 was discarded and counted
    assert tr.step >= kill.restarted_at + 100  # training went on
    buf = tr.agent.replay_buffer
    _episodes_are_whole(buf, cut=1)  # worker 1's episode open at the stage change was closed
    # the restarted worker wrote again after the kill, in the stage set before it
    assert buf._num_transitions[0] > 0 and buf._t[0] > 0
    assert kill.lengths_after and max(kill.lengths_after) <= 8, kill.lengths_after


def test_every_worker_down_stops_with_their_names_and_keeps_the_checkpoint(tmp_path, capsys):
    from vmamba_rl.cli import main

    argv = [
        "train", "--max_timesteps", "200", "--learning_starts", "50", "--ray_workers", "2",
        "--scan_backend", "chunked", "--eval_episodes", "0", "--no-progress", "--log_dir", str(tmp_path),
        "--run_name", "down", "--worker_env_kwargs", '{"no_such_option": 1}', '{"no_such_option": 1}',
    ]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert (
        "every Ray worker is down (worker 0, worker 1)" in err and "no checkpoint had been saved yet" in err
    )


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    from vmamba_rl.collect_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        import_ray()
    with pytest.raises(ImportError, match="--ray_workers needs Ray"):
        Trainer(_ray_config(tmp_path, run_name="noray"), quiet=True)


def test_a_worker_whose_simulator_stops_answering_is_timed_out(tmp_path):
    """Worker 1's environment takes 30 s per step (a simulator that hangs): --worker_timeout_s after it
    started, it is killed and restarted, three times, then given up; worker 0 carries training on."""
    cfg = _ray_config(
        tmp_path, envs_per_worker=1, max_timesteps=100_000, run_name="hang", worker_timeout_s=4.0,
        worker_env_kwargs=[{}, {"step_latency_s": 30.0}],
    )  # fmt: skip
    failed: list[int] = []

    class Watch(Callback):
        def on_collect(self, trainer, result):
            failed.extend(w for w in (0, 1) for f in result.faults if f.startswith(f"Ray worker {w} "))
            if len(failed) >= 3:
                trainer.stop_requested = True

    tr = Trainer(cfg, quiet=True, callbacks=[Watch()])
    down = tr.collector.down  # the set the collector fills; kept after close
    assert tr.run() is None
    assert failed == [1, 1, 1] and down == {1}
    buf = tr.agent.replay_buffer
    assert buf._t[1] == 0 and buf._t[0] > 0 and tr.step > 0  # worker 1 wrote nothing, worker 0 all
    envs = {row.split(",")[2] for row in (tr.run_dir / "episodes.csv").read_text().splitlines()[1:]}
    assert envs == {"0"}


def test_a_ray_run_resumes_its_learner_replay_and_counters(tmp_path):
    cfg = _ray_config(tmp_path, run_name="resume", save_interval=50)
    part = Trainer(cfg, quiet=True)
    assert part.run(stop_at=120) is None
    stopped, stored = part.step, len(part.agent.replay_buffer)
    updates = part.agent.total_it
    resumed = Trainer(cfg, run_dir=part.run_dir, resume=True, quiet=True)
    assert resumed.step == stopped and len(resumed.agent.replay_buffer) == stored
    assert resumed.agent.total_it == updates
    assert not resumed.agent.replay_buffer._open.any()  # workers start fresh episodes
    resumed.run()
    assert resumed.step >= 240 and len(resumed.agent.replay_buffer) == resumed.step
    _episodes_are_whole(resumed.agent.replay_buffer, cut=1)  # the episodes open at the checkpoint
