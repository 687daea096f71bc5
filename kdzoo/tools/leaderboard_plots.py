"""The leaderboard's plots: accuracy per epoch (``results.png``), accuracy against training cost
(``accuracy_vs_cost.png``) and the teacher's own curve (``teacher.png``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.reporting.plots import save_figure
from kdzoo.tools.leaderboard import MARK_SIGMAS, SCRATCH, RunResult

LOG_COST_RATIO = 8  # costs further apart than this share a logarithmic axis
OUTLIER_MADS = 5  # a mean further than this many median absolute deviations from the median sits on the edge
MARKED_EPOCHS = 20  # curves this short get a marker per epoch: one epoch is a point, which a bare line never shows
ZOOM_EPOCHS = 2  # the zoomed panel shows at least this many last epochs (the second half of 2 is one point)


def write_plots(report: dict[str, Any], results: list[RunResult], out: Path) -> None:
    """The three figures of :func:`kdzoo.tools.leaderboard.write_report`'s ``results.md``."""
    rows = report["rows"]
    plot_curves(results, rows, report["teacher_top1"], out / "results.png")
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_cost.png")
    teacher_curve = (report.get("teacher_training") or {}).get("curve", [])
    if teacher_curve:
        plot_teacher(teacher_curve, out / "teacher.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: list[RunResult], rows: list[dict], teacher_top1: float | None, path: Path) -> None:
    """Mean validation top-1 per epoch (± std band) of every method: all epochs on the left, and on the
    right the second half zoomed to the mean curves, where a few points decide the ranking."""
    import torch
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, (whole, end) = plt.subplots(1, 2, figsize=(14 if len(rows) <= 16 else 17, 5))
    styles = ["-", "--", ":", "-."]
    means = []
    for i, row in enumerate(rows):
        curves = [r.curve for r in results if r.method == row["method"]]
        length = min(len(c) for c in curves)
        stacked = torch.tensor([c[:length] for c in curves])
        mean = stacked.mean(0)
        std = stacked.std(0) if len(curves) > 1 else torch.zeros_like(mean)
        means.append(mean)
        epochs = range(1, length + 1)
        style = {"linewidth": 2.5 if row["method"] == SCRATCH else 1.2, "linestyle": styles[i // 10 % 4]}
        if length <= MARKED_EPOCHS:
            style.update(marker="o", markersize=4)
        line = whole.plot(epochs, mean, label=f"{row['method']} ({row['last_top1_mean']:.2f})", **style)
        if length > ZOOM_EPOCHS:
            whole.fill_between(epochs, mean - std, mean + std, alpha=0.1, color=line[0].get_color())
        else:  # a band over one or two epochs is a sliver or nothing: bars show the spread
            whole.errorbar(epochs, mean, yerr=std, fmt="none", capsize=3, color=line[0].get_color(), alpha=0.5)
        end.plot(epochs, mean, color=line[0].get_color(), **style)
    if teacher_top1:
        whole.axhline(teacher_top1, color="black", linewidth=1, label=f"teacher ({teacher_top1:.2f})")
    whole.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy per epoch (mean ± std over seeds)")
    low, high = min(min(r.curve) for r in results), max(max(r.curve) for r in results)
    whole.set_ylim(max(0, low - 2), min(100, max(high, teacher_top1 or 0) + 2))
    length = min(len(m) for m in means)
    first = zoom_start(length)
    tail = torch.stack([m[first:length] for m in means])
    epochs_text = f"epochs {first + 1}-{length}" if length > first + 1 else f"epoch {length}"
    end.set(xlabel="epoch", title=f"{epochs_text}, means only (zoomed)")
    end.set_xlim(first + 0.8, length + 0.2)
    end.set_ylim(float(tail.min()) - 0.5, float(tail.max()) + 0.5)
    for ax in (whole, end):
        ax.xaxis.set_major_locator(
            MaxNLocator(integer=True, min_n_ticks=1)
        )  # whole epochs: no 0.96 .. 1.04 axis for one
    if length <= ZOOM_EPOCHS:
        whole.set_xlim(0.5, length + 0.5)
    handles, labels = whole.get_legend_handles_labels()
    end.legend(
        handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(rows) <= 16 else 2
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def zoom_start(length: int) -> int:
    """The first epoch (0-based) of the zoomed panel: the second half, where the ranking settles (the teacher is
    far above it), but at least :data:`ZOOM_EPOCHS` epochs where there are that many."""
    return min(length // 2, max(length - ZOOM_EPOCHS, 0))


def plot_accuracy_vs_cost(rows: list[dict], path: Path) -> None:
    """Each method's mean last-epoch top-1 (± std) against its training cost over scratch's; the band is
    scratch ± the marking spread."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    scratch = next(r for r in rows if r["method"] == SCRATCH)
    if scratch["seeds"] > 1:  # one scratch run has no spread to draw
        spread = MARK_SIGMAS * scratch["last_top1_std"]
        ax.axhspan(
            scratch["last_top1_mean"] - spread,
            scratch["last_top1_mean"] + spread,
            color="grey",
            alpha=0.15,
            label=f"scratch ± {MARK_SIGMAS:g} std",
        )
    low, high = accuracy_range(rows)
    ax.set_ylim(low, high)
    for row in rows:
        cost = row["cost_vs_scratch"] if row["cost_vs_scratch"] is not None else float("nan")
        mean = row["last_top1_mean"]
        if not low <= mean <= high:  # on the edge it leaves, pointing where it lies; its label gives the value
            ax.plot(cost, low if mean < low else high, marker="v" if mean < low else "^", color="black", clip_on=False)
            continue
        ax.errorbar(
            cost,
            mean,
            yerr=row["last_top1_std"] or 0.0,
            fmt="o",
            markersize=4,
            capsize=2,
            color="black" if row["method"] == SCRATCH else None,
        )

    points = [
        (r["cost_vs_scratch"], min(max(r["last_top1_mean"], low), high), _label(r, low, high))
        for r in rows
        if r["cost_vs_scratch"]
    ]
    costs = [x for x, _y, _name in points]
    # one costly schedule (SSKD's 60 head epochs: 27x) would squeeze every other method into the first tenth
    logarithmic = bool(costs) and max(costs) / min(costs) > LOG_COST_RATIO
    if logarithmic:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:g}x")
    along = math.log10 if logarithmic else float
    label_offset = (along(ax.get_xlim()[1]) - along(ax.get_xlim()[0])) / 60
    for (x, y, name), label_y in zip(points, spread_labels(points, ax, along), strict=True):
        ax.annotate(
            name,
            (x, y),
            xytext=(x * 10**label_offset if logarithmic else x + label_offset, label_y),
            textcoords="data",
            fontsize=7,
            ha="left",
            va="center",
            arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": "grey"},
        )
    ax.set(
        xlabel="training cost (x scratch)",
        ylabel="last-epoch top-1 (%)",
        title="accuracy against training cost (mean ± std over seeds)",
    )
    if scratch["seeds"] > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def accuracy_range(rows: list[dict]) -> tuple[float, float]:
    """The accuracy axis: every method's mean ± std, except a mean far outside the others (a method that
    failed on the pair, SimKD's 46% among 76-82%), which would squeeze all the others into a sliver."""
    # the median and its absolute deviation: one far value cannot move them, as it moves a mean or quartiles
    median = statistics.median(r["last_top1_mean"] for r in rows)
    reach = OUTLIER_MADS * max(statistics.median(abs(r["last_top1_mean"] - median) for r in rows), 0.5)
    kept = [r for r in rows if abs(r["last_top1_mean"] - median) <= reach]
    low = min(r["last_top1_mean"] - (r["last_top1_std"] or 0.0) for r in kept)
    high = max(r["last_top1_mean"] + (r["last_top1_std"] or 0.0) for r in kept)
    margin = (high - low) / 20 or 0.5
    return low - margin, high + margin


def _label(row: dict, low: float, high: float) -> str:
    """The method's name; its accuracy when off the axis; the table's mark when its cost is no measured figure."""
    mean, mark = row["last_top1_mean"], row.get("cost_mark")
    name = f"{row['method']} (cost {mark})" if mark else row["method"]
    return name if low <= mean <= high else f"{name} ({mean:.1f}, off the axis)"


def spread_labels(points: list[tuple[float, float, str]], ax, along: Callable[[float], float] = float) -> list[float]:
    """Label heights that do not overlap: points close in cost share a column of labels, stacked at least
    one label's height apart in the order of their accuracies and centred on the points' mean.
    ``along``: the cost axis's scale (``math.log10`` on a logarithmic axis)."""
    low, high = ax.get_ylim()
    gap = (high - low) / 38  # one 7-point label on a 5.5-inch axis, with a little air
    width = (along(ax.get_xlim()[1]) - along(ax.get_xlim()[0])) / 12  # about one label's length
    heights = [y for _x, y, _name in points]
    by_cost = sorted(range(len(points)), key=lambda k: points[k][0])
    columns: list[list[int]] = []
    for k in by_cost:
        if columns and along(points[k][0]) - along(points[columns[-1][-1]][0]) < width:
            columns[-1].append(k)
        else:
            columns.append([k])
    for column in columns:
        below = float("-inf")
        for k in sorted(column, key=lambda k: points[k][1]):
            heights[k] = max(points[k][1], below + gap)
            below = heights[k]
        # the stack centred on its points, so it rises above the top one no more than below the lowest
        shift = statistics.fmean(points[k][1] for k in column) - statistics.fmean(heights[k] for k in column)
        for k in column:
            heights[k] += shift
    return heights


def plot_teacher(curve: list[float], path: Path) -> None:
    """The teacher's validation top-1 per epoch: whether it had plateaued before it was distilled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title=f"teacher: {curve[-1]:.2f}% after {len(curve)} epochs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
