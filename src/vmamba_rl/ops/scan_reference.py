"""The plain selective scan (Mamba S6): a Python loop over time, the oracle for every other backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(M: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C of shape (Bt, N, L) or (Bt, G, N, L) -> (Bt, channels, N, L).

    With G groups, contiguous blocks of channels/G channels share one group's B and C.
    """
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], channels, M.shape[1], M.shape[2])
    G = M.shape[1]
    if channels % G != 0:
        raise ValueError(f"channels ({channels}) must be divisible by the number of groups ({G})")
    return M.repeat_interleave(channels // G, dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Reference scan. u, delta (Bt, D, L); A (D, N); B, C (Bt, G, N, L) or (Bt, N, L) -> y (Bt, D, L).

    ``delta = softplus(delta + delta_bias)``; ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``;
    ``y_t = <C_t, h_t> + D u_t``. Computed in float32 (or float64 when given), returned in u's dtype.
    """
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    Bt, Dch, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B.to(ct), Dch)  # (Bt, D, N, L)
    Cx = expand_groups(C.to(ct), Dch)
    h = u.new_zeros(Bt, Dch, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)  # (Bt, D, N)
        h = dA * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(ct)[None, :, None] * u
    return y.to(dtype_in)
