"""LayerNorm over the last axis with a fused numba kernel on CPU (forward and hand-written backward).

Why: the encoder normalises many rows of few channels (the cpu preset's stem: 96 frames x 32 x 32 rows
of 8 channels). torch's CPU LayerNorm pays ~30 ns of per-row overhead there, so at C = 8 it ran at
~3.5 ns per element, the largest single cost of the stem; one compiled pass per row does better (see
``benchmarks/encoder.py --layer_norm``). :class:`LayerNorm` is a drop-in ``nn.LayerNorm`` (same
parameters, same state-dict keys) that uses the kernel for float32/float64 CPU tensors when numba is
importable and falls back to ``torch.nn.functional.layer_norm`` everywhere else (CUDA, autocast, other
dtypes, no numba). ``F.layer_norm`` is the reference the tests hold the kernel to.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmamba_rl.ops.scan_cpu import _JIT, check_available, numba

# Row counts below this run serially. On two vCPUs of one core the parallel path lost to the serial one
# at every encoder shape up to 96 x 32 x 32 x 16 (docs/benchmarks.md, "CPU settings and kernel
# details"), so only maps well beyond those run in parallel.
_PAR_ROWS = 1 << 18
# Below this many rows torch's own kernel is as fast: the autograd.Function and numba call overheads
# eat the kernel's gain (fwd+bwd at 6144 rows x 16 channels: par).
MIN_ROWS = 8192

if numba is not None:
    from numba import njit, prange

    @njit(cache=True, **_JIT)
    def _fwd_rows(lo, hi, x, w, b, k4, y, mean, rstd):  # pragma: no cover - compiled
        # x, y (R, C); w, b (C,); mean, rstd (R,): rows lo .. hi - 1. k4 = (1 / C, eps, 0, 1) in x's dtype
        # (a Python number would turn float32 arithmetic into float64).
        C = x.shape[1]
        inv_c, eps, zero, one = k4[0], k4[1], k4[2], k4[3]
        for r in range(lo, hi):
            s = zero
            for k in range(C):
                s += x[r, k]
            m = s * inv_c
            v = zero
            for k in range(C):
                d = x[r, k] - m
                v += d * d
            rs = one / np.sqrt(v * inv_c + eps)
            mean[r] = m
            rstd[r] = rs
            for k in range(C):
                y[r, k] = (x[r, k] - m) * rs * w[k] + b[k]

    @njit(cache=True, **_JIT)
    def _bwd_rows(lo, hi, dy, x, w, mean, rstd, k4, dx, dw, db):  # pragma: no cover - compiled
        # dy, x, dx (R, C); w (C,); mean, rstd (R,); dw, db (C,) partial sums, added to; k4 as in _fwd_rows.
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat = (x - mean) * rstd
        C = x.shape[1]
        inv_c, zero = k4[0], k4[2]
        for r in range(lo, hi):
            m = mean[r]
            rs = rstd[r]
            sg = zero
            sgx = zero
            for k in range(C):
                xh = (x[r, k] - m) * rs
                g = dy[r, k] * w[k]
                sg += g
                sgx += g * xh
            sg *= inv_c
            sgx *= inv_c
            for k in range(C):
                xh = (x[r, k] - m) * rs
                dx[r, k] = rs * (dy[r, k] * w[k] - sg - xh * sgx)
                dw[k] += dy[r, k] * xh
                db[k] += dy[r, k]

    @njit(parallel=True, cache=True, **_JIT)
    def _fwd_par(nchunks, x, w, b, k4, y, mean, rstd):  # pragma: no cover - compiled
        R = x.shape[0]
        for c in prange(nchunks):
            _fwd_rows(c * R // nchunks, (c + 1) * R // nchunks, x, w, b, k4, y, mean, rstd)

    @njit(parallel=True, cache=True, **_JIT)
    def _bwd_par(nchunks, dy, x, w, mean, rstd, k4, dx, part):  # pragma: no cover - compiled
        # part (nchunks, 2, C) zeros: each chunk's dw, db; summed by the caller
        R = x.shape[0]
        for c in prange(nchunks):
            lo, hi = c * R // nchunks, (c + 1) * R // nchunks
            _bwd_rows(lo, hi, dy, x, w, mean, rstd, k4, dx, part[c, 0], part[c, 1])


def _consts(C: int, eps: float, dtype: torch.dtype) -> np.ndarray:
    return np.array([1.0 / C, eps, 0.0, 1.0], dtype=np.float64 if dtype == torch.float64 else np.float32)


def _nchunks(rows: int) -> int:
    """1 (serial) for small calls or one thread, else a few chunks per thread."""
    nth = int(numba.get_num_threads())
    return 1 if nth == 1 or rows < _PAR_ROWS else 4 * nth


class _LayerNormCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        C = x.shape[-1]
        x2 = x.detach().reshape(-1, C)  # a view when the last axis is contiguous, else one copy
        x2 = x2 if x2.is_contiguous() else x2.contiguous()
        w = weight.detach().to(x.dtype).contiguous()
        b = bias.detach().to(x.dtype).contiguous()
        R = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(R, dtype=x.dtype)
        rstd = torch.empty(R, dtype=x.dtype)
        if R > 0:
            k4 = _consts(C, eps, x.dtype)
            args = (x2.numpy(), w.numpy(), b.numpy(), k4, y.numpy(), mean.numpy(), rstd.numpy())
            n = _nchunks(R)
            if n > 1:
                _fwd_par(n, *args)
            else:
                _fwd_rows(0, R, *args)
        ctx.save_for_backward(x2, w, mean, rstd)
        ctx.shape, ctx.eps = x.shape, eps
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x2, w, mean, rstd = ctx.saved_tensors
        R, C = x2.shape
        dy2 = dy.reshape(R, C).to(x2.dtype)
        dy2 = dy2 if dy2.is_contiguous() else dy2.contiguous()
        dx = torch.empty_like(x2)
        n = _nchunks(R)
        part = torch.zeros(n, 2, C, dtype=x2.dtype)
        if R > 0:
            k4 = _consts(C, ctx.eps, x2.dtype)
            a = (dy2.numpy(), x2.numpy(), w.numpy(), mean.numpy(), rstd.numpy(), k4, dx.numpy())
            if n > 1:
                _bwd_par(n, *a, part.numpy())
            else:
                p = part.numpy()
                _bwd_rows(0, R, *a, p[0, 0], p[0, 1])
        dwb = part.sum(0) if n > 1 else part[0]
        need = ctx.needs_input_grad
        return (
            dx.view(ctx.shape) if need[0] else None,
            dwb[0] if need[1] else None,
            dwb[1] if need[2] else None,
            None,
        )


def kernel_available() -> bool:
    """True when the numba kernel can run (numba importable)."""
    try:
        check_available()
    except ImportError:
        return False
    return True


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis; the numba kernel for CPU float32/float64 tensors.

    (..., C) -> (..., C). Same parameters and state-dict keys as ``nn.LayerNorm``, so checkpoints move
    between the two. The kernel runs for at least :data:`MIN_ROWS` rows; fewer rows, other devices and
    autocast regions use ``F.layer_norm``.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__(normalized_shape, eps=eps)
        self._kernel = kernel_available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self._kernel
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == self.weight.dtype
            and x.numel() >= MIN_ROWS * x.shape[-1]
            and not torch.is_autocast_enabled("cpu")
        ):
            return _LayerNormCPU.apply(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
