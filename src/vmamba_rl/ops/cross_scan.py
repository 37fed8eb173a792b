"""Four-direction cross-scan and cross-merge of SS2D.

The (H, W) token map is read as four sequences of length L = H*W: row-major, column-major, and both
reversed. Layout is channel-first with time last, (Bt, 4, C, L), so that after a free reshape to
(Bt, 4*C, L) each channel's sequence is contiguous: the layout every scan backend walks fastest.
"""

from __future__ import annotations

import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """x (Bt, C, H, W) -> xs (Bt, 4, C, H*W): [row-major, column-major, reversed row, reversed column]."""
    row = x.flatten(2)  # (Bt, C, L), index h*W + w
    col = x.transpose(2, 3).flatten(2)  # index w*H + h
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """ys (Bt, 4, C, H*W) -> y (Bt, C, H, W): each direction mapped back to the grid, summed.

    The adjoint of :func:`cross_scan` (so its gradient is cross_scan of the incoming gradient).
    """
    Bt, _, C, L = ys.shape
    if L != H * W:
        raise ValueError(f"cross_merge: sequence length {L} != H*W = {H}*{W}")
    row = ys[:, 0] + ys[:, 2].flip(-1)  # (Bt, C, L) in row-major order
    col = ys[:, 1] + ys[:, 3].flip(-1)  # column-major order
    return row.view(Bt, C, H, W) + col.view(Bt, C, W, H).transpose(2, 3)
