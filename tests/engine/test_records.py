"""The records a run writes are typed and read back as written: summary.json and metrics.jsonl keep their keys."""

import json

import pytest

import kdzoo
from kdzoo.reporting import DamagedFile
from kdzoo.reporting.records import EpochRecord, RunSummary, StageResult

SUMMARY_KEYS = {
    "methods", "teacher", "teacher_source", "student", "data", "teacher_top1", "student_top1", "student_best_top1",
    "epochs", "stages", "wall_time_s", "cpu_time_s", "torch_threads", "teacher_cache_cpu_s", "run_dir", "deployed",
    "method_sources", "student_best_epoch", "student_ema_top1", "assistants",
}  # fmt: skip


def _summary(**changes):
    fields = dict(
        methods=["kd"],
        teacher="resnet18",
        teacher_source="model",
        student="mobilenetv3_small_050",
        data="digits",
        teacher_top1=90.0,
        student_top1=80.0,
        student_best_top1=81.0,
        epochs=2,
        stages=[StageResult(name="train", top1=80.0)],
        wall_time_s=1.5,
        cpu_time_s=2.5,
        torch_threads=1,
        teacher_cache_cpu_s=None,
        run_dir="runs/x",
        deployed={"network": "student", "params": 10, "flops": 20},
    )
    return RunSummary(**{**fields, **changes})


def test_a_summary_round_trips_through_json_with_the_files_keys_and_what_later_commands_added(tmp_path):
    summary = _summary()
    written = {**summary.to_json(), "deploy": {"rows": []}}  # kdzoo export adds its table
    assert set(summary.to_json()) == SUMMARY_KEYS
    (tmp_path / "summary.json").write_text(json.dumps(written))
    back = RunSummary.read(tmp_path / "summary.json")
    assert back == _summary(extra={"deploy": {"rows": []}}) and back.to_json() == written


def test_a_summary_of_an_older_kdzoo_reads_with_what_it_lacks_unknown():
    old = {"student_top1": 70.0, "wall_time_s": 3.0, "teacher": "resnet18", "methods": ["kd"]}
    back = RunSummary.from_json(old)
    assert back.teacher_source is None and back.cpu_time_s is None and back.stages == []


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ({"student_top1": "high"}, "no student_top1"),
        ({"cpu_time_s": "slow"}, "cpu_time_s is not a number"),
        ({"deployed": [1]}, "deployed is not a JSON object"),
        ({"stages": [{"name": "x"}]}, "stages are not"),
    ],
)
def test_a_summary_missing_or_mistyping_a_field_is_a_damaged_file(damage, said):
    with pytest.raises(DamagedFile, match=said):
        RunSummary.from_json({**_summary().to_json(), **damage})


def test_an_epoch_record_is_the_metrics_line_every_reader_knows():
    record = EpochRecord(
        stage="train",
        stage_index=0,
        epoch=1,
        global_epoch=1,
        global_step=8,
        train={"ce": 1.0, "weights": {"ce": 1.0}},
        val={"top1": 50.0},
        lr=0.1,
        epoch_time_s=0.5,
    ).to_json()
    keys = ["stage", "stage_index", "epoch", "global_epoch", "global_step", "train", "val", "lr", "epoch_time_s"]
    assert list(record) == keys


def test_a_run_records_which_distribution_and_version_supplied_each_method(tmp_path):
    from kdzoo.config import load_config
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    trainer = build_trainer(
        tiny_config(["kd"], out_dir=str(tmp_path)), registry(), tmp_path / "run", show_progress=False
    )
    summary = trainer.fit()
    source = {"method": "kd", "distribution": "kdzoo", "version": kdzoo.__version__, "plugin": "kd"}
    assert summary["method_sources"] == {"kd": source}
    saved = tmp_path / "run" / "config.json"
    assert json.loads(saved.read_text())["method_sources"] == {"kd": source}
    # the saved config is still a config: `--config runs/.../config.json` runs it again
    assert load_config([saved], [], [], registry().config_classes()).methods == ["kd"]
