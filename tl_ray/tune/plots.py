"""The sweep report's PNG plots of ``tl_ray.tune.report.TrialSummary`` objects, legible at hundreds of trials
(no Ray here): the top trials in colour, the rest in light grey."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

GREY = "#b8b8b8"
TOP = "#d95f02"


def write_plots(trials: list, top: list, metric: str, mode: str, out_dir: Path) -> list[Path]:
    """Writes the plots into the local ``out_dir``; returns their paths (params and parallel need parameters).

    ``top``: the trials drawn in colour (and the only learning curves), best first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    files = []
    for name, draw in (("objective.png", _objective), ("learning_curves.png", _curves),
                       ("params.png", _params), ("parallel.png", _parallel)):
        fig = draw(plt, trials, top, metric, mode)
        if fig is None:
            continue
        files.append(out_dir / name)
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def _keys(trials: list) -> list[str]:
    return sorted({k for t in trials for k, v in t.params.items() if v is not None})


def _objective(plt, trials, top, metric, mode):
    """Each trial's best metric by start order, the top trials in colour, and the best so far."""
    by_start = sorted(trials, key=lambda t: t.started)
    scored = [(i, t.best(metric, mode), t) for i, t in enumerate(by_start, 1) if t.best(metric, mode) is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if scored:
        tops = {id(t) for t in top}
        xs, ys = [p[0] for p in scored], [p[1] for p in scored]
        ax.scatter(xs, ys, s=10, c=[TOP if id(p[2]) in tops else GREY for p in scored], zorder=2)
        line = list(itertools.accumulate(ys, max if mode == "max" else min))
        ax.step(xs, line, where="post", color="black", linewidth=1.5, label=f"best so far: {line[-1]:.4g}",
                zorder=3)
        ax.scatter([], [], s=10, c=TOP, label=f"top {len(top)}")
        ax.legend(loc="lower right" if mode == "max" else "upper right")
    ax.set_xlabel("trial (in the order they started)")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"objective over {len(trials)} trials")
    return fig


def _curves(plt, trials, top, metric, mode):
    """The metric epoch by epoch for the top trials, best first in the legend."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    cmap = plt.get_cmap("viridis")
    for rank, t in enumerate(top):
        pts = [(r.get("training_iteration"), r[metric]) for r in t.history if metric in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", linewidth=1.2, color=cmap(rank / max(1, len(top) - 1) * 0.9),
                    label=f"{t.name} ({t.best(metric, mode):.4g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    shown = f"the best {len(top)} of {len(trials)} trials" if len(top) < len(trials) else f"{len(trials)} trials"
    ax.set_title(f"learning curves: {shown}")
    if top:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="trial (best)",
                  title_fontsize=7)
    return fig


def _params(plt, trials, top, metric, mode):
    """One panel per parameter: each trial's best metric against the parameter's value."""
    keys = _keys(trials)
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    tops = {id(t) for t in top}
    for ax, key in zip(axes.flat, keys):
        pts = [(t.params.get(key), t.best(metric, mode), id(t) in tops) for t in trials
               if t.best(metric, mode) is not None and t.params.get(key) is not None]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        colors = [TOP if p[2] else GREY for p in pts]
        if all(_number(x) for x in xs):
            ax.scatter(xs, ys, s=12, c=colors)
            if _log_scale(xs):
                ax.set_xscale("log")
        else:
            labels = _categories(xs)
            ax.scatter([labels.index(str(x)) for x in xs], ys, s=12, c=colors)
            ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"each trial's best {metric} by parameter (top {len(top)} in colour)")
    return fig


def _parallel(plt, trials, top, metric, mode):
    """Parallel coordinates: one vertical axis per parameter and one for the metric, each scaled to [0, 1]."""
    from matplotlib.collections import LineCollection

    keys = _keys(trials)
    scored = [t for t in trials if t.best(metric, mode) is not None]
    if not keys or not scored:
        return None
    axes_names = [*keys, f"best {metric}"]
    columns = [[t.params.get(k) for t in scored] for k in keys] + [[t.best(metric, mode) for t in scored]]
    scaled, ticks = zip(*(_scale(col) for col in columns))
    fig, ax = plt.subplots(figsize=(max(7.0, 2.4 * len(axes_names)), 5))
    xs = range(len(axes_names))
    tops = {id(t): rank for rank, t in enumerate(top)}
    cmap = plt.get_cmap("viridis")
    lines = {i: list(zip(xs, [col[i] for col in scaled])) for i in range(len(scored))}
    rest = [lines[i] for i in lines if id(scored[i]) not in tops]
    ax.add_collection(LineCollection(rest, colors=GREY, alpha=0.35, linewidths=0.6))  # one artist: fast at 10k
    for i in sorted((i for i in lines if id(scored[i]) in tops), key=lambda i: -tops[id(scored[i])]):
        ax.plot(*zip(*lines[i]), color=cmap(tops[id(scored[i])] / max(1, len(top) - 1) * 0.9), linewidth=1.8)
    for x, axis_ticks in zip(xs, ticks):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, label in axis_ticks:
            ax.text(x + 0.03, y, label, ha="left", va="center", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    ax.set_xticks(list(xs), axes_names, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.05)
    ax.set_xlim(-0.1, len(axes_names) - 0.5)
    ax.grid(False)
    ax.set_title(f"parameters of {len(scored)} trials: the best {len(top)} in colour (darkest: best)")
    return fig


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _log_scale(xs: list) -> bool:
    """A wide positive range whose median is nearer its geometric middle than its arithmetic one (drawn
    log-uniformly, as a learning rate)."""
    if not xs or min(xs) <= 0 or max(xs) / min(xs) < 20:
        return False
    median, low, high = sorted(xs)[len(xs) // 2], min(xs), max(xs)
    return abs(math.log(median / math.sqrt(low * high))) < abs(math.log(median / ((low + high) / 2)))


def _categories(values: list) -> list[str]:
    """The distinct values as labels, numbers in numeric order ([32] before [128])."""
    return sorted({str(v) for v in values}, key=lambda label: (len(label), label))


def _scale(values: list) -> tuple[list[float], list[tuple[float, str]]]:
    """Values mapped to [0, 1] (missing ones just below 0), and the axis's labels as (position, text)."""
    present = [v for v in values if v is not None]
    if present and all(_number(v) for v in present):
        f = (lambda v: math.log10(v)) if _log_scale(present) else float
        low, high = f(min(present)), f(max(present))
        span = (high - low) or 1.0
        out = [-0.08 if v is None else (f(v) - low) / span for v in values]
        return out, [(0.0, f"{min(present):.3g}"), (1.0, f"{max(present):.3g}")]
    labels = _categories(present)
    step = 1.0 / max(1, len(labels) - 1)
    out = [-0.08 if v is None else labels.index(str(v)) * step for v in values]
    return out, [(i * step, label) for i, label in enumerate(labels)]
