"""Selective scan as Triton kernels: a fused forward and a hand-written backward that recomputes states.

One program owns ``BLOCK_D`` channels of one batch row and walks the sequence in chunks of ``BLOCK_T``
steps. Inside a chunk the recurrence ``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(delta_t A)``,
``x_t = delta_t B_t u_t``) is a ``tl.associative_scan`` over (BLOCK_D, NP, BLOCK_T) tiles with the affine
composition as combine function; the chunk-start state carries the chunks together. Loads are coalesced
along time (u, delta, B, C are time-contiguous). ``softplus(delta + delta_bias)`` and the ``D u`` skip are
fused; the state is fp32 whatever the input dtype (fp32, fp16, bf16).

The forward stores each chunk's start state, (Bt, D, n_chunks, NP) fp32: ``NP / BLOCK_T`` of u's size.
The backward walks the chunks last to first; for each it recomputes the chunk's states from the stored
start state, runs the reverse recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` (dL/dh_t) as a forward scan
of the time-flipped tiles (``associative_scan(reverse=True)`` is avoided: its order for non-commutative
combines is not settled, triton-lang/triton#4362), and forms every gradient from ``h_t``, ``g_t`` and
``a_t h_{t-1}``, with ``h_{t-1}`` from a scan of the steps shifted by one (no division by a decay that
may underflow, no cancellation in ``h_t - x_t``). ``BLOCK_D`` divides the channels
per group, so a program's channels share one group's B and C and it adds its (NP, BLOCK_T) dB / dC
partials with one atomic add per element; dA is written per (batch row, channel) and summed in torch.

Triton compiles for CUDA tensors. Under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment
before triton is first imported) the same kernels run on CPU tensors, which is how CI tests them against
:func:`vmamba_rl.ops.scan_reference.selective_scan_ref`. The interpreter is slow (the generic scan is a
Python loop per element): it is for tests, not training.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # triton is optional (the [gpu] extra); without it the dispatcher uses the chunked backend.
    import triton
    import triton.language as tl

    _TRITON_ERROR: Exception | None = None
except ImportError as _e:  # pragma: no cover - exercised through check_available on machines without it
    triton = None
    _TRITON_ERROR = _e

# Elements of one (BLOCK_D, NP, BLOCK_T) tile: about ten such tiles are live in the backward, and 4096
# fp32 elements over 128 threads keep each at 32 registers.
_TILE_ELEMS = 4096
BLOCK_T = 64


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is on (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_available(device: torch.device) -> None:
    """Raise ImportError without triton and ValueError when ``device`` cannot run the kernels."""
    if triton is None:
        raise ImportError(f"triton is not installed ({_TRITON_ERROR}); pip install -e '.[gpu]'")
    if device.type == "cuda" or interpreter_enabled():
        return
    raise ValueError(
        f"scan backend 'triton' got tensors on {device}: it compiles for CUDA tensors, and runs on CPU "
        "tensors only under Triton's interpreter (set TRITON_INTERPRET=1 in the environment before Python "
        "starts); use backend 'cpu' or 'auto' for CPU training"
    )


def _blocks(N: int, Dg: int, block_t: int) -> tuple[int, int]:
    """(NP, BLOCK_D): N padded to a power of two; the largest power-of-two channel block that divides the
    channels per group ``Dg`` and keeps a tile within ``_TILE_ELEMS``."""
    NP = 1 << max(0, (N - 1).bit_length())
    block_d = 1
    while Dg % (block_d * 2) == 0 and block_d * 2 * NP * block_t <= _TILE_ELEMS:
        block_d *= 2
    return NP, block_d


if triton is not None:

    @triton.jit
    def _affine_combine(a1, b1, a2, b2):
        # h -> a1 h + b1, then h -> a2 h + b2
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _softplus(x):
        # torch's threshold of 20; log(1 + exp(x)) loses only values below float32's resolution of 1
        return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))  # no inf in the unused branch

    @triton.jit
    def _scan_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr,
        Dch, L, N, Dg, G, n_chunks,
        NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        d0 = tl.program_id(1) * BLOCK_D
        d = d0 + tl.arange(0, BLOCK_D)
        n = tl.arange(0, NP)
        tt = tl.arange(0, BLOCK_T)
        dmask = d < Dch
        dn_mask = dmask[:, None] & (n < N)[None, :]
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        if HAS_D:
            skip = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        row = (b * Dch + d) * L  # (BLOCK_D,) offsets of the channels' time rows
        bc_row = ((b * G + d0 // Dg) * N + n) * L  # (NP,): the block's one group
        hs_row = ((b * Dch + d)[:, None] * n_chunks) * NP + n[None, :]
        last = (tt == BLOCK_T - 1)[None, None, :]
        h = tl.zeros((BLOCK_D, NP), dtype=tl.float32)
        for c in range(0, n_chunks):
            t = c * BLOCK_T + tt
            tmask = t < L
            m2 = dmask[:, None] & tmask[None, :]
            m3 = (n < N)[:, None] & tmask[None, :]
            u = tl.load(u_ptr + row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[:, None]
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m2, dt, 0.0)  # steps past the end are identities: a = 1, x = 0
            Bv = tl.load(B_ptr + bc_row[:, None] + t[None, :], mask=m3, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + bc_row[:, None] + t[None, :], mask=m3, other=0.0).to(tl.float32)
            a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, NP, BLOCK_T)
            x = (dt * u)[:, None, :] * Bv[None, :, :]
            tl.store(hs_ptr + hs_row + c * NP, h, mask=dmask[:, None])
            aa, bb = tl.associative_scan((a, x), 2, _affine_combine)
            hc = aa * h[:, :, None] + bb  # h_t
            y = tl.sum(hc * Cv[None, :, :], axis=1)
            if HAS_D:
                y = y + skip[:, None] * u
            tl.store(y_ptr + row[:, None] + t[None, :], y, mask=m2)
            h = tl.sum(tl.where(last, hc, 0.0), axis=2)

    @triton.jit
    def _scan_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, hs_ptr,
        du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr,
        Dch, L, N, Dg, G, n_chunks,
        NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        d0 = tl.program_id(1) * BLOCK_D
        d = d0 + tl.arange(0, BLOCK_D)
        n = tl.arange(0, NP)
        tt = tl.arange(0, BLOCK_T)
        dmask = d < Dch
        dn_mask = dmask[:, None] & (n < N)[None, :]
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        if HAS_D:
            skip = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        row = (b * Dch + d) * L
        bc_row = ((b * G + d0 // Dg) * N + n) * L
        hs_row = ((b * Dch + d)[:, None] * n_chunks) * NP + n[None, :]
        first = (tt == 0)[None, None, :]
        g_next = tl.zeros((BLOCK_D, NP), dtype=tl.float32)  # dL/dh at the step after this chunk
        dA = tl.zeros((BLOCK_D, NP), dtype=tl.float32)
        for i in range(0, n_chunks):
            c = n_chunks - 1 - i
            t = c * BLOCK_T + tt
            tmask = t < L
            m2 = dmask[:, None] & tmask[None, :]
            m3 = (n < N)[:, None] & tmask[None, :]
            u = tl.load(u_ptr + row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
            raw = tl.load(delta_ptr + row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias[:, None]
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            dt = tl.where(m2, dt, 0.0)
            dy = tl.load(dy_ptr + row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
            Bv = tl.load(B_ptr + bc_row[:, None] + t[None, :], mask=m3, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + bc_row[:, None] + t[None, :], mask=m3, other=0.0).to(tl.float32)
            # the decay of the following step; zero past the end, where dL/dh is zero
            m2n = dmask[:, None] & (t + 1 < L)[None, :]
            raw1 = tl.load(delta_ptr + row[:, None] + t[None, :] + 1, mask=m2n, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw1 = raw1 + bias[:, None]
            dt1 = raw1
            if SOFTPLUS:
                dt1 = _softplus(raw1)
            a_next = tl.where(m2n[:, None, :], tl.exp(dt1[:, None, :] * A[:, :, None]), 0.0)

            # h_{t-1} of the chunk, recomputed from its stored start state by scanning the steps shifted
            # by one (the chunk's first position gets the identity, so it reads the start state). h_t - x_t
            # would give a_t h_{t-1} without the shift but cancels when the input outweighs the decayed state.
            tp = t - 1
            mp = (tp >= c * BLOCK_T) & (tp < L)
            m2p = dmask[:, None] & mp[None, :]
            u_p = tl.load(u_ptr + row[:, None] + tp[None, :], mask=m2p, other=0.0).to(tl.float32)
            raw_p = tl.load(delta_ptr + row[:, None] + tp[None, :], mask=m2p, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw_p = raw_p + bias[:, None]
            dt_p = raw_p
            if SOFTPLUS:
                dt_p = _softplus(raw_p)
            dt_p = tl.where(m2p, dt_p, 0.0)
            m3p = (n < N)[:, None] & mp[None, :]
            B_p = tl.load(B_ptr + bc_row[:, None] + tp[None, :], mask=m3p, other=0.0).to(tl.float32)
            a_p = tl.exp(dt_p[:, None, :] * A[:, :, None])
            x_p = (dt_p * u_p)[:, None, :] * B_p[None, :, :]
            h0 = tl.load(hs_ptr + hs_row + c * NP, mask=dmask[:, None], other=0.0)
            aa, bb = tl.associative_scan((a_p, x_p), 2, _affine_combine)
            ah = tl.exp(dt[:, None, :] * A[:, :, None]) * (aa * h0[:, :, None] + bb)  # a_t h_{t-1}
            hc = ah + (dt * u)[:, None, :] * Bv[None, :, :]  # h_t

            # g_t = C_t dy_t + a_{t+1} g_{t+1}: a forward scan over the flipped chunk, started at g_next
            beta = Cv[None, :, :] * dy[:, None, :]
            ra, rb = tl.associative_scan((tl.flip(a_next, 2), tl.flip(beta, 2)), 2, _affine_combine)
            g = tl.flip(ra, 2) * g_next[:, :, None] + tl.flip(rb, 2)
            g_next = tl.sum(tl.where(first, g, 0.0), axis=2)

            gd = g * dt[:, None, :]  # (BLOCK_D, NP, BLOCK_T)
            du = tl.sum(gd * Bv[None, :, :], axis=1)
            if HAS_D:
                du = du + skip[:, None] * dy
            dd = tl.sum(g * (A[:, :, None] * ah + Bv[None, :, :] * u[:, None, :]), axis=1)
            if SOFTPLUS:
                dd = dd * tl.sigmoid(raw)
            dA += tl.sum(gd * ah, axis=2)
            tl.store(du_ptr + row[:, None] + t[None, :], du, mask=m2)
            tl.store(ddelta_ptr + row[:, None] + t[None, :], dd, mask=m2)
            dB = tl.sum(gd * u[:, None, :], axis=0)  # (NP, BLOCK_T): the block's share of its group's dB
            dC = tl.sum(hc * dy[:, None, :], axis=0)
            tl.atomic_add(dB_ptr + bc_row[:, None] + t[None, :], dB, mask=m3)
            tl.atomic_add(dC_ptr + bc_row[:, None] + t[None, :], dC, mask=m3)
        tl.store(dA_ptr + (b * Dch + d)[:, None] * NP + n[None, :], dA, mask=dmask[:, None])


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, block_t):  # noqa: D102
        B3 = B.dim() == 3
        ctx.dtypes = (B.dtype, C.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype, A.dtype)  # fmt: skip
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous().float()
        Bg = (B.unsqueeze(1) if B3 else B).contiguous()  # (Bt, G, N, L)
        Cg = (C.unsqueeze(1) if C.dim() == 3 else C).contiguous()
        Bt, Dch, L = u.shape
        N, G = A.shape[1], Bg.shape[1]
        if Dch % G != 0 or Cg.shape[1] != G:
            raise ValueError(
                f"channels ({Dch}) must be divisible by the groups of B and C ({G}, {Cg.shape[1]})"
            )
        Dg = Dch // G
        NP, block_d = _blocks(N, Dg, block_t)
        n_chunks = max(1, triton.cdiv(L, block_t))
        y = torch.empty_like(u)
        hs = torch.empty(Bt, Dch, n_chunks, NP, device=u.device, dtype=torch.float32)
        Dv = D.contiguous().float() if D is not None else A  # unread when absent
        bias = delta_bias.contiguous().float() if delta_bias is not None else A
        meta = dict(
            NP=NP, BLOCK_D=block_d, BLOCK_T=block_t,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        )  # fmt: skip
        grid = (Bt, triton.cdiv(Dch, block_d))
        with _on_device(u):
            _scan_fwd_kernel[grid](u, delta, A, Bg, Cg, Dv, bias, y, hs, Dch, L, N, Dg, G, n_chunks, **meta)
        ctx.save_for_backward(u, delta, A, Bg, Cg, Dv, bias, hs)
        ctx.meta, ctx.grid, ctx.sizes = meta, grid, (Dch, L, N, Dg, G, n_chunks)
        ctx.B3, ctx.C3 = B3, C.dim() == 3
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        u, delta, A, Bg, Cg, Dv, bias, hs = ctx.saved_tensors
        Dch, L, N, Dg, G, n_chunks = ctx.sizes
        meta = ctx.meta
        dy = dy.contiguous()
        du = torch.empty(u.shape, device=u.device, dtype=torch.float32)
        ddelta = torch.empty_like(du)
        dA = torch.empty(u.shape[0], Dch, meta["NP"], device=u.device, dtype=torch.float32)
        dB = torch.zeros(Bg.shape, device=u.device, dtype=torch.float32)
        dC = torch.zeros(Cg.shape, device=u.device, dtype=torch.float32)
        with _on_device(u):
            _scan_bwd_kernel[ctx.grid](
                u, delta, A, Bg, Cg, Dv, bias, dy, hs, du, ddelta, dA, dB, dC,
                Dch, L, N, Dg, G, n_chunks, **meta,
            )  # fmt: skip
        B_dtype, C_dtype, D_dtype, bias_dtype, A_dtype = ctx.dtypes
        dD = (dy.float() * u.float()).sum((0, 2)).to(D_dtype) if meta["HAS_D"] else None
        dbias = ddelta.sum((0, 2)).to(bias_dtype) if meta["HAS_BIAS"] else None
        dB = (dB.squeeze(1) if ctx.B3 else dB).to(B_dtype)
        dC = (dC.squeeze(1) if ctx.C3 else dC).to(C_dtype)
        dA = dA.sum(0)[:, :N].to(A_dtype)
        return du.to(u.dtype), ddelta.to(delta.dtype), dA, dB, dC, dD, dbias, None, None


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``t``'s GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    block_t: int = BLOCK_T,
) -> torch.Tensor:
    """Triton scan. u, delta (Bt, D, L) fp32/fp16/bf16; A (D, N); B, C (Bt, G, N, L) or (Bt, N, L);
    D, delta_bias (D,) -> y (Bt, D, L) in u's dtype. ``block_t`` (a power of two) is the chunk length.
    """
    check_available(u.device)
    if block_t < 1 or block_t & (block_t - 1):
        raise ValueError(f"block_t must be a power of two, got {block_t}")
    return _TritonScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t)
