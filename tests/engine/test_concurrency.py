"""Runs started together never share a run directory or write one teacher-cache entry twice."""

import json
import subprocess
import sys

from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.engine.locking import RunDirLock
from tests.helpers import TINY, subprocess_env

SETS = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "teacher.train.epochs=2", "train.epochs=2"]
CACHED = ["teacher.cache=true", "data.augment=false"]  # the teacher-output cache is written by one of them too


def test_two_runs_of_one_config_started_together(tmp_path):
    env = subprocess_env(tmp_path)
    args = [
        "run",
        "--method",
        "kd",
        "--quiet",
        *[a for s in [*SETS, *CACHED, f"train.out_dir={tmp_path}"] for a in ("--set", s)],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kdzoo", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]

    # one run directory each, each with exactly its own epochs
    runs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("kd-"))
    assert runs == ["kd-test_resnet-seed0", "kd-test_resnet-seed0-2"]
    for name in runs:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2]
        assert (tmp_path / name / "student.safetensors").is_file()

    # one teacher, trained once: its metrics show each epoch once, and both runs use it
    (entry,) = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]
    lines = (entry / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2]
    teachers = {json.loads((tmp_path / n / "summary.json").read_text())["teacher_top1"] for n in runs}
    assert len(teachers) == 1
    (outputs,) = [p for p in (tmp_path / "cache" / "teacher_outputs").iterdir() if p.is_dir()]
    (taps,) = outputs.glob("taps-*")
    assert json.loads((taps / "meta.json").read_text())["complete"]
    students = {(tmp_path / n / "student.safetensors").read_bytes() for n in runs}
    assert len(students) == 1  # the same config on the same cached outputs trains the same student


def test_a_run_directory_in_use_is_refused(tmp_path):
    runner = CliRunner()
    sets = [a for s in [*SETS, f"train.out_dir={tmp_path}"] for a in ("--set", s)]
    ran = runner.invoke(main, ["run", "--method", "kd", "--quiet", *sets])
    assert ran.exit_code == 0, ran.output
    run_dir = tmp_path / "kd-test_resnet-seed0"
    with RunDirLock(run_dir):  # as another process training in it holds it
        busy = runner.invoke(main, ["run", "--resume", str(run_dir), "--set", "train.epochs=3"])
    assert busy.exit_code != 0 and "is in use by another kdzoo process" in busy.output, busy.output
