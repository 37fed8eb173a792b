"""Collection: the collector reproduces the single-environment loop, batches N environments in one
forward, resumes exactly with N > 1, and the loop's callbacks are called where documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_SAC, tiny_config
from vmamba_rl.agents import make_agent
from vmamba_rl.callbacks import Callback
from vmamba_rl.collector import LocalCollector, env_fns, episode_record
from vmamba_rl.config import make_config
from vmamba_rl.envs.make import last_frames, make_env
from vmamba_rl.training import CHECKPOINT, Trainer


def _stored(buf) -> dict[str, np.ndarray]:
    """Everything replay holds, in write order (frames, actions, rewards, flags, episode starts)."""
    n = int(buf._t.sum())
    out = {f"obs/{k}": v[:n].copy() for k, v in buf._frames.items()}
    for name in ("_action", "_reward", "_terminated", "_truncated", "_has_action", "_episode_start"):
        out[name] = getattr(buf, name)[:n].copy()
    return out


def _reference_loop(cfg, agent, steps: int) -> None:
    """The single-environment loop the collector replaces: a seeded generator of episode seeds, the
    environment's own action space for the random phase, the agent's OU noise, arrays compared to decide
    where an episode starts (the old replay rule)."""
    env = make_env(cfg)
    rng = np.random.default_rng(cfg.seed)
    env.action_space.seed(cfg.seed)
    obs, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
    agent.reset_episode()
    first = True
    for step in range(steps):
        if step < cfg.learning_starts:
            action = env.action_space.sample()
        else:
            action = agent.act(obs, explore=True)
        nxt, r, te, tr, _ = env.step(action)
        agent.store_transition(last_frames(obs), action, r, last_frames(nxt), te, tr, first=first)
        first = False
        obs = nxt
        if te or tr:
            obs, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
            agent.reset_episode()
            first = True
    env.close()


@pytest.mark.parametrize("algo", ["vmamba_td3", "hope_sac"])
def test_one_environment_reproduces_the_single_environment_loop(algo):
    extra = dict(TINY_SAC, seq_len=3, buffer_size=2000) if algo == "hope_sac" else {}
    cfg = tiny_config(
        algorithm_name=algo, learning_starts=25, env_kwargs={"max_steps": 20}, scan_backend="chunked", **extra
    )
    env = make_env(cfg)
    agents = [make_agent(env, None, cfg) for _ in range(2)]
    agents[1].load_state_dict(agents[0].state_dict())
    torch.manual_seed(3)
    _reference_loop(cfg, agents[0], 70)
    torch.manual_seed(3)
    col = LocalCollector(env_fns(cfg, 1), agents[1], cfg.seed)
    steps = 0
    while steps < 70:
        steps += col.collect(agents[1], random_actions=steps < cfg.learning_starts).decisions
    col.close()
    a, b = _stored(agents[0].replay_buffer), _stored(agents[1].replay_buffer)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["_terminated"].any() or a["_truncated"].any()  # several episodes were compared


@pytest.mark.parametrize("algo", ["vmamba_td3", "hope_sac"])
def test_batched_forward_equals_one_forward_per_environment(algo):
    extra = dict(TINY_SAC, seq_len=3) if algo == "hope_sac" else {}
    cfg = tiny_config(algorithm_name=algo, scan_backend="chunked", **extra)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    obs = []
    for seed in range(5):
        o, _ = env.reset(seed=seed)
        for _ in range(seed):
            o, *_ = env.step(env.action_space.sample())
        obs.append(o)
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    together = agent.act_batch(batch, explore=False)
    assert together.shape == (5, env.action_space.shape[0])
    for i, o in enumerate(obs):
        np.testing.assert_allclose(together[i], agent.act(o, explore=False), rtol=1e-5, atol=1e-6)


def test_acting_runs_in_eval_mode_and_leaves_every_module_as_it_was():
    """With drop-path on, acting is still deterministic (eval mode inside), and training mode (and one
    module deliberately in eval mode) is restored afterwards."""
    cfg = tiny_config(scan_backend="chunked", vmamba_drop_path_rate=0.5)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    stream = agent._streams_for_actor()
    odd = next(m for m in stream.modules() if m is not stream)
    odd.eval()
    before = {id(m): m.training for m in stream.modules()}
    obs, _ = env.reset(seed=0)
    batch = {k: v[None] for k, v in obs.items()}
    first = agent.act_batch(batch, explore=False)
    assert all(np.array_equal(first, agent.act_batch(batch, explore=False)) for _ in range(3))
    assert {id(m): m.training for m in stream.modules()} == before and not odd.training
    with torch.no_grad():  # the same as nn.Module.eval() gives
        stream.eval()
        ref = agent.actor(stream(torch.as_tensor(batch["base"]), torch.as_tensor(batch["depth"]))).numpy()
        stream.train()
    np.testing.assert_allclose(first, agent.scaler.to_env(np.clip(ref, -1, 1)), rtol=1e-6)


def test_episode_record_is_the_one_evaluation_uses():
    info = {"is_success": True, "is_collision": False, "path_length": 12.0, "level": "easy"}
    rec = episode_record(3.5, 40, info, {"distance_to_goal": 10.0})
    assert rec == {
        "return": 3.5, "length": 40, "success": True, "collision": False, "out_of_bounds": False,
        "timeout": False, "path_length": 12.0, "path_ratio": 1.2, "level": "easy",
    }  # fmt: skip
    # an environment without is_timeout: a truncation is the timeout
    assert episode_record(0.0, 5, {}, None, truncated=True)["timeout"]


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{k}": v.clone()
        for m, mod in trainer.agent.modules().items()
        for k, v in mod.state_dict().items()
    }


@pytest.mark.parametrize("algo", ["vmamba_td3", "hope_sac"])
def test_interrupted_and_resumed_run_with_several_environments_equals_uninterrupted(tmp_path, algo):
    """N = 3 sync environments: the checkpoint is taken at the first episode end after the stop, while
    the other environments are mid-episode; the resumed run re-simulates their episodes and ends with
    exactly the parameters, replay and counters of the uninterrupted run."""
    extra = dict(TINY_SAC, seq_len=3, buffer_size=2000) if algo == "hope_sac" else {}
    kw = dict(
        algorithm_name=algo, max_timesteps=150, learning_starts=30, updates_per_step=0.25, seed=5,
        scan_backend="chunked", env_kwargs={"max_steps": 17}, num_envs=3, level="easy", **extra,
    )  # fmt: skip
    full = Trainer(tiny_config(tmp_path / "a", run_name="full", **kw), quiet=True)
    full.run()
    part = Trainer(tiny_config(tmp_path / "b", run_name="part", **kw), quiet=True)
    assert part.run(stop_at=60) is None
    ck = torch.load(part.run_dir / CHECKPOINT, weights_only=True)
    open_eps = [e for e in ck["loop"]["collector"]["open"] if e is not None]
    assert open_eps and all(len(e["actions"]) > 0 for e in open_eps)  # saved mid-episode for some
    resumed = Trainer(tiny_config(tmp_path / "b", run_name="part", **kw), run_dir=part.run_dir, resume=True)
    resumed.quiet = True
    resumed.run()
    assert resumed.step == full.step and resumed.episode == full.episode
    ref, got = _params(full), _params(resumed)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    a, b = _stored(full.agent.replay_buffer), _stored(resumed.agent.replay_buffer)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_async_environments_collect_what_sync_ones_do():
    cfg = tiny_config(learning_starts=10, env_kwargs={"max_steps": 12}, scan_backend="chunked", num_envs=2)
    env = make_env(cfg)
    agents = [make_agent(env, None, cfg, num_streams=2) for _ in range(2)]
    agents[1].load_state_dict(agents[0].state_dict())
    for agent, mode in zip(agents, ("sync", "async"), strict=True):
        col = LocalCollector(env_fns(cfg, 2), agent, cfg.seed, mode)
        for i in range(20):
            col.collect(agent, random_actions=i < 5)
        col.close()
    a, b = _stored(agents[0].replay_buffer), _stored(agents[1].replay_buffer)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_environments_write_to_their_own_streams_and_noise_differs_between_them():
    cfg = tiny_config(env_kwargs={"max_steps": 9}, scan_backend="chunked", num_envs=4)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg, num_streams=4)
    col = LocalCollector(env_fns(cfg, 4), agent, cfg.seed)
    total = sum(col.collect(agent, random_actions=False).decisions for _ in range(30))
    assert total == 120
    buf = agent.replay_buffer
    counts = buf._num_transitions.tolist()
    assert counts == [30, 30, 30, 30]
    # every stream's windows stay inside its own slots
    batch = buf.sample(64)
    stream_of = batch.frame_ids // buf.stream_capacity
    assert np.all(stream_of == stream_of[:, :1])
    noises = np.stack([n.sample() for n in col.noises])
    assert len({tuple(np.round(x, 6)) for x in noises}) == 4  # independent processes
    col.close()


class _NaNAt:
    """Builds a DroneNav whose base vector turns NaN at one step of its second episode."""

    def __init__(self, cfg, step: int) -> None:
        self.cfg, self.step = cfg, step

    def __call__(self):
        import gymnasium as gym

        cfg, at = self.cfg, self.step

        class Broken(gym.Wrapper):
            episodes, t = 0, 0

            def reset(self, **kw):
                self.episodes += 1
                self.t = 0
                return self.env.reset(**kw)

            def step(self, a):
                obs, r, te, tr, info = self.env.step(a)
                self.t += 1
                if self.episodes == 2 and self.t == at:
                    obs = {**obs, "base": np.full_like(obs["base"], np.nan)}
                return obs, r, te, tr, info

        return Broken(make_env(cfg))


def test_a_nan_observation_discards_its_episode_and_collection_goes_on():
    cfg = tiny_config(env_kwargs={"max_steps": 10}, scan_backend="chunked", num_envs=2)
    agent = make_agent(make_env(cfg), None, cfg, num_streams=2)
    col = LocalCollector([_NaNAt(cfg, 4), env_fns(cfg, 1)[0]], agent, cfg.seed)
    results = [col.collect(agent, random_actions=True) for _ in range(40)]
    faults = [f for r in results for f in r.faults]
    assert len(faults) == 1 and "environment 0" in faults[0] and "NaN or inf" in faults[0]
    assert sum(r.lost for r in results) == 4  # the 3 stored steps of the broken episode, the NaN one
    buf = agent.replay_buffer
    assert np.all(np.isfinite(buf._frames["base"]))
    assert buf._num_transitions[0] == 40 - 4  # stream 0 lost its 3 stored steps and the NaN one
    col.close()


class Recorder(Callback):
    """Records every hook call (name, decisions, updates, episodes) and keeps a counter in checkpoints."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.saved = 0

    def on_start(self, trainer):
        self.calls.append(("start", trainer.step))

    def on_episode_end(self, trainer, record):
        self.calls.append(("episode", trainer.step, record["episode"], record["env"]))

    def on_update(self, trainer, metrics):
        self.calls.append(("update", trainer.agent.total_it, "critic_loss" in metrics))

    def on_collect(self, trainer, result):
        self.calls.append(("collect", trainer.step, result.decisions))

    def on_end(self, trainer):
        self.calls.append(("end", trainer.step))

    def state_dict(self):
        self.saved += 1
        return {"saved": self.saved}

    def load_state_dict(self, state):
        self.saved = state["saved"]


def test_a_callback_added_from_python_is_called_at_the_documented_points(tmp_path):
    cb = Recorder()
    cfg = tiny_config(
        tmp_path, max_timesteps=60, learning_starts=20, updates_per_step=0.5, num_envs=2,
        scan_backend="chunked", env_kwargs={"max_steps": 8}, save_interval=20, run_name="cb",
    )  # fmt: skip
    tr = Trainer(cfg, quiet=True, callbacks=[cb])
    tr.run()
    kinds = [c[0] for c in cb.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == kinds.count("end") == 1
    collects = [c for c in cb.calls if c[0] == "collect"]
    assert len(collects) == 30 and all(c[2] == 2 for c in collects)  # one call per vector step of 2
    assert [c[1] for c in collects] == list(range(2, 62, 2))
    updates = [c for c in cb.calls if c[0] == "update"]
    assert len(updates) == tr.agent.total_it == (60 - 20) // 2 and all(c[2] for c in updates)
    episodes = [c for c in cb.calls if c[0] == "episode"]
    assert [c[2] for c in episodes] == list(range(1, tr.episode + 1)) and {c[3] for c in episodes} == {0, 1}
    # within one step: its episode ends, then its updates, then on_collect
    segment: list[str] = []
    for k in kinds[1:-1]:
        if k == "collect":
            assert segment == sorted(segment), segment  # "episode" < "update"
            segment = []
        else:
            segment.append(k)
    ck = torch.load(tr.run_dir / CHECKPOINT, weights_only=True)
    assert ck["loop"]["callbacks"]["recorder"]["saved"] == cb.saved >= 2
    again = Recorder()
    Trainer(cfg, run_dir=tr.run_dir, resume=True, quiet=True, callbacks=[again]).close()
    assert again.saved == cb.saved  # its state came back from the checkpoint


def test_counting_is_in_decisions_summed_over_environments(tmp_path):
    cfg = tiny_config(
        tmp_path, max_timesteps=41, learning_starts=13, updates_per_step=1.0, num_envs=4,
        scan_backend="chunked", env_kwargs={"max_steps": 50}, run_name="count",
    )  # fmt: skip
    tr = Trainer(cfg, quiet=True)
    tr.run()
    # 11 vector steps of 4 reach 44 >= 41; updates: one per decision stored after the first 13
    assert tr.step == 44 and tr.agent.total_it == 44 - 13
    assert len(tr.agent.replay_buffer) == 44


def test_a_collector_needs_a_stream_per_environment():
    cfg = tiny_config(scan_backend="chunked")
    agent = make_agent(make_env(cfg), None, cfg, num_streams=2)
    with pytest.raises(ValueError, match="replay has 2 streams; this collector writes streams 0..2"):
        LocalCollector(env_fns(cfg, 3), agent, cfg.seed)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_hope_sac_collects_from_several_parking_environments(tmp_path, mode):
    cfg = tiny_config(
        tmp_path, algorithm_name="hope_sac", env_name="Parking-v0", level="normal", num_envs=3,
        vector_mode=mode, max_timesteps=90, learning_starts=30, updates_per_step=0.2, run_name=mode,
        **dict(TINY_SAC, seq_len=2, buffer_size=3000),
    )  # fmt: skip
    tr = Trainer(cfg, quiet=True)
    tr.run()
    buf = tr.agent.replay_buffer
    assert tr.step == 90 and buf._num_transitions.tolist() == [30, 30, 30] and tr.agent.total_it == 12
    assert len(buf) == 90


def test_bad_collection_options_are_clear_errors():
    with pytest.raises(ValueError, match="--num_envs must be >= 1, got 0"):
        make_config("cpu", num_envs=0)
    with pytest.raises(ValueError, match="--vector_mode must be one of sync, async, got 'threads'"):
        make_config("cpu", vector_mode="threads")
    with pytest.raises(ValueError, match="--buffer_size 100 split over 40 environments leaves 2 slots"):
        make_config("cpu", buffer_size=100, num_envs=40)


def _windows(n: int, k: int, steps: int, shape: tuple[int, ...], seed: int = 0):
    """Acting-time windows of n environments: step t holds frames t-k+1..t, the first frame repeated
    as padding before an episode's start (what SequenceHistory gives)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (steps, n, *shape), dtype=np.uint8)
    base = rng.standard_normal((steps, n, 10)).astype(np.float32)
    for t in range(steps):
        idx = [max(0, s) for s in range(t - k + 1, t + 1)]
        yield {"base": base[idx].swapaxes(0, 1), "depth": frames[idx].swapaxes(0, 1)}


def _plain(agent, batch):
    """act_batch with every frame encoded (no cache), the agent's cache left as it was."""
    cache, agent.frame_cache = agent.frame_cache, None
    try:
        return agent.act_batch(batch, explore=False)
    finally:
        agent.frame_cache = cache


def test_frame_cache_encodes_each_new_frame_once_and_acts_as_the_plain_forward():
    cfg = tiny_config(scan_backend="chunked", seq_len=4)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    cache, n, k = agent.frame_cache, 3, 4
    for t, batch in enumerate(_windows(n, k, 9, env.observation_space["depth"].shape[1:])):
        before = cache.encoded, cache.reused
        got = agent.act_batch(batch, explore=False)
        np.testing.assert_allclose(got, _plain(agent, batch), rtol=1e-5, atol=1e-6)
        # the padded first window is one distinct frame per environment, later windows one new frame
        assert cache.encoded - before[0] == n
        assert cache.reused - before[1] == (0 if t == 0 else n * min(t, k - 1))


def test_frame_cache_is_emptied_by_an_update_a_load_and_a_checkpoint():
    cfg = tiny_config(scan_backend="chunked", seq_len=4, batch_size=4, learning_starts=0)
    env = make_env(cfg)
    agent, other = make_agent(env, None, cfg), make_agent(env, None, tiny_config(seq_len=4, seed=5))
    cache = agent.frame_cache
    obs, _ = env.reset(seed=0)
    for i in range(12):  # replay data for one real update
        nxt, r, te, tr, _ = env.step(env.action_space.sample())
        action = env.action_space.sample()
        agent.store_transition(last_frames(obs), action, r, last_frames(nxt), te, tr, first=i == 0)
        obs = nxt
    batch = next(iter(_windows(1, 4, 1, env.observation_space["depth"].shape[1:])))
    distinct = 1  # the first window is one frame repeated

    def encoded_by_next_act() -> int:
        before = cache.encoded
        got = agent.act_batch(batch, explore=False)
        np.testing.assert_allclose(got, _plain(agent, batch), rtol=1e-5, atol=1e-6)
        return cache.encoded - before

    assert encoded_by_next_act() == distinct and encoded_by_next_act() == 0  # the second call reuses
    assert agent.train() is not None  # an optimiser step changes the encoder in place
    assert encoded_by_next_act() == distinct
    agent.load_state_dict(other.state_dict())  # new weights: the cache must not answer with old features
    assert encoded_by_next_act() == distinct
    np.testing.assert_allclose(
        agent.act_batch(batch, explore=False), other.act_batch(batch, explore=False), rtol=1e-5, atol=1e-6
    )
    agent.state_dict()  # a checkpoint: the run that resumes from it starts with an empty cache
    assert encoded_by_next_act() == distinct
    with torch.no_grad():  # an edit outside the agent, seen through the tensor's version counter
        next(agent._streams_for_actor().visual.parameters()).add_(0.05)
    assert encoded_by_next_act() == distinct
