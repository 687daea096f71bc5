"""PNG curves of a run from its metrics file: loss terms and accuracy per epoch."""

from __future__ import annotations

import json
from pathlib import Path

from kdzoo.errors import KdzooError
from kdzoo.reporting.metrics_file import read_jsonl


def _stage_boundaries(ax, records) -> None:
    for previous, current in zip(records, records[1:], strict=False):
        if current["stage_index"] != previous["stage_index"]:
            ax.axvline(previous["global_epoch"] + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(previous["global_epoch"] + 0.6, ax.get_ylim()[1], current["stage"], va="top", fontsize=8)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss_terms.png`` and ``accuracy.png`` into ``run_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        raise KdzooError(f"{run_dir} has no metrics.jsonl to plot (is it a kdzoo run directory?)")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    epochs = [r["global_epoch"] for r in records]
    names = sorted({k for r in records for k, v in r["train"].items() if isinstance(v, float) and k != "images_per_s"})

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        points = [(r["global_epoch"], r["train"][name]) for r in records if name in r["train"]]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set(xlabel="epoch", ylabel="loss (unweighted terms; 'loss' is the weighted total)", yscale="log")
    ax.set_title(f"{'+'.join(summary.get('methods', [])) or run_dir.name}: training loss terms")
    ax.legend(fontsize=8)
    _stage_boundaries(ax, records)
    fig.tight_layout()
    loss_png = run_dir / "loss_terms.png"
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        epochs,
        [r["val"]["top1"] for r in records],
        marker="o",
        markersize=3,
        label=f"student {summary.get('student', '')} top-1",
    )
    if any("top5" in r["val"] for r in records):
        ax.plot(epochs, [r["val"].get("top5") for r in records], linestyle="--", label="student top-5")
    if summary.get("teacher_top1") is not None:
        ax.axhline(
            summary["teacher_top1"], color="black", linewidth=1, label=f"teacher {summary.get('teacher', '')} top-1"
        )
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100))
    ax.set_title("validation accuracy: student vs teacher")
    ax.legend(fontsize=8, loc="lower right")
    _stage_boundaries(ax, records)
    fig.tight_layout()
    acc_png = run_dir / "accuracy.png"
    fig.savefig(acc_png, dpi=110)
    plt.close(fig)
    return [loss_png, acc_png]
