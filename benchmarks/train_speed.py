"""Training speed: updates/s and environment steps/s of vmamba_td3 and the td3 CNN baseline, and
Stable-Baselines3's TD3 (MultiInputPolicy, NatureCNN on the K frames stacked as channels) when the
``[sb3]`` extra is installed, all at the same batch size, K and image size, in one run.

    python benchmarks/train_speed.py                   # cpu preset sizes, batch 64, K 4, 64x64
    python benchmarks/train_speed.py --batch_size 32 --updates 20
    python benchmarks/train_speed.py --device cuda --preset light --amp off bf16 fp16   # a GPU

Rows: each agent as the cpu preset runs it (one encoder shared by actor and critic, batches as runs
of 8 windows whose shared frames are encoded once) and with the spec's update (an encoder stream per
side, independent windows), same sizes.

Updates are timed on a replay buffer pre-filled with random DroneNav-v0 (easy) steps; environment
steps/s include acting with the policy (one forward of the actor stream per step).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from vmamba_rl.agents import make_agent
from vmamba_rl.config import make_config
from vmamba_rl.envs.wrappers import SequenceHistory
from vmamba_rl.runtime import configure_cpu, cpu_model
from vmamba_rl.training import last_frames, make_env


def _machine(device: str) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else ""
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}"


def _now(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # GPU work is asynchronous: time what was queued, not the queueing
    return time.perf_counter()


# The spec's update: one encoder stream per side, independent windows, the spec's heads (cpu preset sizes).
SPEC_UPDATE = {"share_encoder": False, "replay_segment": 1, "critic_norm": "joint", "base_skip": False}


def bench_ours(algo: str, args: argparse.Namespace, **overrides) -> dict[str, float]:
    cfg = make_config(
        args.preset,
        algorithm_name=algo,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        level="easy",
        scan_backend=args.scan_backend,
        device=args.device,
        **overrides,
    )
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(args.fill):
        a = env.action_space.sample()
        nobs, r, te, tr, _ = env.step(a)
        agent.store_transition(last_frames(obs), a, r, last_frames(nobs), te, tr)
        obs = nobs if not (te or tr) else env.reset()[0]
    for _ in range(3):  # warm-up: kernel compilation, allocator
        agent.train(0.5)
    t = _now(args.device)
    for _ in range(args.updates):
        agent.train(0.5)
    ups = args.updates / (_now(args.device) - t)
    t = _now(args.device)
    for _ in range(args.steps):
        nobs, r, te, tr, _ = env.step(agent.act(obs, explore=True))
        obs = nobs if not (te or tr) else env.reset()[0]
    sps = args.steps / (_now(args.device) - t)
    n_params = sum(
        p.numel() for name, m in agent.modules().items() if "target" not in name for p in m.parameters()
    )
    return {"updates_per_s": ups, "steps_per_s": sps, "params": n_params}


class _StackForSB3(gym.ObservationWrapper):
    """K-step Dict -> {depth: (K, H, W) uint8 image channels, base: (K*10,)} for SB3's CombinedExtractor."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        d, b = env.observation_space["depth"], env.observation_space["base"]
        K, _, H, W = d.shape
        self.observation_space = gym.spaces.Dict(
            {
                "depth": gym.spaces.Box(0, 255, (K, H, W), np.uint8),
                "base": gym.spaces.Box(-np.inf, np.inf, (int(np.prod(b.shape)),), np.float32),
            }
        )

    def observation(self, obs):
        return {"depth": obs["depth"][:, 0], "base": obs["base"].reshape(-1).astype(np.float32)}


def bench_sb3(args: argparse.Namespace) -> dict[str, float] | None:
    try:
        from stable_baselines3 import TD3
    except ImportError:
        return None
    env = _StackForSB3(SequenceHistory(gym.make("DroneNav-v0", level="easy"), args.seq_len))
    model = TD3(
        "MultiInputPolicy",
        env,
        batch_size=args.batch_size,
        learning_starts=args.fill,
        buffer_size=max(args.fill * 2, 1000),
        train_freq=1,
        gradient_steps=0,
        verbose=0,
        seed=0,
        device=args.device,
    )
    model.learn(args.fill, progress_bar=False)  # fills the buffer with random steps, no updates
    model.train(gradient_steps=3, batch_size=args.batch_size)
    t = _now(args.device)
    model.train(gradient_steps=args.updates, batch_size=args.batch_size)
    ups = args.updates / (_now(args.device) - t)
    obs, _ = env.reset(seed=0)
    t = _now(args.device)
    for _ in range(args.steps):
        a, _ = model.predict(obs, deterministic=False)
        obs, r, te, tr, _ = env.step(a)
        if te or tr:
            obs, _ = env.reset()
    sps = args.steps / (_now(args.device) - t)
    n_params = sum(p.numel() for p in model.actor.parameters()) + sum(
        p.numel() for p in model.critic.parameters()
    )
    return {"updates_per_s": ups, "steps_per_s": sps, "params": n_params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seq_len", type=int, default=4)
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--fill", type=int, default=600)
    p.add_argument("--scan_backend", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every row runs there)")
    p.add_argument("--preset", default="cpu", help="network sizes and recipe of our rows (cpu, light, ...)")
    p.add_argument(
        "--amp", nargs="+", default=["off"], help="mixed-precision modes for extra vmamba_td3 rows (CUDA)"
    )
    args = p.parse_args()
    configure_cpu(args.threads)
    print(f"machine: {_machine(args.device)}")
    print(
        f"config: {args.preset} preset on {args.device}, batch {args.batch_size}, K {args.seq_len}, depth "
        f"1x64x64, DroneNav-v0 easy, {args.updates} timed updates, {args.steps} timed env steps\n"
    )
    rows: dict[str, dict[str, float]] = {}

    def measure(name: str, algo: str, **overrides) -> None:
        rows[name] = r = bench_ours(algo, args, **overrides)
        # printed as it comes, so a run cut short still shows the rows it finished
        print(f"  measured {name}: {r['updates_per_s']:.2f} updates/s, {r['steps_per_s']:.1f} env steps/s")

    for amp in args.amp:
        tag = "" if amp == "off" else f", amp {amp}"
        measure(f"vmamba_td3 ({args.preset} preset{tag})", "vmamba_td3", amp=amp)
    cpu_recipe = args.preset == "cpu"  # light, standard and heavy already run the spec's update
    if cpu_recipe:
        measure("vmamba_td3 (spec update)", "vmamba_td3", **SPEC_UPDATE)
    measure(f"td3 (CNN, {args.preset} preset)", "td3")
    if cpu_recipe:
        measure("td3 (CNN, spec update)", "td3", **SPEC_UPDATE)
    sb3 = bench_sb3(args)
    if sb3 is not None:
        rows["SB3 TD3 MultiInputPolicy"] = sb3
    base = rows.get("SB3 TD3 MultiInputPolicy", rows[f"td3 (CNN, {args.preset} preset)"])
    base_name = "SB3" if sb3 is not None else "td3"
    ratio = f"updates vs {base_name}"
    print(f"{'algorithm':<36} {'params':>10} {'updates/s':>10} {'env steps/s':>12} {ratio:>16}")
    for name, r in rows.items():
        print(
            f"{name:<36} {r['params']:>10,} {r['updates_per_s']:>10.2f} {r['steps_per_s']:>12.1f} "
            f"{r['updates_per_s'] / base['updates_per_s']:>16.2f}"
        )
    if sb3 is None:
        print("\n(Stable-Baselines3 not installed: pip install -e '.[sb3]' adds its TD3 row)")


if __name__ == "__main__":
    main()
