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
takes longer than ``--worker_startup_s`` to start, is restarted by Ray (a process that died without a
kill: a second kill would hit the restart); the unfinished episodes of its streams are discarded from
replay and counted as lost transitions, so no broken window enters replay, and the other workers go on.
No chunk is asked of a restarting worker until its ``ready()`` answers from the new process; it then gets
the current weights and, when the curriculum moved on since it was created, the current stage (Ray
restarts an actor with its creation arguments). One whose ``__init__`` raised is created anew. A worker
that fails ``MAX_WORKER_FAILURES`` times in a row is given up; when no worker is left the collector
raises :class:`CollectorError` naming them (the training loop keeps its last checkpoint).

Ray runs are not bit-reproducible: chunks arrive in the order the workers finish them. ``--resume``
restores the learner, replay and counters; workers start fresh episodes.

Pointing workers at different simulators: ``--worker_env_kwargs '{"ip": "10.0.0.2"}' '{"ip":
"10.0.0.3"}'`` gives worker w its own environment keywords over ``--env_kwargs`` (for AirSimEnv-v42 an
address and port per worker; see the README).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import numpy as np

from vmamba_rl.collector import Collector, CollectorError, CollectResult, EnvBuilder, LocalCollector
from vmamba_rl.replay import NonFiniteTransitionError

MAX_WORKER_FAILURES = 3


def _why(e: Exception) -> str:
    """A Ray error in one line: its type and the start of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


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
        self.token = uuid.uuid4().hex
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

    def ready(self) -> str:
        """Answers once the worker has started (its first task after ``__init__``), with a token drawn in
        ``__init__``: the learner tells a restarted process from the old one by it."""
        return self.token

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


class _Start:
    """A worker on its way up: the ``ready()`` ref it must answer (None while a retry waits), when it
    was (re)started, and when to ask again after Ray said it is still restarting."""

    def __init__(self, ref: Any, t0: float) -> None:
        self.ref, self.t0, self.retry_at = ref, t0, 0.0


class RayCollector(Collector):
    """W Ray workers feeding the learner's replay (see the module docstring)."""

    RETRY_S = 0.5  # how often to ask a restarting worker whether it is up

    def __init__(self, cfg: Any, agent: Any, overrides: dict[str, Any] | None) -> None:
        ray = import_ray()
        self.ray, self.cfg = ray, cfg
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if cfg.ray_address is None:  # a local Ray: enough logical CPUs for every worker
                kw["num_cpus"] = max(os.cpu_count() or 1, cfg.ray_workers + 1)
            ray.init(address=cfg.ray_address, **kw)
        self.W, self.n = int(cfg.ray_workers), int(cfg.envs_per_worker)
        self.num_envs = self.W * self.n
        self.cfg_json = cfg.to_json()
        self.overrides = overrides
        self.actor_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(CollectionWorker)
        self.started: dict[int, _Start] = {}  # workers not up yet: no chunk is asked of them
        self.spawned_with: dict[int, Any] = {}  # the overrides each actor was created with
        self.incarnation: dict[int, str] = {}  # worker -> the token its ready() last answered
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
        self.spawned_with[w] = self.overrides
        self.started[w] = _Start(worker.ready.remote(), time.monotonic())
        return worker

    def _launch(self, w: int) -> None:
        ref = self.workers[w].collect.remote(self.cfg.ray_chunk, self.random_actions, self.progress)
        self.pending[ref] = (w, time.monotonic())

    def sync_policy(self, agent: Any, force: bool = False) -> None:
        if not force and agent.total_it - self.synced_at < self.cfg.sync_interval:
            return
        ref = self.ray.put(agent.policy_state())  # one put per broadcast, one reference for all workers
        for w, worker in enumerate(self.workers):
            if w not in self.down and w not in self.started:  # a starting one gets them once it is up
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
            if w not in busy and w not in self.down and w not in self.started:
                self._launch(w)
        result = CollectResult()
        while not result.decisions and not result.episodes:
            if not self.pending and not self.started:
                names = ", ".join(f"worker {w}" for w in sorted(self.down))
                raise CollectorError(
                    f"every Ray worker is down ({names}), each failed {MAX_WORKER_FAILURES} times in a row"
                )
            self._ask_starting()
            refs = list(self.pending) + [s.ref for s in self.started.values() if s.ref is not None]
            if refs:
                ray.wait(refs, num_returns=1, timeout=1.0)
            else:  # only restarting workers, each waiting for its next question
                time.sleep(self.RETRY_S)
            self._check_started(agent, result)
            self._check_timeouts(agent, result)  # on every call: busy workers must not hide a hung one
            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in ready:
                if ref not in self.pending:  # timed out just now
                    continue
                w, _ = self.pending.pop(ref)
                try:
                    items, res = ray.get(ref)
                except ray.exceptions.RayActorError as e:  # the process died: Ray restarts it
                    dead = isinstance(e, ray.exceptions.ActorDiedError)  # or not: a new actor
                    self._failed(w, agent, result, _why(e), kill=False, respawn=dead)
                    continue
                except ray.exceptions.RayTaskError as e:  # its environment raised: a fresh process
                    self._failed(w, agent, result, _why(e), kill=True)
                    continue
                self.failures[w] = 0
                self._store(items, res, agent, result)
                self._launch(w)
        return result

    def _ask_starting(self) -> None:
        """Ask the restarting workers whose retry time has come whether they are up."""
        now = time.monotonic()
        for w, s in self.started.items():
            if s.ref is None and now >= s.retry_at:
                s.ref = self.workers[w].ready.remote()

    def _check_started(self, agent: Any, result: CollectResult) -> None:
        """Workers whose ``ready()`` answered: send them the weights and current overrides, then a chunk.
        A worker that Ray still restarts is asked again later; one dead for good is created anew."""
        ray = self.ray
        refs = {s.ref: w for w, s in self.started.items() if s.ref is not None}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
        for ref in done:
            w, s = refs[ref], self.started[refs[ref]]
            try:
                token = ray.get(ref)
            except ray.exceptions.ActorDiedError as e:  # its __init__ raised, or it is gone for good
                self._failed(w, agent, result, _why(e), kill=False, respawn=True)
                continue
            except ray.exceptions.RayActorError:  # still restarting: not a new failure, ask again
                s.ref, s.retry_at = None, time.monotonic() + self.RETRY_S
                continue
            if token == self.incarnation.get(w):  # the old process answered before the kill took effect
                s.ref, s.retry_at = None, time.monotonic() + self.RETRY_S
                continue
            self.incarnation[w] = token
            del self.started[w]
            worker = self.workers[w]
            worker.set_weights.remote(self._weights)
            if self.overrides != self.spawned_with[w]:  # Ray restarts an actor with its creation args
                worker.set_overrides.remote(self.overrides)
            self._launch(w)

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

    def _failed(
        self, w: int, agent: Any, result: CollectResult, why: str, kill: bool, respawn: bool = False
    ) -> None:
        """Worker w died, raised or hung: discard its open episodes and bring it back up, or give it up.

        ``kill``: the process is alive but broken (its environment raised, or it hangs), so it is killed
        for Ray to restart; a process that died is restarted by Ray without one (a second kill would hit
        the restart). ``respawn``: the actor is dead for good (its ``__init__`` raised): a new one."""
        lost = sum(agent.replay_buffer.discard_episode(w * self.n + j) for j in range(self.n))
        result.lost += lost
        self.failures[w] += 1
        result.faults.append(f"Ray worker {w} failed ({why}); {lost} transitions of its open episodes lost")
        self.started.pop(w, None)
        if kill or respawn or self.failures[w] >= MAX_WORKER_FAILURES:
            try:
                self.ray.kill(self.workers[w], no_restart=respawn or self.failures[w] >= MAX_WORKER_FAILURES)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.failures[w] >= MAX_WORKER_FAILURES:
            self.down.add(w)
        elif respawn:
            self.workers[w] = self._spawn(w)
        else:  # Ray restarts it: ask when it is up (the first answer may still be "restarting")
            self.started[w] = _Start(None, time.monotonic())

    def _check_timeouts(self, agent: Any, result: CollectResult) -> None:
        """Fail the workers that take too long: to start (``worker_startup_s``), or for a chunk
        (``worker_timeout_s``, counted from when the chunk was asked of a worker that was up)."""
        now = time.monotonic()
        for w, s in list(self.started.items()):
            if now - s.t0 > self.cfg.worker_startup_s:
                why = f"did not start within {self.cfg.worker_startup_s:.0f} s"
                self._failed(w, agent, result, why, kill=True)
        for ref, (w, t0) in list(self.pending.items()):
            if now - t0 > self.cfg.worker_timeout_s:
                self.pending.pop(ref)
                why = f"sent no chunk within {self.cfg.worker_timeout_s:.0f} s"
                self._failed(w, agent, result, why, kill=True)

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
