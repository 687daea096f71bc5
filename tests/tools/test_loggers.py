"""Experiment trackers as plugins (issue 33 item 4): ``train.loggers`` selects TensorBoard, W&B and MLflow
(shipped as plugins through the entry-point group a third party uses) or one a plugin adds. The real
libraries run with no server and no network: W&B in offline mode (its run file read back record by
record) and MLflow with a local file store; what they hold equals ``metrics.jsonl``, the record."""

from __future__ import annotations

import importlib.util
import json
import struct
import types
from pathlib import Path

import pytest

import kdzoo
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.registry import load_registry, registry
from kdzoo.reporting.reporters import epoch_scalars
from tests.helpers import tiny_config, whole_and_resumed_after_crash

pytest.importorskip("wandb")  # kdzoo[wandb], part of kdzoo[test]
pytest.importorskip("mlflow")  # kdzoo[mlflow], part of kdzoo[test]


def _wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """The history rows of W&B's offline run file, by step. The file is W&B's record log (LevelDB's
    log format: 32 KiB blocks of records split into first/middle/last pieces, after a 7-byte header)
    of protobuf records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw, block = path.read_bytes(), 32768
    assert raw[:4] == b":W&B"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the padding at a block's end
            pos += left
            continue
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            records.append(pending)
    rows: dict[int, dict[str, float]] = {}
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


def _mlflow_run(run_dir: Path) -> Path:
    (run,) = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    return run


def _mlflow_metric(run: Path, name: str) -> dict[int, float]:
    lines = (run / "metrics" / name).read_text().splitlines()
    return {int(step): float(value) for _, value, step in (line.split() for line in lines)}


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag, points in scalars.items():
        assert len({step for step, _ in points}) == len(points), f"{tag}: a step logged twice"
    return {tag: dict(points) for tag, points in scalars.items()}


def _interval_weighted_mean(points: dict[int, float], first: int, last: int) -> float:
    """The epoch mean the log points (steps first < s <= last, each the mean since the one before) make."""
    inside, total, previous = sorted(s for s in points if first < s <= last), 0.0, first
    for step in inside:
        total, previous = total + points[step] * (step - previous), step
    assert previous == last, "the epoch's last step is a log point"
    return total / (last - first)


def test_wandb_offline_and_an_mlflow_file_store_hold_what_metrics_jsonl_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: a file store in the run's folder
    cfg = tiny_config(
        ["kd"],
        "train.epochs=2",
        "data.train_limit=160",  # 5 steps an epoch: log points at steps 2, 4 and 5
        "train.log_every=2",
        "train.loggers=[tensorboard,wandb,mlflow]",
        out_dir=str(tmp_path),
    )
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    summary = trainer.fit()
    run_dir = tmp_path / "run"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["global_step"] for record in epochs] == [5, 10]

    history = _wandb_history(run_dir)
    mlflow_run = _mlflow_run(run_dir)
    board = _tensorboard_scalars(run_dir / "tensorboard")
    for record in epochs:
        step, scalars = record["global_epoch"], epoch_scalars(record)
        assert {"train/kd", "train/ce", "weight/kd", "val/top1", "lr"} <= set(scalars)
        row = history[record["global_step"]]  # W&B: at the epoch's last step, with the epoch as its x-axis
        assert row["epoch"] == step
        for name, value in scalars.items():
            assert row[name] == value, (step, name)
            assert _mlflow_metric(mlflow_run, name)[step] == value, (step, name)
            assert board[name][step] == pytest.approx(value, rel=1e-6), (step, name)  # TensorBoard keeps float32
    # per step: every log point, each the mean since the one before; together they make the epoch's means
    steps_board = _tensorboard_scalars(run_dir / "tensorboard" / "steps")
    wandb_steps = {name: {s: row[name] for s, row in history.items() if name in row} for name in ("step/train/kd",)}
    for name in ("step/train/kd", "step/train/ce", "step/train/loss", "step/weight/kd", "step/lr"):
        mlflow_points = _mlflow_metric(mlflow_run, name)
        assert sorted(mlflow_points) == sorted(steps_board[name]) == [2, 4, 5, 7, 9, 10], name
        for step, value in mlflow_points.items():
            assert steps_board[name][step] == pytest.approx(value, rel=1e-6), (name, step)
    assert wandb_steps["step/train/kd"] == _mlflow_metric(mlflow_run, "step/train/kd")
    for record in epochs:
        last = record["global_step"]
        for term in ("kd", "ce", "loss"):
            points = _mlflow_metric(mlflow_run, f"step/train/{term}")
            # both sides rounded to 7 significant digits: the margin is that rounding's, not noise
            assert _interval_weighted_mean(points, last - 5, last) == pytest.approx(record["train"][term], rel=1e-5)
    # the teacher's accuracy, the summary's numbers, the config, the plots and summary.json
    assert _mlflow_metric(mlflow_run, "teacher/top1")[0] == summary["teacher_top1"]
    assert _mlflow_metric(mlflow_run, "summary/student_top1")[0] == summary["student_top1"]
    assert (mlflow_run / "params" / "train.epochs").read_text() == "2"
    assert (mlflow_run / "params" / "methods").read_text() == "['kd']"
    artifacts = {p.name for p in (mlflow_run / "artifacts").iterdir()}
    assert {"summary.json", "accuracy.png", "loss_terms.png"} <= artifacts
    assert {"plots/accuracy/path", "plots/loss_terms/path"} <= set(history[10])
    # the trackers write nothing outside the run's folder (cache/: the test's kdzoo cache, its teacher)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    assert not list((tmp_path / "cache").rglob("wandb")) and not list((tmp_path / "cache").rglob("mlruns"))


def test_a_run_killed_after_a_log_point_and_resumed_logs_the_steps_the_run_never_killed_logs(tmp_path):
    """Killed in the second epoch's fifth step, after the log point at its fourth and a checkpoint at its
    third: the resumed run drops that point (TensorBoard's purge) and logs each point as the run never
    killed does, the first one after the resume included (its mean starts at the point before)."""
    cfg = tiny_config(
        ["kd"],
        "train.epochs=2",
        "data.train_limit=160",
        "train.log_every=2",
        "train.checkpoint_every=3",
        out_dir=str(tmp_path),
    )
    _, _, state = whole_and_resumed_after_crash(cfg, tmp_path, calls=10)
    assert (state.position.epoch, state.position.step) == (1, 3)
    whole, resumed = (_tensorboard_scalars(tmp_path / run / "tensorboard" / "steps") for run in ("whole", "crashed"))
    assert sorted(whole["step/train/kd"]) == [2, 4, 5, 7, 9, 10]
    assert resumed == whole


def test_a_tracker_not_installed_or_unknown_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = tiny_config(["kd"], "train.loggers=[wandb]", out_dir=str(tmp_path))
    with pytest.raises(
        KdzooError, match=r"train.loggers: wandb needs wandb, which is not installed: pip install 'kdzoo\[wandb\]'"
    ):
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    cfg = tiny_config(["kd"], "train.loggers=[neptune]", out_dir=str(tmp_path))
    with pytest.raises(KdzooError, match=r"unknown logger 'neptune' \(installed: mlflow, tensorboard, wandb\)"):
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)


class _Recorder:
    epochs: list[dict] = []

    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        self.first_epoch = first_epoch

    @kdzoo.hookimpl
    def kdzoo_on_epoch_end(self, metrics):
        _Recorder.epochs.append(metrics)

    def close(self) -> None:
        _Recorder.epochs.append({"closed": True})


def test_a_plugin_adds_a_tracker_that_sees_every_epoch(tmp_path):
    @kdzoo.hookimpl
    def kdzoo_register_loggers(register):
        register(kdzoo.LoggerInfo(name="recorder", factory=_Recorder, summary="records epochs"))

    module = types.ModuleType("recorder_plugin")
    module.kdzoo_register_loggers = kdzoo_register_loggers
    reg = load_registry(extra=[("recorder_plugin", module)])
    assert reg.loggers["recorder"].plugin == "recorder_plugin"
    _Recorder.epochs = []
    cfg = tiny_config(["kd"], "train.epochs=2", "train.loggers=[recorder]", out_dir=str(tmp_path))
    build_trainer(cfg, reg, tmp_path / "run", show_progress=False).fit()
    assert [m.get("global_epoch") for m in _Recorder.epochs] == [1, 2, None] and _Recorder.epochs[-1] == {
        "closed": True
    }
    assert not (tmp_path / "run" / "tensorboard").exists()  # not chosen: train.loggers is the whole list
