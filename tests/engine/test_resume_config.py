"""``--resume`` continues the run of the command's config, refuses a changed one, and knows a finished run."""

import json

import torch
from click.testing import CliRunner

from kdzoo import checkpoint
from kdzoo.cli import main
from tests.helpers import TINY


def _args(tmp_path, *extra):
    sets = [
        *TINY,
        "teacher.model=test_resnet",
        "student.model=test_resnet",
        "train.epochs=1",
        f"train.out_dir={tmp_path}",
    ]
    sets += extra
    return ["--method", "kd", *[a for s in sets for a in ("--set", s)]]


def _one_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    return lines[0]


def test_resume_picks_the_run_of_this_config_and_refuses_a_changed_one(tmp_path):
    runner = CliRunner()
    for lr in ("0.05", "0.1"):  # two configs, one folder prefix: kd-test_resnet-seed0 and ...-2
        assert runner.invoke(main, ["run", "--quiet", *_args(tmp_path, f"optim.lr={lr}")]).exit_code == 0
    first, second = tmp_path / "kd-test_resnet-seed0", tmp_path / "kd-test_resnet-seed0-2"

    # the latest run is the lr 0.1 one; resuming the lr 0.05 config finds its own run, finished
    again = runner.invoke(main, ["run", "--resume", *_args(tmp_path, "optim.lr=0.05")])
    assert again.exit_code == 0 and f"{first} is finished" in again.output, again.output
    assert "run dir:" not in again.output  # the summary is not printed again as if it had run
    assert f"{second} is finished" in runner.invoke(main, ["run", "--resume", *_args(tmp_path, "optim.lr=0.1")]).output

    # a config with no run of its own is refused, naming what differs
    line = _one_line(runner.invoke(main, ["run", "--resume", *_args(tmp_path, "optim.lr=0.2")]))
    assert "no run of this config to resume" in line and "optim.lr (0.1 -> 0.2)" in line

    # RUN_DIR with a changed key is refused; the key is named, nothing is silently dropped
    line = _one_line(runner.invoke(main, ["run", "--resume", str(first), "--set", "kd.temperature=2"]))
    assert "cannot resume" in line and "kd.temperature (4.0 -> 2.0)" in line


def test_resume_with_more_epochs_continues_a_finished_run_and_says_so(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["run", "--quiet", *_args(tmp_path)]).exit_code == 0
    run_dir = tmp_path / "kd-test_resnet-seed0"
    longer = runner.invoke(main, ["run", "--resume", str(run_dir), "--set", "train.epochs=2"])
    assert longer.exit_code == 0, longer.output
    assert "train.epochs 1 -> 2" in longer.output and "epoch 2/2" in longer.output
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in records] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 2
    shorter = runner.invoke(main, ["run", "--resume", str(run_dir), "--set", "train.epochs=1"])
    assert "epochs can only grow" in _one_line(shorter)


def test_throughput_after_a_mid_epoch_resume_counts_only_what_this_process_trained(tmp_path):
    """The images of an epoch trained before the resume are not divided by the time since it."""
    runner = CliRunner()
    args = _args(tmp_path, "data.train_limit=128", "train.checkpoint_every=2")
    assert runner.invoke(main, ["run", "--quiet", *args]).exit_code == 0
    run_dir = tmp_path / "kd-test_resnet-seed0"
    state = checkpoint.load(run_dir / "last.pt")
    state.update(  # as if killed after step 2 of 4, having trained a billion images before that
        position={"stage": 0, "epoch": 0, "step": 2, "global_epoch": 0},
        partial={"sums": {}, "seen": 10**9, "skipped": 0},
        history=[],
    )
    torch.save(state, run_dir / "last.pt")
    (run_dir / "summary.json").unlink()
    assert runner.invoke(main, ["run", "--quiet", "--resume", str(run_dir)]).exit_code == 0
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 < record["train"]["images_per_s"] < 1e6


def test_resume_may_change_how_the_steps_are_computed_and_says_so(tmp_path):
    """A run whose compiled step failed goes on eagerly: the torch.compile settings may change on resume
    (said), what the run computes may not."""
    runner = CliRunner()
    compiled = ("train.compile_objective=true", "train.compile_backend=aot_eager")
    assert runner.invoke(main, ["run", "--quiet", *_args(tmp_path, *compiled)]).exit_code == 0
    run_dir = tmp_path / "kd-test_resnet-seed0"
    eager = ["--set", "train.compile_objective=false"]
    same = runner.invoke(main, ["run", "--resume", str(run_dir), *eager])  # finished: nothing more to train
    assert same.exit_code == 0 and f"{run_dir} is finished" in same.output, same.output
    longer = runner.invoke(main, ["run", "--resume", str(run_dir), *eager, "--set", "train.epochs=2"])
    assert longer.exit_code == 0, longer.output
    assert "train.compile_objective True -> False" in longer.output and "train.epochs 1 -> 2" in longer.output
    assert json.loads((run_dir / "config.json").read_text())["train"]["compile_objective"] is False
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    changed = ["--set", "optim.lr=0.2", "--set", "train.compile=true", "--set", "train.epochs=3"]
    line = _one_line(runner.invoke(main, ["run", "--resume", str(run_dir), *changed]))
    assert "cannot resume" in line and "optim.lr (0.05 -> 0.2)" in line and "train.compile " not in line
