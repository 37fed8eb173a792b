"""Sequence replay: single frames in rings, episode boundaries, K-step windows built at sample time.

Streams: with N environments (or Ray workers) transitions of several episodes arrive interleaved. The
buffer keeps one ring per *stream* (an environment, ``num_streams`` of them, ``capacity // num_streams``
slots each, as Stable-Baselines3 splits its buffer per environment), and every ``add`` names its stream,
so a window never mixes environments or episodes. The collector says where an episode starts
(``first=True``); nothing is inferred by comparing arrays. Everything below holds per stream: absolute
indices count the frames written to that stream, and ``capacity`` means the stream's share.

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
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vmamba_rl.checkpoint import generator_state, set_generator_state

_FORMAT_VERSION = 2  # 2: per-stream counters; 1 (one stream) still loads
_OBS_PREFIX = "obs/"
# Reject-and-redraw rounds before sample() falls back to enumerating the valid transitions.
_MAX_REJECTION_ROUNDS = 32


class NonFiniteTransitionError(ValueError):
    """A transition holds a NaN or inf (observation, action or reward); it was not stored."""


@dataclass
class ReplayBatch:
    """A sampled batch, one layout whatever the sampling options (numpy arrays, B rows, K = seq_len).

    ``obs`` / ``next_obs``: {key: (B, K, *shape)} raw stored dtype, the state window and the next-state
    window (one step on, or m steps with ``n_step``; with one-step sampling both are views of one
    gather). ``frame_ids`` / ``next_frame_ids`` (B, K) int64: the buffer slot of every window frame
    (equal ids = the same stored frame, so an encoder can process each distinct frame once).
    ``action`` (B, A) float32 in [-1, 1]; ``reward`` (the m-step discounted sum), ``terminated``,
    ``truncated``, ``discount`` (gamma^m) (B,) float32; ``indices`` (B,) int64 buffer slots.
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    frame_ids: np.ndarray
    next_frame_ids: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    discount: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @classmethod
    def from_windows(
        cls,
        windows: Mapping[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray | None = None,
        gamma: float = 0.99,
    ) -> ReplayBatch:
        """A batch from explicit K+1-frame windows {key: (B, K+1, *shape)} (tests, offline data): state
        = frames [0:K], next state = [1:K+1], every frame distinct, one-step discount ``gamma``."""
        w = {k: np.asarray(v) for k, v in windows.items()}
        B, K1 = next(iter(w.values())).shape[:2]
        ids = np.arange(B * K1, dtype=np.int64).reshape(B, K1)
        reward = np.asarray(reward, np.float32).reshape(B)
        return cls(
            obs={k: v[:, :-1] for k, v in w.items()},
            next_obs={k: v[:, 1:] for k, v in w.items()},
            frame_ids=ids[:, :-1],
            next_frame_ids=ids[:, 1:],
            action=np.asarray(action, np.float32).reshape(B, -1),
            reward=reward,
            terminated=np.asarray(terminated, np.float32).reshape(B),
            truncated=np.zeros(B, np.float32) if truncated is None else np.asarray(truncated, np.float32),
            discount=np.full(B, gamma, np.float32),
            indices=ids[:, -2],
        )


class SequenceReplayBuffer:
    """Rings of single frames, one per stream, sampled as episode-aware K-step windows (module docstring).

    Args:
        capacity: number of frame slots (``--buffer_size``), split evenly over the streams; an episode of
            T steps uses T + 1 of its stream's slots.
        seq_len: K, the history length the networks read.
        observation_space: the single-step Dict space, e.g. depth uint8 (1, 64, 64) and base float32
            (10,); each key is stored with its own shape and dtype.
        action_dim: A; actions are stored as float32, already normalised to [-1, 1].
        seed: seed of the sampling generator (its state is part of ``state_dict``).
        segment: M, transitions per sampled run (1 = independent transitions; see the module docstring).
        n_step: n, transitions summed into one sampled return (1 = one-step TD).
        gamma: discount used for the n-step sums and ``discount``.
        num_streams: S, the number of environments writing interleaved episodes (one ring each).
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
        num_streams: int = 1,
    ) -> None:
        if int(num_streams) < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if int(capacity) // int(num_streams) < 2:
            raise ValueError(
                f"capacity must give each of the {num_streams} stream(s) >= 2 slots (a transition needs "
                f"two frames), got {capacity}"
            )
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
        self.num_streams = int(num_streams)
        self.stream_capacity = self.capacity // self.num_streams  # C: slots per stream
        self.seq_len = int(seq_len)
        self.action_dim = int(action_dim)
        self.segment = int(segment)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.observation_space = observation_space
        # set by the owning agent: environment-unit actions of the design document's add() form
        self.action_scaler: Any = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for key, space in observation_space.spaces.items():
            if space.shape is None or space.dtype is None:
                raise ValueError(f"observation key {key!r} has no fixed shape/dtype ({space})")
            self._shapes[key] = tuple(space.shape)
            self._dtypes[key] = np.dtype(space.dtype)
        if not self._shapes:
            raise ValueError("observation_space has no keys")

        n, S = self.stream_capacity * self.num_streams, self.num_streams
        # np.zeros maps pages lazily, so an unfilled buffer costs little resident memory.
        self._frames = {k: np.zeros((n, *s), dtype=self._dtypes[k]) for k, s in self._shapes.items()}
        self._action = np.zeros((n, self.action_dim), dtype=np.float32)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._has_action = np.zeros(n, dtype=bool)
        self._episode_start = np.zeros(n, dtype=np.int64)  # absolute index of the episode's first frame
        # Per stream: frames ever written (the next frame goes to slot _t % C of the stream's ring) ...
        self._t = np.zeros(S, dtype=np.int64)
        self._open = np.zeros(S, dtype=bool)  # ... whether its newest frame ends an open episode ...
        self._current_episode_start = np.zeros(S, dtype=np.int64)
        self._num_transitions = np.zeros(S, dtype=np.int64)  # ... slots with has_action ...
        # ... and the absolute index below which frames are lost even if the ring has not wrapped past
        # them: a discarded episode overwrote them before it was rolled back (see discard_episode).
        self._floor = np.zeros(S, dtype=np.int64)
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # ------------------------------------------------------------------ writing

    def _stream(self, stream: int) -> int:
        s = int(stream)
        if not 0 <= s < self.num_streams:
            raise ValueError(f"stream must be in [0, {self.num_streams}), got {stream}")
        return s

    def _slot(self, s: np.ndarray | int, a: np.ndarray | int) -> np.ndarray:
        """(stream, absolute index) -> buffer row."""
        return s * self.stream_capacity + a % self.stream_capacity

    def add(
        self,
        obs: Any,
        action: Any,
        reward: Any,
        next_obs: Any,
        terminated: Any,
        truncated: Any,
        done: Any = None,
        *,
        stream: int = 0,
        first: bool = False,
    ) -> None:
        """Store one transition of ``stream``, in either of two forms:

        - ``add(obs, action, reward, next_obs, terminated, truncated)``: single-step dict observations,
          the action in [-1, 1], shape (A,) (what the agents and collectors call);
        - ``add(base, depth, action, reward, next_base, next_depth, done)``: the design document's form,
          positional, with the environment-unit action ``select_action`` returned (scaled with the
          owning agent's action space) and K-step or single-step arrays (the newest step is stored);
          ``done`` is stored as terminated, as that document's TD3 treats it.

        ``first``: ``obs`` is the reset frame of a new episode (the collector says so). A new episode
        also starts when the stream has none open (after a terminated / truncated / done step or
        :meth:`end_episode`). Otherwise ``obs`` is the previous transition's ``next_obs``, already stored.
        """
        if done is None and isinstance(obs, Mapping):
            self._add(obs, action, reward, next_obs, terminated, truncated, stream=stream, first=first)
            return
        if done is None or isinstance(obs, Mapping):
            raise TypeError(
                "add() takes (obs, action, reward, next_obs, terminated, truncated) with dict observations, "
                "or (base, depth, action, reward, next_base, next_depth, done) with arrays"
            )
        self._add_design_form(obs, action, reward, next_obs, terminated, truncated, done, stream=stream)

    @property
    def size(self) -> int:
        """Stored transitions (``len(buffer)``; the design document's name)."""
        return len(self)

    def _add_design_form(
        self,
        base: Any,
        depth: Any,
        action: Any,
        reward: float,
        next_base: Any,
        next_depth: Any,
        done: Any,
        *,
        stream: int = 0,
    ) -> None:
        if self.action_scaler is None:
            raise TypeError(
                "add(base, depth, action, ...) takes the environment-unit action and needs the agent's "
                "action space: use agent.replay_buffer, or add(obs, action_in_[-1,1], ...)"
            )

        def step(name: str, x: Any) -> np.ndarray:
            x = np.asarray(x)
            ndim = len(self._shapes[name])
            return x[-1] if x.ndim == ndim + 1 else x  # a K-step window: its newest step

        obs = {"base": step("base", base), "depth": step("depth", depth)}
        nxt = {"base": step("base", next_base), "depth": step("depth", next_depth)}
        act = self.action_scaler.to_norm(np.asarray(action, np.float32))
        self._add(obs, act, float(reward), nxt, bool(done), False, stream=stream)

    def _add(
        self,
        obs: Mapping[str, np.ndarray],
        action: np.ndarray,
        reward: float,
        next_obs: Mapping[str, np.ndarray],
        terminated: bool,
        truncated: bool,
        *,
        stream: int = 0,
        first: bool = False,
    ) -> None:
        s = self._stream(stream)
        obs_arr = self._check_obs(obs, "obs")
        next_arr = self._check_obs(next_obs, "next_obs")
        act = np.asarray(action, dtype=np.float32)
        if act.size != self.action_dim:
            raise ValueError(f"action must have {self.action_dim} elements, got shape {act.shape}")
        if not (np.all(np.isfinite(act)) and np.isfinite(reward)):
            raise NonFiniteTransitionError(
                f"action {act.tolist()} / reward {reward} must be finite; nothing was stored"
            )

        if first or not self._open[s] or self._t[s] == 0:
            self._current_episode_start[s] = self._t[s]
            self._write_frame(s, obs_arr)
        slot = self._slot(s, self._t[s] - 1)
        self._action[slot] = act.reshape(self.action_dim)
        self._reward[slot] = float(reward)
        self._terminated[slot] = bool(terminated)
        self._truncated[slot] = bool(truncated)
        self._has_action[slot] = True
        self._num_transitions[s] += 1
        self._write_frame(s, next_arr)
        self._open[s] = not (terminated or truncated)

    def end_episode(self, stream: int | None = None) -> None:
        """Close the stream's current episode (every stream's with None) without a flag."""
        if stream is None:
            self._open[:] = False
        else:
            self._open[self._stream(stream)] = False

    def discard_episode(self, stream: int = 0) -> int:
        """Remove the stream's current unfinished episode (every frame since its reset frame).

        For an episode a simulator fault broke: its transitions must never be sampled. The write
        position rolls back to the episode's first frame, so the next :meth:`add` starts a new episode
        in the same slots. Older frames the broken episode had overwritten (after the ring wrapped) are
        not restored; they stay unsamplable. Does nothing when no episode is open (the last one ended
        with a terminated/truncated flag or :meth:`end_episode`, or nothing was added since).

        Returns the number of transitions removed.
        """
        s = self._stream(stream)
        if not self._open[s]:
            return 0
        C = self.stream_capacity
        start, end = int(self._current_episode_start[s]), int(self._t[s])
        # An episode longer than the ring fills every slot (each counted once).
        slots = self._slot(s, np.arange(start, min(end, start + C), dtype=np.int64))
        removed = int(np.count_nonzero(self._has_action[slots]))
        self._has_action[slots] = False
        self._num_transitions[s] -= removed
        # Absolute frames below end - C were overwritten by this episode; after the rollback the ring
        # would count them as stored again, so the floor keeps them out. An episode longer than the
        # ring leaves nothing stored (floor = start).
        self._floor[s] = min(max(int(self._floor[s]), end - C), start)
        self._t[s] = start
        self._open[s] = False
        return removed

    def _check_obs(self, obs: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
        """Validate keys, shapes and values; cast to the stored dtype (same-kind casts only).

        A NaN or inf in a float observation is refused: a broken frame must not enter replay."""
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
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise NonFiniteTransitionError(f"{name}[{key!r}] holds NaN or inf; nothing was stored")
            out[key] = value.astype(self._dtypes[key], copy=False)
        return out

    def _write_frame(self, s: int, obs: dict[str, np.ndarray]) -> None:
        slot = self._slot(s, self._t[s])
        if self._has_action[slot]:  # overwriting the oldest frame drops its transition
            self._has_action[slot] = False
            self._num_transitions[s] -= 1
        for key, value in obs.items():
            self._frames[key][slot] = value
        self._episode_start[slot] = self._current_episode_start[s]
        self._t[s] += 1

    # ------------------------------------------------------------------ validity

    @property
    def _oldest(self) -> np.ndarray:
        """(S,) absolute index of each stream's oldest frame still stored."""
        return np.maximum(self._t - self.stream_capacity, self._floor)

    def _is_valid(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Streams and absolute indices (broadcastable) -> bool: a stored transition whose whole window
        is stored."""
        s, a = np.broadcast_arrays(np.asarray(s, np.int64), np.asarray(a, np.int64))
        oldest = self._oldest[s]
        in_range = (a >= oldest) & (a < self._t[s] - 1)
        slot = self._slot(s, np.where(in_range, a, 0))
        first_needed = np.maximum(a - (self.seq_len - 1), self._episode_start[slot])
        return in_range & self._has_action[slot] & (first_needed >= oldest)

    def __len__(self) -> int:
        """Number of samplable transitions."""
        total = 0
        for s, oldest in enumerate(self._oldest.tolist()):
            # Only the oldest episode can have lost its head, and only its first K-1 stored transitions
            # can need a lost frame: check those few slots instead of the whole ring.
            head = self._slot(s, np.arange(oldest, min(oldest + self.seq_len - 1, int(self._t[s]))))
            lost = np.count_nonzero(self._has_action[head] & (self._episode_start[head] < oldest))
            total += int(self._num_transitions[s]) - int(lost)
        return total

    def counters(self) -> dict[str, list[int]]:
        """Per-stream frames written and transitions stored (what a checkpoint records of its replay)."""
        return {"frames_written": self._t.tolist(), "num_transitions": self._num_transitions.tolist()}

    def newest_frame(self, stream: int) -> dict[str, np.ndarray] | None:
        """The stream's most recently written frame (None when it has none)."""
        s = self._stream(stream)
        if self._t[s] == 0:
            return None
        slot = self._slot(s, self._t[s] - 1)
        return {k: v[slot] for k, v in self._frames.items()}

    @property
    def frames_stored(self) -> int:
        """Number of stored frames (occupied slots whose frame is still valid), over all streams."""
        return int((self._t - self._oldest).sum())

    def _to_absolute(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Buffer rows -> (stream, absolute index)."""
        C = self.stream_capacity
        s = slots // C
        oldest = self._oldest[s]
        return s, oldest + (slots % C - oldest) % C

    def valid_indices(self) -> np.ndarray:
        """Buffer rows (n,) of every samplable transition, stream by stream, oldest first (O(capacity):
        tests, debugging)."""
        parts = []
        for s in range(self.num_streams):
            a = np.arange(self._oldest[s], self._t[s], dtype=np.int64)
            parts.append(self._slot(s, a[self._is_valid(s, a)]))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ reading

    def _draw(self, lo: np.ndarray, span: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Uniform draws over the union of the streams' ranges [lo_s, lo_s + span_s): (stream, index).

        With one stream this is ``lo + rng.integers(0, span)``, the draw of the single-ring buffer."""
        span = np.maximum(span, 0)
        u = self._rng.integers(0, int(span.sum()), size=size)
        if self.num_streams == 1:
            return np.zeros(size, np.int64), lo[0] + u
        ends = np.cumsum(span)
        s = np.searchsorted(ends, u, side="right")
        return s, lo[s] + u - (ends[s] - span[s])

    def _fallback(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        return self._to_absolute(self.valid_indices()[self._rng.integers(0, len(self), size=size)])

    def sample(self, batch_size: int) -> ReplayBatch:
        """Draw ``batch_size`` transitions uniformly (with replacement) over all samplable ones of every
        stream; with ``segment`` M > 1 they come as runs of up to M consecutive transitions of one
        stream (same marginal). See :class:`ReplayBatch` for the layout."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            raise ValueError("cannot sample: the buffer holds no samplable transition yet")
        if self.segment > 1:
            return self._gather(*self._sample_segments(batch_size))
        oldest, stored = self._oldest, self._t - self._oldest
        s_out = np.empty(batch_size, dtype=np.int64)
        a_out = np.empty(batch_size, dtype=np.int64)
        filled = 0
        # Rejection sampling keeps sample() O(B) instead of O(capacity): draw uniform frames and keep
        # the valid ones; accepted draws are uniform over the valid transitions. Invalid frames (the
        # final frame of each episode, a few at the ring's tail) are a small fraction.
        for _ in range(_MAX_REJECTION_ROUNDS):
            s, a = self._draw(oldest, stored, batch_size - filled)
            keep = self._is_valid(s, a)
            n = int(keep.sum())
            s_out[filled : filled + n], a_out[filled : filled + n] = s[keep], a[keep]
            filled += n
            if filled == batch_size:
                break
        else:
            s_out[filled:], a_out[filled:] = self._fallback(batch_size - filled)
        return self._gather(s_out, a_out)

    def _sample_segments(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream, absolute index) (B,) of runs of consecutive samplable transitions (module docstring)."""
        M = self.segment
        lo = self._oldest - (M - 1)
        span = self._t - 1 - lo  # anchors p in [lo, t - 1): the newest transition is at t - 2
        offsets = np.arange(M, dtype=np.int64)
        s_parts, a_parts, total = [], [], 0
        for _ in range(_MAX_REJECTION_ROUNDS):
            n_anchor = -(-(batch_size - total) // M)
            s, p = self._draw(lo, span, n_anchor)
            runs = p[:, None] + offsets[None, :]
            streams = np.broadcast_to(s[:, None], runs.shape)
            keep = self._is_valid(streams, runs)  # row-major: each run stays in time order
            s_parts.append(streams[keep])
            a_parts.append(runs[keep])
            total += int(keep.sum())
            if total >= batch_size:
                break
        else:
            s, a = self._fallback(batch_size - total)
            s_parts.append(s)
            a_parts.append(a)
        s_all, a_all = np.concatenate(s_parts), np.concatenate(a_parts)
        if a_all.size > batch_size:
            # Drop the surplus at random positions (not the tail of the last run), so no position
            # inside a run is favoured.
            keep = np.sort(self._rng.choice(a_all.size, size=batch_size, replace=False))
            s_all, a_all = s_all[keep], a_all[keep]
        return s_all, a_all

    def get(self, indices: np.ndarray) -> ReplayBatch:
        """The same batch as :meth:`sample` for given buffer rows (B,) of samplable transitions."""
        slots = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.stream_capacity * self.num_streams
        if slots.size and (slots.min() < 0 or slots.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}), got {slots.min()}..{slots.max()}")
        s, a = self._to_absolute(slots)
        bad = ~self._is_valid(s, a)
        if bad.any():
            raise ValueError(f"slot indices {slots[bad][:10].tolist()} are not samplable transitions")
        return self._gather(s, a)

    def _gather(self, s: np.ndarray, a: np.ndarray) -> ReplayBatch:
        """(stream, absolute transition index) (B,) -> batch; one fancy-index gather per key."""
        K = self.seq_len
        slot = self._slot(s, a)
        start = self._episode_start[slot][:, None]
        offsets = np.arange(-(K - 1), 2, dtype=np.int64)  # (K+1,): -(K-1) .. +1
        # (B, K+1) absolute frame indices, clamped to the episode's first frame (acting-time padding).
        window = self._slot(s[:, None], np.maximum(a[:, None] + offsets[None, :], start))
        frames = {k: v[window] for k, v in self._frames.items()}
        batch = ReplayBatch(
            obs={k: v[:, :K] for k, v in frames.items()},
            next_obs={k: v[:, 1:] for k, v in frames.items()},
            frame_ids=window[:, :K],
            next_frame_ids=window[:, 1:],
            action=self._action[slot],
            reward=self._reward[slot],
            terminated=self._terminated[slot].astype(np.float32),
            truncated=self._truncated[slot].astype(np.float32),
            discount=np.full(a.shape, self.gamma, dtype=np.float32),
            indices=slot,
        )
        if self.n_step > 1:
            self._n_step(batch, s, a, slot, start)
        return batch

    def _n_step(
        self, batch: ReplayBatch, s: np.ndarray, a: np.ndarray, slot: np.ndarray, start: np.ndarray
    ) -> None:
        """Replace the one-step parts of ``batch`` by the m-step ones (module docstring)."""
        j = np.arange(self.n_step, dtype=np.int64)
        ahead = a[:, None] + j[None, :]  # (B, n) absolute indices of the look-ahead transitions
        rows = self._slot(s[:, None], ahead)
        ends = self._terminated[rows] | self._truncated[rows]
        ok = (ahead < (self._t[s] - 1)[:, None]) & self._has_action[rows]
        ok &= self._episode_start[rows] == start
        ok[:, 1:] &= ~np.cumsum(ends[:, :-1], axis=1, dtype=np.int64).astype(bool)  # stop after an end
        ok = np.cumprod(ok, axis=1, dtype=bool)  # a contiguous prefix; column 0 is always true
        m = ok.sum(axis=1)
        powers = self.gamma ** j.astype(np.float64)
        last = self._slot(s, a + m - 1)
        offsets = np.arange(-(self.seq_len - 1), 1, dtype=np.int64)  # the K frames ending at a + m
        nxt = self._slot(s[:, None], np.maximum((a + m)[:, None] + offsets[None, :], start))
        batch.reward = (self._reward[rows] * powers[None, :] * ok).sum(axis=1).astype(np.float32)
        batch.terminated = self._terminated[last].astype(np.float32)
        batch.truncated = self._truncated[last].astype(np.float32)
        batch.discount = (self.gamma ** m.astype(np.float64)).astype(np.float32)
        batch.next_obs = {k: v[nxt] for k, v in self._frames.items()}
        batch.next_frame_ids = nxt

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
        streams = f", {self.num_streams} streams of {self.stream_capacity}" if self.num_streams > 1 else ""
        lines = [
            f"SequenceReplayBuffer: {self.capacity} frame slots{streams}, seq_len K={self.seq_len}, "
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

    def _written_rows(self, t: np.ndarray) -> np.ndarray:
        """Rows ever written, stream by stream (the part of the arrays a state dict carries)."""
        C = self.stream_capacity
        return np.concatenate(
            [s * C + np.arange(min(int(n), C), dtype=np.int64) for s, n in enumerate(t.tolist())]
        )

    def state_dict(self) -> dict:
        """Copies of the occupied rows plus counters and the sampling RNG: numpy arrays and ints only."""
        # The rows ever written; after discard_episode some of them may lie below the floor (saved too).
        rows = self._written_rows(self._t)
        d: dict = {k: v[rows] for k, v in self._arrays().items()}
        d.update(
            format_version=_FORMAT_VERSION,
            capacity=self.capacity,
            seq_len=self.seq_len,
            action_dim=self.action_dim,
            num_streams=self.num_streams,
            frames_written=self._t.copy(),
            open=self._open.astype(np.int64),
            current_episode_start=self._current_episode_start.copy(),
            num_transitions=self._num_transitions.copy(),
            floor=self._floor.copy(),
            rng_state=np.array(generator_state(self._rng), dtype=np.uint64),
        )
        return d

    def load_state_dict(self, d: Mapping) -> None:
        """Restore :meth:`state_dict` output (ints may arrive as 0-d arrays, as from np.load).

        Format 1 (one ring, before streams) loads into a one-stream buffer."""

        def scalar(name: str) -> int:
            if name not in d:
                raise ValueError(f"replay state is missing {name!r}")
            return int(np.asarray(d[name]))

        def per_stream(name: str, default: int | None = None) -> np.ndarray:
            if name not in d:
                if default is None:
                    raise ValueError(f"replay state is missing {name!r}")
                return np.full(self.num_streams, default, np.int64)
            v = np.asarray(d[name]).astype(np.int64).reshape(-1)
            if v.shape != (self.num_streams,):
                raise ValueError(f"replay state {name!r} has {v.size} values, expected {self.num_streams}")
            return v

        version = scalar("format_version")
        if version not in (1, _FORMAT_VERSION):
            raise ValueError(f"replay state format {version} is not one of 1, {_FORMAT_VERSION}")
        streams = scalar("num_streams") if version >= 2 else 1
        for name, theirs, mine in (
            ("capacity", scalar("capacity"), self.capacity),
            ("seq_len", scalar("seq_len"), self.seq_len),
            ("action_dim", scalar("action_dim"), self.action_dim),
            ("num_streams", streams, self.num_streams),
        ):
            if theirs != mine:
                raise ValueError(f"replay state has {name}={theirs}, this buffer has {name}={mine}")
        saved_keys = {k[len(_OBS_PREFIX) :] for k in d if isinstance(k, str) and k.startswith(_OBS_PREFIX)}
        if saved_keys != set(self._shapes):
            raise ValueError(
                f"replay state has observation keys {sorted(saved_keys)}, expected {sorted(self._shapes)}"
            )
        t = per_stream("frames_written")
        if np.any(t < 0):
            raise ValueError(f"replay state frames_written must be >= 0, got {t.tolist()}")
        rows = self._written_rows(t)
        arrays = self._arrays()
        for name, target in arrays.items():
            if name not in d:
                raise ValueError(f"replay state is missing {name!r}")
            value = np.asarray(d[name])
            expected = (rows.size, *target.shape[1:])
            if value.shape != expected or value.dtype != target.dtype:
                raise ValueError(
                    f"replay state {name!r} is {value.dtype} {value.shape}, "
                    f"expected {target.dtype} {expected}"
                )
        for name, target in arrays.items():
            target[:] = 0
            target[rows] = d[name]
        self._t = t
        self._open = per_stream("open").astype(bool)
        self._current_episode_start = per_stream("current_episode_start")
        self._num_transitions = per_stream("num_transitions")
        # Files written before discard_episode existed have no floor: nothing was ever discarded.
        self._floor = per_stream("floor", default=0)
        set_generator_state(self._rng, d["rng_state"])

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
        except OSError as e:  # a full disk: say which file, and how much room is left
            from vmamba_rl.checkpoint import write_error

            if os.path.exists(tmp):
                os.unlink(tmp)
            raise write_error(path, e) from e
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
