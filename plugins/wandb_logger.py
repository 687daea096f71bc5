"""Weights & Biases as a tracker (``train.loggers: [wandb]``, ``pip install 'kdzoo[wandb]'``).

W&B's own settings choose where the run goes: ``WANDB_PROJECT`` (default ``kdzoo``), ``WANDB_ENTITY``,
``WANDB_MODE`` (``offline`` writes the run under RUN_DIR/wandb/ for ``wandb sync`` later). The run
gets the config, the terms, weights and LR every ``train.log_every`` steps (at the run's step), every
epoch's scalars (the names TensorBoard uses, at the epoch's last step, plotted against ``epoch``), the
teacher's accuracy, the summary's numbers and the run's plots. A resumed run continues the same
W&B run (its id is kept in RUN_DIR/wandb_run_id). ``metrics.jsonl`` stays the record.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import kdzoo
from kdzoo.config import as_dict
from kdzoo.reporting.reporters import epoch_scalars, step_scalars, summary_scalars

RUN_ID_FILE = "wandb_run_id"


class WandbLogger:
    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        self.run_dir, self.first_epoch = run_dir, first_epoch
        self.wb: Any = None

    @kdzoo.hookimpl
    def kdzoo_on_run_start(self, run) -> None:
        import wandb

        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.wb = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "kdzoo"),
            name=self.run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),  # W&B's files stay in the run's folder
            config=as_dict(run.config),
        )
        self.wb.define_metric("epoch")
        for section in ("train", "weight", "val", "val_ema", "throughput"):
            self.wb.define_metric(f"{section}/*", step_metric="epoch")
        self.wb.define_metric("lr", step_metric="epoch")
        if run.teacher_metrics is not None:
            self.wb.summary["teacher/top1"] = run.teacher_metrics["top1"]

    @kdzoo.hookimpl
    def kdzoo_on_train_log(self, global_step: int, values: dict[str, float], weights: dict[str, float], lr: float):
        self.wb.log(step_scalars(values, weights, lr), step=global_step)

    @kdzoo.hookimpl
    def kdzoo_on_epoch_end(self, metrics: dict[str, Any]) -> None:
        # at the epoch's last step (W&B's steps only go up), with the epoch, the x-axis of these scalars
        self.wb.log({**epoch_scalars(metrics), "epoch": metrics["global_epoch"]}, step=metrics["global_step"])

    @kdzoo.hookimpl
    def kdzoo_on_run_end(self, summary: dict[str, Any]) -> None:
        import wandb

        self.wb.summary.update({f"summary/{k}": v for k, v in summary_scalars(summary).items()})
        plots = {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(self.run_dir.glob("*.png"))}
        if plots:
            self.wb.log(plots, commit=True)

    def close(self) -> None:
        import wandb

        if self.wb is not None:
            self.wb.finish()
            self.wb = None
            # finish() can return before W&B's core process has written the last records of the run's
            # file (seen offline: the first epoch's row missing when read at once); teardown waits for
            # that process to end, so the run's files are whole when the run is
            wandb.teardown()


kdzoo_register_loggers = kdzoo.registering(
    kdzoo.LoggerInfo(
        name="wandb",
        factory=WandbLogger,
        summary="Weights & Biases (WANDB_PROJECT, WANDB_MODE=offline for RUN_DIR/wandb/)",
        requires=("wandb",),
        extra="wandb",
    )
)
