"""Numerical kernels; each fast implementation has its reference beside it."""

from vmamba_rl.ops.cross_scan import cross_merge, cross_scan
from vmamba_rl.ops.selective_scan import available_backends, selective_scan_fn

__all__ = ["selective_scan_fn", "available_backends", "cross_scan", "cross_merge"]
