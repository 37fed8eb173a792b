"""Fault benchmark: SIGKILL a short `vmamba-rl train` run at random moments, resume it each time, and
check every save unit and the final result against an uninterrupted run.

    python benchmarks/faults.py                 # 20 kills
    python benchmarks/faults.py --kills 5 --steps 200

Each attempt is the real command line (`vmamba-rl train ...`, then `--resume`), killed after a random
delay: its start-up time plus a random share of the uninterrupted run's work (so the kills spread over the
whole run). After every kill
the run folder's save unit is checked as a resume would: the replay file the checkpoint names exists
and matches its SHA-256 (the replay file of an interrupted save may lie beside it until the next start
removes it). At the end the killed run is resumed to its
budget and its parameters are compared with the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vmamba_rl.checkpoint import CheckpointError, safe_torch_load, sha256_file
from vmamba_rl.runtime import cpu_model

TINY = [
    "--vmamba_patch_size", "8", "--vmamba_hidden_dim", "8", "--vmamba_num_vss_blocks", "1", "1", "1", "1",
    "--vmamba_ssm_d_state", "1", "--feature_dim", "16", "--state_feature_dim", "8", "--hidden_dim", "16",
    "--batch_size", "8", "--seq_len", "3", "--buffer_size", "3000", "--torch_threads", "1",
]  # fmt: skip


def _argv(args: argparse.Namespace, log: Path, name: str) -> list[str]:
    return [
        sys.executable, "-m", "vmamba_rl.cli", "train", "--preset", "cpu", *TINY, "--level", "easy",
        "--max_timesteps", str(args.steps), "--learning_starts", "50", "--updates_per_step", "0.25",
        "--save_interval", "25", "--eval_interval", "100", "--eval_episodes", "2", "--num_envs", "2",
        "--env_kwargs", '{"max_steps": 15}', "--seed", "1", "--no-progress", "--log_dir", str(log),
        "--run_name", name,
    ]  # fmt: skip


def _attempt(argv: list[str], run: Path, kill_after: float | None) -> tuple[int, float]:
    cmd = (
        argv
        if not (run / "checkpoint.pt").exists()
        else [*argv[: argv.index("train") + 1], "--resume", str(run)]
    )
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        p.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return p.returncode, time.perf_counter() - t0


def _unit_ok(run: Path) -> bool | None:
    """True if the save unit is consistent, False if not, None when there is no checkpoint yet."""
    if not (run / "checkpoint.pt").exists():
        return None
    try:
        rec = safe_torch_load(run / "checkpoint.pt")["loop"]["replay"]
    except CheckpointError:
        return False
    path = run / rec["file"]
    # a replay file of an uncommitted save may lie beside it: the next start removes it
    return path.is_file() and sha256_file(path) == rec["sha256"]


def _params(run: Path) -> dict[str, torch.Tensor]:
    state = safe_torch_load(run / "checkpoint.pt")
    return {f"{m}.{k}": v for m, sd in state["modules"].items() for k, v in sd.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=3000, help="decisions of the run (--max_timesteps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = p.parse_args()
    rng = random.Random(args.seed)
    log = Path(tempfile.mkdtemp(prefix="vmamba-faults-"))
    print(f"machine: {cpu_model()}, torch {torch.__version__}; run folders in {log}")
    rc, whole = _attempt(_argv(args, log, "ref"), log / "ref", None)
    assert rc == 0, f"the uninterrupted run failed (exit {rc})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import vmamba_rl.training, vmamba_rl.cli"], check=True)
    startup = time.perf_counter() - t0
    work = max(whole - startup, 1.0)
    print(f"uninterrupted run: {whole:.1f} s (start-up {startup:.1f} s)")
    run, argv = log / "killed", _argv(args, log, "killed")
    killed = finished = failed = inconsistent = 0
    for i in range(args.kills):
        # start-up plus a random share of the work, so that the kills spread over the whole run
        delay = startup + rng.uniform(0.0, 2.0 * work / args.kills)
        rc, dt = _attempt(argv, run, delay)
        killed += rc == -signal.SIGKILL
        finished += rc == 0
        failed += rc not in (0, -signal.SIGKILL)  # a resume that broke by itself
        ok = _unit_ok(run)
        inconsistent += ok is False
        step = safe_torch_load(run / "checkpoint.pt")["loop"]["step"] if ok else "-"
        print(f"attempt {i + 1:>2}: killed after {delay:5.1f} s -> exit {rc:>3}, checkpoint step {step}")
    resumes = 0
    while True:  # finish the run
        rc, _ = _attempt(argv, run, None)
        resumes += 1
        if rc == 0:
            break
        assert resumes < 5, f"resuming fails (exit {rc})"
    a, b = _params(log / "ref"), _params(run)
    exact = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(
        f"\nkills {killed} of {args.kills} attempts ({finished} finished before the kill, {failed} failed by "
        f"themselves), inconsistent save units {inconsistent}, final resume {'ok' if rc == 0 else 'failed'}, "
        f"bit-exact: {'yes' if exact else 'no'}"
    )


if __name__ == "__main__":
    main()
