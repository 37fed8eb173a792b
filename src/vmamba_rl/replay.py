"""Sequence replay: single frames in a ring, episode boundaries, K-step windows built at sample time.

Layout (one slot = one observation frame, every key in its own dtype, so depth stays uint8):

- An episode of T steps occupies T + 1 consecutive slots: its reset frame o_0, then o_1 .. o_T. Slot
  of o_i (i < T) also holds the transition that leaves it (a_i, r_i, terminated_i, truncated_i) and
  is flagged ``has_action``; the slot of the final o_T holds only the frame (it is the next state of
  the last transition and the last frame of the last window). Memory is therefore (T + 1) / T frames
  per step, about one.
- Every slot remembers the absolute index (a counter of frames ever written) of its episode's first
  frame. Absolute index ``a`` lives in slot ``a % capacity`` and is still stored while
  ``a >= frames_written - capacity``.

Windows: the transition at absolute index ``a`` of an episode starting at ``e`` reads the K + 1 frames
``max(a - K + 1 + j, e)`` for j = 0 .. K: window [0:K] is the state sequence, [1:K+1] the next-state
sequence. Clamping to ``e`` repeats the reset frame, which is exactly what acting does (its history
starts as K copies of the reset frame and then slides), so training sees the windows acting saw.

Wrap-around policy: once the ring wraps, the oldest stored episode may have lost its first frames.
Its transitions whose window would need an overwritten frame are *rejected* (never sampled, not
counted by ``len``) rather than padded with the oldest surviving frame, because such a padded window
is one acting never saw. At most K - 1 transitions are affected at any time.

Segments (``segment`` M > 1): a batch is drawn as runs of M consecutive transitions instead of B
independent ones. An anchor p is drawn uniformly from [oldest - M + 1, newest] and contributes every
samplable transition in [p, p + M - 1]; each transition is covered by exactly M anchor positions, so the
marginal distribution over transitions stays uniform, as with M = 1. Consecutive windows share K of
their K + 1 frames, so an agent that encodes each distinct frame once (``frame_ids``) encodes about
(M + K) / M frames per window instead of K: the cost of the per-frame visual encoder drops ~3x at
M = 8, K = 4, at the price of correlated samples within a run (as in R2D2 or Dreamer's chunks).

n-step returns (``n_step`` n > 1): the transition at ``a`` looks ahead over m = min(n, steps to the end
of its episode, steps stored so far) transitions: ``reward`` = sum_j gamma^j r_{a+j}, ``terminated`` /
``truncated`` = the flags of the m-th, ``discount`` = gamma^m, and the next-state window is the K frames
ending at frame a + m (``next_obs``, ``next_frame_ids``; same acting-time padding). A transition whose
look-ahead stops early is still sampled: its target bootstraps from fewer steps (or none if terminated).

Discarding: :meth:`SequenceReplayBuffer.discard_episode` rolls the write position back to the start of
the current unfinished episode (a simulator fault broke it), so none of its frames is ever sampled and
its slots are reused. Frames it had already overwritten stay lost: the buffer keeps a floor, the absolute
index below which frames are gone although the ring alone would still count them as stored.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping

import gymnasium as gym
import numpy as np

_FORMAT_VERSION = 1
_OBS_PREFIX = "obs/"
# Reject-and-redraw rounds before sample() falls back to enumerating the valid transitions.
_MAX_REJECTION_ROUNDS = 32


def _rng_state_to_array(rng: np.random.Generator) -> np.ndarray:
    """PCG64 state -> uint64 array (6,): the 128-bit words split in halves, so it fits np.savez."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be saved, got {state['bit_generator']}")
    mask = (1 << 64) - 1
    s, inc = int(state["state"]["state"]), int(state["state"]["inc"])
    words = [s >> 64, s & mask, inc >> 64, inc & mask, int(state["has_uint32"]), int(state["uinteger"])]
    return np.array(words, dtype=np.uint64)


def _rng_state_from_array(words: np.ndarray) -> dict:
    """Inverse of :func:`_rng_state_to_array`: a dict for ``Generator.bit_generator.state``."""
    w = [int(v) for v in np.asarray(words, dtype=np.uint64).reshape(-1)]
    if len(w) != 6:
        raise ValueError(f"rng_state must hold 6 uint64 words, got {len(w)}")
    return {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }


class SequenceReplayBuffer:
    """Ring of single frames sampled as episode-aware K-step windows (see the module docstring).

    Args:
        capacity: number of frame slots (``--buffer_size``); an episode of T steps uses T + 1 of them.
        seq_len: K, the history length the networks read.
        observation_space: the single-step Dict space, e.g. depth uint8 (1, 64, 64) and base float32
            (10,); each key is stored with its own shape and dtype.
        action_dim: A; actions are stored as float32, already normalised to [-1, 1].
        seed: seed of the sampling generator (its state is part of ``state_dict``).
        segment: M, transitions per sampled run (1 = independent transitions; see the module docstring).
        n_step: n, transitions summed into one sampled return (1 = one-step TD).
        gamma: discount used for the n-step sums and ``discount``.
    """

    def __init__(
        self,
        capacity: int,
        seq_len: int,
        observation_space: gym.spaces.Dict,
        action_dim: int,
        seed: int | None = None,
        segment: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if int(capacity) < 2:
            raise ValueError(f"capacity must be >= 2 (a transition needs two frames), got {capacity}")
        if int(seq_len) < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if int(segment) < 1:
            raise ValueError(f"segment must be >= 1, got {segment}")
        if int(n_step) < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if int(action_dim) < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if not isinstance(observation_space, gym.spaces.Dict):
            raise TypeError(
                f"observation_space must be a gymnasium.spaces.Dict, got {type(observation_space)}"
            )
        self.capacity = int(capacity)
        self.seq_len = int(seq_len)
        self.action_dim = int(action_dim)
        self.segment = int(segment)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.observation_space = observation_space
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for key, space in observation_space.spaces.items():
            if space.shape is None or space.dtype is None:
                raise ValueError(f"observation key {key!r} has no fixed shape/dtype ({space})")
            self._shapes[key] = tuple(space.shape)
            self._dtypes[key] = np.dtype(space.dtype)
        if not self._shapes:
            raise ValueError("observation_space has no keys")

        n = self.capacity
        # np.zeros maps pages lazily, so an unfilled buffer costs little resident memory.
        self._frames = {k: np.zeros((n, *s), dtype=self._dtypes[k]) for k, s in self._shapes.items()}
        self._action = np.zeros((n, self.action_dim), dtype=np.float32)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._has_action = np.zeros(n, dtype=bool)
        self._episode_start = np.zeros(n, dtype=np.int64)  # absolute index of the episode's first frame
        self._t = 0  # frames ever written; the next frame goes to slot _t % capacity
        self._open = False  # the newest frame ends an episode that the next add() may continue
        self._current_episode_start = 0
        self._num_transitions = 0  # slots with has_action among the stored frames
        # Absolute index below which frames are lost even if the ring has not wrapped past them: a
        # discarded episode overwrote them before it was rolled back (see discard_episode).
        self._floor = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # ------------------------------------------------------------------ writing

    def add(
        self,
        obs: Mapping[str, np.ndarray],
        action: np.ndarray,
        reward: float,
        next_obs: Mapping[str, np.ndarray],
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Store one transition (single-step observations; action normalised to [-1, 1], shape (A,)).

        ``obs`` is written only when it starts an episode: after a terminated/truncated step, after
        :meth:`end_episode`, or when it differs from the previous step's ``next_obs`` (e.g. the loop
        reset the environment after a resume). Otherwise it is the frame already stored.
        """
        obs_arr = self._check_obs(obs, "obs")
        next_arr = self._check_obs(next_obs, "next_obs")
        act = np.asarray(action, dtype=np.float32)
        if act.size != self.action_dim:
            raise ValueError(f"action must have {self.action_dim} elements, got shape {act.shape}")

        if not self._continues(obs_arr):
            self._current_episode_start = self._t
            self._write_frame(obs_arr)
        slot = (self._t - 1) % self.capacity
        self._action[slot] = act.reshape(self.action_dim)
        self._reward[slot] = float(reward)
        self._terminated[slot] = bool(terminated)
        self._truncated[slot] = bool(truncated)
        self._has_action[slot] = True
        self._num_transitions += 1
        self._write_frame(next_arr)
        self._open = not (terminated or truncated)

    def end_episode(self) -> None:
        """Close the current episode without a flag, so the next add() starts a new one."""
        self._open = False

    def discard_episode(self) -> int:
        """Remove the current unfinished episode (every frame since its reset frame) from the buffer.

        For an episode a simulator fault broke: its transitions must never be sampled. The write
        position rolls back to the episode's first frame, so the next :meth:`add` starts a new episode
        in the same slots. Older frames the broken episode had overwritten (after the ring wrapped) are
        not restored; they stay unsamplable. Does nothing when no episode is open (the last one ended
        with a terminated/truncated flag or :meth:`end_episode`, or nothing was added since).

        Returns the number of transitions removed.
        """
        if not self._open:
            return 0
        start, end = self._current_episode_start, self._t
        # An episode longer than the ring fills every slot (each counted once).
        slots = np.arange(start, min(end, start + self.capacity), dtype=np.int64) % self.capacity
        removed = int(np.count_nonzero(self._has_action[slots]))
        self._has_action[slots] = False
        self._num_transitions -= removed
        # Absolute frames below end - capacity were overwritten by this episode; after the rollback the
        # ring would count them as stored again, so the floor keeps them out. An episode longer than
        # the ring leaves nothing stored (floor = start).
        self._floor = min(max(self._floor, end - self.capacity), start)
        self._t = start
        self._open = False
        return removed

    def _check_obs(self, obs: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
        """Validate keys and shapes; cast to the stored dtype (same-kind casts only: no float->uint8)."""
        if set(obs.keys()) != set(self._shapes):
            raise ValueError(
                f"{name} keys {sorted(obs.keys())} != observation space keys {sorted(self._shapes)}"
            )
        out = {}
        for key, shape in self._shapes.items():
            value = np.asarray(obs[key])
            if value.shape != shape:
                raise ValueError(f"{name}[{key!r}] has shape {value.shape}, expected {shape}")
            if not np.can_cast(value.dtype, self._dtypes[key], casting="same_kind"):
                raise ValueError(f"{name}[{key!r}] has dtype {value.dtype}, expected {self._dtypes[key]}")
            out[key] = value.astype(self._dtypes[key], copy=False)
        return out

    def _continues(self, obs: dict[str, np.ndarray]) -> bool:
        """True when obs is the newest stored frame of an open episode (the usual step-to-step case)."""
        if not self._open or self._t == 0:
            return False
        slot = (self._t - 1) % self.capacity
        return all(np.array_equal(self._frames[k][slot], obs[k], equal_nan=True) for k in self._shapes)

    def _write_frame(self, obs: dict[str, np.ndarray]) -> None:
        slot = self._t % self.capacity
        if self._has_action[slot]:  # overwriting the oldest frame drops its transition
            self._has_action[slot] = False
            self._num_transitions -= 1
        for key, value in obs.items():
            self._frames[key][slot] = value
        self._episode_start[slot] = self._current_episode_start
        self._t += 1

    # ------------------------------------------------------------------ validity

    @property
    def _oldest(self) -> int:
        """Absolute index of the oldest frame still stored."""
        return max(self._t - self.capacity, self._floor)

    def _is_valid(self, a: np.ndarray) -> np.ndarray:
        """Absolute indices (any shape) -> bool: a stored transition whose whole window is stored."""
        oldest = self._oldest
        in_range = (a >= oldest) & (a < self._t - 1)
        slot = np.where(in_range, a, 0) % self.capacity
        first_needed = np.maximum(a - (self.seq_len - 1), self._episode_start[slot])
        return in_range & self._has_action[slot] & (first_needed >= oldest)

    def __len__(self) -> int:
        """Number of samplable transitions."""
        oldest = self._oldest
        # Only the oldest episode can have lost its head, and only its first K-1 stored transitions
        # can need a lost frame: check those few slots instead of the whole ring.
        head = np.arange(oldest, min(oldest + self.seq_len - 1, self._t)) % self.capacity
        lost = np.count_nonzero(self._has_action[head] & (self._episode_start[head] < oldest))
        return self._num_transitions - int(lost)

    @property
    def frames_stored(self) -> int:
        """Number of stored frames (occupied slots whose frame is still valid)."""
        return self._t - self._oldest

    def _to_absolute(self, slots: np.ndarray) -> np.ndarray:
        oldest = self._oldest
        return oldest + (slots - oldest) % self.capacity

    def valid_indices(self) -> np.ndarray:
        """Slot indices (n,) of every samplable transition, oldest first (O(capacity): tests, debugging)."""
        a = np.arange(self._oldest, self._t, dtype=np.int64)
        return a[self._is_valid(a)] % self.capacity

    # ------------------------------------------------------------------ reading

    def sample(self, batch_size: int) -> dict:
        """Draw ``batch_size`` transitions uniformly (with replacement) over all samplable ones.

        With ``segment`` M > 1 they come as runs of up to M consecutive transitions (same marginal).

        Returns numpy arrays: ``obs`` {key: (B, K+1, *shape)} in the stored dtype ([:, 0:K] state
        window, [:, 1:K+1] next-state window); ``action`` (B, A) float32, the action taken at the last
        step of the state window; ``reward``, ``terminated``, ``truncated`` (B,) float32; ``indices``
        (B,) int64 slot indices of the transitions; ``frame_ids`` (B, K+1) int64 slot of every window
        frame (equal ids = the same stored frame, so an encoder can process each one once);
        ``discount`` (B,) float32 gamma^m. With ``n_step`` > 1 also ``next_obs`` {key: (B, K, *shape)} and
        ``next_frame_ids`` (B, K): the next-state window m steps ahead (``obs[:, 1:]`` is then the
        one-step window, unused by the targets), and ``reward`` is the m-step discounted sum.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            raise ValueError("cannot sample: the buffer holds no samplable transition yet")
        if self.segment > 1:
            return self._gather(self._sample_segments(batch_size))
        oldest, stored = self._oldest, self.frames_stored
        chosen = np.empty(batch_size, dtype=np.int64)
        filled = 0
        # Rejection sampling keeps sample() O(B) instead of O(capacity): draw uniform frames and keep
        # the valid ones; accepted draws are uniform over the valid transitions. Invalid frames (the
        # final frame of each episode, a few at the ring's tail) are a small fraction.
        for _ in range(_MAX_REJECTION_ROUNDS):
            cand = oldest + self._rng.integers(0, stored, size=batch_size - filled)
            cand = cand[self._is_valid(cand)]
            chosen[filled : filled + cand.size] = cand
            filled += cand.size
            if filled == batch_size:
                break
        else:
            valid = self._to_absolute(self.valid_indices())
            chosen[filled:] = valid[self._rng.integers(0, valid.size, size=batch_size - filled)]
        return self._gather(chosen)

    def _sample_segments(self, batch_size: int) -> np.ndarray:
        """Absolute indices (B,) of runs of consecutive samplable transitions (module docstring)."""
        M = self.segment
        lo = self._oldest - (M - 1)
        span = self._t - 1 - lo  # anchors p in [lo, t - 1): the newest transition is at t - 2
        offsets = np.arange(M, dtype=np.int64)
        parts, total = [], 0
        for _ in range(_MAX_REJECTION_ROUNDS):
            n_anchor = -(-(batch_size - total) // M)
            runs = (lo + self._rng.integers(0, span, size=n_anchor))[:, None] + offsets[None, :]
            runs = runs[self._is_valid(runs)]  # row-major: each run stays in time order
            parts.append(runs)
            total += runs.size
            if total >= batch_size:
                break
        else:
            valid = self._to_absolute(self.valid_indices())
            parts.append(valid[self._rng.integers(0, valid.size, size=batch_size - total)])
        chosen = np.concatenate(parts)
        if chosen.size > batch_size:
            # Drop the surplus at random positions (not the tail of the last run), so no position
            # inside a run is favoured.
            keep = np.sort(self._rng.choice(chosen.size, size=batch_size, replace=False))
            chosen = chosen[keep]
        return chosen

    def get(self, indices: np.ndarray) -> dict:
        """The same dict as :meth:`sample` for given slot indices (B,) of samplable transitions."""
        slots = np.asarray(indices, dtype=np.int64).reshape(-1)
        if slots.size and (slots.min() < 0 or slots.max() >= self.capacity):
            raise ValueError(f"indices must lie in [0, {self.capacity}), got {slots.min()}..{slots.max()}")
        a = self._to_absolute(slots)
        bad = ~self._is_valid(a)
        if bad.any():
            raise ValueError(f"slot indices {slots[bad][:10].tolist()} are not samplable transitions")
        return self._gather(a)

    def _gather(self, a: np.ndarray) -> dict:
        """Absolute transition indices (B,) -> batch dict; one fancy-index gather per key."""
        slot = a % self.capacity
        offsets = np.arange(-(self.seq_len - 1), 2, dtype=np.int64)  # (K+1,): -(K-1) .. +1
        # (B, K+1) absolute frame indices, clamped to the episode's first frame (acting-time padding).
        window = np.maximum(a[:, None] + offsets[None, :], self._episode_start[slot][:, None])
        window %= self.capacity
        out = {
            "obs": {k: v[window] for k, v in self._frames.items()},
            "action": self._action[slot],
            "reward": self._reward[slot],
            "terminated": self._terminated[slot].astype(np.float32),
            "truncated": self._truncated[slot].astype(np.float32),
            "discount": np.full(a.shape, self.gamma, dtype=np.float32),
            "indices": slot,
            "frame_ids": window,
        }
        if self.n_step > 1:
            out.update(self._n_step(a, slot, offsets[1:]))
        return out

    def _n_step(self, a: np.ndarray, slot: np.ndarray, offsets: np.ndarray) -> dict:
        """m-step reward, flags, discount and next window for transitions ``a`` (module docstring)."""
        j = np.arange(self.n_step, dtype=np.int64)
        ahead = a[:, None] + j[None, :]  # (B, n) absolute indices of the look-ahead transitions
        s = ahead % self.capacity
        ends = self._terminated[s] | self._truncated[s]
        ok = (ahead < self._t - 1) & self._has_action[s]
        ok &= self._episode_start[s] == self._episode_start[slot][:, None]
        ok[:, 1:] &= ~np.cumsum(ends[:, :-1], axis=1, dtype=np.int64).astype(bool)  # stop after an end
        ok = np.cumprod(ok, axis=1, dtype=bool)  # a contiguous prefix; column 0 is always true
        m = ok.sum(axis=1)
        powers = self.gamma ** j.astype(np.float64)
        reward = (self._reward[s] * powers[None, :] * ok).sum(axis=1)
        last = (a + m - 1) % self.capacity
        nxt = np.maximum((a + m)[:, None] + offsets[None, :] - 1, self._episode_start[slot][:, None])
        nxt %= self.capacity
        return {
            "reward": reward.astype(np.float32),
            "terminated": self._terminated[last].astype(np.float32),
            "truncated": self._truncated[last].astype(np.float32),
            "discount": (self.gamma ** m.astype(np.float64)).astype(np.float32),
            "next_obs": {k: v[nxt] for k, v in self._frames.items()},
            "next_frame_ids": nxt,
        }

    # ------------------------------------------------------------------ memory

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {_OBS_PREFIX + k: v for k, v in self._frames.items()}
        arrays.update(
            action=self._action,
            reward=self._reward,
            terminated=self._terminated,
            truncated=self._truncated,
            has_action=self._has_action,
            episode_start=self._episode_start,
        )
        return arrays

    @property
    def nbytes(self) -> int:
        """Bytes allocated by all storage arrays (at full capacity)."""
        return int(sum(v.nbytes for v in self._arrays().values()))

    def memory_report(self) -> str:
        """A few lines for the start of a run: allocation per key and current fill (MB = 10^6 bytes)."""
        lines = [
            f"SequenceReplayBuffer: {self.capacity} frame slots, seq_len K={self.seq_len}, "
            f"{self.nbytes / 1e6:.1f} MB allocated"
        ]
        for key, frames in self._frames.items():
            lines.append(
                f"  {key:<14} {str(frames.dtype):<8} {self._shapes[key]!s:<16} {frames.nbytes / 1e6:9.2f} MB"
            )
        meta = sum(v.nbytes for k, v in self._arrays().items() if not k.startswith(_OBS_PREFIX))
        lines.append(f"  {'per-step data':<14} {'':<8} {'':<16} {meta / 1e6:9.2f} MB (action, reward, flags)")
        lines.append(f"  stored: {self.frames_stored} frames, {len(self)} samplable transitions")
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict:
        """Copies of the occupied rows plus counters and the sampling RNG: numpy arrays and ints only."""
        # Rows [0, min(t, capacity)) are the slots ever written; after discard_episode some of them may
        # lie below the floor, which is saved too.
        written = min(self._t, self.capacity)
        d: dict = {k: v[:written].copy() for k, v in self._arrays().items()}
        d.update(
            format_version=_FORMAT_VERSION,
            capacity=self.capacity,
            seq_len=self.seq_len,
            action_dim=self.action_dim,
            frames_written=self._t,
            open=int(self._open),
            current_episode_start=self._current_episode_start,
            num_transitions=self._num_transitions,
            floor=self._floor,
            rng_state=_rng_state_to_array(self._rng),
        )
        return d

    def load_state_dict(self, d: Mapping) -> None:
        """Restore :meth:`state_dict` output (ints may arrive as 0-d arrays, as from np.load)."""

        def scalar(name: str) -> int:
            if name not in d:
                raise ValueError(f"replay state is missing {name!r}")
            return int(np.asarray(d[name]))

        if scalar("format_version") != _FORMAT_VERSION:
            raise ValueError(f"replay state format {scalar('format_version')} != {_FORMAT_VERSION}")
        for name, mine in (
            ("capacity", self.capacity),
            ("seq_len", self.seq_len),
            ("action_dim", self.action_dim),
        ):
            if scalar(name) != mine:
                raise ValueError(f"replay state has {name}={scalar(name)}, this buffer has {name}={mine}")
        saved_keys = {k[len(_OBS_PREFIX) :] for k in d if isinstance(k, str) and k.startswith(_OBS_PREFIX)}
        if saved_keys != set(self._shapes):
            raise ValueError(
                f"replay state has observation keys {sorted(saved_keys)}, expected {sorted(self._shapes)}"
            )
        t = scalar("frames_written")
        stored = min(t, self.capacity)
        arrays = self._arrays()
        for name, target in arrays.items():
            if name not in d:
                raise ValueError(f"replay state is missing {name!r}")
            value = np.asarray(d[name])
            expected = (stored, *target.shape[1:])
            if value.shape != expected or value.dtype != target.dtype:
                raise ValueError(
                    f"replay state {name!r} is {value.dtype} {value.shape}, "
                    f"expected {target.dtype} {expected}"
                )
        for name, target in arrays.items():
            target[:stored] = d[name]
            target[stored:] = 0
        self._t = t
        self._open = bool(scalar("open"))
        self._current_episode_start = scalar("current_episode_start")
        self._num_transitions = scalar("num_transitions")
        # Files written before discard_episode existed have no floor: nothing was ever discarded.
        self._floor = scalar("floor") if "floor" in d else 0
        self._rng.bit_generator.state = _rng_state_from_array(d["rng_state"])

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` with ``np.savez`` (no pickle) to ``path`` exactly, atomically."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".replay-", suffix=".tmp", dir=directory)
        try:
            # A file object stops np.savez from appending ".npz"; fsync before the rename so a crash
            # leaves either the old file or the complete new one.
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in self.state_dict().items()})
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self, path: str | os.PathLike) -> None:
        """Restore a file written by :meth:`save` into this buffer (same capacity, K, spaces)."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, EOFError) as e:
            raise ValueError(f"{path} is not a readable replay buffer file: {e}") from e
        self.load_state_dict(d)
