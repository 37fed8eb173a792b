"""Fused CPU selective scan: numba kernels for forward and a hand-written backward.

This module imports numba at its own import, and the selective-scan dispatcher imports this module only
when the ``cpu`` backend is asked for (or ``auto`` resolves on CPU). Without numba the module still
imports, and :func:`check_available` raises ImportError so the dispatcher can fall back to ``chunked``.

Layout: u, delta, y stay (Bt, D, L) as SS2D produces them (time contiguous per channel, no copy when
contiguous float32). B and C are transposed to (Bt, G, L, Np) so that the states of one time step are
contiguous and the inner loop over states vectorises; that copy is D/G times smaller than u. N > 1 is
zero-padded to Np, a multiple of 8 (padded states are exact no-ops); N = 1 has its own scalar-state path.

Forward: tasks over (batch, channel), time loop in compiled code, states in a small local array,
softplus(delta + bias) and the D skip fused. Backward: one task per (batch, group, channel slice); for
each channel it recomputes the states and decays into (L+1, Np) scratch buffers (exp runs once per state
update), runs the reverse recurrence for dL/dh, then the gradients as elementwise passes. Grouped dB/dC are
summed over the channels of a group inside the task that owns that group slice, so no two threads write
the same memory; per-slice partials are summed in torch afterwards. dA, dD and d(delta_bias) are written
per (batch, channel) and summed over the batch in torch.

Transcendentals: float32 uses inlined, branch-free exp (2^k e^r range reduction, degree-6 polynomial,
exponent built by bit manipulation), softplus and sigmoid built on it, so LLVM vectorises the loops over
states (and over time for softplus). Against libm calls this cut fwd+bwd at 4 x 128 channels, L = 256
from 22.6 to 7.1 ms/image at N = 16 and from 4.4 to 2.0 at N = 1 (one thread, process CPU time).
float64 (used by the tests) keeps math.exp / log1p for full precision.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # numba is optional: without it the dispatcher falls back to the chunked backend.
    import numba
    from llvmlite import ir as _llvm_ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

    _NUMBA_ERROR: Exception | None = None
except ImportError as _e:  # pragma: no cover - exercised through a monkeypatched check_available
    numba = None
    _NUMBA_ERROR = _e


def check_available() -> None:
    """Raise ImportError when the kernel's requirements (numba) are missing."""
    if numba is None:
        raise ImportError(f"numba is not installed ({_NUMBA_ERROR})")


# fastmath without nnan/ninf: NaN/inf in the inputs must still propagate to the outputs.
_FASTMATH = {"contract", "reassoc", "nsz", "arcp", "afn"}
# error_model="numpy": float division without Python's zero check, whose branch blocks vectorisation.
_JIT = {"fastmath": _FASTMATH, "error_model": "numpy"}

# float32 constants as numpy scalars so that numba keeps the arithmetic in float32.
_F32_LO = np.float32(-87.0)  # exp(-87) = 1.6e-38 is still a normal float32; below it the state is gone
_F32_HI = np.float32(88.0)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # few mantissa bits: k * _LN2_HI is exact for |k| < 2^15
_LN2_LO = np.float32(-2.12194440e-4)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_C2 = np.float32(1.0 / 2.0)
_C3 = np.float32(1.0 / 6.0)
_C4 = np.float32(1.0 / 24.0)
_C5 = np.float32(1.0 / 120.0)
_C6 = np.float32(1.0 / 720.0)
_ZERO = np.float32(0.0)
_TWO = np.float32(2.0)
# 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...); s <= 1/3 so terms to s^13 reach float32 precision
_L1, _L3, _L5, _L7 = np.float32(1.0), np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7)
_L9, _L11, _L13 = np.float32(1 / 9), np.float32(1 / 11), np.float32(1 / 13)
_BIAS = np.int32(127)
_SHIFT = np.int32(23)
# N > 1 is zero-padded to a multiple of _W: at N = 4 the padded vector loop beats the short scalar one.
_W = 8


# Python stand-ins; inside the kernels numba uses the overloads below (fast float32, exact float64).
def _exp(x):  # pragma: no cover
    return math.exp(x)


def _softplus(x):  # pragma: no cover
    return x if x > 20.0 else math.log1p(math.exp(x))


def _sigmoid(x):  # pragma: no cover
    return 1.0 / (1.0 + math.exp(-x))


if numba is not None:

    @intrinsic
    def _i32_bits_as_f32(typingctx, x):
        """Reinterpret the low 32 bits of an integer as a float32 (LLVM trunc + bitcast, vectorisable)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if x.bitwidth > 32:
                v = builder.trunc(v, _llvm_ir.IntType(32))
            return builder.bitcast(v, _llvm_ir.FloatType())

        return types.float32(x), codegen

    @overload(_exp, jit_options=_JIT)
    def _exp_overload(x):
        if x == types.float32:

            def impl(x):
                # exp(x) = 2^k e^r, k = round(x / ln 2), |r| <= ln2 / 2; Taylor to r^6 gives < 2 ulp.
                x = min(max(x, _F32_LO), _F32_HI)
                k = np.floor(x * _LOG2E + _HALF)
                r = x - k * _LN2_HI - k * _LN2_LO
                p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
                return p * _i32_bits_as_f32((np.int32(k) + _BIAS) << _SHIFT)

            return impl
        return lambda x: math.exp(x)

    @overload(_softplus, jit_options=_JIT)
    def _softplus_overload(x):
        if x == types.float32:

            def impl(x):
                # softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s) with
                # s = e / (2 + e) in (0, 1/3]: an odd series, accurate for tiny e, no branch (vectorises).
                # For x > 20 the log1p term is below x's precision, matching torch's threshold.
                e = _exp(min(x, -x))  # exp(-|x|); abs() would not vectorise
                s = e / (_TWO + e)
                s2 = s * s
                q = _L1 + s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * (_L9 + s2 * (_L11 + s2 * _L13)))))
                return max(x, _ZERO) + _TWO * s * q

            return impl

        def impl64(x):
            return x if x > 20.0 else math.log1p(math.exp(x))

        return impl64

    @overload(_sigmoid, jit_options=_JIT)
    def _sigmoid_overload(x):
        if x == types.float32:
            return lambda x: _ONE / (_ONE + _exp(-x))

        def impl64(x):
            # torch's softplus backward: gradient 1 above the threshold
            return 1.0 if x > 20.0 else 1.0 / (1.0 + math.exp(-x))

        return impl64

    # The per-channel work for N > 1 lives in plain (non-parallel, not inlined) functions: in this form
    # LLVM vectorises the loops over N (written inline in the prange body the same loops stayed scalar,
    # 3x slower at N = 16). The d_state 1 path has no loop over N and is inlined instead.

    @njit(cache=True, inline="always", **_JIT)
    def _fwd_seq1(A, Bt, Ct, u, delta, bias, Dv, softplus, b, d, g, dts, ea, y):  # pragma: no cover
        # d_state 1 (VMamba v2), sequence (b, d) of group g. Inlined, with whole arrays plus indices instead
        # of per-channel views: view building and a 100-field call per channel dominated short sequences
        # (L = 1..64, the cpu preset's later stages); inlining cut fwd+bwd at L = 1 by 3x, at L = 64 by 1.4x.
        # The exps have no recurrence, so they run as a vectorised pass; the time loop is then one
        # multiply-add chain.
        L = u.shape[2]
        bd = bias[d]
        Dd = Dv[d]
        a0 = A[d, 0]
        if softplus:
            for t in range(L):
                dts[t] = _softplus(delta[b, d, t] + bd)
        else:
            for t in range(L):
                dts[t] = delta[b, d, t] + bd
        for t in range(L):
            ea[t] = _exp(dts[t] * a0)
        ea[L] = 0.0
        hs = ea[L]  # a zero of the compute dtype
        for t in range(L):
            ut = u[b, d, t]
            hs = ea[t] * hs + dts[t] * ut * Bt[b, g, t, 0]
            y[b, d, t] = hs * Ct[b, g, t, 0] + Dd * ut

    @njit(cache=True, **_JIT)
    def _fwd_channel(Ad, Bg, Cg, uv, dv, bd, Dd, softplus, h, dts, ea, yv):  # pragma: no cover - compiled
        # Ad (Np,); Bg, Cg (L, Np); uv, dv, yv (L,); h (Np,), dts, ea (L,) scratch
        L = uv.shape[0]
        Np = Ad.shape[0]
        if softplus:
            for t in range(L):  # branch-free in float32: vectorises over time
                dts[t] = _softplus(dv[t] + bd)
        else:
            for t in range(L):
                dts[t] = dv[t] + bd
        for n in range(Np):
            h[n] = 0.0
        for t in range(L):
            dt = dts[t]
            ut = uv[t]
            dut = dt * ut
            acc = Dd * ut
            for n in range(Np):
                hn = _exp(dt * Ad[n]) * h[n] + dut * Bg[t, n]
                h[n] = hn
                acc += hn * Cg[t, n]
            yv[t] = acc

    @njit(parallel=True, cache=True, **_JIT)
    def _fwd_kernel(u, delta, A, Bt, Ct, Dv, bias, softplus, nchunks, y):  # pragma: no cover - compiled
        # u, delta, y: (Bt, D, L); A: (D, Np); Bt, Ct: (Bt, G, L, Np); Dv, bias: (D,)
        nb, nd, L = u.shape
        Np = A.shape[1]
        dg = nd // Bt.shape[1]
        ntask = nb * nd
        for c in prange(nchunks):
            h = np.empty(Np, dtype=u.dtype)
            dts = np.empty(L, dtype=u.dtype)  # typed buffer keeps delta in the compute dtype
            ea = np.empty(L + 1, dtype=u.dtype)
            for task in range(c * ntask // nchunks, (c + 1) * ntask // nchunks):
                b = task // nd
                d = task - b * nd
                g = d // dg
                if Np == 1:
                    _fwd_seq1(A, Bt, Ct, u, delta, bias, Dv, softplus, b, d, g, dts, ea, y)
                else:
                    _fwd_channel(
                        A[d], Bt[b, g], Ct[b, g], u[b, d], delta[b, d], bias[d], Dv[d], softplus,
                        h, dts, ea, y[b, d],
                    )  # fmt: skip

    @njit(cache=True, inline="always", **_JIT)
    def _bwd_seq1(
        A,
        Bt,
        Ct,
        u,
        delta,
        bias,
        Dv,
        softplus,
        dy,
        zero,
        b,
        d,
        g,
        s,
        hb,
        ab,
        gg,
        dts,
        sig,
        du,
        ddelta,
        dA_p,
        dB_p,
        dC_p,
    ):  # pragma: no cover - compiled
        # d_state 1, sequence (b, d) of group g, slice s; whole arrays plus indices (see _fwd_seq1).
        # Scratch hb, ab (L + 1,), gg, dts, sig (L,). Returns (dD, d delta_bias); writes dA_p[b, d, 0].
        # Only the two recurrences are sequential (one multiply-add chain each); exp and the gradients
        # run as vectorised passes over time, split so each touches few arrays (LLVM alias checks).
        L = u.shape[2]
        bd = bias[d]
        Dd = Dv[d]
        a0 = A[d, 0]
        if softplus:
            for t in range(L):
                x = delta[b, d, t] + bd
                dts[t] = _softplus(x)
                sig[t] = _sigmoid(x)
        else:
            for t in range(L):
                dts[t] = delta[b, d, t] + bd
                sig[t] = 1.0
        for t in range(L):
            ab[t] = _exp(dts[t] * a0)
        ab[L] = zero
        hs = zero
        hb[0] = zero
        for t in range(L):
            hs = ab[t] * hs + dts[t] * u[b, d, t] * Bt[b, g, t, 0]
            hb[t + 1] = hs
        gs = zero
        for t in range(L - 1, -1, -1):
            gs = gs * ab[t + 1] + dy[b, d, t] * Ct[b, g, t, 0]
            gg[t] = gs
        for t in range(L):
            dB_p[b, g, s, t, 0] += gg[t] * dts[t] * u[b, d, t]
        for t in range(L):
            dC_p[b, g, s, t, 0] += dy[b, d, t] * hb[t + 1]
        for t in range(L):
            du[b, d, t] = dts[t] * gg[t] * Bt[b, g, t, 0] + Dd * dy[b, d, t]
        for t in range(L):
            ddelta[b, d, t] = (gg[t] * ab[t] * hb[t] * a0 + u[b, d, t] * gg[t] * Bt[b, g, t, 0]) * sig[t]
        dA = zero
        dDacc = zero
        dbacc = zero
        for t in range(L):
            dA += gg[t] * ab[t] * hb[t] * dts[t]
            dbacc += ddelta[b, d, t]
            dDacc += dy[b, d, t] * u[b, d, t]
        dA_p[b, d, 0] = dA
        return dDacc, dbacc

    @njit(cache=True, **_JIT)
    def _bwd_channel(
        Ad, Bg, Cg, uv, dv, bd, Dd, softplus, dyv, zero, hb, ab, gg, carry, dts, sig, dal, dBs, dCs, duv, ddv
    ):  # pragma: no cover - compiled
        # Ad, carry, dal (Np,); Bg, Cg, dBs, dCs, gg (L, Np); hb, ab (L + 1, Np); uv, dv, dyv, dts, sig, duv,
        # ddv (L,)
        # Adds this channel's dB, dC into dBs, dCs; writes dA into dal; returns (dD, d delta_bias).
        # Only the recurrences run as sequential loops; everything else is an elementwise pass with at most
        # a few arrays per inner loop, few enough that LLVM's runtime alias checks still let it vectorise.
        L = uv.shape[0]
        Np = Ad.shape[0]
        if softplus:
            for t in range(L):
                x = dv[t] + bd
                dts[t] = _softplus(x)
                sig[t] = _sigmoid(x)
        else:
            for t in range(L):
                dts[t] = dv[t] + bd
                sig[t] = 1.0
        for n in range(Np):
            hb[0, n] = 0.0
            ab[L, n] = 0.0
            dal[n] = 0.0
            carry[n] = 0.0
        # The recurrences carry their state in the 1D `carry` and only store rows of hb / gg: reading row t
        # and writing row t + 1 of one array is a dependence LLVM cannot rule out, and it would not vectorise.
        # 1. recompute the states hb[t + 1] = h_t and keep the decays ab[t] = exp(delta_t A)
        for t in range(L):
            dt = dts[t]
            dut = dt * uv[t]
            for n in range(Np):
                a = _exp(dt * Ad[n])
                ab[t, n] = a
                hn = a * carry[n] + dut * Bg[t, n]
                carry[n] = hn
                hb[t + 1, n] = hn
        # 2. reverse recurrence for g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1}
        for n in range(Np):
            carry[n] = 0.0
        for t in range(L - 1, -1, -1):
            dyt = dyv[t]
            for n in range(Np):
                gn = carry[n] * ab[t + 1, n] + dyt * Cg[t, n]
                carry[n] = gn
                gg[t, n] = gn
        # 3. gradients, elementwise in t given g
        dDacc = zero
        dbacc = zero
        for t in range(L):
            dyt = dyv[t]
            dt = dts[t]
            ut = uv[t]
            dtu = dt * ut
            for n in range(Np):
                dBs[t, n] += gg[t, n] * dtu
                dCs[t, n] += dyt * hb[t + 1, n]
            gb = zero  # sum_n g_n B_n
            gah = zero  # sum_n A_n g_n a_n h_{t-1,n}
            for n in range(Np):
                q = gg[t, n] * ab[t, n] * hb[t, n]
                gb += gg[t, n] * Bg[t, n]
                gah += q * Ad[n]
                dal[n] += q * dt
            duv[t] = dt * gb + Dd * dyt
            dd = (gah + ut * gb) * sig[t]
            ddv[t] = dd
            dbacc += dd
            dDacc += dyt * ut
        return dDacc, dbacc

    @njit(parallel=True, cache=True, **_JIT)
    def _bwd_kernel(
        u,
        delta,
        A,
        Bt,
        Ct,
        Dv,
        bias,
        softplus,
        dy,
        nslices,
        zero,
        du,
        ddelta,
        dA_p,
        dB_p,
        dC_p,
        dD_p,
        dbias_p,
    ):  # pragma: no cover - compiled
        # dA_p: (Bt, D, Np); dB_p, dC_p: (Bt, G, S, L, Np) zero-initialised; dD_p, dbias_p: (Bt, D).
        # One task per (batch, group, channel slice): it alone writes dB_p[b, g, s], so no races.
        nb, nd, L = u.shape
        Np = A.shape[1]
        G = Bt.shape[1]
        dg = nd // G
        ntask = nb * G * nslices
        for task in prange(ntask):
            b = task // (G * nslices)
            rem = task - b * G * nslices
            g = rem // nslices
            s = rem - g * nslices
            hb = np.empty((L + 1, Np), dtype=u.dtype)
            ab = np.empty((L + 1, Np), dtype=u.dtype)
            gg = np.empty((L, Np), dtype=u.dtype)
            carry = np.empty(Np, dtype=u.dtype)
            dts = np.empty(L, dtype=u.dtype)
            sig = np.empty(L, dtype=u.dtype)
            hb1 = hb.reshape((L + 1) * Np)  # flat views, used by the d_state 1 path
            ab1 = ab.reshape((L + 1) * Np)
            gg1 = gg.reshape(L * Np)
            for d in range(g * dg + s * dg // nslices, g * dg + (s + 1) * dg // nslices):
                if Np == 1:
                    dD, dbs = _bwd_seq1(
                        A, Bt, Ct, u, delta, bias, Dv, softplus, dy, zero, b, d, g, s,
                        hb1, ab1, gg1, dts, sig, du, ddelta, dA_p, dB_p, dC_p,
                    )  # fmt: skip
                    dD_p[b, d] = dD
                    dbias_p[b, d] = dbs
                    continue
                dD, dbs = _bwd_channel(
                    A[d], Bt[b, g], Ct[b, g], u[b, d], delta[b, d], bias[d], Dv[d], softplus, dy[b, d], zero,
                    hb, ab, gg, carry, dts, sig, dA_p[b, d], dB_p[b, g, s], dC_p[b, g, s],
                    du[b, d], ddelta[b, d],
                )  # fmt: skip
                dD_p[b, d] = dD
                dbias_p[b, d] = dbs


def _threads() -> int:
    return int(numba.get_num_threads())


def _as(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """Detached, compute-dtype, C-contiguous view (no copy when it already is one)."""
    return t.detach().to(ct).contiguous()


def _pad_states(M: torch.Tensor, Np: int, ct: torch.dtype) -> torch.Tensor:
    """(Bt, G, N, L) -> contiguous (Bt, G, L, Np) in dtype ct, zeros in the padded states."""
    nb, G, N, L = M.shape
    if N == Np:
        return M.detach().to(ct).transpose(-1, -2).contiguous()
    out = torch.zeros(nb, G, L, Np, dtype=ct)
    out[..., :N] = M.detach().transpose(-1, -2)
    return out


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):  # type: ignore[override]
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        nb, nd, L = u.shape
        grouped = B.dim() == 4
        uc, dc = _as(u, ct), _as(delta, ct)
        N = A.shape[1]
        Np = N if N == 1 else -(-N // _W) * _W
        # (Bt, G, N, L) -> (Bt, G, L, Np): the states of one time step contiguous, zero-padded to a
        # multiple of _W. Padded states are exact no-ops: A = 0, B = 0 keeps them at 0, C = 0 hides them.
        Btr, Ctr = (_pad_states(M if grouped else M.unsqueeze(1), Np, ct) for M in (B, C))
        Ac = torch.zeros(A.shape[0], Np, dtype=ct)
        Ac[:, :N] = A.detach()
        G = Btr.shape[1]
        if nd % G != 0:
            raise ValueError(f"channels ({nd}) must be divisible by the number of groups ({G})")
        Dv = _as(D, ct) if D is not None else torch.zeros(nd, dtype=ct)
        bc = _as(delta_bias, ct) if delta_bias is not None else torch.zeros(nd, dtype=ct)
        y = torch.empty(nb, nd, L, dtype=ct)
        ntask = nb * nd
        if ntask > 0 and L > 0:
            nchunks = min(ntask, 8 * _threads())
            _fwd_kernel(
                uc.numpy(), dc.numpy(), Ac.numpy(), Btr.numpy(), Ctr.numpy(), Dv.numpy(), bc.numpy(),
                bool(delta_softplus), nchunks, y.numpy(),
            )  # fmt: skip
        else:
            y.zero_()
        ctx.meta = (grouped, D is not None, delta_bias is not None, bool(delta_softplus), ct, N)
        ctx.in_dtypes = tuple(t.dtype if t is not None else None for t in (u, delta, A, B, C, D, delta_bias))
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(uc, dc, Ac, Btr, Ctr, Dv, bc)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        grouped, has_D, has_bias, softplus, ct, N = ctx.meta
        uc, dc, Ac, Btr, Ctr, Dv, bc = ctx.saved_tensors
        nb, nd, L = uc.shape
        Np = Ac.shape[1]
        G = Btr.shape[1]
        dg = nd // G
        # Split each group's channels into slices only when (batch x group) tasks cannot keep all
        # threads busy; each slice has its own dB/dC partial buffer (no races), summed below.
        nth = _threads()
        S = max(1, min(dg, -(-4 * nth // max(1, nb * G))))
        dyc = dy.detach().to(ct).contiguous()
        du = torch.empty(nb, nd, L, dtype=ct)
        dd = torch.empty(nb, nd, L, dtype=ct)
        dA_p = torch.zeros(nb, nd, Np, dtype=ct)
        dB_p = torch.zeros(nb, G, S, L, Np, dtype=ct)
        dC_p = torch.zeros(nb, G, S, L, Np, dtype=ct)
        dD_p = torch.zeros(nb, nd, dtype=ct)
        db_p = torch.zeros(nb, nd, dtype=ct)
        if nb * nd > 0 and L > 0:
            zero = np.float64(0.0) if ct == torch.float64 else np.float32(0.0)
            _bwd_kernel(
                uc.numpy(), dc.numpy(), Ac.numpy(), Btr.numpy(), Ctr.numpy(), Dv.numpy(), bc.numpy(),
                softplus, dyc.numpy(), S, zero, du.numpy(), dd.numpy(), dA_p.numpy(), dB_p.numpy(),
                dC_p.numpy(), dD_p.numpy(), db_p.numpy(),
            )  # fmt: skip
        else:
            du.zero_()
            dd.zero_()
        dB = (dB_p[:, :, 0] if S == 1 else dB_p.sum(2))[..., :N].transpose(-1, -2)  # (Bt, G, N, L)
        dC = (dC_p[:, :, 0] if S == 1 else dC_p.sum(2))[..., :N].transpose(-1, -2)
        if not grouped:
            dB, dC = dB[:, 0], dC[:, 0]
        dt_u, dt_d, dt_A, dt_B, dt_C, dt_D, dt_b = ctx.in_dtypes
        n = ctx.needs_input_grad
        return (
            du.to(dt_u) if n[0] else None,
            dd.to(dt_d) if n[1] else None,
            dA_p.sum(0)[:, :N].to(dt_A) if n[2] else None,
            dB.to(dt_B) if n[3] else None,
            dC.to(dt_C) if n[4] else None,
            dD_p.sum(0).to(dt_D) if has_D and n[5] else None,
            db_p.sum(0).to(dt_b) if has_bias and n[6] else None,
            None,
        )


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Fused numba scan on CPU tensors. u, delta (Bt, D, L); A (D, N); B, C (Bt, G, N, L) or (Bt, N, L);
    D, delta_bias (D,) -> y (Bt, D, L) in u's dtype. fp32 compute (fp64 for fp64 inputs); differentiable
    w.r.t. every tensor argument through a hand-written backward.
    """
    check_available()
    for name, t in (
        ("u", u),
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("delta_bias", delta_bias),
    ):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"selective_scan_cpu needs CPU tensors; {name} is on {t.device}")
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
