"""Experience collection with Ray workers (``--ray_workers W --envs_per_worker N``).

Each worker is a Ray actor running a :class:`vmamba_rl.collector.LocalCollector` over its own N
environments with a CPU copy of the acting policy, one torch thread. The learner keeps one ``collect``
task in flight per worker; a finished task hands back a *chunk* (``--ray_chunk`` vector steps: the
transitions in order, plus markers where an episode broke or was closed) that the learner writes into
replay under the worker's streams (environment j of worker w is stream ``w * N + j``). Every
``--sync_interval`` gradient updates the learner puts the policy weights into the object store once
and sends that one reference to every worker.

Faults: a worker whose process dies (killed, out of memory), whose environment raises, whose chunk
takes longer than ``--worker_timeout_s`` after it started (a simulator that stopped answering), or that
takes longer than ``--worker_startup_s`` to start, is restarted by Ray; the
unfinished episodes of its streams are discarded from replay and counted as lost transitions, so no
broken window enters replay, and the other workers go on. A worker that fails ``MAX_WORKER_FAILURES``
times in a row is given up; when no worker is left the collector raises :class:`CollectorError`
naming them (the training loop keeps its last checkpoint).

Ray runs are not bit-reproducible: chunks arrive in the order the workers finish them. ``--resume``
restores the learner, replay and counters; workers start fresh episodes.

Pointing workers at different simulators: ``--worker_env_kwargs '{"ip": "10.0.0.2"}' '{"ip":
"10.0.0.3"}'`` gives worker w its own environment keywords over ``--env_kwargs`` (for AirSimEnv-v42 an
address and port per worker; see the README).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from vmamba_rl.collector import Collector, CollectorError, CollectResult, EnvBuilder, LocalCollector
from vmamba_rl.replay import NonFiniteTransitionError

MAX_WORKER_FAILURES = 3


def import_ray() -> Any:
    """``import ray``, or an error that names the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "--ray_workers needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
        ) from e
    return ray


class _ChunkRecorder:
    """Stands in for the agent (and its replay buffer) inside a worker's LocalCollector: acts with the
    policy copy and records the transitions, in order, instead of storing them."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.replay_buffer = self
        self.items: list[tuple] = []

    def act_batch(self, obs: dict[str, np.ndarray], explore: bool = True, noise: Any = None) -> np.ndarray:
        return self.agent.act_batch(obs, explore=explore, noise=noise)

    def make_noise(self, index: int) -> Any:
        return self.agent.make_noise(index)

    def reset_episode(self) -> None:
        self.agent.reset_episode()

    def store_transition(
        self, obs, action, reward, next_obs, terminated, truncated, *, stream, first
    ) -> None:
        self.items.append(("t", stream, obs, action, reward, next_obs, terminated, truncated, first))

    def discard_episode(self, stream: int) -> int:
        """Drop this chunk's transitions of the stream's open episode; the learner drops the rest."""
        start = len(self.items)
        for j in range(len(self.items) - 1, -1, -1):
            item = self.items[j]
            if item[1] != stream or item[0] != "t":
                continue
            if item[7] or item[6]:  # an earlier episode of the stream ended here
                break
            start = j
            if item[8]:  # the episode's first transition
                break
        dropped = [it for it in self.items[start:] if it[0] == "t" and it[1] == stream]
        self.items = [it for j, it in enumerate(self.items) if j < start or it[1] != stream]
        self.items.append(("discard", stream))
        return len(dropped)

    def end_episode(self, stream: int) -> None:
        self.items.append(("end", stream))


class CollectionWorker:
    """One Ray actor: N environments and a CPU copy of the policy (see the module docstring)."""

    def __init__(self, cfg_json: str, index: int, overrides: dict[str, Any] | None) -> None:
        import torch

        from vmamba_rl.agents import make_agent
        from vmamba_rl.config import Config

        torch.set_num_threads(1)
        cfg = Config.from_dict(json.loads(cfg_json))
        self.index, self.n = int(index), int(cfg.envs_per_worker)
        # Its own seeds: workers explore differently from each other and from the learner.
        cfg.set("seed", int(cfg.seed) + 1_000_003 * (self.index + 1))
        cfg.set("device", "cpu")
        self.cfg = cfg
        # this worker's own environment keywords (a simulator address), under the curriculum's
        self.env_base = (cfg.worker_env_kwargs or [{}] * (self.index + 1))[self.index]
        self.builder = EnvBuilder(cfg.to_json())
        probe = self._builder(overrides)()
        self.agent = make_agent(probe, None, cfg, device="cpu", num_streams=self.n)
        probe.reset(seed=0)  # warm-up (JIT compilation) belongs to the start, not to the first chunk's time
        probe.close()
        self.recorder = _ChunkRecorder(self.agent)
        self.collector = LocalCollector(
            [self._builder(overrides) for _ in range(self.n)],
            self.recorder,
            cfg.seed,
            "sync",
            self.index * self.n,
        )

    def _builder(self, overrides: dict[str, Any] | None) -> EnvBuilder:
        return self.builder.with_overrides({**self.env_base, **(overrides or {})})

    def ready(self) -> bool:
        """Answers once the worker has started (its first task after ``__init__``)."""
        return True

    def set_weights(self, state: dict[str, Any]) -> None:
        self.agent.load_policy_state(state)

    def set_overrides(self, overrides: dict[str, Any] | None) -> None:
        """Rebuild the environments for a curriculum stage (open episodes are closed in replay)."""
        self.collector.set_env_overrides({**self.env_base, **(overrides or {})}, self.recorder)

    def collect(self, steps: int, random_actions: bool, progress: float) -> tuple[list[tuple], CollectResult]:
        """``steps`` vector steps -> (chunk items in order, the steps' combined result)."""
        self.collector.set_progress(progress)
        total = CollectResult()
        for _ in range(steps):
            r = self.collector.collect(self.recorder, random_actions)
            total.decisions += r.decisions
            total.lost += r.lost
            total.faults += r.faults
            for rec in r.episodes:
                rec["env"] = self.index * self.n + rec["env"]
            total.episodes += r.episodes
        items, self.recorder.items = self.recorder.items, []
        return items, total

    def close(self) -> None:
        self.collector.close()


class RayCollector(Collector):
    """W Ray workers feeding the learner's replay (see the module docstring)."""

    def __init__(self, cfg: Any, agent: Any, overrides: dict[str, Any] | None) -> None:
        ray = import_ray()
        self.ray, self.cfg = ray, cfg
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            import os

            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if cfg.ray_address is None:  # a local Ray: enough logical CPUs for every worker
                kw["num_cpus"] = max(os.cpu_count() or 1, cfg.ray_workers + 1)
            ray.init(address=cfg.ray_address, **kw)
        self.W, self.n = int(cfg.ray_workers), int(cfg.envs_per_worker)
        self.num_envs = self.W * self.n
        self.cfg_json = cfg.to_json()
        self.overrides = overrides
        self.actor_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(CollectionWorker)
        self.started: dict[int, tuple[Any, float]] = {}  # worker -> (its ready() ref, start time)
        self.workers = [self._spawn(w) for w in range(self.W)]
        self.failures = [0] * self.W
        self.down: set[int] = set()
        self.pending: dict[Any, tuple[int, float]] = {}  # task ref -> (worker, start time)
        self.broken: set[int] = set()  # streams whose episode broke in replay; skipped until the next one
        self.progress = 0.0
        self.random_actions = True
        self.synced_at = -1
        self.sync_policy(agent, force=True)

    def _spawn(self, w: int) -> Any:
        worker = self.actor_cls.remote(self.cfg_json, w, self.overrides)
        self._starting(w, worker)
        return worker

    def _starting(self, w: int, worker: Any) -> None:
        """Worker w was (re)started: its chunks are timed from when it says it is ready."""
        self.started[w] = (worker.ready.remote(), time.monotonic())

    def _launch(self, w: int) -> None:
        ref = self.workers[w].collect.remote(self.cfg.ray_chunk, self.random_actions, self.progress)
        self.pending[ref] = (w, time.monotonic())

    def sync_policy(self, agent: Any, force: bool = False) -> None:
        if not force and agent.total_it - self.synced_at < self.cfg.sync_interval:
            return
        ref = self.ray.put(agent.policy_state())  # one put per broadcast, one reference for all workers
        for w, worker in enumerate(self.workers):
            if w not in self.down:
                worker.set_weights.remote(ref)
        self.synced_at = agent.total_it
        self._weights = ref

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)

    def collect(self, agent: Any, random_actions: bool) -> CollectResult:
        """Wait for at least one worker's chunk, store every chunk that is ready, relaunch those workers."""
        ray = self.ray
        self.random_actions = random_actions
        busy = {w for w, _ in self.pending.values()}
        for w in range(self.W):
            if w not in busy and w not in self.down:
                self._launch(w)
        result = CollectResult()
        while not result.decisions and not result.episodes:
            if not self.pending:
                names = ", ".join(f"worker {w}" for w in sorted(self.down))
                raise CollectorError(
                    f"every Ray worker is down ({names}), each failed {MAX_WORKER_FAILURES} times in a row"
                )
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            self._check_timeouts(agent, result)  # on every call: busy workers must not hide a hung one
            if not ready:
                continue
            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in ready:
                if ref not in self.pending:  # timed out just now
                    continue
                w, _ = self.pending.pop(ref)
                try:
                    items, res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                    self._failed(w, agent, result, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                self.failures[w] = 0
                self.started.pop(w, None)
                self._store(items, res, agent, result)
                self._launch(w)
        return result

    def _store(self, items: list[tuple], res: CollectResult, agent: Any, result: CollectResult) -> None:
        buf = agent.replay_buffer
        for item in items:
            if item[0] == "t":
                _, stream, o, a, r, o2, te, tr, first = item
                if stream in self.broken and not first:  # the rest of an episode that broke
                    result.lost += 1
                    continue
                self.broken.discard(stream)
                try:
                    agent.store_transition(o, a, r, o2, te, tr, stream=stream, first=first)
                except NonFiniteTransitionError as e:
                    lost = buf.discard_episode(stream)
                    result.lost += lost + 1
                    result.faults.append(f"environment {stream}: {e} ({lost + 1} transitions lost)")
                    self.broken.add(stream)
                    continue
                result.decisions += 1
            elif item[0] == "discard":
                result.lost += buf.discard_episode(item[1])
            else:
                buf.end_episode(item[1])
        result.lost += res.lost
        result.faults += res.faults
        result.episodes += res.episodes

    def _failed(self, w: int, agent: Any, result: CollectResult, why: str) -> None:
        """Worker w died or raised: discard its open episodes, restart it (Ray does), or give it up."""
        lost = sum(agent.replay_buffer.discard_episode(w * self.n + j) for j in range(self.n))
        result.lost += lost
        self.failures[w] += 1
        result.faults.append(f"Ray worker {w} failed ({why}); {lost} transitions of its open episodes lost")
        if self.failures[w] >= MAX_WORKER_FAILURES:
            self.down.add(w)
            return
        try:  # an environment error leaves the process alive: restart it for fresh environments
            self.ray.kill(self.workers[w], no_restart=False)
        except Exception:  # noqa: BLE001 - already dead: Ray restarts it by itself
            pass
        self._starting(w, self.workers[w])
        self.workers[w].set_weights.remote(self._weights)
        self._launch(w)

    def _check_timeouts(self, agent: Any, result: CollectResult) -> None:
        """Fail the workers that take too long: to start (``worker_startup_s``), or for a chunk after
        they started (``worker_timeout_s``)."""
        now = time.monotonic()
        for ref, (w, t0) in list(self.pending.items()):
            if w in self.started:
                ready_ref, t_start = self.started[w]
                done, _ = self.ray.wait([ready_ref], timeout=0)
                if done:  # started: the chunk's clock runs from now
                    del self.started[w]
                    self.pending[ref] = (w, now)
                    continue
                limit, t0, what = self.cfg.worker_startup_s, t_start, "did not start"
            else:
                limit, what = self.cfg.worker_timeout_s, "sent no chunk"
            if now - t0 > limit:
                self.pending.pop(ref)  # _failed kills the worker: Ray restarts it
                self._failed(w, agent, result, f"{what} within {limit:.0f} s")

    def set_env_overrides(self, overrides: dict[str, Any] | None, agent: Any) -> None:
        self.overrides = overrides
        for w, worker in enumerate(self.workers):
            if w not in self.down:
                worker.set_overrides.remote(overrides)

    def load_state_dict(self, state: dict[str, Any], agent: Any) -> None:
        agent.replay_buffer.end_episode()  # workers start fresh episodes

    def close(self) -> None:
        for worker in self.workers:
            try:
                self.ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers, self.pending = [], {}
        if self.owns_ray:
            self.ray.shutdown()
