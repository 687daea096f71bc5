"""Signals reach every process of a run: SIGTERM to ``kdzoo run --nproc 2`` stops torchrun and its
workers with a checkpoint, SIGKILL leaves no orphan behind, and a SIGTERM to a whole process group (what
``timeout``, systemd and schedulers send) finds the loader workers still there to let the run checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from kdzoo.engine.state import RunState
from tests.helpers import subprocess_env, teacher_weights


def _processes_mentioning(marker: str) -> list[int]:
    """The processes whose command line holds ``marker`` (a folder only this test's run names)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return found


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A tiny teacher's weights: the runs here train no teacher."""
    return teacher_weights(tmp_path_factory.mktemp("teacher") / "test_resnet.safetensors", 10)


def _start(tmp_path, teacher: Path, *sets, nproc: int = 1, **popen) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "runs"
    common = [
        "data.name=synthetic",
        "data.img_size=32",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={teacher}",
        "student.model=test_resnet",
        "train.checkpoint_every=1",  # a checkpoint after the first step says training has started
        f"train.out_dir={out}",
    ]
    args = [a for s in [*common, *sets] for a in ("--set", s)]
    command = [sys.executable, "-m", "kdzoo", "run", "--method", "kd", "--quiet", *args, "--nproc", str(nproc)]
    process = subprocess.Popen(
        command, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    return process, out / "kd-test_resnet-seed0"


# many small steps: the run is still training when the signal comes
LONG = ("data.batch_size=8", "data.train_limit=512", "train.epochs=20")


def test_sigterm_to_a_two_process_run_stops_every_process_with_a_resumable_checkpoint(tmp_path, teacher_file):
    process, run_dir = _start(tmp_path, teacher_file, *LONG, nproc=2)
    _wait_for(run_dir / "last.pt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert _processes_mentioning(str(tmp_path / "runs")) == []  # torchrun and both workers are gone
    assert "stopped by SIGTERM" in output and f"kdzoo run --resume {run_dir}" in output, output[-3000:]
    assert "Warning" not in output and "[rank1]" not in output, output[-3000:]  # rank 0 alone speaks
    state = RunState.load(run_dir / "last.pt")
    assert state.position.step > 0 and len(state.rng_per_rank) == 2


def test_a_killed_launcher_leaves_no_process_of_its_run_behind(tmp_path, teacher_file):
    process, run_dir = _start(tmp_path, teacher_file, *LONG, nproc=2)
    _wait_for(run_dir / "last.pt", process)
    process.kill()  # SIGKILL: nothing can be forwarded; torchrun learns it from the kernel
    process.communicate(timeout=60)
    deadline = time.monotonic() + 90
    while _processes_mentioning(str(tmp_path / "runs")):
        assert time.monotonic() < deadline, "processes of the killed run are still alive"
        time.sleep(0.5)


def test_a_process_group_sigterm_during_an_image_folder_run_leaves_a_resumable_checkpoint(tmp_path):
    for split in ("train", "val"):
        for label, colour in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(32 if split == "train" else 4):
                Image.new("RGB", (16, 16), tuple(min(255, c + i) for c in colour)).save(folder / f"{i}.png")
    process, run_dir = _start(
        tmp_path,
        teacher_weights(tmp_path / "two_classes.safetensors", 2),
        "data.name=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.num_workers=2",
        "data.batch_size=2",
        "train.epochs=20",
        start_new_session=True,  # its own process group, as a scheduler's job has
    )
    _wait_for(run_dir / "last.pt", process)
    os.killpg(process.pid, signal.SIGTERM)  # the launcher, its loader workers: every process of the job
    output, _ = process.communicate(timeout=120)
    assert "stopped by SIGTERM" in output and "checkpoint written" in output, output[-3000:]
    assert "DataLoader worker" not in output
    state = RunState.load(run_dir / "last.pt")
    assert state.position.step > 0 or state.position.epoch > 0
