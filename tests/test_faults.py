"""Faults: NaN losses, failing models and plugins, unwritable checkpoints, bad checkpoint files."""

import dataclasses
import errno

import pytest
import torch
from click.testing import CliRunner

import kdzoo
from kdzoo import checkpoint
from kdzoo.cli import main
from kdzoo.engine import build_trainer
from tests.helpers import TINY, registry_with_method, tiny_config


@dataclasses.dataclass
class StepConfig:
    bad_from: int = 3  # the 1st epoch has 2 steps: NaN from the 1st step of the 2nd epoch


class _NaNAt:
    """A method whose term becomes NaN from a given step on (counted over the whole run)."""

    def __init__(self, config):
        self.step, self.bad_from = 0, config.bad_from

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        self.step += 1
        value = student.logits.mean() * 0.0
        return {"flaky": value + float("nan") if self.step >= self.bad_from else value}


def _registry_with(name, factory):
    return registry_with_method(name, factory, StepConfig, needs_teacher=False)


def _config(reg, method, *sets, tmp_path):
    from kdzoo.config import load_config

    cfg = load_config(
        [],
        [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", f"train.out_dir={tmp_path}", *sets],
        [method],
        reg.config_classes(),
    )
    return cfg


def test_nan_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    reg = _registry_with("flaky", _NaNAt)
    trainer = build_trainer(
        _config(reg, "flaky", "train.epochs=3", tmp_path=tmp_path), reg, tmp_path / "run", show_progress=False
    )
    with pytest.raises(kdzoo.KdzooError, match=r"epoch 2 step 1: loss term 'flaky' became NaN/inf") as failure:
        trainer.fit()
    assert "last good checkpoint is kept" in str(failure.value)
    kept = checkpoint.load(tmp_path / "run" / "last.pt")
    assert kept["position"]["global_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["student"].values() if v.is_floating_point())


def test_skip_policy_skips_nonfinite_steps_and_finishes(tmp_path):
    reg = _registry_with("flaky", _NaNAt)
    cfg = _config(reg, "flaky", "train.epochs=2", "train.nonfinite=skip", tmp_path=tmp_path)
    trainer = build_trainer(cfg, reg, tmp_path / "run", show_progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    assert trainer.history[1]["train"]["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in trainer.student.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in before.items())


class _Raises:
    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        raise ValueError("shapes do not line up")


def test_a_plugin_raising_in_a_hook_is_named(tmp_path):
    reg = _registry_with("raiser", _Raises)
    trainer = build_trainer(_config(reg, "raiser", tmp_path=tmp_path), reg, tmp_path / "run", show_progress=False)
    with pytest.raises(kdzoo.KdzooError, match="method 'raiser' failed in kdzoo_compute_losses: ValueError: shapes"):
        trainer.fit()


def test_a_model_failing_in_forward_names_the_model_and_input_shape(tmp_path):
    cfg = tiny_config(["kd"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, kdzoo.registry.registry(), tmp_path / "run", show_progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    trainer.teacher.forward_intermediates = trainer.teacher.forward_features = broken
    with pytest.raises(
        kdzoo.KdzooError,
        match=r"the teacher \(resnet10t\) failed in its forward pass on an input "
        r"of shape \(\d+, 3, 32, 32\): RuntimeError: mat1",
    ):
        trainer.fit()


def test_running_out_of_disk_while_checkpointing_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)

    def disk_full(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_full)
        with pytest.raises(kdzoo.KdzooError, match=r"No space left on device\); the previous checkpoint is intact"):
            checkpoint.save_atomic({"epoch": 2}, path)
    assert checkpoint.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--resume", str(bad)])
    assert result.exit_code != 0 and "cannot be read" in result.output and "Traceback" not in result.output
    foreign = tmp_path / "foreign.pt"
    import timm

    torch.save(timm.create_model("test_efficientnet", num_classes=10).state_dict(), foreign)
    sets = [
        a
        for s in [
            *TINY,
            "teacher.model=test_resnet",
            "student.model=test_resnet",
            f"teacher.checkpoint={foreign}",
            f"train.out_dir={tmp_path}",
        ]
        for a in ("--set", s)
    ]
    result = runner.invoke(main, ["run", "--method", "kd", *sets])
    assert result.exit_code != 0 and "does not fit this architecture" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_sigkill_while_checkpoints_are_being_written_never_breaks_the_latest(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "last.pt"
    writer = (
        "import sys, torch\n"
        "from kdzoo.checkpoint import save_atomic\n"
        "for i in range(10_000):\n"
        "    save_atomic({'step': i, 'weights': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # several 16 MB checkpoints in, most likely in the middle of writing one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = checkpoint.load(path)  # the latest complete checkpoint, never a torn one
    assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["step"])))


class _ReservedTerm:
    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        return {"loss": student.logits.mean()}


def test_a_term_named_like_a_metrics_field_is_refused(tmp_path):
    reg = _registry_with("reserved_term", _ReservedTerm)
    trainer = build_trainer(
        _config(reg, "reserved_term", tmp_path=tmp_path), reg, tmp_path / "run", show_progress=False
    )
    with pytest.raises(kdzoo.KdzooError, match="loss term name 'loss' is reserved"):
        trainer.fit()
