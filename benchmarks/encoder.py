"""Full VMambaRLTiny forward+backward per image, per preset and scan backend, and the scan's share of it.

    python benchmarks/encoder.py                       # presets light, standard, heavy, cpu; 64x64 depth
    python benchmarks/encoder.py --presets cpu --img 64 --batch 32
    python benchmarks/encoder.py --threads 1 --cpu-time   # one thread each, CPU time (shared machine)
    python benchmarks/encoder.py --layer_norm --threads 1  # numba LayerNorm vs torch's, per shape and model

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
    model = vm.VMambaRLTiny(1, (img, img), out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs())
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


def _ln_times(batch: int, hw: int, c: int, repeats: int) -> tuple[float, float, float, float]:
    """ms per call of F.layer_norm and the numba kernel on (batch, hw, hw, c): fwd, fwd, f+b, f+b."""
    import torch.nn.functional as F

    from vmamba_rl.ops.layer_norm import LayerNorm, _LayerNormCPU

    x = torch.randn(batch, hw, hw, c, requires_grad=True)
    ln = LayerNorm(c)
    g = torch.randn(batch, hw, hw, c)
    fns = {
        "torch": lambda: F.layer_norm(x, (c,), ln.weight, ln.bias, ln.eps),
        "numba": lambda: _LayerNormCPU.apply(x, ln.weight, ln.bias, ln.eps),
    }
    out = []
    for backward in (False, True):
        for fn in fns.values():

            def call(fn=fn, backward=backward):
                y = fn()
                if backward:
                    torch.autograd.grad(y, (x, ln.weight, ln.bias), g)

            out.append(_median_time(call, repeats * 5, warmup=2) * 1e3)
    return out[0], out[1], out[2], out[3]


def bench_layer_norm(batch: int, repeats: int) -> None:
    """torch's F.layer_norm against the numba kernel (vmamba_rl.ops.layer_norm) on the encoder's shapes,
    then the cpu preset's encoder forward+backward with the kernel switched off and on."""
    from vmamba_rl.ops import layer_norm as lnk

    print("\nLayerNorm over the last axis, ms per call (fwd, and fwd+bwd of x, weight and bias)")
    hdr = (
        f"{'shape':>18} | {'torch fwd':>9} {'numba fwd':>9} {'ratio':>6} | "
        f"{'torch f+b':>9} {'numba f+b':>9} {'ratio':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for hw, c in ((32, 8), (16, 8), (8, 16), (32, 16), (16, 32)):
        tf, nf, tb, nb = _ln_times(batch, hw, c, repeats)
        shape = f"({batch}, {hw}, {hw}, {c})"
        print(
            f"{shape:>18} | {tf:9.3f} {nf:9.3f} {tf / nf:5.2f}x | {tb:9.3f} {nb:9.3f} {tb / nb:5.2f}x",
            flush=True,
        )

    cfg = make_config(preset="cpu")
    torch.manual_seed(0)
    model = vm.VMambaRLTiny(1, (64, 64), out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs())
    x = torch.rand(batch, 1, 64, 64)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    norms = [m for m in model.modules() if isinstance(m, lnk.LayerNorm)]
    times: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True, False, True):
        for m in norms:
            m._kernel = on and lnk.kernel_available()
        times[on].append(_median_time(step, repeats * 3, warmup=2) * 1e3)
    off, on = min(times[False]), min(times[True])
    print(
        f"cpu preset VMambaRLTiny fwd+bwd, {batch} frames: torch LayerNorm {off:.1f} ms, numba {on:.1f} ms "
        f"({off / on:.2f}x; the stem runs channels-last in both)"
    )


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
    ap.add_argument("--layer_norm", action="store_true", help="only the LayerNorm comparison (batch 96)")
    args = ap.parse_args(argv)
    global _clock
    _clock = time.process_time if args.cpu_time else time.perf_counter
    info = configure_cpu(args.threads)
    print(
        f"torch {torch.__version__}; threads torch={info['torch_threads']} numba={info['numba_threads']}; "
        f"image 1x{args.img}x{args.img}, batch {args.batch}; "
        f"{'process CPU' if args.cpu_time else 'wall'} time"
    )
    if args.layer_norm:
        bench_layer_norm(96 if args.batch == 8 else args.batch, args.repeats)
        return
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
