"""ROC and utility plots.

Figures are built on an explicit Agg canvas instead of ``pyplot`` so that plotting neither needs
a display nor touches pyplot's global figure list or backend selection.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under_curve

from fedmia.evaluation.metrics import roc_band, roc_points
from fedmia.io import save_figure_atomic

__all__ = ["distinct_colours", "finish_roc_axes", "plot_roc", "plot_utility"]

_DEFAULT_LOG_FLOOR = 1e-3


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _curve_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    try:
        return float(area_under_curve(fpr, tpr))
    except ValueError:  # fewer than two points, or fpr not monotonic
        return math.nan


def distinct_colours(count: int) -> list:
    """One colour per curve, distinct for up to 20 (tab20's pairs interleaved: strong shades
    first), then evenly spaced hues."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        tab20 = colormaps["tab20"]
        return [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(count - 10)]
    return [colormaps["hsv"](i / count) for i in range(count)]


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str,
    loglog: bool = True,
    band: bool = True,
    seed: int = 0,
) -> None:
    """Overlay ROC curves in one figure, labelled with their AUC. `curves` maps a name to
    (scores, is_member); each curve gets a shaded 95% pointwise bootstrap band (FPR strictly
    below each grid point, as the metrics count it)."""
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot()
    floors = [1.0 / max(1, int((~np.asarray(y, bool)).sum())) for _, y in curves.values()]
    floor = min([_DEFAULT_LOG_FLOOR, *floors]) if loglog else 0.0
    for colour, (name, (scores, is_member)) in zip(distinct_colours(len(curves)), curves.items()):
        fpr, tpr = roc_points(scores, is_member)
        label = f"{name} (AUC {_curve_auc(fpr, tpr):.3f})"
        if band:
            grid = np.logspace(np.log10(floor), 0, 60) if loglog else np.linspace(0.005, 1, 60)
            lo, hi = roc_band(scores, is_member, grid, seed=seed)
            if loglog:
                lo, hi = np.clip(lo, floor, 1.0), np.clip(hi, floor, 1.0)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, linewidth=0, step="post")
        if loglog:
            # log(0) is undefined; points at 0 are drawn on the axis edge instead of vanishing.
            fpr, tpr = np.clip(fpr, floor, 1.0), np.clip(tpr, floor, 1.0)
        ax.plot(fpr, tpr, label=label, linewidth=1.5, color=colour)

    finish_roc_axes(ax, floor, title + ("\n(shaded: 95% bootstrap band)" if band and curves else ""), loglog)
    save_figure_atomic(fig, Path(path), dpi=150)


def finish_roc_axes(ax, floor: float, title: str, loglog: bool = True) -> None:
    """The chance diagonal, (log-log) axes from `floor` to 1, labels, grid and legend."""
    ax.plot([floor, 1.0], [floor, 1.0], linestyle="--", color="grey", linewidth=1, label="chance")
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
    # headroom above 1: a perfect attack's curve (TPR 1 at every FPR) runs along the top and
    # looked like no curve at all when the axis ended exactly there
    top = 1.35 if loglog else 1.03
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, top)
    ax.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")


def plot_utility(rounds: list[dict], path: Path) -> None:
    """Global-model Dice and mIoU per federated round (dicts with keys round, dice, miou)."""
    fig = _new_figure((6.0, 3.5))
    ax = fig.add_subplot()
    if rounds:
        x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
        for key, label in (("dice", "Dice"), ("miou", "mIoU")):
            # Missing values become NaN, which matplotlib leaves as a gap rather than failing.
            y = [math.nan if r.get(key) is None else float(r[key]) for r in rounds]
            ax.plot(x, y, marker="o", label=label)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no rounds recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("Round")
    ax.set_ylabel("Score")
    ax.set_title("Global model utility per round")
    ax.grid(True, alpha=0.3)
    save_figure_atomic(fig, Path(path), dpi=150)
