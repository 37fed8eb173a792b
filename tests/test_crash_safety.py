"""Crash safety: a run killed anywhere (inside a save too) resumes to the uninterrupted result, an
inconsistent checkpoint / replay pair is refused, and a run folder never gets stuck."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from vmamba_rl.checkpoint import FAULT_ENV, CheckpointError, safe_torch_load
from vmamba_rl.training import CHECKPOINT, Trainer

TESTS = Path(__file__).parent
KW = dict(
    max_timesteps=160, learning_starts=30, updates_per_step=0.25, seed=3, scan_backend="chunked",
    env_kwargs={"max_steps": 14}, level="easy", save_interval=20, num_envs=2, torch_threads=1,
    eval_interval=80, eval_episodes=2,
)  # fmt: skip

# Runs the job to the end: resumes when the folder holds a checkpoint, starts (over) otherwise.
DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from vmamba_rl.training import Trainer
from pathlib import Path
run = Path({run!r})
cfg = tiny_config({log!r}, run_name=run.name, **{kw!r})
Trainer(cfg, run_dir=run, resume=(run / "checkpoint.pt").exists(), quiet=True).run()
"""


def _drive(run: Path, fault: str | None = None, kill_mid_run: bool = False) -> int:
    """One attempt in a subprocess; returns its exit code (-9 when killed).

    ``kill_mid_run``: SIGKILL 0.2 s after the attempt's first new checkpoint, i.e. while it collects and
    updates between saves (timed from progress, not from the clock, so a slow machine hits it too)."""
    code = DRIVER.format(tests=str(TESTS), run=str(run), log=str(run.parent), kw=KW)
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    start = _step(run)
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    if kill_mid_run:
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline:
            if _step(run) > start:
                time.sleep(0.2)
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    return p.wait(timeout=600)


def _step(run: Path) -> int:
    """The step of the run's committed checkpoint (-1 without one)."""
    try:
        return int(safe_torch_load(run / CHECKPOINT)["loop"]["step"])
    except CheckpointError:
        return -1


def _params(path: Path) -> dict[str, torch.Tensor]:
    state = safe_torch_load(path)
    return {f"{m}.{k}": v for m, sd in state["modules"].items() for k, v in sd.items()}


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(open(path))]


@pytest.mark.slow
def test_killed_runs_resume_bit_exactly_with_one_copy_of_each_step(tmp_path):
    ref = tmp_path / "ref"
    assert _drive(ref) == 0
    run = tmp_path / "killed"
    # inside the 2nd save (replay written, not committed), right after the 3rd commit, and between two
    # saves of an attempt that resumed
    attempts = [_drive(run, fault="replay_written:2"), _drive(run, fault="committed:3")]
    attempts.append(_drive(run, kill_mid_run=True))
    assert attempts == [-signal.SIGKILL] * 3
    assert _drive(run) == 0
    a, b = _params(ref / CHECKPOINT), _params(run / CHECKPOINT)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for log in ("episodes.csv", "eval.csv", "updates.csv"):
        assert _rows(run / log) == _rows(ref / log), log  # no row twice, none missing
    state = safe_torch_load(run / CHECKPOINT)
    assert state["loop"]["step"] == 160
    replays = sorted(p.name for p in run.glob("replay-*.npz"))
    assert replays == [state["loop"]["replay"]["file"]]  # one replay file, the committed one
    with np.load(run / replays[0]) as z:
        assert int(z["num_transitions"].sum()) == 160  # each step stored once
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def _short_run(tmp_path, name: str) -> Trainer:
    tr = Trainer(tiny_config(tmp_path, run_name=name, **{**KW, "max_timesteps": 60}), quiet=True)
    tr.run()
    return tr


def test_a_replay_file_that_does_not_match_its_checkpoint_is_refused(tmp_path):
    tr = _short_run(tmp_path, "tamper")
    rec = safe_torch_load(tr.run_dir / CHECKPOINT)["loop"]["replay"]
    replay = tr.run_dir / rec["file"]
    with np.load(replay) as z:
        d = {k: z[k] for k in z.files}
    d["floor"] = d["floor"] + 3  # a tampered counter: the batches would change silently
    with open(replay, "wb") as f:
        np.savez(f, **d)
    cfg = tiny_config(tmp_path, run_name="tamper", **{**KW, "max_timesteps": 60})
    with pytest.raises(CheckpointError, match=f"saved with replay file {rec['file']}, but that file changed"):
        Trainer(cfg, run_dir=tr.run_dir, resume=True, quiet=True)
    replay.unlink()
    with pytest.raises(CheckpointError, match=f"replay file {rec['file']}, which is missing"):
        Trainer(cfg, run_dir=tr.run_dir, resume=True, quiet=True)


def test_stale_temporaries_and_unnamed_replay_files_are_removed_at_start(tmp_path):
    tr = _short_run(tmp_path, "stale")
    d = tr.run_dir
    for name in ("checkpoint.pt.abc123.tmp", ".replay-xyz.tmp", "replay-000000999.npz", ".config.json.tmp"):
        (d / name).write_bytes(b"partial")
    kept = safe_torch_load(d / CHECKPOINT)["loop"]["replay"]["file"]
    Trainer(tiny_config(tmp_path, run_name="stale", **KW), run_dir=d, resume=True, quiet=True).close()
    assert sorted(p.name for p in d.iterdir() if p.suffix in (".tmp", ".npz")) == [kept]


def test_a_run_that_died_before_its_first_checkpoint_starts_over_in_place(tmp_path, capsys):
    from vmamba_rl.cli import main

    run = tmp_path / "early"
    run.mkdir()
    (run / "episodes.csv").write_text("step,episode\n5,1\n")
    (run / "config.json").write_text(tiny_config(tmp_path, run_name="early", **KW).to_json())
    argv = ["train", "--resume", str(run), "--max_timesteps", "40", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {run} yet: starting the run over from step 0" in out
    assert "starting it over, removing episodes.csv" in out
    assert safe_torch_load(run / CHECKPOINT)["loop"]["step"] == 40
    # the same folder as a new run, after a crash before the first save: allowed, said
    run2 = tmp_path / "early2"
    run2.mkdir()
    (run2 / "episodes.csv").write_text("step,episode\n5,1\n")
    tr = Trainer(tiny_config(tmp_path, run_name="early2", **{**KW, "max_timesteps": 30}), quiet=True)
    tr.run()
    assert _rows(run2 / "episodes.csv")[0]["step"] != "5"


def test_resume_reads_the_checkpoint_config_when_config_json_is_corrupt(tmp_path, capsys):
    from vmamba_rl.cli import main

    tr = _short_run(tmp_path, "cfg")
    (tr.run_dir / "config.json").write_text("{not json")
    assert main(["train", "--resume", str(tr.run_dir), "--max_timesteps", "80", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "config.json is unreadable" in out.err and "the checkpoint's configuration" in out.err
    assert json.loads((tr.run_dir / "config.json").read_text())["train"]["max_timesteps"] == 80


def test_resume_validates_its_overrides_and_names_the_flags_it_ignores(tmp_path, capsys):
    from vmamba_rl.cli import main

    tr = _short_run(tmp_path, "flags")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(tr.run_dir), "--save_interval", "-5"])
    assert exc.value.code == 2
    msg = "--eval_interval, --eval_episodes, --final_eval_episodes and --save_interval must be >= 0"
    assert msg in capsys.readouterr().err
    started = time.time()
    assert main(["train", "--resume", str(tr.run_dir), "--critic_lr", "1e9", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--resume keeps the run's configuration; ignoring --critic_lr" in err
    assert safe_torch_load(tr.run_dir / CHECKPOINT)["config"]["td3"]["critic_lr"] == 1e-3
    assert time.time() - started < 120


# ------------------------------------------------------------------------------ user errors: exit 2

TINY_ARGS = [
    "--vmamba_patch_size", "8", "--vmamba_hidden_dim", "8", "--vmamba_num_vss_blocks", "1", "1", "1", "1",
    "--feature_dim", "16", "--state_feature_dim", "8", "--hidden_dim", "16", "--max_timesteps", "5",
    "--no-progress", "--eval_episodes", "0",
]  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env_name", "NoSuchEnv-v0"], "cannot make environment 'NoSuchEnv-v0'"),
        (["--env_kwargs", '{"bogus": 1}'], "unknown DroneNavEnv option(s) ['bogus']"),
        (["--curriculum", '{"bogus": 1}'], "unknown DroneNavEnv option(s) ['bogus']"),
        (["--level", "bogus"], "level must be one of empty, easy, medium, hard, got 'bogus'"),
        (["--env_kwargs", '{"image_height": 8, "image_width": 8}'], "image size 8x8 does not fit"),
        (["--modalities", "nope"], "--modalities ['nope'] not in DroneNav-v0's observations"),
        (["--env_kwargs", '{"collision_reward": 1e300}'], "collision_reward must be a finite number"),
        (["--log_dir", "/proc/no/such/dir"], "/proc/no/such/dir"),
    ],
)
def test_bad_training_inputs_are_one_line_errors_with_exit_2(tmp_path, capsys, flags, message):
    from vmamba_rl.cli import main

    argv = ["train", *TINY_ARGS, "--log_dir", str(tmp_path), "--run_name", "bad", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    from vmamba_rl.cli import main

    assert main(["train", *TINY_ARGS, "--log_dir", str(tmp_path), "--device", "cuda"]) == 2
    assert "--device cuda: this torch build has no usable CUDA GPU" in capsys.readouterr().err


def test_info_and_eval_reject_impossible_counts(capsys):
    from vmamba_rl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["info", "--image_size", "0", "0"])
    assert (
        exc.value.code == 2
        and "--image_size must be two positive sizes H W, got 0 0" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", "x", "--episodes", "0"])
    assert exc.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


def test_json_outputs_are_strict():
    from vmamba_rl.evaluation import strict_json

    text = strict_json({"success_rate": 0.5, "mean_path_ratio": float("nan"), "by": [float("inf")]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) == {
        "success_rate": 0.5, "mean_path_ratio": None, "by": [None],
    }  # fmt: skip


def test_amp_on_a_cpu_warns_that_it_is_off():
    from vmamba_rl.agents import make_agent
    from vmamba_rl.envs.make import make_env

    cfg = tiny_config(amp="fp16", device="cpu", scan_backend="chunked")
    with pytest.warns(UserWarning, match="--amp fp16 applies on CUDA only; on cpu training runs in fp32"):
        make_agent(make_env(cfg), None, cfg)


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """The third save fails the way torch reports a full disk; the command says what and where, exits 2,
    and the checkpoint of the second save still resumes."""
    import vmamba_rl.checkpoint as ck
    from vmamba_rl.cli import main

    real, calls = ck.torch.save, {"n": 0}

    def failing(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file"
            )
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", failing)
    argv = [
        "train", *TINY_ARGS, "--max_timesteps", "120", "--save_interval", "20", "--log_dir", str(tmp_path),
        "--run_name", "full", "--env_kwargs", '{"max_steps": 10}', "--learning_starts", "30",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    run = tmp_path / "full"
    assert f"cannot write {run / CHECKPOINT}" in err and "MB free there" in err
    assert f"the last good checkpoint {run / CHECKPOINT} is kept" in err and "Traceback" not in err
    monkeypatch.setattr(ck.torch, "save", real)
    step = safe_torch_load(run / CHECKPOINT)["loop"]["step"]
    assert 0 < step < 120 and not list(run.glob("*.tmp"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert safe_torch_load(run / CHECKPOINT)["loop"]["step"] >= 120


# ------------------------------------------------------------------------------------- environments


def test_environments_pass_check_env_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import gymnasium as gym, vmamba_rl\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "for name in ('DroneNav-v0', 'Parking-v0'):\n"
        "    env = gym.make(name).unwrapped\n"
        "    assert 'human' not in env.metadata['render_modes'] or name != 'DroneNav-v0'\n"
        "    check_env(env)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_parking_refuses_steps_after_the_end_and_bad_options():
    import gymnasium as gym

    env = gym.make("Parking-v0", level="easy", max_steps=1).unwrapped
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
    assert terminated or truncated
    with pytest.raises(RuntimeError, match="call reset\\(\\) before step\\(\\) \\(the episode is over"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1; got 0"):
        gym.make("Parking-v0", max_steps=0)
    for bad in (float("nan"), 1e300):
        with pytest.raises(ValueError, match="collision_penalty must be a finite number in \\[0, 1e6\\]"):
            gym.make("Parking-v0", collision_penalty=bad)
    with pytest.raises(ValueError, match="collision_reward must be a finite number within"):
        gym.make("DroneNav-v0", collision_reward=float("nan"))
