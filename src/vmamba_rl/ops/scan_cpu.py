"""Fused CPU selective scan: numba kernels for forward and a hand-written backward.

This module imports numba at its own import, and the selective-scan dispatcher imports this module only
when the ``cpu`` backend is asked for (or ``auto`` resolves on CPU). Without numba the module still
imports, and :func:`check_available` raises ImportError so the dispatcher can fall back to ``chunked``.

Layout: u, delta, y stay (Bt, D, L) as SS2D produces them (time contiguous per channel, no copy when
contiguous float32).

N > 1: B and C are transposed to (Bt, G, L, Np) so that the states of one time step are contiguous and the
inner loop over states vectorises; that copy is D/G times smaller than u. N is zero-padded to Np, a
multiple of 8 (padded states are exact no-ops). Forward: tasks over (batch, channel), time loop in compiled
code, states in a small local array, softplus(delta + bias) and the D skip fused. Backward: one task per
(batch, group, channel slice); for each channel it recomputes the states and decays into (L+1, Np) scratch
buffers (exp runs once per state update), runs the reverse recurrence for dL/dh, then the gradients as
elementwise passes. Grouped dB/dC are summed over the channels of a group inside the task that owns that
group slice, so no two threads write the same memory; per-slice partials are summed in torch afterwards.
dA, dD and d(delta_bias) are written per (batch, channel) and summed over the batch in torch.

N = 1 (the cpu preset's d_state): one state per channel leaves nothing to vectorise within a channel, so the
channels are the vector lanes. One task per (batch, group): the group's (dg, L) blocks of u, delta, dy are
transposed into (L, dg) scratch, every pass runs over the dg channels of one time step (B_t, C_t scalars),
so each recurrence step is one vector multiply-add over dg independent chains, and the results are
transposed back. The backward recomputes states and decays, runs the reverse recurrence, and forms du,
d delta, dB_t / dC_t (sums over the task's own channels), and dA / dD / d delta_bias summed into per-chunk
partials that the kernel adds up itself (no torch reduction, whose thread team stalls on a busy CPU). Long
sequences split a group's channels into slices of >= 16 so that a scratch buffer stays near _SLICE
elements. Calls below _PAR_MIN elements run a serial kernel: a parallel launch (~50 us with the workqueue
layer) costs more than such a call's whole work. Against a per-(batch, channel) path (one latency-bound
chain per task, per-task overhead dominating at small L) this layout wins at every SS2D stage of the
encoder (L <= 256); docs/benchmarks.md ("d_state 1 scan") has the numbers.

Transcendentals: float32 uses inlined, branch-free exp (2^k e^r range reduction, degree-6 polynomial,
exponent built by bit manipulation), softplus and sigmoid built on it, so LLVM vectorises the loops over
states (and over time for softplus); against libm calls this cut fwd+bwd to about a third
(docs/benchmarks.md, "CPU settings and kernel details").
_softplus_sigmoid gives both from one exp (the d_state 1 backward needs softplus and its derivative).
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
# d_state 1 transposes: below this length the inner loop runs over channels, from it over time.
_T_SPLIT = 16
# d_state 1 calls with fewer elements (Bt * D * L) run serially: a parallel launch costs more than it saves.
_PAR_MIN = 1 << 16
# d_state 1 scratch budget (elements of one (L, channels) buffer): longer sequences split a group's channels.
_SLICE = 1 << 12


# Python stand-ins; inside the kernels numba uses the overloads below (fast float32, exact float64).
def _exp(x):  # pragma: no cover
    return math.exp(x)


def _softplus(x):  # pragma: no cover
    return x if x > 20.0 else math.log1p(math.exp(x))


def _sigmoid(x):  # pragma: no cover
    return 1.0 / (1.0 + math.exp(-x))


def _softplus_sigmoid(x):  # pragma: no cover
    return _softplus(x), 1.0 if x > 20.0 else 1.0 / (1.0 + math.exp(-x))


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

    @overload(_softplus_sigmoid, jit_options=_JIT)
    def _softplus_sigmoid_overload(x):
        """(softplus(x), sigmoid(x)) = (softplus, its derivative); float32 shares one exp between them."""
        if x == types.float32:

            def impl(x):
                # as _softplus, and sigmoid = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|)
                e = _exp(min(x, -x))
                s = e / (_TWO + e)
                s2 = s * s
                q = _L1 + s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * (_L9 + s2 * (_L11 + s2 * _L13)))))
                num = _ONE if x >= _ZERO else e
                return max(x, _ZERO) + _TWO * s * q, num / (_ONE + e)

            return impl

        def impl64(x):
            if x > 20.0:
                return x, 1.0
            return math.log1p(math.exp(x)), 1.0 / (1.0 + math.exp(-x))

        return impl64

    # The per-channel work for N > 1 lives in plain (non-parallel, not inlined) functions: in this form
    # LLVM vectorises the loops over N (written inline in the prange body the same loops stayed scalar,
    # 3x slower at N = 16). The d_state 1 path follows below.

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
                _fwd_channel(
                    A[d], Bt[b, g], Ct[b, g], u[b, d], delta[b, d], bias[d], Dv[d], softplus,
                    h, dts, ea, y[b, d],
                )  # fmt: skip

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
            for d in range(g * dg + s * dg // nslices, g * dg + (s + 1) * dg // nslices):
                dD, dbs = _bwd_channel(
                    A[d], Bt[b, g], Ct[b, g], u[b, d], delta[b, d], bias[d], Dv[d], softplus, dy[b, d], zero,
                    hb, ab, gg, carry, dts, sig, dA_p[b, d], dB_p[b, g, s], dC_p[b, g, s],
                    du[b, d], ddelta[b, d],
                )  # fmt: skip
                dD_p[b, d] = dD
                dbias_p[b, d] = dbs

    # ----------------------------------------------------------------------------------- d_state 1
    # Work unit: (batch b, group g), row r = b * G + g of B and C; the group's dg channels share B and C.
    # Its channels are cut into S slices of w = dg / S (S = 1 unless L is long, see _slices1), and each
    # slice's (w, L) block of u, delta, dy, y, du, d delta is contiguous: block i = r * S + s of the
    # (Bt * G * S, w, L) views, with parameters in row g = i % (G * S) of the (G * S, w) views. A task
    # transposes its block into (L, w) scratch and runs every loop over the w channels of one time step:
    # contiguous, vectorised, and the recurrences have w independent lanes instead of one latency-bound
    # chain; B_t and C_t are scalars within a row. What keeps LLVM vectorising:
    # - whole arrays and indices are passed, never views: each view costs NRT reference counting
    #   (atomics), which at L = 1 cost more than the work; the task bodies are inlined into the loop over
    #   tasks (a call with ~30 array arguments cost ~0.2 us; numba fails to inline more than 30 arguments);
    # - loops index with plain range counters (a computed flat index gets numba's negative-index
    #   wraparound per access, which keeps the loop scalar);
    # - each inner loop writes few arrays, so its runtime alias checks stay within LLVM's limit.

    @njit(cache=True, **_JIT)
    def _t_in(x, i, s):  # pragma: no cover - compiled
        # block x[i] (dg, L) -> scratch s (L, dg); the inner loop runs over the longer side
        dg, L = x.shape[1], x.shape[2]
        if L == 1:
            for k in range(dg):
                s[0, k] = x[i, k, 0]
        elif L < _T_SPLIT:
            for t in range(L):
                for k in range(dg):
                    s[t, k] = x[i, k, t]
        else:
            for k in range(dg):
                for t in range(L):
                    s[t, k] = x[i, k, t]

    @njit(cache=True, **_JIT)
    def _t_in_add(x, i, bias, g, s):  # pragma: no cover - compiled
        # as _t_in, adding the per-channel bias[g] (delta + delta_bias)
        dg, L = x.shape[1], x.shape[2]
        if L == 1:
            for k in range(dg):
                s[0, k] = x[i, k, 0] + bias[g, k]
        elif L < _T_SPLIT:
            for t in range(L):
                for k in range(dg):
                    s[t, k] = x[i, k, t] + bias[g, k]
        else:
            for k in range(dg):
                bk = bias[g, k]
                for t in range(L):
                    s[t, k] = x[i, k, t] + bk

    @njit(cache=True, **_JIT)
    def _t_out(s, x, i):  # pragma: no cover - compiled
        # scratch s (L, dg) -> block x[i] (dg, L)
        dg, L = x.shape[1], x.shape[2]
        if L == 1:
            for k in range(dg):
                x[i, k, 0] = s[0, k]
        elif L < _T_SPLIT:
            for t in range(L):
                for k in range(dg):
                    x[i, k, t] = s[t, k]
        else:
            for k in range(dg):
                for t in range(L):
                    x[i, k, t] = s[t, k]

    @njit(cache=True, inline="always", **_JIT)
    def _fwd1_task(
        i, g, r, u, x, a0, B, C, Dv, bias, softplus, h, s0, s1, f0, y
    ):  # pragma: no cover - compiled
        # Block i: channel slice of (batch, group) r, parameter row g. u, x (raw delta), y (Bt * G * S, w, L);
        # a0, Dv, bias (G * S, w); B, C (Bt * G, L); h (w,), s0, s1 (L, w) scratch, f0 = s0 flat.
        dg, L = u.shape[1], u.shape[2]
        _t_in_add(x, i, bias, g, s0)
        _t_in(u, i, s1)
        if softplus:
            for n in range(L * dg):
                f0[n] = _softplus(f0[n])
        for k in range(dg):
            h[k] = 0.0
        for t in range(L):
            bt = B[r, t]
            ct = C[r, t]
            for k in range(dg):
                dt = s0[t, k]
                ut = s1[t, k]
                hk = _exp(dt * a0[g, k]) * h[k] + dt * ut * bt
                h[k] = hk
                s0[t, k] = hk * ct + Dv[g, k] * ut
        _t_out(s0, y, i)

    @njit(cache=True, **_JIT)
    def _fwd1_range(lo, hi, u, x, a0, B, C, Dv, bias, softplus, y):  # pragma: no cover - compiled
        # (batch, group) rows lo .. hi - 1, each S channel slices (blocks); arrays as in _fwd1_task.
        dg, L = u.shape[1], u.shape[2]
        GS = a0.shape[0]
        S = u.shape[0] // B.shape[0]
        h = np.empty(dg, dtype=u.dtype)
        s0 = np.empty((L, dg), dtype=u.dtype)
        s1 = np.empty((L, dg), dtype=u.dtype)
        f0 = s0.reshape(L * dg)
        for j in range(lo, hi):
            for i in range(j * S, j * S + S):
                _fwd1_task(i, i % GS, j, u, x, a0, B, C, Dv, bias, softplus, h, s0, s1, f0, y)

    @njit(parallel=True, cache=True, **_JIT)
    def _fwd1_par(nchunks, u, x, a0, B, C, Dv, bias, softplus, y):  # pragma: no cover - compiled
        ntask = B.shape[0]
        for c in prange(nchunks):
            _fwd1_range(
                c * ntask // nchunks, (c + 1) * ntask // nchunks, u, x, a0, B, C, Dv, bias, softplus, y
            )

    @njit(cache=True, inline="always", **_JIT)
    def _bwd1_task(
        i,
        g,
        r,
        u,
        x,
        dy,
        a0,
        B,
        C,
        Dv,
        bias,
        softplus,
        zero,
        rev,
        h,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        f0,
        f3,
        du,
        dd,
        dB,
        dC,
        dsum,
    ):  # pragma: no cover - compiled
        # Block i: channel slice of (batch, group) r, parameter row g. u, x (raw delta), dy, du, dd (d delta)
        # (Bt * G * S, w, L); a0, Dv, bias (G * S, w); B, C (Bt * G, L); dB, dC (Bt * G, L) and dsum
        # (3, G * S, w) = dA, dD, d delta_bias: sums, added to; rev (L,) = L - 1 .. 0; h (w,), s0 .. s6
        # (L, w) scratch, f0 and f3 = s0 and s3 flat. (More than 30 arguments break numba's inlining.)
        dg, L = u.shape[1], u.shape[2]
        _t_in_add(x, i, bias, g, s0)
        _t_in(u, i, s1)
        _t_in(dy, i, s2)
        # s0 = dt = softplus(x), s3 = d dt / dx
        if softplus:
            for n in range(L * dg):
                sp, sg = _softplus_sigmoid(f0[n])
                f0[n] = sp
                f3[n] = sg
        else:
            for n in range(L * dg):
                f3[n] = 1.0
        # s4 = a_t = exp(dt A), s5 = dt u
        for t in range(L):
            for k in range(dg):
                dt = s0[t, k]
                s4[t, k] = _exp(dt * a0[g, k])
                s5[t, k] = dt * s1[t, k]
        # states: s6 = h_{t-1}; dC_t = sum_k dy h_t
        for k in range(dg):
            h[k] = 0.0
        for t in range(L):
            bt = B[r, t]
            acc = zero
            for k in range(dg):
                hp = h[k]
                s6[t, k] = hp
                hk = s4[t, k] * hp + s5[t, k] * bt
                h[k] = hk
                acc += s2[t, k] * hk
            dC[r, t] += acc
        # reverse: g_t = dy_t C_t + a_{t+1} g_{t+1} -> s4; q_t = g_t a_t h_{t-1} -> s6; h carries a_t g_t.
        # t comes from the array rev: with t = L - 1 - n, LLVM hoists the inner loop's alias checks out of
        # the time loop, and for a decreasing address they always fail (scalar fallback, 3x slower).
        for k in range(dg):
            h[k] = 0.0
        for n in range(L):
            t = rev[n]
            ct = C[r, t]
            for k in range(dg):
                gk = h[k] + s2[t, k] * ct
                ga = gk * s4[t, k]
                h[k] = ga
                s4[t, k] = gk
                s6[t, k] = ga * s6[t, k]
        # dB_t = sum_k g dt u; per-channel sums over time dA += sum q dt, dD += sum dy u
        for t in range(L):
            acc = zero
            for k in range(dg):
                acc += s4[t, k] * s5[t, k]
            dB[r, t] += acc
        for t in range(L):
            for k in range(dg):
                dsum[0, g, k] += s6[t, k] * s0[t, k]
        for t in range(L):
            for k in range(dg):
                dsum[1, g, k] += s2[t, k] * s1[t, k]
        # du = dt g B_t + D dy -> s0; d delta = (q A + u g B_t) d dt / dx -> s6
        for t in range(L):
            bt = B[r, t]
            for k in range(dg):
                s0[t, k] = s0[t, k] * s4[t, k] * bt + Dv[g, k] * s2[t, k]
        for t in range(L):
            bt = B[r, t]
            for k in range(dg):
                s6[t, k] = (s6[t, k] * a0[g, k] + s1[t, k] * s4[t, k] * bt) * s3[t, k]
        for t in range(L):
            for k in range(dg):
                dsum[2, g, k] += s6[t, k]
        _t_out(s0, du, i)
        _t_out(s6, dd, i)

    @njit(cache=True, **_JIT)
    def _bwd1_range(
        lo, hi, u, x, dy, a0, B, C, Dv, bias, softplus, zero, du, dd, dB, dC, dsum
    ):  # pragma: no cover - compiled
        # (batch, group) rows lo .. hi - 1, each S channel slices (blocks); arrays as in _bwd1_task.
        dg, L = u.shape[1], u.shape[2]
        GS = a0.shape[0]
        S = u.shape[0] // B.shape[0]
        h = np.empty(dg, dtype=u.dtype)
        s0 = np.empty((L, dg), dtype=u.dtype)
        s1 = np.empty((L, dg), dtype=u.dtype)
        s2 = np.empty((L, dg), dtype=u.dtype)
        s3 = np.empty((L, dg), dtype=u.dtype)
        s4 = np.empty((L, dg), dtype=u.dtype)
        s5 = np.empty((L, dg), dtype=u.dtype)
        s6 = np.empty((L, dg), dtype=u.dtype)
        rev = np.empty(L, dtype=np.int64)
        for n in range(L):
            rev[n] = L - 1 - n
        f0 = s0.reshape(L * dg)
        f3 = s3.reshape(L * dg)
        for j in range(lo, hi):
            dB[j, :] = 0.0
            dC[j, :] = 0.0
            for i in range(j * S, j * S + S):
                _bwd1_task(
                    i, i % GS, j, u, x, dy, a0, B, C, Dv, bias, softplus, zero, rev, h, s0, s1, s2, s3, s4,
                    s5, s6, f0, f3, du, dd, dB, dC, dsum,
                )  # fmt: skip

    @njit(parallel=True, cache=True, **_JIT)
    def _bwd1_par(
        nchunks, u, x, dy, a0, B, C, Dv, bias, softplus, zero, du, dd, dB, dC, dsum
    ):  # pragma: no cover - compiled
        # Chunks of (batch, group) rows. Each writes only its rows' blocks and dB / dC rows, and its own dA,
        # dD, dbias partials, summed here after the parallel loop (a torch reduction would start another
        # thread team). dsum: zeros.
        ntask = B.shape[0]
        G, dg = a0.shape
        part = np.zeros((nchunks, 3, G, dg), dtype=u.dtype)
        for c in prange(nchunks):
            _bwd1_range(
                c * ntask // nchunks, (c + 1) * ntask // nchunks, u, x, dy, a0, B, C, Dv, bias, softplus,
                zero, du, dd, dB, dC, part[c],
            )  # fmt: skip
        for c in range(nchunks):
            for m in range(3):
                for g in range(G):
                    for k in range(dg):
                        dsum[m, g, k] += part[c, m, g, k]


def _threads() -> int:
    return int(numba.get_num_threads())


def _as(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """Detached, compute-dtype, C-contiguous view (no copy when it already is one)."""
    t = t.detach()
    if t.dtype != ct:
        t = t.to(ct)
    return t if t.is_contiguous() else t.contiguous()


def _cast(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dt else t.to(dt)


def _pad_states(M: torch.Tensor, Np: int, ct: torch.dtype) -> torch.Tensor:
    """(Bt, G, N, L) -> contiguous (Bt, G, L, Np) in dtype ct, zeros in the padded states."""
    nb, G, N, L = M.shape
    if N == Np:
        return M.detach().to(ct).transpose(-1, -2).contiguous()
    out = torch.zeros(nb, G, L, Np, dtype=ct)
    out[..., :N] = M.detach().transpose(-1, -2)
    return out


def _chunks(ntask: int) -> int:
    """Task chunks for a prange: a few per thread (balance), each allocating its scratch once."""
    return min(ntask, 8 * _threads())


def _slices1(dg: int, L: int) -> int:
    """Channel slices per (batch, group) for d_state 1: halve the slice while its (L, width) scratch
    exceeds _SLICE elements and the width stays >= 16 (a full vector), so long sequences stay in cache."""
    S = 1
    while (dg // S) * L > _SLICE and dg % (2 * S) == 0 and dg // (2 * S) >= 16:
        S *= 2
    return S


def _chunks1(ntask: int, elems: int) -> int:
    """Chunks for the d_state 1 kernels; 1 means the serial path (no parallel launch).

    A parallel launch costs ~50 us with numba's workqueue layer, about the time of the whole d_state 1
    fwd+bwd on 2^14 elements, so calls below _PAR_MIN elements (or with one thread) run serially.
    """
    nth = _threads()
    if nth == 1 or elems < _PAR_MIN:
        return 1
    return min(ntask, 4 * nth)


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):  # type: ignore[override]
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        nb, nd, L = u.shape
        grouped = B.dim() == 4
        G = B.shape[1] if grouped else 1
        if nd % G != 0:
            raise ValueError(f"channels ({nd}) must be divisible by the number of groups ({G})")
        uc, dc = _as(u, ct), _as(delta, ct)
        N = A.shape[1]
        Dv = _as(D, ct) if D is not None else torch.zeros(nd, dtype=ct)
        bc = _as(delta_bias, ct) if delta_bias is not None else torch.zeros(nd, dtype=ct)
        y = torch.empty(nb, nd, L, dtype=ct)
        run = nb * nd > 0 and L > 0
        if N == 1:
            # blocks of S channel slices per (batch, group): u, delta, y (Bt * G * S, dg / S, L);
            # B, C (Bt * G, L); A, D, bias (G * S, dg / S)
            Ac = _as(A, ct).reshape(nd)
            Btr, Ctr = (_as(M, ct).reshape(nb * G, L) for M in (B, C))
            if run:
                S = _slices1(nd // G, L)
                blk, par = (nb * G * S, nd // (G * S), L), (G * S, nd // (G * S))
                args = (
                    uc.numpy().reshape(blk), dc.numpy().reshape(blk), Ac.numpy().reshape(par), Btr.numpy(),
                    Ctr.numpy(), Dv.numpy().reshape(par), bc.numpy().reshape(par), bool(delta_softplus),
                    y.numpy().reshape(blk),
                )  # fmt: skip
                nch = _chunks1(nb * G, nb * nd * L)
                if nch > 1:
                    _fwd1_par(nch, *args)
                else:
                    _fwd1_range(0, nb * G, *args)
        else:
            Np = -(-N // _W) * _W
            # (Bt, G, N, L) -> (Bt, G, L, Np): the states of one time step contiguous, zero-padded to a
            # multiple of _W. Padded states are exact no-ops: A = 0, B = 0 keeps them at 0, C = 0 hides them.
            Btr, Ctr = (_pad_states(M if grouped else M.unsqueeze(1), Np, ct) for M in (B, C))
            Ac = torch.zeros(A.shape[0], Np, dtype=ct)
            Ac[:, :N] = A.detach()
            if run:
                _fwd_kernel(
                    uc.numpy(), dc.numpy(), Ac.numpy(), Btr.numpy(), Ctr.numpy(), Dv.numpy(), bc.numpy(),
                    bool(delta_softplus), _chunks(nb * nd), y.numpy(),
                )  # fmt: skip
        if not run:
            y.zero_()
        ctx.meta = (grouped, G, D is not None, delta_bias is not None, bool(delta_softplus), ct, N)
        ctx.in_dtypes = tuple(t.dtype if t is not None else None for t in (u, delta, A, B, C, D, delta_bias))
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(uc, dc, Ac, Btr, Ctr, Dv, bc)
        return _cast(y, u.dtype)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        grouped, G, has_D, has_bias, softplus, ct, N = ctx.meta
        uc, dc, Ac, Btr, Ctr, Dv, bc = ctx.saved_tensors
        nb, nd, L = uc.shape
        dyc = _as(dy, ct)
        run = nb * nd > 0 and L > 0
        zero = np.float64(0.0) if ct == torch.float64 else np.float32(0.0)
        du = torch.empty(nb, nd, L, dtype=ct)
        dd = torch.empty(nb, nd, L, dtype=ct)
        if N == 1:
            # each entry written by exactly one task; dA, dD, d delta_bias summed over the batch in the kernel
            dB = torch.empty(nb, G, 1, L, dtype=ct)
            dC = torch.empty(nb, G, 1, L, dtype=ct)
            dsum = torch.zeros(3, nd, dtype=ct)
            dA_s, dD_s, db_s = dsum[0].view(nd, 1), dsum[1], dsum[2]
            if run:
                S = _slices1(nd // G, L)
                blk, par = (nb * G * S, nd // (G * S), L), (G * S, nd // (G * S))
                args = (
                    uc.numpy().reshape(blk), dc.numpy().reshape(blk), dyc.numpy().reshape(blk),
                    Ac.numpy().reshape(par), Btr.numpy(), Ctr.numpy(), Dv.numpy().reshape(par),
                    bc.numpy().reshape(par), softplus, zero, du.numpy().reshape(blk), dd.numpy().reshape(blk),
                    dB.numpy().reshape(nb * G, L), dC.numpy().reshape(nb * G, L),
                    dsum.numpy().reshape(3, *par),
                )  # fmt: skip
                nch = _chunks1(nb * G, nb * nd * L)
                if nch > 1:
                    _bwd1_par(nch, *args)
                else:
                    _bwd1_range(0, nb * G, *args)
        else:
            Np = Ac.shape[1]
            dg = nd // G
            # Split each group's channels into slices only when (batch x group) tasks cannot keep all
            # threads busy; each slice has its own dB/dC partial buffer (no races), summed below.
            S = max(1, min(dg, -(-4 * _threads() // max(1, nb * G))))
            dA_p = torch.zeros(nb, nd, Np, dtype=ct)
            dB_p = torch.zeros(nb, G, S, L, Np, dtype=ct)
            dC_p = torch.zeros(nb, G, S, L, Np, dtype=ct)
            dD_p = torch.zeros(nb, nd, dtype=ct)
            db_p = torch.zeros(nb, nd, dtype=ct)
            if run:
                _bwd_kernel(
                    uc.numpy(), dc.numpy(), Ac.numpy(), Btr.numpy(), Ctr.numpy(), Dv.numpy(), bc.numpy(),
                    softplus, dyc.numpy(), S, zero, du.numpy(), dd.numpy(), dA_p.numpy(), dB_p.numpy(),
                    dC_p.numpy(), dD_p.numpy(), db_p.numpy(),
                )  # fmt: skip
            dB = (dB_p[:, :, 0] if S == 1 else dB_p.sum(2))[..., :N].transpose(-1, -2)  # (Bt, G, N, L)
            dC = (dC_p[:, :, 0] if S == 1 else dC_p.sum(2))[..., :N].transpose(-1, -2)
            dA_s, dD_s, db_s = dA_p.sum(0)[:, :N], dD_p.sum(0), db_p.sum(0)
        if not run:
            for t in (du, dd, dB, dC, dA_s, dD_s, db_s):
                t.zero_()
        if not grouped:
            dB, dC = dB[:, 0], dC[:, 0]
        dt_u, dt_d, dt_A, dt_B, dt_C, dt_D, dt_b = ctx.in_dtypes
        n = ctx.needs_input_grad
        return (
            _cast(du, dt_u) if n[0] else None,
            _cast(dd, dt_d) if n[1] else None,
            _cast(dA_s, dt_A) if n[2] else None,
            _cast(dB, dt_B) if n[3] else None,
            _cast(dC, dt_C) if n[4] else None,
            _cast(dD_s, dt_D) if has_D and n[5] else None,
            _cast(db_s, dt_b) if has_bias and n[6] else None,
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
