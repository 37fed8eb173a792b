"""Selective-scan backends side by side: reference loop, chunked torch, fused numba cpu kernel.

    python benchmarks/scan.py                 # full grid (reference at L=1024, N=16 takes minutes)
    python benchmarks/scan.py --skip-slow     # full grid without the reference at L=1024, N=16
    python benchmarks/scan.py --quick         # D=128 per direction, L=256, N in {1, 16}
    python benchmarks/scan.py --cpu-preset    # only the cpu preset's d_state 1 stages, 100 images
    python benchmarks/scan.py --device cuda   # GPU: triton kernel vs chunked torch at the presets' stages

Inputs as SS2D makes them: 4 directions (G = 4 groups) of D channels each, Mamba's init (A = -(1..N),
dt bias = inverse softplus of a log-uniform draw in [1e-3, 0.1]), float32. Every backend sees the same
tensors. "fwd" is a forward under no_grad (inference); "fwd+bwd" a forward with autograd plus the gradients
of all seven inputs. Times are the median of the warm repeats, divided by the number of images. The
reference runs on fewer images and repeats (it is 1-3 orders of magnitude slower; per-image time is what
is compared). Cold start: the first cpu call in a fresh process, once compiling from scratch (empty numba
cache) and once loading the cached machine code (what every later run pays).

The full grid ends with the cpu preset's SS2D stages (d_state 1; 4 x d channels, L tokens): (d, L) =
(16, 64), (32, 16), (64, 4), (128, 1), at its training batch of 100 images, where per-call overhead and
short sequences matter more than at L >= 64.

``--device cuda`` compares the Triton kernel with the chunked torch path on the GPU at every SS2D stage of
the light, standard and heavy presets (64 x 64 depth, patch 4, d_state 16, ssm_ratio 2: L = 256, 64, 16,
4) and of the cpu preset (d_state 1), for a batch of B x K = 128 x 4 frames, in fp32 and with bf16 inputs,
timed with CUDA synchronisation; the ratio column is chunked time / triton time, and "max err" the
largest difference of the two outputs over the largest output.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from vmamba_rl.ops.scan_chunked import selective_scan_chunked
from vmamba_rl.ops.scan_reference import selective_scan_ref
from vmamba_rl.runtime import configure_cpu, cpu_model

DIRECTIONS = 4
PRESET_IMAGES = 100  # the cpu preset's training batch


def make_inputs(n_img: int, d: int, L: int, N: int, seed: int = 0) -> list[torch.Tensor]:
    """u, delta (n, 4d, L); A (4d, N); B, C (n, 4, N, L); D, delta_bias (4d,) with Mamba's init."""
    g = torch.Generator().manual_seed(seed)
    ch = DIRECTIONS * d
    u = torch.randn(n_img, ch, L, generator=g)
    delta = torch.randn(n_img, ch, L, generator=g) * 0.1
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(ch, 1)
    B = torch.randn(n_img, DIRECTIONS, N, L, generator=g)
    C = torch.randn(n_img, DIRECTIONS, N, L, generator=g)
    Dv = torch.ones(ch)
    dt = torch.exp(torch.rand(ch, generator=g) * math.log(100.0) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    return [u, delta, A, B, C, Dv, bias]


_clock = time.perf_counter


def time_backend(fn, ins: list[torch.Tensor], bwd: bool, repeats: int, warmup: int = 1) -> float:
    """Median seconds per call over ``repeats`` warm calls (wall clock, or process CPU time)."""
    if bwd:
        leaves = [t.detach().requires_grad_() for t in ins]
        dy = torch.randn(ins[0].shape, generator=torch.Generator().manual_seed(1))

        def call():
            y = fn(*leaves)
            torch.autograd.grad(y, leaves, dy)

    else:
        plain = [t.detach() for t in ins]

        def call():
            with torch.no_grad():
                fn(*plain)

    for _ in range(warmup):
        call()
    ts = []
    for _ in range(repeats):
        t0 = _clock()
        call()
        ts.append(_clock() - t0)
    return statistics.median(ts)


_COLD_SNIPPET = """
import time, torch
t0 = time.perf_counter()
from vmamba_rl.runtime import configure_cpu
configure_cpu({threads})
from vmamba_rl.ops.scan_cpu import selective_scan_cpu
n, L, N = 512, 256, {N}
ins = [torch.randn(1, n, L), torch.randn(1, n, L) * 0.1, -torch.arange(1.0, N + 1).repeat(n, 1),
       torch.randn(1, 4, N, L), torch.randn(1, 4, N, L), torch.ones(n), torch.full((n,), -3.0)]
ins = [t.requires_grad_() for t in ins]
y = selective_scan_cpu(*ins); y.sum().backward()
t_first = time.perf_counter() - t0
ts = []
for _ in range(5):
    t1 = time.perf_counter()
    y = selective_scan_cpu(*ins); y.sum().backward()
    ts.append(time.perf_counter() - t1)
print(t_first, min(ts))
"""


def cold_start(N: int, threads: int | None) -> tuple[float, float, float]:
    """(compile from scratch, load from cache, warm) seconds for the first fwd+bwd in a new process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):  # 1st: empty cache -> compile; 2nd: cached
            r = subprocess.run(
                [sys.executable, "-c", _COLD_SNIPPET.format(N=N, threads=threads)],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            out.append([float(x) for x in r.stdout.split()])
    return out[0][0], out[1][0], out[1][1]


# (preset, channels per direction and tokens at stage 1, d_state); later stages double the channels and
# quarter the tokens
GPU_PRESETS = (
    ("light", 128, 256, 16),
    ("standard", 192, 256, 16),
    ("heavy", 256, 256, 16),
    ("cpu", 16, 64, 1),
)


def time_cuda(fn, ins: list[torch.Tensor], bwd: bool, repeats: int) -> float:
    """Median seconds per call on the GPU (synchronised around each call), after two warm-up calls."""
    if bwd:
        leaves = [t.detach().requires_grad_() for t in ins]
        dy = torch.randn_like(ins[0])

        def call():
            torch.autograd.grad(fn(*leaves), leaves, dy)

    else:
        plain = [t.detach() for t in ins]

        def call():
            with torch.no_grad():
                fn(*plain)

    for _ in range(2):
        call()
    ts = []
    sync = torch.cuda.synchronize if ins[0].is_cuda else (lambda: None)
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def gpu_main(args: argparse.Namespace, dev: torch.device, frames: int = 128 * 4) -> None:
    """Triton kernel vs chunked torch on ``dev`` (the GPU) at the presets' SS2D stages."""
    import triton

    from vmamba_rl.ops.scan_triton import selective_scan_triton

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU, Triton interpreter"
    print(f"GPU: {name}; torch {torch.__version__}, triton {triton.__version__}")
    hdr = (
        f"{'preset':>8} {'D/dir':>5} {'L':>4} {'N':>3} {'dtype':>5} {'pass':>7} | {'chunked ms':>10} "
        f"{'triton ms':>9} | {'ratio':>6} {'max err':>8}"
    )
    print(f"\nms per call for {frames} frames (median of {args.repeats} synchronised calls)")
    print(hdr)
    print("-" * len(hdr))
    for preset, d0, L0, N in GPU_PRESETS:
        for stage in range(4):
            d, L = d0 << stage, L0 >> (2 * stage)
            for dtype in (torch.float32, torch.bfloat16):
                ins = [t.to(dev) for t in make_inputs(frames, d, L, N)]
                ins = [t.to(dtype) if i in (0, 1, 3, 4) else t for i, t in enumerate(ins)]
                with torch.no_grad():
                    y_t = selective_scan_triton(*ins).float()
                    y_c = selective_scan_chunked(*ins).float()
                err = float((y_t - y_c).abs().max() / y_c.abs().max())
                for bwd in (False, True):
                    t_c = time_cuda(selective_scan_chunked, ins, bwd, args.repeats)
                    t_t = time_cuda(selective_scan_triton, ins, bwd, args.repeats)
                    kind = "fwd+bwd" if bwd else "fwd"
                    print(
                        f"{preset:>8} {d:>5} {L:>4} {N:>3} {str(dtype)[6:]:>5} {kind:>7} "
                        f"| {t_c * 1e3:10.3f} {t_t * 1e3:9.3f} | {t_c / t_t:5.1f}x {err:8.1e}",
                        flush=True,
                    )
                del ins


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only D=128 per direction, L=256, N in {1, 16}")
    ap.add_argument("--skip-slow", action="store_true", help="skip the reference at L=1024, N=16")
    ap.add_argument(
        "--cpu-preset", action="store_true", help="only the cpu preset's d_state 1 stages (100 images each)"
    )
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start measurement (2 subprocesses)")
    ap.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: os.cpu_count())")
    ap.add_argument("--repeats", type=int, default=5, help="warm repeats for chunked and cpu")
    ap.add_argument("--ref-repeats", type=int, default=1, help="warm repeats for the reference")
    ap.add_argument(
        "--elems", type=int, default=1 << 20, help="images per call = elems / (4 D L), clamped to [1, 32]"
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="measure process CPU time instead of wall time: on a machine shared with other jobs and with "
        "--threads 1 it approximates the uncontended wall time (with more threads it sums over them)",
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: triton vs chunked on the GPU"
    )
    args = ap.parse_args(argv)
    if args.device == "cuda":
        gpu_main(args, torch.device("cuda"))
        return
    global _clock
    _clock = time.process_time if args.cpu_time else time.perf_counter

    info = configure_cpu(args.threads)
    from vmamba_rl.ops.scan_cpu import check_available, selective_scan_cpu

    check_available()
    import numba

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(
        f"torch {torch.__version__}, numba {numba.__version__}, python {platform.python_version()}; "
        f"threads torch={info['torch_threads']} numba={info['numba_threads']}; "
        f"malloc={info['malloc'] or 'default'}"
    )
    if hasattr(os, "getloadavg"):  # other processes on the machine distort wall-clock times
        print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    if not args.no_cold:
        for N in (1, 16):
            comp, cached, warm = cold_start(N, info["torch_threads"])
            print(
                f"cold start, first cpu fwd+bwd (4x128 ch, L=256, N={N}, 1 image, incl. import): "
                f"compile {comp:.1f} s, from cache {cached:.2f} s, then warm {warm * 1e3:.1f} ms"
            )

    # (D per direction, L, N, images per call; None: from --elems)
    preset = [(d, L, 1, PRESET_IMAGES) for d, L in ((16, 64), (32, 16), (64, 4), (128, 1))]
    if args.cpu_preset:
        grid = preset
    elif args.quick:
        grid = [(128, 256, 1, None), (128, 256, 16, None)]
    else:
        grid = [(d, L, N, None) for d in (64, 128) for L in (64, 256, 1024) for N in (1, 16)] + preset
    hdr = (
        f"{'D/dir':>5} {'L':>5} {'N':>3} {'pass':>7} {'imgs':>4} {'ref':>4} | {'reference':>10} "
        f"{'chunked':>9} {'cpu':>8} | {'cpu vs ref':>10} {'cpu vs chunked':>14}"
    )
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"\nms per image ({clock}, median of warm repeats); speed-up = other backend's time / cpu's time")
    print(hdr)
    print("-" * len(hdr))
    for d, L, N, imgs in grid:
        n_img = imgs or max(1, min(32, args.elems // (DIRECTIONS * d * L)))
        n_ref = max(1, n_img // 8)
        ins = make_inputs(n_img, d, L, N)
        ins_ref = [t[:n_ref] if t.dim() >= 3 else t for t in ins]
        skip_ref = args.skip_slow and L >= 1024 and N >= 16
        for bwd in (False, True):
            t_cpu = time_backend(selective_scan_cpu, ins, bwd, args.repeats) / n_img
            t_chk = time_backend(selective_scan_chunked, ins, bwd, args.repeats) / n_img
            if skip_ref:
                t_ref = float("nan")
            else:
                t_ref = time_backend(selective_scan_ref, ins_ref, bwd, args.ref_repeats) / n_ref
            ref_s = "skipped" if skip_ref else f"{t_ref * 1e3:10.2f}"
            ratio_ref = "-" if skip_ref else f"{t_ref / t_cpu:9.1f}x"
            print(
                f"{d:>5} {L:>5} {N:>3} {'fwd+bwd' if bwd else 'fwd':>7} {n_img:>4} {n_ref:>4} | {ref_s:>10} "
                f"{t_chk * 1e3:9.3f} {t_cpu * 1e3:8.4f} | {ratio_ref:>10} {t_chk / t_cpu:13.1f}x",
                flush=True,
            )
    if hasattr(os, "getloadavg"):
        print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
