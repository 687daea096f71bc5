import json

import torch
from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.tools.compare_costs import _training_threads
from kdzoo.tools.leaderboard import threads_text
from tests.helpers import TINY


def _args(out):
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_efficientnet", "train.epochs=2"]
    return [
        "compare",
        "--methods",
        "kd,at",
        "--seeds",
        "2",
        "--out",
        str(out),
        *[a for s in sets for a in ("--set", s)],
    ]


def test_compare_writes_the_table_and_skips_finished_runs_on_restart(tmp_path):
    out = tmp_path / "cmp"
    first = CliRunner().invoke(main, _args(out))
    assert first.exit_code == 0, first.output
    assert (
        first.output.count("seed 0: training") + first.output.count("seed 1: training") == 6
    )  # scratch, kd, at x 2 seeds
    for name in ("results.md", "results.csv", "results.png", "results.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in report["rows"]} == {"scratch", "kd", "at"}
    assert all(r["seeds"] == 2 for r in report["rows"])
    assert report["rows"][0]["vs_scratch"] == 0.0
    models = report["models"]
    assert models["teacher"]["params"] > 0 and models["student"]["flops"] > 0 and models["speedup"] > 0
    table = (out / "results.md").read_text()
    assert "| scratch | 2 |" in table and "±" in table and "compare --methods kd,at --seeds 2" in table
    threads = threads_text(torch.get_num_threads())
    assert f"runs trained with torch on {threads}, latencies measured with torch on {threads}" in table
    # every run used the same teacher, trained once
    teachers = {json.loads((d / "config.json").read_text())["teacher"]["checkpoint"] for d in (out / "runs").iterdir()}
    assert len(teachers) == 1

    finished = {d.name: (d / "last.pt").stat().st_mtime_ns for d in (out / "runs").iterdir()}
    interrupted = out / "runs" / "at-seed1"
    for f in ("summary.json", "student.safetensors"):
        (interrupted / f).unlink()  # as if killed after its last checkpoint, before finishing
    again = CliRunner().invoke(main, _args(out))
    assert again.exit_code == 0, again.output
    assert (
        again.output.count("done before, skipped") == 5
        and "at seed 1: training" in again.output
        and again.output.count("seed 0: training") == 0
    )
    for name, mtime in finished.items():
        if name != "at-seed1":
            assert (out / "runs" / name / "last.pt").stat().st_mtime_ns == mtime  # not redone

    def accuracy(rows):
        # the resumed run's clock differs, and so may how far its timings spread
        timings = ("train_time_s_mean", "cost_s_mean", "cost_vs_scratch", "cost_spread", "cost_mark", "cost_note")
        return [{k: v for k, v in r.items() if k not in timings} for r in rows]

    assert accuracy(json.loads((out / "results.json").read_text())["rows"]) == accuracy(report["rows"])


def test_a_single_seed_says_n_equals_one_not_a_zero_spread(tmp_path):
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    args = ["compare", "--methods", "kd", "--seeds", "1", "--out", str(tmp_path / "cmp")]
    result = CliRunner().invoke(main, [*args, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "(n = 1)" in table and "± 0.00" not in table
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]
    assert all(r["last_top1_std"] is None and r["best_top1_std"] is None for r in rows)  # unknown, not 0
    assert "▲ / ▼" not in table  # one scratch run has no spread to mark against


def test_the_report_says_the_threads_the_runs_trained_on_as_recorded():
    assert _training_threads([1, 1, 1]) == "runs trained with torch on 1 thread, "
    assert _training_threads([1, 2]) == "runs trained with torch on 1 to 2 threads, "
    assert _training_threads([2, None]) == "runs trained with torch on 2 threads (some runs did not record it), "
    assert _training_threads([None, None]) == ""  # runs from before kdzoo recorded it: not guessed
