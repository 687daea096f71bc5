"""Several nodes on one machine: ``kdzoo run --nnodes 2 --node-rank R --rdzv-endpoint 127.0.0.1:PORT`` twice,
each node with its own working folder and its own ``KDZOO_CACHE`` (no shared files), trains what one
process trains; a node's worker killed mid-epoch is restarted by torchrun (``--max-restarts``) and the
run ends bit-equal to an uninterrupted one; two ``--nproc 2`` runs started together never collide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import TINY, subprocess_env

SETTINGS = [
    *TINY,
    "data.batch_size=8",
    "data.train_limit=48",
    "teacher.train.train_limit=48",
    "teacher.model=test_resnet",
    "student.model=test_resnet",
    "train.epochs=3",
    "train.checkpoint_every=1",
    "train.precision=fp64",  # 2 processes sum in another order than 1: compared far below float32's noise
    "train.out_dir=runs",  # relative: each node's own working folder
]
RUN = ["run", "--method", "kd", "--quiet", *[a for s in SETTINGS for a in ("--set", s)]]
LAST = Path("runs/kd-test_resnet-seed0/last.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(folder: Path, *launch: str) -> subprocess.Popen:
    """``kdzoo run`` in ``folder`` with its own cache, as on a machine of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**subprocess_env(folder), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kdzoo", *RUN, *launch]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(*processes: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _two_nodes(tmp_path: Path, name: str, restarts: int = 0) -> tuple[subprocess.Popen, subprocess.Popen]:
    endpoint = f"127.0.0.1:{_free_port()}"
    launch = ("--nnodes", "2", "--rdzv-endpoint", endpoint, "--max-restarts", str(restarts))
    return tuple(_node(tmp_path / name / f"node{rank}", *launch, "--node-rank", str(rank)) for rank in (0, 1))


def _workers(pid: int) -> list[int]:
    """The processes under ``pid`` (kdzoo -> torchrun -> worker), deepest last."""
    found, todo = [], [pid]
    while todo:
        children = Path(f"/proc/{todo.pop()}/task")
        for task in children.glob("*/children") if children.is_dir() else ():
            for child in task.read_text().split():
                found.append(int(child))
                todo.append(int(child))
    return found


def _student(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / LAST, weights_only=True)["student"]


def test_two_nodes_without_shared_files_train_what_one_process_trains_and_resume_exactly(tmp_path):
    one = _node(tmp_path / "one")
    nodes = _two_nodes(tmp_path, "two")
    _finish(one, *nodes)
    # the second node trained no teacher and wrote nothing: the teacher's weights came over the group
    assert not (tmp_path / "two" / "node1" / "runs").exists()
    assert not list((tmp_path / "two" / "node1" / "cache").glob("teachers/*/teacher.pt"))
    reference, two = _student(tmp_path / "one"), _student(tmp_path / "two" / "node0")
    for key, value in reference.items():
        assert torch.allclose(two[key], value, rtol=1e-9, atol=1e-12), key

    # a worker killed mid-epoch: torchrun restarts both nodes' workers, which go on from the main
    # node's last checkpoint (the other node has none: it receives it over the group). Restarts need
    # torchrun's elastic rendezvous, which numbers the nodes itself: the main is the one that writes.
    # (restarts to spare: the surviving node's worker fails too when its peer dies, and which of the
    # agents restarts first, and how often, is torchrun's race)
    nodes = _two_nodes(tmp_path, "killed", restarts=3)
    folders = [tmp_path / "killed" / f"node{rank}" for rank in (0, 1)]
    deadline = time.monotonic() + 240
    while not any((f / LAST).is_file() for f in folders) and time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), "a node ended before its first checkpoint"
        time.sleep(0.05)
    main = 0 if (folders[0] / LAST).is_file() else 1
    other = nodes[1 - main]
    assert other.poll() is None, "the run ended before the kill"
    os.kill(_workers(other.pid)[-1], signal.SIGKILL)
    _finish(*nodes)
    assert not (folders[1 - main] / "runs").exists()
    killed = _student(folders[main])
    assert all(torch.equal(killed[key], two[key]) for key in two), "the restarted run differs"


def test_two_runs_on_two_processes_each_started_together_both_finish(tmp_path):
    """torchrun picks a free port for each (--standalone): no collision between runs."""
    first = _node(tmp_path / "first", "--nproc", "2")
    second = _node(tmp_path / "second", "--nproc", "2", "--set", "train.seed=1")
    _finish(first, second)
    assert (tmp_path / "first" / LAST).is_file()
    assert (tmp_path / "second" / "runs/kd-test_resnet-seed1/last.pt").is_file()


def test_a_node_without_the_data_ends_every_node_in_one_line_naming_it(tmp_path):
    """The data are each node's own: node 1 lacks them, so every process ends at once naming what is
    missing and where (nobody waits for it in a collective)."""
    from tests.engine.test_scale_data import _image_folder

    _image_folder(tmp_path / "lacking" / "node0" / "images")  # relative to each node's folder: only node 0's
    endpoint = f"127.0.0.1:{_free_port()}"
    data = ("--set", "data.name=imagefolder", "--set", "data.root=images")
    launch = ("--nnodes", "2", "--rdzv-endpoint", endpoint, *data)
    nodes = [_node(tmp_path / "lacking" / f"node{rank}", *launch, "--node-rank", str(rank)) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    errors = [[line for line in output.splitlines() if line.startswith("Error:")] for output in outputs]
    assert errors[0] and "process 1 on" in errors[0][0] and "images" in errors[0][0], outputs[0][-2000:]
    assert errors[1] and "images" in errors[1][0], outputs[1][-2000:]
