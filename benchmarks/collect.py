"""Collection speed: acting decisions/s of the cpu-preset vmamba_td3 policy on DroneNav-v0.

    python benchmarks/collect.py                         # local N = 1, 4, 16, then Ray W = 1, 2, 4, 8
    python benchmarks/collect.py --local 1 4 16 --ray    # skip Ray with --ray (an empty list)
    python benchmarks/collect.py --latency 0.05 --ray 1 2 4 8

Local rows: N environments in one synchronous Gymnasium vector environment, one batched policy
forward for all N per step, every transition stored in replay (what ``--num_envs N`` does in training,
without the gradient updates). Two local tables: every frame of each K-step window encoded on every
step (what acting costs when the weights change between steps, as in training with an update per
decision), and with the agent's frame-feature cache (the weights fixed: evaluation, a Ray worker
between broadcasts), where only the newest frame of each window is encoded. Ray rows: W workers
with one environment each and ``--latency`` seconds of simulated simulator time per step
(``step_latency_s``, about AirSim's rate), the learner storing every chunk (``--ray_workers W``).
Ratios are against the first row of each table, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from vmamba_rl.agents import make_agent
from vmamba_rl.collector import LocalCollector, env_fns
from vmamba_rl.config import make_config
from vmamba_rl.envs.make import make_env
from vmamba_rl.runtime import cpu_model


def _config(args: argparse.Namespace, n: int, **kw):
    return make_config(
        "cpu", level=args.level, num_envs=n, scan_backend="auto", buffer_size=max(20_000, 64 * n), **kw
    )


def bench_local(args: argparse.Namespace, n: int, cache: bool) -> float:
    cfg = _config(args, n)
    agent = make_agent(make_env(cfg), None, cfg, num_streams=n)
    if not cache:
        agent.frame_cache = None
    col = LocalCollector(env_fns(cfg, n), agent, cfg.seed)
    for _ in range(3):  # warm-up: numba compilation, first allocations
        col.collect(agent, random_actions=False)
    return _rate(col, agent, args.seconds)


def _rate(col, agent, seconds: float) -> float:
    """Decisions per second stored by ``col`` over ``seconds`` of collection (then closes it)."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += col.collect(agent, random_actions=False).decisions
    rate = done / (time.perf_counter() - t0)
    col.close()
    return rate


def bench_ray(args: argparse.Namespace, w: int) -> float:
    from vmamba_rl.collect_ray import RayCollector

    cfg = make_config(
        "cpu", level=args.level, ray_workers=w, envs_per_worker=1, ray_chunk=args.chunk,
        env_kwargs={"step_latency_s": args.latency}, scan_backend="auto",
    )  # fmt: skip
    agent = make_agent(make_env(cfg), None, cfg, num_streams=w)
    col = RayCollector(cfg, agent, None)
    got = 0
    while got < w * args.chunk * 2:  # warm-up: every worker started and sent chunks
        got += col.collect(agent, random_actions=False).decisions
    return _rate(col, agent, args.seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", type=int, nargs="*", default=[1, 4, 16], help="numbers of local environments")
    p.add_argument("--ray", type=int, nargs="*", default=[1, 2, 4, 8], help="numbers of Ray workers")
    p.add_argument("--latency", type=float, default=0.05, help="seconds per simulator step in the Ray rows")
    p.add_argument("--chunk", type=int, default=16, help="decisions per worker chunk (--ray_chunk)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    p.add_argument("--level", default="easy")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this (the learner's) process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {args.threads} torch thread(s) in the learner, torch {torch.__version__}")
    print(f"policy: vmamba_td3 cpu preset, DroneNav-v0 {args.level}, {args.seconds:.0f} s per row")
    if args.local:
        print("\nlocal vector environments (sync), no step latency, every frame encoded every step")
        _table("envs N", args.local, lambda n: bench_local(args, n, cache=False))
        print("\nthe same with the frame-feature cache (weights fixed while acting)")
        _table("envs N", args.local, lambda n: bench_local(args, n, cache=True))
    if args.ray:
        import ray

        ray.init(num_cpus=max(args.ray) + 1, include_dashboard=False, log_to_driver=False)
        print(f"\nRay workers, one environment each, step latency {args.latency * 1000:.0f} ms")
        _table("workers W", args.ray, lambda w: bench_ray(args, w))
        ray.shutdown()


def _table(name: str, counts: list[int], measure) -> None:
    """Rows of decisions/s per count, the ratio to the first row, and that ratio per count unit."""
    print(f"{name:>9} {'decisions/s':>12} {'x first':>8} {'/ count':>8}")
    base = None
    for c in counts:
        r = measure(c)
        base = base or r
        print(f"{c:>9} {r:>12.1f} {r / base:>8.2f} {r / base / (c / counts[0]):>8.2f}", flush=True)


if __name__ == "__main__":
    main()
