"""Chunked selective scan in pure torch: vectorised over time inside a chunk, sequential across chunks.

Within a chunk starting after state ``h0`` the recurrence ``h_t = a_t h_{t-1} + x_t`` with
``a_t = exp(delta_t A)`` has the closed form

    h_t = exp(S_t) * (h0 + cumsum_k exp(-S_k) x_k),    S_t = cumsum_{k<=t} delta_k A  (<= 0),

so one chunk costs a handful of elementwise ops and two cumsums. ``exp(-S_k)`` grows with the chunk's
summed decay, so the chunk length is chosen from the data such that ``max |S|`` stays below a limit far
from the overflow point (fp32 overflows at exp(88.7)); see :func:`_choose_chunk`. A single step whose decay
exceeds the limit is clamped to it: ``exp(-limit)`` is below the working precision, so the state is reset
either way and the result is unchanged to that precision.

Works on any device; autograd differentiates through the torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# |log decay| allowed inside one chunk. fp32: exp(60) = 1e26 stays far below the 3.4e38 overflow even
# after multiplying by inputs; exp(-60) = 1e-26 is still a normal number. fp64 has room for much more.
_LOG_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
# Elements per chunk tensor (Bt x D x N x T). CPU: 4M fp32 = 16 MB keeps clear of glibc's mmap threshold.
# GPU: the cap only trades memory for kernel launches; with 4M the light preset's batch (256 frames,
# 4 x 128 channels, N 16) ran as 4 micro-batches x 32 chunks of 8 steps, launch-bound (docs/benchmarks.md,
# "GPU"). 64M (256 MB per fp32 tensor) lets it run as one batch in chunks of up to 32.
_CHUNK_ELEMS = {"cpu": 4 << 20, "other": 64 << 20}
_MAX_CHUNK = 256
_MIN_CHUNK = 8


def _choose_chunk(delta: torch.Tensor, amax: torch.Tensor, limit: float, t_cap: int) -> int:
    """Largest power-of-two chunk T <= t_cap whose summed decay ``|A|max * sum(delta)`` stays <= limit.

    delta (Bt, D, L) after softplus; amax (D,) = max_n |A[d, n]|. Per-step decays are clamped to
    ``limit`` first, so T = 1 always passes.
    """
    L = delta.shape[-1]
    w = (delta * amax[None, :, None]).clamp_(max=limit)  # (Bt, D, L) upper bound of |log a_t| per step
    wmax = float(w.max())
    if wmax == 0.0:
        return t_cap
    # Guaranteed-safe start: T * max step <= limit; then grow while the exact chunk sums allow.
    T = 1
    while T * 2 <= t_cap and T * 2 * wmax <= limit:
        T *= 2
    while T * 2 <= t_cap:
        T2 = T * 2
        pad = (-L) % T2
        wp = F.pad(w, (0, pad)) if pad else w
        if float(wp.unflatten(-1, (-1, T2)).sum(-1).max()) > limit:
            break
        T = T2
    return T


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Chunked log-space scan. u, delta (Bt, D, L); A (D, N); B, C (Bt, G, N, L) or (Bt, N, L);
    D, delta_bias (D,) -> y (Bt, D, L) in u's dtype. Computed in fp32 (fp64 for fp64 inputs).
    """
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    Bt, Dch, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bg = (B if B.dim() == 4 else B.unsqueeze(1)).to(ct)  # (Bt, G, N, L)
    Cg = (C if C.dim() == 4 else C.unsqueeze(1)).to(ct)
    G = Bg.shape[1]
    if Dch % G != 0:
        raise ValueError(f"channels ({Dch}) must be divisible by the number of groups ({G})")
    Dg = Dch // G

    limit = _LOG_LIMIT[ct]
    with torch.no_grad():
        amax = A.detach().abs().amax(-1)  # (D,)
        # Clamp per-step decays only if some step could exceed the limit (rare: huge delta or |A|).
        clamp = float((delta.detach().amax(dim=(0, 2)) * amax).max()) > limit if L > 0 else False
        # Memory: every chunk tensor is (bt, D, N, T); micro-batch over the batch if even T = 8 is too big.
        per_item = Dch * N
        cap = _CHUNK_ELEMS["cpu" if u.device.type == "cpu" else "other"]
        bt_step = max(1, min(Bt, cap // max(1, per_item * _MIN_CHUNK)))
        t_cap = max(_MIN_CHUNK, min(_MAX_CHUNK, cap // max(1, bt_step * per_item)))
        t_cap = 1 << (t_cap.bit_length() - 1)  # power of two
        T = _choose_chunk(delta.detach(), amax, limit, min(t_cap, max(1, L))) if L > 0 else 1

    A4 = A[None, :, :, None]  # (1, D, N, 1)
    ys = []
    for b0 in range(0, Bt, bt_step):
        b1 = min(Bt, b0 + bt_step)
        nb = b1 - b0
        du = delta[b0:b1] * u[b0:b1]  # (nb, D, L)
        h = u.new_zeros(nb, Dch, N)
        y_chunks = []
        for s in range(0, L, T):
            e = min(L, s + T)
            logd = delta[b0:b1, :, None, s:e] * A4  # (nb, D, N, t) log decay per step
            if clamp:
                logd = logd.clamp(min=-limit)
            S = logd.cumsum(-1)
            dec = S.exp()  # exp(S_t) in (0, 1]
            # x_k = delta_k u_k B_k (B shared by the D/G channels of a group)
            x = (du[:, :, None, s:e].view(nb, G, Dg, 1, e - s) * Bg[b0:b1, :, None, :, s:e]).view(
                nb, Dch, N, e - s
            )
            # exp(-S) rather than x / dec: the division's backward squares 1/dec (e^120 overflows fp32)
            hs = dec * (h[..., None] + (x * (-S).exp()).cumsum(-1))  # (nb, D, N, t)
            yc = (hs.view(nb, G, Dg, N, e - s) * Cg[b0:b1, :, None, :, s:e]).sum(3)  # (nb, G, Dg, t)
            y_chunks.append(yc.reshape(nb, Dch, e - s))
            h = hs[..., -1]
        ys.append(torch.cat(y_chunks, dim=-1) if y_chunks else u.new_zeros(nb, Dch, 0))
    y = torch.cat(ys, dim=0)
    if D is not None:
        y = y + D.to(ct)[None, :, None] * u
    return y.to(dtype_in)
