"""MLflow as a tracker (``train.loggers: [mlflow]``, ``pip install 'kdzoo[mlflow]'``).

MLflow's own settings choose the server: ``MLFLOW_TRACKING_URI`` (unset: a file store in
RUN_DIR/mlruns, nothing written outside the run's folder), ``MLFLOW_EXPERIMENT_NAME`` (default
``kdzoo``). The run gets the config as parameters (dotted keys), the terms, weights and LR every
``train.log_every`` steps (``step/...``, at the run's step), every epoch's scalars (the names
TensorBoard uses, at the global epoch as the step), the teacher's accuracy, the summary's numbers, the
summary and the plots as artifacts. A resumed run continues the same MLflow run (its id is kept in
RUN_DIR/mlflow_run_id). ``metrics.jsonl`` stays the record.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kdzoo
from kdzoo.config import as_dict
from kdzoo.reporting.reporters import epoch_scalars, step_scalars, summary_scalars

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM = 6000  # MLflow's limit on a parameter's value


def _params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)[:MAX_PARAM]
    return flat


def _key(name: str) -> str:
    # MLflow keys take letters, digits, _ - . / and spaces
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


class MlflowLogger:
    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        from mlflow.tracking import MlflowClient

        self.run_dir = run_dir
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # the run's own folder, with no server and nothing else to install: MLflow 3 keeps its file
            # store for this but asks for the opt-out (its database stores need SQLAlchemy); a
            # MLFLOW_TRACKING_URI of the user's is used as it is
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None

    @kdzoo.hookimpl
    def kdzoo_on_run_start(self, run) -> None:
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdzoo")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
        id_file.write_text(self.run_id)
        from mlflow.entities import Param

        params = [Param(_key(k), v) for k, v in _params(as_dict(run.config)).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        if run.teacher_metrics is not None:
            self.client.log_metric(self.run_id, "teacher/top1", float(run.teacher_metrics["top1"]), step=0)

    @kdzoo.hookimpl
    def kdzoo_on_train_log(self, global_step: int, values: dict[str, float], weights: dict[str, float], lr: float):
        self._metrics(step_scalars(values, weights, lr), global_step)

    @kdzoo.hookimpl
    def kdzoo_on_epoch_end(self, metrics: dict[str, Any]) -> None:
        self._metrics(epoch_scalars(metrics), metrics["global_epoch"])

    @kdzoo.hookimpl
    def kdzoo_on_run_end(self, summary: dict[str, Any]) -> None:
        assert self.run_id is not None
        self._metrics({f"summary/{k}": v for k, v in summary_scalars(summary).items()}, 0)
        for artifact in [self.run_dir / "summary.json", *sorted(self.run_dir.glob("*.png"))]:
            if artifact.is_file():
                self.client.log_artifact(self.run_id, str(artifact))
        self.client.set_terminated(self.run_id, "FINISHED")

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(_key(k), float(v), stamp, step) for k, v in values.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])


kdzoo_register_loggers = kdzoo.registering(
    kdzoo.LoggerInfo(
        name="mlflow",
        factory=MlflowLogger,
        summary="MLflow (MLFLOW_TRACKING_URI; unset: a file store in RUN_DIR/mlruns)",
        requires=("mlflow",),
        extra="mlflow",
    )
)
