"""Static figures: attention heatmaps, feature evolution, and learning curves from run folders.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot's window
managers, so nothing opens a window on a headless machine (and pyplot's global backend is set to Agg
when pyplot has not been imported yet, for anything else that might import it later).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

VIZ_HINT = (
    "vmamba-rl visualisation needs matplotlib and imageio (the [viz] extra): "
    "pip install -e \".[viz]\"  (or pip install 'vmamba-rl[viz]')"
)

# Config entries that name or place a run rather than change what it learns: runs that differ only in
# these are seeds of one configuration (``seed`` itself included).
GROUPING_IGNORED = (
    "seed",
    "run_name",
    "log_dir",
    "progress",
    "torch_threads",
    "save_interval",
    "save_buffer",
)


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend; ImportError naming the [viz] extra when it is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(VIZ_HINT) from e
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # before any pyplot import: no GUI backend is ever chosen
    return matplotlib


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Any:
    """A Figure bound to an Agg canvas (independent of pyplot's current backend)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: str | Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _episode_bounds(episode: np.ndarray) -> list[int]:
    """Indices where a new episode starts (excluding 0)."""
    return [int(i) for i in np.flatnonzero(np.diff(episode)) + 1]


# ------------------------------------------------------------------------------------------ attention


def plot_attention(
    panels: list[tuple[str, np.ndarray, list[str]]],
    out: str | Path,
    episode: np.ndarray | None = None,
    title: str = "Cross-attention over the history",
    dpi: int = 100,
) -> Path:
    """Heatmaps, one per (name, weights (T, K), column labels): rows decision steps, columns slots.

    Every panel shares one colour scale [0, max] and one colour bar; episode starts are drawn as white
    lines across the rows.
    """
    T = max(w.shape[0] for _, w, _ in panels)
    vmax = max(float(np.nanmax(w)) for _, w, _ in panels) if T else 1.0
    width = 1.2 + 2.6 * len(panels) + 0.6 * max(0, max(w.shape[1] for _, w, _ in panels) - 4)
    height = min(9.0, 2.2 + 0.06 * T)
    fig = new_figure(width, height, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, (name, w, labels) in zip(axes, panels, strict=True):
        im = ax.imshow(
            w, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=max(vmax, 1e-9)
        )
        ax.set_title(name)
        ax.set_xticks(range(w.shape[1]))
        ax.set_xticklabels(labels, rotation=45 if max(map(len, labels), default=0) > 4 else 0)
        ax.set_xlabel("history slot" if labels and labels[-1] == "t" else "token")
        if episode is not None:
            for b in _episode_bounds(episode):
                ax.axhline(b - 0.5, color="white", lw=1.0)
    axes[0].set_ylabel("decision step")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    cax = fig.add_axes((0.88, 0.15, 0.02, 0.7))
    fig.colorbar(im, cax=cax, label="attention weight")
    return _save(fig, out, dpi)


def plot_attention_heads(
    panels: list[tuple[str, np.ndarray, list[str]]], out: str | Path, dpi: int = 100
) -> Path:
    """Per-head heatmaps: panels of (name, weights (T, H, K), labels) -> a (streams x heads) grid."""
    H = max(w.shape[1] for _, w, _ in panels)
    fig = new_figure(1.0 + 2.2 * H, 0.6 + 2.6 * len(panels), dpi)
    axes = fig.subplots(len(panels), H, squeeze=False)
    im = None
    for r, (name, w, labels) in enumerate(panels):
        for h in range(H):
            ax = axes[r][h]
            if h >= w.shape[1]:
                ax.set_axis_off()
                continue
            im = ax.imshow(w[:, h], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{name} head {h}", fontsize=9)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7, rotation=45 if max(map(len, labels), default=0) > 4 else 0)
            if h == 0:
                ax.set_ylabel("decision step")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(im, cax=fig.add_axes((0.92, 0.15, 0.02, 0.7)), label="attention weight")
    return _save(fig, out, dpi)


# ------------------------------------------------------------------------------------------- features


def pca_project(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) -> the first ``n`` principal components (T, n) and their explained variance ratios."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return xc[:, :n], np.zeros(min(n, x.shape[1]))
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    n = min(n, vt.shape[0])
    var = s**2
    ratio = var[:n] / var.sum() if var.sum() > 0 else np.zeros(n)
    return xc @ vt[:n].T, ratio


def plot_features(
    features: dict[str, np.ndarray],
    out: str | Path,
    episode: np.ndarray,
    success: np.ndarray,
    collision: np.ndarray,
    distance: np.ndarray | None = None,
    out_of_bounds: np.ndarray | None = None,
    n_dims: int = 8,
    mode: str = "first",
    dpi: int = 100,
) -> Path:
    """One panel per feature stream (T, D): its first ``n_dims`` dimensions (or PCA components).

    Events are marked on every panel: success (green line), collision (red line), out of bounds
    (orange line), other episode ends (grey dashed). An extra panel shows the distance to the goal when given.
    """
    if mode not in ("first", "pca"):
        raise ValueError(f"mode must be 'first' or 'pca', got {mode!r}")
    names = [k for k in features if features[k].size]
    has_dist = distance is not None and np.isfinite(distance).any()
    rows = len(names) + int(has_dist)
    if rows == 0:
        raise ValueError("no features to plot")
    fig = new_figure(10.0, 1.0 + 2.1 * rows, dpi)
    axes = fig.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    T = len(episode)
    steps = np.arange(T)
    ends = np.flatnonzero(np.r_[np.diff(episode) != 0, True]) if T else np.array([], int)
    succ_idx = np.flatnonzero(success)
    coll_idx = np.flatnonzero(collision)
    oob_idx = np.flatnonzero(out_of_bounds) if out_of_bounds is not None else np.array([], int)
    marked = set(succ_idx) | set(coll_idx) | set(oob_idx)

    def events(ax: Any) -> None:
        for i in ends:
            if i not in marked:
                ax.axvline(i, color="0.5", ls="--", lw=0.8)
        for i in succ_idx:
            ax.axvline(i, color="tab:green", lw=1.5)
        for i in coll_idx:
            ax.axvline(i, color="tab:red", lw=1.5)
        for i in oob_idx:
            ax.axvline(i, color="tab:orange", lw=1.5)

    for ax, name in zip(axes, names, strict=False):
        x = features[name]
        if mode == "pca":
            y, ratio = pca_project(x, n_dims)
            label = [f"PC{i + 1} ({r:.0%})" for i, r in enumerate(ratio)]
        else:
            y = x[:, :n_dims]
            label = [f"dim {i}" for i in range(y.shape[1])]
        for j in range(y.shape[1]):
            ax.plot(steps, y[:, j], lw=1.0, label=label[j])
        ax.set_ylabel(f"{name}\n({x.shape[1]} dims)")
        ax.legend(fontsize=6, ncol=min(4, y.shape[1]), loc="upper right", framealpha=0.6)
        events(ax)
    if has_dist:
        ax = axes[-1]
        ax.plot(steps, distance, color="k", lw=1.2)
        ax.set_ylabel("distance\nto goal")
        events(ax)
    axes[-1].set_xlabel("decision step")
    what = "PCA projection" if mode == "pca" else f"first {n_dims} dimensions"
    fig.suptitle(
        f"Feature evolution ({what}); green: success, red: collision, "
        "orange: out of bounds, dashed: episode end",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out, dpi)


# ------------------------------------------------------------------------------------ learning curves


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], name: str) -> np.ndarray:
    out = []
    for r in rows:
        v = r.get(name)
        try:
            out.append(float(v) if v not in (None, "") else math.nan)
        except ValueError:
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def read_run(run_dir: str | Path, window: int = 10) -> dict[str, Any]:
    """A run folder's curve: ``steps``, ``success_rate``, ``return`` (from eval.csv's ``step``,
    ``success_rate``, ``mean_return``), its config (config.json) and the source file.

    Without evaluation rows the training episodes (episodes.csv ``step``, ``success``, ``return``) are
    used instead, smoothed by a trailing mean over ``window`` episodes.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    cfg_path = run / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    rows = _read_csv(run / "eval.csv")
    if rows:
        steps, succ, ret = _col(rows, "step"), _col(rows, "success_rate"), _col(rows, "mean_return")
        source = "eval.csv"
    else:
        rows = _read_csv(run / "episodes.csv")
        if not rows:
            raise ValueError(f"{str(run)!r} has neither eval.csv nor episodes.csv rows to plot")
        steps, succ, ret = _col(rows, "step"), _col(rows, "success"), _col(rows, "return")
        kernel = np.ones(window)
        counts = np.convolve(np.ones_like(succ), kernel)[: len(succ)]
        succ = np.convolve(succ, kernel)[: len(succ)] / counts
        ret = np.convolve(ret, kernel)[: len(ret)] / counts
        source = f"episodes.csv (trailing mean of {window} episodes)"
    order = np.argsort(steps, kind="stable")
    return {
        "run_dir": str(run),
        "config": config,
        "steps": steps[order],
        "success_rate": succ[order],
        "return": ret[order],
        "source": source,
    }


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v))  # Config sections: option names are unique across sections
        else:
            out[k] = v
    return out


def config_key(config: dict[str, Any] | None, run_dir: str) -> str:
    """Grouping key: the flattened config minus :data:`GROUPING_IGNORED` (a run without one is alone)."""
    if config is None:
        return f"run:{run_dir}"
    flat = {k: v for k, v in _flatten(config).items() if k not in GROUPING_IGNORED}
    return json.dumps(flat, sort_keys=True, default=str)


def _group_label(key: str, keys: list[str], runs: list[dict[str, Any]]) -> str:
    if key.startswith("run:"):
        return Path(key[4:]).name
    flat = json.loads(key)
    base = f"{flat.get('algorithm_name', '?')} / {flat.get('env_name', '?')}"
    others = [json.loads(k) for k in keys if k != key and not k.startswith("run:")]
    diff = sorted({n for o in others for n in set(flat) | set(o) if flat.get(n) != o.get(n)})
    diff = [n for n in diff if n not in ("algorithm_name", "env_name")]
    extra = ", ".join(f"{n}={flat.get(n)}" for n in diff[:3]) + (" ..." if len(diff) > 3 else "")
    return base + (f" ({extra})" if extra else "")


def aggregate(curves: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Seeds of one configuration -> common steps and mean / std / min / max of both metrics.

    Runs evaluated at identical steps are stacked as they are; otherwise every run is linearly
    interpolated onto the union of their evaluation steps within the range all runs cover.
    """
    step_sets = [c["steps"] for c in curves]
    if all(len(s) == len(step_sets[0]) and np.array_equal(s, step_sets[0]) for s in step_sets):
        grid = step_sets[0]
        stack = {m: np.stack([c[m] for c in curves]) for m in ("success_rate", "return")}
    else:
        lo = max(float(s.min()) for s in step_sets)
        hi = min(float(s.max()) for s in step_sets)
        allsteps = np.unique(np.concatenate(step_sets))
        grid = allsteps[(allsteps >= lo) & (allsteps <= hi)]
        if grid.size == 0:  # seeds that do not overlap: fall back to the first run's steps
            grid = step_sets[0]
        stack = {
            m: np.stack([np.interp(grid, c["steps"], c[m]) for c in curves])
            for m in ("success_rate", "return")
        }
    out: dict[str, np.ndarray] = {"steps": np.asarray(grid, dtype=np.float64)}
    for m, s in stack.items():
        out[f"{m}_mean"] = s.mean(axis=0)
        out[f"{m}_std"] = s.std(axis=0)
        out[f"{m}_min"] = s.min(axis=0)
        out[f"{m}_max"] = s.max(axis=0)
        out[f"{m}_runs"] = s
    return out


def plot_learning_curves(groups: dict[str, dict[str, Any]], out: str | Path, dpi: int = 100) -> Path:
    """Success rate and return against environment steps: mean line and a +-1 std band per group."""
    fig = new_figure(11.0, 4.0, dpi)
    ax_s, ax_r = fig.subplots(1, 2)
    for i, (label, g) in enumerate(groups.items()):
        colour = f"C{i % 10}"
        n = g["n_runs"]
        for ax, m in ((ax_s, "success_rate"), (ax_r, "return")):
            mean, std = g[f"{m}_mean"], g[f"{m}_std"]
            ax.plot(g["steps"], mean, color=colour, lw=1.8, marker="o", ms=3, label=f"{label} (n={n})")
            if n > 1:
                lo, hi = mean - std, mean + std
                if m == "success_rate":
                    lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
                ax.fill_between(g["steps"], lo, hi, color=colour, alpha=0.2, lw=0)
    ax_s.set_ylim(-0.03, 1.03)
    ax_s.set_ylabel("evaluation success rate")
    ax_r.set_ylabel("evaluation return")
    for ax in (ax_s, ax_r):
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=7, loc="best")
    fig.suptitle("Learning curves (mean, band: +-1 std across seeds)")
    fig.tight_layout()
    return _save(fig, out, dpi)


def plot_runs(run_dirs: list[str], out: str) -> dict[str, Any]:
    """Learning curves of several run folders in one figure; returns the data it was drawn from.

    Runs whose config.json agree apart from :data:`GROUPING_IGNORED` (seed, run name, log folder and
    logging switches) are seeds of one configuration and are drawn as mean +- std.

    Returns ``{"figure": Path, "groups": {label: {"steps", "success_rate_mean", "success_rate_std",
    "success_rate_min", "success_rate_max", "success_rate_runs" (n_runs, steps), the same for
    "return_*", "runs": [run folders], "sources": [csv used], "n_runs"}}}``.
    """
    require_matplotlib()
    if not run_dirs:
        raise ValueError("plot_runs needs at least one run folder")
    curves = [read_run(r) for r in run_dirs]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for c in curves:
        by_key.setdefault(config_key(c["config"], c["run_dir"]), []).append(c)
    keys = list(by_key)
    groups: dict[str, dict[str, Any]] = {}
    for key, members in by_key.items():
        label = _group_label(key, keys, members)
        while label in groups:  # identical labels for different configs: keep both
            label += "'"
        g: dict[str, Any] = aggregate(members)
        g.update(
            runs=[c["run_dir"] for c in members],
            sources=[c["source"] for c in members],
            n_runs=len(members),
        )
        groups[label] = g
    fig_path = plot_learning_curves(groups, out)
    return {"figure": fig_path, "groups": groups}
