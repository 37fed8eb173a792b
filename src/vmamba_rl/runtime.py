"""CPU hygiene, done on purpose: thread counts and glibc malloc thresholds.

Call :func:`configure_cpu` once at the start of a run (training, benchmarks). It is idempotent.

Why each setting (measurements in docs/benchmarks.md, "CPU settings and kernel details"):
- threads: torch and numba each default to their own pool; sizing both to the same count stops them
  from oversubscribing the cores when a numba scan kernel runs between torch ops.
- malloc: glibc serves every allocation above M_MMAP_THRESHOLD (dynamic, at most 32 MB) with a fresh
  mmap and returns it with munmap on free, so each training step pays page faults on every large
  activation again, and ops on tensors above the threshold ran several times slower per image. Raising
  the mmap threshold and the trim threshold keeps those blocks in the heap for reuse; M_TOP_PAD grows
  the heap in larger steps. Whole-model CPU training runs almost twice as fast with these settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

import torch

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 256 << 20  # allocations below 256 MB come from the (reused) heap
_TRIM_THRESHOLD = 512 << 20  # keep up to 512 MB of freed top-of-heap memory instead of returning it
_TOP_PAD = 64 << 20  # grow the heap 64 MB at a time

_malloc_done: dict[str, int] | None = None


def default_threads() -> int:
    """Thread count to use when none is given: ``os.cpu_count()``.

    Python cannot portably tell physical cores from SMT siblings, and on the small cloud VMs this project
    targets every vCPU is reported as its own core (``lscpu``: 1 thread per core), so cpu_count is the best
    cheap guess. On an SMT desktop pass ``threads`` explicitly (physical cores are usually faster).
    """
    return max(1, os.cpu_count() or 1)


def _set_malloc() -> dict[str, int]:
    """mallopt the three thresholds through ctypes; {} when not on Linux/glibc or when it fails."""
    global _malloc_done
    if _malloc_done is not None:
        return _malloc_done
    done: dict[str, int] = {}
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt  # absent on musl: AttributeError below
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            for name, param, value in (
                ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
                ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                ("M_TOP_PAD", M_TOP_PAD, _TOP_PAD),
            ):
                if mallopt(param, value) == 1:  # mallopt returns 1 on success
                    done[name] = value
        except (OSError, AttributeError):
            done = {}
    _malloc_done = done
    return done


def configure_cpu(threads: int | None = None) -> dict:
    """Set torch intra-op threads, numba threads (if numba is importable) and glibc malloc thresholds.

    threads: None -> :func:`default_threads`. Safe to call repeatedly (the same values are set again).
    Returns what was set: {"torch_threads", "numba_threads" (None without numba), "malloc": {name: value}}.
    """
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    numba_threads = None
    try:
        import numba

        # numba's pool is sized at first use to NUMBA_NUM_THREADS; it can only be lowered below that.
        # numba first: starting its OpenMP threading layer resets the shared OpenMP thread count,
        # which is what torch.get_num_threads() reports.
        numba_threads = min(n, int(numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(numba_threads)
    except ImportError:
        pass
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return {"torch_threads": torch.get_num_threads(), "numba_threads": numba_threads, "malloc": _set_malloc()}


def micro_batches(n: int, per_item_bytes: int, limit_bytes: int = 32 << 20) -> int:
    """Largest chunk size (items per micro-batch, 1..n) whose tensor stays within ``limit_bytes``.

    Used to split encoder calls so that no hot-path tensor exceeds ~32 MB (beyond glibc's default mmap
    threshold every call would pay fresh page faults). n = 0 gives 0.
    """
    if n < 0 or per_item_bytes < 0 or limit_bytes <= 0:
        raise ValueError(
            f"need n >= 0, per_item_bytes >= 0, limit_bytes > 0; got {n}, {per_item_bytes}, {limit_bytes}"
        )
    if n == 0:
        return 0
    if per_item_bytes == 0:
        return n
    return max(1, min(n, limit_bytes // per_item_bytes))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux); platform's guess elsewhere (benchmark headers)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
