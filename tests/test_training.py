"""The training loop and CLI end to end: run folder, logs, checkpoints, exact resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from vmamba_rl.agents.base import NonFiniteError
from vmamba_rl.checkpoint import safe_torch_load
from vmamba_rl.cli import main
from vmamba_rl.config import ConfigError
from vmamba_rl.training import BEST, CHECKPOINT, Trainer


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{k}": v.clone()
        for m, mod in trainer.agent.modules().items()
        for k, v in mod.state_dict().items()
    }


@pytest.mark.parametrize("augment_shift, actor_candidates", [(0, 0), (3, 4)])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, augment_shift, actor_candidates):
    kw = dict(
        max_timesteps=100,
        learning_starts=30,
        updates_per_step=0.25,
        seed=7,
        scan_backend="chunked",
        env_kwargs={"max_steps": 30},
        augment_shift=augment_shift,  # its random offsets resume where they stopped
        actor_candidates=actor_candidates,  # so do the actor update's candidate draws
    )
    full = Trainer(tiny_config(tmp_path / "a", run_name="full", **kw), quiet=True)
    full.run()
    ref = _params(full)

    part = Trainer(tiny_config(tmp_path / "b", run_name="part", **kw), quiet=True)
    assert part.run(stop_at=50) is None  # stops at the first episode end after step 50
    stopped_at = part.step
    assert 50 <= stopped_at < 100
    resumed = Trainer(
        tiny_config(tmp_path / "b", run_name="part", **kw), run_dir=part.run_dir, resume=True, quiet=True
    )
    assert resumed.step == stopped_at
    resumed.run()
    assert resumed.step == 100
    got = _params(resumed)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_periodic_evaluations_leave_training_unchanged(tmp_path):
    # Runs that differ only in their evaluations must train the same learner: otherwise changing
    # --eval_episodes would change the result it is meant to measure.
    kw = dict(
        max_timesteps=100, learning_starts=30, seed=3, level="easy", explore_candidates=4,
        env_kwargs={"max_steps": 30},
    )  # fmt: skip
    runs = []
    for name, interval, episodes in (("none", 0, 0), ("often", 40, 2)):
        trainer = Trainer(
            tiny_config(tmp_path, run_name=name, eval_interval=interval, eval_episodes=episodes, **kw),
            quiet=True,
        )
        trainer.run()
        with open(trainer.run_dir / "episodes.csv") as f:
            episodes = [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]
        runs.append((_params(trainer), episodes, trainer.run_dir))
    (ref, ref_episodes, _), (got, got_episodes, evaluated) = runs
    with open(evaluated / "eval.csv") as f:
        assert {40, 80} <= {int(row["step"]) for row in csv.DictReader(f)}  # evaluated mid-run
    assert got_episodes == ref_episodes and len(ref_episodes) > 3
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_cli_train_then_eval_end_to_end(tmp_path, capsys):
    argv = [
        "train",
        "--preset",
        "cpu",
        "--level",
        "empty",
        "--max_timesteps",
        "90",
        "--learning_starts",
        "30",
        "--batch_size",
        "8",
        "--seq_len",
        "2",
        "--vmamba_hidden_dim",
        "8",
        "--feature_dim",
        "16",
        "--state_feature_dim",
        "8",
        "--hidden_dim",
        "16",
        "--eval_interval",
        "45",
        "--eval_episodes",
        "2",
        "--save_interval",
        "40",
        "--log_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--no-progress",
        "--scan_backend",
        "chunked",
        "--updates_per_step",
        "0.5",
        "--env_kwargs",
        '{"max_steps": 30}',
        "--final_eval_episodes",
        "3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final evaluation after 90 steps (3 episodes)" in out and "success_rate" in out
    run = tmp_path / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["max_timesteps"] == 90 and cfg["vmamba"]["vmamba_hidden_dim"] == 8
    episodes = list(csv.DictReader(open(run / "episodes.csv")))
    assert episodes and all(int(e["length"]) >= 1 for e in episodes)
    assert sum(int(e["length"]) for e in episodes) <= 90
    evals = list(csv.DictReader(open(run / "eval.csv")))
    assert len(evals) >= 2 and all(0.0 <= float(e["success_rate"]) <= 1.0 for e in evals)
    # the final evaluation is its own: 3 fresh episodes in final_eval.json, not a row of eval.csv
    final = json.loads((run / "final_eval.json").read_text())
    assert final["episodes"] == 3 and final["step"] == 90 and int(evals[-1]["episodes"]) == 2
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    updates = list(csv.DictReader(open(run / "updates.csv")))
    assert all(float(u["critic_loss"]) >= 0 for u in updates)
    state = safe_torch_load(run / CHECKPOINT)
    assert state["loop"]["step"] == 90 and state["algorithm"] == "vmamba_td3"
    assert (run / state["loop"]["replay"]["file"]).is_file() and len(list(run.glob("replay-*.npz"))) == 1

    assert main(["eval", "--checkpoint", str(run), "--episodes", "2", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["episodes"] == 2 and 0.0 <= res["success_rate"] <= 1.0
    assert (tmp_path / "ev" / "eval_episodes.csv").is_file()
    best = safe_torch_load(run / BEST)  # the best of the evaluations at 45 and 90 steps, evaluable as well
    assert 45 <= best["eval"]["step"] <= 90
    assert (
        main(["eval", "--checkpoint", str(run / BEST), "--episodes", "1", "--out", str(tmp_path / "eb")]) == 0
    )

    # the same --run_name again without --resume must not mix a new run into this one's logs
    before = (run / "episodes.csv").read_text()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"run folder {run} already holds a run" in err and f"--resume {run}" in err
    assert (run / "episodes.csv").read_text() == before


def test_eval_rejects_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "corrupt or not a vmamba-rl checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(tmp_path / "nothing")])
    assert exc.value.code == 2
    assert "no config.json" in capsys.readouterr().err


def test_unknown_environment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot make environment 'NoSuchEnv-v0'.*DroneNav-v0"):
        Trainer(tiny_config(tmp_path, env_name="NoSuchEnv-v0"), quiet=True)


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(
        tmp_path,
        run_name="nan",
        max_timesteps=400,
        learning_starts=20,
        save_interval=25,
        updates_per_step=0.5,
        scan_backend="chunked",
    )
    tr = Trainer(cfg, quiet=True)
    real_update = tr.agent.update
    calls = {"n": 0}

    def poisoned(b):
        calls["n"] += 1
        if calls["n"] == 25:
            b["reward"] = b["reward"] * float("nan")
        return real_update(b)

    monkeypatch.setattr(tr.agent, "update", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite critic_loss"):
        tr.run()
    ck = safe_torch_load(Path(tr.run_dir) / CHECKPOINT)
    assert 0 < ck["loop"]["step"] < 400
    assert all(torch.isfinite(v).all() for v in ck["modules"]["critic"].values())


def test_curriculum_moves_to_the_task_after_a_successful_stage_and_resumes_there(tmp_path):
    """Stage 0 makes every episode a success (a 100 m goal radius): after ``curriculum_window`` of them
    training moves to the task itself, whose episodes take many steps; evaluation runs the task all along,
    and a resumed run continues in the stage it had reached."""
    kw = dict(
        max_timesteps=60,
        learning_starts=1000,  # random actions only: the test is about the loop
        curriculum=[{"success_radius": 100.0}],
        curriculum_window=5,
        curriculum_threshold=0.8,
        env_kwargs={"max_steps": 20},
        eval_episodes=2,
        eval_interval=0,
    )
    tr = Trainer(tiny_config(tmp_path, run_name="cur", **kw), quiet=True)
    assert tr.collector.env(0).unwrapped.task.success_radius == 100.0
    assert tr.eval_env.unwrapped.task.success_radius == 2.0  # the task's own value
    final = tr.run()
    episodes = list(csv.DictReader(open(tr.run_dir / "episodes.csv")))
    first = episodes[:5]
    assert all(e["stage"] == "0" and e["success"] == "1" and e["length"] == "1" for e in first)
    rest = episodes[5:]
    assert rest and all(e["stage"] == "1" for e in rest)
    assert all(int(e["length"]) > 1 for e in rest)  # the task: a 2 m radius, goals 2 m or more away
    assert final is not None and final["success_rate"] == 0.0  # evaluated on the task, random policy
    ck = safe_torch_load(tr.run_dir / CHECKPOINT)
    assert ck["loop"]["callbacks"]["curriculum"]["stage"] == 1

    resumed = Trainer(
        tiny_config(tmp_path, run_name="cur", **{**kw, "max_timesteps": 80}),
        run_dir=tr.run_dir,
        resume=True,
        quiet=True,
    )
    assert resumed.curriculum.stage == 1 and resumed.collector.env(0).unwrapped.task.success_radius == 2.0


def test_resumed_run_appends_in_its_csv_files_own_columns(tmp_path):
    """A run folder written by a version with fewer episode columns stays a well-formed CSV on resume."""
    from vmamba_rl.callbacks import CsvLog

    path = tmp_path / "episodes.csv"
    path.write_text("step,episode,return\n10,1,-2.5\n")
    log = CsvLog(path, ["step", "episode", "return", "stage", "time"])
    log.write({"step": 20, "episode": 2, "return": 1.5, "stage": 1, "time": 0.0})
    log.close()
    rows = list(csv.DictReader(open(path)))
    assert rows == [
        {"step": "10", "episode": "1", "return": "-2.5"},
        {"step": "20", "episode": "2", "return": "1.5"},
    ]


def test_best_checkpoint_keeps_the_best_evaluation_and_survives_resume(tmp_path):
    """best.pt holds the agent of the highest success rate so far (ties broken by mean return); a worse
    evaluation leaves it alone, and a resumed run still knows the score to beat."""
    kw = dict(max_timesteps=40, learning_starts=1000, eval_interval=0, eval_episodes=0)
    tr = Trainer(tiny_config(tmp_path, run_name="b", **kw), quiet=True)
    first = _params(tr)

    def row(success: float, ret: float) -> dict:
        return {"success_rate": success, "mean_return": ret, "step": tr.step, "episodes": 10}

    tr.step = 10
    tr.evaluation.keep_best(tr, row(0.5, 1.0))
    with torch.no_grad():  # a different agent from here on
        for p in tr.agent.modules()["actor"].parameters():
            p.add_(1.0)
    tr.step = 20
    tr.evaluation.keep_best(tr, row(0.4, 9.0))  # lower success: kept out despite the higher return
    saved = safe_torch_load(tr.run_dir / BEST)
    assert saved["eval"]["step"] == 10 and saved["eval"]["success_rate"] == 0.5
    for m, mod in saved["modules"].items():
        for k, v in mod.items():
            assert torch.equal(v, first[f"{m}.{k}"]), (m, k)
    tr.step = 30
    tr.evaluation.keep_best(tr, row(0.5, 2.0))  # same success, higher return: the new best
    assert safe_torch_load(tr.run_dir / BEST)["eval"]["step"] == 30
    assert tr.evaluation.best == (0.5, 2.0, 30)
    tr.save_checkpoint()
    tr.close()
    resumed = Trainer(tiny_config(tmp_path, run_name="b", **kw), run_dir=tr.run_dir, resume=True, quiet=True)
    assert resumed.evaluation.best == (0.5, 2.0, 30)
    resumed.close()


def test_trap_check_restarts_a_learner_whose_episodes_stay_short_and_only_then(tmp_path):
    """Stage 0 ends every episode after one decision, unsuccessful, so at the check the last episodes
    averaged 1 decision: with --trap_min_length 2 the learner restarts once (a new agent, an empty replay
    refilled from the restart on, random actions for learning_starts decisions, the curriculum at stage
    0 again); with --trap_min_length 1 (not below it) nothing happens."""
    kw = dict(
        max_timesteps=90,
        learning_starts=20,
        curriculum=[{"max_steps": 1}],  # every episode a one-decision timeout
        curriculum_window=1000,  # stay in stage 0
        trap_check=40,
        trap_restarts=1,
        eval_interval=0,
        final_eval_episodes=0,
    )
    tr = Trainer(tiny_config(tmp_path, run_name="trap", trap_min_length=2.0, **kw), quiet=True)
    first_agent = tr.agent
    tr.run()
    trap = next(c for c in tr.callbacks if c.name == "trap_restart")
    assert trap.restarts == 1 and tr.agent is not first_agent
    restart_step = trap.attempt_start
    assert 40 <= restart_step < 90 and tr.learn_from == restart_step + 20
    assert sum(tr.agent.replay_buffer.counters()["num_transitions"]) == 90 - restart_step
    ups = tr.cfg.updates_per_step
    assert tr.agent.total_it == int((90 - restart_step - 20) * ups)  # updates resume after the new warm-up
    assert tr.agent.cfg.seed == tr.cfg.seed + 1000
    # a second check in the new attempt would come at restart_step + 40 > 90: at most one restart anyway
    episodes = list(csv.DictReader(open(tr.run_dir / "episodes.csv")))
    assert len(episodes) == 90 and all(e["length"] == "1" for e in episodes)  # the logs go on

    calm = Trainer(tiny_config(tmp_path, run_name="calm", trap_min_length=1.0, **kw), quiet=True)
    agent = calm.agent
    calm.run()
    assert next(c for c in calm.callbacks if c.name == "trap_restart").restarts == 0 and calm.agent is agent
    assert calm.agent.total_it == int((90 - 20) * ups)


def test_trap_max_success_spares_a_learner_whose_short_episodes_succeed(tmp_path):
    """Stage 0 makes every episode a one-decision success (a goal within reach): as short as the trap.
    With --trap_max_success 0.1 the check leaves it; with the default 1.0 (the lengths alone) it
    restarts."""
    kw = dict(
        max_timesteps=60,
        learning_starts=20,
        curriculum=[{"success_radius": 100.0}],
        curriculum_window=1000,
        trap_check=40,
        trap_min_length=2.0,
        trap_restarts=1,
        eval_interval=0,
        final_eval_episodes=0,
    )
    for name, max_success, restarts in (("spare", 0.1, 0), ("default", None, 1)):
        extra = {} if max_success is None else {"trap_max_success": max_success}
        tr = Trainer(tiny_config(tmp_path, run_name=name, **kw, **extra), quiet=True)
        tr.run()
        episodes = list(csv.DictReader(open(tr.run_dir / "episodes.csv")))
        assert all(e["length"] == "1" and e["success"] == "1" for e in episodes)
        assert next(c for c in tr.callbacks if c.name == "trap_restart").restarts == restarts, name
        tr.close()
    with pytest.raises(ConfigError, match=r"--trap_max_success must be a success rate in \[0, 1\], got 1.5"):
        tiny_config(trap_max_success=1.5)


def test_trap_candidates_apply_to_the_attempts_after_a_restart_and_survive_resume(tmp_path):
    """--trap_candidates 0: the first attempt explores with 4 critic-ranked candidates, the attempt after
    the restart with none; a run resumed after the restart rebuilds that attempt's learner (its seed and
    its candidates), not the first attempt's."""
    kw = dict(
        max_timesteps=90,
        learning_starts=20,
        curriculum=[{"max_steps": 1}],  # one-decision episodes that fail: the check fires at 40
        curriculum_window=1000,
        trap_check=40,
        trap_min_length=2.0,
        trap_restarts=1,
        explore_candidates=4,
        trap_candidates=0,
        eval_interval=0,
        final_eval_episodes=0,
    )
    tr = Trainer(tiny_config(tmp_path, run_name="tc", **kw), quiet=True)
    assert tr.agent.explore_candidates == 4
    assert tr.run(stop_at=60) is None
    assert tr.agent.explore_candidates == 0 and tr.agent.cfg.seed == tr.cfg.seed + 1000
    tr.close()
    resumed = Trainer(tiny_config(tmp_path, run_name="tc", **kw), run_dir=tr.run_dir, resume=True, quiet=True)
    assert resumed.agent.explore_candidates == 0 and resumed.agent.cfg.seed == tr.cfg.seed + 1000
    resumed.run()
    assert resumed.step >= 90 and resumed.agent.explore_candidates == 0
    resumed.close()


def test_trap_candidates_must_be_minus_one_or_a_count():
    with pytest.raises(ConfigError, match="--trap_candidates must be -1 .keep --explore_candidates. or >= 0"):
        tiny_config(trap_candidates=-2)


def test_trap_check_must_come_after_learning_starts():
    with pytest.raises(ConfigError, match="--trap_check must be 0 .off. or more than --learning_starts .40."):
        tiny_config(trap_check=30)
