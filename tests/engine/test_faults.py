"""Faults: NaN losses, failing models and plugins, unwritable checkpoints, bad checkpoint files."""

import dataclasses
import errno
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import kdzoo
from kdzoo import checkpoint
from kdzoo.cli import main
from kdzoo.engine import build_trainer
from tests.helpers import TINY, registry_with_method, subprocess_env, tiny_config


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
        with pytest.raises(
            kdzoo.KdzooError, match=r"no space left for .*last.pt: it needs .*; the previous file is intact"
        ):
            checkpoint.save_atomic({"epoch": 2}, path)
    assert checkpoint.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_full_disk_before_any_checkpoint_says_nothing_was_written_and_what_it_needs(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 100))
    path = tmp_path / "last.pt"
    with pytest.raises(kdzoo.KdzooError, match=r"last.pt: it needs 4,000 bytes, 100 are free; nothing was written"):
        checkpoint.save_atomic({"weights": torch.zeros(1000)}, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "damage",
    [
        {"student": "not weights"},
        {"student": {"conv.weight": "not a tensor"}},
        {"position": {"stage": "x", "epoch": 0, "step": 0, "global_epoch": 0}},
        {"position": {"unknown": 1}},
        {"history": {"not": "a list"}},
    ],
    ids=["student-not-a-dict", "weights-not-tensors", "position-not-ints", "position-unknown", "history-not-a-list"],
)
def test_a_checkpoint_with_the_right_format_and_malformed_contents_is_one_line(tmp_path, damage):
    from kdzoo.engine.state import FORMAT

    good = {
        "config": {},
        "student": {},
        "modules": {},
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "position": {"stage": 0, "epoch": 0, "step": 0, "global_epoch": 0},
        "rng": {},
        "history": [],
        "format": FORMAT,
    }
    path = tmp_path / "last.pt"
    torch.save({**good, **damage}, path)
    result = CliRunner().invoke(main, ["run", "--resume", str(path)])
    assert result.exit_code != 0 and "is damaged" in result.output and "delete it" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output


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


def test_running_out_of_memory_is_one_line_naming_the_sizes_to_lower(tmp_path, monkeypatch):
    cfg = tiny_config(["kd"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, kdzoo.registry.registry(), tmp_path / "run", show_progress=False)

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: 10 GB")

    with monkeypatch.context() as patch:
        patch.setattr(trainer.student, "forward_features", no_memory)
        with pytest.raises(kdzoo.KdzooError, match=r"the student \(test_resnet\) ran out of memory .*lower data.batch"):
            trainer.fit()
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "backward", no_memory)
        again = build_trainer(cfg, kdzoo.registry.registry(), tmp_path / "again", show_progress=False)
        with pytest.raises(kdzoo.KdzooError, match=r"ran out of memory in the backward pass \(data.batch_size=32"):
            again.fit()


def _written_in_place(path: str) -> bool:
    """Whether a path a command opened for writing is a file it wrote in place, rather than one of the
    kinds that are safe to write so: a temporary file renamed over its target once whole (or a scratch
    file removed after use), a lock, the
    out-dir write probe, TensorBoard's append-only event log (its reader drops a cut last record), a
    teacher-output array (written before the meta.json that says it is complete, under a fresh name)
    and its fill's done marks (a byte per batch, set once the batch's outputs are flushed)."""
    name = Path(path).name
    safe = (
        (name.startswith(".") and not Path(path).exists())  # a temp file renamed, or a scratch file removed
        or name.endswith(".lock")
        or name == ".lock"
        or name.startswith(".kdzoo-write-check-")
        or name.startswith("events.out.tfevents.")
        or (name.endswith((".f16", ".u8")) and "teacher_outputs" in path)
    )
    return not safe and not Path(path).is_dir()


def test_every_file_a_run_its_caches_and_its_exports_write_is_replaced_atomically(tmp_path):
    """A SIGKILL at any write leaves the old file or the new one: no file is written in place."""
    import subprocess
    import sys

    sets = [
        *TINY,
        "teacher.model=test_resnet",
        "student.model=test_resnet",
        "train.epochs=2",
        "data.augment=false",
        "teacher.cache=true",  # the teacher trained and cached, then its outputs stored
        f"train.out_dir={tmp_path / 'runs'}",
    ]
    run = ["run", "--method", "kd", "--quiet", *[a for s in sets for a in ("--set", s)]]
    run_dir = tmp_path / "runs" / "kd-test_resnet-seed0"
    resume = ["run", "--quiet", "--resume", str(run_dir), "--set", "train.epochs=3"]
    plot = ["plot", str(run_dir)]
    export = ["export", str(run_dir), "--format", "onnx", "--quantize", "int8"]
    script = str(Path(__file__).parents[1] / "write_audit.py")
    commands = [a for command in (run, resume, plot, ["export", str(run_dir)], export) for a in ("--", *command)]
    done = subprocess.run(
        [sys.executable, script, str(tmp_path), *commands],
        env={**subprocess_env(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.splitlines()
    written = [line.removeprefix("written in: ") for line in said if line.startswith("written in: ")]
    assert any(Path(path).name.startswith(".last.pt.tmp") for path in written)  # the audit sees the writes
    assert [path for path in written if _written_in_place(path)] == []
