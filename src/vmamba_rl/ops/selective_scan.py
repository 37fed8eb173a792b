"""``selective_scan_fn``: one entry point, several backends (reference, chunked, cpu, triton).

Backends:
- ``"reference"``: the plain loop (:mod:`vmamba_rl.ops.scan_reference`), any device, autograd through it.
- ``"chunked"``: vectorised pure torch (:mod:`vmamba_rl.ops.scan_chunked`), any device, overflow-guarded.
- ``"cpu"``: fused numba kernel with a hand-written backward (:mod:`vmamba_rl.ops.scan_cpu`).
- ``"triton"``: Triton kernels with a hand-written backward (:mod:`vmamba_rl.ops.scan_triton`), CUDA
  tensors, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
- ``"auto"``: ``cpu`` for CPU tensors when numba is importable, ``triton`` for CUDA tensors when triton is
  importable, otherwise ``chunked`` (with one warning naming what is missing).
"""

from __future__ import annotations

import importlib
import warnings

import torch

from vmamba_rl.ops.scan_reference import selective_scan_ref

BACKENDS = ("reference", "chunked", "cpu", "triton")
# the fast kernel for each device type, its module and what installs its requirement
_FAST = {"cpu": ("cpu", "vmamba_rl.ops.scan_cpu", "pip install numba"),
         "cuda": ("triton", "vmamba_rl.ops.scan_triton", "pip install -e '.[gpu]'")}  # fmt: skip
_warned_fallback: set[str] = set()


def _check(module: str, device: torch.device) -> None:
    mod = importlib.import_module(module)
    if module.endswith("scan_triton"):
        mod.check_available(device)
    else:
        mod.check_available()


def _fast_kernel_available(device: torch.device) -> bool:
    name, module, fix = _FAST[device.type]
    try:
        _check(module, device)
    except ImportError as e:
        if name not in _warned_fallback:
            warnings.warn(
                f"the fast {device.type} selective-scan kernel '{name}' is unavailable ({e}); falling back "
                f"to the 'chunked' backend, which is several times slower. {fix} fixes this.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_fallback.add(name)
        return False
    return True


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable for tensors on ``device`` (``cpu`` needs numba; ``triton`` needs triton and a CUDA
    device, or Triton's interpreter)."""
    device = torch.device(device)
    out = ["reference", "chunked"]
    for name, module, _ in _FAST.values():
        try:
            _check(module, device)
        except (ImportError, ValueError):
            continue
        if name != "cpu" or device.type == "cpu":
            out.append(name)
    return out


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend for tensors on ``device``."""
    if backend == "auto":
        if device.type in _FAST and _fast_kernel_available(device):
            return _FAST[device.type][0]
        return "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"scan backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"scan backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "triton":
        _check(_FAST["cuda"][1], device)  # ImportError / ValueError saying what is missing
    return backend


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with Mamba's semantics.

    u, delta: (Bt, D, L); A: (D, N); B, C: (Bt, G, N, L) grouped or (Bt, N, L); D, delta_bias: (D,).
    Returns y: (Bt, D, L) in u's dtype. Differentiable w.r.t. every tensor argument.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (Bt, D, L); got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (D={u.shape[1]}, N); got {tuple(A.shape)}")
    for name, M in (("B", B), ("C", C)):
        if (
            M.dim() not in (3, 4)
            or M.shape[0] != u.shape[0]
            or M.shape[-1] != u.shape[2]
            or M.shape[-2] != A.shape[1]
        ):
            raise ValueError(
                f"{name} must be (Bt, N, L) or (Bt, G, N, L) with Bt={u.shape[0]}, N={A.shape[1]}, "
                f"L={u.shape[2]}; got {tuple(M.shape)}"
            )
    name = resolve_backend(backend, u.device)
    if name == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if name == "chunked":
        from vmamba_rl.ops.scan_chunked import selective_scan_chunked

        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if name == "triton":
        from vmamba_rl.ops.scan_triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus)
    from vmamba_rl.ops.scan_cpu import selective_scan_cpu

    return selective_scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus)
