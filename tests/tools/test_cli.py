import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kdzoo.cli import main
from tests.helpers import TINY, subprocess_env


def _sets(*pairs):
    return [a for s in pairs for a in ("--set", s)]


def _tiny(tmp_path, *extra):
    return _sets(
        *TINY, "teacher.model=test_resnet", "student.model=test_resnet", f"train.out_dir={tmp_path / 'runs'}", *extra
    )


def _fails_with_one_line(result, *needles):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["--method", "kdd"],
            [
                "unknown method 'kdd'",
                "did you mean 'kd'",
                "known methods: ",
                ", fitnets, ",
                ", kd, ",
                "(see `kdzoo list`)",
            ],
        ),
        (["--method", "kd", "--set", "optim.lrr=0.1"], ["unknown config key 'optim.lrr'", "did you mean 'lr'"]),
        (["--method", "kd", "--set", "train.epochs=-1"], ["train.epochs", ">= 1"]),
        (
            ["--method", "kd", "--set", "teacher.checkpoint=/no/such/teacher.pt"],
            ["checkpoint file not found: /no/such/teacher.pt"],
        ),
        (["--method", "kd", "--set", "teacher.kwargs={num_classes: 5}"], ["teacher", "5 classes", "student", "10"]),
        (["--method", "kd", "--set", "student.model=resnet1818"], ["student model 'resnet1818' is not a timm model"]),
        (["--method", "kd", "--config", "/no/such.yaml"], ["config file not found"]),
        (["--resume", "/no/such/run"], ["checkpoint file not found"]),
    ],
)
def test_bad_input_is_one_clear_line(args, needles, tmp_path):
    result = CliRunner().invoke(main, ["run", *_tiny(tmp_path), *args])
    _fails_with_one_line(result, *needles)


def test_list_show_and_eval(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["list"])
    assert listed.exit_code == 0 and "kd " in listed.output and "Hinton" in listed.output and "FitNets" in listed.output
    shown = runner.invoke(main, ["show", "fitnets"])
    assert shown.exit_code == 0 and "schedule: joint" in shown.output and "hint_weight: 100.0" in shown.output

    ran = runner.invoke(main, ["run", "--method", "kd", "--quiet", *_tiny(tmp_path, "train.epochs=1")])
    assert ran.exit_code == 0, ran.output
    assert "teacher test_resnet: top-1" in ran.output and "run dir:" in ran.output
    run_dir = tmp_path / "runs" / "kd-test_resnet-seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    scored = runner.invoke(main, ["eval", str(run_dir / "last.pt")])
    assert scored.exit_code == 0, scored.output
    assert f"top1={summary['student_top1']:.2f}" in scored.output

    again = runner.invoke(main, ["run", "--method", "kd", "--quiet", *_tiny(tmp_path, "train.epochs=1")])
    assert "kd-test_resnet-seed0-2" in again.output  # an earlier run is never overwritten


def _cli(args, env):
    return [sys.executable, "-m", "kdzoo", "run", *args]


def _interrupted_run_args(how):
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "data.train_limit=256", "train.epochs=4"]
    if how != "sigkill-epoch-boundary":
        sets.append("train.checkpoint_every=1")  # a checkpoint after every step
    return ["--method", "fitnets", "--quiet", *_sets(*sets)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each setting, trained once for the module's interrupted runs."""
    done = {}

    def run(how):
        common = _interrupted_run_args(how)
        key = " ".join(common)
        if key not in done:
            where = tmp_path_factory.mktemp("uninterrupted")
            whole = subprocess.run(
                [*_cli(common, None), "--set", f"train.out_dir={where / 'a'}"],
                env=subprocess_env(where),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert whole.returncode == 0, whole.stderr
            done[key] = where / "a" / "fitnets-test_resnet-seed0"
        return done[key]

    return run


def _interrupted_run(tmp_path, how):
    """The run of ``how``'s setting in b/, interrupted by ``how`` and resumed; returns its folder."""
    env = subprocess_env(tmp_path)
    common = _interrupted_run_args(how)

    run_dir = tmp_path / "b" / "fitnets-test_resnet-seed0"
    args = [*common, "--set", f"train.out_dir={tmp_path / 'b'}"]
    proc = subprocess.Popen(_cli(args, env), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for the first checkpoint of the 2nd epoch
        if (run_dir / "last.pt").exists():
            position = torch.load(run_dir / "last.pt", weights_only=True)["position"]
            if position["global_epoch"] >= 1 and (position["step"] > 0) == (how != "sigkill-epoch-boundary"):
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be interrupted"
    if how == "sigterm":  # the current step finishes, a checkpoint is written, the message says so
        assert proc.returncode == 1 and "stopped by SIGTERM" in err and "checkpoint written" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run_dir / "last.pt", weights_only=True)["position"]
    assert killed_at["global_epoch"] < 4
    assert (killed_at["step"] > 0) == (how != "sigkill-epoch-boundary")

    resumed = subprocess.run([*_cli(args, env), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    return run_dir


@pytest.mark.parametrize("how", ["sigkill-epoch-boundary", "sigkill-mid-epoch", "sigterm"])
def test_interrupted_then_resumed_gives_bit_identical_weights(how, tmp_path, uninterrupted):
    whole_dir, run_dir = uninterrupted(how), _interrupted_run(tmp_path, how)
    a = torch.load(whole_dir / "last.pt", weights_only=True)
    b = torch.load(run_dir / "last.pt", weights_only=True)
    for key in ("student", "modules", "optimizer"):
        flat_a, flat_b = _flatten(a[key]), _flatten(b[key])
        assert flat_a.keys() == flat_b.keys()
        for name, value in flat_a.items():
            assert torch.equal(value, flat_b[name]) if torch.is_tensor(value) else value == flat_b[name], (
                f"{key}.{name} differs after resume"
            )
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2, 3, 4]
    assert [json.loads(line)["train"]["loss"] for line in lines] == [r["train"]["loss"] for r in a["history"]]


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


def test_run_dir_has_metrics_tensorboard_plots_and_a_timm_loadable_student(tmp_path):
    import timm
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = CliRunner()
    ran = runner.invoke(main, ["run", "--method", "fitnets", "--quiet", *_tiny(tmp_path, "train.epochs=2")])
    assert ran.exit_code == 0, ran.output
    run_dir = tmp_path / "runs" / "fitnets-test_resnet-seed0"
    for name in ("metrics.jsonl", "summary.json", "loss_terms.png", "accuracy.png", "student.safetensors"):
        assert (run_dir / name).is_file(), name
    modes = {
        oct((run_dir / name).stat().st_mode & 0o777) for name in ("student.safetensors", "summary.json", "last.pt")
    }
    assert len(modes) == 1, modes  # the exported student is as readable as the run's other files
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/ce",
        "train/hint",
        "train/loss",
        "weight/hint",
        "val/top1",
        "lr",
        "throughput/images_per_s",
        "teacher/top1",
    } <= tags
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]

    exported = json.loads((run_dir / "student.json").read_text())
    student = timm.create_model(
        "test_resnet",
        pretrained=True,
        num_classes=10,
        in_chans=3,
        pretrained_cfg_overlay=dict(file=str(run_dir / "student.safetensors"), num_classes=10),
    )
    saved = torch.load(run_dir / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in saved.items())
    assert exported["model"] == "test_resnet" and "pretrained_cfg_overlay" in exported["load"]

    summary = json.loads((run_dir / "summary.json").read_text())
    scored = runner.invoke(main, ["eval", str(run_dir / "student.safetensors")])
    assert scored.exit_code == 0, scored.output
    assert f"top1={summary['student_top1']:.2f}" in scored.output

    (run_dir / "accuracy.png").unlink()
    replotted = runner.invoke(main, ["plot", str(run_dir)])
    assert replotted.exit_code == 0 and (run_dir / "accuracy.png").stat().st_size > 1000


def test_cli_reference_is_up_to_date():
    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_cli_docs.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
