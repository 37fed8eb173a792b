"""The Triton selective scan against the reference loop, run by Triton's interpreter on CPU tensors.

conftest.py turns the interpreter on (TRITON_INTERPRET=1) before triton is imported when no CUDA device is
present, so CI runs the very kernels a GPU compiles. Tolerances: float32 kernels against a float64
reference to 2e-5 of each tensor's largest entry (the state is fp32 over <= 70 steps); fp16 / bf16 inputs
to a few units of their rounding (the output is stored in the input dtype, the state stays fp32).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from vmamba_rl.ops import selective_scan as ss
from vmamba_rl.ops.scan_reference import selective_scan_ref

triton_scan = pytest.importorskip("vmamba_rl.ops.scan_triton")
pytestmark = [
    pytest.mark.skipif(triton_scan.triton is None, reason="triton is not installed (the [gpu] extra)"),
    pytest.mark.skipif(
        not triton_scan.interpreter_enabled(), reason="Triton's interpreter is off (a CUDA machine)"
    ),
]
from test_scan import NAMES, assert_close_rel, make_inputs, run  # noqa: E402


def _compare(ins, rtol, block_t=16, **kw):
    """Kernel output and gradients against the float64 reference on the same (possibly rounded) inputs."""
    y, g, dy = run(lambda *a: triton_scan.selective_scan_triton(*a, block_t=block_t, **kw), ins)
    assert y.dtype == ins[0].dtype
    ins64 = [None if t is None else t.detach().double().requires_grad_() for t in ins]
    y_ref, g_ref, _ = run(lambda *a: selective_scan_ref(*a, **kw), ins64, dy.double())
    assert_close_rel(y.double(), y_ref, rtol, "y")
    names = [n for n, t in zip(NAMES, ins, strict=True) if t is not None]
    assert len(g) == len(names)
    for name, a, b, t in zip(names, g, g_ref, [t for t in ins if t is not None], strict=True):
        assert a.shape == t.shape and a.dtype == t.dtype, name
        assert_close_rel(a.double(), b, rtol, "d" + name)


@pytest.mark.parametrize("N", [1, 16, 3])
@pytest.mark.parametrize("G", [None, 1, 2])
def test_triton_scan_matches_reference_on_outputs_and_all_seven_gradients(N, G):
    # L = 37 with 16-step chunks: two chunk carries and a partial last chunk
    ins = make_inputs(Bt=2, Dch=8, L=37, N=N, G=G, dtype=torch.float32)
    _compare(ins, 2e-5)


@pytest.mark.parametrize("with_D,with_bias,softplus", [(False, False, True), (True, False, False)])
def test_triton_scan_without_skip_bias_or_softplus(with_D, with_bias, softplus):
    ins = make_inputs(Bt=1, Dch=4, L=20, N=4, G=1, with_D=with_D, with_bias=with_bias, dtype=torch.float32)
    if not softplus:
        with torch.no_grad():
            ins[1].abs_()  # a delta that is used raw must be positive for a decaying state
    _compare(ins, 2e-5, delta_softplus=softplus)


def test_triton_scan_with_mamba_initialisation_and_one_chunk_longer_than_the_sequence():
    ins = make_inputs(Bt=2, Dch=4, L=11, N=16, G=2, dtype=torch.float32, mamba_init=True)
    _compare(ins, 2e-5, block_t=32)


def test_triton_scan_with_decays_that_underflow_within_a_chunk():
    # exp(delta A) down to exp(-200): a_t h_{t-1} must come from h_{t-1}, not h_t - x_t or h_t / ...
    ins = make_inputs(Bt=1, Dch=4, L=33, N=16, G=1, dtype=torch.float32)
    with torch.no_grad():
        ins[1].mul_(3).add_(4)
        ins[2].mul_(10).sub_(5)
    _compare(ins, 2e-5)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_triton_scan_takes_half_precision_inputs_with_an_fp32_state(dtype, rtol):
    ins = make_inputs(Bt=2, Dch=8, L=24, N=16, G=2, dtype=torch.float32)
    half = [t.detach().to(dtype).requires_grad_() if i in (0, 1, 3, 4) else t for i, t in enumerate(ins)]
    _compare(half, rtol, block_t=8)


@pytest.mark.parametrize("raw_delta", [1e4, -1e4])
def test_triton_scan_with_extreme_delta_is_finite(raw_delta):
    ins = make_inputs(Bt=1, Dch=4, L=20, N=16, G=2, dtype=torch.float32, mamba_init=True)
    with torch.no_grad():
        ins[1].fill_(raw_delta)
    y, grads, _ = run(lambda *a: triton_scan.selective_scan_triton(*a, block_t=8), ins)
    assert torch.isfinite(y).all()
    for name, gr in zip(NAMES, grads, strict=True):
        assert torch.isfinite(gr).all(), name
    assert_close_rel(y, selective_scan_ref(*[t.detach() for t in ins]), 2e-4, "y")


def test_selective_scan_fn_dispatches_to_the_triton_kernel():
    ins = [t.detach() for t in make_inputs(Bt=1, Dch=4, L=10, N=4, G=2, dtype=torch.float32)]
    y = ss.selective_scan_fn(*ins, backend="triton")
    assert_close_rel(y, selective_scan_ref(*ins), 2e-5, "y")
    assert "triton" in ss.available_backends("cpu")


def test_auto_picks_triton_for_cuda_tensors_and_stays_on_the_cpu_kernel_for_cpu_tensors():
    assert ss.resolve_backend("auto", torch.device("cuda")) == "triton"
    assert ss.resolve_backend("auto", torch.device("cpu")) in ("cpu", "chunked")


def test_missing_triton_falls_back_to_chunked_on_cuda_with_one_warning(monkeypatch):
    def missing(device) -> None:
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(triton_scan, "check_available", missing)
    monkeypatch.setattr(ss, "_warned_fallback", set())
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        first = ss.resolve_backend("auto", torch.device("cuda"))
        second = ss.resolve_backend("auto", torch.device("cuda"))
    assert first == second == "chunked"
    runtime = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "'triton'" in runtime[0] and ".[gpu]" in runtime[0]


def test_triton_on_cpu_tensors_without_the_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ins = [t.detach() for t in make_inputs(Bt=1, Dch=2, L=4, N=2, G=1, dtype=torch.float32)]
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ss.selective_scan_fn(*ins, backend="triton")


def test_block_t_must_be_a_power_of_two():
    ins = [t.detach() for t in make_inputs(Bt=1, Dch=2, L=4, N=2, G=1, dtype=torch.float32)]
    with pytest.raises(ValueError, match="block_t must be a power of two, got 12"):
        triton_scan.selective_scan_triton(*ins, block_t=12)


def test_vmamba_encoder_with_the_triton_scan_equals_the_reference_scan():
    from vmamba_rl.models.vmamba import VMambaVisualEncoder

    def encoder(backend: str) -> VMambaVisualEncoder:
        torch.manual_seed(0)
        return VMambaVisualEncoder(
            1, (16, 16), 8, patch_size=2, hidden_dim=8, depths=(1, 1, 0, 0), d_state=1, ssm_ratio=1.0,
            mlp_ratio=2.0, drop_path_rate=0.0, backend=backend,
        )  # fmt: skip

    x = torch.rand(1, 1, 16, 16)  # blocks in two stages only: few kernel launches
    fast, ref = encoder("triton"), encoder("reference")
    y_fast, y_ref = fast(x), ref(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-5)
    y_fast.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
