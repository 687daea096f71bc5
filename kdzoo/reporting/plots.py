"""PNG curves of a run from its metrics file: loss terms and accuracy per epoch, each image replaced
atomically. The records are read through the checked readers of :mod:`kdzoo.reporting.metrics_file`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_bytes_atomic
from kdzoo.errors import KdzooError
from kdzoo.reporting.metrics_file import read_json, read_records, rewrite_remedy


def save_figure(fig: Any, path: Path, **savefig: Any) -> None:
    """``fig`` as a PNG at ``path``, replaced atomically (a kill mid-write leaves the previous image)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    write_bytes_atomic(buffer.getvalue(), path)


def stage_segments(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The records cut where the stage changes: a curve is drawn per stage, never joined across a boundary
    (the next stage trains another objective, often with another head)."""
    segment: list[dict[str, Any]] = []
    for record in records:
        if segment and record["stage_index"] != segment[-1]["stage_index"]:
            yield segment
            segment = []
        segment.append(record)
    if segment:
        yield segment


def _stage_boundaries(ax, records) -> None:
    for previous, current in zip(records, records[1:], strict=False):
        if current["stage_index"] != previous["stage_index"]:
            ax.axvline(previous["global_epoch"] + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(previous["global_epoch"] + 0.6, ax.get_ylim()[1], current["stage"], va="top", fontsize=8)


def _plot_by_stage(ax, records, value, **style) -> None:
    """One curve of ``value(record)`` (None: not in that epoch), one line per stage in one colour; markers,
    so a stage of one epoch is a visible point, not an empty plot."""
    color, label = None, style.pop("label", None)
    for segment in stage_segments(records):
        points = [(r["global_epoch"], value(r)) for r in segment if value(r) is not None]
        if not points:
            continue
        (line,) = ax.plot(*zip(*points, strict=True), marker="o", markersize=3, color=color, label=label, **style)
        color, label = line.get_color(), None  # the next stages: same colour, one legend entry


def _loss_value(name: str):
    return lambda r: r["train"].get(name) if isinstance(r["train"].get(name), float) else None


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss_terms.png`` and ``accuracy.png`` into ``run_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    remedy = rewrite_remedy(run_dir)
    records = read_records(run_dir / "metrics.jsonl", remedy)
    if not records:
        raise KdzooError(f"{run_dir} has no metrics.jsonl to plot (is it a kdzoo run directory?)")
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path, remedy) if summary_path.is_file() else {}
    names = sorted({k for r in records for k, v in r["train"].items() if isinstance(v, float) and k != "images_per_s"})

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        _plot_by_stage(ax, records, _loss_value(name), label=name)
    ax.set(xlabel="epoch", ylabel="loss (unweighted terms; 'loss' is the weighted total)", yscale="log")
    ax.set_title(f"{'+'.join(map(str, summary.get('methods') or [])) or run_dir.name}: training loss terms")
    ax.xaxis.set_major_locator(
        MaxNLocator(integer=True, min_n_ticks=1)
    )  # epochs are whole: no 0.96 .. 1.04 axis for one
    ax.legend(fontsize=8)
    _stage_boundaries(ax, records)
    fig.tight_layout()
    loss_png = run_dir / "loss_terms.png"
    save_figure(fig, loss_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    _plot_by_stage(ax, records, lambda r: r["val"]["top1"], label=f"student {summary.get('student', '')} top-1")
    if any("top5" in r["val"] for r in records):
        _plot_by_stage(ax, records, lambda r: r["val"].get("top5"), linestyle="--", label="student top-5")
    if isinstance(summary.get("teacher_top1"), int | float):
        ax.axhline(
            summary["teacher_top1"], color="black", linewidth=1, label=f"teacher {summary.get('teacher', '')} top-1"
        )
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100))
    ax.set_title("validation accuracy: student vs teacher")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.legend(fontsize=8, loc="lower right")
    _stage_boundaries(ax, records)
    fig.tight_layout()
    acc_png = run_dir / "accuracy.png"
    save_figure(fig, acc_png, dpi=110)
    plt.close(fig)
    return [loss_png, acc_png]
