"""Selective-scan backends (chunked, cpu) against the reference loop; cross-scan/merge; CPU runtime helpers.

Tolerances: float64 compares to 1e-6 (chunked) / 1e-9 (cpu) relative to each tensor's largest entry;
float32 to 2e-4 relative (state recurrences accumulate float32 rounding over L steps, and the cpu kernel
uses its own float32 exp, softplus and sigmoid, accurate to a few ulp).
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

from vmamba_rl.ops import selective_scan as ss
from vmamba_rl.ops.cross_scan import cross_merge, cross_scan
from vmamba_rl.ops.scan_chunked import selective_scan_chunked
from vmamba_rl.ops.scan_reference import selective_scan_ref
from vmamba_rl.runtime import configure_cpu, micro_batches

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def make_inputs(
    Bt: int = 2,
    Dch: int = 6,
    L: int = 13,
    N: int = 4,
    G: int | None = 2,
    with_D: bool = True,
    with_bias: bool = True,
    dtype: torch.dtype = torch.float64,
    mamba_init: bool = False,
    seed: int = 0,
) -> list[torch.Tensor | None]:
    """Random scan inputs; G=None gives ungrouped (Bt, N, L) B/C. All tensors require grad."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = r(Bt, Dch, L)
    delta = r(Bt, Dch, L) * 0.5
    if mamba_init:  # A = -(1..N); dt bias = inverse softplus of log-uniform [1e-3, 0.1]
        A = -torch.arange(1, N + 1, dtype=dtype).repeat(Dch, 1)
        dt = torch.exp(torch.rand(Dch, generator=g, dtype=dtype) * math.log(100.0) + math.log(1e-3))
        bias = _inv_softplus(dt)
    else:
        A = -torch.rand(Dch, N, generator=g, dtype=dtype) * 2 - 0.1
        bias = r(Dch) * 0.5
    shape = (Bt, N, L) if G is None else (Bt, G, N, L)
    ins = [u, delta, A, r(*shape), r(*shape), r(Dch) if with_D else None, bias if with_bias else None]
    return [t.requires_grad_() if t is not None else None for t in ins]


def run(fn, ins, dy=None):
    """y and the gradients of <y, dy> for every non-None input."""
    y = fn(*ins)
    if dy is None:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    present = [t for t in ins if t is not None]
    grads = torch.autograd.grad(y, present, dy)
    return y.detach(), grads, dy


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float, name: str) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    err = ((a - b).abs().max() / scale).item()
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"


def compare(fn, ins, rtol: float, **kw) -> None:
    y_ref, g_ref, dy = run(functools.partial(selective_scan_ref, **kw), ins)
    y, g, _ = run(functools.partial(fn, **kw), ins, dy)
    assert y.dtype == ins[0].dtype
    assert_close_rel(y, y_ref, rtol, "y")
    names = [n for n, t in zip(NAMES, ins, strict=True) if t is not None]
    assert len(g) == len(g_ref) == len(names)
    for name, a, b in zip(names, g, g_ref, strict=True):
        assert a.shape == b.shape, name
        assert_close_rel(a, b, rtol, "d" + name)


# --------------------------------------------------------------------------- chunked


@pytest.mark.parametrize("G", [None, 1, 3])
@pytest.mark.parametrize("with_D,with_bias", [(True, True), (False, False), (True, False)])
def test_chunked_matches_reference_float64(G, with_D, with_bias):
    ins = make_inputs(Bt=2, Dch=6, L=37, N=5, G=G, with_D=with_D, with_bias=with_bias)
    compare(selective_scan_chunked, ins, 1e-6)


def test_chunked_result_does_not_depend_on_the_memory_cap(monkeypatch):
    """The cap (CPU 4M elements, GPU 64M) only changes micro-batches and chunk lengths, not the result."""
    import vmamba_rl.ops.scan_chunked as sc

    ins = make_inputs(Bt=6, Dch=8, L=64, N=4, G=2, mamba_init=True)
    y_big, g_big, dy = run(selective_scan_chunked, ins)
    # 8 x 4 x 8 = 256 elements: micro-batches of one sequence and chunks of 8 steps
    monkeypatch.setitem(sc._CHUNK_ELEMS, "cpu", 256)
    y_small, g_small, _ = run(selective_scan_chunked, ins, dy)
    assert_close_rel(y_small, y_big, 1e-10, "y")
    for name, a, b in zip(NAMES, g_small, g_big, strict=True):
        assert_close_rel(a, b, 1e-10, "d" + name)


def test_chunked_no_softplus_and_odd_lengths():
    for L in (1, 2, 65):
        ins = make_inputs(L=L, N=3)
        ins[1] = ins[1].detach().abs().requires_grad_()  # raw delta must be positive without softplus
        y_ref = selective_scan_ref(*ins, delta_softplus=False)
        y = selective_scan_chunked(*ins, delta_softplus=False)
        assert_close_rel(y, y_ref, 1e-9, f"y L={L}")


@pytest.mark.parametrize("delta_shift", [0.0, 6.0])
def test_chunked_mamba_init_long_sequence_is_finite(delta_shift):
    """N = 16 Mamba init, L = 1024: naive chunks of 64 overflow exp; the guard must keep it finite.

    delta_shift = 6 makes softplus(delta) ~ 6, so |A| delta ~ 96 per step: past the limit even for
    a single step (the clamp path).
    """
    ins = make_inputs(Bt=1, Dch=4, L=1024, N=16, G=None, dtype=torch.float32, mamba_init=True)
    with torch.no_grad():
        ins[1] += delta_shift
    y, grads, _ = run(selective_scan_chunked, ins)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)
    y_ref = selective_scan_ref(*[t.detach() if t is not None else None for t in ins])
    assert_close_rel(y, y_ref, 2e-4, "y")


# --------------------------------------------------------------------------- cpu (numba)

cpu = pytest.importorskip("vmamba_rl.ops.scan_cpu")
try:
    cpu.check_available()
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


@needs_numba
@pytest.mark.parametrize(
    "N,L,G,with_D,with_bias",
    [
        (1, 1, None, True, True),
        (1, 17, 2, True, True),
        (4, 7, None, False, True),
        (4, 33, 3, True, False),
        (16, 1, 2, True, True),
        (16, 29, None, False, False),
        (16, 64, 3, True, True),
    ],
)
def test_cpu_matches_reference_float64(N, L, G, with_D, with_bias):
    ins = make_inputs(Bt=2, Dch=6, L=L, N=N, G=G, with_D=with_D, with_bias=with_bias)
    compare(cpu.selective_scan_cpu, ins, 1e-9)


@needs_numba
@pytest.mark.parametrize("N,G", [(1, 2), (4, None), (16, 2)])
def test_cpu_matches_reference_float32(N, G):
    ins = make_inputs(Bt=3, Dch=8, L=75, N=N, G=G, dtype=torch.float32, mamba_init=True)
    compare(cpu.selective_scan_cpu, ins, 2e-4)


@needs_numba
@pytest.mark.parametrize("L", [1, 4, 64])
@pytest.mark.parametrize(
    "dtype,rtol,with_D,with_bias,softplus",
    [
        (torch.float64, 1e-9, True, True, True),
        (torch.float64, 1e-9, False, False, True),
        (torch.float64, 1e-9, True, False, False),
        (torch.float32, 2e-4, True, True, True),
        (torch.float32, 2e-4, False, True, False),
    ],
)
def test_cpu_d_state1_grouped(L, dtype, rtol, with_D, with_bias, softplus):
    """The d_state 1 path (one task per batch element and group, channels in vector lanes): 4 groups as
    SS2D makes them, forward and every gradient, with and without softplus, D and delta_bias."""
    ins = make_inputs(Bt=3, Dch=32, L=L, N=1, G=4, with_D=with_D, with_bias=with_bias, dtype=dtype, seed=L)
    if not softplus:  # raw delta (+ bias) is the step size: keep it positive
        with torch.no_grad():
            ins[1].abs_()
            if with_bias:
                ins[6].abs_()
    compare(cpu.selective_scan_cpu, ins, rtol, delta_softplus=softplus)


@needs_numba
@pytest.mark.parametrize("L", [1, 4, 20])
def test_cpu_d_state1_parallel_chunks(monkeypatch, L):
    """The d_state 1 parallel kernels (per-chunk dA / dD / d delta_bias partials, summed in the kernel),
    forced on whatever the thread count and problem size; ungrouped B/C as well."""
    monkeypatch.setattr(cpu, "_chunks1", lambda ntask, elems: min(ntask, 3))
    compare(cpu.selective_scan_cpu, make_inputs(Bt=5, Dch=8, L=L, N=1, G=4, seed=L), 1e-9)
    compare(cpu.selective_scan_cpu, make_inputs(Bt=5, Dch=8, L=L, N=1, G=None, seed=L), 1e-9)


@needs_numba
@pytest.mark.parametrize("L", [3, 40])
def test_cpu_d_state1_channel_slices(monkeypatch, L):
    """Long d_state 1 sequences split a group's channels into slices (scratch within _SLICE elements):
    dB and dC add up over a group's slices, also with parallel chunks."""
    monkeypatch.setattr(cpu, "_SLICE", 16)
    assert cpu._slices1(64, L) == 4  # slices of 16 channels, the narrowest allowed
    ins = make_inputs(Bt=3, Dch=256, L=L, N=1, G=4, seed=L)
    compare(cpu.selective_scan_cpu, ins, 1e-9)
    monkeypatch.setattr(cpu, "_chunks1", lambda ntask, elems: min(ntask, 5))
    compare(cpu.selective_scan_cpu, ins, 1e-9)


@needs_numba
@pytest.mark.parametrize("N", [1, 4])
@pytest.mark.parametrize("Bt,L", [(0, 4), (2, 0)])
def test_cpu_empty_batch_or_sequence(N, Bt, L):
    ins = make_inputs(Bt=Bt, Dch=8, L=L, N=N, G=4)
    y = cpu.selective_scan_cpu(*ins)
    assert y.shape == (Bt, 8, L)
    grads = torch.autograd.grad(y.sum(), ins)
    for t, gr in zip(ins, grads, strict=True):
        assert gr.shape == t.shape and not gr.any()


@needs_numba
def test_cpu_many_tasks_and_channel_slices():
    """Bt * G smaller than the thread count splits a group's channels into slices (partial dB/dC)."""
    ins = make_inputs(Bt=1, Dch=16, L=20, N=8, G=1)
    compare(cpu.selective_scan_cpu, ins, 1e-9)
    ins = make_inputs(Bt=5, Dch=8, L=20, N=8, G=4)
    compare(cpu.selective_scan_cpu, ins, 1e-9)


@needs_numba
@pytest.mark.parametrize("N", [1, 4])
def test_cpu_non_contiguous_inputs(N):
    Bt, Dch, L, G = 2, 6, 11, 2
    g = torch.Generator().manual_seed(3)
    dt = torch.float64
    u = torch.randn(Bt, L, Dch, generator=g, dtype=dt).transpose(1, 2).requires_grad_()
    delta = torch.randn(Bt, Dch, 2 * L, generator=g, dtype=dt)[..., ::2].requires_grad_()
    A = (-torch.rand(N, Dch, generator=g, dtype=dt) - 0.1).t().requires_grad_()
    B = torch.randn(Bt, G, L, N, generator=g, dtype=dt).transpose(2, 3).requires_grad_()
    C = torch.randn(Bt, N, G, L, generator=g, dtype=dt).transpose(1, 2).requires_grad_()
    Dv = torch.randn(2 * Dch, generator=g, dtype=dt)[::2].requires_grad_()
    bias = torch.randn(Dch, generator=g, dtype=dt).requires_grad_()
    ins = [u, delta, A, B, C, Dv, bias]
    assert not all(t.is_contiguous() for t in ins)
    compare(cpu.selective_scan_cpu, ins, 1e-9)


@needs_numba
def test_cpu_gradcheck():
    ins = make_inputs(Bt=1, Dch=4, L=5, N=3, G=2)
    assert torch.autograd.gradcheck(cpu.selective_scan_cpu, tuple(ins), eps=1e-6, atol=1e-7)


@needs_numba
def test_cpu_without_grad_and_partial_grad():
    ins = [t.detach() if t is not None else None for t in make_inputs(dtype=torch.float32)]
    y = cpu.selective_scan_cpu(*ins)
    assert not y.requires_grad
    assert_close_rel(y, selective_scan_ref(*ins), 2e-4, "y")
    ins[0].requires_grad_()  # only u
    y = cpu.selective_scan_cpu(*ins)
    (du,) = torch.autograd.grad(y.sum(), [ins[0]])
    u_ref = ins[0].detach().clone().requires_grad_()
    (du_ref,) = torch.autograd.grad(selective_scan_ref(u_ref, *ins[1:]).sum(), [u_ref])
    assert_close_rel(du, du_ref, 2e-4, "du")


@pytest.mark.parametrize("backend", ["chunked", "cpu"])
@pytest.mark.parametrize("raw_delta", [60.0, 1e4, -60.0, -1e4])
def test_extreme_delta_is_finite(backend, raw_delta):
    if backend == "cpu" and not HAVE_NUMBA:
        pytest.skip("numba not installed")
    ins = make_inputs(Bt=2, Dch=4, L=40, N=16, G=2, dtype=torch.float32, mamba_init=True)
    with torch.no_grad():
        ins[1].fill_(raw_delta)
    fn = selective_scan_chunked if backend == "chunked" else cpu.selective_scan_cpu
    y, grads, _ = run(fn, ins)
    assert torch.isfinite(y).all()
    for name, gr in zip(NAMES, grads, strict=True):
        assert torch.isfinite(gr).all(), name
    y_ref = selective_scan_ref(*[t.detach() for t in ins])
    assert_close_rel(y, y_ref, 2e-4, "y")


# --------------------------------------------------------------------------- dispatcher


@needs_numba
def test_auto_picks_cpu_kernel_on_cpu():
    assert ss.resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert "cpu" in ss.available_backends()


def test_missing_numba_falls_back_to_chunked_with_one_warning(monkeypatch):
    def missing() -> None:
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(cpu, "check_available", missing)
    monkeypatch.setattr(ss, "_warned_fallback", set())
    ins = [t.detach() if t is not None else None for t in make_inputs(dtype=torch.float32)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y1 = ss.selective_scan_fn(*ins, backend="auto")
        y2 = ss.selective_scan_fn(*ins, backend="auto")
    runtime = [w for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    assert "chunked" in str(runtime[0].message)
    y_chunked = selective_scan_chunked(*ins)
    assert torch.equal(y1, y_chunked) and torch.equal(y2, y_chunked)


# --------------------------------------------------------------------------- cross scan / merge


@pytest.mark.parametrize("H,W", [(3, 5), (4, 4), (1, 6)])
def test_cross_merge_is_adjoint_of_cross_scan(H, W):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    ys = torch.randn(2, 4, 3, H * W, generator=g, dtype=torch.float64)
    lhs = (cross_scan(x) * ys).sum()
    rhs = (x * cross_merge(ys, H, W)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_cross_scan_directions_round_trip():
    H, W = 3, 4
    x = torch.arange(2 * H * W, dtype=torch.float64).view(1, 2, H, W)
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 2, H * W)
    assert torch.equal(xs[:, 0], x.flatten(2))  # row-major
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))  # column-major
    assert torch.equal(xs[:, 2], xs[:, 0].flip(-1))
    assert torch.equal(xs[:, 3], xs[:, 1].flip(-1))
    # each direction alone maps back to the grid exactly
    for k in range(4):
        only = torch.zeros_like(xs)
        only[:, k] = xs[:, k]
        assert torch.equal(cross_merge(only, H, W), x)
    assert torch.equal(cross_merge(xs, H, W), 4 * x)
    with pytest.raises(ValueError):
        cross_merge(xs, H + 1, W)


# --------------------------------------------------------------------------- runtime


def test_configure_cpu_is_idempotent():
    before = torch.get_num_threads()
    try:
        a = configure_cpu(1)
        b = configure_cpu(1)
        assert a == b
        assert a["torch_threads"] == 1 == torch.get_num_threads()
        if HAVE_NUMBA:
            import numba

            assert a["numba_threads"] == 1 == numba.get_num_threads()
        assert isinstance(a["malloc"], dict)
        if a["malloc"]:  # glibc
            assert a["malloc"]["M_MMAP_THRESHOLD"] == 256 << 20
        with pytest.raises(ValueError):
            configure_cpu(0)
    finally:
        configure_cpu(before)


def test_micro_batches():
    assert micro_batches(100, 1 << 20) == 32
    assert micro_batches(10, 1 << 20) == 10
    assert micro_batches(5, 100 << 20) == 1
    assert micro_batches(0, 1 << 20) == 0
    assert micro_batches(7, 0) == 7
    assert micro_batches(64, 1 << 20, limit_bytes=16 << 20) == 16
    with pytest.raises(ValueError):
        micro_batches(-1, 10)
