"""The numba LayerNorm against torch's F.layer_norm (the reference): values and all gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vmamba_rl.ops import layer_norm as ln_mod
from vmamba_rl.ops.layer_norm import LayerNorm, _LayerNormCPU

pytestmark = pytest.mark.skipif(not ln_mod.kernel_available(), reason="numba not installed")


def _compare(shape, dtype, tol, permute=False):
    torch.manual_seed(0)
    C = shape[-1]
    ln = LayerNorm(C).to(dtype)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x0 = torch.randn(*shape, dtype=dtype)
    if permute:  # a channels-last map's channel view: the last axis is not contiguous in memory
        x0 = torch.randn(shape[0], C, *shape[1:-1], dtype=dtype).movedim(1, -1)
    x = x0.clone().requires_grad_()
    y = _LayerNormCPU.apply(x, ln.weight, ln.bias, ln.eps)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, ln.weight, ln.bias), g)
    xr = x0.clone().requires_grad_()
    yr = F.layer_norm(xr, (C,), ln.weight, ln.bias, ln.eps)
    rx, rw, rb = torch.autograd.grad(yr, (xr, ln.weight, ln.bias), g)
    for name, a, b in (("y", y, yr), ("dx", gx, rx), ("dw", gw, rw), ("db", gb, rb)):
        scale = b.abs().max().clamp(min=1.0)
        assert ((a - b).abs().max() / scale) < tol, name


@pytest.mark.parametrize("shape", [(5, 3, 8), (2, 7, 1), (40, 16), (3, 4, 5, 33)])
def test_kernel_matches_torch_float64(shape):
    _compare(shape, torch.float64, 1e-12)


def test_kernel_matches_torch_float32_on_stem_sized_maps_and_permuted_input():
    _compare((24, 32, 32, 8), torch.float32, 2e-5)
    _compare((6, 16, 16, 8), torch.float32, 2e-5, permute=True)


def test_parallel_and_serial_paths_agree(monkeypatch):
    """Above _PAR_ROWS the rows are cut into chunks with per-chunk dw/db partials (summed after)."""
    monkeypatch.setattr(ln_mod, "_PAR_ROWS", 16)
    _compare((300, 8), torch.float64, 1e-12)
    monkeypatch.setattr(ln_mod, "_nchunks", lambda rows: 1)
    _compare((300, 8), torch.float64, 1e-12)


def test_module_dispatch_and_state_dict_compatibility(monkeypatch):
    """Large CPU inputs use the kernel, small ones and autocast use F.layer_norm; same state-dict keys."""
    calls = []
    orig = _LayerNormCPU.apply
    monkeypatch.setattr(_LayerNormCPU, "apply", lambda *a: calls.append(1) or orig(*a))
    ln = LayerNorm(8)
    plain = torch.nn.LayerNorm(8)
    assert ln.state_dict().keys() == plain.state_dict().keys()
    ln.load_state_dict(plain.state_dict())
    big = torch.randn(ln_mod.MIN_ROWS, 8)
    assert torch.allclose(ln(big), plain(big), atol=1e-5) and len(calls) == 1
    small = torch.randn(10, 8)
    assert torch.equal(ln(small), plain(small)) and len(calls) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ln(big)
    assert len(calls) == 1
