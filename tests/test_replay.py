"""SequenceReplayBuffer: windows equal acting-time histories, episode boundaries, wrap-around, persistence.

Every frame of the simulated episodes carries its identity: base = [episode, step, 0.5] and a depth
image filled with a value derived from both, so a sampled window can be decoded back to the
(episode, step) frames it holds and compared with what an acting-time history deque held.
"""

from __future__ import annotations

import os
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmamba_rl.replay import ReplayBatch, SequenceReplayBuffer

DEPTH_SHAPE = (1, 4, 4)
ACTION_DIM = 2


def make_space() -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "depth": gym.spaces.Box(0, 255, DEPTH_SHAPE, dtype=np.uint8),
            "base": gym.spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32),
        }
    )


def depth_value(ep: int, step: int) -> int:
    return (ep * 37 + step) % 256


def frame(ep: int, step: int) -> dict:
    return {
        "depth": np.full(DEPTH_SHAPE, depth_value(ep, step), dtype=np.uint8),
        "base": np.array([ep, step, 0.5], dtype=np.float32),
    }


def action_of(ep: int, step: int) -> np.ndarray:
    return np.array([ep / 100.0, -step / 100.0], dtype=np.float32)


def reward_of(ep: int, step: int) -> float:
    return float(ep * 1000 + step)


class Simulation:
    """Feeds episodes to a buffer while recording what an acting-time K-history held at each step.

    ``records[(ep, i)]`` holds the K + 1 frame ids (state window + next frame), the flags, and the
    absolute index of every frame in the documented layout (an episode of T steps uses T + 1 frames).
    """

    def __init__(self, buf: SequenceReplayBuffer, stream: int = 0):
        self.buf, self.stream = buf, stream
        self.K = buf.seq_len
        self.records: dict[tuple[int, int], dict] = {}
        self.frame_abs: dict[tuple[int, int], int] = {}
        self.frames_written = 0
        self.next_ep = 0

    def episode(self, length: int, ending: str) -> None:
        """ending: 'term', 'trunc' or 'open' (abandoned without a flag; the next reset starts anew)."""
        ep = self.next_ep
        self.next_ep += 1
        for i in range(length):
            self.transition(ep, i, length, ending)

    def transition(self, ep: int, i: int, length: int, ending: str) -> None:
        """Add step i of episode ep (of ``length`` steps), recording what acting's K-history held."""
        if i == 0:
            self.history = deque([(ep, 0)] * self.K, maxlen=self.K)  # acting: K copies of the reset frame
            self.frame_abs[(ep, 0)] = self.frames_written
            self.frames_written += 1
        last = i == length - 1
        terminated = last and ending == "term"
        truncated = last and ending == "trunc"
        state = list(self.history)
        self.history.append((ep, i + 1))
        self.records[(ep, i)] = {
            "window": state + [(ep, i + 1)],
            "next_state": list(self.history),
            "terminated": float(terminated),
            "truncated": float(truncated),
        }
        self.buf.add(
            frame(ep, i), action_of(ep, i), reward_of(ep, i), frame(ep, i + 1), terminated, truncated,
            stream=self.stream, first=i == 0,
        )  # fmt: skip
        self.frame_abs[(ep, i + 1)] = self.frames_written
        self.frames_written += 1

    def expected_valid(self) -> set[tuple[int, int]]:
        """Transitions whose acting-time window frames are all still in the ring (rejection policy)."""
        oldest = self.frames_written - self.buf.stream_capacity
        out = set()
        for (ep, i), rec in self.records.items():
            first = rec["window"][0]
            if self.frame_abs[first] >= oldest and self.frame_abs[(ep, i)] >= oldest:
                out.add((ep, i))
        return out


def window(batch: ReplayBatch, key: str) -> np.ndarray:
    """(B, K+1, ...) frames of a one-step batch: the state window and the next frame."""
    return np.concatenate([batch.obs[key], batch.next_obs[key][:, -1:]], axis=1)


def decode(batch: ReplayBatch, b: int) -> list[tuple[int, int]]:
    """Frame ids of row b of a one-step batch, checking that depth agrees with base."""
    base = window(batch, "base")[b]
    ids = [(int(round(x[0])), int(round(x[1]))) for x in base]
    for (ep, step), img in zip(ids, window(batch, "depth")[b], strict=True):
        assert np.all(img == depth_value(ep, step))
    return ids


def check_batch(sim: Simulation, batch: ReplayBatch) -> list[tuple[int, int]]:
    """Every row equals the acting-time window of its transition; returns the transitions seen."""
    K = sim.K
    seen = []
    for b in range(batch.reward.shape[0]):
        ids = decode(batch, b)
        assert len(ids) == K + 1
        ep, i = ids[K - 1]  # last frame of the state window is the transition's own frame
        assert {e for e, _ in ids} == {ep}, f"window mixes episodes: {ids}"
        rec = sim.records[(ep, i)]
        assert ids == rec["window"]
        assert ids[1:] == rec["next_state"]
        np.testing.assert_array_equal(batch.action[b], action_of(ep, i))
        assert batch.reward[b] == reward_of(ep, i)
        assert batch.terminated[b] == rec["terminated"]
        assert batch.truncated[b] == rec["truncated"]
        seen.append((ep, i))
    return seen


def check_all(sim: Simulation) -> None:
    """The samplable set is exactly the expected one, and each of its windows is right."""
    buf = sim.buf
    idx = buf.valid_indices()
    assert len(buf) == idx.size
    seen = check_batch(sim, buf.get(idx)) if idx.size else []
    assert len(seen) == len(set(seen))
    assert set(seen) == sim.expected_valid()


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("K", [1, 2, 4])
def test_every_window_equals_acting_history(K):
    buf = SequenceReplayBuffer(1000, K, make_space(), ACTION_DIM, seed=0)
    sim = Simulation(buf)
    for length, ending in [(1, "term"), (2, "trunc"), (3, "term"), (7, "trunc"), (5, "open"), (6, "term")]:
        sim.episode(length, ending)
    check_all(sim)
    assert len(buf) == 1 + 2 + 3 + 7 + 5 + 6  # no wrap: every step is samplable
    # one frame per step plus one per episode
    assert buf.frames_stored == len(buf) + 6


def test_sample_shapes_dtypes_and_views():
    K = 4
    buf = SequenceReplayBuffer(200, K, make_space(), ACTION_DIM, seed=1)
    sim = Simulation(buf)
    for _ in range(5):
        sim.episode(9, "term")
    batch = buf.sample(32)
    for side in (batch.obs, batch.next_obs):
        assert side["depth"].shape == (32, K, *DEPTH_SHAPE) and side["depth"].dtype == np.uint8
        assert side["base"].shape == (32, K, 3) and side["base"].dtype == np.float32
    # one-step samples: both windows are views of one gather, the next one a step later
    assert np.shares_memory(batch.obs["depth"], batch.next_obs["depth"])
    np.testing.assert_array_equal(batch.obs["base"][:, 1:], batch.next_obs["base"][:, :-1])
    assert batch.action.shape == (32, ACTION_DIM) and batch.action.dtype == np.float32
    for key in ("reward", "terminated", "truncated", "discount"):
        value = getattr(batch, key)
        assert value.shape == (32,) and value.dtype == np.float32
    assert batch.indices.shape == (32,)
    check_batch(sim, batch)


def test_terminated_and_truncated_kept_apart():
    buf = SequenceReplayBuffer(100, 3, make_space(), ACTION_DIM, seed=2)
    sim = Simulation(buf)
    sim.episode(4, "term")
    sim.episode(3, "trunc")
    sim.episode(2, "open")
    batch = buf.get(buf.valid_indices())
    flags = {ids: (batch.terminated[b], batch.truncated[b]) for b, ids in enumerate(check_batch(sim, batch))}
    assert flags[(0, 3)] == (1.0, 0.0)
    assert flags[(1, 2)] == (0.0, 1.0)
    assert flags[(2, 1)] == (0.0, 0.0)  # abandoned episode: neither flag, its next frame is real
    assert sum(t + u for t, u in flags.values()) == 2.0


def test_open_episode_then_reset_starts_new_episode():
    buf = SequenceReplayBuffer(100, 3, make_space(), ACTION_DIM)
    sim = Simulation(buf)
    sim.episode(3, "open")  # e.g. a run resumed mid-episode: the collector resets, first=True
    sim.episode(3, "term")
    check_all(sim)
    assert buf.frames_stored == 8


@pytest.mark.parametrize("close", ["end_episode", "terminated", "truncated"])
def test_closed_episode_starts_new_one_even_for_equal_frame(close):
    buf = SequenceReplayBuffer(100, 3, make_space(), ACTION_DIM)
    buf.add(frame(0, 0), action_of(0, 0), 0.0, frame(0, 1), close == "terminated", close == "truncated")
    if close == "end_episode":
        buf.end_episode()
    # the same frame again, but the previous episode is closed: its window must not reach back
    buf.add(frame(0, 1), action_of(0, 1), 0.0, frame(0, 2), False, False)
    assert buf.frames_stored == 4
    batch = buf.get(buf.valid_indices())
    ids = [decode(batch, b) for b in range(2)]
    assert ids[1] == [(0, 1), (0, 1), (0, 1), (0, 2)]


def test_sampling_covers_every_transition_uniformly():
    buf = SequenceReplayBuffer(64, 4, make_space(), ACTION_DIM, seed=3)
    sim = Simulation(buf)
    for length in [5, 1, 8, 3, 9, 4, 7, 6, 2, 10]:
        sim.episode(length, "term")  # 55 steps + 10 final frames: wraps a 64-slot ring
    n = len(buf)
    valid = set(buf.valid_indices().tolist())
    counts: dict[int, int] = {}
    draws = 40_000
    for _ in range(draws // 500):
        batch = buf.sample(500)
        for s in batch.indices.tolist():
            counts[s] = counts.get(s, 0) + 1
    assert set(counts) == valid  # covers all samplable steps and nothing else
    expected = draws / n
    # binomial std ~ sqrt(expected) ~ 27: 6 std bounds
    assert min(counts.values()) > expected - 6 * expected**0.5
    assert max(counts.values()) < expected + 6 * expected**0.5
    check_batch(sim, buf.sample(256))


@pytest.mark.parametrize("M", [3, 8])
def test_segment_sampling_is_uniform_in_runs_with_shared_frame_ids(M):
    buf = SequenceReplayBuffer(64, 4, make_space(), ACTION_DIM, seed=5, segment=M)
    sim = Simulation(buf)
    for length in [5, 1, 8, 3, 9, 4, 7, 6, 2, 10]:
        sim.episode(length, "term")  # wraps the 64-slot ring: runs must respect the oldest frames too
    n = len(buf)
    valid = set(buf.valid_indices().tolist())
    counts: dict[int, int] = {}
    draws, B = 48_000, 48
    consecutive = 0
    for _ in range(draws // B):
        batch = buf.sample(B)
        idx = batch.indices
        assert idx.shape == (B,)
        consecutive += int(np.count_nonzero((idx[1:] - idx[:-1]) % buf.stream_capacity == 1))
        for s in idx.tolist():
            counts[s] = counts.get(s, 0) + 1
    assert set(counts) == valid
    expected = draws / n
    # runs make counts over-dispersed (up to M draws move together): bound by 6 std of M-sized lumps
    tol = 6 * (expected * M) ** 0.5
    assert min(counts.values()) > expected - tol and max(counts.values()) < expected + tol
    # most neighbours in a batch are consecutive transitions (independent draws would almost never be)
    assert consecutive / (draws - draws // B) > 0.5
    batch = buf.sample(B)
    check_batch(sim, batch)
    # frame_ids name the stored frame of every window position: equal ids <=> equal frame identity
    ids = np.concatenate([batch.frame_ids, batch.next_frame_ids[:, -1:]], axis=1)
    assert ids.shape == (B, 5) and np.array_equal(batch.frame_ids[:, 1:], batch.next_frame_ids[:, :-1])
    code = np.array([[ep * 1000 + step for ep, step in decode(batch, b)] for b in range(B)]).ravel()
    same_id = ids.ravel()[:, None] == ids.ravel()[None, :]
    np.testing.assert_array_equal(same_id, code[:, None] == code[None, :])
    assert np.unique(ids[:, :4]).size < B * 4 / 2  # runs share most frames


@pytest.mark.parametrize("K,n", [(1, 3), (3, 2), (2, 4)])
def test_n_step_returns_flags_and_next_window_by_hand(K, n):
    gamma = 0.9
    buf = SequenceReplayBuffer(1000, K, make_space(), ACTION_DIM, seed=1, n_step=n, gamma=gamma)
    sim = Simulation(buf)
    lengths = {}
    for length, ending in [(1, "term"), (5, "trunc"), (2, "open"), (6, "term"), (3, "trunc"), (4, "open")]:
        lengths[sim.next_ep] = length
        sim.episode(length, ending)
    batch = buf.get(buf.valid_indices())
    for b in range(batch.reward.shape[0]):
        ep, i = decode(batch, b)[K - 1]
        m = min(n, lengths[ep] - i)  # the look-ahead stops at the episode's last transition
        rec = sim.records[(ep, i + m - 1)]
        assert batch.reward[b] == pytest.approx(sum(gamma**j * reward_of(ep, i + j) for j in range(m)))
        assert batch.discount[b] == pytest.approx(gamma**m)
        assert batch.terminated[b] == rec["terminated"] and batch.truncated[b] == rec["truncated"]
        base = batch.next_obs["base"][b]
        next_ids = [(int(round(x[0])), int(round(x[1]))) for x in base]
        assert next_ids == rec["next_state"]  # the acting-time history m steps on
        np.testing.assert_array_equal(
            batch.next_obs["depth"][b][:, 0, 0, 0], [depth_value(*f) for f in next_ids]
        )
        assert batch.next_frame_ids[b].tolist() == [sim.frame_abs[f] % 1000 for f in next_ids]


def test_one_step_samples_have_gamma_discount_and_the_next_window_one_step_on():
    buf = SequenceReplayBuffer(100, 2, make_space(), ACTION_DIM, n_step=1, gamma=0.95)
    Simulation(buf).episode(5, "term")
    batch = buf.sample(8)
    np.testing.assert_allclose(batch.discount, 0.95)
    np.testing.assert_array_equal(batch.next_frame_ids[:, 0], batch.frame_ids[:, 1])


def test_segment_must_be_positive():
    with pytest.raises(ValueError, match="segment must be >= 1, got 0"):
        SequenceReplayBuffer(64, 4, make_space(), ACTION_DIM, segment=0)


def test_ring_wraparound_rejects_windows_with_overwritten_frames():
    K = 4
    buf = SequenceReplayBuffer(10, K, make_space(), ACTION_DIM, seed=4)
    sim = Simulation(buf)
    sim.episode(12, "trunc")  # 13 frames in 10 slots: frames (0,0)..(0,2) overwritten
    check_all(sim)
    idx_steps = sorted(decode(buf.get(buf.valid_indices()), b)[K - 1][1] for b in range(len(buf)))
    # step i needs frames max(0, i-3)..i+1; (0,3) is the oldest stored, so steps 6..11 only
    assert idx_steps == [6, 7, 8, 9, 10, 11]
    for _ in range(20):
        check_batch(sim, buf.sample(16))
    sim.episode(2, "term")  # the new episode's frames wrap around the ring's end
    check_all(sim)


def test_memory_layout_and_report():
    space = gym.spaces.Dict(
        {
            "depth": gym.spaces.Box(0, 255, (1, 64, 64), dtype=np.uint8),
            "base": gym.spaces.Box(-np.inf, np.inf, (10,), dtype=np.float32),
        }
    )
    buf = SequenceReplayBuffer(20_000, 4, space, 3)
    depth_bytes = 20_000 * 64 * 64
    assert buf._frames["depth"].dtype == np.uint8
    assert depth_bytes <= buf.nbytes < depth_bytes + 2_000_000  # ~83 MB in all
    report = buf.memory_report()
    assert "MB" in report and "depth" in report and "uint8" in report


def test_rejects_bad_inputs():
    buf = SequenceReplayBuffer(10, 2, make_space(), ACTION_DIM)
    bad = frame(0, 0)
    bad["depth"] = bad["depth"].astype(np.float32)
    with pytest.raises(ValueError, match="dtype"):
        buf.add(bad, action_of(0, 0), 0.0, frame(0, 1), False, False)
    with pytest.raises(ValueError, match="shape"):
        buf.add({**frame(0, 0), "base": np.zeros(4)}, action_of(0, 0), 0.0, frame(0, 1), False, False)
    with pytest.raises(ValueError, match="action"):
        buf.add(frame(0, 0), np.zeros(3), 0.0, frame(0, 1), False, False)
    with pytest.raises(ValueError, match="no samplable"):
        buf.sample(1)
    with pytest.raises(ValueError, match="seq_len"):
        SequenceReplayBuffer(10, 0, make_space(), ACTION_DIM)
    assert buf.frames_stored == 0  # failed adds wrote nothing


def _filled(seed: int) -> tuple[SequenceReplayBuffer, Simulation]:
    buf = SequenceReplayBuffer(30, 3, make_space(), ACTION_DIM, seed=seed)
    sim = Simulation(buf)
    for length, ending in [(7, "term"), (4, "trunc"), (9, "term"), (6, "open")]:
        sim.episode(length, ending)
    buf.sample(8)  # move the RNG away from its seed
    return buf, sim


def _assert_same_batches(a: SequenceReplayBuffer, b: SequenceReplayBuffer, n: int = 5) -> None:
    for _ in range(n):
        x, y = a.sample(16), b.sample(16)
        for key in x.obs:
            np.testing.assert_array_equal(x.obs[key], y.obs[key])
        for key in ("action", "reward", "terminated", "truncated", "indices"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))


def _continue(buf: SequenceReplayBuffer) -> None:
    """The same further steps for both copies: continue the open episode, then a new one."""
    buf.add(frame(3, 6), action_of(3, 6), 1.0, frame(3, 7), True, False)
    for i in range(5):
        buf.add(frame(9, i), action_of(9, i), 2.0, frame(9, i + 1), False, i == 4, first=i == 0)


def test_state_dict_round_trip_continues_identically():
    buf, _ = _filled(5)
    state = buf.state_dict()
    for value in state.values():
        assert isinstance(value, int | np.ndarray)
    clone = SequenceReplayBuffer(30, 3, make_space(), ACTION_DIM, seed=123)
    clone.load_state_dict(state)
    assert len(clone) == len(buf)
    _assert_same_batches(buf, clone)
    _continue(buf)
    _continue(clone)
    assert len(clone) == len(buf)
    _assert_same_batches(buf, clone)


def test_save_load_round_trip(tmp_path):
    buf, _ = _filled(6)
    path = tmp_path / "replay.npz"
    buf.save(path)
    buf.save(path)  # overwriting is atomic too
    assert sorted(os.listdir(tmp_path)) == ["replay.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle needed
        assert z["obs/depth"].dtype == np.uint8
    clone = SequenceReplayBuffer(30, 3, make_space(), ACTION_DIM)
    clone.load(path)
    _assert_same_batches(buf, clone)
    _continue(buf)
    _continue(clone)
    _assert_same_batches(buf, clone)


def test_load_errors_name_the_mismatch(tmp_path):
    buf, _ = _filled(7)
    path = tmp_path / "replay.npz"
    buf.save(path)
    with pytest.raises(ValueError, match="capacity"):
        SequenceReplayBuffer(31, 3, make_space(), ACTION_DIM).load(path)
    with pytest.raises(ValueError, match="seq_len"):
        SequenceReplayBuffer(30, 4, make_space(), ACTION_DIM).load(path)
    other = gym.spaces.Dict({"depth": gym.spaces.Box(0, 255, DEPTH_SHAPE, dtype=np.uint8)})
    with pytest.raises(ValueError, match="observation keys"):
        SequenceReplayBuffer(30, 3, other, ACTION_DIM).load(path)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable replay buffer"):
        SequenceReplayBuffer(30, 3, make_space(), ACTION_DIM).load(corrupt)


def test_small_state_file_when_not_full(tmp_path):
    space = gym.spaces.Dict({"depth": gym.spaces.Box(0, 255, (1, 64, 64), dtype=np.uint8)})
    buf = SequenceReplayBuffer(5000, 4, space, 1)
    img = {"depth": np.zeros((1, 64, 64), np.uint8)}
    for _ in range(10):
        buf.add(img, np.zeros(1), 0.0, img, False, False)
    buf.save(tmp_path / "r.npz")
    assert os.path.getsize(tmp_path / "r.npz") < 100_000  # only the occupied rows are written


episodes = st.lists(
    st.tuples(st.integers(1, 12), st.sampled_from(["term", "trunc", "open"])), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(2, 40), K=st.integers(1, 5), eps=episodes, seed=st.integers(0, 2**16))
def test_property_random_episodes(capacity, K, eps, seed):
    buf = SequenceReplayBuffer(capacity, K, make_space(), ACTION_DIM, seed=seed)
    sim = Simulation(buf)
    for length, ending in eps:
        sim.episode(length, ending)
        check_all(sim)
    if len(buf):
        check_batch(sim, buf.sample(32))


# ------------------------------------------------------------------------- interleaved streams


class _Stream:
    """One environment's episodes, stepped one transition at a time (to interleave several)."""

    def __init__(self, sim: Simulation, first_ep: int, plan: list[tuple[int, str]]):
        self.sim, self.plan, self.ep, self.i = sim, list(plan), first_ep, 0
        sim.next_ep = first_ep

    def step(self) -> bool:
        """Add the next transition; False once the plan is done."""
        if not self.plan:
            return False
        length, ending = self.plan[0]
        self.sim.transition(self.ep, self.i, length, ending)
        self.i += 1
        if self.i == length:
            self.plan.pop(0)
            self.ep, self.i = self.ep + 1, 0
        return True


@settings(max_examples=150, deadline=None)
@given(
    streams=st.integers(1, 4),
    per_stream=st.integers(2, 30),
    K=st.integers(1, 4),
    M=st.sampled_from([1, 3]),
    n=st.sampled_from([1, 3]),
    plans=st.lists(episodes, min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_property_interleaved_streams_never_mix_environments_or_episodes(
    streams, per_stream, K, M, n, plans, seed
):
    """Episodes of S environments arrive interleaved in a random order: every samplable window is the
    acting-time history of one environment's one episode (start padding included), the samplable set is
    exactly the transitions whose frames are still in their stream's ring, and n-step look-aheads stay
    inside the episode."""
    buf = SequenceReplayBuffer(
        per_stream * streams, K, make_space(), ACTION_DIM, seed=seed, segment=M, n_step=n,
        num_streams=streams,
    )  # fmt: skip
    sims = [Simulation(buf, stream=s) for s in range(streams)]
    writers = [_Stream(sims[s], 1000 * s, plans[s]) for s in range(streams)]
    rng = np.random.default_rng(seed)
    live = list(range(streams))
    while live:
        s = int(rng.choice(live))
        if not writers[s].step():
            live.remove(s)
    idx = buf.valid_indices()
    assert len(buf) == idx.size == sum(len(sim.expected_valid()) for sim in sims)
    if not idx.size:
        return
    for batch in (buf.get(idx), buf.sample(32)):
        for b in range(len(batch)):
            ids = decode(batch, b)[:K]  # the state window (the next one may be n steps on)
            ep, i = ids[-1]
            sim = sims[ep // 1000]
            assert ids == sim.records[(ep, i)]["window"][:K], "window mixes environments or episodes"
            nxt = [(int(round(x[0])), int(round(x[1]))) for x in batch.next_obs["base"][b]]
            assert {e for e, _ in nxt} == {ep}
            np.testing.assert_array_equal(batch.action[b], action_of(ep, i))
    seen = {decode(buf.get(idx), b)[K - 1] for b in range(idx.size)}
    assert seen == set().union(*(sim.expected_valid() for sim in sims))


def test_streams_split_the_capacity_and_survive_a_state_round_trip():
    buf = SequenceReplayBuffer(40, 2, make_space(), ACTION_DIM, seed=3, num_streams=4)
    assert buf.stream_capacity == 10
    for s in range(4):
        Simulation(buf, stream=s).episode(3 + s, "open" if s == 2 else "term")
    assert buf.discard_episode(stream=2) == 5 and len(buf) == 3 + 4 + 6
    clone = SequenceReplayBuffer(40, 2, make_space(), ACTION_DIM, seed=0, num_streams=4)
    clone.load_state_dict(buf.state_dict())
    _assert_same_batches(buf, clone)
    with pytest.raises(ValueError, match="num_streams=4, this buffer has num_streams=2"):
        SequenceReplayBuffer(40, 2, make_space(), ACTION_DIM, num_streams=2).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="stream must be in \\[0, 4\\), got 4"):
        buf.add(frame(0, 0), action_of(0, 0), 0.0, frame(0, 1), False, False, stream=4)


def test_broken_values_never_enter_replay():
    buf = SequenceReplayBuffer(10, 2, make_space(), ACTION_DIM)
    nan = {**frame(0, 1), "base": np.array([0, 1, np.nan], np.float32)}
    with pytest.raises(ValueError, match="NaN or inf"):
        buf.add(frame(0, 0), action_of(0, 0), 0.0, nan, False, False)
    with pytest.raises(ValueError, match="must be finite"):
        buf.add(frame(0, 0), action_of(0, 0), float("inf"), frame(0, 1), False, False)
    assert buf.frames_stored == 0
