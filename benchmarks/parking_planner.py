"""The Reeds-Shepp planner on its own on Parking-v0, its search time, and environment steps/s with the
hybrid hand-off on; each with HOPE's search and with the slot's exits (``--rs_exit_tree``).

    python benchmarks/parking_planner.py                        # 500 episodes per level
    python benchmarks/parking_planner.py --episodes 100 --levels normal extreme

Rows per level (fresh scene seeds from ``--seed``; bay and parallel apart where a level has both):
- ``rs from start``: HOPE's hand-off search (:class:`ReedsSheppPlanner`: within 10 m, shortest first up
  to 1.6x, collision-checked on the environment's integrator) from the start pose, executed open-loop.
- ``rs + approach``: where that finds nothing, a scripted approach: waypoints on a grid in the target's
  frame (every 2 m along, 1.5 m across, four headings, free footprint, within 10 m of the target),
  tried in order of their two Reeds-Shepp lengths; the first whose leg from the start (any length,
  checked the same way) and hand-off from the leg's simulated end are both free is executed.
- ``+ exits``: the same two with the planner's ``exit_tree`` on (paths may end at an exit of the slot,
  whose backward-searched moves finish the parking; the exit search's own time is reported apart).
Search time: each ``ReedsSheppPlanner.plan`` call from the start poses, wall and thread CPU time
(p50 / p95). Steps/s: random actions for ``--steps`` steps with and without the hybrid wrapper.
Writes ``--out``/parking_planner.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmamba_rl.envs.parking import MIN_TURN_RADIUS, SLOT_TYPES, ParkingEnv
from vmamba_rl.planning.handoff import ReedsSheppHybrid, ReedsSheppPlanner, path_actions
from vmamba_rl.planning.reeds_shepp import reeds_shepp_paths
from vmamba_rl.runtime import cpu_model

LEVELS = ("normal", "complex", "extreme")


def approach_waypoints(env: ParkingEnv, max_dist: float) -> list[np.ndarray]:
    """Free poses (x, y, yaw) on a grid in the target frame within ``max_dist`` of the target."""
    tx, ty, tyaw = env.scene.target
    c, s = math.cos(tyaw), math.sin(tyaw)
    out = []
    for along in np.arange(-8.0, 8.01, 2.0):
        for across in np.arange(-6.0, 6.01, 1.5):
            if math.hypot(along, across) > max_dist or (along == 0 and across == 0):
                continue
            x, y = tx + c * along - s * across, ty + s * along + c * across
            for dh in (0.0, 0.5 * math.pi, math.pi, -0.5 * math.pi):
                pose = np.array([x, y, tyaw + dh])
                if env.first_blocked(pose[None])[0] == 1:
                    out.append(pose)
    return out


def plan_with_approach(env: ParkingEnv, planner: ReedsSheppPlanner, tries: int = 60) -> np.ndarray | None:
    """Actions (n, 2) of a free approach leg plus a free hand-off, or None."""
    start, target = env.state.copy(), env.scene.target
    ways = approach_waypoints(env, planner.max_dist)
    cost = [
        reeds_shepp_paths(start, w, MIN_TURN_RADIUS)[0].length
        + reeds_shepp_paths(w, target, MIN_TURN_RADIUS)[0].length
        for w in ways
    ]
    for k in np.argsort(cost)[:tries]:
        w = ways[k]
        paths = reeds_shepp_paths(start, w, MIN_TURN_RADIUS)
        limit = planner.length_factor * paths[0].length + 1e-9
        for path in paths:
            if path.length > limit:
                break
            leg = path_actions(path)
            poses = env.simulate(leg, start)
            if env.first_blocked(poses)[0] < len(poses):
                continue
            hand = planner.plan(env, poses[-1])
            if hand is not None:
                return np.concatenate([leg, hand.actions])
            break  # this waypoint's leg is free but the hand-off is not: next waypoint
    return None


def drive(env: ParkingEnv, actions: np.ndarray) -> bool:
    """Execute actions open-loop; True on success."""
    for a in actions:
        _, _, term, trunc, info = env.step(a.astype(np.float32))
        if term or trunc:
            return bool(info["is_success"])
    return False


def rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def level_rows(level: str, episodes: int, seed: int, exit_tree: bool = False) -> dict[str, Any]:
    env = ParkingEnv(level=level)
    planner = ReedsSheppPlanner(exit_tree=exit_tree)
    res: dict[str, dict[str, list[bool]]] = {t: {"start": [], "approach": []} for t in SLOT_TYPES}
    wall, cpu, tree_s = [], [], []
    for i in range(episodes):
        env.reset(seed=seed + i)
        slot = env.scene.slot_type
        start = env.state.copy()
        if exit_tree:
            tree_s.append(planner.tree(env).seconds)  # searched once per scene, timed apart
        t0, c0 = time.perf_counter(), time.thread_time()
        plan = planner.plan(env)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        ok = plan is not None and drive(env, plan.actions)
        res[slot]["start"].append(ok)
        if not ok:
            env.reset(seed=seed + i)
            assert np.allclose(env.state, start)
            acts = plan_with_approach(env, planner)
            ok = acts is not None and drive(env, acts)
        res[slot]["approach"].append(ok)
    out: dict[str, Any] = {"episodes": episodes}
    for kind in ("start", "approach"):
        every = [v for t in SLOT_TYPES for v in res[t][kind]]
        out[kind] = rate(every)
        out[f"{kind}_by_slot"] = {t: rate(res[t][kind]) for t in SLOT_TYPES if res[t][kind]}
    out["search_ms"] = {
        "wall_p50": 1e3 * float(np.percentile(wall, 50)),
        "wall_p95": 1e3 * float(np.percentile(wall, 95)),
        "cpu_p50": 1e3 * float(np.percentile(cpu, 50)),
        "cpu_p95": 1e3 * float(np.percentile(cpu, 95)),
    }
    if exit_tree:
        out["exit_search_ms"] = {
            "p50": 1e3 * float(np.percentile(tree_s, 50)),
            "p95": 1e3 * float(np.percentile(tree_s, 95)),
        }
    return out


def steps_per_second(
    level: str, steps: int, hybrid: bool, seed: int, exit_tree: bool = False
) -> tuple[float, list[float]]:
    base = ParkingEnv(level=level)
    env = ReedsSheppHybrid(base, exit_tree=exit_tree) if hybrid else base
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        a = rng.uniform([-0.75, -2.5], [0.75, 2.5]).astype(np.float32)
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset(seed=int(rng.integers(1 << 30)))
    sps = steps / (time.perf_counter() - t0)
    return sps, (env.plan_seconds if hybrid else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", nargs="+", default=list(LEVELS))
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--seed", type=int, default=50_000, help="first scene seed (fresh: not used elsewhere)")
    p.add_argument("--steps", type=int, default=5000, help="random-action steps for the steps/s rows")
    p.add_argument("--out", default="runs/parking_planner")
    args = p.parse_args(argv)
    print(f"machine: {cpu_model()}; {args.episodes} episodes per level from seed {args.seed}")
    results: dict[str, Any] = {
        "machine": cpu_model(),
        "episodes": args.episodes,
        "seed": args.seed,
        "levels": {},
    }
    print(f"{'level':<9} {'search':<8} {'from start':>11} {'+ approach':>11}  "
          f"{'by slot (start / approach)':<40} {'search ms wall p50/p95':>22} {'cpu p50/p95':>12}  "
          f"{'exit search ms p50/p95':>22}")  # fmt: skip
    for level in args.levels:
        results["levels"][level] = {}
        for name, exit_tree in (("hope", False), ("exits", True)):
            r = level_rows(level, args.episodes, args.seed, exit_tree)
            results["levels"][level][name] = r
            by = r["start_by_slot"]
            slots = ", ".join(f"{t} {by[t]:.3f} / {r['approach_by_slot'][t]:.3f}" for t in by)
            ms, ex = r["search_ms"], r.get("exit_search_ms")
            tree = f"{ex['p50']:>9.2f} / {ex['p95']:.2f}" if ex else ""
            print(
                f"{level:<9} {name:<8} {r['start']:>11.3f} {r['approach']:>11.3f}  {slots:<40} "
                f"{ms['wall_p50']:>9.2f} / {ms['wall_p95']:<9.2f} {ms['cpu_p50']:>5.2f} / "
                f"{ms['cpu_p95']:<6.2f} {tree}"
            )
    print(f"\nenvironment steps/s, random actions, {args.steps} steps (HOPE's environment: ~40 steps/s)")
    results["steps_per_s"] = {}
    for level in args.levels:
        off, _ = steps_per_second(level, args.steps, False, args.seed)
        on, plans = steps_per_second(level, args.steps, True, args.seed)
        ex, ex_plans = steps_per_second(level, args.steps, True, args.seed, exit_tree=True)
        p95 = 1e3 * float(np.percentile(plans, 95)) if plans else float("nan")
        ex_p95 = 1e3 * float(np.percentile(ex_plans, 95)) if ex_plans else float("nan")
        results["steps_per_s"][level] = {
            "off": off, "hybrid": on, "ratio": on / off, "plan_wall_p95_ms": p95,
            "hybrid_exits": ex, "ratio_exits": ex / off, "plan_exits_wall_p95_ms": ex_p95,
        }  # fmt: skip
        print(
            f"{level:<9} without {off:8.0f}   hybrid {on:8.0f} (ratio {on / off:.2f}, "
            f"search p95 {p95:.2f} ms)   hybrid + exits {ex:8.0f} (ratio {ex / off:.2f}, "
            f"search p95 {ex_p95:.2f} ms)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parking_planner.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'parking_planner.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
