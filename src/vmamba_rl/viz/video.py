"""Rollout videos: the environment's frame (DroneNav: top-down map with trajectory and goal beside the
depth image; Parking: car, slot, lidar rays, action mask) above a live bar chart of the attention.

One Agg figure is built once and its artists are updated per frame (redrawing a figure from scratch
costs several times more). The GIF is written with imageio; an MP4 as well when imageio's ffmpeg
plugin (``imageio-ffmpeg``) is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from vmamba_rl.viz.figures import VIZ_HINT, new_figure
from vmamba_rl.viz.rollout import RolloutTrace


def require_imageio() -> Any:
    """``imageio.v2``; ImportError naming the [viz] extra when it is missing."""
    try:
        import imageio.v2 as iio
    except ImportError as e:
        raise ImportError(VIZ_HINT) from e
    return iio


def mp4_available() -> bool:
    """True when imageio can encode MP4 (its ffmpeg plugin brings its own ffmpeg binary)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


class FrameComposer:
    """Env frame + attention bars -> one RGB frame of exactly ``size`` = (width, height) pixels."""

    def __init__(
        self,
        size: tuple[int, int],
        labels: list[str],
        critic_labels: list[str] | None = None,
        with_attention: bool = True,
        dpi: int = 100,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.dpi = dpi
        w, h = self.size
        self.fig = new_figure(w / dpi, h / dpi, dpi)
        self.with_attention = with_attention and bool(labels)
        if self.with_attention:
            gs = self.fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.35)
            self.ax_img = self.fig.add_subplot(gs[0])
            self.ax_bar = self.fig.add_subplot(gs[1])
        else:
            self.ax_img = self.fig.add_subplot(1, 1, 1)
            self.ax_bar = None
        self.ax_img.set_axis_off()
        self.image = None
        self.title = self.ax_img.set_title("", fontsize=9)
        self.bars_actor = self.bars_critic = None
        if self.ax_bar is not None:
            # critic bars share the actor's columns; a critic with an extra token (SAC's action) gets it
            cols = list(labels) + [c for c in (critic_labels or []) if c not in labels]
            self.columns = cols
            x = np.arange(len(cols))
            width = 0.4 if critic_labels else 0.8
            self.bars_actor = self.ax_bar.bar(
                x - (width / 2 if critic_labels else 0), 0, width, label="actor"
            )
            if critic_labels:
                self.bars_critic = self.ax_bar.bar(
                    x + width / 2, 0, width, label="critic", color="tab:orange"
                )
            self.actor_idx = [cols.index(c) for c in labels]
            self.critic_idx = [cols.index(c) for c in critic_labels or []]
            self.ax_bar.set_xticks(x)
            self.ax_bar.set_xticklabels(cols, fontsize=8)
            self.ax_bar.set_ylim(0, 1)
            self.ax_bar.set_ylabel("attention", fontsize=8)
            self.ax_bar.tick_params(labelsize=7)
            self.ax_bar.legend(fontsize=7, loc="upper left", ncol=2)
        self.fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.08)

    def _set_bars(self, bars: Any, idx: list[int], values: np.ndarray | None) -> None:
        if bars is None:
            return
        vals = np.zeros(len(self.columns))
        if values is not None:
            vals[idx[: len(values)]] = values[: len(idx)]
        for b, v in zip(bars, vals, strict=True):
            b.set_height(float(v))

    def compose(
        self,
        frame: np.ndarray,
        text: str = "",
        actor: np.ndarray | None = None,
        critic: np.ndarray | None = None,
    ) -> np.ndarray:
        """-> (height, width, 3) uint8."""
        if self.image is None:
            self.image = self.ax_img.imshow(frame, interpolation="nearest")
        else:
            self.image.set_data(frame)
        self.title.set_text(text)
        if self.ax_bar is not None:
            self._set_bars(self.bars_actor, self.actor_idx, actor)
            self._set_bars(self.bars_critic, self.critic_idx, critic)
        self.fig.canvas.draw()
        rgb = np.asarray(self.fig.canvas.buffer_rgba())[..., :3]
        return _fit(rgb, self.size)


def _fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop / pad (white) to exactly (width, height): rounding in inches * dpi can be one pixel off."""
    w, h = size
    out = np.full((h, w, 3), 255, np.uint8)
    hh, ww = min(h, img.shape[0]), min(w, img.shape[1])
    out[:hh, :ww] = img[:hh, :ww]
    return out


def compose_frames(trace: RolloutTrace, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """The trace's rendered frames with step text and the attention of the decision that led there."""
    if not trace.frames:
        return []
    actor = trace.attention
    has_att = any(a is not None for a in actor)
    has_critic = any(a is not None for a in trace.critic_attention)
    comp = FrameComposer(
        size,
        trace.slot_labels if has_att else [],
        trace.critic_slot_labels if has_critic else None,
        with_attention=has_att,
    )
    frames = []
    ret = 0.0
    for frame, j, ep in zip(trace.frames, trace.frame_step, trace.frame_episode, strict=True):
        if j < 0:  # reset frame: no decision yet
            ret = 0.0
            text = f"{trace.algorithm} on {trace.env_name}: episode {ep}, start"
            frames.append(comp.compose(frame, text))
            continue
        ret += trace.rewards[j]
        flags = (trace.success[j], trace.collision[j], trace.out_of_bounds[j])
        names = (" SUCCESS", " COLLISION", " OUT OF BOUNDS")
        event = next((e for e, f in zip(names, flags, strict=True) if f), "")
        text = (
            f"episode {trace.episode[j]}  step {trace.t[j] + 1}  reward {trace.rewards[j]:+.2f}  "
            f"return {ret:+.1f}  distance {trace.distances[j]:.1f}{event}"
        )
        frames.append(comp.compose(frame, text, actor[j], trace.critic_attention[j]))
    return frames


def write_video(
    frames: list[np.ndarray], out_dir: str | Path, fps: float = 8.0, name: str = "rollout"
) -> dict[str, Path]:
    """``<name>.gif`` (always) and ``<name>.mp4`` (when an ffmpeg writer exists) from RGB frames."""
    iio = require_imageio()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not frames:
        return {}
    files: dict[str, Path] = {}
    gif = out_dir / f"{name}.gif"
    # Pillow's GIF writer takes the frame duration in milliseconds; loop=0 repeats forever
    iio.mimsave(gif, frames, duration=1000.0 / fps, loop=0)
    files["gif"] = gif
    if mp4_available():
        mp4 = out_dir / f"{name}.mp4"
        h, w = frames[0].shape[:2]
        # yuv420p needs even sides; pad by one white row / column instead of letting ffmpeg rescale
        ph, pw = h + h % 2, w + w % 2
        writer = iio.get_writer(mp4, fps=fps, codec="libx264", macro_block_size=1, format="FFMPEG")
        try:
            for f in frames:
                if (ph, pw) != (h, w):
                    f = _fit(f, (pw, ph))
                writer.append_data(f)
        finally:
            writer.close()
        files["mp4"] = mp4
    return files
