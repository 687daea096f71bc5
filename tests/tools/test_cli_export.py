"""``kdzoo export`` writes every file whole or not at all: a write that fails half-way (a full disk, a
kill) leaves the previous file and every later command works; a full disk is one line naming the file
and the bytes it needs; a file an export would reuse (the teacher's ONNX file, an int8 file) is checked
first and made again when broken."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from kdzoo import checkpoint
from kdzoo.errors import KdzooError
from tests.helpers import subprocess_env
from tests.tools.test_cli_errors import copy_run, exported_to_onnx, invoke, one_line, top1, train_finished_run

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run for the module; tests copy it before they damage it."""
    return train_finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="module")
def onnx_run(finished_run, tmp_path_factory) -> Path:
    return exported_to_onnx(finished_run, tmp_path_factory.mktemp("onnx"))


def fail_half_way(monkeypatch, name: str, failure: Callable[[], None]) -> None:
    """Every atomic write of a file called ``name`` writes half its bytes into the temp file, then
    ``failure()`` happens (it raises, or kills the process) in the middle of the write."""
    real = checkpoint._replace_atomically

    def replace(path, write, *args, **kwargs):
        if path.name != name:
            return real(path, write, *args, **kwargs)

        def half(fh):
            whole = io.BytesIO()
            write(whole)
            fh.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            fh.flush()
            failure()

        return real(path, half, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "_replace_atomically", replace)


def _raise(exc: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise exc

    return fail


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if ".tmp" in p.name)


def test_a_full_disk_while_exporting_the_student_is_one_line_and_keeps_the_previous_one(
    finished_run, tmp_path, monkeypatch
):
    run_dir = copy_run(finished_run, tmp_path)
    student = run_dir / "student.safetensors"
    before = student.read_bytes()
    fail_half_way(monkeypatch, "student.safetensors", _raise(DISK_FULL))
    one_line(
        invoke("export", run_dir),
        f"no space left for {student}: it needs {len(before):,} bytes",
        "the previous file is intact",
    )
    assert student.read_bytes() == before and _leftovers(run_dir) == []
    monkeypatch.undo()
    assert top1(invoke("eval", run_dir)) == top1(invoke("eval", finished_run))  # later commands work


def test_a_disk_without_room_for_the_student_is_refused_before_it_is_touched(finished_run, tmp_path, monkeypatch):
    import shutil

    run_dir = copy_run(finished_run, tmp_path)
    student = run_dir / "student.safetensors"
    before = student.read_bytes()
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    one_line(invoke("export", run_dir), f"no space left for {student}: it needs {len(before):,} bytes, 1,000 are free")
    assert student.read_bytes() == before and _leftovers(run_dir) == []


def test_a_full_disk_with_no_previous_student_leaves_no_part_of_one(finished_run, tmp_path, monkeypatch):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "student.safetensors").unlink()
    fail_half_way(monkeypatch, "student.safetensors", _raise(DISK_FULL))
    one_line(invoke("export", run_dir), f"no space left for {run_dir / 'student.safetensors'}", "nothing was written")
    assert not (run_dir / "student.safetensors").exists() and _leftovers(run_dir) == []


def test_an_export_killed_in_the_middle_of_a_write_leaves_the_previous_files_and_later_commands_work(
    finished_run, tmp_path
):
    run_dir = copy_run(finished_run, tmp_path)
    before = {name: (run_dir / name).read_bytes() for name in ("student.safetensors", "student.json", "summary.json")}
    # a real SIGKILL half-way through writing the student, in a process of its own
    script = (
        "import os, signal, sys\n"
        "import pytest\n"
        "from tests.tools.test_cli_export import fail_half_way\n"
        "from kdzoo.cli import main\n"
        "with pytest.MonkeyPatch.context() as patch:\n"
        "    fail_half_way(patch, 'student.safetensors', lambda: os.kill(os.getpid(), signal.SIGKILL))\n"
        "    main(['export', sys.argv[1]])\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)],
        env=subprocess_env(tmp_path),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # the previous files, whole

    resumed = invoke("run", "--resume", run_dir)
    assert resumed.exit_code == 0 and "is finished" in resumed.output, resumed.output
    assert top1(invoke("eval", run_dir)) == top1(invoke("eval", finished_run))
    exported = invoke("export", run_dir)
    assert exported.exit_code == 0 and (run_dir / "student.safetensors").read_bytes() == before["student.safetensors"]


@pytest.mark.parametrize("name", ["student.onnx", "student.onnx.json"])
def test_a_full_disk_during_an_onnx_export_is_one_line_and_keeps_the_previous_files(
    onnx_run, tmp_path, monkeypatch, name
):
    run_dir = copy_run(onnx_run, tmp_path)
    before = {n: (run_dir / n).read_bytes() for n in ("student.onnx", "student.onnx.json")}
    fail_half_way(monkeypatch, name, _raise(DISK_FULL))
    one_line(
        invoke("export", run_dir, "--format", "onnx"), f"no space left for {run_dir / name}: it needs", "is intact"
    )
    assert {n: (run_dir / n).read_bytes() for n in before} == before and _leftovers(run_dir) == []


def test_a_full_disk_while_quantizing_is_one_line_and_leaves_no_int8_file(onnx_run, tmp_path, monkeypatch):
    import onnxruntime.quantization

    from kdzoo.tools.int8 import quantize_int8

    def quantize_onto_a_full_disk(model_input, model_output, *args, **kwargs):
        Path(model_output).write_bytes(b"\x08\x01" * 100)  # the part written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", quantize_onto_a_full_disk)
    run_dir = copy_run(onnx_run, tmp_path)
    with pytest.raises(KdzooError, match=r"no space left for .*student\.int8\.onnx: it needs [\d,]+ bytes") as said:
        quantize_int8(run_dir)
    assert "\n" not in str(said.value) and "nothing was written" in str(said.value)
    assert not (run_dir / "student.int8.onnx").exists() and _leftovers(run_dir) == []
    assert not (run_dir / ".student.prepared.onnx").exists()


class Tiny(nn.Module):
    """A small classifier to export (the teacher's ONNX file's stand-in)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def synthetic_data():
    from kdzoo.config import load_config
    from kdzoo.data import load_data
    from kdzoo.registry import registry
    from tests.helpers import TINY

    cfg = load_config([], TINY, ["kd"], registry().config_classes())
    return load_data(cfg.data, 0)


TEACHER_DAMAGE = {
    "empty": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "not onnx": lambda path: path.write_bytes(b"garbage" * 10),
    "record lost": lambda path: path.with_name(path.name + ".json").unlink(),
    "record damaged": lambda path: path.with_name(path.name + ".json").write_text(""),
}


@pytest.mark.parametrize("damage", TEACHER_DAMAGE)
def test_a_damaged_teacher_onnx_is_made_again_never_reused(tmp_path, synthetic_data, damage):
    from kdzoo.tools.deploy import onnx_is_sound, reuse_or_export

    torch.manual_seed(0)
    teacher, target = Tiny(), tmp_path / "teacher.onnx"
    assert reuse_or_export(teacher, target, synthetic_data, "teacher") is False  # made
    made = target.read_bytes()
    assert reuse_or_export(teacher, target, synthetic_data, "teacher") is True  # sound: reused as it is
    TEACHER_DAMAGE[damage](target)
    assert not onnx_is_sound(target)
    assert reuse_or_export(teacher, target, synthetic_data, "teacher") is False  # broken: made again
    assert target.read_bytes() == made and onnx_is_sound(target)


def test_an_empty_int8_file_is_not_taken_for_todays_export(onnx_run, tmp_path):
    from kdzoo.tools.int8 import CALIBRATION_IMAGES, MIN_INT8_RANGE, RECIPE, int8_is_current

    run_dir = copy_run(onnx_run, tmp_path)
    record_file = run_dir / "student.onnx.json"
    record = json.loads(record_file.read_text())
    record["int8"] = {"recipe": RECIPE, "calibration_images": CALIBRATION_IMAGES, "min_range": MIN_INT8_RANGE}
    record_file.write_text(json.dumps(record))
    int8 = run_dir / "student.int8.onnx"
    int8.write_bytes((run_dir / "student.onnx").read_bytes())  # a whole ONNX file, as recorded
    assert int8_is_current(run_dir)
    int8.write_bytes(b"")  # what a kill mid-write used to leave
    assert not int8_is_current(run_dir)
    int8.write_bytes((run_dir / "student.onnx").read_bytes())
    (run_dir / "student.onnx").write_bytes(b"")  # the fp32 file it was made from, emptied
    assert not int8_is_current(run_dir)


def test_export_files_get_the_same_permissions_as_the_runs_other_files(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    assert invoke("export", run_dir).exit_code == 0
    modes = {oct(os.stat(run_dir / n).st_mode & 0o777) for n in ("student.safetensors", "student.json", "last.pt")}
    assert len(modes) == 1, modes


def test_the_deploy_table_lands_in_summary_json_whole_or_not_at_all(finished_run, tmp_path, monkeypatch):
    from kdzoo.tools.deploy import record_in_summary

    run_dir = copy_run(finished_run, tmp_path)
    summary_file = run_dir / "summary.json"
    before = summary_file.read_bytes()
    fail_half_way(monkeypatch, "summary.json", _raise(DISK_FULL))
    with pytest.raises(KdzooError, match=r"no space left for .*summary\.json: it needs [\d,]+ bytes.*previous file is"):
        record_in_summary(run_dir, "deploy", {"rows": []})
    assert summary_file.read_bytes() == before and _leftovers(run_dir) == []
    monkeypatch.undo()
    record_in_summary(run_dir, "deploy", {"rows": []})
    written = json.loads(summary_file.read_text())
    assert written["deploy"] == {"rows": []} and written["student_top1"] == json.loads(before)["student_top1"]


def test_a_damaged_summary_json_is_refused_in_one_line_not_replaced(finished_run, tmp_path):
    from kdzoo.tools.deploy import record_in_summary

    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "summary.json").write_text('{"epochs": 1,')
    with pytest.raises(KdzooError, match=r"summary\.json is damaged \(not JSON") as said:
        record_in_summary(run_dir, "deploy", {"rows": []})
    assert "\n" not in str(said.value) and (run_dir / "summary.json").read_text() == '{"epochs": 1,'


def test_export_which_best_puts_the_best_epochs_student_in_the_onnx_file(finished_run, tmp_path):
    """`--which best` exports student_best.safetensors (named in the record); a file the run did not keep
    (no EMA) and --which without --format onnx are each one line."""
    run_dir = copy_run(finished_run, tmp_path)
    exported = invoke("export", run_dir, "--format", "onnx", "--which", "best")
    assert exported.exit_code == 0, exported.output
    assert "(from student_best.safetensors)" in exported.output
    assert json.loads((run_dir / "student.onnx.json").read_text())["weights"] == "student_best.safetensors"
    one_line(invoke("export", run_dir, "--format", "onnx", "--which", "ema"), "no student_ema.safetensors", "train.ema")
    one_line(invoke("export", run_dir, "--which", "best"), "--which best", "--format onnx")
