"""DrQ random shift: the translation against numpy's edge padding, one offset per run of windows, and
its place in the TD3 update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from vmamba_rl.augmentation import frame_shifts, random_shift, shift_frames


def _reference_shift(frame: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """DrQ's definition: pad by ``pad`` replicating the edge, crop the original size at (pad+dy, pad+dx)."""
    C, H, W = frame.shape
    padded = np.pad(frame, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return padded[:, pad + dy : pad + dy + H, pad + dx : pad + dx + W]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shift_equals_edge_padding_then_crop(dtype):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (6, 2, 9, 7), generator=g).to(dtype)
    pad = 3
    offsets = torch.randint(-pad, pad + 1, (6, 2), generator=g)
    offsets[0] = torch.tensor([0, 0])
    offsets[1] = torch.tensor([-pad, pad])
    got = shift_frames(frames, offsets)
    assert got.dtype == dtype and got.shape == frames.shape
    for u in range(6):
        want = _reference_shift(frames[u].numpy(), int(offsets[u, 0]), int(offsets[u, 1]), pad)
        np.testing.assert_array_equal(got[u].numpy(), want)
    assert torch.equal(got[0], frames[0])  # offset (0, 0) is the identity


def test_one_offset_per_run_of_windows_and_every_step_of_a_window_moves_alike():
    B, K, group, pad = 12, 3, 4, 2
    # three runs of 4 consecutive windows over disjoint frames, as replay_segment batches are laid out
    index = torch.stack([torch.arange(b, b + K) + (b // group) * 10 for b in range(B)])
    U = int(index.max()) + 2  # one frame nobody reads
    seen = set()
    for seed in range(40):
        off = frame_shifts(index, U, pad, group, torch.Generator().manual_seed(seed))
        assert off.shape == (U, 2) and off.abs().max() <= pad
        for r in range(B // group):
            frames = index[r * group : (r + 1) * group].unique()
            assert (off[frames] == off[frames[0]]).all()  # the whole run shares one offset
            seen.add(tuple(off[frames[0]].tolist()))
        assert (off[U - 1] == 0).all()
    assert len(seen) > 15  # the offsets cover the (2 pad + 1)^2 = 25 choices, not a few


def test_a_frame_shared_by_two_runs_takes_the_first_windows_offset():
    index = torch.tensor([[0, 1], [1, 2]])  # frame 1 is read by window 0 (run 0) and window 1 (run 1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    off = frame_shifts(index, 3, 4, 1, g1)
    runs = torch.randint(0, 9, (2, 2), generator=g2) - 4
    assert torch.equal(off[0], runs[0]) and torch.equal(off[1], runs[0]) and torch.equal(off[2], runs[1])


def test_zero_pad_is_the_identity():
    frames = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    assert random_shift(frames, torch.zeros(1, 2, dtype=torch.long), 0, 1, torch.Generator()) is frames


def test_td3_update_reads_shifted_frames_and_rejects_a_shift_too_large(tmp_path):
    from vmamba_rl.agents import make_agent
    from vmamba_rl.envs.make import make_env

    cfg = tiny_config(tmp_path, augment_shift=4, scan_backend="chunked")
    env = make_env(cfg)
    try:
        agent = make_agent(env, None, cfg)
        calls = []
        original = agent._augment

        def spy(frames, index):
            out = original(frames, index)
            calls.append((frames, out))
            return out

        agent._augment = spy
        b = {
            "base": torch.randn(4, cfg.seq_len, 10),
            "next_base": torch.randn(4, cfg.seq_len, 10),
            "action": torch.rand(4, 3) * 2 - 1,
            "reward": torch.randn(4, 1),
            "terminated": torch.zeros(4, 1),
            "discount": torch.full((4, 1), 0.9),
            "depth_state": torch.randint(0, 256, (4 * cfg.seq_len, 1, 64, 64), dtype=torch.uint8),
            "index_state": torch.arange(4 * cfg.seq_len).view(4, cfg.seq_len),
            "depth_next": torch.randint(0, 256, (4 * cfg.seq_len, 1, 64, 64), dtype=torch.uint8),
            "index_next": torch.arange(4 * cfg.seq_len).view(4, cfg.seq_len),
        }
        agent.update(b)
        assert len(calls) == 2  # state and next frames
        for frames, out in calls:
            assert out.shape == frames.shape and not torch.equal(out, frames)
        with pytest.raises(ValueError, match="--augment_shift 32 is too large for 64x64"):
            make_agent(env, None, tiny_config(tmp_path, augment_shift=32))
    finally:
        env.close()
