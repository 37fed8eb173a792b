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


def _episodes_are_whole(buf) -> None:
    """In every stream, each stored episode but the newest ends with a terminated / truncated step: a
    broken episode left half in replay would show up as one that just stops."""
    C = buf.stream_capacity
    for s in range(buf.num_streams):
        a = np.arange(buf._oldest[s], buf._t[s])
        if a.size == 0:
            continue
        rows = s * C + a % C
        starts = buf._episode_start[rows]
        for e in np.unique(starts)[:-1]:
            ep_rows = rows[(starts == e) & buf._has_action[rows]]
            last = ep_rows[-1]
            assert buf._terminated[last] or buf._truncated[last], f"stream {s}: episode {e} has no end"


def _ray_config(tmp_path, **kw):
    base = dict(
        max_timesteps=240, learning_starts=60, updates_per_step=0.1, scan_backend="chunked", ray_workers=2,
        envs_per_worker=2, ray_chunk=6, sync_interval=3, env_kwargs={"max_steps": 25}, level="easy",
    )  # fmt: skip
    return tiny_config(tmp_path, **{**base, **kw})


@pytest.mark.parametrize("algo", ["td3", "hope_sac"])
def test_two_workers_train_a_tiny_agent(tmp_path, algo):
    extra = dict(TINY_SAC, seq_len=3, buffer_size=2000) if algo == "hope_sac" else {}
    tr = Trainer(_ray_config(tmp_path, algorithm_name=algo, run_name=algo, **extra), quiet=True)
    tr.run()
    buf = tr.agent.replay_buffer
    assert tr.step >= 240 and tr.agent.total_it >= (240 - 60) // 10
    assert buf.num_streams == 4 and all(n > 0 for n in buf._num_transitions.tolist())  # every env wrote
    assert len(buf) == tr.step
    assert tr.collector.synced_at >= 3  # weights went out after the first updates
    _episodes_are_whole(buf)
    rows = (tr.run_dir / "episodes.csv").read_text().splitlines()[1:]
    assert len(rows) == tr.episode > 0


class KillWorker(Callback):
    """ray.kill worker 0 once, mid-episode (its stream holds an open episode in replay)."""

    def __init__(self, after: int) -> None:
        self.after, self.killed_at = after, None

    def on_collect(self, trainer, result):
        buf = trainer.agent.replay_buffer
        if self.killed_at is None and trainer.step >= self.after and buf._open[0]:
            ray.kill(trainer.collector.workers[0], no_restart=False)
            self.killed_at = trainer.step


def test_a_killed_worker_is_restarted_and_loses_only_its_open_episode(tmp_path):
    kill = KillWorker(after=100)
    cfg = _ray_config(tmp_path, envs_per_worker=1, max_timesteps=300, run_name="kill")
    tr = Trainer(cfg, quiet=True, callbacks=[kill])
    tr.run()
    logger = next(c for c in tr.callbacks if isinstance(c, Logger))
    assert kill.killed_at is not None
    assert logger.lost > 0  # the open episode of worker 0 was discarded and counted
    assert tr.step >= 300  # training went on
    buf = tr.agent.replay_buffer
    _episodes_are_whole(buf)
    # the restarted worker wrote again after the kill
    assert buf._num_transitions[0] > 0 and buf._t[0] > 0


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
