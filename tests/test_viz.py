"""Visualisation (issue 7): figures, arrays, video, learning curves, CLI and the missing-extra message."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SAC

pytest.importorskip("matplotlib")
pytest.importorskip("imageio")
from PIL import Image  # noqa: E402  (Pillow comes with matplotlib and imageio)

from vmamba_rl.config import make_config  # noqa: E402
from vmamba_rl.viz import plot_runs, visualize  # noqa: E402

FRAME = (320, 240)  # video frame size (width, height) asked for in these tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: extra threads only contend on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A VMamba-TD3 run folder with a checkpoint from a few real training steps (tiny sizes)."""
    from vmamba_rl.training import CHECKPOINT, Trainer

    tmp = tmp_path_factory.mktemp("runs")
    cfg = make_config(
        "cpu",
        max_timesteps=40,
        learning_starts=20,
        batch_size=4,
        eval_episodes=0,  # the final evaluation can fly 200 steps: too slow here, and not under test
        final_eval_episodes=0,
        eval_interval=0,
        save_interval=0,
        log_dir=str(tmp),
        run_name="tiny",
        progress=False,
        save_buffer=False,
        vmamba_hidden_dim=8,
        feature_dim=16,
        state_feature_dim=8,
        hidden_dim=16,
        scan_backend="chunked",
        device="cpu",
    )
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    assert (trainer.run_dir / CHECKPOINT).is_file()
    return trainer.run_dir


@pytest.fixture(scope="module")
def viz_out(run_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("viz")
    files = visualize(str(run_dir), str(out), episodes=2, max_steps=8, size=FRAME, fps=5)
    return out, files


def _pixels(path: Path, fmt: str) -> tuple[Image.Image, np.ndarray]:
    img = Image.open(path)
    assert img.format == fmt, f"{path.name} is {img.format}, expected {fmt}"
    return img, np.asarray(img.convert("RGB"), dtype=np.float64)


def _not_blank(px: np.ndarray, name: str) -> None:
    # a blank (single-colour) image has zero variance; a drawn figure or frame has plenty
    assert px.std() > 10.0, f"{name} looks blank (pixel std {px.std():.2f})"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 8, f"{name} has almost no colours"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------- visualize


def test_visualize_writes_every_file(viz_out):
    out, files = viz_out
    for key in ("attention_png", "attention_heads_png", "features_png", "frame_png", "gif", "episodes_csv"):
        assert key in files and files[key].is_file() and files[key].parent == out, key
    for key in ("attention_png", "attention_heads_png", "features_png"):
        img, px = _pixels(files[key], "PNG")
        assert img.width >= 300 and img.height >= 200, (key, img.size)
        _not_blank(px, key)
    img, px = _pixels(files["frame_png"], "PNG")
    assert img.size == FRAME
    _not_blank(px, "rollout_frame.png")


def test_gif_frames_have_the_stated_size_and_content(viz_out):
    _, files = viz_out
    steps = len(_rows(files["episodes_csv"]))
    gif = Image.open(files["gif"])
    assert gif.format == "GIF"
    assert gif.size == FRAME
    # one frame per decision plus the reset frame of each of the 2 episodes
    assert gif.n_frames == steps + 2
    for i in (0, gif.n_frames // 2, gif.n_frames - 1):
        gif.seek(i)
        _not_blank(np.asarray(gif.convert("RGB"), dtype=np.float64), f"gif frame {i}")


def test_attention_array_rows_are_distributions_one_per_decision(viz_out, run_dir):
    out, files = viz_out
    att = np.load(files["attention_npy"])
    rows = _rows(files["episodes_csv"])
    K = json.loads((run_dir / "config.json").read_text())["train"]["seq_len"]
    assert att.shape == (len(rows), K)
    np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-5)
    assert (att >= 0).all()
    z = np.load(files["attention_npz"])
    np.testing.assert_allclose(z["actor"], att)
    np.testing.assert_allclose(z["critic"].sum(axis=1), 1.0, atol=1e-5)
    heads = z["actor_heads"]
    assert heads.shape[0] == len(rows) and heads.shape[2] == K
    np.testing.assert_allclose(heads.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(heads.mean(axis=1), att, atol=1e-5)  # the heatmap is the head average
    assert list(z["episode"]) == [int(r["episode"]) for r in rows]


def test_episodes_csv_has_actions_rewards_distances(viz_out):
    out, files = viz_out
    rows = _rows(files["episodes_csv"])
    assert {"episode", "t", "action_0", "action_1", "action_2", "reward", "distance", "done"} <= set(rows[0])
    assert {r["episode"] for r in rows} == {"0", "1"}
    assert all(int(r["t"]) < 8 for r in rows)  # max_steps=8
    assert all(np.isfinite(float(r["distance"])) for r in rows)
    for ep in ("0", "1"):
        done = [int(r["done"]) for r in rows if r["episode"] == ep]
        assert done[-1] == 1 and sum(done) == 1
    summary = json.loads((out / "summary.json").read_text())
    returns = [sum(float(r["reward"]) for r in rows if r["episode"] == ep) for ep in ("0", "1")]
    np.testing.assert_allclose([e["return"] for e in summary["episodes"]], returns, rtol=1e-4, atol=1e-4)


def test_features_cover_every_decision(viz_out):
    _, files = viz_out
    f = np.load(files["features_npz"])
    n = len(_rows(files["episodes_csv"]))
    # the cpu preset's context is the sequence encoder's 16 features and the 10-entry base vector (base_skip)
    assert f["visual"].shape == (n, 16) and f["state"].shape == (n, 8) and f["context"].shape == (n, 16 + 10)


# ------------------------------------------------------------------------------------ HOPE SAC / Parking

SAC_TINY = dict(TINY_SAC, level="easy")


def _sac_checkpoint(tmp: Path, fusion: str) -> Path:
    """An (untrained) hope_sac Parking-v0 checkpoint: the rollout path is what is under test here."""
    from vmamba_rl.agents import make_agent
    from vmamba_rl.training import make_env

    cfg = make_config("hope", **SAC_TINY, fusion=fusion)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    env.close()
    path = tmp / "sac.pt"
    agent.save(str(path))
    return path


def test_parking_sac_attention_over_modalities(tmp_path):
    ckpt = _sac_checkpoint(tmp_path, "attention")
    files = visualize(str(ckpt), str(tmp_path / "v"), max_steps=4, size=FRAME)
    att = np.load(files["attention_npy"])
    z = np.load(files["attention_npz"])
    assert att.shape == (4, len(z["labels"])) and "img" in list(z["labels"])
    np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-5)
    assert list(z["critic_labels"])[-1] == "action"  # the critic also attends to the action token
    img, px = _pixels(files["frame_png"], "PNG")
    assert img.size == FRAME
    _not_blank(px, "parking frame")
    _not_blank(_pixels(files["attention_png"], "PNG")[1], "parking attention.png")


def test_parking_sac_without_attention_skips_the_heatmap_with_a_note(tmp_path):
    out = tmp_path / "v"
    files = visualize(str(_sac_checkpoint(tmp_path, "mlp")), str(out), max_steps=3, video=False)
    assert "attention_png" not in files and not (out / "attention.png").exists()
    notes = json.loads(files["summary_json"].read_text())["notes"]
    assert any("attention.png skipped" in n and "--fusion attention" in n for n in notes)
    assert len(_rows(files["episodes_csv"])) == 3 and files["features_png"].is_file()


def test_visualize_plays_another_level_with_the_exits_of_the_hand_off(tmp_path):
    ckpt = _sac_checkpoint(tmp_path, "mlp")
    success = {}
    for exits in (False, True):
        out = tmp_path / f"v{int(exits)}"
        files = visualize(
            str(ckpt), str(out), max_steps=20, video=False, seed=0, level="extreme", rs_hybrid=True,
            rs_exit_tree=exits,
        )  # fmt: skip
        success[exits] = any(r["success"] == "1" for r in _rows(files["episodes_csv"]))
    # extreme scene 0: no single Reeds-Shepp path parks it, the exits do (tests/test_parking_hybrid.py)
    assert success == {False: False, True: True}


# -------------------------------------------------------------------------------------------- curves

CONFIG_A = {"train": {"algorithm_name": "vmamba_td3", "env_name": "DroneNav-v0", "seed": 0, "run_name": "a0"}}


def _fake_run(root: Path, name: str, config: dict, eval_rows: list[tuple[int, float, float]]) -> Path:
    """A run folder whose eval.csv holds (step, success_rate, mean_return) plus decoy columns."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = ["step", "episodes", "success_rate", "collision_rate", "mean_return", "std_return", "time"]
        w.writerow(header)
        for step, succ, ret in eval_rows:
            # decoys: every other column holds values a wrong column choice would reveal
            w.writerow([step, 99, succ, 1.0 - succ, ret, -777.0, 1e9 + step])
    return run


@pytest.fixture
def fake_runs(tmp_path) -> list[Path]:
    b_cfg = {"train": {**CONFIG_A["train"], "algorithm_name": "td3", "seed": 3, "run_name": "b"}}
    seed1 = {"train": {**CONFIG_A["train"], "seed": 1, "run_name": "a1", "log_dir": "elsewhere"}}
    return [
        _fake_run(tmp_path, "a0", CONFIG_A, [(500, 0.0, -20.0), (1000, 0.5, 10.0), (1500, 1.0, 40.0)]),
        _fake_run(tmp_path, "a1", seed1, [(500, 0.2, -10.0), (1000, 0.3, 0.0), (1500, 0.6, 20.0)]),
        _fake_run(tmp_path, "b", b_cfg, [(400, 0.1, 5.0), (800, 0.4, 6.0)]),
    ]


def test_plot_groups_seeds_and_reads_the_right_columns(fake_runs, tmp_path):
    data = plot_runs([str(r) for r in fake_runs], str(tmp_path / "curves.png"))
    groups = data["groups"]
    assert len(groups) == 2
    (la, a), (lb, b) = sorted(groups.items(), key=lambda kv: -kv[1]["n_runs"])
    assert "vmamba_td3" in la and "td3" in lb
    assert a["n_runs"] == 2 and sorted(Path(r).name for r in a["runs"]) == ["a0", "a1"]
    np.testing.assert_array_equal(a["steps"], [500, 1000, 1500])
    np.testing.assert_allclose(a["success_rate_mean"], [0.1, 0.4, 0.8])
    np.testing.assert_allclose(a["success_rate_std"], [0.1, 0.1, 0.2])
    np.testing.assert_allclose(a["return_mean"], [-15.0, 5.0, 30.0])
    np.testing.assert_allclose(a["return_std"], [5.0, 5.0, 10.0])
    assert b["n_runs"] == 1
    np.testing.assert_array_equal(b["steps"], [400, 800])
    np.testing.assert_allclose(b["success_rate_mean"], [0.1, 0.4])
    np.testing.assert_allclose(b["return_mean"], [5.0, 6.0])
    np.testing.assert_allclose(b["return_std"], [0.0, 0.0])
    img, px = _pixels(data["figure"], "PNG")
    assert img.size == (1100, 400)
    _not_blank(px, "curves.png")


def test_plot_interpolates_seeds_evaluated_at_different_steps(tmp_path):
    cfg1 = {"train": {**CONFIG_A["train"], "seed": 1}}
    r0 = _fake_run(tmp_path, "s0", CONFIG_A, [(500, 0.0, 0.0), (1000, 1.0, 10.0)])
    r1 = _fake_run(tmp_path, "s1", cfg1, [(510, 0.0, 0.0), (1020, 1.0, 10.0)])
    (g,) = plot_runs([str(r0), str(r1)], str(tmp_path / "c.png"))["groups"].values()
    np.testing.assert_array_equal(g["steps"], [510, 1000])  # the steps both seeds cover
    np.testing.assert_allclose(g["success_rate_runs"][0], [0.02, 1.0])
    np.testing.assert_allclose(g["success_rate_runs"][1], [0.0, 490 / 510])


def test_plot_real_run_folder_without_eval_rows_uses_training_episodes(run_dir, tmp_path):
    # the tiny run never evaluated: its empty eval.csv falls back to the training episodes.csv
    data = plot_runs([str(run_dir)], str(tmp_path / "c.png"))
    (g,) = data["groups"].values()
    episodes = _rows(run_dir / "episodes.csv")
    assert g["sources"][0].startswith("episodes.csv") and len(g["steps"]) == len(episodes) >= 1
    np.testing.assert_array_equal(g["steps"], [float(r["step"]) for r in episodes])
    np.testing.assert_allclose(g["return_mean"][0], float(episodes[0]["return"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "eval.csv").write_text("step,success_rate,mean_return\n")
    with open(empty / "episodes.csv", "w") as f:
        f.write("step,episode,return,success\n10,1,-5,0\n30,2,15,1\n")
    (g,) = plot_runs([str(empty)], str(tmp_path / "d.png"))["groups"].values()
    assert g["sources"][0].startswith("episodes.csv")
    np.testing.assert_allclose(g["return_mean"], [-5.0, 5.0])  # trailing mean over episodes
    np.testing.assert_allclose(g["success_rate_mean"], [0.0, 0.5])


# ------------------------------------------------------------------------------- extra and CLI


def test_missing_matplotlib_names_the_viz_extra(monkeypatch, fake_runs, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"\[viz\]"):
        plot_runs([str(fake_runs[0])], str(tmp_path / "x.png"))


def test_missing_imageio_names_the_viz_extra_before_any_rollout(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[viz\]"'):
        visualize(str(tmp_path / "no-such-checkpoint.pt"), str(tmp_path / "o"))


def test_cli_plot_and_visualize(fake_runs, run_dir, tmp_path, capsys):
    from vmamba_rl.cli import main

    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, fake_runs), "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    assert "2 run(s)" in capsys.readouterr().out

    vdir = tmp_path / "viz"
    argv = ["visualize", "--checkpoint", str(run_dir), "--out", str(vdir), "--max_steps", "2"]
    assert main([*argv, "--fps", "4", "--size", "200", "160"]) == 0
    assert Image.open(vdir / "rollout.gif").size == (200, 160)
    assert np.load(vdir / "attention.npy").shape[0] == 2

    assert main(["visualize", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(vdir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_pca_projection_orders_components_by_variance():
    from vmamba_rl.viz.figures import pca_project

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1)) * np.array([[3.0, 0.0, 0.0]]) + rng.normal(size=(200, 3)) * 0.1
    y, ratio = pca_project(x, 2)
    assert y.shape == (200, 2) and ratio[0] > 0.95 and ratio[0] > ratio[1]


def test_mp4_is_written_with_even_sides_when_ffmpeg_is_available(monkeypatch, tmp_path):
    from vmamba_rl.viz import video

    calls: dict[str, list] = {"gif": [], "mp4": []}

    class FakeWriter:
        def append_data(self, frame):
            calls["mp4"].append(frame.shape)

        def close(self):
            calls["closed"] = True

    class FakeIIO:
        @staticmethod
        def mimsave(path, frames, **kw):
            calls["gif"].append((Path(path).name, len(frames), kw))

        @staticmethod
        def get_writer(path, **kw):
            calls["writer"] = (Path(path).name, kw)
            return FakeWriter()

    monkeypatch.setattr(video, "require_imageio", lambda: FakeIIO)
    monkeypatch.setattr(video, "mp4_available", lambda: True)
    frames = [np.full((31, 45, 3), i * 40, np.uint8) for i in range(3)]
    files = video.write_video(frames, tmp_path, fps=4.0)
    assert set(files) == {"gif", "mp4"} and files["mp4"].name == "rollout.mp4"
    assert calls["gif"] == [("rollout.gif", 3, {"duration": 250.0, "loop": 0})]
    assert calls["writer"][1]["fps"] == 4.0 and calls["closed"]
    assert calls["mp4"] == [(32, 46, 3)] * 3  # padded to even sides for yuv420p
