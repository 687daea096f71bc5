"""Watching a run: the metrics file, the per-epoch line, TensorBoard scalars and PNG plots.

Each is a core plugin on the run's lifecycle hooks, the hooks a method plugin can implement,
registered by the loop on the main process only. ``metrics.jsonl`` is the source of truth: the
plots are drawn from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdzoo.api import LoggerInfo, Run, hookimpl
from kdzoo.reporting.metrics_file import write_jsonl


class MetricsFileReporter:
    """``metrics.jsonl``: the run's history, written when it starts (a resumed run drops what a
    killed process wrote after its last checkpoint) and after every epoch, each time atomically."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"

    @hookimpl
    def kdzoo_on_run_start(self, run: Run) -> None:
        write_jsonl(self.path, run.history)

    @hookimpl
    def kdzoo_on_epoch_end(self, run: Run) -> None:
        write_jsonl(self.path, run.history)


class ConsoleReporter:
    """One line per epoch: every term (4 significant digits), validation top-1 and throughput."""

    def __init__(self, label: str = ""):
        self.label = label

    @hookimpl
    def kdzoo_on_epoch_end(self, metrics: dict[str, Any]) -> None:
        train = metrics["train"]
        terms = " ".join(f"{k}={v:.4g}" for k, v in train.items() if isinstance(v, float) and k != "images_per_s")
        tqdm.write(
            f"[{self.label}{metrics['stage']} {metrics['epoch']}] {terms} val_top1={metrics['val']['top1']:.2f} "
            f"({train['images_per_s']:.0f} img/s)"
        )


def epoch_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's record (``metrics.jsonl``) as the named scalars every tracker logs: ``train/TERM``,
    ``weight/TERM``, ``throughput/images_per_s``, ``val/NAME`` (and ``val_ema/NAME``), ``lr``."""
    scalars: dict[str, float] = {}
    for name, value in metrics["train"].items():
        if name == "weights":
            scalars |= {f"weight/{term}": float(weight) for term, weight in value.items()}
        elif name == "images_per_s":
            scalars["throughput/images_per_s"] = float(value)
        elif isinstance(value, int | float):
            scalars[f"train/{name}"] = float(value)
    for section in ("val", "val_ema"):
        scalars |= {f"{section}/{name}": float(value) for name, value in metrics.get(section, {}).items()}
    scalars["lr"] = float(metrics["lr"])
    return scalars


def step_scalars(values: dict[str, float], weights: dict[str, float], lr: float) -> dict[str, float]:
    """A log point's values (:meth:`~kdzoo.hookspecs.MethodSpec.kdzoo_on_train_log`) as the named scalars
    every tracker logs against the run's step: ``step/train/TERM``, ``step/weight/TERM``, ``step/lr``
    (their own names: an epoch's scalars are plotted against the epoch)."""
    scalars = {f"step/train/{name}": float(value) for name, value in values.items()}
    scalars |= {f"step/weight/{name}": float(weight) for name, weight in weights.items()}
    return scalars | {"step/lr": float(lr)}


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a run's summary (``summary.json``), by their keys."""
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoardReporter:
    """Every loss term, loss weight, accuracy, the LR and throughput per epoch (:func:`epoch_scalars`), and
    the terms, weights and LR every ``train.log_every`` steps (:func:`step_scalars`, in ``steps/``), in
    ``tensorboard/``: the ``tensorboard`` tracker of ``train.loggers`` (the default)."""

    def __init__(self, run_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_epoch + 1 if first_epoch else None)
        self.steps_folder = run_dir / "tensorboard" / "steps"
        self.steps: Any = None

    @hookimpl
    def kdzoo_on_run_start(self, run: Run) -> None:
        if run.teacher_metrics is not None:
            self.writer.add_scalar("teacher/top1", run.teacher_metrics["top1"], 0)

    @hookimpl
    def kdzoo_on_train_log(self, global_step: int, values: dict[str, float], weights: dict[str, float], lr: float):
        if self.steps is None:
            from torch.utils.tensorboard import SummaryWriter

            # their own folder, purged from this run's first log point: the log points are the same steps
            # in every run of the config, so a killed run's points after its checkpoint start there
            self.steps = SummaryWriter(str(self.steps_folder), purge_step=global_step)
        for name, value in step_scalars(values, weights, lr).items():
            self.steps.add_scalar(name, value, global_step)

    @hookimpl
    def kdzoo_on_epoch_end(self, metrics: dict[str, Any]) -> None:
        step = metrics["global_epoch"]
        for name, value in epoch_scalars(metrics).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self.steps is not None:
            self.steps.close()


class PlotReporter:
    """``loss_terms.png`` and ``accuracy.png`` at the end of the run (also ``kdzoo plot RUN_DIR``)."""

    @hookimpl
    def kdzoo_on_run_end(self, run: Run) -> None:
        from kdzoo.reporting.plots import plot_run

        plot_run(run.run_dir)


#: the trackers of kdzoo's core, beside those plugins register (``kdzoo_register_loggers``): never
#: disabled with the plugins, so runs log to TensorBoard by default whatever KDZOO_DISABLE_PLUGINS says
CORE_LOGGERS = {
    "tensorboard": LoggerInfo(
        name="tensorboard",
        factory=TensorBoardReporter,
        summary="TensorBoard event files in RUN_DIR/tensorboard/ (the default)",
        requires=("tensorboard",),
        plugin="kdzoo core",
    )
}
