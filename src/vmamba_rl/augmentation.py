"""DrQ-style random-shift augmentation of depth frames for the TD3 updates.

DrQ (Kostrikov et al. 2020) and DrQ-v2 pad each image by a few pixels, replicating the edge, and crop
it back at a random offset: a random translation of up to ``pad`` pixels that regularises the critic of
a pixel-based off-policy agent. Here the frames of a batch are stored once each and windows index them
(``SequenceReplayBuffer`` batches of runs of consecutive windows), so the shift is drawn per run of
``group`` windows and applied to the frames those windows read: every step of a window moves the same
way, as DrQ moves the frames of one stack together, and a frame shared by the windows of one run is
shifted once. Replicate padding equals clamping the source index, so the crop is one gather on the
uint8 frames (no float copy, no padded tensor).
"""

from __future__ import annotations

import torch


def frame_shifts(
    index: torch.Tensor, num_frames: int, pad: int, group: int, generator: torch.Generator
) -> torch.Tensor:
    """One (dy, dx) offset in [-pad, pad] per frame: (U, 2) long.

    ``index`` (B, K) maps each window step to one of ``num_frames`` (U) frames; windows ``b`` with the
    same ``b // group`` share one offset. A frame read by windows of different runs takes the offset of
    the first window that reads it (deterministic); frames no window reads get offset 0.
    """
    B, K = index.shape
    device = index.device
    runs = torch.randint(0, 2 * pad + 1, (-(-B // group), 2), generator=generator, device=device) - pad
    per_step = runs.repeat_interleave(group, dim=0)[:B].repeat_interleave(K, dim=0)  # (B*K, 2)
    slot = torch.full((num_frames,), B * K, dtype=torch.long, device=device)
    slot.scatter_reduce_(0, index.reshape(-1), torch.arange(B * K, device=device), reduce="amin")
    offsets = torch.cat([per_step, per_step.new_zeros(1, 2)])  # the row B*K: frames nobody reads
    return offsets[slot]


def shift_frames(frames: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate each frame by its offset, edge pixels replicated: (U, C, H, W), (U, 2) -> (U, C, H, W).

    Output pixel (y, x) of frame u is input pixel (clamp(y + dy_u), clamp(x + dx_u)); any dtype.
    """
    U, _, H, W = frames.shape
    rows = (torch.arange(H, device=frames.device) + offsets[:, :1]).clamp_(0, H - 1)  # (U, H)
    cols = (torch.arange(W, device=frames.device) + offsets[:, 1:]).clamp_(0, W - 1)  # (U, W)
    u = torch.arange(U, device=frames.device)[:, None, None]
    # advanced indices around a slice put their dims first: (U, H, W, C)
    return frames[u, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_shift(
    frames: torch.Tensor, index: torch.Tensor, pad: int, group: int, generator: torch.Generator
) -> torch.Tensor:
    """``frames`` (U, C, H, W) read by windows ``index`` (B, K), each run of ``group`` windows shifted by
    its own random offset of up to ``pad`` pixels per axis. ``pad`` 0 returns ``frames`` itself."""
    if pad <= 0:
        return frames
    return shift_frames(frames, frame_shifts(index, frames.shape[0], pad, group, generator))
