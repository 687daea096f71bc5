"""Watching a run: TensorBoard scalars and PNG plots, as core plugins on the run's hooks.

They use the same lifecycle hooks a method plugin can implement, registered by the engine next to
the active methods; metrics.jsonl stays the source of truth (the plots are drawn from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdzoo.plugins import hookimpl


class TensorBoardReporter:
    """Every loss term, loss weight, accuracy, the LR and throughput per epoch, in ``tensorboard/``."""

    def __init__(self, run_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_epoch + 1 if first_epoch else None)

    @hookimpl
    def kdzoo_on_run_start(self, run: Any) -> None:
        if run.teacher_metrics is not None:
            self.writer.add_scalar("teacher/top1", run.teacher_metrics["top1"], 0)

    @hookimpl
    def kdzoo_on_epoch_end(self, metrics: dict[str, Any]) -> None:
        step = metrics["global_epoch"]
        for name, value in metrics["train"].items():
            if name == "weights":
                for term, weight in value.items():
                    self.writer.add_scalar(f"weight/{term}", weight, step)
            elif name == "images_per_s":
                self.writer.add_scalar("throughput/images_per_s", value, step)
            else:
                self.writer.add_scalar(f"train/{name}", value, step)
        for name, value in metrics["val"].items():
            self.writer.add_scalar(f"val/{name}", value, step)
        self.writer.add_scalar("lr", metrics["lr"], step)
        self.writer.flush()


class PlotReporter:
    """``loss_terms.png`` and ``accuracy.png`` at the end of the run (also ``kdzoo plot RUN_DIR``)."""

    @hookimpl
    def kdzoo_on_run_end(self, run: Any) -> None:
        from kdzoo.plots import plot_run

        plot_run(run.run_dir)
