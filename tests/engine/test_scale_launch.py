"""How kdzoo launches torchrun and joins its process group: the commands for one node, several nodes and
elastic restarts, the one-line refusals, and each GPU process on its LOCAL_RANK's device before any
collective (checked on the arguments handed to torch: this machine has no GPU)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from click.testing import CliRunner

from kdzoo.engine import distributed
from kdzoo.engine.launch import Launch, torchrun_command

ARGV = ["run", "--method", "kd", "--nproc", "4", "--nnodes=2", "--node-rank", "1", "--set", "train.epochs=1"]


def test_one_machine_is_standalone_and_the_launch_options_stay_with_torchrun():
    command = torchrun_command(Launch(nproc=4), ["run", "--method", "kd", "--nproc=4", "--set", "a=1"])
    assert command == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
        "-m", "kdzoo", "run", "--method", "kd", "--set", "a=1",
    ]  # fmt: skip


def test_several_nodes_meet_at_the_endpoint_with_their_own_rank():
    command = torchrun_command(Launch(nproc=4, nnodes=2, node_rank=1, endpoint="10.0.0.1:29500"), ARGV)
    launcher, worker = command[: command.index("-m", 2)], command[command.index("-m", 2) :]
    assert launcher[3:] == [
        "--nproc-per-node=4",
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
    ]
    assert worker == ["-m", "kdzoo", "run", "--method", "kd", "--set", "train.epochs=1"]


def test_restarts_use_the_elastic_rendezvous():
    launch = Launch(nproc=2, nnodes=2, node_rank=0, endpoint="host:1234", max_restarts=3)
    command = torchrun_command(launch, ARGV)
    assert "--rdzv-backend=c10d" in command and "--rdzv-endpoint=host:1234" in command
    assert "--max-restarts=3" in command and not any(arg.startswith("--node-rank") for arg in command)
    assert "--standalone" in torchrun_command(Launch(nproc=2, max_restarts=1), ARGV)


@pytest.mark.parametrize(
    "options, says",
    [
        (["--nnodes", "2"], "--rdzv-endpoint HOST:PORT"),
        (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "a rank in 0..nnodes-1"),
        (["--max-restarts", "-1"], "0 or more"),
        (["--nproc", "0"], "1 or more"),
    ],
)
def test_a_wrong_launch_is_one_line(options, says):
    from kdzoo.cli import main

    result = CliRunner().invoke(main, ["run", "--method", "kd", *options])
    assert result.exit_code != 0 and says in result.output and len(result.output.strip().splitlines()) == 1


def test_each_gpu_process_takes_its_local_ranks_device_before_any_collective(monkeypatch):
    """NCCL's collectives and the object collectives run on the current device: without this every
    process of a node would use cuda:0."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw["device_id"]))
    )
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 8)
    info = distributed.init_from_env()
    assert calls == [("set_device", torch.device("cuda", 3)), ("nccl", torch.device("cuda", 3))]
    assert (info.rank, info.world, info.local_rank, info.enabled) == (3, 8, 3, True)


def test_a_torchrun_launch_of_one_process_joins_a_group(monkeypatch):
    """So one GPU runs the NCCL path (a run of one process outside torchrun has no group)."""
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: joined.append(backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 1)
    assert distributed.init_from_env().enabled and joined == ["gloo"]
    monkeypatch.delenv("MASTER_ADDR")
    joined.clear()
    assert not distributed.init_from_env().enabled and joined == []


def test_with_restarts_each_attempt_meets_in_a_store_of_its_own():
    """A restarted worker must not read the dead attempt's addresses from torchrun's shared store."""
    from kdzoo.engine.launch import torchrun_env

    assert torchrun_env(Launch(nproc=2, max_restarts=1))["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert torchrun_env(Launch(nproc=2)).get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == os.environ.get(
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
    )  # without restarts, torchrun's defaults
