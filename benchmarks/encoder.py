"""Full VMambaRLTiny forward+backward per image, per preset and scan backend, and the scan's share of it.

    python benchmarks/encoder.py                       # presets light, standard, heavy, cpu; 64x64 depth
    python benchmarks/encoder.py --presets cpu --img 64 --batch 32
    python benchmarks/encoder.py --threads 1 --cpu-time   # one thread each, CPU time (shared machine)

Backends: chunked and cpu for every preset, the reference loop for the cpu preset only (it takes seconds
per image at d_state 16). The scan share: during one forward pass every ``selective_scan_fn`` call's inputs
are recorded; then those exact calls are replayed alone (forward + backward of all inputs, same backend)
and timed; share = replay time / model time. ms per image = median warm call / batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vmamba_rl.models.vmamba as vm
from vmamba_rl.config import make_config
from vmamba_rl.ops.selective_scan import selective_scan_fn
from vmamba_rl.runtime import configure_cpu

_clock = time.perf_counter


def _median_time(call, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    ts = []
    for _ in range(repeats):
        t0 = _clock()
        call()
        ts.append(_clock() - t0)
    return statistics.median(ts)


def bench(preset: str, backend: str, img: int, batch: int, repeats: int) -> tuple[float, float, int]:
    """(model fwd+bwd seconds per image, scan-replay seconds per image, parameter count)."""
    cfg = make_config(preset=preset, scan_backend=backend)
    torch.manual_seed(0)
    model = vm.VMambaRLTiny.from_config(cfg.vmamba, in_chans=1, img_size=(img, img))
    model.train()
    x = torch.rand(batch, 1, img, img)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    t_model = _median_time(step, repeats)

    # record the scan calls of one forward pass
    calls: list[tuple[list, dict]] = []
    orig = vm.selective_scan_fn

    def recording(*args, **kwargs):
        calls.append(([a.detach().clone() if torch.is_tensor(a) else a for a in args], dict(kwargs)))
        return orig(*args, **kwargs)

    vm.selective_scan_fn = recording
    try:
        with torch.no_grad():
            model(x)
    finally:
        vm.selective_scan_fn = orig

    def replay():
        for args, kwargs in calls:
            leaves = [a.requires_grad_() if torch.is_tensor(a) else a for a in args]
            kw = {k: (v.detach().requires_grad_() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
            y = selective_scan_fn(*leaves, **kw)
            y.sum().backward()

    t_scan = _median_time(replay, repeats)
    n_params = sum(p.numel() for p in model.parameters())
    return t_model / batch, t_scan / batch, n_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["light", "standard", "heavy", "cpu"])
    ap.add_argument("--img", type=int, default=64, help="square depth image side")
    ap.add_argument("--batch", type=int, default=8, help="images per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--cpu-time", action="store_true", help="process CPU time, not wall time (see benchmarks/scan.py)"
    )
    args = ap.parse_args(argv)
    global _clock
    _clock = time.process_time if args.cpu_time else time.perf_counter
    info = configure_cpu(args.threads)
    print(
        f"torch {torch.__version__}; threads torch={info['torch_threads']} numba={info['numba_threads']}; "
        f"image 1x{args.img}x{args.img}, batch {args.batch}; "
        f"{'process CPU' if args.cpu_time else 'wall'} time"
    )
    hdr = (
        f"{'preset':>8} {'params':>8} {'backend':>9} | {'fwd+bwd ms/img':>14} {'scan ms/img':>11} "
        f"{'scan share':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for preset in args.presets:
        backends = ["reference", "chunked", "cpu"] if preset == "cpu" else ["chunked", "cpu"]
        for backend in backends:
            t_model, t_scan, n_params = bench(preset, backend, args.img, args.batch, args.repeats)
            print(
                f"{preset:>8} {n_params / 1e6:7.2f}M {backend:>9} | {t_model * 1e3:14.2f} "
                f"{t_scan * 1e3:11.2f} {t_scan / t_model:9.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
